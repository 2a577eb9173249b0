//! RoleSettingsService through the real gRPC API: the layers and where each effective
//! value comes from, updates with masks, validation, authorization, events, idempotency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/src/harness.rs"]
mod common;
use common::*;

use prost_types::{Duration, FieldMask};
use tenure_assignments::settings_rules::rule_key;
use tenure_platform::events::NewEvent;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{
    self as cm, NotificationEventKind as Ev, NotificationRecipientKind as Rc, PrincipalType,
    ScopeType, SettingOrigin,
};
use tonic::Code;

const SUB: &str = "/subscriptions/prod";

fn hours(h: i64) -> Option<Duration> {
    Some(Duration {
        seconds: h * 3600,
        nanos: 0,
    })
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// Inserts a principal through a unit of work, as the sync API would.
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

/// Registers a subscription below the root through a unit of work.
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

/// Makes `principal` an active holder of `role` at `scope`.
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

async fn effective(h: &Harness, role: &str, scope: &str) -> pb::GetEffectiveRoleSettingsResponse {
    h.settings()
        .get_effective_role_settings(h.req(
            "anyone",
            pb::GetEffectiveRoleSettingsRequest {
                role_id: role.into(),
                scope_id: scope.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

fn origin(r: &pb::GetEffectiveRoleSettingsResponse, key: &str) -> SettingOrigin {
    SettingOrigin::try_from(
        *r.origins
            .get(key)
            .unwrap_or_else(|| panic!("no origin for {key}")),
    )
    .unwrap()
}

fn max_duration(r: &pb::GetEffectiveRoleSettingsResponse) -> i64 {
    r.role_settings
        .as_ref()
        .unwrap()
        .activation
        .as_ref()
        .unwrap()
        .maximum_duration
        .unwrap()
        .seconds
}

fn with_max(role: &str, scope: &str, h: i64) -> pb::RoleSettings {
    pb::RoleSettings {
        role_id: role.into(),
        scope_id: scope.into(),
        activation: Some(pb::ActivationSettings {
            maximum_duration: hours(h),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn update_role(h: &Harness, s: pb::RoleSettings, paths: &[&str]) -> pb::RoleSettings {
    h.settings()
        .update_role_settings(h.req(
            ADMIN,
            pb::UpdateRoleSettingsRequest {
                role_settings: Some(s),
                update_mask: mask(paths),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role_settings
        .unwrap()
}

#[tokio::test]
async fn effective_settings_come_from_the_most_specific_layer_and_say_so() {
    let h = Harness::start().await;
    subscription(&h, SUB).await;

    // Nothing configured: built-in values everywhere.
    let e = effective(&h, "contributor", SUB).await;
    assert_eq!(max_duration(&e), 8 * 3600);
    assert_eq!(
        origin(&e, "activation.maximum_duration"),
        SettingOrigin::BuiltIn
    );
    assert_eq!(
        origin(&e, "assignment.allow_permanent_eligible"),
        SettingOrigin::BuiltIn
    );
    let a = e.role_settings.as_ref().unwrap().assignment.unwrap();
    assert_eq!(a.eligible_expire_after.unwrap().seconds, 365 * 86_400);
    assert_eq!(a.active_expire_after.unwrap().seconds, 180 * 86_400);
    assert_eq!(
        e.role_settings.as_ref().unwrap().notification_rules.len(),
        9
    );
    assert_eq!(e.role.as_ref().unwrap().display_name, "Contributor");
    assert_eq!(e.scope.as_ref().unwrap().id, SUB);

    // Organisation default.
    h.settings()
        .update_default_role_settings(h.req(
            ADMIN,
            pb::UpdateDefaultRoleSettingsRequest {
                role_settings: Some(with_max("", "", 6)),
                update_mask: mask(&["activation.maximum_duration"]),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let e = effective(&h, "contributor", SUB).await;
    assert_eq!(max_duration(&e), 6 * 3600);
    assert_eq!(
        origin(&e, "activation.maximum_duration"),
        SettingOrigin::OrganisationDefault
    );
    assert_eq!(origin(&e, "activation.require_mfa"), SettingOrigin::BuiltIn);

    // Role override.
    update_role(
        &h,
        with_max("contributor", "", 4),
        &["activation.maximum_duration"],
    )
    .await;
    let e = effective(&h, "contributor", SUB).await;
    assert_eq!(max_duration(&e), 4 * 3600);
    assert_eq!(
        origin(&e, "activation.maximum_duration"),
        SettingOrigin::Role
    );
    // Other roles still see the organisation default.
    let other = effective(&h, "reader", SUB).await;
    assert_eq!(
        origin(&other, "activation.maximum_duration"),
        SettingOrigin::OrganisationDefault
    );

    // Role at the subscription: applies there only, not at the root nor elsewhere.
    let mut at_scope = with_max("contributor", SUB, 2);
    at_scope.notification_rules = vec![cm::NotificationRule {
        event_kind: Ev::Activated.into(),
        recipient_kind: Rc::Administrators.into(),
        critical_only: Some(true),
        ..Default::default()
    }];
    update_role(
        &h,
        at_scope,
        &["activation.maximum_duration", "notification_rules"],
    )
    .await;
    let e = effective(&h, "contributor", SUB).await;
    assert_eq!(max_duration(&e), 2 * 3600);
    assert_eq!(
        origin(&e, "activation.maximum_duration"),
        SettingOrigin::RoleAtScope
    );
    let key = rule_key(Ev::Activated, Rc::Administrators);
    assert_eq!(origin(&e, &key), SettingOrigin::RoleAtScope);
    assert_eq!(
        origin(&e, &format!("{key}.critical_only")),
        SettingOrigin::RoleAtScope
    );
    assert_eq!(
        origin(&e, &format!("{key}.enabled")),
        SettingOrigin::BuiltIn
    );
    let at_root = effective(&h, "contributor", "").await;
    assert_eq!(at_root.role_settings.as_ref().unwrap().scope_id, "/");
    assert_eq!(max_duration(&at_root), 4 * 3600);
    assert_eq!(
        origin(&at_root, "activation.maximum_duration"),
        SettingOrigin::Role
    );

    // The pub function the assignments service uses agrees.
    let (eff, origins) =
        tenure_assignments::settings_store::effective_settings(&h.core(), "contributor", SUB)
            .await
            .unwrap();
    assert_eq!(eff.activation.unwrap().maximum_duration, hours(2));
    assert_eq!(
        origins["activation.maximum_duration"],
        SettingOrigin::RoleAtScope
    );

    // Deleting the scoped override brings the role override back.
    h.settings()
        .delete_role_settings(h.req(
            ADMIN,
            pb::DeleteRoleSettingsRequest {
                role_id: "contributor".into(),
                scope_id: SUB.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let e = effective(&h, "contributor", SUB).await;
    assert_eq!(
        origin(&e, "activation.maximum_duration"),
        SettingOrigin::Role
    );
    h.stop().await;
}

#[tokio::test]
async fn defaults_show_every_field_and_clearing_returns_to_built_in() {
    let h = Harness::start().await;
    let get = || async {
        h.settings()
            .get_default_role_settings(h.req("anyone", pb::GetDefaultRoleSettingsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .role_settings
            .unwrap()
    };
    let d = get().await;
    assert_eq!(d.etag, "0");
    assert_eq!(d.activation.as_ref().unwrap().require_mfa, Some(true));
    assert_eq!(
        d.assignment
            .as_ref()
            .unwrap()
            .require_justification_on_active_assignment,
        Some(true)
    );

    let given = pb::RoleSettings {
        activation: Some(pb::ActivationSettings {
            require_ticket: Some(true),
            ..Default::default()
        }),
        assignment: Some(pb::AssignmentSettings {
            allow_permanent_active: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let after = h
        .settings()
        .update_default_role_settings(h.req(
            ADMIN,
            pb::UpdateDefaultRoleSettingsRequest {
                role_settings: Some(given),
                update_mask: mask(&[
                    "activation.require_ticket",
                    "assignment.allow_permanent_active",
                ]),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role_settings
        .unwrap();
    assert_eq!(after.etag, "1");
    assert_eq!(after.updated_by, ADMIN);
    assert_eq!(
        after.activation.as_ref().unwrap().require_ticket,
        Some(true)
    );
    assert_eq!(
        after.activation.as_ref().unwrap().require_mfa,
        Some(true),
        "unmasked stays built-in"
    );
    assert_eq!(get().await, after);

    // Masked and unset: back to the built-in default.
    let cleared = h
        .settings()
        .update_default_role_settings(h.req(
            ADMIN,
            pb::UpdateDefaultRoleSettingsRequest {
                role_settings: Some(pb::RoleSettings {
                    etag: "1".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["activation.require_ticket"]),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role_settings
        .unwrap();
    assert_eq!(
        cleared.activation.as_ref().unwrap().require_ticket,
        Some(false)
    );
    assert_eq!(
        cleared.assignment.as_ref().unwrap().allow_permanent_active,
        Some(true)
    );
    assert_eq!(cleared.etag, "2");

    // A stale etag fails and changes nothing.
    let seq = h.core().log.head();
    let r = h
        .settings()
        .update_default_role_settings(h.req(
            ADMIN,
            pb::UpdateDefaultRoleSettingsRequest {
                role_settings: Some(pb::RoleSettings {
                    etag: "1".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["*"]),
                request_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::FailedPrecondition, "etag");
    assert!(h.events_after(seq).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn overrides_are_read_listed_and_replaced_by_mask() {
    let h = Harness::start().await;
    subscription(&h, SUB).await;
    // Nothing yet: only the ids.
    let none = h
        .settings()
        .get_role_settings(h.req(
            "anyone",
            pb::GetRoleSettingsRequest {
                role_id: "owner".into(),
                scope_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role_settings
        .unwrap();
    assert_eq!(none.role_id, "owner");
    assert!(
        none.activation.is_none()
            && none.assignment.is_none()
            && none.notification_rules.is_empty()
    );

    let first = update_role(
        &h,
        pb::RoleSettings {
            role_id: "owner".into(),
            activation: Some(pb::ActivationSettings {
                maximum_duration: hours(2),
                require_approval: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["activation"],
    )
    .await;
    assert_eq!(
        first.activation.as_ref().unwrap().require_approval,
        Some(true)
    );
    // A mask replaces only what it names.
    let second = update_role(
        &h,
        pb::RoleSettings {
            role_id: "owner".into(),
            activation: Some(pb::ActivationSettings {
                maximum_duration: hours(3),
                require_approval: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["activation.maximum_duration"],
    )
    .await;
    let a = second.activation.unwrap();
    assert_eq!(a.maximum_duration, hours(3));
    assert_eq!(a.require_approval, Some(true));
    assert_eq!(second.etag, "2");
    // "*" replaces the whole layer.
    let whole = update_role(
        &h,
        pb::RoleSettings {
            role_id: "owner".into(),
            assignment: Some(pb::AssignmentSettings {
                allow_permanent_eligible: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["*"],
    )
    .await;
    assert!(whole.activation.is_none());
    assert_eq!(
        whole.assignment.unwrap().allow_permanent_eligible,
        Some(true)
    );

    update_role(
        &h,
        with_max("contributor", SUB, 1),
        &["activation.maximum_duration"],
    )
    .await;
    update_role(
        &h,
        with_max("billing-administrator", "", 1),
        &["activation.maximum_duration"],
    )
    .await;

    let list = |role: &str, size: i32, token: String| {
        let c = h.settings();
        let r = h.req(
            "anyone",
            pb::ListRoleSettingsRequest {
                page_size: size,
                page_token: token,
                role_id: role.into(),
            },
        );
        async move {
            let mut c = c;
            c.list_role_settings(r).await.unwrap().into_inner()
        }
    };
    let all = list("", 0, String::new()).await;
    let ids: Vec<(String, String)> = all
        .role_settings
        .iter()
        .map(|s| (s.role_id.clone(), s.scope_id.clone()))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("billing-administrator".into(), String::new()),
            ("contributor".into(), SUB.into()),
            ("owner".into(), String::new())
        ],
        "overrides only (not the defaults), by role then scope"
    );
    let p1 = list("", 2, String::new()).await;
    assert_eq!(p1.role_settings.len(), 2);
    let p2 = list("", 2, p1.next_page_token.clone()).await;
    assert_eq!(p2.role_settings.len(), 1);
    assert_eq!(p2.role_settings[0].role_id, "owner");
    assert!(p2.next_page_token.is_empty());
    let only = list("contributor", 0, String::new()).await;
    assert_eq!(only.role_settings.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn every_change_emits_settings_changed_with_before_and_after() {
    let h = Harness::start().await;
    let seq = h.core().log.head();
    update_role(
        &h,
        with_max("reader", "", 2),
        &["activation.maximum_duration"],
    )
    .await;
    update_role(
        &h,
        with_max("reader", "", 3),
        &["activation.maximum_duration"],
    )
    .await;
    h.settings()
        .delete_role_settings(h.req(
            ADMIN,
            pb::DeleteRoleSettingsRequest {
                role_id: "reader".into(),
                scope_id: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let changes: Vec<pb::RoleSettingsChanged> = h
        .events_after(seq)
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(pb::event::Payload::RoleSettingsChanged(c)) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 3);
    assert!(changes[0].before.is_none());
    assert_eq!(
        changes[0]
            .after
            .as_ref()
            .unwrap()
            .activation
            .as_ref()
            .unwrap()
            .maximum_duration,
        hours(2)
    );
    assert_eq!(changes[0].role.as_ref().unwrap().id, "reader");
    assert_eq!(
        changes[1]
            .before
            .as_ref()
            .unwrap()
            .activation
            .as_ref()
            .unwrap()
            .maximum_duration,
        hours(2)
    );
    assert_eq!(
        changes[1]
            .after
            .as_ref()
            .unwrap()
            .activation
            .as_ref()
            .unwrap()
            .maximum_duration,
        hours(3)
    );
    assert_eq!(changes[1].after.as_ref().unwrap().updated_by, ADMIN);
    assert_eq!(
        changes[2]
            .before
            .as_ref()
            .unwrap()
            .activation
            .as_ref()
            .unwrap()
            .maximum_duration,
        hours(3)
    );
    assert!(changes[2].after.is_none());

    // Deleting a missing override is a no-op success without an event; an update that
    // changes nothing emits nothing either.
    let seq = h.core().log.head();
    h.settings()
        .delete_role_settings(h.req(
            ADMIN,
            pb::DeleteRoleSettingsRequest {
                role_id: "reader".into(),
                scope_id: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    update_role(
        &h,
        with_max("owner", "", 2),
        &["activation.maximum_duration"],
    )
    .await;
    let seq2 = h.core().log.head();
    update_role(
        &h,
        with_max("owner", "", 2),
        &["activation.maximum_duration"],
    )
    .await;
    assert_eq!(h.events_after(seq).await.len(), 1);
    assert!(h.events_after(seq2).await.is_empty());

    // Changing the defaults: no role, no scope.
    let seq = h.core().log.head();
    h.settings()
        .update_default_role_settings(h.req(
            ADMIN,
            pb::UpdateDefaultRoleSettingsRequest {
                role_settings: Some(with_max("", "", 5)),
                update_mask: mask(&["activation.maximum_duration"]),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let ev = h.events_after(seq).await;
    let Some(pb::event::Payload::RoleSettingsChanged(c)) = &ev[0].payload else {
        panic!("{ev:?}")
    };
    assert!(c.role.is_none() && c.scope.is_none() && c.before.is_none());
    assert_eq!(
        c.after
            .as_ref()
            .unwrap()
            .activation
            .as_ref()
            .unwrap()
            .maximum_duration,
        hours(5)
    );
    h.stop().await;
}

#[tokio::test]
async fn retries_with_the_same_request_id_have_the_effect_of_once() {
    let h = Harness::start().await;
    let seq = h.core().log.head();
    let call = |hrs: i64| {
        let mut c = h.settings();
        let r = h.req(
            ADMIN,
            pb::UpdateRoleSettingsRequest {
                role_settings: Some(with_max("reader", "", hrs)),
                update_mask: mask(&["activation.maximum_duration"]),
                request_id: "req-1".into(),
            },
        );
        async move { c.update_role_settings(r).await.unwrap().into_inner() }
    };
    let first = call(2).await;
    let again = call(2).await;
    assert_eq!(first, again);
    assert_eq!(h.events_after(seq).await.len(), 1);

    let del = |id: &str| {
        let mut c = h.settings();
        let r = h.req(
            ADMIN,
            pb::DeleteRoleSettingsRequest {
                role_id: "reader".into(),
                scope_id: String::new(),
                request_id: id.into(),
            },
        );
        async move { c.delete_role_settings(r).await.unwrap() }
    };
    del("del-1").await;
    del("del-1").await;
    assert_eq!(h.events_after(seq).await.len(), 2);

    let d = |id: &str| {
        let mut c = h.settings();
        let r = h.req(
            ADMIN,
            pb::UpdateDefaultRoleSettingsRequest {
                role_settings: Some(with_max("", "", 3)),
                update_mask: mask(&["activation.maximum_duration"]),
                request_id: id.into(),
            },
        );
        async move {
            c.update_default_role_settings(r)
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert_eq!(d("def-1").await, d("def-1").await);
    assert_eq!(h.events_after(seq).await.len(), 3);
    h.stop().await;
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let h = Harness::start().await;
    subscription(&h, SUB).await;
    principal(&h, "svc", PrincipalType::ServicePrincipal).await;
    principal(&h, "ann", PrincipalType::User).await;
    let seq = h.core().log.head();
    let upd = |s: pb::RoleSettings, paths: &[&str]| {
        let mut c = h.settings();
        let r = h.req(
            ADMIN,
            pb::UpdateRoleSettingsRequest {
                role_settings: Some(s),
                update_mask: mask(paths),
                request_id: String::new(),
            },
        );
        async move { c.update_role_settings(r).await }
    };
    let act = |a: pb::ActivationSettings| pb::RoleSettings {
        role_id: "reader".into(),
        activation: Some(a),
        ..Default::default()
    };

    assert_status(
        upd(with_max("reader", "", 25), &["activation.maximum_duration"]).await,
        Code::InvalidArgument,
        "role_settings.activation.maximum_duration",
    );
    assert_status(
        upd(with_max("reader", "", 1), &["activation.max"]).await,
        Code::InvalidArgument,
        "update_mask",
    );
    assert_status(
        upd(with_max("reader", "", 1), &[]).await,
        Code::InvalidArgument,
        "update_mask",
    );
    let mfa = pb::ActivationSettings {
        mfa_max_age: Some(Duration {
            seconds: 30,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert_status(
        upd(act(mfa), &["activation"]).await,
        Code::InvalidArgument,
        "role_settings.activation.mfa_max_age",
    );
    let stage = |ids: &[&str], required: i32| pb::ApprovalStage {
        approvers: ids
            .iter()
            .map(|i| cm::PrincipalRef {
                id: (*i).into(),
                ..Default::default()
            })
            .collect(),
        required_approvals: required,
        ..Default::default()
    };
    let approval = |stages: Vec<pb::ApprovalStage>| pb::ActivationSettings {
        require_approval: Some(true),
        approval: Some(pb::ApprovalSettings {
            stages,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_status(
        upd(
            act(approval(vec![
                stage(&[], 1),
                stage(&[], 1),
                stage(&[], 1),
                stage(&[], 1),
            ])),
            &["activation"],
        )
        .await,
        Code::InvalidArgument,
        "role_settings.activation.approval.stages",
    );
    assert_status(
        upd(act(approval(vec![stage(&["ann"], 2)])), &["activation"]).await,
        Code::InvalidArgument,
        "role_settings.activation.approval.stages[0].required_approvals",
    );
    assert_status(
        upd(act(approval(vec![stage(&[], 11)])), &["activation"]).await,
        Code::InvalidArgument,
        "role_settings.activation.approval.stages[0].required_approvals",
    );
    assert_status(
        upd(act(approval(vec![stage(&["svc"], 1)])), &["activation"]).await,
        Code::InvalidArgument,
        "role_settings.activation.approval.stages[0].approvers[0]",
    );
    assert_status(
        upd(act(approval(vec![stage(&["nobody"], 1)])), &["activation"]).await,
        Code::NotFound,
        "nobody",
    );
    let mut escalation = stage(&["ann"], 1);
    escalation.escalation_approvers = vec![cm::PrincipalRef {
        id: "ann".into(),
        ..Default::default()
    }];
    escalation.escalation_after = hours(25);
    assert_status(
        upd(act(approval(vec![escalation])), &["activation"]).await,
        Code::InvalidArgument,
        "role_settings.activation.approval.stages[0].escalation_after",
    );
    let asg = pb::RoleSettings {
        role_id: "reader".into(),
        assignment: Some(pb::AssignmentSettings {
            eligible_expire_after: Some(Duration {
                seconds: 3651 * 86_400,
                nanos: 0,
            }),
            active_expire_after: Some(Duration {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let s = assert_status(
        upd(asg, &["assignment"]).await,
        Code::InvalidArgument,
        "role_settings.assignment.eligible_expire_after",
    );
    assert!(
        s.message()
            .contains("role_settings.assignment.active_expire_after"),
        "both fields named: {s:?}"
    );
    let rules = pb::RoleSettings {
        role_id: "reader".into(),
        notification_rules: vec![
            cm::NotificationRule {
                event_kind: Ev::AlertRaised.into(),
                recipient_kind: Rc::Administrators.into(),
                ..Default::default()
            },
            cm::NotificationRule {
                event_kind: Ev::Activated.into(),
                recipient_kind: Rc::Assignee.into(),
                extra_recipients: Some(cm::ExtraRecipients {
                    email_addresses: vec!["bad address".into()],
                    principal_ids: vec![],
                }),
                ..Default::default()
            },
            cm::NotificationRule {
                event_kind: Ev::Activated.into(),
                recipient_kind: Rc::Assignee.into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let s = assert_status(
        upd(rules, &["notification_rules"]).await,
        Code::InvalidArgument,
        "role_settings.notification_rules[0].event_kind",
    );
    assert!(
        s.message()
            .contains("notification_rules[1].extra_recipients.email_addresses[0]")
    );
    assert!(s.message().contains("notification_rules[2].event_kind"));
    let extra = pb::RoleSettings {
        role_id: "reader".into(),
        notification_rules: vec![cm::NotificationRule {
            event_kind: Ev::Activated.into(),
            recipient_kind: Rc::Assignee.into(),
            extra_recipients: Some(cm::ExtraRecipients {
                email_addresses: vec![],
                principal_ids: vec!["ghost".into()],
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_status(
        upd(extra, &["notification_rules"]).await,
        Code::NotFound,
        "ghost",
    );

    // Unknown role and scope; scopes with directory roles; missing role id.
    assert_status(
        upd(
            with_max("no-such-role", "", 2),
            &["activation.maximum_duration"],
        )
        .await,
        Code::NotFound,
        "no-such-role",
    );
    assert_status(
        upd(
            with_max("contributor", "/subscriptions/none", 2),
            &["activation.maximum_duration"],
        )
        .await,
        Code::NotFound,
        "/subscriptions/none",
    );
    assert_status(
        upd(
            with_max("global-administrator", SUB, 2),
            &["activation.maximum_duration"],
        )
        .await,
        Code::InvalidArgument,
        "role_settings.scope_id",
    );
    assert_status(
        upd(with_max("", "", 2), &["activation.maximum_duration"]).await,
        Code::InvalidArgument,
        "role_settings.role_id",
    );
    let r = h
        .settings()
        .update_role_settings(h.req(
            ADMIN,
            pb::UpdateRoleSettingsRequest {
                role_settings: None,
                update_mask: mask(&["*"]),
                request_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::InvalidArgument, "role_settings");

    // Defaults must not name a role.
    let r = h
        .settings()
        .update_default_role_settings(h.req(
            ADMIN,
            pb::UpdateDefaultRoleSettingsRequest {
                role_settings: Some(with_max("reader", "", 2)),
                update_mask: mask(&["activation.maximum_duration"]),
                request_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::InvalidArgument, "role_settings.role_id");

    // Reads.
    let r = h
        .settings()
        .get_role_settings(h.req(
            "anyone",
            pb::GetRoleSettingsRequest {
                role_id: "nope".into(),
                scope_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::NotFound, "nope");
    let r = h
        .settings()
        .get_role_settings(h.req(
            "anyone",
            pb::GetRoleSettingsRequest {
                role_id: "billing-administrator".into(),
                scope_id: SUB.into(),
            },
        ))
        .await;
    assert_status(r, Code::InvalidArgument, "scope_id");
    let r = h
        .settings()
        .get_effective_role_settings(h.req(
            "anyone",
            pb::GetEffectiveRoleSettingsRequest {
                role_id: "reader".into(),
                scope_id: "/nowhere".into(),
            },
        ))
        .await;
    assert_status(r, Code::NotFound, "/nowhere");
    let r = h
        .settings()
        .get_effective_role_settings(h.req(
            "anyone",
            pb::GetEffectiveRoleSettingsRequest {
                role_id: String::new(),
                scope_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::InvalidArgument, "role_id");
    let r = h
        .settings()
        .list_role_settings(h.req(
            "anyone",
            pb::ListRoleSettingsRequest {
                page_size: -1,
                ..Default::default()
            },
        ))
        .await;
    assert_status(r, Code::InvalidArgument, "page_size");
    let r = h
        .settings()
        .delete_role_settings(h.req(
            ADMIN,
            pb::DeleteRoleSettingsRequest {
                role_id: "nope".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_status(r, Code::NotFound, "nope");

    assert!(
        h.events_after(seq).await.is_empty(),
        "nothing written by rejected calls"
    );
    let list = h
        .settings()
        .list_role_settings(h.req("anyone", pb::ListRoleSettingsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(list.role_settings.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn only_privileged_role_administrators_change_settings_and_anyone_reads() {
    let h = Harness::start().await;
    subscription(&h, SUB).await;
    principal(&h, "mallory", PrincipalType::User).await;
    principal(&h, "sub-admin", PrincipalType::User).await;
    // A Privileged Role Administrator at the subscription only.
    grant(&h, "sub-admin", "privileged-role-administrator", SUB).await;
    let seq = h.core().log.head();
    let r = h
        .settings()
        .update_role_settings(h.req(
            "mallory",
            pb::UpdateRoleSettingsRequest {
                role_settings: Some(with_max("reader", "", 2)),
                update_mask: mask(&["activation.maximum_duration"]),
                request_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::PermissionDenied, "tenure/settings/write");
    let r = h
        .settings()
        .update_default_role_settings(h.req(
            "mallory",
            pb::UpdateDefaultRoleSettingsRequest {
                role_settings: Some(with_max("", "", 2)),
                update_mask: mask(&["activation.maximum_duration"]),
                request_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::PermissionDenied, "");
    let r = h
        .settings()
        .delete_role_settings(h.req(
            "mallory",
            pb::DeleteRoleSettingsRequest {
                role_id: "reader".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_status(r, Code::PermissionDenied, "");
    // The subscription's administrator may change the override at the subscription,
    // not the role-wide one.
    let r = h
        .settings()
        .update_role_settings(h.req(
            "sub-admin",
            pb::UpdateRoleSettingsRequest {
                role_settings: Some(with_max("reader", "", 2)),
                update_mask: mask(&["activation.maximum_duration"]),
                request_id: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::PermissionDenied, "");
    assert!(h.events_after(seq).await.is_empty());
    h.settings()
        .update_role_settings(h.req(
            "sub-admin",
            pb::UpdateRoleSettingsRequest {
                role_settings: Some(with_max("reader", SUB, 2)),
                update_mask: mask(&["activation.maximum_duration"]),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    // Reads: any authenticated caller; no token is refused.
    h.settings()
        .get_role_settings(h.req(
            "mallory",
            pb::GetRoleSettingsRequest {
                role_id: "reader".into(),
                scope_id: SUB.into(),
            },
        ))
        .await
        .unwrap();
    let r = h
        .settings()
        .get_default_role_settings(pb::GetDefaultRoleSettingsRequest {})
        .await;
    assert_status(r, Code::Unauthenticated, "");
    h.stop().await;
}

#[tokio::test]
async fn default_approvers_are_the_active_privileged_role_administrators_at_or_above() {
    let h = Harness::start().await;
    subscription(&h, SUB).await;
    principal(&h, "ann", PrincipalType::User).await;
    principal(&h, "bob", PrincipalType::User).await;
    principal(&h, "cy", PrincipalType::User).await;
    principal(&h, "pra-group", PrincipalType::Group).await;
    h.seed_membership("pra-group", "bob").await;
    grant(&h, "pra-group", "privileged-role-administrator", "/").await;
    grant(&h, "cy", "privileged-role-administrator", SUB).await;

    // Approval with a stage naming nobody: the default approvers are resolved.
    update_role(
        &h,
        pb::RoleSettings {
            role_id: "owner".into(),
            activation: Some(pb::ActivationSettings {
                require_approval: Some(true),
                approval: Some(pb::ApprovalSettings {
                    timeout: hours(4),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["activation.require_approval", "activation.approval"],
    )
    .await;
    let ids = |r: &pb::GetEffectiveRoleSettingsResponse| {
        r.default_approvers
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>()
    };
    let at_root = effective(&h, "owner", "/").await;
    assert_eq!(ids(&at_root), vec![ADMIN.to_owned(), "bob".to_owned()]);
    assert_eq!(origin(&at_root, "activation.approval"), SettingOrigin::Role);
    let ap = at_root
        .role_settings
        .as_ref()
        .unwrap()
        .activation
        .as_ref()
        .unwrap()
        .approval
        .clone()
        .unwrap();
    assert_eq!(ap.timeout, hours(4));
    assert_eq!(ap.stages.len(), 1);
    let at_sub = effective(&h, "owner", SUB).await;
    assert_eq!(
        ids(&at_sub),
        vec![ADMIN.to_owned(), "bob".to_owned(), "cy".to_owned()]
    );

    // Named approvers (a group and a user): names filled on read, no defaults needed.
    update_role(
        &h,
        pb::RoleSettings {
            role_id: "owner".into(),
            activation: Some(pb::ActivationSettings {
                approval: Some(pb::ApprovalSettings {
                    stages: vec![pb::ApprovalStage {
                        approvers: vec![
                            cm::PrincipalRef {
                                id: "ann".into(),
                                ..Default::default()
                            },
                            cm::PrincipalRef {
                                id: "pra-group".into(),
                                ..Default::default()
                            },
                        ],
                        required_approvals: 2,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["activation.approval"],
    )
    .await;
    let e = effective(&h, "owner", "/").await;
    assert!(e.default_approvers.is_empty());
    let stage = &e
        .role_settings
        .as_ref()
        .unwrap()
        .activation
        .as_ref()
        .unwrap()
        .approval
        .as_ref()
        .unwrap()
        .stages[0];
    assert_eq!(stage.approvers[0].display_name, "User ann");
    assert_eq!(stage.approvers[1].r#type, PrincipalType::Group as i32);
    h.stop().await;
}
