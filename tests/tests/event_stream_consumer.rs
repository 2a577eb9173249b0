//! A consumer in one deployment follows another server's event stream over gRPC and
//! handles every event exactly once while the producing server is restarted and the
//! consumer itself is stopped and started again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tenure_e2e::{TestServer, channel_to, config};
use tenure_platform::ApiError;
use tenure_platform::clock::SystemClock;
use tenure_platform::consumer::{Consumer, EventHandler};
use tenure_platform::db::MigrationSpec;
use tenure_platform::events::{EventLog, NewEvent, UnitOfWork};
use tenure_platform::testing::TestDb;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::notifications::v1 as ntf;
use tokio_util::sync::CancellationToken;

tenure_platform::grpc_event_source!(AssignmentsSource, tenure_proto::assignments::v1);

/// Records each principal id it sees in the consumer's own table, in its transaction.
struct Record;

impl EventHandler<asg::Event, ntf::Event> for Record {
    fn handle<'a>(
        &'a self,
        uow: &'a mut UnitOfWork<ntf::Event>,
        event: &'a asg::Event,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let m = event.meta.as_ref().unwrap();
            sqlx::query("INSERT INTO seen (sequence, subject) VALUES ($1, $2)")
                .bind(m.sequence)
                .bind(&m.subject)
                .execute(&mut **uow.tx())
                .await?;
            Ok(())
        })
    }
}

async fn produce(server: &TestServer, from: usize, to: usize) {
    let log = server.contexts.assignments.as_ref().unwrap().log.clone();
    for i in from..=to {
        let mut uow = log.begin().await.unwrap();
        uow.emit(NewEvent::new(
            asg::PrincipalSynced {
                principal: Some(asg::Principal {
                    id: format!("p{i}"),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "idp-sync",
            format!("p{i}"),
        ));
        uow.commit().await.unwrap();
    }
}

async fn wait_seen(db: &tenure_platform::db::Db, n: i64) {
    for _ in 0..600 {
        let c: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seen")
            .fetch_one(db.reader())
            .await
            .unwrap();
        if c >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("consumer did not see {n} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_survives_producer_and_consumer_restarts_without_loss_or_duplicates() {
    // The producing server: assignments only, its own database.
    let producer_db = TestDb::new().await.unwrap();
    let producer_dir = tempfile::tempdir().unwrap();
    let cfg = config(
        "127.0.0.1:0".parse().unwrap(),
        producer_dir.path(),
        &producer_db.url,
    );
    let cfg = tenure_platform::config::Config {
        contexts: "assignments".into(),
        peers: tenure_platform::config::Peers {
            activation: Some("http://127.0.0.1:1".into()),
            reviews: Some("http://127.0.0.1:1".into()),
            notifications: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        },
        ..cfg
    };
    let server = TestServer::start(cfg.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let addr = server.addr;
    let issuer = tenure_platform::auth::DevIssuer::load_or_create(
        &producer_dir.path().join("dev-issuer"),
        Arc::new(SystemClock),
    )
    .unwrap();
    let token = tenure_platform::auth::ServiceToken::dev(issuer, "tenure-system");

    // The consuming side: its own database with its own event log and cursor table.
    let consumer_db = TestDb::new().await.unwrap();
    let cdb = consumer_db.connect().await.unwrap();
    cdb.migrate(vec![
        MigrationSpec::event_log(400_000, "notifications", cdb.backend()),
        MigrationSpec::new(
            499_999,
            "test table",
            "CREATE TABLE seen (sequence BIGINT PRIMARY KEY, subject TEXT NOT NULL)",
        ),
    ])
    .await
    .unwrap();
    let own = EventLog::<ntf::Event>::open(cdb.clone(), Arc::new(SystemClock), "notifications")
        .await
        .unwrap();
    let start_consumer = || {
        let stop = CancellationToken::new();
        let c = Consumer {
            name: "assignments".to_owned(),
            log: own.clone(),
            source: Arc::new(AssignmentsSource {
                channel: channel_to(addr),
                token: token.clone(),
            }),
            handler: Arc::new(Record),
        };
        (tokio::spawn(c.run(stop.clone())), stop)
    };

    // The catalogue seeded at first start is in the log already; the consumer sees it too.
    let base = server.contexts.assignments.as_ref().unwrap().log.head();
    produce(&server, 1, 20).await;
    let (task, stop) = start_consumer();
    wait_seen(&cdb, base + 20).await;

    // Restart the producer on the same address while the consumer is connected.
    server.stop().await.unwrap();
    let cfg2 = tenure_platform::config::Config {
        listen: addr,
        ..cfg
    };
    let server = TestServer::start(cfg2.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    produce(&server, 21, 30).await;
    wait_seen(&cdb, base + 30).await;

    // Stop the consumer, produce more, start it again: it resumes after its cursor.
    stop.cancel();
    task.await.unwrap();
    produce(&server, 31, 40).await;
    let (task, stop) = start_consumer();
    wait_seen(&cdb, base + 40).await;
    stop.cancel();
    task.await.unwrap();
    server.stop().await.unwrap();

    let seqs: Vec<i64> = sqlx::query_scalar("SELECT sequence FROM seen ORDER BY sequence")
        .fetch_all(cdb.reader())
        .await
        .unwrap();
    assert_eq!(
        seqs,
        (1..=base + 40).collect::<Vec<_>>(),
        "each event exactly once, none lost"
    );
    let cursor: i64 = sqlx::query_scalar(
        "SELECT last_sequence FROM notifications_cursors WHERE source = 'assignments'",
    )
    .fetch_one(cdb.reader())
    .await
    .unwrap();
    assert_eq!(cursor, base + 40);
}

/// Records each event in a table with no key, so handling an event twice would show.
struct RecordAll(&'static str);

impl EventHandler<asg::Event, ntf::Event> for RecordAll {
    fn handle<'a>(
        &'a self,
        uow: &'a mut UnitOfWork<ntf::Event>,
        event: &'a asg::Event,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let m = event.meta.as_ref().unwrap();
            sqlx::query("INSERT INTO seen_all (sequence, replica) VALUES ($1, $2)")
                .bind(m.sequence)
                .bind(self.0)
                .execute(&mut **uow.tx())
                .await?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_one_consumer_handle_each_event_once() {
    let producer_db = TestDb::new().await.unwrap();
    let producer_dir = tempfile::tempdir().unwrap();
    let cfg = config(
        "127.0.0.1:0".parse().unwrap(),
        producer_dir.path(),
        &producer_db.url,
    );
    let server = TestServer::start(cfg, Arc::new(SystemClock)).await.unwrap();
    let issuer = tenure_platform::auth::DevIssuer::load_or_create(
        &producer_dir.path().join("dev-issuer"),
        Arc::new(SystemClock),
    )
    .unwrap();
    let token = tenure_platform::auth::ServiceToken::dev(issuer, "tenure-system");

    // One consuming database; each replica has its own pool and log handle, as two
    // processes would.
    let consumer_db = TestDb::new().await.unwrap();
    let first = consumer_db.connect().await.unwrap();
    first
        .migrate(vec![
            MigrationSpec::event_log(400_000, "notifications", first.backend()),
            MigrationSpec::new(
                499_999,
                "test table",
                "CREATE TABLE seen_all (sequence BIGINT NOT NULL, replica TEXT NOT NULL)",
            ),
        ])
        .await
        .unwrap();
    let mut runs = Vec::new();
    for replica in ["a", "b"] {
        let db = consumer_db.connect().await.unwrap();
        let log = EventLog::<ntf::Event>::open(db, Arc::new(SystemClock), "notifications")
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let c = Consumer {
            name: "assignments".to_owned(),
            log,
            source: Arc::new(AssignmentsSource {
                channel: server.channel(),
                token: token.clone(),
            }),
            handler: Arc::new(RecordAll(replica)),
        };
        runs.push((tokio::spawn(c.run(stop.clone())), stop));
    }

    let base = server.contexts.assignments.as_ref().unwrap().log.head();
    produce(&server, 1, 150).await;
    let want = base + 150;
    let mut done = false;
    for _ in 0..800 {
        let c: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT sequence) FROM seen_all")
            .fetch_one(first.reader())
            .await
            .unwrap();
        if c >= want {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(done, "the replicas did not handle all {want} events");
    for (task, stop) in runs {
        stop.cancel();
        task.await.unwrap();
    }
    server.stop().await.unwrap();

    let dupes: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT sequence, COUNT(*) FROM seen_all GROUP BY sequence HAVING COUNT(*) > 1",
    )
    .fetch_all(first.reader())
    .await
    .unwrap();
    assert!(dupes.is_empty(), "events handled twice: {dupes:?}");
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seen_all")
        .fetch_one(first.reader())
        .await
        .unwrap();
    assert_eq!(total, want, "each event exactly once across both replicas");
}
