//! Object-level authorization, table-driven: every configuring or mutating RPC of every
//! service, called by a signed-in user who holds no role ("mallory", with MFA), is
//! refused with PERMISSION_DENIED, and writes nothing; and nobody reads another
//! principal's requests, review decisions or audit trail. The requests are valid (they
//! succeed for an administrator), so the refusal is the authorization's and not the
//! input check's. Then the self-rules, each also through a group: no self-approval, no
//! self-assignment, no deciding one's own review unless the review is a self-review.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::TimeDelta;
use tenure_e2e::harness::*;
use tenure_platform::clock::to_proto;
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalRef, PrincipalType, ScopeType};
use tenure_proto::notifications::v1 as nt;
use tenure_proto::reviews::v1 as rv;
use tonic::Code;

const BILLING: &str = "billing-administrator";
const GA: &str = "global-administrator";
const MALLORY: &str = "mallory";

fn group_ref(id: &str) -> PrincipalRef {
    PrincipalRef {
        id: id.into(),
        r#type: PrincipalType::Group.into(),
        ..Default::default()
    }
}

fn reviewer(p: PrincipalRef) -> rv::Reviewer {
    rv::Reviewer {
        kind: rv::ReviewerKind::Principal.into(),
        principal: Some(p),
        ..Default::default()
    }
}

fn definition(name: &str, role: &str, reviewers: Vec<rv::Reviewer>) -> rv::ReviewDefinition {
    rv::ReviewDefinition {
        display_name: name.into(),
        scope: Some(rv::ReviewScope {
            role_ids: vec![role.into()],
            scope_id: "/".into(),
            ..Default::default()
        }),
        stages: vec![rv::ReviewStage {
            reviewers,
            ..Default::default()
        }],
        schedule: Some(rv::ReviewSchedule {
            recurrence: rv::Recurrence::Quarterly.into(),
            duration_days: 14,
            start_time: Some(to_proto(t0())),
            ..Default::default()
        }),
        settings: Some(rv::ReviewSettings::default()),
        fallback_reviewers: vec![user_ref(ADMIN)],
        ..Default::default()
    }
}

async fn create_definition(h: &Harness, d: rv::ReviewDefinition) -> rv::ReviewDefinition {
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

/// The round of `definition` once it is in progress (bounded wait for the timer).
async fn round_of(h: &Harness, definition: &str) -> rv::ReviewRound {
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
        if let Some(r) = rounds
            .into_iter()
            .find(|r| r.status == rv::RoundStatus::InProgress as i32)
        {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no round in progress for {definition}");
}

async fn items_of(h: &Harness, round: &str) -> Vec<rv::DecisionItem> {
    h.reviews()
        .list_decision_items(h.req(
            ADMIN,
            rv::ListDecisionItemsRequest {
                round_id: round.into(),
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items
}

/// `msg` as mallory, a signed-in user (with MFA) who holds no role.
fn mal<T>(h: &Harness, msg: T) -> tonic::Request<T> {
    h.req_mfa(MALLORY, msg)
}

/// The heads of the logs that only move by calls, to show a refused call wrote nothing.
/// (The notifications log also follows the other three in the background, so it is
/// left out; its own configuring calls are in the table like every other.)
fn heads(h: &Harness) -> [i64; 3] {
    let c = &h.contexts;
    [
        c.assignments.as_ref().unwrap().log.head(),
        c.activation.as_ref().unwrap().log.head(),
        c.reviews.as_ref().unwrap().log.head(),
    ]
}

/// Collects each call's outcome and reports every one that was not PERMISSION_DENIED at
/// once, so one run shows every gap.
#[derive(Default)]
struct Table {
    checked: Vec<&'static str>,
    wrong: Vec<String>,
}

impl Table {
    fn denied<T: std::fmt::Debug>(&mut self, rpc: &'static str, r: Result<T, tonic::Status>) {
        self.checked.push(rpc);
        match r {
            Err(s) if s.code() == Code::PermissionDenied => {}
            Err(s) => self
                .wrong
                .push(format!("{rpc}: {:?} {}", s.code(), s.message())),
            Ok(v) => self.wrong.push(format!("{rpc}: succeeded: {v:?}")),
        }
    }

    /// PERMISSION_DENIED, or NOT_FOUND for an object the caller may not even see (the
    /// same answer as for one that does not exist, so it tells nothing).
    fn denied_or_hidden<T: std::fmt::Debug>(
        &mut self,
        rpc: &'static str,
        r: Result<T, tonic::Status>,
    ) {
        match r {
            Err(s) if s.code() == Code::NotFound => self.checked.push(rpc),
            other => self.denied(rpc, other),
        }
    }

    fn finish(self, expected: usize) {
        assert!(
            self.wrong.is_empty(),
            "not PERMISSION_DENIED:\n{}",
            self.wrong.join("\n")
        );
        assert_eq!(self.checked.len(), expected, "{:?}", self.checked);
    }
}

/// A running server with one of everything: principals, a group, an eligible
/// assignment, a pending request, a review round with items, a webhook.
struct World {
    h: Harness,
    request: act::Request,
    assignment: asg::Assignment,
    round: rv::ReviewRound,
    item: rv::DecisionItem,
    definition: rv::ReviewDefinition,
    webhook: nt::Webhook,
}

async fn world() -> World {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth", MALLORY]).await;
    h.seed_principals(&[("ops", PrincipalType::Group)]).await;
    h.seed_membership("ops", "kenneth").await;
    h.seed_scope("/subscriptions/prod", "/", ScopeType::Subscription)
        .await;
    let assignment = h
        .assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.assign(AssignmentType::Eligible, "kenneth", GA, "/").await;
    h.set_activation(BILLING, approval_by(&["kenneth"])).await;
    let request = h
        .activation()
        .activate_roles(h.req_mfa(
            "ferry",
            act::ActivateRolesRequest {
                items: vec![act::ActivationItem {
                    role_id: BILLING.into(),
                    scope_id: "/".into(),
                    justification: "month-end".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap();
    let definition =
        create_definition(&h, definition("GA", GA, vec![reviewer(user_ref("ferry"))])).await;
    let round = round_of(&h, &definition.id).await;
    let item = items_of(&h, &round.id).await.remove(0);
    let webhook = h
        .notifications()
        .create_webhook(h.req(
            ADMIN,
            nt::CreateWebhookRequest {
                webhook: Some(nt::Webhook {
                    display_name: "SOC".into(),
                    url: "http://127.0.0.1:9/hook".into(),
                    secret: String::new(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();
    World {
        h,
        request,
        assignment,
        round,
        item,
        definition,
        webhook,
    }
}

#[tokio::test]
async fn every_configuring_or_mutating_rpc_refuses_a_caller_without_the_right() {
    let w = world().await;
    let h = &w.h;
    let before = heads(h);
    let mut t = Table::default();

    // tenure.assignments.v1
    let p = || h.principals();
    t.denied(
        "UpsertPrincipals",
        p().upsert_principals(mal(
            h,
            asg::UpsertPrincipalsRequest {
                principals: vec![asg::Principal {
                    id: "new-user".into(),
                    r#type: PrincipalType::User.into(),
                    display_name: "New".into(),
                    ..Default::default()
                }],
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "DisablePrincipal",
        p().disable_principal(mal(
            h,
            asg::DisablePrincipalRequest {
                id: "ferry".into(),
                reason: "left".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "DeletePrincipal",
        p().delete_principal(mal(
            h,
            asg::DeletePrincipalRequest {
                id: "ferry".into(),
                reason: "left".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "SetGroupMembers",
        p().set_group_members(mal(
            h,
            asg::SetGroupMembersRequest {
                group_id: "ops".into(),
                member_ids: vec![MALLORY.into()],
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "CreateRoleDefinition",
        h.roles()
            .create_role_definition(mal(
                h,
                asg::CreateRoleDefinitionRequest {
                    role_definition: Some(asg::RoleDefinition {
                        display_name: "Invoice Reader".into(),
                        kind: asg::RoleKind::Directory.into(),
                        permissions: vec!["billing/invoices/read".into()],
                        ..Default::default()
                    }),
                    role_definition_id: "invoice-reader".into(),
                    request_id: String::new(),
                },
            ))
            .await,
    );
    t.denied(
        "UpdateRoleDefinition",
        h.roles()
            .update_role_definition(mal(
                h,
                asg::UpdateRoleDefinitionRequest {
                    role_definition: Some(asg::RoleDefinition {
                        id: BILLING.into(),
                        description: "mine now".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["description".into()],
                    }),
                    request_id: String::new(),
                },
            ))
            .await,
    );
    t.denied(
        "DeleteRoleDefinition",
        h.roles()
            .delete_role_definition(mal(
                h,
                asg::DeleteRoleDefinitionRequest {
                    id: BILLING.into(),
                    etag: String::new(),
                    request_id: String::new(),
                },
            ))
            .await,
    );
    let s = || h.scopes();
    t.denied(
        "RegisterScope",
        s().register_scope(mal(
            h,
            asg::RegisterScopeRequest {
                scope: Some(asg::Scope {
                    id: "/subscriptions/dev".into(),
                    parent_id: "/".into(),
                    r#type: ScopeType::Subscription.into(),
                    display_name: "dev".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "RenameScope",
        s().rename_scope(mal(
            h,
            asg::RenameScopeRequest {
                id: "/subscriptions/prod".into(),
                display_name: "Production".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "MoveScope",
        s().move_scope(mal(
            h,
            asg::MoveScopeRequest {
                id: "/subscriptions/prod".into(),
                new_parent_id: "/".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "RemoveScope",
        s().remove_scope(mal(
            h,
            asg::RemoveScopeRequest {
                id: "/subscriptions/prod".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "ImportScopes",
        s().import_scopes(mal(
            h,
            asg::ImportScopesRequest {
                root_id: "/".into(),
                scopes: vec![asg::Scope {
                    id: "/subscriptions/dev".into(),
                    parent_id: "/".into(),
                    r#type: ScopeType::Subscription.into(),
                    display_name: "dev".into(),
                    ..Default::default()
                }],
                prune: false,
                request_id: String::new(),
            },
        ))
        .await,
    );
    let a = || h.assignments();
    t.denied(
        "CreateAssignment",
        a().create_assignment(mal(
            h,
            asg::CreateAssignmentRequest {
                assignment_type: AssignmentType::Active.into(),
                principal_id: "kenneth".into(),
                role_id: GA.into(),
                scope_id: "/".into(),
                justification: "because".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    t.denied(
        "UpdateAssignment",
        a().update_assignment(mal(
            h,
            asg::UpdateAssignmentRequest {
                assignment: Some(asg::Assignment {
                    id: w.assignment.id.clone(),
                    justification: "changed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["justification".into()],
                }),
                justification: "changed".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    t.denied(
        "RemoveAssignment",
        a().remove_assignment(mal(
            h,
            asg::RemoveAssignmentRequest {
                id: w.assignment.id.clone(),
                justification: "gone".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    t.denied(
        "ExtendAssignment",
        a().extend_assignment(mal(
            h,
            asg::ExtendAssignmentRequest {
                id: w.assignment.id.clone(),
                expiration: Some(asg::extend_assignment_request::Expiration::ExtendBy(
                    prost_types::Duration {
                        seconds: 86_400,
                        nanos: 0,
                    },
                )),
                justification: "longer".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    t.denied(
        "assignments.RenewAssignment",
        a().renew_assignment(mal(
            h,
            asg::RenewAssignmentRequest {
                id: w.assignment.id.clone(),
                justification: "again".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    let st = || h.settings();
    t.denied(
        "UpdateDefaultRoleSettings",
        st().update_default_role_settings(mal(
            h,
            asg::UpdateDefaultRoleSettingsRequest {
                role_settings: Some(asg::RoleSettings {
                    activation: Some(asg::ActivationSettings {
                        require_mfa: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["activation.require_mfa".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "UpdateRoleSettings",
        st().update_role_settings(mal(
            h,
            asg::UpdateRoleSettingsRequest {
                role_settings: Some(asg::RoleSettings {
                    role_id: BILLING.into(),
                    activation: Some(asg::ActivationSettings {
                        require_approval: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["activation.require_approval".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "DeleteRoleSettings",
        st().delete_role_settings(mal(
            h,
            asg::DeleteRoleSettingsRequest {
                role_id: BILLING.into(),
                scope_id: String::new(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    let pr = || h.provisioning();
    t.denied(
        "ProvisionActivation",
        pr().provision_activation(mal(
            h,
            asg::ProvisionActivationRequest {
                request_id: "forged".into(),
                eligibility_id: w.assignment.id.clone(),
                principal_id: "ferry".into(),
                role_id: BILLING.into(),
                scope_id: "/".into(),
                start_time: Some(to_proto(t0())),
                end_time: Some(to_proto(t0() + TimeDelta::hours(1))),
                justification: "forged".into(),
                actor_id: "ferry".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    t.denied(
        "provisioning.ExtendActivation",
        pr().extend_activation(mal(
            h,
            asg::ExtendActivationRequest {
                request_id: "forged-extend".into(),
                activation_request_id: w.request.id.clone(),
                new_end_time: Some(to_proto(t0() + TimeDelta::hours(9))),
                justification: "forged".into(),
                actor_id: "ferry".into(),
            },
        ))
        .await,
    );
    t.denied(
        "EndActivation",
        pr().end_activation(mal(
            h,
            asg::EndActivationRequest {
                request_id: w.request.id.clone(),
                justification: "forged".into(),
                actor_id: "ferry".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    t.denied(
        "ProvisionRenewal",
        pr().provision_renewal(mal(
            h,
            asg::ProvisionRenewalRequest {
                request_id: "forged-renewal".into(),
                assignment_id: w.assignment.id.clone(),
                start_time: Some(to_proto(t0())),
                end_time: Some(to_proto(t0() + TimeDelta::days(30))),
                justification: "forged".into(),
                actor_id: "ferry".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    t.denied(
        "ReportObservedMemberships",
        h.drift()
            .report_observed_memberships(mal(
                h,
                asg::ReportObservedMembershipsRequest {
                    source: "azure".into(),
                    scope_id: "/".into(),
                    memberships: vec![],
                    complete: true,
                    observed_at: Some(to_proto(t0())),
                    ..Default::default()
                },
            ))
            .await,
    );

    // tenure.activation.v1: deciding, cancelling and revoking someone else's.
    let ac = || h.activation();
    t.denied(
        "ApproveRequest",
        ac().approve_request(mal(
            h,
            act::ApproveRequestRequest {
                id: w.request.id.clone(),
                justification: "ok".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "DenyRequest",
        ac().deny_request(mal(
            h,
            act::DenyRequestRequest {
                id: w.request.id.clone(),
                justification: "no".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "CancelRequest",
        ac().cancel_request(mal(
            h,
            act::CancelRequestRequest {
                id: w.request.id.clone(),
                reason: "not yours".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "RevokeActivation",
        ac().revoke_activation(mal(
            h,
            act::RevokeActivationRequest {
                activation_request_id: w.request.id.clone(),
                justification: "no".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "DeactivateRole",
        ac().deactivate_role(mal(
            h,
            act::DeactivateRoleRequest {
                activation_request_id: w.request.id.clone(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "activation.ExtendActivation",
        ac().extend_activation(mal(
            h,
            act::ExtendActivationRequest {
                activation_request_id: w.request.id.clone(),
                expiration: Some(act::extend_activation_request::Expiration::ExtendBy(
                    prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    },
                )),
                justification: "more".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    // Renewing goes through the assignments context with the caller's own token, and
    // an assignment the caller may not see is not found (whether it exists or not).
    t.denied_or_hidden(
        "activation.RenewAssignment",
        ac().renew_assignment(mal(
            h,
            act::RenewAssignmentRequest {
                assignment_id: w.assignment.id.clone(),
                expiration: Some(act::renew_assignment_request::Expiration::Duration(
                    prost_types::Duration {
                        seconds: 86_400 * 30,
                        nanos: 0,
                    },
                )),
                justification: "renew".into(),
                ..Default::default()
            },
        ))
        .await,
    );

    // tenure.reviews.v1
    let r = || h.reviews();
    t.denied(
        "CreateReviewDefinition",
        r().create_review_definition(mal(
            h,
            rv::CreateReviewDefinitionRequest {
                review_definition: Some(definition(
                    "mine",
                    BILLING,
                    vec![reviewer(user_ref(MALLORY))],
                )),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "UpdateReviewDefinition",
        r().update_review_definition(mal(
            h,
            rv::UpdateReviewDefinitionRequest {
                review_definition: Some(rv::ReviewDefinition {
                    id: w.definition.id.clone(),
                    display_name: "renamed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "DeleteReviewDefinition",
        r().delete_review_definition(mal(
            h,
            rv::DeleteReviewDefinitionRequest {
                id: w.definition.id.clone(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "StopReviewRound",
        r().stop_review_round(mal(
            h,
            rv::StopReviewRoundRequest {
                id: w.round.id.clone(),
                reason: "stop".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "ApplyReviewResults",
        r().apply_review_results(mal(
            h,
            rv::ApplyReviewResultsRequest {
                id: w.round.id.clone(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "RecordDecision",
        r().record_decision(mal(
            h,
            rv::RecordDecisionRequest {
                item_id: w.item.id.clone(),
                decision: rv::ReviewDecision::Deny.into(),
                justification: "no".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "AcceptRecommendations",
        r().accept_recommendations(mal(
            h,
            rv::AcceptRecommendationsRequest {
                round_id: w.round.id.clone(),
                item_ids: vec![w.item.id.clone()],
                justification: "as recommended".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );

    // tenure.notifications.v1
    let n = || h.notifications();
    t.denied(
        "UpdateNotificationSettings",
        n().update_notification_settings(mal(
            h,
            nt::UpdateNotificationSettingsRequest {
                settings: Some(nt::NotificationSettings::default()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["email".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "UpdateNotificationRuleSet",
        n().update_notification_rule_set(mal(
            h,
            nt::UpdateNotificationRuleSetRequest {
                rule_set: Some(nt::NotificationRuleSet {
                    role_id: BILLING.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "DeleteNotificationRuleSet",
        n().delete_notification_rule_set(mal(
            h,
            nt::DeleteNotificationRuleSetRequest {
                role_id: BILLING.into(),
                scope_id: String::new(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "CreateWebhook",
        n().create_webhook(mal(
            h,
            nt::CreateWebhookRequest {
                webhook: Some(nt::Webhook {
                    display_name: "exfiltrate".into(),
                    url: "http://127.0.0.1:9/mine".into(),
                    secret: String::new(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "UpdateWebhook",
        n().update_webhook(mal(
            h,
            nt::UpdateWebhookRequest {
                webhook: Some(nt::Webhook {
                    id: w.webhook.id.clone(),
                    url: "http://127.0.0.1:9/mine".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["url".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "DeleteWebhook",
        n().delete_webhook(mal(
            h,
            nt::DeleteWebhookRequest {
                id: w.webhook.id.clone(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "RetryDelivery",
        n().retry_delivery(mal(
            h,
            nt::RetryDeliveryRequest {
                id: "any-delivery".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    let al = || h.alerts();
    t.denied(
        "DismissAlert",
        al().dismiss_alert(mal(
            h,
            nt::DismissAlertRequest {
                id: "any-alert".into(),
                reason: "noise".into(),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "UpdateAlertSettings",
        al().update_alert_settings(mal(
            h,
            nt::UpdateAlertSettingsRequest {
                settings: Some(nt::AlertSettings {
                    kind: nt::AlertKind::RolesWithoutMfaOnActivation.into(),
                    enabled: false,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["enabled".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await,
    );
    t.denied(
        "RescanAlerts",
        al().rescan_alerts(mal(h, nt::RescanAlertsRequest { kinds: vec![] }))
            .await,
    );
    t.denied(
        "UpdateAuditRetention",
        h.audit()
            .update_audit_retention(mal(
                h,
                nt::UpdateAuditRetentionRequest {
                    retention: Some(nt::AuditRetention {
                        keep_for: Some(prost_types::Duration {
                            seconds: 86_400 * 400,
                            nanos: 0,
                        }),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await,
    );

    t.finish(50);
    assert_eq!(heads(h), before, "no refused call wrote anything");
    w.h.stop().await;
}

#[tokio::test]
async fn nobody_reads_another_principals_requests_decisions_or_audit() {
    let w = world().await;
    let h = &w.h;
    // Ferry also holds a role now, so there is an instance of his to hide.
    h.assign(AssignmentType::Active, "ferry", "reader", "/")
        .await;
    let mut t = Table::default();
    let ferry = || "ferry".to_owned();

    // Single objects: refused, or not found as if they did not exist.
    t.denied_or_hidden(
        "GetRequest",
        h.activation()
            .get_request(mal(
                h,
                act::GetRequestRequest {
                    id: w.request.id.clone(),
                },
            ))
            .await,
    );
    t.denied_or_hidden(
        "GetAssignment",
        h.assignments()
            .get_assignment(mal(
                h,
                asg::GetAssignmentRequest {
                    id: w.assignment.id.clone(),
                },
            ))
            .await,
    );
    t.denied(
        "GetReviewRound",
        h.reviews()
            .get_review_round(mal(
                h,
                rv::GetReviewRoundRequest {
                    id: w.round.id.clone(),
                },
            ))
            .await,
    );
    t.denied(
        "GetReviewDefinition",
        h.reviews()
            .get_review_definition(mal(
                h,
                rv::GetReviewDefinitionRequest {
                    id: w.definition.id.clone(),
                },
            ))
            .await,
    );
    t.denied(
        "GetWebhook",
        h.notifications()
            .get_webhook(mal(
                h,
                nt::GetWebhookRequest {
                    id: w.webhook.id.clone(),
                },
            ))
            .await,
    );
    // Someone else's roles, access and review history.
    t.denied(
        "ListEffectiveRoles",
        h.access()
            .list_effective_roles(mal(
                h,
                asg::ListEffectiveRolesRequest {
                    principal_id: ferry(),
                    ..Default::default()
                },
            ))
            .await,
    );
    t.denied(
        "CheckAccess",
        h.access()
            .check_access(mal(
                h,
                asg::CheckAccessRequest {
                    principal_id: ferry(),
                    target: Some(asg::check_access_request::Target::RoleId(BILLING.into())),
                    scope_id: "/".into(),
                    ..Default::default()
                },
            ))
            .await,
    );
    t.denied(
        "ListRoleMembers",
        h.access()
            .list_role_members(mal(
                h,
                asg::ListRoleMembersRequest {
                    role_id: BILLING.into(),
                    ..Default::default()
                },
            ))
            .await,
    );
    t.denied(
        "ListDecisionItems",
        h.reviews()
            .list_decision_items(mal(
                h,
                rv::ListDecisionItemsRequest {
                    round_id: w.round.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
    );
    t.denied(
        "ListDecisionHistory",
        h.reviews()
            .list_decision_history(mal(
                h,
                rv::ListDecisionHistoryRequest {
                    principal_id: "kenneth".into(),
                    ..Default::default()
                },
            ))
            .await,
    );
    t.denied(
        "ListDriftItems",
        h.drift()
            .list_drift_items(mal(h, asg::ListDriftItemsRequest::default()))
            .await,
    );
    // The audit trail and what notifications hold.
    t.denied(
        "QueryAudit",
        h.audit()
            .query_audit(mal(
                h,
                nt::QueryAuditRequest {
                    filter: Some(nt::AuditFilter {
                        target_principal_id: ferry(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
            .await,
    );
    t.denied(
        "ExportAudit",
        h.audit()
            .export_audit(mal(
                h,
                nt::ExportAuditRequest {
                    filter: Some(nt::AuditFilter {
                        target_principal_id: ferry(),
                        ..Default::default()
                    }),
                },
            ))
            .await,
    );
    t.denied(
        "VerifyAuditChain",
        h.audit()
            .verify_audit_chain(mal(h, nt::VerifyAuditChainRequest::default()))
            .await,
    );
    t.denied(
        "GetAuditRetention",
        h.audit()
            .get_audit_retention(mal(h, nt::GetAuditRetentionRequest::default()))
            .await,
    );
    t.denied(
        "ListDeliveries",
        h.notifications()
            .list_deliveries(mal(h, nt::ListDeliveriesRequest::default()))
            .await,
    );
    t.denied(
        "ListWebhooks",
        h.notifications()
            .list_webhooks(mal(h, nt::ListWebhooksRequest::default()))
            .await,
    );
    t.denied(
        "GetNotificationSettings",
        h.notifications()
            .get_notification_settings(mal(h, nt::GetNotificationSettingsRequest::default()))
            .await,
    );
    t.denied(
        "ListAlerts",
        h.alerts()
            .list_alerts(mal(h, nt::ListAlertsRequest::default()))
            .await,
    );
    t.denied(
        "ListAlertSettings",
        h.alerts()
            .list_alert_settings(mal(h, nt::ListAlertSettingsRequest::default()))
            .await,
    );
    // The streams: events carry justifications, tickets and who holds what.
    t.denied(
        "SubscribeAlerts",
        h.alerts()
            .subscribe_alerts(mal(h, nt::SubscribeAlertsRequest::default()))
            .await
            .map(|_| ()),
    );
    t.denied(
        "SubscribeNotifications",
        h.notifications()
            .subscribe_notifications(mal(h, nt::SubscribeNotificationsRequest::default()))
            .await
            .map(|_| ()),
    );
    let ch = h.channel.clone();
    t.denied(
        "assignments.SubscribeEvents",
        asg::events_service_client::EventsServiceClient::new(ch.clone())
            .subscribe_events(mal(h, asg::SubscribeEventsRequest::default()))
            .await
            .map(|_| ()),
    );
    t.denied(
        "activation.SubscribeEvents",
        act::events_service_client::EventsServiceClient::new(ch.clone())
            .subscribe_events(mal(h, act::SubscribeEventsRequest::default()))
            .await
            .map(|_| ()),
    );
    t.denied(
        "reviews.SubscribeEvents",
        rv::events_service_client::EventsServiceClient::new(ch.clone())
            .subscribe_events(mal(h, rv::SubscribeEventsRequest::default()))
            .await
            .map(|_| ()),
    );
    t.denied(
        "notifications.SubscribeEvents",
        nt::events_service_client::EventsServiceClient::new(ch)
            .subscribe_events(mal(h, nt::SubscribeEventsRequest::default()))
            .await
            .map(|_| ()),
    );
    t.finish(26);

    // Lists answer with the caller's own objects only: nothing of Ferry's.
    let requests = h
        .activation()
        .list_requests(mal(
            h,
            act::ListRequestsRequest {
                requestor_id: ferry(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert!(requests.is_empty(), "{requests:?}");
    let assignments = h
        .assignments()
        .list_assignments(mal(
            h,
            asg::ListAssignmentsRequest {
                principal_id: ferry(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignments;
    assert!(assignments.is_empty(), "{assignments:?}");
    let instances = h
        .assignments()
        .list_instances(mal(
            h,
            asg::ListInstancesRequest {
                principal_id: ferry(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .instances;
    assert!(instances.is_empty(), "{instances:?}");
    let rounds = h
        .reviews()
        .list_review_rounds(mal(h, rv::ListReviewRoundsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .rounds;
    assert!(rounds.is_empty(), "{rounds:?}");
    let definitions = h
        .reviews()
        .list_review_definitions(mal(h, rv::ListReviewDefinitionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .review_definitions;
    assert!(definitions.is_empty(), "{definitions:?}");
    // ... while Ferry himself sees his request.
    let own = h
        .activation()
        .get_request(h.req(
            "ferry",
            act::GetRequestRequest {
                id: w.request.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(own.into_inner().request.unwrap().id, w.request.id);
    w.h.stop().await;
}

#[tokio::test]
async fn nobody_approves_their_own_request_also_when_they_approve_through_a_group() {
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "lisa"]).await;
    h.seed_principals(&[("approvers", PrincipalType::Group)])
        .await;
    h.seed_membership("approvers", "kenneth").await;
    h.seed_membership("approvers", "lisa").await;
    h.assign(AssignmentType::Eligible, "kenneth", BILLING, "/")
        .await;
    let mut settings = approval_by(&[]);
    settings.approval.as_mut().unwrap().stages[0].approvers = vec![group_ref("approvers")];
    h.set_activation(BILLING, settings).await;
    // Kenneth asks; he approves as a member of the approvers group: refused.
    let request = h
        .activation()
        .activate_roles(h.req(
            "kenneth",
            act::ActivateRolesRequest {
                items: vec![act::ActivationItem {
                    role_id: BILLING.into(),
                    scope_id: "/".into(),
                    justification: "month-end".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap();
    let approve = |who: &str| {
        let mut client = h.activation();
        let r = h.req(
            who,
            act::ApproveRequestRequest {
                id: request.id.clone(),
                justification: "fine".into(),
                request_id: String::new(),
            },
        );
        async move { client.approve_request(r).await }
    };
    assert_status(approve("kenneth").await, Code::PermissionDenied, "own");
    assert!(!h.allowed("kenneth", BILLING, "/").await);
    // Lisa, the group's other member, may.
    approve("lisa").await.unwrap();
    assert!(h.allowed("kenneth", BILLING, "/").await);
    h.stop().await;
}

#[tokio::test]
async fn nobody_decides_their_own_review_item_through_a_reviewer_group_unless_it_is_a_self_review()
{
    let h = Harness::start().await;
    h.seed_users(&["kenneth", "ferry"]).await;
    h.seed_principals(&[("reviewers", PrincipalType::Group)])
        .await;
    h.seed_membership("reviewers", "kenneth").await;
    h.seed_membership("reviewers", "ferry").await;
    h.assign(AssignmentType::Eligible, "kenneth", GA, "/").await;
    h.assign(AssignmentType::Eligible, "ferry", GA, "/").await;
    let def = create_definition(
        &h,
        definition(
            "GA",
            GA,
            vec![rv::Reviewer {
                kind: rv::ReviewerKind::GroupMembers.into(),
                principal: Some(group_ref("reviewers")),
                ..Default::default()
            }],
        ),
    )
    .await;
    let round = round_of(&h, &def.id).await;
    let items = items_of(&h, &round.id).await;
    let of = |who: &str| {
        items
            .iter()
            .find(|i| i.principal.as_ref().is_some_and(|p| p.id == who))
            .unwrap()
            .id
            .clone()
    };
    let decide = |who: &str, item: String| {
        let mut client = h.reviews();
        let r = h.req(
            who,
            rv::RecordDecisionRequest {
                item_id: item,
                decision: rv::ReviewDecision::Approve.into(),
                justification: "still needed".into(),
                request_id: String::new(),
            },
        );
        async move { client.record_decision(r).await }
    };
    assert_status(
        decide("kenneth", of("kenneth")).await,
        Code::PermissionDenied,
        "own access",
    );
    // Each reviews the other through the group.
    decide("kenneth", of("ferry")).await.unwrap();
    decide("ferry", of("kenneth")).await.unwrap();

    // A self-review: each holder decides on their own access, and only that.
    let own = create_definition(
        &h,
        definition(
            "GA self",
            GA,
            vec![rv::Reviewer {
                kind: rv::ReviewerKind::Self_.into(),
                ..Default::default()
            }],
        ),
    )
    .await;
    let round = round_of(&h, &own.id).await;
    let items = items_of(&h, &round.id).await;
    let of = |who: &str| {
        items
            .iter()
            .find(|i| i.principal.as_ref().is_some_and(|p| p.id == who))
            .unwrap()
            .id
            .clone()
    };
    decide("kenneth", of("kenneth")).await.unwrap();
    assert_status(
        decide("kenneth", of("ferry")).await,
        Code::PermissionDenied,
        "",
    );
    h.stop().await;
}
