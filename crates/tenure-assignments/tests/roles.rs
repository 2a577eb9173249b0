//! RoleDefinitionsService through the real gRPC client: the built-in catalogue and its
//! filters, custom roles (create, update with mask and etag, delete refused while
//! assigned), and who may call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/src/harness.rs"]
mod common;
mod directory;

use chrono::TimeDelta;
use common::*;
use directory::*;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::assignments::v1::event::Payload;
use tenure_proto::common::v1 as c;
use tenure_proto::common::v1::ScopeType as T;
use tonic::Code;

fn custom(
    name: &str,
    kind: pb::RoleKind,
    permissions: &[&str],
    scopes: &[&str],
) -> pb::RoleDefinition {
    pb::RoleDefinition {
        display_name: name.to_owned(),
        description: format!("{name} for tests"),
        kind: kind.into(),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        assignable_scope_ids: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn create_req(
    role: pb::RoleDefinition,
    id: &str,
    request_id: &str,
) -> pb::CreateRoleDefinitionRequest {
    pb::CreateRoleDefinitionRequest {
        role_definition: Some(role),
        role_definition_id: id.to_owned(),
        request_id: request_id.to_owned(),
    }
}

fn update_req(role: pb::RoleDefinition, paths: &[&str]) -> pb::UpdateRoleDefinitionRequest {
    pb::UpdateRoleDefinitionRequest {
        role_definition: Some(role),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        request_id: String::new(),
    }
}

async fn create(h: &Harness, role: pb::RoleDefinition, id: &str) -> pb::RoleDefinition {
    h.roles()
        .create_role_definition(h.req(ADMIN, create_req(role, id, "")))
        .await
        .unwrap()
        .into_inner()
        .role_definition
        .unwrap()
}

#[tokio::test]
async fn the_catalogue_is_listed_built_in_first_with_filters_and_pages() {
    let h = Harness::start().await;
    create(
        &h,
        custom(
            "Aardvark Keeper",
            pb::RoleKind::Resource,
            &["zoo/aardvarks/*"],
            &[],
        ),
        "",
    )
    .await;
    let list = |req: pb::ListRoleDefinitionsRequest| {
        let mut cl = h.roles();
        let req = h.req("anyone", req);
        async move { cl.list_role_definitions(req).await }
    };
    let all = list(pb::ListRoleDefinitionsRequest {
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    let n = all.role_definitions.len();
    assert!(n >= 20, "{n}");
    assert!(
        all.role_definitions[..n - 1].iter().all(|r| r.built_in),
        "built-in first"
    );
    assert_eq!(all.role_definitions[n - 1].display_name, "Aardvark Keeper");
    let names: Vec<&str> = all.role_definitions[..n - 1]
        .iter()
        .map(|r| r.display_name.as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "then by display name");

    let ids = |r: pb::ListRoleDefinitionsResponse| -> Vec<String> {
        r.role_definitions.into_iter().map(|r| r.id).collect()
    };
    let res = ids(list(pb::ListRoleDefinitionsRequest {
        kind: pb::RoleKind::Resource.into(),
        built_in: pb::BuiltInFilter::BuiltIn.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner());
    for r in [
        "owner",
        "contributor",
        "reader",
        "user-access-administrator",
    ] {
        assert!(res.contains(&r.to_owned()), "{r} missing from {res:?}");
    }
    assert!(!res.contains(&"global-administrator".to_owned()));
    let customs = ids(list(pb::ListRoleDefinitionsRequest {
        built_in: pb::BuiltInFilter::Custom.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner());
    assert_eq!(customs.len(), 1);
    let search = ids(list(pb::ListRoleDefinitionsRequest {
        search: "BILLING".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner());
    assert_eq!(search, vec!["billing-administrator"]);
    let perm = ids(list(pb::ListRoleDefinitionsRequest {
        permission: "tenure/roles/write".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner());
    assert_eq!(perm, vec!["privileged-role-administrator"]);
    let zoo = ids(list(pb::ListRoleDefinitionsRequest {
        permission: "zoo/aardvarks/feed".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner());
    assert_eq!(zoo, customs);

    // pages
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let r = list(pb::ListRoleDefinitionsRequest {
            page_size: 7,
            page_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
        seen.extend(r.role_definitions.into_iter().map(|r| r.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(
        seen,
        all.role_definitions
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>()
    );
    assert_status(
        list(pb::ListRoleDefinitionsRequest {
            kind: 9,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "kind",
    );
    assert_status(
        list(pb::ListRoleDefinitionsRequest {
            page_size: -3,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_size",
    );

    let got = h
        .roles()
        .get_role_definition(h.req(
            "anyone",
            pb::GetRoleDefinitionRequest { id: "owner".into() },
        ))
        .await
        .unwrap()
        .into_inner();
    let owner = got.role_definition.unwrap();
    assert!(owner.built_in && owner.highly_privileged);
    assert_status(
        h.roles()
            .get_role_definition(
                h.req("anyone", pb::GetRoleDefinitionRequest { id: "nope".into() }),
            )
            .await,
        Code::NotFound,
        "nope",
    );
    h.stop().await;
}

#[tokio::test]
async fn create_custom_roles_with_a_given_or_generated_id() {
    let h = Harness::start().await;
    register(&h, "/subscriptions/s1", T::Subscription, "/").await;
    let seq = head(&h);
    let mut role = custom(
        "Invoice Reader",
        pb::RoleKind::Resource,
        &["billing/invoices/read"],
        &["/SUBSCRIPTIONS/s1"],
    );
    role.highly_privileged = true;
    role.built_in = true; // output only: ignored
    let r = h
        .roles()
        .create_role_definition(h.req(ADMIN, create_req(role.clone(), "invoice-reader", "c1")))
        .await
        .unwrap()
        .into_inner();
    let created = r.role_definition.clone().unwrap();
    assert_eq!(created.id, "invoice-reader");
    assert!(!created.built_in);
    assert!(created.highly_privileged);
    assert_eq!(
        created.assignable_scope_ids,
        vec!["/subscriptions/s1"],
        "stored scope id"
    );
    assert_eq!(created.etag, "1");
    let ev = payloads(&h, seq).await;
    let [Payload::RoleDefinitionCreated(e)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(e.role_definition.as_ref().unwrap(), &created);
    // idempotent
    let again = h
        .roles()
        .create_role_definition(h.req(ADMIN, create_req(role, "invoice-reader", "c1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, r);
    assert_eq!(payloads(&h, seq).await.len(), 1);
    let stored = h
        .roles()
        .get_role_definition(h.req(
            ADMIN,
            pb::GetRoleDefinitionRequest {
                id: "invoice-reader".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stored.role_definition.unwrap().permissions,
        vec!["billing/invoices/read"]
    );

    // generated id; empty assignable scopes mean the root
    let g = create(
        &h,
        custom(
            "Helpdesk Lite",
            pb::RoleKind::Directory,
            &["microsoft.directory/users/password/update"],
            &[],
        ),
        "",
    )
    .await;
    assert!(g.id.starts_with("custom-"), "{}", g.id);
    assert_eq!(g.assignable_scope_ids, vec!["/"]);
    // the model knows it at once
    assert!(h.core().model().roles.contains_key(g.id.as_str()));

    // taken: id, built-in id, display name (case-insensitive)
    let try_create = |role: pb::RoleDefinition, id: &str| {
        let mut cl = h.roles();
        let req = h.req(ADMIN, create_req(role, id, ""));
        async move { cl.create_role_definition(req).await }
    };
    let seq = head(&h);
    let ok = custom("Something", pb::RoleKind::Directory, &["a/b/c"], &[]);
    assert_status(
        try_create(ok.clone(), "invoice-reader").await,
        Code::AlreadyExists,
        "invoice-reader",
    );
    assert_status(
        try_create(ok.clone(), "global-administrator").await,
        Code::AlreadyExists,
        "global-administrator",
    );
    assert_status(
        try_create(
            custom("invoice READER", pb::RoleKind::Directory, &["a/b/c"], &[]),
            "",
        )
        .await,
        Code::AlreadyExists,
        "invoice READER",
    );
    assert_status(
        try_create(
            custom(
                "Billing Administrator",
                pb::RoleKind::Directory,
                &["a/b/c"],
                &[],
            ),
            "",
        )
        .await,
        Code::AlreadyExists,
        "",
    );
    assert_eq!(head(&h), seq);
    h.stop().await;
}

#[tokio::test]
async fn create_refuses_bad_input_naming_every_field() {
    let h = Harness::start().await;
    let seq = head(&h);
    let try_create = |role: Option<pb::RoleDefinition>, id: &str| {
        let mut cl = h.roles();
        let req = h.req(
            ADMIN,
            pb::CreateRoleDefinitionRequest {
                role_definition: role,
                role_definition_id: id.to_owned(),
                request_id: String::new(),
            },
        );
        async move { cl.create_role_definition(req).await }
    };
    let mut bad = custom(
        "",
        pb::RoleKind::Unspecified,
        &["ok/perm", "bad perm", "a/*/b", "ok/perm"],
        &[],
    );
    bad.description = "x".repeat(3000);
    let s = assert_status(
        try_create(Some(bad), "Bad_Id").await,
        Code::InvalidArgument,
        "role_definition.display_name",
    );
    for f in [
        "role_definition.kind",
        "role_definition.permissions[1]",
        "role_definition.permissions[2]",
        "role_definition.permissions[3]",
        "role_definition.description",
        "role_definition_id",
    ] {
        assert!(s.message().contains(f), "{f} not in {}", s.message());
    }
    assert_status(
        try_create(
            Some(custom("No Perms", pb::RoleKind::Directory, &[], &[])),
            "",
        )
        .await,
        Code::InvalidArgument,
        "role_definition.permissions",
    );
    assert_status(
        try_create(None, "").await,
        Code::InvalidArgument,
        "role_definition",
    );
    // directory roles only at "/"; unknown assignable scopes
    assert_status(
        try_create(
            Some(custom(
                "Dir",
                pb::RoleKind::Directory,
                &["a/b"],
                &["/subscriptions/s1"],
            )),
            "",
        )
        .await,
        Code::InvalidArgument,
        "role_definition.assignable_scope_ids[0]",
    );
    assert_status(
        try_create(
            Some(custom(
                "Res",
                pb::RoleKind::Resource,
                &["a/b"],
                &["/subscriptions/none"],
            )),
            "",
        )
        .await,
        Code::NotFound,
        "/subscriptions/none",
    );
    assert_eq!(head(&h), seq, "nothing written");
    h.stop().await;
}

#[tokio::test]
async fn update_with_mask_and_etag_changes_access_at_once() {
    let h = Harness::start().await;
    register(&h, "/subscriptions/s1", T::Subscription, "/").await;
    register(&h, "/subscriptions/s2", T::Subscription, "/").await;
    upsert(&h, vec![user("ferry")]).await;
    let role = create(
        &h,
        custom(
            "Invoice Reader",
            pb::RoleKind::Resource,
            &["billing/invoices/read"],
            &["/subscriptions/s1", "/subscriptions/s2"],
        ),
        "invoice-reader",
    )
    .await;
    assign(
        &h,
        "ferry",
        "invoice-reader",
        "/subscriptions/s1",
        c::AssignmentType::Active,
        None,
    )
    .await;
    assert!(
        h.core()
            .has_permission("ferry", "billing/invoices/read", "/subscriptions/s1")
    );

    let seq = head(&h);
    let mut change = role.clone();
    change.permissions = vec!["billing/invoices/list".into()];
    change.description = "Lists invoices".into();
    change.display_name = "ignored, not in the mask".into();
    let r = h
        .roles()
        .update_role_definition(h.req(
            ADMIN,
            update_req(change.clone(), &["permissions", "description"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let after = r.role_definition.unwrap();
    assert_eq!(after.permissions, vec!["billing/invoices/list"]);
    assert_eq!(after.description, "Lists invoices");
    assert_eq!(after.display_name, "Invoice Reader");
    assert_eq!(after.etag, "2");
    assert!(
        !h.core()
            .has_permission("ferry", "billing/invoices/read", "/subscriptions/s1"),
        "the old permission still grants"
    );
    assert!(
        h.core()
            .has_permission("ferry", "billing/invoices/list", "/subscriptions/s1")
    );
    let ev = payloads(&h, seq).await;
    let [Payload::RoleDefinitionUpdated(e)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(
        e.before.as_ref().unwrap().permissions,
        vec!["billing/invoices/read"]
    );
    assert_eq!(e.after.as_ref().unwrap(), &after);

    let upd = |role: pb::RoleDefinition, paths: &[&str]| {
        let mut cl = h.roles();
        let req = h.req(ADMIN, update_req(role, paths));
        async move { cl.update_role_definition(req).await }
    };
    let seq = head(&h);
    // a stale etag
    assert_status(
        upd(change.clone(), &["description"]).await,
        Code::Aborted,
        "etag",
    );
    // unknown path, empty mask, bad values
    let mut current = after.clone();
    assert_status(
        upd(current.clone(), &["kind"]).await,
        Code::InvalidArgument,
        "update_mask.paths[0]",
    );
    assert_status(
        upd(current.clone(), &[]).await,
        Code::InvalidArgument,
        "update_mask",
    );
    current.permissions = vec!["nope".into()];
    assert_status(
        upd(current.clone(), &["permissions"]).await,
        Code::InvalidArgument,
        "role_definition.permissions[0]",
    );
    // removing an assignable scope that holds an assignment
    current.assignable_scope_ids = vec!["/subscriptions/s2".into()];
    assert_status(
        upd(current.clone(), &["assignable_scope_ids"]).await,
        Code::FailedPrecondition,
        "/subscriptions/s1",
    );
    // built-in roles are read-only; unknown roles not found
    let mut owner = pb::RoleDefinition {
        id: "owner".into(),
        description: "mine now".into(),
        ..Default::default()
    };
    assert_status(
        upd(owner.clone(), &["description"]).await,
        Code::FailedPrecondition,
        "built-in roles are read-only",
    );
    owner.id = "ghost".into();
    assert_status(upd(owner, &["description"]).await, Code::NotFound, "ghost");
    assert_eq!(head(&h), seq, "nothing written");

    // renaming onto a taken name; a rename with the current etag works
    let mut rename = after.clone();
    rename.display_name = "Owner".into();
    assert_status(
        upd(rename.clone(), &["display_name"]).await,
        Code::AlreadyExists,
        "Owner",
    );
    rename.display_name = "Invoice Lister".into();
    let r = upd(rename, &["display_name", "highly_privileged"])
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.role_definition.unwrap().etag, "3");
    h.stop().await;
}

#[tokio::test]
async fn delete_is_refused_while_assigned_and_for_built_in_roles() {
    let h = Harness::start().await;
    upsert(&h, vec![user("ferry")]).await;
    let role = create(
        &h,
        custom(
            "Temp Role",
            pb::RoleKind::Directory,
            &["temp/things/read"],
            &[],
        ),
        "temp-role",
    )
    .await;
    assign(
        &h,
        "ferry",
        "temp-role",
        "/",
        c::AssignmentType::Eligible,
        Some(1),
    )
    .await;
    let seq = head(&h);
    let del = |id: &str, etag: &str, rid: &str| {
        let mut cl = h.roles();
        let req = h.req(
            ADMIN,
            pb::DeleteRoleDefinitionRequest {
                id: id.into(),
                etag: etag.into(),
                request_id: rid.into(),
            },
        );
        async move { cl.delete_role_definition(req).await }
    };
    assert_status(
        del("temp-role", "", "").await,
        Code::FailedPrecondition,
        "1 assignment",
    );
    assert_status(
        del("global-administrator", "", "").await,
        Code::FailedPrecondition,
        "built-in",
    );
    assert_status(del("ghost", "", "").await, Code::NotFound, "ghost");
    assert_status(del("temp-role", "7", "").await, Code::Aborted, "etag");
    assert_eq!(head(&h), seq);

    // ended assignments do not count
    h.clock.advance(TimeDelta::hours(2));
    // (the expiry timer records the end with an event of its own: wait for it)
    h.wait_event(seq, "AssignmentExpired").await;
    del("temp-role", &role.etag, "d1").await.unwrap();
    let ev = payloads(&h, seq).await;
    assert!(
        matches!(ev.last(), Some(Payload::RoleDefinitionDeleted(d)) if d.role_definition.as_ref().unwrap().id == "temp-role")
    );
    assert!(!h.core().model().roles.contains_key("temp-role"));
    // the retry answers the same; another is not found
    del("temp-role", "", "d1").await.unwrap();
    assert_status(del("temp-role", "", "").await, Code::NotFound, "temp-role");
    h.stop().await;
}

#[tokio::test]
async fn a_non_admin_gets_permission_denied_on_every_role_write() {
    let h = Harness::start().await;
    upsert(&h, vec![user("mallory")]).await;
    // even a Global Reader may only read
    assign(
        &h,
        "mallory",
        "global-reader",
        "/",
        c::AssignmentType::Active,
        None,
    )
    .await;
    create(
        &h,
        custom("Mine", pb::RoleKind::Directory, &["a/b/c"], &[]),
        "mine",
    )
    .await;
    let seq = head(&h);
    let m = "mallory";
    let r = h.roles();
    assert_status(
        r.clone()
            .create_role_definition(h.req(
                m,
                create_req(custom("X", pb::RoleKind::Directory, &["a/b"], &[]), "", ""),
            ))
            .await,
        Code::PermissionDenied,
        "tenure/roles/write",
    );
    assert_status(
        r.clone()
            .update_role_definition(h.req(
                m,
                update_req(
                    pb::RoleDefinition {
                        id: "mine".into(),
                        description: "x".into(),
                        ..Default::default()
                    },
                    &["description"],
                ),
            ))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        r.clone()
            .delete_role_definition(h.req(
                m,
                pb::DeleteRoleDefinitionRequest {
                    id: "mine".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_eq!(head(&h), seq);
    r.clone()
        .get_role_definition(h.req(m, pb::GetRoleDefinitionRequest { id: "mine".into() }))
        .await
        .unwrap();
    r.clone()
        .list_role_definitions(h.req(m, pb::ListRoleDefinitionsRequest::default()))
        .await
        .unwrap();
    assert_status(
        r.clone()
            .list_role_definitions(pb::ListRoleDefinitionsRequest::default())
            .await,
        Code::Unauthenticated,
        "",
    );
    h.stop().await;
}
