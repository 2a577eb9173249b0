//! DriftService through the real gRPC API: memberships observed outside Tenure, grants
//! missing in the target, repeated and resolved items with their events, complete
//! reports split over several calls, listing, bad input and authorization.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/src/harness.rs"]
mod common;
use common::*;

use chrono::TimeDelta;
use tenure_platform::clock::{Clock as _, to_proto};
use tenure_platform::events::NewEvent;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{self as cm, PrincipalType, ScopeType};
use tonic::Code;

const SUB: &str = "/subscriptions/prod";
const PRA: &str = "privileged-role-administrator";

async fn principal(h: &Harness, id: &str, ty: PrincipalType) {
    let core = h.core();
    let mut uow = core.begin().await.unwrap();
    let p = pb::Principal {
        id: id.to_owned(),
        r#type: ty.into(),
        display_name: format!("User {id}"),
        user_principal_name: format!("{id}@example.test"),
        enabled: Some(true),
        ..Default::default()
    };
    tenure_assignments::store::upsert_principal(&mut uow, &p)
        .await
        .unwrap();
    uow.emit(NewEvent::new(
        pb::PrincipalSynced {
            principal: Some(p),
            created: true,
            changed_fields: vec![],
        },
        "system",
        id,
    ));
    core.commit(uow).await.unwrap();
}

async fn subscription(h: &Harness, id: &str) {
    let core = h.core();
    let mut uow = core.begin().await.unwrap();
    let s = pb::Scope {
        id: id.to_owned(),
        parent_id: "/".to_owned(),
        r#type: ScopeType::Subscription.into(),
        display_name: "Production".to_owned(),
        ..Default::default()
    };
    tenure_assignments::store::insert_scope(&mut uow, &s)
        .await
        .unwrap();
    uow.emit(NewEvent::new(
        pb::ScopeRegistered { scope: Some(s) },
        "system",
        id,
    ));
    core.commit(uow).await.unwrap();
}

async fn grant(h: &Harness, principal: &str, role: &str, scope: &str) -> String {
    let core = h.core();
    let mut uow = core.begin().await.unwrap();
    let now = uow.now();
    let a = tenure_assignments::store::NewAssignment {
        id: uuid::Uuid::now_v7().to_string(),
        assignment_type: cm::AssignmentType::Active,
        principal_id: principal.to_owned(),
        role_id: role.to_owned(),
        scope_id: scope.to_owned(),
        start: now,
        end: None,
        justification: "test".to_owned(),
        ticket: None,
        actor: "system".to_owned(),
    };
    tenure_assignments::store::insert_assignment(&mut uow, &a)
        .await
        .unwrap();
    let assignment = tenure_assignments::store::assignment_proto(&core, &a.to_row(now), now);
    uow.emit(NewEvent::new(
        pb::AssignmentCreated {
            assignment: Some(assignment),
        },
        "system",
        &a.id,
    ));
    core.commit(uow).await.unwrap();
    a.id
}

/// The id of the admin's bootstrap Privileged Role Administrator assignment.
fn admin_grant(h: &Harness) -> String {
    let core = h.core();
    let m = core.model();
    m.grants[ADMIN][0].id.to_string()
}

fn m(principal: &str, role: &str, scope: &str) -> pb::ObservedMembership {
    pb::ObservedMembership {
        principal_id: principal.into(),
        role_id: role.into(),
        scope_id: scope.into(),
        assignment_type: 0,
        external_id: format!("ext-{principal}-{role}"),
    }
}

fn report(
    source: &str,
    scope: &str,
    memberships: Vec<pb::ObservedMembership>,
    complete: bool,
) -> pb::ReportObservedMembershipsRequest {
    pb::ReportObservedMembershipsRequest {
        source: source.into(),
        scope_id: scope.into(),
        memberships,
        complete,
        observed_at: None,
        request_id: String::new(),
        role_kind: 0,
    }
}

async fn send(
    h: &Harness,
    r: pb::ReportObservedMembershipsRequest,
) -> pb::ReportObservedMembershipsResponse {
    h.drift()
        .report_observed_memberships(h.req(ADMIN, r))
        .await
        .unwrap()
        .into_inner()
}

async fn list(h: &Harness, r: pb::ListDriftItemsRequest) -> pb::ListDriftItemsResponse {
    h.drift()
        .list_drift_items(h.req(ADMIN, r))
        .await
        .unwrap()
        .into_inner()
}

/// The drift events after `seq`: (observed?, item).
async fn drift_events(h: &Harness, seq: i64) -> Vec<(bool, pb::DriftItem)> {
    h.events_after(seq)
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(pb::event::Payload::DriftObserved(d)) => Some((true, d.drift_item.unwrap())),
            Some(pb::event::Payload::DriftResolved(d)) => Some((false, d.drift_item.unwrap())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_membership_granted_outside_tenure_opens_one_item_and_repeats_refresh_it() {
    let h = Harness::start().await;
    principal(&h, "eve", PrincipalType::User).await;
    let seq = h.core().log.head();
    let r = send(
        &h,
        report(
            "entra-directory-roles",
            "",
            vec![
                m(ADMIN, PRA, "/"),
                m("eve", "global-administrator", "/"),
                m("stranger", "global-administrator", "/"),
            ],
            false,
        ),
    )
    .await;
    assert_eq!(r.matched_count, 1, "the admin's PRA grant matches");
    assert_eq!(r.opened.len(), 2);
    assert_eq!(r.resolved_count, 0);
    let eve = r
        .opened
        .iter()
        .find(|i| i.membership.as_ref().unwrap().principal_id == "eve")
        .unwrap();
    assert_eq!(eve.kind, pb::DriftKind::GrantedOutsideTenure as i32);
    assert_eq!(eve.status, pb::DriftStatus::Open as i32);
    assert_eq!(eve.source, "entra-directory-roles");
    assert_eq!(eve.principal.as_ref().unwrap().display_name, "User eve");
    assert_eq!(
        eve.role.as_ref().unwrap().display_name,
        "Global Administrator"
    );
    assert_eq!(
        eve.membership.as_ref().unwrap().external_id,
        "ext-eve-global-administrator"
    );
    let stranger = r
        .opened
        .iter()
        .find(|i| i.membership.as_ref().unwrap().principal_id == "stranger")
        .unwrap();
    assert!(
        stranger.principal.is_none(),
        "unknown principals are drift with raw ids"
    );
    let ev = drift_events(&h, seq).await;
    assert_eq!(ev.len(), 2);
    assert!(ev.iter().all(|(observed, _)| *observed));

    // Reported again later: no new item, no event, last_observed_time moves.
    h.clock.advance(TimeDelta::hours(1));
    let seq = h.core().log.head();
    let r = send(
        &h,
        report(
            "entra-directory-roles",
            "/",
            vec![m("eve", "global-administrator", "/")],
            false,
        ),
    )
    .await;
    assert!(r.opened.is_empty());
    assert!(drift_events(&h, seq).await.is_empty());
    let items = list(&h, pb::ListDriftItemsRequest::default()).await;
    assert_eq!(items.drift_items.len(), 2);
    let eve = items
        .drift_items
        .iter()
        .find(|i| i.membership.as_ref().unwrap().principal_id == "eve")
        .unwrap();
    assert_eq!(
        eve.last_observed_time.as_ref().unwrap().seconds
            - eve.first_observed_time.as_ref().unwrap().seconds,
        3600
    );

    // Another source seeing the same membership is its own item.
    let r = send(
        &h,
        report(
            "other-connector",
            "/",
            vec![m("eve", "global-administrator", "/")],
            false,
        ),
    )
    .await;
    assert_eq!(r.opened.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn an_item_is_resolved_once_tenure_grants_the_membership() {
    let h = Harness::start().await;
    principal(&h, "eve", PrincipalType::User).await;
    let opened = send(
        &h,
        report(
            "entra",
            "/",
            vec![m("eve", "billing-administrator", "/")],
            false,
        ),
    )
    .await
    .opened;
    assert_eq!(opened.len(), 1);
    grant(&h, "eve", "billing-administrator", "/").await;
    let seq = h.core().log.head();
    let r = send(
        &h,
        report(
            "entra",
            "/",
            vec![m("eve", "billing-administrator", "/")],
            false,
        ),
    )
    .await;
    assert_eq!(r.matched_count, 1);
    assert_eq!(r.resolved_count, 1);
    let ev = drift_events(&h, seq).await;
    assert_eq!(ev.len(), 1);
    let (observed, item) = &ev[0];
    assert!(!observed);
    assert_eq!(item.id, opened[0].id);
    assert_eq!(item.status, pb::DriftStatus::Resolved as i32);
    assert!(item.resolve_time.is_some());
    assert!(
        list(&h, pb::ListDriftItemsRequest::default())
            .await
            .drift_items
            .is_empty()
    );
    let resolved = list(
        &h,
        pb::ListDriftItemsRequest {
            status: pb::DriftStatus::Resolved.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(resolved.drift_items.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn complete_reports_open_missing_items_and_resolve_what_is_no_longer_observed() {
    let h = Harness::start().await;
    principal(&h, "eve", PrincipalType::User).await;
    let pra = admin_grant(&h);
    let r = send(
        &h,
        report(
            "entra",
            "/",
            vec![m("eve", "global-administrator", "/"), m(ADMIN, PRA, "/")],
            true,
        ),
    )
    .await;
    assert_eq!(r.opened.len(), 1);
    assert_eq!(r.matched_count, 1);

    // A complete report that lacks both the admin's PRA and eve's membership.
    let seq = h.core().log.head();
    let r = send(&h, report("entra", "/", vec![], true)).await;
    assert_eq!(
        r.resolved_count, 1,
        "eve's membership is no longer observed"
    );
    assert_eq!(r.opened.len(), 1);
    let missing = &r.opened[0];
    assert_eq!(missing.kind, pb::DriftKind::MissingInTarget as i32);
    assert_eq!(missing.instance_id, pra);
    assert_eq!(missing.membership.as_ref().unwrap().principal_id, ADMIN);
    let ev = drift_events(&h, seq).await;
    assert_eq!(ev.len(), 2);

    // Still missing: no new item. Then observed: resolved.
    let seq = h.core().log.head();
    let r = send(&h, report("entra", "/", vec![], true)).await;
    assert!(r.opened.is_empty() && r.resolved_count == 0);
    assert!(drift_events(&h, seq).await.is_empty());
    let r = send(&h, report("entra", "/", vec![m(ADMIN, PRA, "/")], true)).await;
    assert_eq!(r.matched_count, 1);
    assert_eq!(r.resolved_count, 1);
    let ev = drift_events(&h, seq).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].1.kind, pb::DriftKind::MissingInTarget as i32);
    assert!(
        list(&h, pb::ListDriftItemsRequest::default())
            .await
            .drift_items
            .is_empty()
    );
    h.stop().await;
}

#[tokio::test]
async fn a_report_split_over_calls_counts_every_call_when_it_completes() {
    let h = Harness::start().await;
    principal(&h, "eve", PrincipalType::User).await;
    let r = send(
        &h,
        report(
            "entra",
            "/",
            vec![m("eve", "global-administrator", "/"), m(ADMIN, PRA, "/")],
            false,
        ),
    )
    .await;
    assert_eq!(r.opened.len(), 1);
    // The last call brings nothing new: eve stays open, the PRA is not missing.
    let r = send(&h, report("entra", "/", vec![], true)).await;
    assert!(r.opened.is_empty(), "{r:?}");
    assert_eq!(r.resolved_count, 0);
    // The next series starts empty: both differences show.
    let r = send(&h, report("entra", "/", vec![], true)).await;
    assert_eq!(r.resolved_count, 1);
    assert_eq!(r.opened.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn complete_reports_compare_only_their_subtree_and_role_kind() {
    let h = Harness::start().await;
    subscription(&h, SUB).await;
    principal(&h, "ann", PrincipalType::User).await;
    principal(&h, "devs", PrincipalType::Group).await;
    principal(&h, "bob", PrincipalType::User).await;
    h.seed_membership("devs", "bob").await;
    let contributor = grant(&h, "ann", "contributor", SUB).await;
    grant(&h, "devs", "reader", SUB).await;

    // The subscription's report: the admin's PRA at "/" is outside it; ann's
    // contributor is missing; the group's reader is covered by its member bob.
    let mut req = report("azure-rbac", SUB, vec![m("bob", "reader", SUB)], true);
    req.role_kind = pb::RoleKind::Resource.into();
    let r = send(&h, req).await;
    assert_eq!(r.matched_count, 1, "bob holds reader through devs");
    assert_eq!(r.opened.len(), 1, "{r:?}");
    assert_eq!(r.opened[0].instance_id, contributor);
    assert_eq!(r.opened[0].scope.as_ref().unwrap().id, SUB);

    // A resource connector's complete report at the root ignores directory roles.
    let mut req = report(
        "azure-rbac-root",
        "/",
        vec![m("ann", "contributor", SUB), m("devs", "reader", SUB)],
        true,
    );
    req.role_kind = pb::RoleKind::Resource.into();
    let r = send(&h, req).await;
    assert!(r.opened.is_empty(), "{r:?}");
    assert_eq!(r.matched_count, 2);

    // An inherited grant does not match a membership at a scope below: it is an
    // assignment made there, outside Tenure.
    let r = send(
        &h,
        report(
            "azure-rbac",
            SUB,
            vec![m(ADMIN, PRA, &format!("{SUB}/resourceGroups/rg1"))],
            false,
        ),
    )
    .await;
    assert_eq!(r.opened.len(), 1);
    assert!(
        r.opened[0].scope.is_none(),
        "an unregistered scope is drift with its raw id"
    );

    // Listing by scope, kind and source, newest first, in pages.
    let at_sub = list(
        &h,
        pb::ListDriftItemsRequest {
            scope_id: SUB.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(at_sub.drift_items.len(), 2);
    let missing = list(
        &h,
        pb::ListDriftItemsRequest {
            kind: pb::DriftKind::MissingInTarget.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(missing.drift_items.len(), 1);
    let by_source = list(
        &h,
        pb::ListDriftItemsRequest {
            source: "azure-rbac-root".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(by_source.drift_items.is_empty());
    h.clock.advance(TimeDelta::minutes(1));
    send(
        &h,
        report("azure-rbac", SUB, vec![m("zed", "owner", SUB)], false),
    )
    .await;
    let p1 = list(
        &h,
        pb::ListDriftItemsRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(p1.drift_items.len(), 2);
    assert_eq!(
        p1.drift_items[0].membership.as_ref().unwrap().principal_id,
        "zed",
        "newest first"
    );
    let p2 = list(
        &h,
        pb::ListDriftItemsRequest {
            page_size: 2,
            page_token: p1.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(p2.drift_items.len(), 1);
    assert!(p2.next_page_token.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn retries_with_the_same_request_id_report_once() {
    let h = Harness::start().await;
    let seq = h.core().log.head();
    let mut req = report(
        "entra",
        "/",
        vec![m("ghost", "global-administrator", "/")],
        false,
    );
    req.request_id = "report-1".into();
    let a = send(&h, req.clone()).await;
    let b = send(&h, req).await;
    assert_eq!(a, b);
    assert_eq!(drift_events(&h, seq).await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn bad_reports_name_the_field_and_write_nothing() {
    let h = Harness::start().await;
    principal(&h, "mallory", PrincipalType::User).await;
    let seq = h.core().log.head();
    let call = |who: &str, r: pb::ReportObservedMembershipsRequest| {
        let mut c = h.drift();
        let req = h.req(who, r);
        async move { c.report_observed_memberships(req).await }
    };
    assert_status(
        call(ADMIN, report("", "/", vec![], false)).await,
        Code::InvalidArgument,
        "source",
    );
    assert_status(
        call(ADMIN, report("entra", "/nowhere", vec![], false)).await,
        Code::NotFound,
        "/nowhere",
    );
    assert_status(
        call(
            ADMIN,
            report("entra", "/", vec![m("", "reader", "/")], false),
        )
        .await,
        Code::InvalidArgument,
        "memberships[0].principal_id",
    );
    assert_status(
        call(ADMIN, report("entra", "/", vec![m("eve", "", "/")], false)).await,
        Code::InvalidArgument,
        "memberships[0].role_id",
    );
    let mut wrong_type = m("eve", "reader", "/");
    wrong_type.assignment_type = 9;
    assert_status(
        call(ADMIN, report("entra", "/", vec![wrong_type], false)).await,
        Code::InvalidArgument,
        "memberships[0].assignment_type",
    );
    subscription(&h, SUB).await;
    let seq2 = h.core().log.head();
    assert_status(
        call(
            ADMIN,
            report(
                "entra",
                SUB,
                vec![m("eve", "reader", "/subscriptions/other")],
                false,
            ),
        )
        .await,
        Code::InvalidArgument,
        "memberships[0].scope_id",
    );
    let many = (0..10_001)
        .map(|i| m(&format!("p{i}"), "reader", "/"))
        .collect();
    assert_status(
        call(ADMIN, report("entra", "/", many, false)).await,
        Code::InvalidArgument,
        "memberships",
    );
    let mut future = report("entra", "/", vec![], false);
    future.observed_at = Some(to_proto(h.clock.now() + TimeDelta::hours(1)));
    assert_status(
        call(ADMIN, future).await,
        Code::InvalidArgument,
        "observed_at",
    );
    assert_status(
        call(
            "mallory",
            report("entra", "/", vec![m("eve", "reader", "/")], false),
        )
        .await,
        Code::PermissionDenied,
        "tenure/drift/report",
    );
    let r = h
        .drift()
        .list_drift_items(h.req("mallory", pb::ListDriftItemsRequest::default()))
        .await;
    assert_status(r, Code::PermissionDenied, "tenure/read");
    let r = h
        .drift()
        .list_drift_items(h.req(
            ADMIN,
            pb::ListDriftItemsRequest {
                status: 7,
                ..Default::default()
            },
        ))
        .await;
    assert_status(r, Code::InvalidArgument, "status");
    let r = h
        .drift()
        .list_drift_items(h.req(
            ADMIN,
            pb::ListDriftItemsRequest {
                page_token: "!!".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_status(r, Code::InvalidArgument, "page_token");
    assert!(drift_events(&h, seq).await.is_empty());
    assert!(h.events_after(seq2).await.is_empty());
    assert!(
        list(&h, pb::ListDriftItemsRequest::default())
            .await
            .drift_items
            .is_empty()
    );
    h.stop().await;
}
