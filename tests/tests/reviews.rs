//! The access reviews context through the real server, across contexts: a quarterly
//! review of Global Administrator and of Contributor on a subscription with moved time,
//! recommendations from real activity, decisions, completion and removal through the
//! assignments context; then every rule and bad input on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, TimeDelta, Utc};
use tenure_e2e::harness::*;
use tenure_platform::clock::{Clock as _, to_proto};
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalRef, PrincipalType, ScopeType};
use tenure_proto::reviews::v1 as rv;
use tonic::Code;

const GA: &str = "global-administrator";
const CONTRIBUTOR: &str = "contributor";
const SUB: &str = "/subscriptions/prod";

fn user(id: &str) -> PrincipalRef {
    PrincipalRef {
        id: id.into(),
        r#type: PrincipalType::User.into(),
        ..Default::default()
    }
}

fn named(id: &str) -> rv::Reviewer {
    rv::Reviewer {
        kind: rv::ReviewerKind::Principal.into(),
        principal: Some(user(id)),
        ..Default::default()
    }
}

fn self_review() -> rv::Reviewer {
    rv::Reviewer {
        kind: rv::ReviewerKind::Self_.into(),
        ..Default::default()
    }
}

/// A quarterly definition of `roles` at `scope`, reviewed by `reviewers`, starting at
/// `start`, 14 days long.
fn quarterly(
    name: &str,
    roles: &[&str],
    scope: &str,
    reviewers: Vec<rv::Reviewer>,
    start: DateTime<Utc>,
) -> rv::ReviewDefinition {
    rv::ReviewDefinition {
        display_name: name.into(),
        scope: Some(rv::ReviewScope {
            role_ids: roles.iter().map(|r| (*r).to_owned()).collect(),
            scope_id: scope.into(),
            ..Default::default()
        }),
        stages: vec![rv::ReviewStage {
            reviewers,
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
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create(h: &Harness, d: rv::ReviewDefinition) -> rv::ReviewDefinition {
    h.reviews()
        .create_review_definition(h.req(
            ADMIN,
            rv::CreateReviewDefinitionRequest {
                review_definition: Some(d),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .review_definition
        .unwrap()
}

/// Reports a sign-in for `id` at `at` through the sync API.
async fn signed_in(h: &Harness, id: &str, at: DateTime<Utc>) {
    h.principals()
        .upsert_principals(h.req(
            ADMIN,
            asg::UpsertPrincipalsRequest {
                principals: vec![asg::Principal {
                    id: id.into(),
                    r#type: PrincipalType::User.into(),
                    display_name: format!("Principal {id}"),
                    user_principal_name: format!("{id}@example.test"),
                    last_sign_in_time: Some(to_proto(at)),
                    ..Default::default()
                }],
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

/// Activates `role` at "/" as `who` (MFA, justification) and returns the request id.
async fn activate(h: &Harness, who: &str, role: &str) -> String {
    let resp = h
        .activation()
        .activate_roles(h.req_mfa(
            who,
            act::ActivateRolesRequest {
                items: vec![act::ActivationItem {
                    role_id: role.into(),
                    scope_id: "/".into(),
                    justification: "incident".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    resp.results[0].request.as_ref().unwrap().id.clone()
}

/// Waits (bounded) until `definition` has a round in `status`, and returns it.
async fn wait_round(h: &Harness, definition: &str, status: rv::RoundStatus) -> rv::ReviewRound {
    for _ in 0..500 {
        let rounds = h
            .reviews()
            .list_review_rounds(h.req(
                ADMIN,
                rv::ListReviewRoundsRequest {
                    definition_id: definition.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .rounds;
        if let Some(r) = rounds.into_iter().find(|r| r.status() == status) {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no {status:?} round of {definition}");
}

async fn items(h: &Harness, who: &str, round: &str) -> Vec<rv::DecisionItem> {
    h.reviews()
        .list_decision_items(h.req(
            who,
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

fn item_of<'a>(items: &'a [rv::DecisionItem], principal: &str) -> &'a rv::DecisionItem {
    items
        .iter()
        .find(|i| i.principal.as_ref().unwrap().id == principal)
        .unwrap_or_else(|| panic!("no item about {principal}"))
}

async fn decide(
    h: &Harness,
    who: &str,
    item: &str,
    d: rv::ReviewDecision,
    why: &str,
) -> Result<rv::DecisionItem, tonic::Status> {
    h.reviews()
        .record_decision(h.req(
            who,
            rv::RecordDecisionRequest {
                item_id: item.into(),
                decision: d.into(),
                justification: why.into(),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().item.unwrap())
}

fn types(events: &[rv::Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e.meta
                .as_ref()
                .unwrap()
                .r#type
                .rsplit('.')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn status_of(h: &Harness, assignment: &str) -> asg::AssignmentStatus {
    h.assignments()
        .get_assignment(h.req(
            ADMIN,
            asg::GetAssignmentRequest {
                id: assignment.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_quarterly_review_of_global_administrator_and_contributor_on_a_subscription() {
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "ferry", "gus", "carol", "dave"])
        .await;
    h.seed_scope(SUB, "/", ScopeType::Subscription).await;
    let ferry = h.assign(AssignmentType::Eligible, "ferry", GA, "/").await;
    let gus = h.assign(AssignmentType::Eligible, "gus", GA, "/").await;
    let carol = h
        .assign(AssignmentType::Active, "carol", CONTRIBUTOR, SUB)
        .await;
    let dave = h
        .assign(AssignmentType::Eligible, "dave", CONTRIBUTOR, SUB)
        .await;

    // Real activity: Ferry activates Global Administrator twice; Carol signs in.
    let first = activate(&h, "ferry", GA).await;
    h.activation()
        .deactivate_role(h.req(
            "ferry",
            act::DeactivateRoleRequest {
                activation_request_id: first,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    activate(&h, "ferry", GA).await;
    signed_in(&h, "carol", t0()).await;
    h.wait_reviews_caught_up().await;

    // Two quarterly reviews by Kenneth, starting tomorrow.
    let start = t0() + TimeDelta::days(1);
    let ga_def = create(
        &h,
        quarterly(
            "Quarterly GA review",
            &[GA],
            "/",
            vec![named("kenneth")],
            start,
        ),
    )
    .await;
    let c_def = create(
        &h,
        quarterly(
            "Quarterly Contributor on prod",
            &[CONTRIBUTOR],
            SUB,
            vec![named("kenneth")],
            start,
        ),
    )
    .await;
    assert_eq!(ga_def.next_round_time, Some(to_proto(start)));
    assert_eq!(ga_def.schedule.as_ref().unwrap().duration_days, 14);

    // Nothing starts before its time; at the start, a round each.
    let rounds = h
        .reviews()
        .list_review_rounds(h.req(ADMIN, rv::ListReviewRoundsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .rounds;
    assert!(rounds.is_empty());
    h.clock.set(start);
    let ga_round = wait_round(&h, &ga_def.id, rv::RoundStatus::InProgress).await;
    let c_round = wait_round(&h, &c_def.id, rv::RoundStatus::InProgress).await;
    assert_eq!(ga_round.round_number, 1);
    assert_eq!(ga_round.progress.as_ref().unwrap().total, 2);
    assert_eq!(
        ga_round.end_time,
        Some(to_proto(start + TimeDelta::days(14)))
    );
    let def = h
        .reviews()
        .get_review_definition(h.req(
            ADMIN,
            rv::GetReviewDefinitionRequest {
                id: ga_def.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .review_definition
        .unwrap();
    assert_eq!(def.rounds_started, 1);
    assert_eq!(
        def.next_round_time,
        Some(to_proto(
            start.checked_add_months(chrono::Months::new(3)).unwrap()
        ))
    );

    // Recommendations reflect real activity.
    let ga_items = items(&h, ADMIN, &ga_round.id).await;
    let f = item_of(&ga_items, "ferry");
    assert_eq!(f.recommendation(), rv::Recommendation::Approve);
    assert_eq!(f.recommendation_reason, "activated 2 times in 30 days");
    assert_eq!(f.activity.as_ref().unwrap().activation_count, 2);
    assert_eq!(f.assignment_id, ferry.id);
    let g = item_of(&ga_items, "gus");
    assert_eq!(g.recommendation(), rv::Recommendation::Deny);
    assert_eq!(g.recommendation_reason, "no activation in 30 days");
    let c_items = items(&h, ADMIN, &c_round.id).await;
    let c = item_of(&c_items, "carol");
    assert_eq!(c.recommendation(), rv::Recommendation::Approve);
    assert_eq!(c.recommendation_reason, "signed in within 30 days");
    assert_eq!(c.scope.as_ref().unwrap().id, SUB);
    assert_eq!(c.assignment_type(), AssignmentType::Active);
    let d = item_of(&c_items, "dave");
    assert_eq!(d.recommendation(), rv::Recommendation::Deny);
    assert_eq!(d.reviewers, vec![c.reviewers[0].clone()]);
    assert_eq!(d.reviewers[0].id, "kenneth");

    // Both wait for Kenneth.
    let pending = h
        .reviews()
        .list_my_pending_reviews(h.req("kenneth", rv::ListMyPendingReviewsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .reviews;
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|p| p.pending_items == 2));

    // Kenneth approves Ferry and denies Gus; changes his mind once; takes the
    // recommendations on the Contributor review.
    decide(&h, "kenneth", &g.id, rv::ReviewDecision::Approve, "")
        .await
        .unwrap();
    let changed = decide(&h, "kenneth", &g.id, rv::ReviewDecision::Deny, "never used")
        .await
        .unwrap();
    assert_eq!(changed.history.len(), 2);
    decide(&h, "kenneth", &f.id, rv::ReviewDecision::Approve, "on call")
        .await
        .unwrap();
    let accepted = h
        .reviews()
        .accept_recommendations(h.req(
            "kenneth",
            rv::AcceptRecommendationsRequest {
                round_id: c_round.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.decided_count, 2);
    let progress = h
        .reviews()
        .get_review_round(h.req(
            "kenneth",
            rv::GetReviewRoundRequest {
                id: ga_round.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .round
        .unwrap()
        .progress
        .unwrap();
    assert_eq!((progress.decided, progress.total), (2, 2));
    assert_eq!((progress.approved, progress.denied), (1, 1));

    // The rounds end; the denied assignments are removed through the assignments
    // context, the approved ones stay.
    let assignments_before = h.core().log.head();
    h.clock.set(start + TimeDelta::days(14));
    let done = wait_round(&h, &ga_def.id, rv::RoundStatus::Applied).await;
    wait_round(&h, &c_def.id, rv::RoundStatus::Applied).await;
    assert_eq!(done.progress.as_ref().unwrap().applied, 2);
    assert_eq!(status_of(&h, &gus.id).await, asg::AssignmentStatus::Removed);
    assert_eq!(
        status_of(&h, &dave.id).await,
        asg::AssignmentStatus::Removed
    );
    assert_eq!(
        status_of(&h, &ferry.id).await,
        asg::AssignmentStatus::InEffect
    );
    assert_eq!(
        status_of(&h, &carol.id).await,
        asg::AssignmentStatus::InEffect
    );
    let removed = h.wait_event(assignments_before, "AssignmentRemoved").await;
    match removed.payload {
        Some(asg::event::Payload::AssignmentRemoved(r)) => {
            assert_eq!(r.reason(), asg::RemovalReason::AccessReview);
            assert!(r.source_reference.contains('/'));
        }
        other => panic!("unexpected {other:?}"),
    }
    let ga_items = items(&h, ADMIN, &ga_round.id).await;
    assert_eq!(
        item_of(&ga_items, "gus")
            .apply_result
            .as_ref()
            .unwrap()
            .status(),
        rv::ApplyStatus::Applied
    );
    assert_eq!(
        item_of(&ga_items, "ferry")
            .apply_result
            .as_ref()
            .unwrap()
            .status(),
        rv::ApplyStatus::NotNeeded
    );

    // Every step is on the reviews stream.
    let events = h.review_events_after(0).await;
    let t = types(&events);
    let count = |name: &str| t.iter().filter(|x| *x == name).count();
    assert_eq!(count("DefinitionCreated"), 2, "{t:?}");
    assert_eq!(count("RoundStarted"), 2, "{t:?}");
    assert_eq!(count("DecisionRecorded"), 5, "{t:?}");
    assert_eq!(count("RoundCompleted"), 2, "{t:?}");
    assert_eq!(count("ResultApplied"), 2, "{t:?}");
    let started = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(rv::event::Payload::RoundStarted(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(started.reviewers[0].id, "kenneth");
    // Gus's history shows the decision.
    let history = h
        .reviews()
        .list_decision_history(h.req(
            ADMIN,
            rv::ListDecisionHistoryRequest {
                principal_id: "gus".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].decision(), rv::ReviewDecision::Deny);
    h.stop().await;
}

#[tokio::test]
async fn bad_definitions_are_refused_naming_the_field() {
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "reader"]).await;
    h.seed_scope(SUB, "/", ScopeType::Subscription).await;
    let ok = || quarterly("R", &[GA], "/", vec![named("kenneth")], t0());
    let try_create = |d: rv::ReviewDefinition, who: &'static str| {
        let h = &h;
        async move {
            h.reviews()
                .create_review_definition(h.req(
                    who,
                    rv::CreateReviewDefinitionRequest {
                        review_definition: Some(d),
                        request_id: String::new(),
                    },
                ))
                .await
        }
    };
    // Unknown role, scope, reviewer, fallback reviewer: NOT_FOUND.
    let mut d = ok();
    d.scope.as_mut().unwrap().role_ids = vec!["no-such-role".into()];
    assert_status(try_create(d, ADMIN).await, Code::NotFound, "no-such-role");
    let mut d = quarterly(
        "R",
        &[CONTRIBUTOR],
        "/subscriptions/nope",
        vec![named("kenneth")],
        t0(),
    );
    d.scope.as_mut().unwrap().scope_id = "/subscriptions/nope".into();
    assert_status(
        try_create(d, ADMIN).await,
        Code::NotFound,
        "/subscriptions/nope",
    );
    let d = quarterly("R", &[GA], "/", vec![named("nobody")], t0());
    assert_status(try_create(d, ADMIN).await, Code::NotFound, "nobody");
    let mut d = ok();
    d.fallback_reviewers = vec![user("ghost")];
    assert_status(try_create(d, ADMIN).await, Code::NotFound, "ghost");
    // Duration not shorter than the period.
    let mut d = ok();
    d.schedule.as_mut().unwrap().duration_days = 90;
    assert_status(
        try_create(d, ADMIN).await,
        Code::InvalidArgument,
        "schedule.duration_days",
    );
    // An empty reviewer set without fallback; a self-review without fallback.
    let mut d = ok();
    d.stages[0].reviewers.clear();
    assert_status(
        try_create(d, ADMIN).await,
        Code::InvalidArgument,
        "stages[0].reviewers",
    );
    let d = quarterly("R", &[GA], "/", vec![self_review()], t0());
    assert_status(
        try_create(d, ADMIN).await,
        Code::InvalidArgument,
        "fallback_reviewers",
    );
    // A directory role below the root.
    let d = quarterly("R", &[GA], SUB, vec![named("kenneth")], t0());
    assert_status(
        try_create(d, ADMIN).await,
        Code::InvalidArgument,
        "directory role",
    );
    // Look-back and inactive days out of range, no roles, four stages.
    let mut d = ok();
    d.settings.as_mut().unwrap().recommendation_look_back_days = 731;
    assert_status(
        try_create(d, ADMIN).await,
        Code::InvalidArgument,
        "recommendation_look_back_days",
    );
    let mut d = ok();
    d.scope.as_mut().unwrap().inactive_days = -1;
    assert_status(
        try_create(d, ADMIN).await,
        Code::InvalidArgument,
        "inactive_days",
    );
    let mut d = ok();
    d.scope.as_mut().unwrap().role_ids.clear();
    assert_status(
        try_create(d, ADMIN).await,
        Code::InvalidArgument,
        "scope.role_ids",
    );
    let mut d = ok();
    d.stages = vec![d.stages[0].clone(); 4];
    assert_status(try_create(d, ADMIN).await, Code::InvalidArgument, "stages");
    // Somebody without Privileged Role Administrator.
    assert_status(
        try_create(ok(), "reader").await,
        Code::PermissionDenied,
        "Privileged Role Administrator",
    );
    // Reading: unknown definition, bad page token.
    assert_status(
        h.reviews()
            .get_review_definition(
                h.req(ADMIN, rv::GetReviewDefinitionRequest { id: "nope".into() }),
            )
            .await,
        Code::NotFound,
        "",
    );
    assert_status(
        h.reviews()
            .list_review_definitions(h.req(
                ADMIN,
                rv::ListReviewDefinitionsRequest {
                    page_token: "x".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    // A valid one, created once per request id; then updated with a stale etag.
    let req = rv::CreateReviewDefinitionRequest {
        review_definition: Some(ok()),
        request_id: "create-1".into(),
    };
    let a = h
        .reviews()
        .create_review_definition(h.req(ADMIN, req.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = h
        .reviews()
        .create_review_definition(h.req(ADMIN, req))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    let mut upd = a.review_definition.clone().unwrap();
    upd.display_name = "Renamed".into();
    upd.etag = "999".into();
    assert_status(
        h.reviews()
            .update_review_definition(h.req(
                ADMIN,
                rv::UpdateReviewDefinitionRequest {
                    review_definition: Some(upd.clone()),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "etag",
    );
    upd.etag.clear();
    let renamed = h
        .reviews()
        .update_review_definition(h.req(
            ADMIN,
            rv::UpdateReviewDefinitionRequest {
                review_definition: Some(upd),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .review_definition
        .unwrap();
    assert_eq!(renamed.display_name, "Renamed");
    h.stop().await;
}

#[tokio::test]
async fn deciding_rules_own_access_non_reviewers_closed_rounds_and_self_review() {
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "ferry", "gus", "outsider"]).await;
    h.assign(AssignmentType::Eligible, "ferry", GA, "/").await;
    h.assign(AssignmentType::Eligible, "kenneth", GA, "/").await;
    // Kenneth and Ferry review Global Administrator: neither decides their own item.
    let mut d = quarterly(
        "GA",
        &[GA],
        "/",
        vec![named("kenneth"), named("ferry")],
        t0(),
    );
    d.settings
        .as_mut()
        .unwrap()
        .require_justification_on_approve = true;
    d.settings.as_mut().unwrap().auto_apply = false;
    let def = create(&h, d).await;
    let round = wait_round(&h, &def.id, rv::RoundStatus::InProgress).await;
    let all = items(&h, ADMIN, &round.id).await;
    let k = item_of(&all, "kenneth");
    let f = item_of(&all, "ferry");
    assert_eq!(
        k.reviewers
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["ferry"]
    );
    assert_status(
        decide(&h, "kenneth", &k.id, rv::ReviewDecision::Approve, "mine").await,
        Code::PermissionDenied,
        "own access",
    );
    assert_status(
        decide(&h, "outsider", &f.id, rv::ReviewDecision::Deny, "").await,
        Code::PermissionDenied,
        "not a reviewer",
    );
    assert_status(
        decide(&h, "kenneth", &f.id, rv::ReviewDecision::NotReviewed, "").await,
        Code::InvalidArgument,
        "decision",
    );
    assert_status(
        decide(&h, "kenneth", &f.id, rv::ReviewDecision::Approve, " ").await,
        Code::InvalidArgument,
        "justification",
    );
    assert_status(
        decide(&h, "kenneth", "no-such-item", rv::ReviewDecision::Deny, "").await,
        Code::NotFound,
        "",
    );
    // The outsider sees nothing of the round.
    assert_status(
        h.reviews()
            .list_decision_items(h.req(
                "outsider",
                rv::ListDecisionItemsRequest {
                    round_id: round.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "",
    );
    // A reviewer sees only the items they review.
    let mine = items(&h, "kenneth", &round.id).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, f.id);
    decide(&h, "ferry", &k.id, rv::ReviewDecision::DontKnow, "")
        .await
        .unwrap();
    // Deleting needs the round stopped first; stopping needs PRA.
    assert_status(
        h.reviews()
            .delete_review_definition(h.req(
                ADMIN,
                rv::DeleteReviewDefinitionRequest {
                    id: def.id.clone(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "stop it first",
    );
    assert_status(
        h.reviews()
            .stop_review_round(h.req(
                "kenneth",
                rv::StopReviewRoundRequest {
                    id: round.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        h.reviews()
            .apply_review_results(h.req(
                ADMIN,
                rv::ApplyReviewResultsRequest {
                    id: round.id.clone(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "in progress",
    );
    let stopped = h
        .reviews()
        .stop_review_round(h.req(
            ADMIN,
            rv::StopReviewRoundRequest {
                id: round.id.clone(),
                reason: "audit moved".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .round
        .unwrap();
    assert!(stopped.stopped_early);
    assert_eq!(stopped.status(), rv::RoundStatus::Completed);
    // Decisions are final once the round ended.
    assert_status(
        decide(&h, "kenneth", &f.id, rv::ReviewDecision::Deny, "late").await,
        Code::FailedPrecondition,
        "not in progress",
    );
    h.reviews()
        .delete_review_definition(h.req(
            ADMIN,
            rv::DeleteReviewDefinitionRequest {
                id: def.id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();

    // Self-review: each holder decides on their own access.
    let mut d = quarterly("Self", &[GA], "/", vec![self_review()], t0());
    d.fallback_reviewers = vec![user("gus")];
    let def = create(&h, d).await;
    let round = wait_round(&h, &def.id, rv::RoundStatus::InProgress).await;
    let all = items(&h, ADMIN, &round.id).await;
    let f = item_of(&all, "ferry");
    assert_eq!(f.reviewers[0].id, "ferry");
    decide(
        &h,
        "ferry",
        &f.id,
        rv::ReviewDecision::Approve,
        "still on call",
    )
    .await
    .unwrap();
    let own = items(&h, "ferry", &round.id).await;
    assert_eq!(own.len(), 1);
    assert_status(
        decide(&h, "kenneth", &f.id, rv::ReviewDecision::Deny, "").await,
        Code::PermissionDenied,
        "",
    );
    h.stop().await;
}

/// The rest of the bad input: ROLE_HOLDERS and GROUP_MEMBERS reviewers naming
/// what does not exist, reviewers that may resolve to nobody without a fallback, bad
/// updates (each refused naming the field, the definition unchanged), and bulk
/// decisions outside a round or by a non-reviewer.
#[tokio::test]
async fn bad_reviewer_kinds_bad_updates_and_bulk_decisions_outside_a_round_are_refused() {
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "ferry", "outsider"]).await;
    h.assign(AssignmentType::Eligible, "ferry", GA, "/").await;
    let try_create = |d: rv::ReviewDefinition| {
        let h = &h;
        async move {
            h.reviews()
                .create_review_definition(h.req(
                    ADMIN,
                    rv::CreateReviewDefinitionRequest {
                        review_definition: Some(d),
                        request_id: String::new(),
                    },
                ))
                .await
        }
    };
    let role_holders = |role: &str, scope: &str| rv::Reviewer {
        kind: rv::ReviewerKind::RoleHolders.into(),
        role_id: role.into(),
        scope_id: scope.into(),
        ..Default::default()
    };
    let with_fallback = |reviewers: Vec<rv::Reviewer>| {
        let mut d = quarterly("R", &[GA], "/", reviewers, t0());
        d.fallback_reviewers = vec![user("kenneth")];
        d
    };
    // Unknown role, unknown scope of role holders; unknown group: NOT_FOUND.
    assert_status(
        try_create(with_fallback(vec![role_holders("no-such-role", "")])).await,
        Code::NotFound,
        "no-such-role",
    );
    assert_status(
        try_create(with_fallback(vec![role_holders(GA, "/subscriptions/nope")])).await,
        Code::NotFound,
        "/subscriptions/nope",
    );
    assert_status(
        try_create(with_fallback(vec![rv::Reviewer {
            kind: rv::ReviewerKind::GroupMembers.into(),
            principal: Some(user("no-such-group")),
            ..Default::default()
        }]))
        .await,
        Code::NotFound,
        "no-such-group",
    );
    // Role holders may resolve to nobody: a fallback is required.
    assert_status(
        try_create(quarterly("R", &[GA], "/", vec![role_holders(GA, "")], t0())).await,
        Code::InvalidArgument,
        "fallback_reviewers",
    );
    // The same refusals on update; the definition stays as it was. (Read once its
    // first round has started: starting it changes the definition's version.)
    let def = create(
        &h,
        quarterly("GA", &[GA], "/", vec![named("kenneth")], t0()),
    )
    .await;
    let round = wait_round(&h, &def.id, rv::RoundStatus::InProgress).await;
    let mut def = get_def(&h, &def.id).await;
    def.etag.clear();
    let mut bad = def.clone();
    bad.schedule.as_mut().unwrap().duration_days = 91;
    assert_status(
        update(&h, bad, &["schedule"]).await,
        Code::InvalidArgument,
        "schedule.duration_days",
    );
    let mut bad = def.clone();
    bad.stages[0].reviewers.clear();
    assert_status(
        update(&h, bad, &["stages"]).await,
        Code::InvalidArgument,
        "stages[0].reviewers",
    );
    let mut bad = def.clone();
    bad.stages[0].reviewers = vec![named("nobody")];
    assert_status(update(&h, bad, &["stages"]).await, Code::NotFound, "nobody");
    let mut bad = def.clone();
    bad.scope.as_mut().unwrap().role_ids = vec!["no-such-role".into()];
    assert_status(
        update(&h, bad, &["scope"]).await,
        Code::NotFound,
        "no-such-role",
    );
    let mut gone = def.clone();
    gone.id = "no-such-definition".into();
    assert_status(
        update(&h, gone, &["display_name"]).await,
        Code::NotFound,
        "no-such-definition",
    );
    let mut now = get_def(&h, &def.id).await;
    now.etag.clear();
    assert_eq!(now, def, "refused updates change nothing");

    // Bulk decisions: by a non-reviewer naming an item, PERMISSION_DENIED; once the
    // round is over, FAILED_PRECONDITION.
    let all = items(&h, ADMIN, &round.id).await;
    let f = item_of(&all, "ferry").id.clone();
    let bulk = |who: &'static str, item_ids: Vec<String>| {
        let h = &h;
        let round = round.id.clone();
        async move {
            h.reviews()
                .accept_recommendations(h.req(
                    who,
                    rv::AcceptRecommendationsRequest {
                        round_id: round,
                        item_ids,
                        ..Default::default()
                    },
                ))
                .await
        }
    };
    assert_status(
        bulk("outsider", vec![f.clone()]).await,
        Code::PermissionDenied,
        "not a reviewer",
    );
    assert_status(
        bulk("ferry", vec![f.clone()]).await,
        Code::PermissionDenied,
        "own access",
    );
    h.reviews()
        .stop_review_round(h.req(
            ADMIN,
            rv::StopReviewRoundRequest {
                id: round.id.clone(),
                reason: "audit moved".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    assert_status(
        bulk("kenneth", vec![]).await,
        Code::FailedPrecondition,
        "not in progress",
    );
    assert_status(
        bulk("kenneth", vec![f.clone()]).await,
        Code::FailedPrecondition,
        "not in progress",
    );
    let after = items(&h, ADMIN, &round.id).await;
    assert!(
        after.iter().all(|i| i.decided_by.is_none()),
        "nobody decided anything"
    );
    h.stop().await;
}

#[tokio::test]
async fn defaults_reminders_manual_apply_already_gone_and_group_members() {
    let h = Harness::start().await;
    h.seed_principals(&[
        ("kenneth", PrincipalType::User),
        ("ferry", PrincipalType::User),
        ("gus", PrincipalType::User),
        ("ops", PrincipalType::Group),
    ])
    .await;
    h.seed_membership("ops", "ferry").await;
    h.seed_membership("ops", "kenneth").await;
    let gus = h.assign(AssignmentType::Eligible, "gus", GA, "/").await;
    h.assign(AssignmentType::Eligible, "ops", GA, "/").await;
    // Default REMOVE, no auto-apply, reminders 3 days before the end; the group's
    // members reviewed one by one; Kenneth reviews (but not his own membership).
    let mut d = quarterly("GA", &[GA], "/", vec![named("kenneth")], t0());
    d.scope.as_mut().unwrap().expand_groups = true;
    d.fallback_reviewers = vec![user("gus")];
    let s = d.settings.as_mut().unwrap();
    s.default_decision = rv::DefaultDecision::Remove.into();
    s.auto_apply = false;
    let def = create(&h, d).await;
    let round = wait_round(&h, &def.id, rv::RoundStatus::InProgress).await;
    let all = items(&h, ADMIN, &round.id).await;
    assert_eq!(all.len(), 3);
    let k = item_of(&all, "kenneth");
    assert_eq!(k.via_group.as_ref().unwrap().id, "ops");
    assert_eq!(
        k.reviewers[0].id, "gus",
        "Kenneth never reviews himself: the fallback does"
    );
    let f = item_of(&all, "ferry");
    decide(
        &h,
        "kenneth",
        &f.id,
        rv::ReviewDecision::Deny,
        "left the team",
    )
    .await
    .unwrap();

    // Three days before the end, the reviewers with undecided items are reminded.
    let before = h.review_events_after(0).await.len() as i64;
    h.clock.set(t0() + TimeDelta::days(11));
    let mut reminded = None;
    for _ in 0..500 {
        let ev = h.review_events_after(before).await;
        if let Some(r) = ev.iter().find_map(|e| match &e.payload {
            Some(rv::event::Payload::ReminderDue(r)) => Some(r.clone()),
            _ => None,
        }) {
            reminded = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let reminded = reminded.expect("a ReminderDue event");
    let mut who: Vec<_> = reminded
        .reviewers
        .iter()
        .map(|r| (r.reviewer.as_ref().unwrap().id.clone(), r.pending_items))
        .collect();
    who.sort();
    assert_eq!(who, vec![("gus".to_owned(), 1), ("kenneth".to_owned(), 1)]);

    // Gus's assignment goes away before the end (the apply finds it gone).
    h.assignments()
        .remove_assignment(h.req_mfa(
            ADMIN,
            asg::RemoveAssignmentRequest {
                id: gus.id.clone(),
                justification: "left".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    h.clock.set(t0() + TimeDelta::days(14));
    let done = wait_round(&h, &def.id, rv::RoundStatus::Completed).await;
    assert_eq!(
        done.progress.as_ref().unwrap().denied,
        3,
        "undecided items got REMOVE"
    );
    let applied = h
        .reviews()
        .apply_review_results(h.req(
            ADMIN,
            rv::ApplyReviewResultsRequest {
                id: round.id.clone(),
                request_id: "apply-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .round
        .unwrap();
    assert_eq!(applied.status(), rv::RoundStatus::Applied);
    let all = items(&h, ADMIN, &round.id).await;
    let status = |p: &str| item_of(&all, p).apply_result.as_ref().unwrap().status();
    assert_eq!(status("gus"), rv::ApplyStatus::AlreadyGone);
    assert_eq!(status("ferry"), rv::ApplyStatus::NotSupported);
    assert!(item_of(&all, "kenneth").decided_by_default);
    // Applying again changes nothing and emits nothing.
    let n = h.review_events_after(0).await.len();
    h.reviews()
        .apply_review_results(h.req(
            ADMIN,
            rv::ApplyReviewResultsRequest {
                id: round.id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let t = types(&h.review_events_after(0).await);
    assert_eq!(t.len(), n);
    assert_eq!(t.iter().filter(|x| *x == "ResultApplied").count(), 3);
    h.stop().await;
}

#[tokio::test]
async fn racing_timers_start_a_round_once() {
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "ferry"]).await;
    h.assign(AssignmentType::Eligible, "ferry", GA, "/").await;
    let start = t0() + TimeDelta::days(1);
    let def = create(
        &h,
        quarterly("GA", &[GA], "/", vec![named("kenneth")], start),
    )
    .await;
    // Two replicas' timers read the same due definition and both try to start it.
    let engine = h.contexts.reviews.as_ref().unwrap().engine.clone();
    let stored = tenure_reviews::store::get_def(&engine.db, &def.id)
        .await
        .unwrap()
        .unwrap();
    h.clock.set(start);
    let (a, b) = tokio::join!(
        engine.start_round(stored.clone()),
        engine.start_round(stored)
    );
    let started: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    // The server's own timer races them too (it wakes on the clock move): whoever
    // wins, one round starts.
    assert!(
        started.len() <= 1,
        "at most one of the racing calls starts it"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let rounds = h
        .reviews()
        .list_review_rounds(h.req(
            ADMIN,
            rv::ListReviewRoundsRequest {
                definition_id: def.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .rounds;
    assert_eq!(rounds.len(), 1);
    let t = types(&h.review_events_after(0).await);
    assert_eq!(t.iter().filter(|x| *x == "RoundStarted").count(), 1);
    h.stop().await;
}

/// Two stages in series: what the first stage approves moves on to the second stage's
/// reviewer, what it denies stays denied; the definition survives a restart of the
/// server before its first round; at the end, every denial is applied.
#[tokio::test]
async fn two_stages_in_series_survive_a_restart_and_apply_both_stages_denials() {
    let mut h = Harness::start().await;
    h.seed_users(&["ferry", "eve", "kenneth", "lisa"]).await;
    let ferry = h.assign(AssignmentType::Eligible, "ferry", GA, "/").await;
    let eve = h.assign(AssignmentType::Eligible, "eve", GA, "/").await;
    let start = h.clock.now() + TimeDelta::hours(1);
    let mut d = quarterly("two-stage", &[GA], "/", vec![], start);
    d.stages = vec![
        rv::ReviewStage {
            reviewers: vec![named("kenneth")],
            duration_days: 7,
            decisions_that_move_on: vec![rv::ReviewDecision::Approve.into()],
        },
        rv::ReviewStage {
            reviewers: vec![named("lisa")],
            duration_days: 7,
            decisions_that_move_on: vec![],
        },
    ];
    let def = create(&h, d).await;

    // The server restarts before the first round is due; the timer comes back with it.
    h.restart().await;
    h.clock.set(start);
    let round = wait_round(&h, &def.id, rv::RoundStatus::InProgress).await;
    let all = items(&h, ADMIN, &round.id).await;
    let (f, e) = (
        item_of(&all, "ferry").id.clone(),
        item_of(&all, "eve").id.clone(),
    );
    // Stage 1 is Kenneth's: Lisa cannot decide yet.
    assert_status(
        decide(&h, "lisa", &f, rv::ReviewDecision::Deny, "x").await,
        Code::PermissionDenied,
        "not a reviewer of this item in its current stage",
    );
    decide(
        &h,
        "kenneth",
        &f,
        rv::ReviewDecision::Approve,
        "still billing owner",
    )
    .await
    .unwrap();
    decide(&h, "kenneth", &e, rv::ReviewDecision::Deny, "left the team")
        .await
        .unwrap();

    // Stage 1 ends: Ferry's approved item moves on to Lisa; Eve's denial stays.
    h.clock.set(start + TimeDelta::days(7));
    let mut moved = false;
    for _ in 0..500 {
        let now_items = items(&h, ADMIN, &round.id).await;
        if item_of(&now_items, "ferry").stage == 1 {
            assert_eq!(item_of(&now_items, "eve").stage, 0);
            moved = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(moved, "the approved item did not move on to stage 2");
    assert!(
        h.review_events_after(0).await.iter().any(|ev| ev
            .meta
            .as_ref()
            .unwrap()
            .r#type
            .ends_with("StageStarted"))
    );
    // Kenneth's turn is over; Lisa decides stage 2.
    assert_status(
        decide(&h, "kenneth", &f, rv::ReviewDecision::Deny, "x").await,
        Code::PermissionDenied,
        "not a reviewer of this item in its current stage",
    );
    decide(
        &h,
        "lisa",
        &f,
        rv::ReviewDecision::Deny,
        "no billing work this quarter",
    )
    .await
    .unwrap();

    // The round ends and both denials are applied through the assignments context.
    h.clock.set(start + TimeDelta::days(14));
    wait_round(&h, &def.id, rv::RoundStatus::Applied).await;
    for a in [&ferry, &eve] {
        let got = h
            .assignments()
            .get_assignment(h.req(ADMIN, asg::GetAssignmentRequest { id: a.id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .assignment
            .unwrap();
        assert_eq!(
            got.status(),
            asg::AssignmentStatus::Removed,
            "{}",
            a.principal.as_ref().unwrap().id
        );
        assert_eq!(got.removal_reason(), asg::RemovalReason::AccessReview);
    }
    h.stop().await;
}

fn weekly(name: &str, start: DateTime<Utc>) -> rv::ReviewDefinition {
    let mut d = quarterly(name, &[GA], "/", vec![named("kenneth")], start);
    let s = d.schedule.as_mut().unwrap();
    s.recurrence = rv::Recurrence::Weekly.into();
    s.duration_days = 2;
    d
}

async fn rounds_of(h: &Harness, definition: &str) -> Vec<rv::ReviewRound> {
    h.reviews()
        .list_review_rounds(h.req(
            ADMIN,
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

/// Waits (bounded) until `definition` has `n` rounds; returns them, newest first.
async fn wait_rounds(h: &Harness, definition: &str, n: usize) -> Vec<rv::ReviewRound> {
    for _ in 0..500 {
        let v = rounds_of(h, definition).await;
        if v.len() >= n {
            assert_eq!(v.len(), n, "more rounds than expected");
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{definition} did not reach {n} rounds");
}

async fn get_def(h: &Harness, id: &str) -> rv::ReviewDefinition {
    h.reviews()
        .get_review_definition(h.req(ADMIN, rv::GetReviewDefinitionRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .review_definition
        .unwrap()
}

async fn update(
    h: &Harness,
    d: rv::ReviewDefinition,
    paths: &[&str],
) -> Result<rv::ReviewDefinition, tonic::Status> {
    h.reviews()
        .update_review_definition(h.req(
            ADMIN,
            rv::UpdateReviewDefinitionRequest {
                review_definition: Some(d),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().review_definition.unwrap())
}

/// Sets the clock and lets the timer do what is due; then asserts with a pass of our
/// own (conditional, so it never doubles what the server's timer did).
async fn move_to(h: &Harness, at: DateTime<Utc>) {
    h.clock.set(at);
    h.contexts
        .reviews
        .as_ref()
        .unwrap()
        .engine
        .process_due()
        .await
        .unwrap();
}

/// A weekly review changed to monthly starts its next round a month on, not a week;
/// disabled, it starts none; enabled again, the next occurrence after now. A series
/// ending after two rounds, and one ending on a date, stop there.
#[tokio::test]
async fn a_changed_or_disabled_schedule_starts_the_next_round_accordingly_or_not_at_all() {
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "ferry"]).await;
    h.assign(AssignmentType::Eligible, "ferry", GA, "/").await;
    let s = t0() + TimeDelta::days(1);
    let a = create(&h, weekly("changed", s)).await;
    let mut d = weekly("two rounds", s);
    let sc = d.schedule.as_mut().unwrap();
    sc.end = rv::SeriesEnd::AfterRounds.into();
    sc.round_count = 2;
    let b = create(&h, d).await;
    let mut d = weekly("until a date", s);
    let sc = d.schedule.as_mut().unwrap();
    sc.end = rv::SeriesEnd::OnDate.into();
    sc.end_time = Some(to_proto(s + TimeDelta::days(10)));
    let c = create(&h, d).await;

    move_to(&h, s).await;
    for def in [&a, &b, &c] {
        wait_rounds(&h, &def.id, 1).await;
    }
    assert_eq!(
        get_def(&h, &a.id).await.next_round_time,
        Some(to_proto(s + TimeDelta::days(7)))
    );

    // Weekly becomes monthly: the next round is a month after the start.
    let mut changed = get_def(&h, &a.id).await;
    changed.schedule.as_mut().unwrap().recurrence = rv::Recurrence::Monthly.into();
    let after = update(&h, changed, &["schedule"]).await.unwrap();
    let month = s.checked_add_months(chrono::Months::new(1)).unwrap();
    assert_eq!(after.next_round_time, Some(to_proto(month)));

    // A week on: the two weekly series start their second round; the changed one none.
    move_to(&h, s + TimeDelta::days(7)).await;
    wait_rounds(&h, &b.id, 2).await;
    wait_rounds(&h, &c.id, 2).await;
    assert_eq!(rounds_of(&h, &a.id).await.len(), 1);
    let b_now = get_def(&h, &b.id).await;
    assert_eq!(b_now.rounds_started, 2);
    assert_eq!(b_now.next_round_time, None, "two rounds and no more");
    assert_eq!(
        get_def(&h, &c.id).await.next_round_time,
        None,
        "day 14 is past the end date"
    );

    // Two weeks on: nothing anywhere.
    move_to(&h, s + TimeDelta::days(14)).await;
    assert_eq!(rounds_of(&h, &a.id).await.len(), 1);
    assert_eq!(rounds_of(&h, &b.id).await.len(), 2);
    assert_eq!(rounds_of(&h, &c.id).await.len(), 2);

    // A month on, the changed series' second round, numbered 2.
    move_to(&h, month).await;
    let v = wait_rounds(&h, &a.id, 2).await;
    assert_eq!(v[0].round_number, 2);
    assert_eq!(v[0].start_time, Some(to_proto(month)));

    // Disabled: no round at the next occurrence, and no next round time.
    let mut off = get_def(&h, &a.id).await;
    off.enabled = Some(false);
    let off = update(&h, off, &["enabled"]).await.unwrap();
    assert_eq!(off.enabled, Some(false));
    assert_eq!(off.next_round_time, None);
    let two_months = s.checked_add_months(chrono::Months::new(2)).unwrap();
    move_to(&h, two_months).await;
    assert_eq!(rounds_of(&h, &a.id).await.len(), 2);

    // Enabled again: the first occurrence after now, not the one missed.
    let mut on = get_def(&h, &a.id).await;
    on.enabled = Some(true);
    let on = update(&h, on, &["enabled"]).await.unwrap();
    let three_months = s.checked_add_months(chrono::Months::new(3)).unwrap();
    assert_eq!(on.next_round_time, Some(to_proto(three_months)));
    move_to(&h, three_months).await;
    let v = wait_rounds(&h, &a.id, 3).await;
    assert_eq!(v[0].round_number, 3);
    // Every round completed at its end, two days in.
    move_to(&h, three_months + TimeDelta::days(2)).await;
    let done = rounds_of(&h, &a.id).await;
    assert!(
        done.iter()
            .all(|r| r.status() != rv::RoundStatus::InProgress),
        "{done:?}"
    );
    // A start moved into the future: the next round is at the new start.
    let mut moved = get_def(&h, &a.id).await;
    let later = three_months + TimeDelta::days(40);
    moved.schedule.as_mut().unwrap().start_time = Some(to_proto(later));
    let moved = update(&h, moved, &["schedule"]).await.unwrap();
    assert_eq!(moved.next_round_time, Some(to_proto(later)));
    move_to(&h, later).await;
    let v = wait_rounds(&h, &a.id, 4).await;
    assert_eq!(v[0].start_time, Some(to_proto(later)));
    h.stop().await;
}

async fn pending(
    h: &Harness,
    who: &str,
    size: i32,
    token: &str,
) -> Result<rv::ListMyPendingReviewsResponse, tonic::Status> {
    h.reviews()
        .list_my_pending_reviews(h.req(
            who,
            rv::ListMyPendingReviewsRequest {
                page_size: size,
                page_token: token.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn history(
    h: &Harness,
    who: &str,
    r: rv::ListDecisionHistoryRequest,
) -> Result<rv::ListDecisionHistoryResponse, tonic::Status> {
    h.reviews()
        .list_decision_history(h.req(who, r))
        .await
        .map(|r| r.into_inner())
}

async fn list_items(
    h: &Harness,
    who: &str,
    r: rv::ListDecisionItemsRequest,
) -> Result<rv::ListDecisionItemsResponse, tonic::Status> {
    h.reviews()
        .list_decision_items(h.req(who, r))
        .await
        .map(|r| r.into_inner())
}

/// Every list RPC pages (a token leads on, the last page has none, a token it did not
/// return is INVALID_ARGUMENT naming `page_token`) and filters; "reviews waiting for me"
/// and a principal's history of decisions across rounds.
#[tokio::test]
async fn every_list_pages_and_filters_waiting_for_me_and_decision_history() {
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "lisa", "ferry", "gus", "dave", "carol"])
        .await;
    h.seed_scope(SUB, "/", ScopeType::Subscription).await;
    for p in ["ferry", "gus", "dave"] {
        h.assign(AssignmentType::Eligible, p, GA, "/").await;
    }
    h.assign(AssignmentType::Active, "carol", CONTRIBUTOR, SUB)
        .await;
    let d1 = create(
        &h,
        quarterly("a GA by Kenneth", &[GA], "/", vec![named("kenneth")], t0()),
    )
    .await;
    let d2 = create(
        &h,
        quarterly("b GA again", &[GA], "/", vec![named("kenneth")], t0()),
    )
    .await;
    let d3 = create(
        &h,
        quarterly(
            "c Contributor",
            &[CONTRIBUTOR],
            SUB,
            vec![named("lisa")],
            t0(),
        ),
    )
    .await;
    let r1 = wait_round(&h, &d1.id, rv::RoundStatus::InProgress).await;
    let r2 = wait_round(&h, &d2.id, rv::RoundStatus::InProgress).await;
    let r3 = wait_round(&h, &d3.id, rv::RoundStatus::InProgress).await;

    // Definitions: by name, two then one; by role; by scope.
    let defs = |size: i32, token: &str, role: &str, scope: &str| {
        let r = rv::ListReviewDefinitionsRequest {
            page_size: size,
            page_token: token.into(),
            role_id: role.into(),
            scope_id: scope.into(),
        };
        let h = &h;
        async move {
            h.reviews()
                .list_review_definitions(h.req(ADMIN, r))
                .await
                .map(|r| r.into_inner())
        }
    };
    let p1 = defs(2, "", "", "").await.unwrap();
    let names: Vec<_> = p1.review_definitions.iter().map(|d| d.id.clone()).collect();
    assert_eq!(names, vec![d1.id.clone(), d2.id.clone()]);
    assert!(!p1.next_page_token.is_empty());
    let p2 = defs(2, &p1.next_page_token, "", "").await.unwrap();
    assert_eq!(p2.review_definitions.len(), 1);
    assert_eq!(p2.review_definitions[0].id, d3.id);
    assert!(p2.next_page_token.is_empty());
    let by_role = defs(0, "", CONTRIBUTOR, "").await.unwrap();
    assert_eq!(by_role.review_definitions.len(), 1);
    assert_eq!(by_role.review_definitions[0].id, d3.id);
    let by_scope = defs(0, "", "", "/").await.unwrap();
    assert_eq!(by_scope.review_definitions.len(), 2);
    assert_status(
        defs(0, "x", "", "").await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        defs(-1, "", "", "").await,
        Code::InvalidArgument,
        "page_size",
    );

    // Rounds: paged, by definition, by status.
    let rounds = |r: rv::ListReviewRoundsRequest| {
        let h = &h;
        async move {
            h.reviews()
                .list_review_rounds(h.req(ADMIN, r))
                .await
                .map(|r| r.into_inner())
        }
    };
    let p1 = rounds(rv::ListReviewRoundsRequest {
        page_size: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(p1.rounds.len(), 2);
    let p2 = rounds(rv::ListReviewRoundsRequest {
        page_size: 2,
        page_token: p1.next_page_token.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(p2.rounds.len(), 1);
    assert!(p2.next_page_token.is_empty());
    let mut seen: Vec<_> = p1
        .rounds
        .iter()
        .chain(&p2.rounds)
        .map(|r| r.id.clone())
        .collect();
    seen.sort();
    let mut want = vec![r1.id.clone(), r2.id.clone(), r3.id.clone()];
    want.sort();
    assert_eq!(seen, want, "each round once across the pages");
    assert_status(
        rounds(rv::ListReviewRoundsRequest {
            page_token: "-".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    // Lisa reviews only the Contributor round: she lists just it.
    let lisa_rounds = h
        .reviews()
        .list_review_rounds(h.req("lisa", rv::ListReviewRoundsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .rounds;
    assert_eq!(lisa_rounds.len(), 1);
    assert_eq!(lisa_rounds[0].id, r3.id);

    // Items: paged; by decision, principal and role; only mine to decide.
    let base = rv::ListDecisionItemsRequest {
        round_id: r1.id.clone(),
        ..Default::default()
    };
    let p1 = list_items(
        &h,
        ADMIN,
        rv::ListDecisionItemsRequest {
            page_size: 2,
            ..base.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(p1.items.len(), 2);
    let p2 = list_items(
        &h,
        ADMIN,
        rv::ListDecisionItemsRequest {
            page_size: 2,
            page_token: p1.next_page_token.clone(),
            ..base.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(p2.items.len(), 1);
    assert!(p2.next_page_token.is_empty());
    let all: Vec<rv::DecisionItem> = p1.items.into_iter().chain(p2.items).collect();
    let gus = item_of(&all, "gus").clone();
    decide(&h, "kenneth", &gus.id, rv::ReviewDecision::Deny, "unused")
        .await
        .unwrap();
    let denied = list_items(
        &h,
        ADMIN,
        rv::ListDecisionItemsRequest {
            decisions: vec![rv::ReviewDecision::Deny.into()],
            ..base.clone()
        },
    )
    .await
    .unwrap()
    .items;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].id, gus.id);
    let about_ferry = list_items(
        &h,
        ADMIN,
        rv::ListDecisionItemsRequest {
            principal_id: "ferry".into(),
            ..base.clone()
        },
    )
    .await
    .unwrap()
    .items;
    assert_eq!(about_ferry.len(), 1);
    let by_role = |role: &str| rv::ListDecisionItemsRequest {
        role_id: role.into(),
        ..base.clone()
    };
    assert_eq!(
        list_items(&h, ADMIN, by_role(GA))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    assert!(
        list_items(&h, ADMIN, by_role(CONTRIBUTOR))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let mine = list_items(
        &h,
        "kenneth",
        rv::ListDecisionItemsRequest {
            only_mine_to_decide: true,
            ..base.clone()
        },
    )
    .await
    .unwrap()
    .items;
    assert_eq!(mine.len(), 3);
    assert_status(
        list_items(&h, "lisa", base.clone()).await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        list_items(
            &h,
            ADMIN,
            rv::ListDecisionItemsRequest {
                page_token: "abc".into(),
                ..base.clone()
            },
        )
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        list_items(&h, ADMIN, rv::ListDecisionItemsRequest::default()).await,
        Code::InvalidArgument,
        "round_id",
    );
    assert_status(
        list_items(
            &h,
            ADMIN,
            rv::ListDecisionItemsRequest {
                round_id: "no-such-round".into(),
                ..Default::default()
            },
        )
        .await,
        Code::NotFound,
        "",
    );

    // Waiting for Kenneth: both GA rounds, one page each; Lisa: hers; Ferry: none.
    let w = pending(&h, "kenneth", 0, "").await.unwrap();
    assert_eq!(w.reviews.len(), 2);
    let of = |id: &str| {
        w.reviews
            .iter()
            .find(|p| p.round.as_ref().unwrap().id == id)
            .unwrap()
            .clone()
    };
    assert_eq!((of(&r1.id).pending_items, of(&r1.id).total_items), (2, 3));
    assert_eq!((of(&r2.id).pending_items, of(&r2.id).total_items), (3, 3));
    let w1 = pending(&h, "kenneth", 1, "").await.unwrap();
    assert_eq!(w1.reviews.len(), 1);
    let w2 = pending(&h, "kenneth", 1, &w1.next_page_token)
        .await
        .unwrap();
    assert_eq!(w2.reviews.len(), 1);
    assert!(w2.next_page_token.is_empty());
    assert_ne!(
        w1.reviews[0].round.as_ref().unwrap().id,
        w2.reviews[0].round.as_ref().unwrap().id
    );
    assert_status(
        pending(&h, "kenneth", 0, "zz").await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_eq!(pending(&h, "lisa", 0, "").await.unwrap().reviews.len(), 1);
    assert!(
        pending(&h, "ferry", 0, "")
            .await
            .unwrap()
            .reviews
            .is_empty()
    );
    // Once Kenneth decided everything in round 1, only round 2 waits for him.
    let accepted = h
        .reviews()
        .accept_recommendations(h.req(
            "kenneth",
            rv::AcceptRecommendationsRequest {
                round_id: r1.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.decided_count, 2);
    let w = pending(&h, "kenneth", 0, "").await.unwrap();
    assert_eq!(w.reviews.len(), 1);
    assert_eq!(w.reviews[0].round.as_ref().unwrap().id, r2.id);

    // Gus's history: an item in each GA round, paged; the denial in round 1.
    let hreq = |size: i32, token: &str, role: &str| rv::ListDecisionHistoryRequest {
        principal_id: "gus".into(),
        page_size: size,
        page_token: token.into(),
        role_id: role.into(),
    };
    let all = history(&h, ADMIN, hreq(0, "", "")).await.unwrap().items;
    assert_eq!(all.len(), 2);
    let mut rounds_seen: Vec<_> = all.iter().map(|i| i.round_id.clone()).collect();
    rounds_seen.sort();
    let mut want = vec![r1.id.clone(), r2.id.clone()];
    want.sort();
    assert_eq!(rounds_seen, want);
    let in_r1 = all.iter().find(|i| i.round_id == r1.id).unwrap();
    assert_eq!(in_r1.decision(), rv::ReviewDecision::Deny);
    assert_eq!(in_r1.justification, "unused");
    assert_eq!(in_r1.decided_by.as_ref().unwrap().id, "kenneth");
    let h1 = history(&h, ADMIN, hreq(1, "", "")).await.unwrap();
    assert_eq!(h1.items.len(), 1);
    let h2 = history(&h, ADMIN, hreq(1, &h1.next_page_token, ""))
        .await
        .unwrap();
    assert_eq!(h2.items.len(), 1);
    assert!(h2.next_page_token.is_empty());
    assert!(
        history(&h, ADMIN, hreq(0, "", CONTRIBUTOR))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Gus may read his own; Ferry may not read Gus's; unknown and empty principals.
    assert_eq!(
        history(&h, "gus", hreq(0, "", ""))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert_status(
        history(&h, "ferry", hreq(0, "", "")).await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        history(
            &h,
            ADMIN,
            rv::ListDecisionHistoryRequest {
                principal_id: "nobody-at-all".into(),
                ..Default::default()
            },
        )
        .await,
        Code::NotFound,
        "nobody-at-all",
    );
    assert_status(
        history(&h, ADMIN, rv::ListDecisionHistoryRequest::default()).await,
        Code::InvalidArgument,
        "principal_id",
    );
    assert_status(
        history(&h, ADMIN, hreq(0, "nope", "")).await,
        Code::InvalidArgument,
        "page_token",
    );

    // Statuses: after stopping round 3, it alone is COMPLETED.
    h.reviews()
        .stop_review_round(h.req(
            ADMIN,
            rv::StopReviewRoundRequest {
                id: r3.id.clone(),
                reason: "reorganised".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let done = rounds(rv::ListReviewRoundsRequest {
        statuses: vec![
            rv::RoundStatus::Completed.into(),
            rv::RoundStatus::Applying.into(),
            rv::RoundStatus::Applied.into(),
        ],
        ..Default::default()
    })
    .await
    .unwrap()
    .rounds;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, r3.id);
    assert!(done[0].stopped_early);
    let open = rounds(rv::ListReviewRoundsRequest {
        statuses: vec![rv::RoundStatus::InProgress.into()],
        definition_id: d1.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .rounds;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, r1.id);
    h.stop().await;
}

/// An apply that cannot reach the assignments context records FAILED with the reason
/// (the item keeps its DENY); applying again through the API completes it, and a third
/// time changes and emits nothing.
#[tokio::test]
async fn a_failed_apply_records_the_reason_and_applying_again_completes_it() {
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "ferry", "gus"]).await;
    let ferry = h.assign(AssignmentType::Eligible, "ferry", GA, "/").await;
    h.assign(AssignmentType::Eligible, "gus", GA, "/").await;
    let mut d = quarterly("GA", &[GA], "/", vec![named("kenneth")], t0());
    d.settings.as_mut().unwrap().auto_apply = false;
    let def = create(&h, d).await;
    let round = wait_round(&h, &def.id, rv::RoundStatus::InProgress).await;
    let all = items(&h, ADMIN, &round.id).await;
    let f = item_of(&all, "ferry");
    let g = item_of(&all, "gus");
    decide(&h, "kenneth", &f.id, rv::ReviewDecision::Deny, "left")
        .await
        .unwrap();
    decide(&h, "kenneth", &g.id, rv::ReviewDecision::Approve, "")
        .await
        .unwrap();
    h.clock.set(t0() + TimeDelta::days(14));
    wait_round(&h, &def.id, rv::RoundStatus::Completed).await;

    // A replica cut off from the assignments context applies the round.
    let real = h.contexts.reviews.as_ref().unwrap().engine.clone();
    let unreachable = tonic::transport::Channel::from_static("http://127.0.0.1:1")
        .connect_timeout(std::time::Duration::from_secs(1))
        .connect_lazy();
    let partitioned = tenure_reviews::engine::Engine::new(
        real.db.clone(),
        real.log.clone(),
        real.clock.clone(),
        tenure_reviews::clients::Assignments::new(
            unreachable,
            real.assignments.service_token().clone(),
        ),
    );
    let stored = tenure_reviews::store::get_round(&real.db, &round.id)
        .await
        .unwrap()
        .unwrap();
    let before = h.review_events_after(0).await.len() as i64;
    let after_failure = partitioned.apply(stored).await.unwrap();
    assert_eq!(after_failure.round.status(), rv::RoundStatus::Applied);
    let all = items(&h, ADMIN, &round.id).await;
    let failed = item_of(&all, "ferry");
    let result = failed.apply_result.clone().unwrap();
    assert_eq!(result.status(), rv::ApplyStatus::Failed);
    assert!(
        result.reason.contains("Unavailable") || result.reason.contains("transport"),
        "the reason says why: {:?}",
        result.reason
    );
    assert_eq!(failed.decision(), rv::ReviewDecision::Deny);
    assert_eq!(
        item_of(&all, "gus").apply_result.as_ref().unwrap().status(),
        rv::ApplyStatus::NotNeeded
    );
    let got = h
        .reviews()
        .get_review_round(h.req(
            ADMIN,
            rv::GetReviewRoundRequest {
                id: round.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .round
        .unwrap();
    assert_eq!(got.progress.as_ref().unwrap().apply_failed, 1);
    assert_eq!(
        status_of(&h, &ferry.id).await,
        asg::AssignmentStatus::InEffect
    );
    let ev = h.review_events_after(before).await;
    let failed_events: Vec<_> = ev
        .iter()
        .filter_map(|e| match &e.payload {
            Some(rv::event::Payload::ResultApplied(x)) => x.item.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(failed_events.len(), 1);
    assert_eq!(
        failed_events[0].apply_result.as_ref().unwrap().status(),
        rv::ApplyStatus::Failed
    );

    // Applying again through the API (the assignments context reachable) completes it.
    let apply = |rid: &str| {
        let h = &h;
        let r = rv::ApplyReviewResultsRequest {
            id: round.id.clone(),
            request_id: rid.into(),
        };
        async move {
            h.reviews()
                .apply_review_results(h.req(ADMIN, r))
                .await
                .map(|r| r.into_inner().round.unwrap())
        }
    };
    let again = apply("retry-1").await.unwrap();
    assert_eq!(again.status(), rv::RoundStatus::Applied);
    let p = again.progress.unwrap();
    assert_eq!((p.applied, p.apply_failed), (2, 0));
    assert_eq!(
        status_of(&h, &ferry.id).await,
        asg::AssignmentStatus::Removed
    );
    let all = items(&h, ADMIN, &round.id).await;
    assert_eq!(
        item_of(&all, "ferry")
            .apply_result
            .as_ref()
            .unwrap()
            .status(),
        rv::ApplyStatus::Applied
    );
    // The same request id answers the same; a new one finds nothing to do.
    let n = h.review_events_after(0).await.len();
    assert_eq!(
        apply("retry-1").await.unwrap().status(),
        rv::RoundStatus::Applied
    );
    assert_eq!(
        apply("retry-2").await.unwrap().status(),
        rv::RoundStatus::Applied
    );
    let t = types(&h.review_events_after(before).await);
    assert_eq!(t.iter().filter(|x| *x == "ResultApplied").count(), 2);
    assert!(h.review_events_after(0).await.len() >= n);
    assert_eq!(
        types(&h.review_events_after(n as i64).await)
            .iter()
            .filter(|x| *x == "ResultApplied")
            .count(),
        0,
        "nothing applied twice"
    );
    // Not on a round in progress, nor an unknown one, nor by a non-administrator.
    let def2 = create(
        &h,
        quarterly("GA 2", &[GA], "/", vec![named("kenneth")], h.clock.now()),
    )
    .await;
    let open = wait_round(&h, &def2.id, rv::RoundStatus::InProgress).await;
    let r = h
        .reviews()
        .apply_review_results(h.req(
            ADMIN,
            rv::ApplyReviewResultsRequest {
                id: open.id.clone(),
                request_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::FailedPrecondition, "in progress");
    let r = h
        .reviews()
        .apply_review_results(h.req(
            ADMIN,
            rv::ApplyReviewResultsRequest {
                id: "no-such-round".into(),
                request_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::NotFound, "");
    let r = h
        .reviews()
        .apply_review_results(h.req(
            "kenneth",
            rv::ApplyReviewResultsRequest {
                id: round.id.clone(),
                request_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::PermissionDenied, "");
    h.stop().await;
}

/// A round's start, its reminder and its completion reach the reviewer by e-mail
/// through the notifications context (a real SMTP conversation with a local sink).
#[tokio::test]
async fn review_started_reminder_and_completed_reach_the_reviewers_by_email() {
    let smtp = tenure_e2e::sinks::SmtpSink::start().await;
    let port = smtp.addr.port();
    let h = Harness::start_with(|c| {
        c.notifications.smtp.host = Some("127.0.0.1".into());
        c.notifications.smtp.port = port;
        c.notifications.smtp.tls = "none".into();
        c.notifications.link_base_url = "https://tenure.example".into();
    })
    .await;
    h.seed_users(&["kenneth", "ferry"]).await;
    h.assign(AssignmentType::Eligible, "ferry", GA, "/").await;
    let start = t0() + TimeDelta::days(1);
    let mut d = quarterly(
        "Quarterly GA review",
        &[GA],
        "/",
        vec![named("kenneth")],
        start,
    );
    d.settings.as_mut().unwrap().reviewer_message = "Ask Kenneth's deputy if unsure.".into();
    let def = create(&h, d).await;

    h.clock.set(start);
    let round = wait_round(&h, &def.id, rv::RoundStatus::InProgress).await;
    let to = "kenneth@example.test";
    let started = smtp.wait_for(to, "started").await;
    assert!(started.subject().contains("Quarterly GA review"));
    let text = started.text();
    assert!(text.contains("Ask Kenneth's deputy if unsure."), "{text}");
    assert!(
        text.contains(&format!(
            "https://tenure.example/reviews/rounds/{}",
            round.id
        )),
        "{text}"
    );

    // Three days before the end Kenneth has not decided: a reminder.
    h.clock.set(start + TimeDelta::days(11));
    let reminder = smtp.wait_for(to, "reminder").await;
    assert!(
        reminder.text().contains("1 item still wait"),
        "{}",
        reminder.text()
    );

    // The end: completed.
    h.clock.set(start + TimeDelta::days(14));
    let done = smtp.wait_for(to, "completed").await;
    assert!(
        done.text()
            .contains("0 approved, 0 denied, 1 not reviewed of 1"),
        "{}",
        done.text()
    );
    // Each once: the sink got one mail of each to Kenneth; Ferry (under review) none.
    let to_kenneth: Vec<_> = smtp
        .received()
        .into_iter()
        .filter(|m| m.to.iter().any(|t| t == to))
        .map(|m| m.subject())
        .collect();
    assert_eq!(to_kenneth.len(), 3, "{to_kenneth:?}");
    // In the delivery log, each went to Kenneth as a reviewer and was delivered.
    // (the outcome is written just after the SMTP server accepted the message)
    let mut log = Vec::new();
    for _ in 0..1000 {
        log = h
            .notifications()
            .list_deliveries(h.req(
                ADMIN,
                tenure_proto::notifications::v1::ListDeliveriesRequest {
                    recipient: to.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if log.len() == 3
            && log
                .iter()
                .all(|d| d.status() == tenure_proto::notifications::v1::DeliveryStatus::Delivered)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(log.len(), 3);
    for d in &log {
        assert_eq!(
            d.recipient_kind(),
            tenure_proto::common::v1::NotificationRecipientKind::Reviewers
        );
        assert_eq!(
            d.status(),
            tenure_proto::notifications::v1::DeliveryStatus::Delivered
        );
    }
    h.stop().await;
}
