//! The access query: direct, through nested groups, inherited down the scope tree, by
//! permission, exactly at its end, point-in-time from history, and who may ask; plus
//! the listing RPCs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/src/harness.rs"]
mod common;

use chrono::TimeDelta;
use common::*;
use tenure_platform::clock::{Clock as _, to_proto};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{AssignmentType, MemberType, PrincipalType, ScopeType};
use tonic::Code;

fn check(principal: &str, role: &str, scope: &str) -> pb::CheckAccessRequest {
    pb::CheckAccessRequest {
        principal_id: principal.into(),
        target: Some(pb::check_access_request::Target::RoleId(role.into())),
        scope_id: scope.into(),
        ..Default::default()
    }
}

async fn tree(h: &Harness) {
    h.seed_scope("/managementGroups/corp", "/", ScopeType::ManagementGroup)
        .await;
    h.seed_scope(
        "/subscriptions/s1",
        "/managementGroups/corp",
        ScopeType::Subscription,
    )
    .await;
    h.seed_scope(
        "/subscriptions/s1/resourceGroups/rg1",
        "/subscriptions/s1",
        ScopeType::ResourceGroup,
    )
    .await;
}

#[tokio::test]
async fn grants_reach_through_nested_groups_and_down_the_scope_tree_and_say_how() {
    let h = Harness::start().await;
    tree(&h).await;
    h.seed_principals(&[
        ("ferry", PrincipalType::User),
        ("ops", PrincipalType::Group),
        ("platform", PrincipalType::Group),
    ])
    .await;
    h.seed_membership("ops", "ferry").await;
    h.seed_membership("platform", "ops").await;
    h.assign(
        AssignmentType::Active,
        "platform",
        "contributor",
        "/managementGroups/corp",
    )
    .await;
    let r = h
        .access()
        .check_access(h.req(
            ADMIN,
            check(
                "ferry",
                "contributor",
                "/subscriptions/s1/resourceGroups/rg1",
            ),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed);
    assert_eq!(r.grants.len(), 1);
    let g = &r.grants[0];
    assert_eq!(g.member_type(), MemberType::Group);
    let chain: Vec<&str> = g.via_groups.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(chain, vec!["ops", "platform"]);
    assert_eq!(
        g.inherited_from.as_ref().unwrap().id,
        "/managementGroups/corp"
    );
    assert_eq!(
        g.instance.as_ref().unwrap().principal.as_ref().unwrap().id,
        "platform"
    );
    assert!(r.sequence > 0);
    // not above the scope it was assigned at
    assert!(!h.allowed("ferry", "contributor", "/").await);
    // by permission: contributor holds microsoft.resources/*
    let by_perm = h
        .access()
        .check_access(h.req(
            ADMIN,
            pb::CheckAccessRequest {
                principal_id: "ferry".into(),
                target: Some(pb::check_access_request::Target::Permission(
                    "microsoft.resources/virtualMachines/restart".into(),
                )),
                scope_id: "/subscriptions/s1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(by_perm.allowed);
    assert_eq!(
        by_perm.grants[0].matched_permission,
        "microsoft.resources/*"
    );
    h.stop().await;
}

#[tokio::test]
async fn who_may_ask_and_bad_questions() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "eve"]).await;
    // anyone may ask about themselves
    let own = h
        .access()
        .check_access(h.req("ferry", check("ferry", "billing-administrator", "/")))
        .await
        .unwrap();
    assert!(!own.into_inner().allowed);
    // not about others without tenure/access/check
    assert_status(
        h.access()
            .check_access(h.req("eve", check("ferry", "billing-administrator", "/")))
            .await,
        Code::PermissionDenied,
        "tenure/access/check",
    );
    assert_status(
        h.access()
            .check_access(h.req(ADMIN, check("ghost", "billing-administrator", "/")))
            .await,
        Code::NotFound,
        "ghost",
    );
    assert_status(
        h.access()
            .check_access(h.req(ADMIN, check("ferry", "no-role", "/")))
            .await,
        Code::NotFound,
        "no-role",
    );
    assert_status(
        h.access()
            .check_access(h.req(ADMIN, check("ferry", "billing-administrator", "/nope")))
            .await,
        Code::NotFound,
        "/nope",
    );
    assert_status(
        h.access()
            .check_access(h.req(ADMIN, check("ferry", "billing-administrator", "nope")))
            .await,
        Code::InvalidArgument,
        "scope_id",
    );
    assert_status(
        h.access()
            .check_access(h.req(
                ADMIN,
                pb::CheckAccessRequest {
                    principal_id: "ferry".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "target",
    );
    let mut future = check("ferry", "billing-administrator", "/");
    future.at_time = Some(to_proto(h.clock.now() + TimeDelta::hours(1)));
    assert_status(
        h.access().check_access(h.req(ADMIN, future)).await,
        Code::InvalidArgument,
        "at_time",
    );
    // unauthenticated
    assert_eq!(
        h.access()
            .check_access(check("ferry", "billing-administrator", "/"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    h.stop().await;
}

#[tokio::test]
async fn point_in_time_answers_come_from_history() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let a = h
        .assign(
            AssignmentType::Active,
            "ferry",
            "billing-administrator",
            "/",
        )
        .await;
    let during = h.clock.now() + TimeDelta::minutes(10);
    h.clock.set(during + TimeDelta::minutes(10));
    h.assignments()
        .remove_assignment(h.req(
            ADMIN,
            pb::RemoveAssignmentRequest {
                id: a.id.clone(),
                justification: "done".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(!h.allowed("ferry", "billing-administrator", "/").await);
    let mut past = check("ferry", "billing-administrator", "/");
    past.at_time = Some(to_proto(during));
    let r = h
        .access()
        .check_access(h.req(ADMIN, past))
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed, "held the role then");
    assert_eq!(r.grants[0].instance.as_ref().unwrap().id, a.id);
    let mut before = check("ferry", "billing-administrator", "/");
    before.at_time = Some(to_proto(during - TimeDelta::hours(1)));
    assert!(
        !h.access()
            .check_access(h.req(ADMIN, before))
            .await
            .unwrap()
            .into_inner()
            .allowed,
        "not before it started"
    );
    h.stop().await;
}

#[tokio::test]
async fn min_sequence_waits_for_the_write_and_times_out_clearly() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    h.assign(
        AssignmentType::Active,
        "ferry",
        "billing-administrator",
        "/",
    )
    .await;
    let seq = h.core().applied();
    let mut q = check("ferry", "billing-administrator", "/");
    q.min_sequence = seq;
    assert!(
        h.access()
            .check_access(h.req(ADMIN, q.clone()))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    q.min_sequence = seq + 1000;
    assert_status(
        h.access().check_access(h.req(ADMIN, q)).await,
        Code::Unavailable,
        "not yet applied",
    );
    h.stop().await;
}

#[tokio::test]
async fn listing_members_effective_roles_and_my_roles() {
    let h = Harness::start().await;
    tree(&h).await;
    h.seed_principals(&[
        ("ferry", PrincipalType::User),
        ("kenneth", PrincipalType::User),
        ("ops", PrincipalType::Group),
    ])
    .await;
    h.seed_membership("ops", "kenneth").await;
    h.assign(
        AssignmentType::Eligible,
        "ferry",
        "contributor",
        "/subscriptions/s1",
    )
    .await;
    h.assign(
        AssignmentType::Active,
        "ops",
        "contributor",
        "/managementGroups/corp",
    )
    .await;
    let members = h
        .access()
        .list_role_members(h.req(
            ADMIN,
            pb::ListRoleMembersRequest {
                role_id: "contributor".into(),
                scope_id: "/subscriptions/s1".into(),
                expand_groups: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .members;
    let ids: Vec<&str> = members
        .iter()
        .map(|m| m.principal.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, vec!["ferry", "kenneth", "ops"]);
    let kenneth = &members[1];
    assert_eq!(
        kenneth.grant.as_ref().unwrap().member_type(),
        MemberType::Group
    );
    // non-readers cannot list members
    assert_status(
        h.access()
            .list_role_members(h.req(
                "ferry",
                pb::ListRoleMembersRequest {
                    role_id: "contributor".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "read access",
    );
    // Ferry's own roles: eligible, can activate
    let mine = h
        .access()
        .list_my_roles(h.req("ferry", pb::ListMyRolesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .roles;
    assert_eq!(mine.len(), 1);
    assert!(mine[0].can_activate);
    assert_eq!(
        mine[0]
            .grant
            .as_ref()
            .unwrap()
            .instance
            .as_ref()
            .unwrap()
            .assignment_type(),
        AssignmentType::Eligible
    );
    // Kenneth's effective roles through his group, inherited
    let eff = h
        .access()
        .list_effective_roles(h.req(
            "kenneth",
            pb::ListEffectiveRolesRequest {
                principal_id: "kenneth".into(),
                scope_id: "/subscriptions/s1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(eff.len(), 1);
    assert_eq!(eff[0].member_type(), MemberType::Group);
    h.stop().await;
}
