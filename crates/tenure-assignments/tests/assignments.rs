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

fn item(t: AssignmentType, principal: &str, role: &str, scope: &str) -> pb::CreateAssignmentsItem {
    pb::CreateAssignmentsItem {
        assignment_type: t.into(),
        principal_id: principal.into(),
        role_id: role.into(),
        scope_id: scope.into(),
        justification: "tenant import".into(),
        ..Default::default()
    }
}

fn batch(items: Vec<pb::CreateAssignmentsItem>) -> pb::CreateAssignmentsRequest {
    pb::CreateAssignmentsRequest {
        items,
        ..Default::default()
    }
}

async fn assignment_count(h: &Harness) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM assignments_assignments")
        .fetch_one(h.core().db.reader())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_batch_creates_every_assignment_in_order_with_its_event_and_grants_at_once() {
    let h = Harness::start().await;
    let ids: Vec<String> = (0..500).map(|i| format!("u{i:03}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    h.seed_users(&refs).await;
    h.seed_scope("/subscriptions/s1", "/", ScopeType::Subscription)
        .await;
    // 1,000 items, the most one call takes: each user active as contributor at the
    // subscription and eligible as reader at "/".
    let mut items = Vec::new();
    for id in &ids {
        items.push(item(
            AssignmentType::Active,
            id,
            "contributor",
            "/subscriptions/s1",
        ));
        items.push(item(AssignmentType::Eligible, id, "reader", "/"));
    }
    let before = assignment_count(&h).await;
    let head = h.core().log.head();
    let created = h
        .assignments()
        .create_assignments(h.req_mfa(ADMIN, batch(items.clone())))
        .await
        .unwrap()
        .into_inner()
        .assignments;
    assert_eq!(created.len(), 1000);
    for (a, it) in created.iter().zip(&items) {
        assert_eq!(a.principal.as_ref().unwrap().id, it.principal_id);
        assert_eq!(a.role.as_ref().unwrap().id, it.role_id);
        assert_eq!(a.scope.as_ref().unwrap().id, it.scope_id);
        assert_eq!(a.assignment_type, it.assignment_type);
        assert_eq!(a.status(), pb::AssignmentStatus::InEffect);
        assert_eq!(a.created_by, ADMIN);
    }
    assert_eq!(assignment_count(&h).await, before + 1000);
    // One AssignmentCreated per assignment, in the order of the items.
    let events = h.events_after(head).await;
    assert_eq!(events.len(), 1000);
    for (e, a) in events.iter().zip(&created) {
        match e.payload.as_ref().unwrap() {
            pb::event::Payload::AssignmentCreated(c) => {
                assert_eq!(c.assignment.as_ref().unwrap().id, a.id);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(e.meta.as_ref().unwrap().actor, ADMIN);
    }
    // The access query allows each active assignment right after the reply; the
    // eligible ones grant nothing until activated.
    for id in ["u000", "u123", "u499"] {
        assert!(
            h.allowed(id, "contributor", "/subscriptions/s1").await,
            "{id}"
        );
        assert!(!h.allowed(id, "reader", "/").await, "{id} is only eligible");
    }
    // Each assignment is stored as the reply says.
    let got = h
        .assignments()
        .get_assignment(h.req(
            ADMIN,
            pb::GetAssignmentRequest {
                id: created[777].id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap();
    assert_eq!(got, created[777]);
    h.stop().await;
}

#[tokio::test]
async fn a_batch_with_one_bad_item_creates_nothing_and_names_the_item() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth", "carol", "dave"]).await;
    h.seed_scope("/subscriptions/s1", "/", ScopeType::Subscription)
        .await;
    h.assign(AssignmentType::Eligible, "dave", BILLING, "/")
        .await;
    let good = || {
        vec![
            item(AssignmentType::Eligible, "ferry", BILLING, "/"),
            item(
                AssignmentType::Active,
                "kenneth",
                "reader",
                "/subscriptions/s1",
            ),
            item(
                AssignmentType::Eligible,
                "carol",
                "owner",
                "/subscriptions/s1",
            ),
            item(AssignmentType::Active, "carol", "reader", "/"),
        ]
    };
    let before = assignment_count(&h).await;
    let head = h.core().log.head();
    let call = |items: Vec<pb::CreateAssignmentsItem>| {
        let h = &h;
        async move {
            h.assignments()
                .create_assignments(h.req_mfa(ADMIN, batch(items)))
                .await
        }
    };

    // An unknown role in the fourth item.
    let mut items = good();
    items[3].role_id = "no-such-role".into();
    assert_status(call(items).await, Code::NotFound, "items[3].role_id");
    // An unknown principal, and an unknown scope.
    let mut items = good();
    items[1].principal_id = "nobody".into();
    assert_status(call(items).await, Code::NotFound, "items[1].principal_id");
    let mut items = good();
    items[2].scope_id = "/nowhere".into();
    assert_status(call(items).await, Code::NotFound, "items[2].scope_id");
    // Bad fields of several items are reported together, each with its index.
    let mut items = good();
    items[0].assignment_type = AssignmentType::Unspecified.into();
    items[2].schedule = Some(pb::ScheduleInput {
        start_time: None,
        expiration: Some(pb::schedule_input::Expiration::Duration(
            prost_types::Duration {
                seconds: 400 * 86400,
                nanos: 0,
            },
        )),
    });
    items[3].justification = " ".into();
    let s = assert_status(
        call(items).await,
        Code::InvalidArgument,
        "items[0].assignment_type",
    );
    assert!(s.message().contains("items[2].schedule.end_time"), "{s:?}");
    assert!(s.message().contains("items[3].justification"), "{s:?}");
    // A directory role at a resource scope.
    let mut items = good();
    items[1].role_id = BILLING.into();
    assert_status(
        call(items).await,
        Code::InvalidArgument,
        "items[1].scope_id",
    );
    // The lowest-index bad item decides the code.
    let mut items = good();
    items[1].role_id = "no-such-role".into();
    items[2].assignment_type = 0;
    assert_status(call(items).await, Code::NotFound, "items[1].role_id");
    // Nobody assigns themselves, also not inside a batch.
    let mut items = good();
    items[2].principal_id = ADMIN.into();
    assert_status(
        call(items).await,
        Code::PermissionDenied,
        "items[2].principal_id",
    );
    // An item that overlaps a stored assignment, and two items that duplicate each other.
    let mut items = good();
    items.push(item(AssignmentType::Eligible, "dave", BILLING, "/"));
    assert_status(call(items).await, Code::AlreadyExists, "items[4]");
    let mut items = good();
    items.push(item(
        AssignmentType::Active,
        "kenneth",
        "reader",
        "/subscriptions/s1",
    ));
    assert_status(
        call(items).await,
        Code::InvalidArgument,
        "overlaps items[1]",
    );

    assert_eq!(assignment_count(&h).await, before, "nothing was created");
    assert!(
        h.events_after(head).await.is_empty(),
        "a refused batch writes no event"
    );
    assert!(!h.allowed("kenneth", "reader", "/subscriptions/s1").await);
    // The same batch without the bad item goes through whole.
    let created = call(good()).await.unwrap().into_inner().assignments;
    assert_eq!(created.len(), 4);
    assert_eq!(assignment_count(&h).await, before + 4);
    assert!(h.allowed("kenneth", "reader", "/subscriptions/s1").await);
    h.stop().await;
}

#[tokio::test]
async fn batch_size_limits_dry_runs_and_retries() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let head = h.core().log.head();
    assert_status(
        h.assignments()
            .create_assignments(h.req_mfa(ADMIN, batch(vec![])))
            .await,
        Code::InvalidArgument,
        "items",
    );
    let too_many = vec![item(AssignmentType::Eligible, "ferry", BILLING, "/"); 1001];
    assert_status(
        h.assignments()
            .create_assignments(h.req_mfa(ADMIN, batch(too_many)))
            .await,
        Code::InvalidArgument,
        "1 to 1000",
    );
    // validate_only checks and answers, writing nothing.
    let mut r = batch(vec![item(AssignmentType::Eligible, "ferry", BILLING, "/")]);
    r.validate_only = true;
    let dry = h
        .assignments()
        .create_assignments(h.req_mfa(ADMIN, r))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.assignments.len(), 1);
    assert!(h.events_after(head).await.is_empty());
    // A retry with the same request_id returns the first result and writes nothing.
    let mut r = batch(vec![item(AssignmentType::Eligible, "ferry", BILLING, "/")]);
    r.request_id = "import-1".into();
    let first = h
        .assignments()
        .create_assignments(h.req_mfa(ADMIN, r.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = h
        .assignments()
        .create_assignments(h.req_mfa(ADMIN, r))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(h.events_after(head).await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_non_admin_is_refused_a_batch() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth"]).await;
    let head = h.core().log.head();
    assert_status(
        h.assignments()
            .create_assignments(h.req_mfa(
                "ferry",
                batch(vec![item(
                    AssignmentType::Eligible,
                    "kenneth",
                    BILLING,
                    "/",
                )]),
            ))
            .await,
        Code::PermissionDenied,
        "items[0].scope_id",
    );
    assert!(h.events_after(head).await.is_empty());
    h.stop().await;
}
