//! Crashes: the real `tenure` process (all contexts) runs a mixed workload — approval-free
//! activations, activations approved by an approver, early deactivations — and is killed
//! with SIGKILL at a random moment, several times, on SQLite and on PostgreSQL. After
//! every restart:
//! * each context's event log is gapless and its head row matches it;
//! * every committed activation request has its `RequestCreated` event, and every
//!   provisioned instance its `InstanceActivated` event;
//! * a subscriber reading a stream from the start sees 1..head without gaps;
//! * the consumers catch up, each event audited once (one audit entry per event, so the
//!   audit count equals the cursor);
//! * no request is stuck: nothing stays GRANTED (approved, to be provisioned);
//! * nothing is granted past its end: every provisioned request's instance ends when
//!   the request says.
//!
//! Bounded for CI: `TENURE_CRASH_CYCLES` (default 4) kills; a longer run is
//! `TENURE_CRASH_CYCLES=50 cargo test -p tenure-e2e --test crash -- --nocapture`.
//! Expiries are covered with moved time in-process (tests/tests/restart.rs); real
//! processes keep real time, and the shortest window is 5 minutes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt as _;
use rand::Rng as _;
use tenure_e2e::cluster::{Cluster, NodeSpec, eventually, free_port};
use tenure_e2e::harness::approval_by;
use tenure_platform::db::Db;
use tenure_platform::testing::TestDb;
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalType};
use tonic::transport::Channel;

const ADMIN: &str = "admin";
const QUICK: &str = "security-reader";
const APPROVED: &str = "billing-administrator";
const PER_CYCLE: usize = 8;

type ActivationClient = act::activation_service_client::ActivationServiceClient<Channel>;

fn item(role: &str) -> act::ActivationItem {
    act::ActivationItem {
        role_id: role.into(),
        scope_id: "/".into(),
        justification: "crash test".into(),
        ..Default::default()
    }
}

async fn setup(c: &Cluster, cycles: usize) {
    let ch = c.channel("all");
    let mut people = vec!["approver".to_owned()];
    people.extend((0..cycles * PER_CYCLE).map(|i| format!("w{i:03}")));
    asg::principals_service_client::PrincipalsServiceClient::new(ch.clone())
        .upsert_principals(
            c.req(
                ADMIN,
                true,
                asg::UpsertPrincipalsRequest {
                    principals: people
                        .iter()
                        .map(|id| asg::Principal {
                            id: id.clone(),
                            r#type: PrincipalType::User.into(),
                            display_name: id.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    request_id: String::new(),
                },
            ),
        )
        .await
        .unwrap();
    let settings = asg::role_settings_service_client::RoleSettingsServiceClient::new(ch.clone());
    for (role, a) in [
        (
            QUICK,
            asg::ActivationSettings {
                require_mfa: Some(false),
                require_approval: Some(false),
                ..Default::default()
            },
        ),
        (APPROVED, approval_by(&["approver"])),
    ] {
        settings
            .clone()
            .update_role_settings(c.req(
                ADMIN,
                true,
                asg::UpdateRoleSettingsRequest {
                    role_settings: Some(asg::RoleSettings {
                        role_id: role.into(),
                        activation: Some(a),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["activation".into()],
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap();
    }
    let assignments = asg::assignments_service_client::AssignmentsServiceClient::new(ch);
    for who in &people[1..] {
        for role in [QUICK, APPROVED] {
            assignments
                .clone()
                .create_assignment(c.req(
                    ADMIN,
                    true,
                    asg::CreateAssignmentRequest {
                        assignment_type: AssignmentType::Eligible.into(),
                        principal_id: who.clone(),
                        role_id: role.into(),
                        scope_id: "/".into(),
                        justification: "crash test".into(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap();
        }
    }
}

/// One user's share of the workload; errors are expected once the server is killed.
fn with_token<T>(token: &str, msg: T) -> tonic::Request<T> {
    tenure_e2e::harness::authed(msg, token)
}

async fn work(c: ActivationClient, tokens: (String, String), who: String) {
    let (mine, approver) = tokens;
    let mut c = c;
    let quick = c
        .activate_roles(with_token(
            &mine,
            act::ActivateRolesRequest {
                items: vec![item(QUICK)],
                request_id: format!("quick-{who}"),
                ..Default::default()
            },
        ))
        .await;
    let pending = c
        .activate_roles(with_token(
            &mine,
            act::ActivateRolesRequest {
                items: vec![item(APPROVED)],
                request_id: format!("approved-{who}"),
                ..Default::default()
            },
        ))
        .await;
    if let Ok(p) = pending
        && let Some(r) = p
            .into_inner()
            .results
            .first()
            .and_then(|r| r.request.clone())
    {
        let _ = c
            .approve_request(with_token(
                &approver,
                act::ApproveRequestRequest {
                    id: r.id,
                    justification: "ok".into(),
                    request_id: String::new(),
                },
            ))
            .await;
    }
    if let Ok(q) = quick
        && let Some(r) = q
            .into_inner()
            .results
            .first()
            .and_then(|r| r.request.clone())
    {
        let _ = c
            .deactivate_role(with_token(
                &mine,
                act::DeactivateRoleRequest {
                    activation_request_id: r.id,
                    ..Default::default()
                },
            ))
            .await;
    }
}

async fn scalar(db: &Db, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db.reader())
        .await
        .unwrap()
}

/// The contexts' databases: one on PostgreSQL, a file each on SQLite.
#[derive(Clone)]
struct Dbs(Vec<(&'static str, Db)>);

impl Dbs {
    async fn open(t: &TestDb) -> Self {
        let mut v = Vec::new();
        for ctx in CONTEXTS {
            v.push((ctx, t.connect_context(ctx).await.unwrap()));
        }
        Self(v)
    }

    fn of(&self, ctx: &str) -> &Db {
        &self.0.iter().find(|(c, _)| *c == ctx).unwrap().1
    }
}

const CONTEXTS: [&str; 4] = ["assignments", "activation", "reviews", "notifications"];

async fn check_logs_gapless(dbs: &Dbs) {
    for ctx in CONTEXTS {
        let db = dbs.of(ctx);
        // One statement, one snapshot: the restarted server keeps writing meanwhile.
        let (head, count, max, beyond): (i64, i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT h.last_sequence, \
                    (SELECT COUNT(*) FROM {ctx}_events WHERE sequence <= h.last_sequence), \
                    (SELECT COALESCE(MAX(sequence), 0) FROM {ctx}_events WHERE sequence <= h.last_sequence), \
                    (SELECT COUNT(*) FROM {ctx}_events WHERE sequence > h.last_sequence) \
             FROM {ctx}_event_head h WHERE h.id = 1"
        ))
        .fetch_one(db.reader())
        .await
        .unwrap();
        assert_eq!(
            (count, max, beyond),
            (head, head, 0),
            "{ctx} log gapless and its head row right"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let cycles: usize = std::env::var("TENURE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let db = TestDb::new().await.unwrap();
    let mut c = Cluster::new(&db.url);
    // The setup creates 16 assignments per cycle as one administrator; a long run would
    // exceed the per-principal mutation burst, which is not what this test is about.
    c.extra_toml = "\n[limits]\nmutations_per_principal_per_sec = 0\n".into();
    c.start(NodeSpec {
        name: "all",
        contexts: "all",
        addr: free_port(),
        peers: vec![],
    })
    .await;
    setup(&c, cycles).await;
    let pg = Dbs::open(&db).await;
    let mut rng = rand::thread_rng();

    for cycle in 0..cycles {
        let client = ActivationClient::new(c.channel("all"));
        let approver = c.token("approver", false);
        let mut load = tokio::task::JoinSet::new();
        for k in 0..PER_CYCLE {
            let who = format!("w{:03}", cycle * PER_CYCLE + k);
            let tokens = (c.token(&who, false), approver.clone());
            load.spawn(work(client.clone(), tokens, who));
        }
        let after = rng.gen_range(10..250);
        tokio::time::sleep(Duration::from_millis(after)).await;
        c.node("all").kill9();
        while load.join_next().await.is_some() {}
        c.restart("all").await;

        // Committed means evented, and the logs are gapless.
        check_logs_gapless(&pg).await;
        // Each pair in one statement (one snapshot): the timer may provision meanwhile.
        let (requests, created): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM activation_requests), \
                    (SELECT COUNT(DISTINCT subject) FROM activation_events WHERE event_type LIKE '%RequestCreated')",
        )
        .fetch_one(pg.of("activation").reader())
        .await
        .unwrap();
        assert_eq!(
            requests, created,
            "cycle {cycle}: every request has its RequestCreated"
        );
        let (instances, activated): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM assignments_activations), \
                    (SELECT COUNT(*) FROM assignments_events WHERE event_type LIKE '%InstanceActivated')",
        )
        .fetch_one(pg.of("assignments").reader())
        .await
        .unwrap();
        assert_eq!(
            instances, activated,
            "cycle {cycle}: every instance has its event, once"
        );

        // A subscriber from the start sees every sequence once, in order.
        let head = scalar(
            pg.of("activation"),
            "SELECT last_sequence FROM activation_event_head WHERE id = 1",
        )
        .await;
        let mut events = act::events_service_client::EventsServiceClient::new(c.channel("all"))
            .subscribe_events(c.req(ADMIN, false, act::SubscribeEventsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let mut expect = 1;
        while expect <= head {
            let e = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("stream stalled")
                .expect("stream ended")
                .unwrap();
            assert_eq!(
                e.event.unwrap().meta.unwrap().sequence,
                expect,
                "cycle {cycle}: no gap, no repeat"
            );
            expect += 1;
        }
        drop(events);

        // Nothing stuck: approved requests get provisioned after the restart.
        let granted = act::RequestStatus::Granted as i64;
        eventually(
            30,
            &format!("cycle {cycle}: no request left GRANTED"),
            || {
                let pg = pg.clone();
                async move {
                    scalar(
                        pg.of("activation"),
                        &format!(
                            "SELECT COUNT(*) FROM activation_requests WHERE status = {granted}"
                        ),
                    )
                    .await
                        == 0
                }
            },
        )
        .await;
        // The consumers catch up, and audit each event once.
        eventually(30, &format!("cycle {cycle}: audit caught up"), || {
            let pg = pg.clone();
            async move {
                let head = scalar(pg.of("activation"), "SELECT last_sequence FROM activation_event_head WHERE id = 1").await;
                let cursor = scalar(
                    pg.of("notifications"),
                    "SELECT COALESCE(MAX(last_sequence), 0) FROM notifications_cursors WHERE source = 'activation'",
                )
                .await;
                let audited = scalar(
                    pg.of("notifications"),
                    "SELECT COUNT(*) FROM notifications_audit WHERE source_context = 'activation'",
                )
                .await;
                cursor == head && audited == head
            }
        })
        .await;
        // No activation outlives its request's end: each instance ends at or before it.
        let late = scalar(
            pg.of("assignments"),
            "SELECT COUNT(*) FROM assignments_activations a WHERE a.ended_at IS NOT NULL AND a.ended_at > a.end_at",
        )
        .await;
        assert_eq!(late, 0, "cycle {cycle}: an instance ended after its end");
        eprintln!(
            "crash: cycle {cycle} killed after {after} ms; {requests} requests, {instances} instances, all consistent"
        );
    }
    let provisioned = scalar(
        pg.of("activation"),
        &format!(
            "SELECT COUNT(*) FROM activation_requests WHERE status = {}",
            act::RequestStatus::Provisioned as i64
        ),
    )
    .await;
    let ended = scalar(
        pg.of("activation"),
        &format!(
            "SELECT COUNT(*) FROM activation_requests WHERE status = {}",
            act::RequestStatus::Ended as i64
        ),
    )
    .await;
    assert!(
        provisioned + ended > 0,
        "the workload did something between the kills"
    );
}
