//! Review timers fire once across replicas, for real: one assignments process and two
//! reviews processes (`contexts = "reviews"`) on one PostgreSQL database, each with its
//! own development clock (`tenure serve --dev-clock`), all moved by the same amounts.
//! A quarterly review of Global Administrator with two reminders and auto-apply runs
//! through the gRPC API: the round starts, is reminded twice, one member is approved
//! through replica 1 and the other denied through replica 2, the round ends and the
//! denial is applied. Both replicas' timers wake on every move; each piece of timer work
//! (start, each reminder, completion, each item's apply, the removal) happens once.
//!
//! PostgreSQL only (set TENURE_TEST_DATABASE_URL, as CI does): several processes on one
//! SQLite file is not a supported deployment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::TimeDelta;
use tenure_e2e::cluster::{Cluster, NodeSpec, eventually, free_port};
use tenure_platform::clock::to_proto;
use tenure_platform::db::Db;
use tenure_platform::testing::TestDb;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalRef, PrincipalType};
use tenure_proto::reviews::v1 as rv;
use tonic::transport::Channel;

const ADMIN: &str = "admin";
const GA: &str = "global-administrator";
const REVIEWER: &str = "kenneth";

type Reviews = rv::reviews_service_client::ReviewsServiceClient<Channel>;

async fn start_cluster(url: &str) -> Cluster {
    // Neither assignments nor reviews calls activation or notifications, which do not
    // run here; every context still needs an address for each peer (`none` is a port
    // nobody listens on).
    let [a, r1, r2, none] = std::array::from_fn(|_| free_port());
    let mut c = Cluster::with_dev_clock(url);
    // The assignments process first: it migrates and seeds the catalogue.
    c.start(NodeSpec {
        name: "assignments",
        contexts: "assignments",
        addr: a,
        peers: vec![
            ("activation", none),
            ("reviews", r1),
            ("notifications", none),
        ],
    })
    .await;
    for (name, addr) in [("reviews-1", r1), ("reviews-2", r2)] {
        c.start(NodeSpec {
            name,
            contexts: "reviews",
            addr,
            peers: vec![
                ("assignments", a),
                ("activation", none),
                ("notifications", none),
            ],
        })
        .await;
    }
    c
}

fn reviews(c: &Cluster, node: &str) -> Reviews {
    Reviews::new(c.channel(node))
}

/// How many events of type `suffix` the reviews log holds about `subject`.
async fn review_events(db: &Db, suffix: &str, subject: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM reviews_events WHERE subject = $1 AND event_type LIKE $2",
    )
    .bind(subject)
    .bind(format!("%.{suffix}"))
    .fetch_one(db.reader())
    .await
    .unwrap()
}

/// How many events of type `suffix` the reviews log holds in all.
async fn all_review_events(db: &Db, suffix: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM reviews_events WHERE event_type LIKE $1")
        .bind(format!("%.{suffix}"))
        .fetch_one(db.reader())
        .await
        .unwrap()
}

async fn rounds(c: &Cluster, node: &str, definition: &str) -> Vec<rv::ReviewRound> {
    reviews(c, node)
        .list_review_rounds(c.req(
            ADMIN,
            false,
            rv::ListReviewRoundsRequest {
                definition_id: definition.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .rounds
}

async fn items(c: &Cluster, node: &str, round: &str) -> Vec<rv::DecisionItem> {
    reviews(c, node)
        .list_decision_items(c.req(
            ADMIN,
            false,
            rv::ListDecisionItemsRequest {
                round_id: round.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items
}

fn ids(rounds: &[rv::ReviewRound]) -> Vec<&str> {
    rounds.iter().map(|r| r.id.as_str()).collect()
}

fn item_of<'a>(items: &'a [rv::DecisionItem], principal: &str) -> &'a rv::DecisionItem {
    items
        .iter()
        .find(|i| i.principal.as_ref().is_some_and(|p| p.id == principal))
        .unwrap_or_else(|| panic!("no item about {principal}"))
}

async fn assignment(c: &Cluster, id: &str) -> asg::Assignment {
    asg::assignments_service_client::AssignmentsServiceClient::new(c.channel("assignments"))
        .get_assignment(c.req(ADMIN, false, asg::GetAssignmentRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_timers_fire_once_across_two_replicas() {
    let db = TestDb::new().await.unwrap();
    if !db.url.starts_with("postgres") {
        eprintln!(
            "reviews_replicas: PostgreSQL only (set TENURE_TEST_DATABASE_URL); skipped on SQLite"
        );
        return;
    }
    let c = start_cluster(&db.url).await;
    let pg = db.connect().await.unwrap();

    // People and two eligible Global Administrators.
    asg::principals_service_client::PrincipalsServiceClient::new(c.channel("assignments"))
        .upsert_principals(
            c.req(
                ADMIN,
                true,
                asg::UpsertPrincipalsRequest {
                    principals: [REVIEWER, "ferry", "gus"]
                        .iter()
                        .map(|id| asg::Principal {
                            id: (*id).into(),
                            r#type: PrincipalType::User.into(),
                            display_name: (*id).into(),
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
    let mut held = Vec::new();
    for who in ["ferry", "gus"] {
        let a = asg::assignments_service_client::AssignmentsServiceClient::new(
            c.channel("assignments"),
        )
        .create_assignment(c.req(
            ADMIN,
            true,
            asg::CreateAssignmentRequest {
                assignment_type: AssignmentType::Eligible.into(),
                principal_id: who.into(),
                role_id: GA.into(),
                scope_id: "/".into(),
                justification: "on call".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap();
        held.push(a);
    }
    let (ferry, gus) = (held[0].clone(), held[1].clone());

    // A quarterly review by Kenneth, starting tomorrow, 14 days long, reminders 7 and
    // 3 days before the end, results applied automatically. Created through replica 2.
    let start = c.now() + TimeDelta::days(1);
    let def = reviews(&c, "reviews-2")
        .create_review_definition(c.req(
            ADMIN,
            true,
            rv::CreateReviewDefinitionRequest {
                review_definition: Some(rv::ReviewDefinition {
                    display_name: "Quarterly Global Administrator review".into(),
                    scope: Some(rv::ReviewScope {
                        role_ids: vec![GA.into()],
                        scope_id: "/".into(),
                        ..Default::default()
                    }),
                    stages: vec![rv::ReviewStage {
                        reviewers: vec![rv::Reviewer {
                            kind: rv::ReviewerKind::Principal.into(),
                            principal: Some(PrincipalRef {
                                id: REVIEWER.into(),
                                r#type: PrincipalType::User.into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    schedule: Some(rv::ReviewSchedule {
                        recurrence: rv::Recurrence::Quarterly.into(),
                        duration_days: 14,
                        start_time: Some(to_proto(start)),
                        ..Default::default()
                    }),
                    settings: Some(rv::ReviewSettings {
                        auto_apply: true,
                        reminder_days_before_end: vec![7, 3],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .review_definition
        .unwrap();
    assert_eq!(def.next_round_time, Some(to_proto(start)));
    assert!(rounds(&c, "reviews-1", &def.id).await.is_empty());

    // The start: both replicas wake; one round starts.
    c.advance(TimeDelta::days(1)).await;
    eventually(10, "the round started", || {
        let pg = pg.clone();
        async move { all_review_events(&pg, "RoundStarted").await >= 1 }
    })
    .await;
    let listed = rounds(&c, "reviews-1", &def.id).await;
    assert_eq!(
        listed.len(),
        1,
        "one round, not one per replica: {:?}",
        ids(&listed)
    );
    let round = listed[0].clone();
    assert_eq!(round.status(), rv::RoundStatus::InProgress);
    assert_eq!(round.round_number, 1);
    assert_eq!(round.start_time, Some(to_proto(start)));
    assert_eq!(round.end_time, Some(to_proto(start + TimeDelta::days(14))));
    assert_eq!(round.progress.as_ref().unwrap().total, 2);
    let got = reviews(&c, "reviews-2")
        .get_review_definition(c.req(
            ADMIN,
            false,
            rv::GetReviewDefinitionRequest { id: def.id.clone() },
        ))
        .await
        .unwrap()
        .into_inner()
        .review_definition
        .unwrap();
    assert_eq!(got.rounds_started, 1);
    assert_eq!(
        got.next_round_time,
        Some(to_proto(
            start.checked_add_months(chrono::Months::new(3)).unwrap()
        ))
    );
    let all = items(&c, "reviews-2", &round.id).await;
    let (f_item, g_item) = (item_of(&all, "ferry").clone(), item_of(&all, "gus").clone());
    assert_eq!(f_item.assignment_id, ferry.id);
    assert_eq!(g_item.assignment_id, gus.id);

    // The first reminder, 7 days before the end: both items undecided.
    c.advance(TimeDelta::days(7)).await;
    eventually(10, "the first reminder", || {
        let pg = pg.clone();
        let id = round.id.clone();
        async move { review_events(&pg, "ReminderDue", &id).await >= 1 }
    })
    .await;

    // Kenneth approves Ferry through replica 1.
    let approved = reviews(&c, "reviews-1")
        .record_decision(c.req(
            REVIEWER,
            false,
            rv::RecordDecisionRequest {
                item_id: f_item.id.clone(),
                decision: rv::ReviewDecision::Approve.into(),
                justification: "still on call".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(approved.decision(), rv::ReviewDecision::Approve);

    // The second reminder, 3 days before the end: Gus's item still undecided.
    c.advance(TimeDelta::days(4)).await;
    eventually(10, "the second reminder", || {
        let pg = pg.clone();
        let id = round.id.clone();
        async move { review_events(&pg, "ReminderDue", &id).await >= 2 }
    })
    .await;

    // Kenneth denies Gus through replica 2.
    let denied = reviews(&c, "reviews-2")
        .record_decision(c.req(
            REVIEWER,
            false,
            rv::RecordDecisionRequest {
                item_id: g_item.id.clone(),
                decision: rv::ReviewDecision::Deny.into(),
                justification: "never activates".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(denied.decision(), rv::ReviewDecision::Deny);

    // The end: the round completes and the denial is applied.
    c.advance(TimeDelta::days(3)).await;
    eventually(15, "the round applied", || {
        let c = &c;
        let def = def.id.clone();
        async move {
            rounds(c, "reviews-2", &def)
                .await
                .iter()
                .any(|r| r.status() == rv::RoundStatus::Applied)
        }
    })
    .await;

    // Each piece of timer work happened once, though two replicas did it.
    let listed = rounds(&c, "reviews-1", &def.id).await;
    assert_eq!(listed.len(), 1, "{:?}", ids(&listed));
    let done = &listed[0];
    assert_eq!(done.id, round.id);
    let p = done.progress.as_ref().unwrap();
    assert_eq!(
        (p.total, p.approved, p.denied, p.applied, p.apply_failed),
        (2, 1, 1, 2, 0)
    );
    assert_eq!(
        all_review_events(&pg, "RoundStarted").await,
        1,
        "one RoundStarted"
    );
    assert_eq!(review_events(&pg, "RoundStarted", &round.id).await, 1);
    assert_eq!(
        review_events(&pg, "ReminderDue", &round.id).await,
        2,
        "one ReminderDue per reminder"
    );
    assert_eq!(all_review_events(&pg, "ReminderDue").await, 2);
    assert_eq!(
        review_events(&pg, "RoundCompleted", &round.id).await,
        1,
        "one RoundCompleted"
    );
    assert_eq!(all_review_events(&pg, "StageStarted").await, 0);
    // Decisions: one each (the reviewers' calls, not the timers').
    assert_eq!(review_events(&pg, "DecisionRecorded", &f_item.id).await, 1);
    assert_eq!(review_events(&pg, "DecisionRecorded", &g_item.id).await, 1);
    // The denied item's result is applied once; the approved one needs nothing.
    assert_eq!(
        review_events(&pg, "ResultApplied", &g_item.id).await,
        1,
        "one ResultApplied for the denied item"
    );
    assert_eq!(review_events(&pg, "ResultApplied", &f_item.id).await, 0);
    assert_eq!(all_review_events(&pg, "ResultApplied").await, 1);
    // The reminders named the reviewer with what was undecided then: 2, then 1.
    let pending: Vec<i32> = {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT payload FROM reviews_events WHERE subject = $1 AND event_type LIKE '%.ReminderDue' ORDER BY sequence",
        )
        .bind(&round.id)
        .fetch_all(pg.reader())
        .await
        .unwrap();
        rows.iter()
            .map(|b| {
                use prost::Message as _;
                let ev = rv::Event::decode(b.as_slice()).unwrap();
                match ev.payload {
                    Some(rv::event::Payload::ReminderDue(r)) => {
                        assert_eq!(r.reviewers.len(), 1);
                        let who = &r.reviewers[0];
                        assert_eq!(who.reviewer.as_ref().unwrap().id, REVIEWER);
                        who.pending_items
                    }
                    other => panic!("not a ReminderDue: {other:?}"),
                }
            })
            .collect()
    };
    assert_eq!(pending, vec![2, 1]);

    // The items' apply results, recorded once each.
    let all = items(&c, "reviews-1", &round.id).await;
    let g = item_of(&all, "gus").apply_result.clone().unwrap();
    assert_eq!(g.status(), rv::ApplyStatus::Applied, "{g:?}");
    assert!(g.apply_time.is_some());
    let f = item_of(&all, "ferry").apply_result.clone().unwrap();
    assert_eq!(f.status(), rv::ApplyStatus::NotNeeded, "{f:?}");
    let applied_rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT principal_id, apply_status FROM reviews_items WHERE round_id = $1 ORDER BY principal_id",
    )
    .bind(&round.id)
    .fetch_all(pg.reader())
    .await
    .unwrap();
    assert_eq!(
        applied_rows,
        vec![
            (
                "ferry".to_owned(),
                i64::from(i32::from(rv::ApplyStatus::NotNeeded))
            ),
            (
                "gus".to_owned(),
                i64::from(i32::from(rv::ApplyStatus::Applied))
            ),
        ]
    );

    // In the assignments context: Gus's assignment is gone, removed once, by the
    // review; Ferry's stays.
    let g = assignment(&c, &gus.id).await;
    assert_eq!(g.status(), asg::AssignmentStatus::Removed);
    assert_eq!(g.removal_reason(), asg::RemovalReason::AccessReview);
    assert_eq!(
        assignment(&c, &ferry.id).await.status(),
        asg::AssignmentStatus::InEffect
    );
    let removals: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM assignments_events WHERE event_type LIKE '%.AssignmentRemoved'",
    )
    .fetch_one(pg.reader())
    .await
    .unwrap();
    assert_eq!(removals, 1, "one removal event in all");
    let of_gus: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM assignments_events WHERE subject = $1 AND event_type LIKE '%.AssignmentRemoved'",
    )
    .bind(&gus.id)
    .fetch_one(pg.reader())
    .await
    .unwrap();
    assert_eq!(of_gus, 1, "Gus's assignment removed once");
}
