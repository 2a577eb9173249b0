//! Several replicas starting at once on one fresh PostgreSQL database: each runs every
//! context's migrations at start, and sqlx serializes them with a PostgreSQL advisory
//! lock (`pg_advisory_lock`, taken by the migrator), so one applies them and the others
//! find them applied. Without the lock two replicas race on CREATE TABLE and one fails
//! to start.
//!
//! On SQLite the test runs one process's contexts against fresh files instead (one per
//! context): a SQLite file is for one process only (deploy/README.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tenure_platform::clock::SystemClock;
use tenure_platform::config::Config;
use tenure_platform::testing::{TestDb, on_postgres};

async fn start(url: String) -> anyhow::Result<tokio_util::sync::CancellationToken> {
    let dir = tempfile::tempdir()?;
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_path_buf(),
        database_url: Some(url),
        ..Config::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let (_, _, task) = tenure_server::spawn(
        config,
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await?;
    let stopping = stop.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        drop(dir);
    });
    Ok(stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_at_once_apply_each_migration_once() {
    let db = TestDb::new().await.unwrap();
    let replicas = if on_postgres() { 4 } else { 1 };
    let starts = (0..replicas).map(|_| start(db.url.clone()));
    let started = futures::future::join_all(starts).await;
    let stops: Vec<_> = started
        .into_iter()
        .map(|r| r.expect("every replica starts"))
        .collect();

    // On SQLite each context has its own file, with its own migration history.
    let pools = if on_postgres() {
        vec![db.connect().await.unwrap()]
    } else {
        let mut v = Vec::new();
        for ctx in ["assignments", "activation", "reviews", "notifications"] {
            v.push(db.connect_context(ctx).await.unwrap());
        }
        v
    };
    let mut total = 0;
    for pool in &pools {
        let (applied, distinct, failed): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(DISTINCT version), \
             SUM(CASE WHEN success THEN 0 ELSE 1 END) FROM _sqlx_migrations",
        )
        .fetch_one(pool.reader())
        .await
        .unwrap();
        assert!(applied >= 1, "the context's migrations ran: {applied}");
        assert_eq!(applied, distinct, "a migration was recorded twice");
        assert_eq!(failed, 0);
        total += applied;
        pool.close().await;
    }
    assert!(total > 4, "every context's migrations ran: {total}");

    // A later start (an upgrade's rolling restart) finds everything applied.
    let again = start(db.url.clone()).await.unwrap();
    again.cancel();
    for s in stops {
        s.cancel();
    }
}
