//! The event log on both backends: replay then live, filters, gapless commit order under
//! concurrent writers, and the consumer's effectively-once cursor across restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sqlx::Row as _;
use tenure_platform::ApiError;
use tenure_platform::clock::{SharedClock, SystemClock};
use tenure_platform::consumer::{Consumer, EventHandler, LocalSource};
use tenure_platform::db::{Backend, Db, MigrationSpec};
use tenure_platform::events::{EventLog, NewEvent, TypeFilter, UnitOfWork};
use tenure_platform::testing::{TestDb, on_postgres};
use tenure_proto::EventEnvelope;
use tenure_proto::common::v1::EventMeta;
use tokio_util::sync::CancellationToken;

/// A minimal envelope: the metadata and one of two payload kinds.
#[derive(Clone, PartialEq, prost::Message)]
struct TestEvent {
    #[prost(message, optional, tag = "1")]
    meta: Option<EventMeta>,
    #[prost(string, tag = "10")]
    note: String,
    #[prost(bool, tag = "11")]
    loud: bool,
}

impl EventEnvelope for TestEvent {
    const CONTEXT: &'static str = "test";
    fn meta(&self) -> Option<&EventMeta> {
        self.meta.as_ref()
    }
    fn set_meta(&mut self, meta: EventMeta) {
        self.meta = Some(meta);
    }
    fn payload_type(&self) -> Option<&'static str> {
        Some(if self.loud {
            "tenure.test.v1.Shouted"
        } else {
            "tenure.test.v1.Noted"
        })
    }
}

fn ev(note: &str, loud: bool) -> NewEvent<TestEvent> {
    NewEvent::new(
        TestEvent {
            meta: None,
            note: note.to_owned(),
            loud,
        },
        "tester",
        format!("subject-{note}"),
    )
}

async fn setup(prefixes: &[&str]) -> (TestDb, Db) {
    let tdb = TestDb::new().await.unwrap();
    let db = tdb.connect().await.unwrap();
    let mut specs = Vec::new();
    for (i, p) in prefixes.iter().enumerate() {
        specs.push(MigrationSpec::event_log(
            900_000 + 1000 * i as i64,
            p,
            db.backend(),
        ));
    }
    specs.push(MigrationSpec::new(
        999_000,
        "side effects table for consumer tests",
        "CREATE TABLE seen (sequence BIGINT PRIMARY KEY, note TEXT NOT NULL)",
    ));
    specs.push(MigrationSpec::new(
        999_001,
        "what consumer tests write once per batch",
        "CREATE TABLE batches (n BIGINT NOT NULL)",
    ));
    db.migrate(specs).await.unwrap();
    (tdb, db)
}

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

async fn commit(log: &EventLog<TestEvent>, events: Vec<NewEvent<TestEvent>>) -> Vec<i64> {
    let mut uow = log.begin().await.unwrap();
    for e in events {
        uow.emit(e);
    }
    uow.commit().await.unwrap()
}

async fn next(
    stream: &mut (impl futures::Stream<Item = Result<Arc<TestEvent>, ApiError>> + Unpin),
) -> Arc<TestEvent> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no event within 10 s")
        .expect("stream ended")
        .expect("stream error")
}

fn seq(e: &TestEvent) -> i64 {
    e.meta.as_ref().unwrap().sequence
}

#[tokio::test]
async fn replays_after_the_cursor_then_follows_live_events() {
    let (_t, db) = setup(&["t"]).await;
    let log = EventLog::<TestEvent>::open(db, clock(), "t").await.unwrap();
    let stop = CancellationToken::new();
    log.spawn_tailer(&stop);

    let seqs = commit(&log, (1..=5).map(|i| ev(&i.to_string(), false)).collect()).await;
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "sequences start at 1 and have no gaps"
    );

    let mut s = Box::pin(log.subscribe(2, TypeFilter::default()));
    for want in 3..=5 {
        let e = next(&mut s).await;
        assert_eq!(seq(&e), want);
        let m = e.meta.as_ref().unwrap();
        assert_eq!(m.context, "test");
        assert_eq!(m.r#type, "tenure.test.v1.Noted");
        assert_eq!(m.actor, "tester");
        assert_eq!(m.subject, format!("subject-{want}"));
        assert_eq!(e.note, want.to_string());
    }
    // live
    commit(&log, vec![ev("6", false), ev("7", false)]).await;
    assert_eq!(seq(&*next(&mut s).await), 6);
    assert_eq!(seq(&*next(&mut s).await), 7);
    stop.cancel();
}

#[tokio::test]
async fn a_rolled_back_unit_consumes_no_sequence_and_leaves_no_event() {
    let (_t, db) = setup(&["t"]).await;
    let log = EventLog::<TestEvent>::open(db.clone(), clock(), "t")
        .await
        .unwrap();
    commit(&log, vec![ev("a", false)]).await;
    let mut uow = log.begin().await.unwrap();
    sqlx::query("INSERT INTO seen (sequence, note) VALUES (100, 'half-written')")
        .execute(&mut **uow.tx())
        .await
        .unwrap();
    uow.emit(ev("lost", false));
    uow.rollback().await.unwrap();
    assert_eq!(commit(&log, vec![ev("b", false)]).await, vec![2]);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seen")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert_eq!(n, 0, "the state change rolled back with its event");
}

#[tokio::test]
async fn a_unit_committed_with_something_unwritten_fails_and_rolls_back_whole() {
    let (_t, db) = setup(&["t"]).await;
    let log = EventLog::<TestEvent>::open(db.clone(), clock(), "t")
        .await
        .unwrap();
    let mut uow = log.begin().await.unwrap();
    sqlx::query("INSERT INTO seen (sequence, note) VALUES (100, 'with the entries')")
        .execute(&mut **uow.tx())
        .await
        .unwrap();
    uow.emit(ev("with the entries", false));
    uow.mark_unwritten("audit entries");
    let err = uow.commit().await.unwrap_err();
    assert!(
        err.to_string().contains("audit entries not yet written"),
        "the error names what was not written: {err}"
    );
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seen")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert_eq!(n, 0, "the state change rolled back");
    assert_eq!(
        commit(&log, vec![ev("next", false)]).await,
        vec![1],
        "its event took no sequence"
    );

    // Once written, the unit commits as usual.
    let mut uow = log.begin().await.unwrap();
    uow.mark_unwritten("audit entries");
    uow.written();
    uow.emit(ev("written", false));
    assert_eq!(uow.commit().await.unwrap(), vec![2]);
}

#[tokio::test]
async fn filters_by_full_or_simple_type_name() {
    let (_t, db) = setup(&["t"]).await;
    let log = EventLog::<TestEvent>::open(db, clock(), "t").await.unwrap();
    let stop = CancellationToken::new();
    log.spawn_tailer(&stop);
    commit(
        &log,
        vec![ev("1", false), ev("2", true), ev("3", false), ev("4", true)],
    )
    .await;
    for name in ["Shouted", "tenure.test.v1.Shouted"] {
        let mut s = Box::pin(log.subscribe(0, TypeFilter::new(vec![name.to_owned()]).unwrap()));
        assert_eq!(seq(&*next(&mut s).await), 2);
        assert_eq!(seq(&*next(&mut s).await), 4);
    }
    assert!(TypeFilter::new(vec![String::new()]).is_err());
    stop.cancel();
}

/// A filtered subscriber far behind the head reads from the database only the events
/// that may pass (the filter is applied in SQL), in pages, and still gets every match
/// in order, without gaps or repeats, then the live ones.
#[tokio::test]
async fn a_filtered_subscriber_far_behind_reads_only_matching_events_from_the_database() {
    let (_t, db) = setup(&["t"]).await;
    let writer = EventLog::<TestEvent>::open(db.clone(), clock(), "t")
        .await
        .unwrap();
    // 2,500 events, "Shouted" at 7 places (across the 1,000-row pages); the rest "Noted".
    let loud = [1_i64, 999, 1000, 1001, 2000, 2499, 2500];
    for chunk in 0..5 {
        let events = (1..=500)
            .map(|i| {
                let n = chunk * 500 + i;
                ev(&n.to_string(), loud.contains(&n))
            })
            .collect();
        commit(&writer, events).await;
    }
    // A log opened now has an empty ring: the subscription reads the database.
    let log = EventLog::<TestEvent>::open(db.clone(), clock(), "t")
        .await
        .unwrap();
    assert_eq!(log.head(), 2500);
    let stop = CancellationToken::new();
    log.spawn_tailer(&stop);
    let mut matches: Vec<i64> = loud.to_vec();
    for name in ["Shouted", "tenure.test.v1.Shouted"] {
        let mut s = Box::pin(log.subscribe(0, TypeFilter::new(vec![name.to_owned()]).unwrap()));
        for &want in &matches {
            let e = next(&mut s).await;
            assert_eq!(seq(&e), want, "{name}");
            assert!(e.loud);
            if want <= 2500 {
                assert_eq!(e.note, want.to_string());
            }
        }
        // Nothing else is pending; the next is a live one.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), s.next())
                .await
                .is_err(),
            "no event after the last match"
        );
        let live = commit(&log, vec![ev("quiet", false), ev("live", true)]).await;
        assert_eq!(seq(&*next(&mut s).await), live[1]);
        matches.push(live[1]);
    }

    // Both names at once, from the middle: the matches after 1000 only.
    let both = TypeFilter::new(vec!["Shouted".into(), "tenure.test.v1.Shouted".into()]).unwrap();
    let log2 = EventLog::<TestEvent>::open(db, clock(), "t").await.unwrap();
    let mut s = Box::pin(log2.subscribe(1000, both));
    for want in [1001, 2000, 2499, 2500] {
        assert_eq!(seq(&*next(&mut s).await), want);
    }
    stop.cancel();
}

/// Many writers commit concurrently with random pauses inside their transactions; a
/// subscriber that started before them must see every event exactly once, in
/// sequence order, with no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_make_a_live_subscriber_skip() {
    let (_t, db) = setup(&["t"]).await;
    let log = EventLog::<TestEvent>::open(db.clone(), clock(), "t")
        .await
        .unwrap();
    let stop = CancellationToken::new();
    log.spawn_tailer(&stop);
    let mut s = Box::pin(log.subscribe(0, TypeFilter::default()));

    let writers = 6;
    let per_writer = 40;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let mut uow = log.begin().await.unwrap();
                sqlx::query("INSERT INTO seen (sequence, note) VALUES ($1, 'w')")
                    .bind(i64::from(w * 1000 + i))
                    .execute(&mut **uow.tx())
                    .await
                    .unwrap();
                uow.emit(ev(&format!("{w}-{i}"), false));
                if (w + i) % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                uow.commit().await.unwrap();
            }
        }));
    }
    let total = i64::from(writers * per_writer);
    for want in 1..=total {
        assert_eq!(seq(&*next(&mut s).await), want);
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t_events")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert_eq!(stored, total);
    stop.cancel();
}

/// The out-of-order commit case on PostgreSQL: transaction A takes its sequence and is
/// slow to commit while B commits. A subscriber reading `sequence > cursor` must not skip
/// A's event. The head-row lock makes B wait for A. The same reader over a plain
/// BIGSERIAL table (the naive outbox) does skip, which the second half shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_commit_is_not_skipped_on_postgres_while_a_serial_id_would_be() {
    if !on_postgres() {
        eprintln!("skipped: needs TENURE_TEST_DATABASE_URL (PostgreSQL)");
        return;
    }
    let (_t, db) = setup(&["t"]).await;
    let log = EventLog::<TestEvent>::open(db.clone(), clock(), "t")
        .await
        .unwrap();
    let stop = CancellationToken::new();
    log.spawn_tailer(&stop);
    let mut s = Box::pin(log.subscribe(0, TypeFilter::default()));

    // A: takes its sequence through a unit of work's commit path, but we hold its
    // transaction open by writing the head row first in a raw transaction.
    let mut a = db.begin().await.unwrap();
    let a_seq: i64 = sqlx::query_scalar("UPDATE t_event_head SET last_sequence = last_sequence + 1 WHERE id = 1 RETURNING last_sequence")
        .fetch_one(&mut *a)
        .await
        .unwrap();
    assert_eq!(a_seq, 1);
    // B: a normal unit of work commits meanwhile; it must wait for A.
    let b_log = log.clone();
    let b = tokio::spawn(async move { commit(&b_log, vec![ev("b", false)]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !b.is_finished(),
        "B committed while A held an earlier sequence"
    );
    sqlx::query("INSERT INTO t_events (sequence, id, event_type, occurred_at, actor, subject, correlation_id, traceparent, tracestate, payload) VALUES (1, 'a', 'tenure.test.v1.Noted', 0, 'x', 'a', '', '', '', $1)")
        .bind(prost::Message::encode_to_vec(&TestEvent { meta: None, note: "a".into(), loud: false }))
        .execute(&mut *a)
        .await
        .unwrap();
    a.commit().await.unwrap();
    log.poke();
    assert_eq!(b.await.unwrap(), vec![2]);
    assert_eq!(next(&mut s).await.note, "a");
    assert_eq!(next(&mut s).await.note, "b");

    // The naive outbox: BIGSERIAL ids, reader polls `id > cursor`.
    sqlx::query("CREATE TABLE naive (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)")
        .execute(db.writer())
        .await
        .unwrap();
    let mut late = db.begin().await.unwrap();
    sqlx::query("INSERT INTO naive (note) VALUES ('late')")
        .execute(&mut *late)
        .await
        .unwrap(); // takes id 1
    sqlx::query("INSERT INTO naive (note) VALUES ('early')")
        .execute(db.writer())
        .await
        .unwrap(); // id 2, committed
    let mut cursor = 0i64;
    let mut seen = Vec::new();
    for row in sqlx::query("SELECT id, note FROM naive WHERE id > $1 ORDER BY id")
        .bind(cursor)
        .fetch_all(db.reader())
        .await
        .unwrap()
    {
        cursor = row.get::<i64, _>("id");
        seen.push(row.get::<String, _>("note"));
    }
    late.commit().await.unwrap();
    for row in sqlx::query("SELECT id, note FROM naive WHERE id > $1 ORDER BY id")
        .bind(cursor)
        .fetch_all(db.reader())
        .await
        .unwrap()
    {
        seen.push(row.get::<String, _>("note"));
    }
    assert_eq!(
        seen,
        vec!["early".to_owned()],
        "the naive outbox skips the late commit"
    );
    stop.cancel();
}

/// Counts each event into `seen` in the consumer's transaction.
struct Recorder;

impl EventHandler<TestEvent, TestEvent> for Recorder {
    fn handle<'a>(
        &'a self,
        uow: &'a mut UnitOfWork<TestEvent>,
        event: &'a TestEvent,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO seen (sequence, note) VALUES ($1, $2)")
                .bind(seq(event))
                .bind(&event.note)
                .execute(&mut **uow.tx())
                .await?;
            Ok(())
        })
    }
}

async fn wait_cursor(db: &Db, want: i64) {
    for _ in 0..500 {
        let c: Option<i64> =
            sqlx::query_scalar("SELECT last_sequence FROM c_cursors WHERE source = 'p'")
                .fetch_optional(db.reader())
                .await
                .unwrap();
        if c == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("consumer did not reach {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_handles_each_event_once_across_restarts_of_both_sides() {
    let (_t, db) = setup(&["p", "c"]).await;
    let own = EventLog::<TestEvent>::open(db.clone(), clock(), "c")
        .await
        .unwrap();

    let start_producer = || async {
        let log = EventLog::<TestEvent>::open(db.clone(), clock(), "p")
            .await
            .unwrap();
        let stop = CancellationToken::new();
        log.spawn_tailer(&stop);
        (log, stop)
    };
    let start_consumer = |log: EventLog<TestEvent>| {
        let stop = CancellationToken::new();
        let consumer = Consumer {
            name: "p".to_owned(),
            log: own.clone(),
            source: Arc::new(LocalSource(log)),
            handler: Arc::new(Recorder),
        };
        let task = tokio::spawn(consumer.run(stop.clone()));
        (task, stop)
    };

    let (plog, pstop) = start_producer().await;
    commit(&plog, (1..=10).map(|i| ev(&i.to_string(), false)).collect()).await;
    let (task, cstop) = start_consumer(plog.clone());
    wait_cursor(&db, 10).await;

    // Kill the consumer, write more, restart the producer (a new log object, as after a
    // process restart), write more, then start a new consumer.
    cstop.cancel();
    task.await.unwrap();
    commit(
        &plog,
        (11..=15).map(|i| ev(&i.to_string(), false)).collect(),
    )
    .await;
    pstop.cancel();
    let (plog, pstop) = start_producer().await;
    commit(
        &plog,
        (16..=20).map(|i| ev(&i.to_string(), false)).collect(),
    )
    .await;
    let (task, cstop) = start_consumer(plog.clone());
    wait_cursor(&db, 20).await;
    // live after resume
    commit(&plog, vec![ev("21", false)]).await;
    wait_cursor(&db, 21).await;
    cstop.cancel();
    task.await.unwrap();
    pstop.cancel();

    let rows: Vec<i64> = sqlx::query_scalar("SELECT sequence FROM seen ORDER BY sequence")
        .fetch_all(db.reader())
        .await
        .unwrap();
    assert_eq!(
        rows,
        (1..=21).collect::<Vec<_>>(),
        "every event handled exactly once"
    );
    assert_eq!(db.backend() == Backend::Postgres, on_postgres());
}

/// Records each event with its position in its unit of work (by emitting one event of
/// the consuming context per handled event and reading how many are staged), and fails
/// once, the first time it meets sequence `fail_at`, after the events before it in the
/// same batch were handled.
struct BatchRecorder {
    fail_at: i64,
    failed: std::sync::atomic::AtomicBool,
}

impl EventHandler<TestEvent, TestEvent> for BatchRecorder {
    fn handle<'a>(
        &'a self,
        uow: &'a mut UnitOfWork<TestEvent>,
        event: &'a TestEvent,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if seq(event) == self.fail_at
                && !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(ApiError::Internal(anyhow::anyhow!("injected failure")));
            }
            uow.emit(ev(&format!("handled {}", seq(event)), false));
            *uow.cache::<i64>() += 1;
            sqlx::query("INSERT INTO seen (sequence, note) VALUES ($1, $2)")
                .bind(seq(event))
                .bind(uow.pending().to_string())
                .execute(&mut **uow.tx())
                .await?;
            Ok(())
        })
    }

    fn finish<'a>(
        &'a self,
        uow: &'a mut UnitOfWork<TestEvent>,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let n = *uow.cache::<i64>();
            sqlx::query("INSERT INTO batches (n) VALUES ($1)")
                .bind(n)
                .execute(&mut **uow.tx())
                .await?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_handled_in_batches_that_commit_or_roll_back_whole() {
    let (_t, db) = setup(&["p", "c"]).await;
    let own = EventLog::<TestEvent>::open(db.clone(), clock(), "c")
        .await
        .unwrap();
    let plog = EventLog::<TestEvent>::open(db.clone(), clock(), "p")
        .await
        .unwrap();
    let pstop = CancellationToken::new();
    plog.spawn_tailer(&pstop);
    // A backlog of 300 events before the consumer starts.
    for chunk in 0..3 {
        commit(
            &plog,
            (1..=100)
                .map(|i| ev(&(chunk * 100 + i).to_string(), false))
                .collect(),
        )
        .await;
    }
    let stop = CancellationToken::new();
    let consumer = Consumer {
        name: "p".to_owned(),
        log: own.clone(),
        source: Arc::new(LocalSource(plog.clone())),
        handler: Arc::new(BatchRecorder {
            fail_at: 150,
            failed: false.into(),
        }),
    };
    let task = tokio::spawn(consumer.run(stop.clone()));
    wait_cursor(&db, 300).await;
    stop.cancel();
    task.await.unwrap();
    pstop.cancel();

    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT sequence, note FROM seen ORDER BY sequence")
            .fetch_all(db.reader())
            .await
            .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>(),
        "every event handled exactly once, also those of the batch that failed"
    );
    let positions: Vec<usize> = rows.iter().map(|r| r.1.parse().unwrap()).collect();
    let largest = positions.iter().copied().max().unwrap();
    assert!(
        largest > 1,
        "a backlog is handled several events per unit of work"
    );
    assert!(largest <= tenure_platform::consumer::MAX_BATCH);
    // What the failed batch emitted was rolled back with it: one own event per event.
    let own_events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM c_events")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert_eq!(own_events, 300);
    // `finish` ran once per committed batch, in its unit of work, and saw what the
    // batch's handlers kept in the unit's cache: the failed batch's count rolled back
    // with it, and no count leaked from one unit into the next.
    let (batches, total, most): (i64, i64, i64) =
        sqlx::query_as("SELECT COUNT(*), CAST(SUM(n) AS BIGINT), MAX(n) FROM batches")
            .fetch_one(db.reader())
            .await
            .unwrap();
    assert_eq!(
        total, 300,
        "each event counted in exactly one committed batch"
    );
    assert!(batches < 300 && batches >= 300 / tenure_platform::consumer::MAX_BATCH as i64);
    assert!(most <= tenure_platform::consumer::MAX_BATCH as i64);
}

#[tokio::test]
async fn a_unit_appends_many_events_in_order_with_gapless_sequences() {
    // 203 events: multi-row INSERTs of 64, 64, 64, 8, 2 and 1 rows.
    let (_t, db) = setup(&["t"]).await;
    let log = EventLog::<TestEvent>::open(db, clock(), "t").await.unwrap();
    commit(&log, vec![ev("first", true)]).await;
    let seqs = commit(
        &log,
        (1..=203).map(|i| ev(&i.to_string(), i % 7 == 0)).collect(),
    )
    .await;
    assert_eq!(seqs, (2..=204).collect::<Vec<_>>());
    let read = log.read_after(0, 1000).await.unwrap();
    assert_eq!(read.len(), 204);
    assert_eq!(read[0].note, "first");
    for (i, e) in read.iter().enumerate().skip(1) {
        let m = e.meta.as_ref().unwrap();
        assert_eq!(m.sequence, i as i64 + 1);
        assert_eq!(e.note, i.to_string(), "payload of event {i} in its place");
        assert_eq!(m.subject, format!("subject-{i}"));
        let want = if i % 7 == 0 {
            "tenure.test.v1.Shouted"
        } else {
            "tenure.test.v1.Noted"
        };
        assert_eq!(m.r#type, want);
    }
    assert_eq!(commit(&log, vec![ev("after", false)]).await, vec![205]);
}

#[tokio::test]
async fn events_record_the_trace_context_of_the_call_that_wrote_them() {
    let (_t, db) = setup(&["t"]).await;
    let log = EventLog::<TestEvent>::open(db, clock(), "t").await.unwrap();
    let tc = tenure_platform::trace::TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("vendor=1"),
    )
    .unwrap();
    let log2 = log.clone();
    tc.scope(async move {
        let mut uow = log2.begin().await.unwrap();
        uow.emit(ev("traced", false).correlated("req-1"));
        uow.commit().await.unwrap();
    })
    .await;
    commit(&log, vec![ev("untraced", false)]).await;
    let events = log.read_after(0, 10).await.unwrap();
    let m = events[0].meta.as_ref().unwrap();
    assert_eq!(
        m.traceparent,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(m.tracestate, "vendor=1");
    assert_eq!(m.correlation_id, "req-1");
    assert!(events[1].meta.as_ref().unwrap().traceparent.is_empty());
}
