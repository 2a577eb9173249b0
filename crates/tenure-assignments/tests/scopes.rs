//! ScopesService through the real gRPC client: the hierarchy's rules, register, rename,
//! move, remove (refused while assigned), bulk import with prune, and who may call.
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

const MG: &str = "/managementGroups/corp";
const MG2: &str = "/managementGroups/prod";
const SUB: &str = "/subscriptions/8f2c";
const RG: &str = "/subscriptions/8f2c/resourceGroups/web";
const VM: &str =
    "/subscriptions/8f2c/resourceGroups/web/providers/Microsoft.Compute/virtualMachines/vm1";

async fn tree(h: &Harness) {
    register(h, MG, T::ManagementGroup, "/").await;
    register(h, MG2, T::ManagementGroup, MG).await;
    register(h, SUB, T::Subscription, MG2).await;
    register(h, RG, T::ResourceGroup, "").await;
    register(h, VM, T::Resource, "").await;
}

fn reg(s: pb::Scope, request_id: &str) -> pb::RegisterScopeRequest {
    pb::RegisterScopeRequest {
        scope: Some(s),
        request_id: request_id.to_owned(),
    }
}

fn import_req(root: &str, scopes: Vec<pb::Scope>, prune: bool) -> pb::ImportScopesRequest {
    pb::ImportScopesRequest {
        root_id: root.to_owned(),
        scopes,
        prune,
        request_id: String::new(),
    }
}

#[tokio::test]
async fn register_builds_the_hierarchy_and_get_shows_ancestors() {
    let h = Harness::start().await;
    let seq = head(&h);
    tree(&h).await;
    let ev = payloads(&h, seq).await;
    assert_eq!(ev.len(), 5);
    assert!(ev.iter().all(|e| matches!(e, Payload::ScopeRegistered(_))));

    let got = h
        .scopes()
        .get_scope(h.req("anyone", pb::GetScopeRequest { id: VM.into() }))
        .await
        .unwrap()
        .into_inner();
    let vm = got.scope.unwrap();
    assert_eq!(vm.r#type, i32::from(T::Resource));
    assert_eq!(vm.parent_id, RG);
    assert_eq!(vm.display_name, "vm1", "defaults to the last segment");
    assert_eq!(vm.resource_type, "Microsoft.Compute/virtualMachines");
    let anc: Vec<&str> = got.ancestors.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(anc, vec!["/", MG, MG2, SUB, RG]);

    // matched case-insensitively, stored as registered
    let got = h
        .scopes()
        .get_scope(h.req(
            "anyone",
            pb::GetScopeRequest {
                id: RG.to_uppercase(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.scope.unwrap().id, RG);
    // an assignment at the management group is inherited below
    upsert(&h, vec![user("ferry")]).await;
    assign(
        &h,
        "ferry",
        "contributor",
        MG,
        c::AssignmentType::Active,
        None,
    )
    .await;
    assert!(holds(&h, "ferry", "contributor", VM));
    assert!(!holds(&h, "ferry", "contributor", "/"));
    assert_status(
        h.scopes()
            .get_scope(h.req(
                "anyone",
                pb::GetScopeRequest {
                    id: "/subscriptions/none".into(),
                },
            ))
            .await,
        Code::NotFound,
        "/subscriptions/none",
    );
    h.stop().await;
}

#[tokio::test]
async fn register_refuses_what_does_not_fit_the_hierarchy_and_writes_nothing() {
    let h = Harness::start().await;
    tree(&h).await;
    let seq = head(&h);
    let try_reg = |s: pb::Scope| {
        let mut cl = h.scopes();
        let req = h.req(ADMIN, reg(s, ""));
        async move { cl.register_scope(req).await }
    };
    // a subscription under a subscription, a management group under a resource group
    assert_status(
        try_reg(scope("/subscriptions/s2", T::Subscription, SUB)).await,
        Code::InvalidArgument,
        "scope.parent_id",
    );
    assert_status(
        try_reg(scope("/managementGroups/x", T::ManagementGroup, RG)).await,
        Code::InvalidArgument,
        "scope.parent_id",
    );
    // a resource group whose parent is not its id's prefix
    assert_status(
        try_reg(scope(
            "/subscriptions/8f2c/resourceGroups/db",
            T::ResourceGroup,
            MG,
        ))
        .await,
        Code::InvalidArgument,
        "prefix",
    );
    // type not matching the id; malformed ids
    assert_status(
        try_reg(scope("/subscriptions/s3", T::ManagementGroup, "/")).await,
        Code::InvalidArgument,
        "scope.type",
    );
    for bad in [
        "subscriptions/x",
        "/subscriptions/",
        "/things/x",
        "/subscriptions/a/resourceGroups",
    ] {
        assert_status(
            try_reg(scope(bad, T::Subscription, "/")).await,
            Code::InvalidArgument,
            "scope.id",
        );
    }
    let mut labelled = scope("/subscriptions/s4", T::Subscription, "/");
    labelled.labels.insert(String::new(), "x".into());
    assert_status(
        try_reg(labelled).await,
        Code::InvalidArgument,
        "scope.labels",
    );
    assert_status(
        h.scopes()
            .register_scope(h.req(ADMIN, pb::RegisterScopeRequest::default()))
            .await,
        Code::InvalidArgument,
        "scope",
    );
    // unknown parents
    assert_status(
        try_reg(scope(
            "/subscriptions/s5",
            T::Subscription,
            "/managementGroups/none",
        ))
        .await,
        Code::NotFound,
        "/managementGroups/none",
    );
    assert_status(
        try_reg(scope(
            "/subscriptions/none/resourceGroups/rg",
            T::ResourceGroup,
            "",
        ))
        .await,
        Code::NotFound,
        "/subscriptions/none",
    );
    // taken ids, also in another case, and the root
    assert_status(
        try_reg(scope(SUB, T::Subscription, MG)).await,
        Code::AlreadyExists,
        SUB,
    );
    assert_status(
        try_reg(scope(
            "/subscriptions/8F2C/resourceGroups/WEB",
            T::ResourceGroup,
            "",
        ))
        .await,
        Code::AlreadyExists,
        "",
    );
    assert_status(
        try_reg(scope("/", T::Root, "")).await,
        Code::AlreadyExists,
        "/",
    );
    assert_eq!(head(&h), seq, "nothing written");
    h.stop().await;
}

#[tokio::test]
async fn register_is_idempotent_and_keeps_names_and_labels() {
    let h = Harness::start().await;
    let mut s = scope(MG, T::ManagementGroup, "");
    s.display_name = "Corporate".into();
    s.labels.insert("owner".into(), "platform".into());
    let seq = head(&h);
    let a = h
        .scopes()
        .register_scope(h.req(ADMIN, reg(s.clone(), "r1")))
        .await
        .unwrap()
        .into_inner();
    let b = h
        .scopes()
        .register_scope(h.req(ADMIN, reg(s, "r1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    assert_eq!(h.events_after(seq).await.len(), 1);
    let got = a.scope.unwrap();
    assert_eq!(
        got.parent_id, "/",
        "a management group without parent goes under the root"
    );
    assert_eq!(got.display_name, "Corporate");
    assert_eq!(
        got.labels.get("owner").map(String::as_str),
        Some("platform")
    );
    h.stop().await;
}

#[tokio::test]
async fn list_children_or_the_subtree_by_type_in_pages() {
    let h = Harness::start().await;
    tree(&h).await;
    register(&h, "/subscriptions/0000", T::Subscription, "/").await;
    let list = |parent: &str, recursive: bool, types: Vec<T>, page_size: i32, token: String| {
        let mut cl = h.scopes();
        let req = h.req(
            "anyone",
            pb::ListScopesRequest {
                page_size,
                page_token: token,
                parent_id: parent.to_owned(),
                recursive,
                types: types.into_iter().map(i32::from).collect(),
            },
        );
        async move { cl.list_scopes(req).await }
    };
    let idsof =
        |r: &pb::ListScopesResponse| r.scopes.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    let root = list("", false, vec![], 0, String::new())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(idsof(&root), vec![MG, "/subscriptions/0000"]);
    let all = list("/", true, vec![], 0, String::new())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.scopes.len(), 6);
    let subs = list("/", true, vec![T::Subscription], 0, String::new())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(idsof(&subs), vec!["/subscriptions/0000", SUB]);
    let below = list(MG, true, vec![], 2, String::new())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(idsof(&below), vec![MG2, SUB]);
    let rest = list(MG, true, vec![], 2, below.next_page_token)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(idsof(&rest), vec![RG, VM]);
    assert!(rest.next_page_token.is_empty());
    assert_eq!(
        rest.scopes[1].resource_type,
        "Microsoft.Compute/virtualMachines"
    );
    assert_status(
        list("/managementGroups/none", false, vec![], 0, String::new()).await,
        Code::NotFound,
        "none",
    );
    assert_status(
        list("/", false, vec![T::Unspecified], 0, String::new()).await,
        Code::InvalidArgument,
        "types[0]",
    );
    assert_status(
        list("/", false, vec![], 0, "@@".into()).await,
        Code::InvalidArgument,
        "page_token",
    );
    h.stop().await;
}

#[tokio::test]
async fn rename_and_move_follow_the_rules_and_move_inherited_grants() {
    let h = Harness::start().await;
    tree(&h).await;
    let other = "/managementGroups/other";
    register(&h, other, T::ManagementGroup, "/").await;
    upsert(&h, vec![user("ferry")]).await;
    assign(&h, "ferry", "reader", MG2, c::AssignmentType::Active, None).await;
    assert!(holds(&h, "ferry", "reader", RG));

    // rename
    let seq = head(&h);
    let r = h
        .scopes()
        .rename_scope(h.req(
            ADMIN,
            pb::RenameScopeRequest {
                id: SUB.into(),
                display_name: "Production".into(),
                request_id: "rn".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.scope.unwrap().display_name, "Production");
    let ev = payloads(&h, seq).await;
    let [Payload::ScopeRenamed(e)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(e.previous_display_name, "8f2c");
    assert_eq!(e.scope.as_ref().unwrap().display_name, "Production");
    let rename = |id: &str, name: &str| {
        let mut cl = h.scopes();
        let req = h.req(
            ADMIN,
            pb::RenameScopeRequest {
                id: id.into(),
                display_name: name.into(),
                request_id: String::new(),
            },
        );
        async move { cl.rename_scope(req).await }
    };
    assert_status(
        rename("/", "Tenant").await,
        Code::FailedPrecondition,
        "root",
    );
    assert_status(rename(SUB, "").await, Code::InvalidArgument, "display_name");
    assert_status(
        rename("/subscriptions/none", "x").await,
        Code::NotFound,
        "none",
    );

    // move the subscription out from under MG2: the grant there stops applying
    let seq = head(&h);
    let mv = |id: &str, to: &str| {
        let mut cl = h.scopes();
        let req = h.req(
            ADMIN,
            pb::MoveScopeRequest {
                id: id.into(),
                new_parent_id: to.into(),
                request_id: String::new(),
            },
        );
        async move { cl.move_scope(req).await }
    };
    let moved = mv(SUB, other).await.unwrap().into_inner().scope.unwrap();
    assert_eq!(moved.parent_id, other);
    assert!(
        !holds(&h, "ferry", "reader", RG),
        "inherited grant survived the move"
    );
    let ev = payloads(&h, seq).await;
    let [Payload::ScopeMoved(e)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(e.previous_parent.as_ref().unwrap().id, MG2);
    assert_eq!(e.new_parent.as_ref().unwrap().id, other);
    let got = h
        .scopes()
        .get_scope(h.req(ADMIN, pb::GetScopeRequest { id: RG.into() }))
        .await
        .unwrap()
        .into_inner();
    let anc: Vec<&str> = got.ancestors.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(anc, vec!["/", other, SUB]);

    let seq = head(&h);
    assert_status(mv(MG, MG2).await, Code::InvalidArgument, "cycle");
    assert_status(mv(MG, MG).await, Code::InvalidArgument, "new_parent_id");
    assert_status(
        mv(RG, other).await,
        Code::FailedPrecondition,
        "resource group",
    );
    assert_status(mv(VM, other).await, Code::FailedPrecondition, "resource");
    assert_status(mv("/", other).await, Code::FailedPrecondition, "root");
    assert_status(mv(MG2, SUB).await, Code::InvalidArgument, "new_parent_id");
    assert_status(
        mv(MG2, "/managementGroups/none").await,
        Code::NotFound,
        "none",
    );
    assert_status(
        mv("/managementGroups/none", "/").await,
        Code::NotFound,
        "none",
    );
    assert_eq!(head(&h), seq);
    // moving a management group to the root works
    mv(MG2, "/").await.unwrap();
    h.stop().await;
}

#[tokio::test]
async fn remove_is_refused_while_assigned_and_removes_the_subtree_deepest_first() {
    let h = Harness::start().await;
    tree(&h).await;
    upsert(&h, vec![user("ferry")]).await;
    assign(
        &h,
        "ferry",
        "reader",
        RG,
        c::AssignmentType::Eligible,
        Some(1),
    )
    .await;
    let seq = head(&h);
    let remove = |id: &str, rid: &str| {
        let mut cl = h.scopes();
        let req = h.req(
            ADMIN,
            pb::RemoveScopeRequest {
                id: id.into(),
                request_id: rid.into(),
            },
        );
        async move { cl.remove_scope(req).await }
    };
    let s = assert_status(
        remove(MG2, "").await,
        Code::FailedPrecondition,
        "1 assignment",
    );
    assert!(s.message().contains(RG), "{}", s.message());
    assert_status(remove("/", "").await, Code::FailedPrecondition, "root");
    assert_status(
        remove("/subscriptions/none", "").await,
        Code::NotFound,
        "none",
    );
    assert_eq!(head(&h), seq, "nothing written");

    // once the assignment has ended, the subtree goes, deepest first
    h.clock.advance(TimeDelta::hours(2));
    // (the expiry timer records the end with an event of its own: wait for it)
    h.wait_event(seq, "AssignmentExpired").await;
    let r = remove(MG2, "rm").await.unwrap().into_inner();
    assert_eq!(r.removed_scope_ids, vec![VM, RG, SUB, MG2]);
    let ev = payloads(&h, seq).await;
    let removed: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            Payload::ScopeRemoved(s) => Some(s.scope.as_ref().unwrap().id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, vec![VM, RG, SUB, MG2]);
    assert!(!h.core().model().scopes.contains_key(SUB));
    // the retry answers the same, without writing
    let seq = head(&h);
    assert_eq!(remove(MG2, "rm").await.unwrap().into_inner(), r);
    assert_eq!(head(&h), seq);
    assert_status(remove(MG2, "").await, Code::NotFound, MG2);
    h.stop().await;
}

#[tokio::test]
async fn import_registers_a_subtree_in_any_order_then_updates_and_prunes() {
    let h = Harness::start().await;
    // children first, and big: 1 management group, 20 subscriptions × 5 resource groups × 2 VMs
    let mut scopes = Vec::new();
    for s in 0..20 {
        let sub = format!("/subscriptions/s{s:02}");
        for g in 0..5 {
            let rg = format!("{sub}/resourceGroups/rg{g}");
            for v in 0..2 {
                scopes.push(scope(
                    &format!("{rg}/providers/Microsoft.Compute/virtualMachines/vm{v}"),
                    T::Resource,
                    "",
                ));
            }
            scopes.push(scope(&rg, T::ResourceGroup, ""));
        }
        scopes.push(scope(&sub, T::Subscription, MG));
    }
    scopes.push(scope(MG, T::ManagementGroup, "/"));
    let total = scopes.len();
    let seq = head(&h);
    let r = h
        .scopes()
        .import_scopes(h.req(ADMIN, import_req("/", scopes.clone(), false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.registered_count as usize, total);
    assert_eq!(
        (r.updated_count, r.unchanged_count, r.removed_count),
        (0, 0, 0)
    );
    let ev = h.events_after(seq).await;
    assert_eq!(ev.len(), total);
    assert_eq!(
        ev.last().unwrap().meta.as_ref().unwrap().sequence - ev[0].meta.as_ref().unwrap().sequence
            + 1,
        total as i64,
        "one commit"
    );
    assert!(holds_tree(&h, total));

    // the same import: unchanged
    let seq = head(&h);
    let r = h
        .scopes()
        .import_scopes(h.req(ADMIN, import_req("/", scopes.clone(), false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.unchanged_count as usize, total);
    assert_eq!(head(&h), seq);

    // under the management group: rename one subscription, relabel another, move a
    // third under a new nested group, drop subscription s19 (prune)
    let nested = "/managementGroups/nested";
    let mut sub: Vec<pb::Scope> = scopes
        .iter()
        .filter(|s| s.id != MG && !s.id.starts_with("/subscriptions/s19"))
        .cloned()
        .collect();
    for s in &mut sub {
        if s.id == "/subscriptions/s00" {
            s.display_name = "Zero".into();
        }
        if s.id == "/subscriptions/s01" {
            s.labels.insert("env".into(), "prod".into());
        }
        if s.id == "/subscriptions/s02" {
            s.parent_id = nested.into();
        }
    }
    sub.push(scope(nested, T::ManagementGroup, MG));
    let seq = head(&h);
    let r = h
        .scopes()
        .import_scopes(h.req(ADMIN, import_req(MG, sub, true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.registered_count, 1);
    assert_eq!(r.updated_count, 3);
    assert_eq!(r.removed_count, 16, "s19 with 5 resource groups and 10 VMs");
    let ev = payloads(&h, seq).await;
    assert!(
        ev.iter()
            .any(|e| matches!(e, Payload::ScopeRenamed(r) if r.previous_display_name == "s00"))
    );
    assert!(ev.iter().any(
        |e| matches!(e, Payload::ScopeMoved(m) if m.new_parent.as_ref().unwrap().id == nested)
    ));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Payload::ScopeRemoved(_)))
            .count(),
        16
    );
    let s02 = h
        .scopes()
        .get_scope(h.req(
            ADMIN,
            pb::GetScopeRequest {
                id: "/subscriptions/s02".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s02.scope.unwrap().parent_id, nested);
    let s01 = h
        .scopes()
        .get_scope(h.req(
            ADMIN,
            pb::GetScopeRequest {
                id: "/subscriptions/s01".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s01.scope.unwrap().labels.get("env").map(String::as_str),
        Some("prod")
    );
    assert!(!h.core().model().scopes.contains_key("/subscriptions/s19"));
    h.stop().await;
}

fn holds_tree(h: &Harness, total: usize) -> bool {
    h.core().model().scopes.len() == total + 1
}

#[tokio::test]
async fn import_prune_is_refused_while_a_pruned_scope_holds_assignments() {
    let h = Harness::start().await;
    tree(&h).await;
    upsert(&h, vec![user("ferry")]).await;
    assign(&h, "ferry", "reader", VM, c::AssignmentType::Active, None).await;
    let seq = head(&h);
    // the import lists MG2 and SUB only: RG and VM would be pruned
    let r = h
        .scopes()
        .import_scopes(h.req(
            ADMIN,
            import_req(
                MG,
                vec![
                    scope(SUB, T::Subscription, MG2),
                    scope(MG2, T::ManagementGroup, MG),
                    scope("/subscriptions/new", T::Subscription, MG2),
                ],
                true,
            ),
        ))
        .await;
    assert_status(r, Code::FailedPrecondition, "assignment");
    assert_eq!(head(&h), seq, "nothing written");
    assert!(!h.core().model().scopes.contains_key("/subscriptions/new"));
    h.stop().await;
}

#[tokio::test]
async fn import_refuses_cycles_strays_duplicates_and_unknown_parents() {
    let h = Harness::start().await;
    tree(&h).await;
    let seq = head(&h);
    let imp = |root: &str, scopes: Vec<pb::Scope>| {
        let mut cl = h.scopes();
        let req = h.req(ADMIN, import_req(root, scopes, false));
        async move { cl.import_scopes(req).await }
    };
    // a cycle between two new management groups
    assert_status(
        imp(
            "/",
            vec![
                scope(
                    "/managementGroups/a",
                    T::ManagementGroup,
                    "/managementGroups/b",
                ),
                scope(
                    "/managementGroups/b",
                    T::ManagementGroup,
                    "/managementGroups/a",
                ),
            ],
        )
        .await,
        Code::InvalidArgument,
        "cycle",
    );
    // a cycle with a known group: MG under MG2 while MG2 stays under MG
    assert_status(
        imp("/", vec![scope(MG, T::ManagementGroup, MG2)]).await,
        Code::InvalidArgument,
        "scopes[0]",
    );
    // outside root_id
    assert_status(
        imp(MG2, vec![scope("/subscriptions/x", T::Subscription, "/")]).await,
        Code::InvalidArgument,
        "not under root_id",
    );
    // duplicates (case-insensitive), malformed, wrong fit
    assert_status(
        imp(
            "/",
            vec![
                scope("/subscriptions/x", T::Subscription, "/"),
                scope("/SUBSCRIPTIONS/X", T::Subscription, "/"),
            ],
        )
        .await,
        Code::InvalidArgument,
        "scopes[1].id",
    );
    assert_status(
        imp("/", vec![scope("/bad", T::Subscription, "/")]).await,
        Code::InvalidArgument,
        "scopes[0].id",
    );
    assert_status(
        imp("/", vec![scope("/subscriptions/y", T::Subscription, SUB)]).await,
        Code::InvalidArgument,
        "scopes[0].parent_id",
    );
    // unknown parent and root
    assert_status(
        imp(
            "/",
            vec![scope(
                "/subscriptions/z",
                T::Subscription,
                "/managementGroups/none",
            )],
        )
        .await,
        Code::NotFound,
        "none",
    );
    assert_status(
        imp("/managementGroups/none", vec![]).await,
        Code::NotFound,
        "none",
    );
    assert_status(imp("", vec![]).await, Code::InvalidArgument, "root_id");
    assert_eq!(head(&h), seq, "nothing written");
    h.stop().await;
}

#[tokio::test]
async fn a_non_admin_gets_permission_denied_on_every_scope_write() {
    let h = Harness::start().await;
    tree(&h).await;
    upsert(
        &h,
        vec![
            user("mallory"),
            principal("discovery", c::PrincipalType::ServicePrincipal),
        ],
    )
    .await;
    // a reader at the subscription is not enough either
    assign(
        &h,
        "mallory",
        "reader",
        SUB,
        c::AssignmentType::Active,
        None,
    )
    .await;
    let seq = head(&h);
    let m = "mallory";
    let s = h.scopes();
    assert_status(
        s.clone()
            .register_scope(h.req(
                m,
                reg(scope("/managementGroups/m", T::ManagementGroup, "/"), ""),
            ))
            .await,
        Code::PermissionDenied,
        "tenure/scopes/write",
    );
    assert_status(
        s.clone()
            .rename_scope(h.req(
                m,
                pb::RenameScopeRequest {
                    id: SUB.into(),
                    display_name: "x".into(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        s.clone()
            .move_scope(h.req(
                m,
                pb::MoveScopeRequest {
                    id: SUB.into(),
                    new_parent_id: "/".into(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        s.clone()
            .remove_scope(h.req(
                m,
                pb::RemoveScopeRequest {
                    id: VM.into(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        s.clone()
            .import_scopes(h.req(m, import_req("/", vec![], false)))
            .await,
        Code::PermissionDenied,
        "tenure/scopes/import",
    );
    assert_eq!(head(&h), seq);
    // reads are open
    s.clone()
        .get_scope(h.req(m, pb::GetScopeRequest { id: VM.into() }))
        .await
        .unwrap();
    s.clone()
        .list_scopes(h.req(m, pb::ListScopesRequest::default()))
        .await
        .unwrap();

    // a discovery connector with a custom role holding tenure/scopes/import at the
    // management group may import there and register below it, but not elsewhere
    h.roles()
        .create_role_definition(h.req(
            ADMIN,
            pb::CreateRoleDefinitionRequest {
                role_definition: Some(pb::RoleDefinition {
                    display_name: "Scope Discovery".into(),
                    kind: pb::RoleKind::Resource.into(),
                    permissions: vec!["tenure/scopes/import".into()],
                    assignable_scope_ids: vec![MG.into()],
                    ..Default::default()
                }),
                role_definition_id: "scope-discovery".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    assign(
        &h,
        "discovery",
        "scope-discovery",
        MG,
        c::AssignmentType::Active,
        None,
    )
    .await;
    let r = s
        .clone()
        .import_scopes(h.req(
            "discovery",
            import_req(
                MG,
                vec![scope("/subscriptions/found", T::Subscription, MG2)],
                false,
            ),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.registered_count, 1);
    s.clone()
        .register_scope(h.req(
            "discovery",
            reg(
                scope(
                    "/subscriptions/found/resourceGroups/rg",
                    T::ResourceGroup,
                    "",
                ),
                "",
            ),
        ))
        .await
        .unwrap();
    assert_status(
        s.clone()
            .import_scopes(h.req("discovery", import_req("/", vec![], false)))
            .await,
        Code::PermissionDenied,
        "",
    );
    h.stop().await;
}
