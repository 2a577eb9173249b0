//! Helpers shared by the principals, scopes and roles tests: building messages, and
//! writing assignments and activations straight through the core (so these tests do not
//! depend on the assignments or provisioning services).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use chrono::TimeDelta;
use tenure_assignments::store;
use tenure_platform::clock::to_micros;
use tenure_platform::events::NewEvent;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::assignments::v1::event::Payload;
use tenure_proto::common::v1 as common;

use crate::common::{ADMIN, Harness};

pub fn principal(id: &str, t: common::PrincipalType) -> pb::Principal {
    pb::Principal {
        id: id.to_owned(),
        r#type: t.into(),
        display_name: format!("Name {id}"),
        user_principal_name: if t == common::PrincipalType::User {
            format!("{id}@contoso.example")
        } else {
            String::new()
        },
        email: format!("{id}@mail.example"),
        ..Default::default()
    }
}

pub fn user(id: &str) -> pb::Principal {
    principal(id, common::PrincipalType::User)
}

pub fn group(id: &str) -> pb::Principal {
    principal(id, common::PrincipalType::Group)
}

/// Upserts principals as the admin.
pub async fn upsert(h: &Harness, principals: Vec<pb::Principal>) -> pb::UpsertPrincipalsResponse {
    h.principals()
        .upsert_principals(h.req(
            ADMIN,
            pb::UpsertPrincipalsRequest {
                principals,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Writes an assignment (permanent unless `hours` is given) with its event, through the
/// core, the way the assignments service does.
pub async fn assign(
    h: &Harness,
    principal: &str,
    role: &str,
    scope: &str,
    assignment_type: common::AssignmentType,
    hours: Option<i64>,
) -> String {
    let core = h.core();
    let now = core.clock.now();
    let a = store::NewAssignment {
        id: uuid::Uuid::now_v7().to_string(),
        assignment_type,
        principal_id: principal.to_owned(),
        role_id: role.to_owned(),
        scope_id: scope.to_owned(),
        start: now,
        end: hours.map(|h| now + TimeDelta::hours(h)),
        justification: "test".to_owned(),
        ticket: None,
        actor: ADMIN.to_owned(),
    };
    let mut uow = core.begin().await.unwrap();
    store::insert_assignment(&mut uow, &a).await.unwrap();
    let assignment = store::assignment_proto(&core, &a.to_row(now), now);
    uow.emit(NewEvent::new(
        pb::AssignmentCreated {
            assignment: Some(assignment),
        },
        ADMIN,
        &a.id,
    ));
    core.commit(uow).await.unwrap();
    a.id
}

/// Writes an activation instance of one hour with its event, the way provisioning does.
pub async fn activate(
    h: &Harness,
    principal: &str,
    role: &str,
    scope: &str,
    eligibility: &str,
) -> String {
    let core = h.core();
    let now = core.clock.now();
    let row = store::ActivationRow {
        id: uuid::Uuid::now_v7().to_string(),
        request_id: uuid::Uuid::now_v7().to_string(),
        eligibility_id: eligibility.to_owned(),
        principal_id: principal.to_owned(),
        role_id: role.to_owned(),
        scope_id: scope.to_owned(),
        start_at: to_micros(now),
        end_at: to_micros(now + TimeDelta::hours(1)),
        ended_at: None,
        end_reason: 0,
        justification: "work".to_owned(),
        ticket_number: String::new(),
        ticket_system: String::new(),
        created_at: to_micros(now),
    };
    let mut uow = core.begin().await.unwrap();
    store::insert_activation(&mut uow, &row).await.unwrap();
    let instance = store::activation_proto(&core, &row, now);
    uow.emit(
        NewEvent::new(
            pb::InstanceActivated {
                instance: Some(instance),
                member_type: common::MemberType::Direct.into(),
                via_group: None,
            },
            principal,
            &row.id,
        )
        .correlated(&row.request_id),
    );
    core.commit(uow).await.unwrap();
    row.id
}

/// The payloads of the events after `seq`.
pub async fn payloads(h: &Harness, seq: i64) -> Vec<Payload> {
    h.events_after(seq)
        .await
        .into_iter()
        .filter_map(|e| e.payload)
        .collect()
}

/// The log's head (the last sequence written).
pub fn head(h: &Harness) -> i64 {
    h.core().applied()
}

/// Whether the principal holds `role` active at `scope` now, per the access model.
pub fn holds(h: &Harness, principal: &str, role: &str, scope: &str) -> bool {
    let core = h.core();
    let now = to_micros(core.clock.now());
    !core
        .model()
        .evaluate(
            principal,
            tenure_assignments::model::Target::Role(role),
            scope,
            now,
            common::AssignmentType::Active,
        )
        .is_empty()
}

/// A scope message.
pub fn scope(id: &str, t: common::ScopeType, parent: &str) -> pb::Scope {
    pb::Scope {
        id: id.to_owned(),
        r#type: t.into(),
        parent_id: parent.to_owned(),
        ..Default::default()
    }
}

/// Registers a scope as the admin.
pub async fn register(h: &Harness, id: &str, t: common::ScopeType, parent: &str) -> pb::Scope {
    h.scopes()
        .register_scope(h.req(
            ADMIN,
            pb::RegisterScopeRequest {
                scope: Some(scope(id, t, parent)),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .scope
        .unwrap()
}
