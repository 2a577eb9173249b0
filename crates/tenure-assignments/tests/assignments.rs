//! AssignmentsService through the real server and gRPC clients, on both backends:
//! each rule of creating, updating, removing, extending and renewing assignments, each
//! bad input, idempotency, events, and nothing half-written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/src/harness.rs"]
mod common;

use chrono::TimeDelta;
use common::*;
use tenure_platform::clock::Clock as _;
use tenure_platform::clock::to_proto;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{AssignmentType, PrincipalType, ScopeType};
use tonic::Code;

const BILLING: &str = "billing-administrator";

fn create(
    t: AssignmentType,
    principal: &str,
    role: &str,
    scope: &str,
) -> pb::CreateAssignmentRequest {
    pb::CreateAssignmentRequest {
        assignment_type: t.into(),
        principal_id: principal.into(),
        role_id: role.into(),
        scope_id: scope.into(),
        justification: "quarterly billing".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn ferry_is_made_eligible_for_billing_administrator_with_its_event() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let head = h.core().log.head();
    let a = h
        .assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    assert_eq!(a.assignment_type(), AssignmentType::Eligible);
    assert_eq!(a.status(), pb::AssignmentStatus::InEffect);
    assert_eq!(
        a.principal.as_ref().unwrap().display_name,
        "Principal ferry"
    );
    assert_eq!(
        a.role.as_ref().unwrap().display_name,
        "Billing Administrator"
    );
    // default end: start + 365 days (eligible "expire after")
    let len = a.end_time.unwrap().seconds - a.start_time.unwrap().seconds;
    assert_eq!(len, 365 * 86400);
    let events = h.events_after(head).await;
    assert_eq!(events.len(), 1);
    match events[0].payload.as_ref().unwrap() {
        pb::event::Payload::AssignmentCreated(e) => {
            assert_eq!(e.assignment.as_ref().unwrap().id, a.id);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(events[0].meta.as_ref().unwrap().actor, ADMIN);
    // Ferry can read his own assignment; eligible does not grant the role.
    let got = h
        .assignments()
        .get_assignment(h.req("ferry", pb::GetAssignmentRequest { id: a.id.clone() }))
        .await
        .unwrap();
    assert_eq!(got.into_inner().assignment.unwrap().id, a.id);
    assert!(!h.allowed("ferry", BILLING, "/").await);
    // and someone else cannot see it
    h.seed_users(&["eve"]).await;
    assert_status(
        h.assignments()
            .get_assignment(h.req("eve", pb::GetAssignmentRequest { id: a.id.clone() }))
            .await,
        Code::NotFound,
        "",
    );
    h.stop().await;
}

#[tokio::test]
async fn an_active_assignment_grants_at_once_and_removal_ends_it_at_once() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let a = h
        .assign(AssignmentType::Active, "ferry", BILLING, "/")
        .await;
    assert!(h.allowed("ferry", BILLING, "/").await);
    let removed = h
        .assignments()
        .remove_assignment(h.req(
            ADMIN,
            pb::RemoveAssignmentRequest {
                id: a.id.clone(),
                justification: "left the team".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        removed.assignment.unwrap().status(),
        pb::AssignmentStatus::Removed
    );
    assert!(
        !h.allowed("ferry", BILLING, "/").await,
        "no stale allow after a removal"
    );
    assert_status(
        h.assignments()
            .remove_assignment(h.req(
                ADMIN,
                pb::RemoveAssignmentRequest {
                    id: a.id.clone(),
                    justification: "again".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
        "already removed",
    );
    h.stop().await;
}

#[tokio::test]
async fn bad_inputs_are_refused_naming_the_field_and_write_nothing() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    h.seed_scope("/subscriptions/s1", "/", ScopeType::Subscription)
        .await;
    let head = h.core().log.head();
    let c = |r: pb::CreateAssignmentRequest| {
        let h = &h;
        async move { h.assignments().create_assignment(h.req_mfa(ADMIN, r)).await }
    };
    assert_status(
        c(create(AssignmentType::Eligible, "nobody", BILLING, "/")).await,
        Code::NotFound,
        "nobody",
    );
    assert_status(
        c(create(
            AssignmentType::Eligible,
            "ferry",
            "no-such-role",
            "/",
        ))
        .await,
        Code::NotFound,
        "no-such-role",
    );
    assert_status(
        c(create(
            AssignmentType::Eligible,
            "ferry",
            BILLING,
            "/nowhere",
        ))
        .await,
        Code::NotFound,
        "/nowhere",
    );
    assert_status(
        c(create(AssignmentType::Unspecified, "ferry", BILLING, "/")).await,
        Code::InvalidArgument,
        "assignment_type",
    );
    assert_status(
        c(create(AssignmentType::Eligible, "", "", "")).await,
        Code::InvalidArgument,
        "principal_id",
    );
    // a directory role at a resource scope
    assert_status(
        c(create(
            AssignmentType::Eligible,
            "ferry",
            BILLING,
            "/subscriptions/s1",
        ))
        .await,
        Code::InvalidArgument,
        "directory role",
    );
    // end before start
    let mut r = create(AssignmentType::Eligible, "ferry", BILLING, "/");
    let now = h.clock.now();
    r.schedule = Some(pb::ScheduleInput {
        start_time: Some(to_proto(now + TimeDelta::hours(2))),
        expiration: Some(pb::schedule_input::Expiration::EndTime(to_proto(
            now + TimeDelta::hours(1),
        ))),
    });
    assert_status(c(r).await, Code::InvalidArgument, "schedule.end_time");
    // longer than the eligible maximum of 365 days
    let mut r = create(AssignmentType::Eligible, "ferry", BILLING, "/");
    r.schedule = Some(pb::ScheduleInput {
        start_time: None,
        expiration: Some(pb::schedule_input::Expiration::Duration(
            prost_types::Duration {
                seconds: 400 * 86400,
                nanos: 0,
            },
        )),
    });
    assert_status(c(r).await, Code::InvalidArgument, "maximum of 365 days");
    // permanent where not allowed
    let mut r = create(AssignmentType::Active, "ferry", BILLING, "/");
    r.schedule = Some(pb::ScheduleInput {
        start_time: None,
        expiration: Some(pb::schedule_input::Expiration::Permanent(true)),
    });
    assert_status(c(r).await, Code::InvalidArgument, "schedule.permanent");
    // active assignment without the justification the settings require
    let mut r = create(AssignmentType::Active, "ferry", BILLING, "/");
    r.justification = "  ".into();
    assert_status(c(r).await, Code::InvalidArgument, "justification");
    // a start in the past
    let mut r = create(AssignmentType::Eligible, "ferry", BILLING, "/");
    r.schedule = Some(pb::ScheduleInput {
        start_time: Some(to_proto(now - TimeDelta::hours(1))),
        expiration: None,
    });
    assert_status(c(r).await, Code::InvalidArgument, "schedule.start_time");
    // bad page token
    assert_status(
        h.assignments()
            .list_assignments(h.req(
                ADMIN,
                pb::ListAssignmentsRequest {
                    page_token: "%%%".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert!(
        h.events_after(head).await.is_empty(),
        "a refused call writes no event"
    );
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM assignments_assignments")
        .fetch_one(h.core().db.reader())
        .await
        .unwrap();
    assert_eq!(n, 1, "only the bootstrap assignment exists");
    h.stop().await;
}

#[tokio::test]
async fn nobody_assigns_themselves_or_their_group_and_non_admins_are_denied() {
    let h = Harness::start().await;
    h.seed_principals(&[
        ("ferry", PrincipalType::User),
        ("admins", PrincipalType::Group),
    ])
    .await;
    h.seed_membership("admins", ADMIN).await;
    assert_status(
        h.assignments()
            .create_assignment(
                h.req_mfa(ADMIN, create(AssignmentType::Eligible, ADMIN, BILLING, "/")),
            )
            .await,
        Code::PermissionDenied,
        "themselves",
    );
    assert_status(
        h.assignments()
            .create_assignment(h.req_mfa(
                ADMIN,
                create(AssignmentType::Eligible, "admins", BILLING, "/"),
            ))
            .await,
        Code::PermissionDenied,
        "group",
    );
    assert_status(
        h.assignments()
            .create_assignment(h.req_mfa(
                "ferry",
                create(AssignmentType::Eligible, "admins", BILLING, "/"),
            ))
            .await,
        Code::PermissionDenied,
        "tenure/assignments/write",
    );
    h.stop().await;
}

#[tokio::test]
async fn overlapping_duplicates_are_refused_and_retries_are_idempotent() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let head = h.core().log.head();
    let mut r = create(AssignmentType::Eligible, "ferry", BILLING, "/");
    r.request_id = "req-1".into();
    let first = h
        .assignments()
        .create_assignment(h.req_mfa(ADMIN, r.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = h
        .assignments()
        .create_assignment(h.req_mfa(ADMIN, r.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.assignment.as_ref().unwrap().id,
        again.assignment.as_ref().unwrap().id
    );
    assert_eq!(
        h.events_after(head).await.len(),
        1,
        "a retry has the effect of one call"
    );
    r.request_id = "req-2".into();
    assert_status(
        h.assignments().create_assignment(h.req_mfa(ADMIN, r)).await,
        Code::AlreadyExists,
        "overlapping",
    );
    // validate_only writes nothing
    h.seed_users(&["kenneth"]).await;
    let head = h.core().log.head();
    let mut r = create(AssignmentType::Eligible, "kenneth", BILLING, "/");
    r.validate_only = true;
    let dry = h
        .assignments()
        .create_assignment(h.req_mfa(ADMIN, r))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.assignment.unwrap().principal.unwrap().id, "kenneth");
    assert!(h.events_after(head).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn active_assignments_need_mfa_when_the_settings_say_so() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    // The built-in default does not require MFA for active assignments: without MFA works.
    let r = create(AssignmentType::Active, "ferry", BILLING, "/");
    h.assignments()
        .create_assignment(h.req(ADMIN, r))
        .await
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn assignments_expire_exactly_then_renew_and_extend_follow_the_rules() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let mut r = create(AssignmentType::Active, "ferry", BILLING, "/");
    r.schedule = Some(pb::ScheduleInput {
        start_time: None,
        expiration: Some(pb::schedule_input::Expiration::Duration(
            prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            },
        )),
    });
    let a = h
        .assignments()
        .create_assignment(h.req_mfa(ADMIN, r))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap();
    // extend before expiry
    let ext = h
        .assignments()
        .extend_assignment(h.req_mfa(
            ADMIN,
            pb::ExtendAssignmentRequest {
                id: a.id.clone(),
                expiration: Some(pb::extend_assignment_request::Expiration::ExtendBy(
                    prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    },
                )),
                justification: "still needed".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap();
    assert_eq!(
        ext.end_time.unwrap().seconds,
        a.end_time.unwrap().seconds + 3600
    );
    let head = h.core().log.head();
    // one microsecond before the end: allowed; at the end: not, before any timer fires
    let end = tenure_platform::clock::from_proto(&ext.end_time.unwrap()).unwrap();
    h.clock.set(end - TimeDelta::microseconds(1));
    assert!(h.allowed("ferry", BILLING, "/").await);
    h.clock.set(end);
    assert!(
        !h.allowed("ferry", BILLING, "/").await,
        "allowed at its end"
    );
    // the timer emits the expiry event
    let e = h.wait_event(head, "AssignmentExpired").await;
    match e.payload.unwrap() {
        pb::event::Payload::AssignmentExpired(x) => assert_eq!(
            x.assignment.unwrap().status(),
            pb::AssignmentStatus::Expired
        ),
        other => panic!("unexpected {other:?}"),
    }
    // extend is refused now; renew works
    assert_status(
        h.assignments()
            .extend_assignment(h.req_mfa(
                ADMIN,
                pb::ExtendAssignmentRequest {
                    id: a.id.clone(),
                    expiration: Some(pb::extend_assignment_request::Expiration::ExtendBy(
                        prost_types::Duration {
                            seconds: 60,
                            nanos: 0,
                        },
                    )),
                    justification: "x".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
        "renew",
    );
    let renewed = h
        .assignments()
        .renew_assignment(h.req_mfa(
            ADMIN,
            pb::RenewAssignmentRequest {
                id: a.id.clone(),
                justification: "back".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap();
    assert_eq!(renewed.id, a.id);
    assert_eq!(renewed.status(), pb::AssignmentStatus::InEffect);
    assert!(h.allowed("ferry", BILLING, "/").await);
    h.stop().await;
}

#[tokio::test]
async fn update_changes_the_window_with_a_mask_and_checks_the_etag() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let a = h
        .assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    let new_end = h.clock.now() + TimeDelta::days(30);
    let mut want = a.clone();
    want.end_time = Some(to_proto(new_end));
    let updated = h
        .assignments()
        .update_assignment(h.req(
            ADMIN,
            pb::UpdateAssignmentRequest {
                assignment: Some(want.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["end_time".into()],
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap();
    assert_eq!(updated.end_time.unwrap().seconds, new_end.timestamp());
    assert_ne!(updated.etag, a.etag);
    // stale etag
    assert_status(
        h.assignments()
            .update_assignment(h.req(
                ADMIN,
                pb::UpdateAssignmentRequest {
                    assignment: Some(want.clone()),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["end_time".into()],
                    }),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
        "etag",
    );
    // unknown path
    let mut fresh = updated.clone();
    fresh.etag = String::new();
    assert_status(
        h.assignments()
            .update_assignment(h.req(
                ADMIN,
                pb::UpdateAssignmentRequest {
                    assignment: Some(fresh),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["role".into()],
                    }),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "update_mask",
    );
    h.stop().await;
}
