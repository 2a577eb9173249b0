//! Where the cold start's time goes: the server fills the access model from the current
//! rows (`Core::start`, `tenure_assignments::load`); it used to replay this context's
//! event log. This seeds N assignments with their `AssignmentCreated` events (default
//! 100,000; `TENURE_COLD_START_EVENTS`), then times the load, the phases of a replay
//! (reading the rows, decoding the events, applying them to a model) and the whole
//! restart of the assignments context, and checks both ways hold the same model.
//! `TENURE_COLD_START_LOADS=N` repeats the load N more times (to profile it).
//!
//! Ignored by default (it takes tens of seconds in a debug build):
//! `cargo test -p tenure-assignments --test cold_start -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/src/harness.rs"]
mod common;

use std::time::Instant;

use common::*;
use prost::Message as _;
use sqlx::Row as _;
use tenure_assignments::model::Model;
use tenure_assignments::{load, store};
use tenure_platform::clock::Clock as _;
use tenure_platform::events::NewEvent;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::AssignmentType;

#[tokio::test]
#[ignore = "a profiling run: tens of seconds in a debug build"]
async fn cold_start_phases_at_100k_assignments() {
    let n: usize = std::env::var("TENURE_COLD_START_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // The assignments context alone: the other contexts' consumers would be catching up
    // on the seeded events, and the restart would wait for them to stop.
    // (The others are not called here; their addresses only have to be set.)
    // `TENURE_COLD_START_ALL_CONTEXTS=1` runs every context, as `tenure serve` does.
    let all = std::env::var("TENURE_COLD_START_ALL_CONTEXTS").is_ok_and(|v| v == "1");
    let mut h = Harness::start_with(|c| {
        if all {
            return;
        }
        c.contexts = "assignments".into();
        c.peers.activation = Some("http://127.0.0.1:9".into());
        c.peers.reviews = Some("http://127.0.0.1:9".into());
        c.peers.notifications = Some("http://127.0.0.1:9".into());
    })
    .await;
    let users: Vec<String> = (0..n / 10).map(|i| format!("u{i:06}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    for chunk in refs.chunks(5000) {
        h.seed_users(chunk).await;
    }
    let core = h.core();
    let now = h.clock.now();
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let mut uow = core.begin().await.unwrap();
        let mut rows = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let new = store::NewAssignment {
                id: uuid::Uuid::now_v7().to_string(),
                assignment_type: if i % 2 == 0 {
                    AssignmentType::Active
                } else {
                    AssignmentType::Eligible
                },
                principal_id: users[i % users.len()].clone(),
                role_id: ["owner", "contributor", "reader"][i % 3].into(),
                scope_id: "/".into(),
                start: now,
                end: Some(now + chrono::TimeDelta::days(30)),
                justification: "benchmark data".into(),
                ticket: None,
                actor: ADMIN.into(),
            };
            let a = store::assignment_proto(&core, &new.to_row(now), now);
            uow.emit(NewEvent::new(
                pb::AssignmentCreated {
                    assignment: Some(a),
                },
                ADMIN,
                new.id.clone(),
            ));
            rows.push(new);
        }
        store::insert_assignments(&mut uow, &rows).await.unwrap();
        core.commit(uow).await.unwrap();
    }
    eprintln!(
        "seeded {n} assignments with their events in {:?}",
        t.elapsed()
    );
    let grants = core.model().grant_count();
    assert!(grants >= n, "{grants} grants after seeding {n}");

    // How the server starts: the model from the current rows.
    let t = Instant::now();
    let (loaded, head) = load::load(&core.db).await.unwrap();
    let load_time = t.elapsed();
    for _ in 0..std::env::var("TENURE_COLD_START_LOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
    {
        let t = Instant::now();
        let _ = load::load(&core.db).await.unwrap();
        eprintln!("load again {:?}", t.elapsed());
    }
    assert_eq!(loaded.grant_count(), grants, "the load holds every grant");

    // How it started before: replaying the log, timed by phase.
    // Phase 1: reading the rows, pages of 5,000.
    let sql = "SELECT sequence, id, event_type, occurred_at, actor, subject, correlation_id, \
               traceparent, tracestate, payload FROM assignments_events \
               WHERE sequence > $1 ORDER BY sequence LIMIT $2";
    let t = Instant::now();
    let mut rows = Vec::new();
    let mut after = 0i64;
    loop {
        let page = sqlx::query(sql)
            .bind(after)
            .bind(5000i64)
            .fetch_all(core.db.reader())
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.try_get("sequence").unwrap();
        rows.extend(page);
    }
    let read = t.elapsed();
    // Phase 2: the payloads and the columns into events.
    let t = Instant::now();
    let events: Vec<pb::Event> = rows
        .iter()
        .map(|r| {
            let payload: Vec<u8> = r.try_get("payload").unwrap();
            let _: String = r.try_get("id").unwrap();
            let _: String = r.try_get("event_type").unwrap();
            pb::Event::decode(payload.as_slice()).unwrap()
        })
        .collect();
    let decode = t.elapsed();
    // Phase 3: applying them to an empty model.
    let t = Instant::now();
    let mut m = Model::default();
    for e in &events {
        m.apply(e);
    }
    let apply = t.elapsed();
    assert_eq!(m.grant_count(), grants, "the replay rebuilds every grant");
    assert_eq!(after, head, "both are as of the same sequence");
    assert!(
        loaded.differences(&m).is_empty(),
        "the loaded model and the replayed one differ"
    );
    let bytes: usize = rows
        .iter()
        .map(|r| r.try_get::<Vec<u8>, _>("payload").unwrap().len())
        .sum();
    eprintln!(
        "load from the rows: {load_time:?}; replay of {} events ({} MB of payload): read {read:?}, decode {decode:?}, apply {apply:?}",
        events.len(),
        bytes / 1_000_000
    );
    drop((rows, events, m, loaded));

    // The whole restart (stopping, then starting: Core::start loads the model before the
    // server listens).
    let t = Instant::now();
    h.restart().await;
    let restart = t.elapsed();
    assert_eq!(h.core().model().grant_count(), grants);
    eprintln!("restart (stop, load and serve; all contexts: {all}) {restart:?}");
    h.stop().await;
}
