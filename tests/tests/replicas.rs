//! Split and replicated, for real: the four contexts as separate `tenure` processes, with
//! a second replica of assignments and of activation, all on one PostgreSQL database.
//! The field report's story and the multi-role story run across replicas; thirty
//! activations are in flight when one activation replica is killed with SIGKILL; then
//! every request completes exactly once, every replica's access query agrees, an expiry
//! fires once though two replicas watch it, and the audit trail has each step once.
//!
//! PostgreSQL only (set TENURE_TEST_DATABASE_URL, as CI does): several processes on one
//! SQLite file is not a supported deployment. Real processes keep real time, so the one
//! expiry here is a few seconds ahead and the test waits for its event (bounded).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use tenure_e2e::cluster::{Cluster, NodeSpec, eventually, free_port};
use tenure_e2e::harness::approval_by;
use tenure_platform::clock::Clock as _;
use tenure_platform::testing::TestDb;
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalType};
use tenure_proto::notifications::v1 as ntf;
use tonic::Code;
use tonic::transport::Channel;

const ADMIN: &str = "admin";
const BILLING: &str = "billing-administrator";
const READER: &str = "security-reader";
const BULK: usize = 30;

type AccessClient = asg::access_service_client::AccessServiceClient<Channel>;
type ActivationClient = act::activation_service_client::ActivationServiceClient<Channel>;

async fn start_cluster(url: &str) -> Cluster {
    let [a1, a2, v1, v2, r, n] = std::array::from_fn(|_| free_port());
    let mut c = Cluster::new(url);
    // Started one by one: the first assignments replica migrates and seeds the catalogue.
    let specs = [
        (
            "assignments-1",
            "assignments",
            a1,
            vec![("activation", v1), ("reviews", r), ("notifications", n)],
        ),
        (
            "assignments-2",
            "assignments",
            a2,
            vec![("activation", v2), ("reviews", r), ("notifications", n)],
        ),
        (
            "activation-1",
            "activation",
            v1,
            vec![("assignments", a1), ("reviews", r), ("notifications", n)],
        ),
        (
            "activation-2",
            "activation",
            v2,
            vec![("assignments", a2), ("reviews", r), ("notifications", n)],
        ),
        (
            "reviews",
            "reviews",
            r,
            vec![
                ("assignments", a1),
                ("activation", v1),
                ("notifications", n),
            ],
        ),
        (
            "notifications",
            "notifications",
            n,
            vec![("assignments", a1), ("activation", v1), ("reviews", r)],
        ),
    ];
    for (name, contexts, addr, peers) in specs {
        c.start(NodeSpec {
            name,
            contexts,
            addr,
            peers,
        })
        .await;
    }
    c
}

fn check(principal: &str, role: &str) -> asg::CheckAccessRequest {
    asg::CheckAccessRequest {
        principal_id: principal.into(),
        target: Some(asg::check_access_request::Target::RoleId(role.into())),
        scope_id: "/".into(),
        consistency: asg::Consistency::Full.into(),
        ..Default::default()
    }
}

async fn allowed(c: &Cluster, node: &str, principal: &str, role: &str) -> bool {
    AccessClient::new(c.channel(node))
        .check_access(c.req(ADMIN, false, check(principal, role)))
        .await
        .unwrap()
        .into_inner()
        .allowed
}

fn item(role: &str) -> act::ActivationItem {
    act::ActivationItem {
        role_id: role.into(),
        scope_id: "/".into(),
        justification: "incident 4711".into(),
        ..Default::default()
    }
}

async fn set_activation(c: &Cluster, role: &str, a: asg::ActivationSettings) {
    asg::role_settings_service_client::RoleSettingsServiceClient::new(c.channel("assignments-1"))
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

async fn assign(
    c: &Cluster,
    node: &str,
    principal: &str,
    role: &str,
    t: AssignmentType,
    schedule: Option<asg::ScheduleInput>,
) -> asg::Assignment {
    asg::assignments_service_client::AssignmentsServiceClient::new(c.channel(node))
        .create_assignment(c.req(
            ADMIN,
            true,
            asg::CreateAssignmentRequest {
                assignment_type: t.into(),
                principal_id: principal.into(),
                role_id: role.into(),
                scope_id: "/".into(),
                schedule,
                justification: "replica test".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap()
}

/// The requests `who` made, as the activation context lists them.
async fn my_requests(c: &Cluster, node: &str, who: &str) -> Vec<act::Request> {
    ActivationClient::new(c.channel(node))
        .list_requests(c.req(
            who,
            false,
            act::ListRequestsRequest {
                relation: act::RequestRelation::Mine.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_replicated_stories_survive_a_replica_killed_mid_way() {
    let db = TestDb::new().await.unwrap();
    if !db.url.starts_with("postgres") {
        eprintln!("replicas: PostgreSQL only (set TENURE_TEST_DATABASE_URL); skipped on SQLite");
        return;
    }
    let mut c = start_cluster(&db.url).await;
    let pg = db.connect().await.unwrap();

    // People, through the sync API on one replica.
    let mut people: Vec<String> = ["ferry", "kenneth", "mira"].map(String::from).to_vec();
    people.extend((0..BULK).map(|i| format!("u{i:02}")));
    asg::principals_service_client::PrincipalsServiceClient::new(c.channel("assignments-1"))
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
                            user_principal_name: format!("{id}@example.test"),
                            email: format!("{id}@example.test"),
                            ..Default::default()
                        })
                        .collect(),
                    request_id: String::new(),
                },
            ),
        )
        .await
        .unwrap();

    // --- The field report's story, across replicas -----------------------------------
    // Made eligible on assignments-2, settings on assignments-1.
    assign(
        &c,
        "assignments-2",
        "ferry",
        BILLING,
        AssignmentType::Eligible,
        None,
    )
    .await;
    set_activation(&c, BILLING, approval_by(&["kenneth"])).await;
    // Ferry asks activation-2.
    let resp = ActivationClient::new(c.channel("activation-2"))
        .activate_roles(c.req(
            "ferry",
            true,
            act::ActivateRolesRequest {
                items: vec![item(BILLING)],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let ferry = resp.results[0].request.clone().unwrap();
    assert_eq!(ferry.status(), act::RequestStatus::PendingApproval);
    // Kenneth sees it waiting on activation-1 and approves there.
    let waiting = ActivationClient::new(c.channel("activation-1"))
        .list_requests(c.req(
            "kenneth",
            false,
            act::ListRequestsRequest {
                relation: act::RequestRelation::AwaitingMyApproval.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(
        waiting.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&ferry.id]
    );
    let approved = ActivationClient::new(c.channel("activation-1"))
        .approve_request(c.req(
            "kenneth",
            false,
            act::ApproveRequestRequest {
                id: ferry.id.clone(),
                justification: "ok for month end".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(
        approved.status(),
        act::RequestStatus::Provisioned,
        "{}",
        approved.status_reason
    );
    // Both assignments replicas answer ALLOW at once (fully consistent reads).
    assert!(allowed(&c, "assignments-1", "ferry", BILLING).await);
    assert!(allowed(&c, "assignments-2", "ferry", BILLING).await);

    // --- Several roles in one request ---------------------------------------------------
    let roles = [
        "exchange-administrator",
        "user-administrator",
        "sharepoint-administrator",
    ];
    for r in roles {
        assign(
            &c,
            "assignments-1",
            "mira",
            r,
            AssignmentType::Eligible,
            None,
        )
        .await;
    }
    let resp = ActivationClient::new(c.channel("activation-2"))
        .activate_roles(c.req(
            "mira",
            true,
            act::ActivateRolesRequest {
                items: roles.iter().map(|r| item(r)).collect(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        resp.results
            .iter()
            .all(|r| r.outcome() == act::ItemOutcome::Provisioned),
        "{resp:?}"
    );
    for r in roles {
        assert!(allowed(&c, "assignments-1", "mira", r).await, "{r}");
        assert!(allowed(&c, "assignments-2", "mira", r).await, "{r}");
    }

    // --- Thirty activations in flight when activation-2 is killed -----------------------
    set_activation(
        &c,
        READER,
        asg::ActivationSettings {
            require_mfa: Some(false),
            require_approval: Some(false),
            ..Default::default()
        },
    )
    .await;
    for i in 0..BULK {
        let who = format!("u{i:02}");
        let node = if i % 2 == 0 {
            "assignments-1"
        } else {
            "assignments-2"
        };
        assign(&c, node, &who, READER, AssignmentType::Eligible, None).await;
    }
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..BULK {
        let who = format!("u{i:02}");
        let node = if i % 2 == 0 {
            "activation-1"
        } else {
            "activation-2"
        };
        let client = ActivationClient::new(c.channel(node));
        let req = c.req(
            &who,
            false,
            act::ActivateRolesRequest {
                items: vec![item(READER)],
                request_id: format!("bulk-{who}"),
                ..Default::default()
            },
        );
        inflight.spawn(async move {
            // staggered, so the kill lands while some calls are done and some in flight
            tokio::time::sleep(Duration::from_millis(15 * i as u64)).await;
            let mut client = client;
            (i, client.activate_roles(req).await)
        });
    }
    // Let a few land, then kill activation-2 while the rest are in flight.
    tokio::time::sleep(Duration::from_millis(220)).await;
    c.node("activation-2").kill9();
    let mut retry = Vec::new();
    while let Some(r) = inflight.join_next().await {
        let (i, outcome) = r.unwrap();
        match outcome {
            Ok(resp) => assert_eq!(
                resp.into_inner().results[0].outcome(),
                act::ItemOutcome::Provisioned
            ),
            Err(s) => {
                assert!(i % 2 == 1, "only activation-2's calls may fail: {s:?}");
                retry.push(i);
            }
        }
    }
    // What failed is retried on the survivor with the same request id. A request the
    // dead replica committed before it died is found, not made again.
    let mut met_first = 0;
    for i in &retry {
        let who = format!("u{i:02}");
        let r = ActivationClient::new(c.channel("activation-1"))
            .activate_roles(c.req(
                &who,
                false,
                act::ActivateRolesRequest {
                    items: vec![item(READER)],
                    request_id: format!("bulk-{who}"),
                    ..Default::default()
                },
            ))
            .await;
        if let Err(s) = r {
            met_first += 1;
            // The dead replica committed the request but not its reply: the retry runs
            // again and meets the first request (documented on idempotency::once).
            assert!(
                matches!(s.code(), Code::FailedPrecondition | Code::AlreadyExists),
                "retry of {who}: {s:?}"
            );
        }
    }
    eprintln!(
        "replicas: {} of {BULK} calls were cut off by the kill; {met_first} retries met a request the dead replica had committed",
        retry.len()
    );

    // Every user ends with exactly one request for the role, provisioned (the survivor
    // finishes what the dead replica committed but did not provision).
    for i in 0..BULK {
        let who = format!("u{i:02}");
        eventually(30, &format!("{who}'s request provisioned"), || {
            let c = &c;
            let who = who.clone();
            async move {
                let rs = my_requests(c, "activation-1", &who).await;
                rs.len() == 1 && rs[0].status() == act::RequestStatus::Provisioned
            }
        })
        .await;
        assert!(allowed(&c, "assignments-1", &who, READER).await, "{who}");
        assert!(allowed(&c, "assignments-2", &who, READER).await, "{who}");
    }
    // Provisioned once each in the assignments context, and one event each.
    let instances: Vec<(String, i64)> = sqlx::query_as(
        "SELECT principal_id, COUNT(*) FROM assignments_activations WHERE role_id = $1 GROUP BY principal_id",
    )
    .bind(READER)
    .fetch_all(pg.reader())
    .await
    .unwrap();
    let instances: HashMap<String, i64> = instances.into_iter().collect();
    assert_eq!(instances.len(), BULK);
    assert!(instances.values().all(|n| *n == 1), "{instances:?}");
    let twice: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT subject, event_type, COUNT(*) FROM activation_events \
         WHERE event_type LIKE '%RequestProvisioned' OR event_type LIKE '%RequestCreated' \
         GROUP BY subject, event_type HAVING COUNT(*) > 1",
    )
    .fetch_all(pg.reader())
    .await
    .unwrap();
    assert!(twice.is_empty(), "events written twice: {twice:?}");

    // --- No stale allow across replicas -------------------------------------------------
    // A removal committed through one replica is seen by a fully consistent check on the
    // other at once, every time.
    for round in 0..10 {
        let a = assign(
            &c,
            "assignments-1",
            "kenneth",
            "global-reader",
            AssignmentType::Active,
            None,
        )
        .await;
        assert!(
            allowed(&c, "assignments-2", "kenneth", "global-reader").await,
            "round {round}"
        );
        asg::assignments_service_client::AssignmentsServiceClient::new(c.channel("assignments-1"))
            .remove_assignment(c.req(
                ADMIN,
                true,
                asg::RemoveAssignmentRequest {
                    id: a.id,
                    justification: "no longer needed".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        assert!(
            !allowed(&c, "assignments-2", "kenneth", "global-reader").await,
            "stale allow in round {round}"
        );
    }

    // --- An expiry that two replicas watch fires once -----------------------------------
    // The API's shortest window is 5 minutes and its start cannot be backdated, so the
    // test moves one assignment's end to 2 s from now in the table (the access models
    // keep the end they applied; only the timers are under test here), then commits
    // another change so that both replicas' timers re-arm for it and race at its end.
    let short = assign(
        &c,
        "assignments-2",
        "ferry",
        "helpdesk-administrator",
        AssignmentType::Active,
        None,
    )
    .await;
    let end = tenure_platform::clock::to_micros(
        tenure_platform::clock::SystemClock.now() + chrono::TimeDelta::seconds(2),
    );
    sqlx::query("UPDATE assignments_assignments SET end_at = $1 WHERE id = $2")
        .bind(end)
        .bind(&short.id)
        .execute(pg.writer())
        .await
        .unwrap();
    assign(
        &c,
        "assignments-1",
        "mira",
        "global-reader",
        AssignmentType::Eligible,
        None,
    )
    .await;
    eventually(15, "the short assignment's expiry event", || {
        let pg = pg.clone();
        let id = short.id.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM assignments_events WHERE subject = $1 AND event_type LIKE '%AssignmentExpired'",
            )
            .bind(id)
            .fetch_one(pg.reader())
            .await
            .unwrap();
            n > 0
        }
    })
    .await;
    // give the other replica's timer every chance to fire too
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expired: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM assignments_events WHERE subject = $1 AND event_type LIKE '%AssignmentExpired'",
    )
    .bind(&short.id)
    .fetch_one(pg.reader())
    .await
    .unwrap();
    assert_eq!(expired, 1, "the expiry fired once across two replicas");

    // --- The audit trail: each step once, chain intact -----------------------------------
    let activation_head: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM activation_event_head WHERE id = 1")
            .fetch_one(pg.reader())
            .await
            .unwrap();
    eventually(
        30,
        "notifications caught up with the activation stream",
        || {
            let pg = pg.clone();
            async move {
                let cur: Option<i64> = sqlx::query_scalar(
                    "SELECT last_sequence FROM notifications_cursors WHERE source = 'activation'",
                )
                .fetch_optional(pg.reader())
                .await
                .unwrap();
                cur == Some(activation_head)
            }
        },
    )
    .await;
    let audit = ntf::audit_service_client::AuditServiceClient::new(c.channel("notifications"));
    let entries = audit
        .clone()
        .query_audit(c.req(
            ADMIN,
            false,
            ntf::QueryAuditRequest {
                filter: Some(ntf::AuditFilter {
                    request_id: ferry.id.clone(),
                    ..Default::default()
                }),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let mut actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    actions.sort_unstable();
    let mut unique = actions.clone();
    unique.dedup();
    assert_eq!(actions, unique, "each step of Ferry's request audited once");
    assert!(
        actions.len() >= 4,
        "the field report's four steps: {actions:?}"
    );
    let verified = audit
        .clone()
        .verify_audit_chain(c.req(ADMIN, false, ntf::VerifyAuditChainRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid, "{}", verified.reason);
    let dup_audit: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT source_context, source_sequence FROM notifications_audit \
         GROUP BY source_context, source_sequence HAVING COUNT(*) > 1) d",
    )
    .fetch_one(pg.reader())
    .await
    .unwrap();
    assert_eq!(dup_audit, 0);
    drop(c);
}
