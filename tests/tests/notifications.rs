//! The notifications context through the real server, with a real SMTP server and a
//! real webhook endpoint on loopback: Ferry's approved activation in the audit trail
//! and its CSV export, the approval and activation e-mails, "activated too frequently"
//! on the alert stream and by webhook, dismissal, a restart that loses and duplicates
//! nothing, and every kind of bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::TimeDelta;
use futures::StreamExt as _;
use tenure_e2e::harness::*;
use tenure_e2e::sinks::{SmtpSink, WebhookSink};
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalRef, PrincipalType};
use tenure_proto::notifications::v1 as pb;
use tonic::Code;

const BILLING: &str = "billing-administrator";
const PRA: &str = "privileged-role-administrator";
const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

fn user(id: &str) -> PrincipalRef {
    PrincipalRef {
        id: id.into(),
        r#type: PrincipalType::User.into(),
        ..Default::default()
    }
}

async fn set_activation(h: &Harness, role: &str, a: asg::ActivationSettings) {
    h.settings()
        .update_role_settings(h.req(
            ADMIN,
            asg::UpdateRoleSettingsRequest {
                role_settings: Some(asg::RoleSettings {
                    role_id: role.into(),
                    activation: Some(a),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["activation".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

fn approval_by(approvers: &[&str]) -> asg::ActivationSettings {
    asg::ActivationSettings {
        require_approval: Some(true),
        require_mfa: Some(false),
        approval: Some(asg::ApprovalSettings {
            stages: vec![asg::ApprovalStage {
                approvers: approvers.iter().map(|a| user(a)).collect(),
                required_approvals: 1,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn no_approval() -> asg::ActivationSettings {
    asg::ActivationSettings {
        require_approval: Some(false),
        require_mfa: Some(false),
        ..Default::default()
    }
}

async fn activate(h: &Harness, who: &str) -> act::Request {
    let resp = h
        .activation()
        .activate_roles(h.req_mfa(
            who,
            act::ActivateRolesRequest {
                items: vec![act::ActivationItem {
                    role_id: BILLING.into(),
                    scope_id: "/".into(),
                    justification: "month-end invoices".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    resp.results[0].request.clone().unwrap()
}

async fn deactivate(h: &Harness, who: &str, id: &str) {
    h.activation()
        .deactivate_role(h.req(
            who,
            act::DeactivateRoleRequest {
                activation_request_id: id.into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

fn audit_filter(request_id: &str) -> pb::AuditFilter {
    pb::AuditFilter {
        request_id: request_id.into(),
        source_contexts: vec!["activation".into()],
        ..Default::default()
    }
}

async fn audit_of(h: &Harness, f: pb::AuditFilter) -> Vec<pb::AuditEntry> {
    h.audit()
        .query_audit(h.req(
            ADMIN,
            pb::QueryAuditRequest {
                filter: Some(f),
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .entries
}

async fn wait_audit(h: &Harness, f: pb::AuditFilter, n: usize) -> Vec<pb::AuditEntry> {
    for _ in 0..1000 {
        let e = audit_of(h, f.clone()).await;
        if e.len() >= n {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} audit entries: {:?}", audit_of(h, f).await);
}

async fn export_csv(h: &Harness, f: pb::AuditFilter) -> String {
    let mut s = h
        .audit()
        .export_audit(h.req(ADMIN, pb::ExportAuditRequest { filter: Some(f) }))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend(chunk.unwrap().csv_chunk);
    }
    String::from_utf8(out).unwrap()
}

async fn all_audit(h: &Harness) -> Vec<pb::AuditEntry> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = h
            .audit()
            .query_audit(h.req(
                ADMIN,
                pb::QueryAuditRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        out.extend(r.entries);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

async fn start() -> (Harness, SmtpSink, WebhookSink) {
    let smtp = SmtpSink::start().await;
    let hooks = WebhookSink::start(SECRET).await;
    let port = smtp.addr.port();
    let h = Harness::start_with(|c| {
        c.notifications.smtp.host = Some("127.0.0.1".into());
        c.notifications.smtp.port = port;
        c.notifications.smtp.tls = "none".into();
        c.notifications.link_base_url = "https://tenure.example".into();
    })
    .await;
    (h, smtp, hooks)
}

#[tokio::test]
async fn ferrys_approved_activation_is_audited_mailed_and_frequent_activation_alerts() {
    let (mut h, smtp, hooks) = start().await;
    h.seed_users(&["ferry", "kenneth", "lisa"]).await;
    // Lisa is an eligible Privileged Role Administrator: one of the administrators.
    h.assign(AssignmentType::Eligible, "lisa", PRA, "/").await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    set_activation(&h, BILLING, approval_by(&["kenneth"])).await;
    let hook = h
        .notifications()
        .create_webhook(h.req(
            ADMIN,
            pb::CreateWebhookRequest {
                webhook: Some(pb::Webhook {
                    display_name: "SOC".into(),
                    url: hooks.url(),
                    secret: SECRET.into(),
                    ..Default::default()
                }),
                request_id: "hook-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hook.secret, SECRET);
    assert_eq!(hook.webhook.as_ref().unwrap().secret_hint, "test");
    // administrators are explicit and listable
    let mut admins = vec![];
    for _ in 0..500 {
        admins = h
            .notifications()
            .resolve_administrators(h.req(ADMIN, pb::ResolveAdministratorsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .administrators;
        if !admins.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        admins.iter().any(|a| a.email_address == "lisa@example.test"
            && a.reason.contains("eligible privileged-role-administrator")),
        "{admins:?}"
    );

    // Ferry asks; Kenneth approves.
    let r = activate(&h, "ferry").await;
    assert_eq!(r.status(), act::RequestStatus::PendingApproval);
    let approval = smtp
        .wait_for("kenneth@example.test", "requests approval")
        .await;
    assert!(
        approval.text().contains("month-end invoices"),
        "{}",
        approval.data
    );
    assert!(
        approval
            .text()
            .contains(&format!("https://tenure.example/requests/{}", r.id)),
        "{}",
        approval.text()
    );
    assert!(approval.data.contains("text/html"));
    h.activation()
        .approve_request(h.req(
            "kenneth",
            act::ApproveRequestRequest {
                id: r.id.clone(),
                justification: "ok for month end".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let activated = smtp.wait_for("lisa@example.test", "activated").await;
    assert!(
        activated.text().contains("Billing Administrator"),
        "{}",
        activated.data
    );

    // The four audit entries of the field report, and a CSV with them.
    let entries = wait_audit(&h, audit_filter(&r.id), 4).await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    for a in [
        "RequestCreated",
        "ApprovalRequested",
        "RequestApproved",
        "RequestProvisioned",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let approved = entries
        .iter()
        .find(|e| e.action == "RequestApproved")
        .unwrap();
    assert_eq!(approved.actor.as_ref().unwrap().id, "kenneth");
    assert_eq!(approved.target_principal.as_ref().unwrap().id, "ferry");
    assert_eq!(approved.role.as_ref().unwrap().id, BILLING);
    assert_eq!(approved.request_id, r.id);
    assert_eq!(approved.result(), pb::AuditResult::Success);
    let csv = export_csv(&h, audit_filter(&r.id)).await;
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(
        lines[0].starts_with("sequence,occurred_at,recorded_at,actor_id,"),
        "{}",
        lines[0]
    );
    assert_eq!(lines.len(), 1 + entries.len(), "{csv}");
    assert!(csv.contains(",RequestApproved,") && csv.contains(&r.id));
    // "my audit": Ferry sees his own entries without a reading role.
    let mine = h
        .audit()
        .query_audit(h.req(
            "ferry",
            pb::QueryAuditRequest {
                filter: Some(pb::AuditFilter {
                    mine_only: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|e| e.actor.as_ref().unwrap().id == "ferry"
        || e.target_principal.as_ref().is_some_and(|t| t.id == "ferry")));

    // Four activations within an hour raise "activated too frequently".
    h.alerts()
        .update_alert_settings(h.req(
            ADMIN,
            pb::UpdateAlertSettingsRequest {
                settings: Some(pb::AlertSettings {
                    kind: pb::AlertKind::RolesActivatedTooFrequently.into(),
                    thresholds: Some(pb::alert_settings::Thresholds::ActivatedTooFrequently(
                        pb::ActivatedTooFrequentlyThresholds {
                            activation_count: 4,
                            window: Some(prost_types::Duration {
                                seconds: 3600,
                                nanos: 0,
                            }),
                        },
                    )),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["thresholds".into()],
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let mut alerts = h
        .alerts()
        .subscribe_alerts(h.req(
            ADMIN,
            pb::SubscribeAlertsRequest {
                after_sequence: 0,
                kinds: vec![pb::AlertKind::RolesActivatedTooFrequently.into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    set_activation(&h, BILLING, no_approval()).await;
    let mut last = r.id.clone();
    for i in 0..3 {
        h.clock.advance(TimeDelta::minutes(10));
        deactivate(&h, "ferry", &last).await;
        let next = activate(&h, "ferry").await;
        assert_eq!(
            next.status(),
            act::RequestStatus::Provisioned,
            "activation {i}: {}",
            next.status_reason
        );
        last = next.id;
    }
    let raised = tokio::time::timeout(Duration::from_secs(10), alerts.next())
        .await
        .expect("an alert on the stream")
        .unwrap()
        .unwrap();
    assert_eq!(raised.change(), pb::AlertChange::Raised);
    let alert = raised.alert.unwrap();
    assert_eq!(alert.kind(), pb::AlertKind::RolesActivatedTooFrequently);
    assert_eq!(alert.severity(), pb::AlertSeverity::Medium);
    assert_eq!(alert.incidents.len(), 1);
    assert_eq!(alert.incidents[0].principal.as_ref().unwrap().id, "ferry");
    assert_eq!(alert.incidents[0].request_ids.len(), 4);
    // and by webhook, signed
    let call = hooks
        .wait_for("NOTIFICATION_EVENT_KIND_ALERT_RAISED", &alert.id)
        .await;
    assert!(call.signature_ok);
    assert_eq!(call.webhook_id, hook.webhook.as_ref().unwrap().id);
    assert_eq!(call.body["referenceId"], alert.id);
    assert!(hooks.received().iter().all(|c| c.signature_ok));

    // Dismissing: a reason is required, then it is dismissed, then it is no longer active.
    assert_status(
        h.alerts()
            .dismiss_alert(h.req(
                ADMIN,
                pb::DismissAlertRequest {
                    id: alert.id.clone(),
                    reason: " ".into(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "reason",
    );
    let dismissed = h
        .alerts()
        .dismiss_alert(h.req(
            ADMIN,
            pb::DismissAlertRequest {
                id: alert.id.clone(),
                reason: "Ferry closes the month".into(),
                request_id: "dismiss-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert_eq!(dismissed.status(), pb::AlertStatus::Dismissed);
    assert_eq!(dismissed.dismissed_by, ADMIN);
    let again = h
        .alerts()
        .dismiss_alert(h.req(
            ADMIN,
            pb::DismissAlertRequest {
                id: alert.id.clone(),
                reason: "x".into(),
                request_id: "dismiss-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.alert.unwrap().status(),
        pb::AlertStatus::Dismissed,
        "a retry replays"
    );
    assert_status(
        h.alerts()
            .dismiss_alert(h.req(
                ADMIN,
                pb::DismissAlertRequest {
                    id: alert.id.clone(),
                    reason: "x".into(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "not active",
    );
    let change = tokio::time::timeout(Duration::from_secs(10), alerts.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(change.change(), pb::AlertChange::Dismissed);
    // A rescan does not raise the dismissed incident again.
    let rescan = h
        .alerts()
        .rescan_alerts(h.req(
            ADMIN,
            pb::RescanAlertsRequest {
                kinds: vec![pb::AlertKind::RolesActivatedTooFrequently.into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rescan.raised_count, 0);

    // The chain verifies.
    let v = h
        .audit()
        .verify_audit_chain(h.req(ADMIN, pb::VerifyAuditChainRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid, "{v:?}");

    // A restart loses and duplicates nothing: every source event is in the trail
    // once, and no e-mail or webhook call is sent twice.
    let before = all_audit(&h).await;
    // Let the delivery outbox drain first (deliveries still in flight would otherwise
    // arrive after the restart and look like resends): both receivers quiet for 300 ms.
    let mut quiet = 0;
    let mut last_counts = (usize::MAX, usize::MAX);
    for _ in 0..200 {
        let counts = (smtp.received().len(), hooks.received().len());
        quiet = if counts == last_counts { quiet + 1 } else { 0 };
        last_counts = counts;
        if quiet >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mails_before = smtp.received().len();
    let hooks_before = hooks.received().len();
    h.restart().await;
    deactivate(&h, "ferry", &last).await;
    let after = loop {
        let a = all_audit(&h).await;
        if a.iter()
            .any(|e| e.action == "RoleDeactivated" && e.request_id == last)
        {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "nothing lost or rewritten"
    );
    let mut keys: Vec<(String, i64)> = after
        .iter()
        .map(|e| (e.source_context.clone(), e.source_sequence))
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "no source event twice");
    for ctx in ["assignments", "activation"] {
        let mut seqs: Vec<i64> = after
            .iter()
            .filter(|e| e.source_context == ctx)
            .map(|e| e.source_sequence)
            .collect();
        seqs.sort_unstable();
        let expected: Vec<i64> = (1..=*seqs.last().unwrap()).collect();
        assert_eq!(seqs, expected, "every {ctx} event is in the trail");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.received().len(), mails_before, "no e-mail sent again");
    assert_eq!(
        hooks.received().len(),
        hooks_before,
        "no webhook call sent again"
    );
    let v = h
        .audit()
        .verify_audit_chain(h.req(ADMIN, pb::VerifyAuditChainRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid, "{v:?}");
    // The delivery log shows the e-mails as delivered.
    let deliveries = h
        .notifications()
        .list_deliveries(h.req(
            ADMIN,
            pb::ListDeliveriesRequest {
                channel: pb::Channel::Email.into(),
                recipient: "kenneth@example.test".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert!(
        deliveries
            .iter()
            .any(|d| d.status() == pb::DeliveryStatus::Delivered),
        "{deliveries:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let (h, _smtp, _hooks) = start().await;
    h.seed_users(&["ferry"]).await;
    let update = |kind: i32, t: Option<pb::alert_settings::Thresholds>, paths: Vec<&str>| {
        pb::UpdateAlertSettingsRequest {
            settings: Some(pb::AlertSettings {
                kind,
                thresholds: t,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.into_iter().map(String::from).collect(),
            }),
            request_id: String::new(),
        }
    };
    let freq = |n, secs| {
        Some(pb::alert_settings::Thresholds::ActivatedTooFrequently(
            pb::ActivatedTooFrequentlyThresholds {
                activation_count: n,
                window: Some(prost_types::Duration {
                    seconds: secs,
                    nanos: 0,
                }),
            },
        ))
    };
    let k = pb::AlertKind::RolesActivatedTooFrequently as i32;
    for (req, field) in [
        (
            update(k, freq(1, 3600), vec!["thresholds"]),
            "settings.activated_too_frequently.activation_count",
        ),
        (
            update(k, freq(4, 10), vec!["thresholds"]),
            "settings.activated_too_frequently.window",
        ),
        (update(99, None, vec!["enabled"]), "settings.kind"),
        (update(0, None, vec!["enabled"]), "settings.kind"),
        (update(k, None, vec!["colour"]), "update_mask.paths[0]"),
        (
            update(
                pb::AlertKind::PotentialStaleAccounts as i32,
                freq(4, 3600),
                vec!["thresholds"],
            ),
            "settings.thresholds",
        ),
        (
            update(
                pb::AlertKind::PotentialStaleAccounts as i32,
                Some(pb::alert_settings::Thresholds::StaleAccounts(
                    pb::StaleAccountsThresholds {
                        days_without_sign_in: 0,
                    },
                )),
                vec!["thresholds"],
            ),
            "settings.stale_accounts.days_without_sign_in",
        ),
    ] {
        assert_status(
            h.alerts().update_alert_settings(h.req(ADMIN, req)).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        h.alerts()
            .rescan_alerts(h.req(ADMIN, pb::RescanAlertsRequest { kinds: vec![42] }))
            .await,
        Code::InvalidArgument,
        "kinds[0]",
    );
    assert_status(
        h.alerts()
            .subscribe_alerts(h.req(
                ADMIN,
                pb::SubscribeAlertsRequest {
                    after_sequence: -1,
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "after_sequence",
    );
    for (url, field) in [
        ("http://hooks.example/x", "webhook.url"),
        ("not a url", "webhook.url"),
        ("ftp://x.example/", "webhook.url"),
    ] {
        assert_status(
            h.notifications()
                .create_webhook(h.req(
                    ADMIN,
                    pb::CreateWebhookRequest {
                        webhook: Some(pb::Webhook {
                            url: url.into(),
                            ..Default::default()
                        }),
                        request_id: String::new(),
                    },
                ))
                .await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        h.notifications()
            .create_webhook(h.req(
                ADMIN,
                pb::CreateWebhookRequest {
                    webhook: Some(pb::Webhook {
                        url: "https://hooks.example/x".into(),
                        secret: "short".into(),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "webhook.secret",
    );
    let settings =
        |s: pb::NotificationSettings, path: &str| pb::UpdateNotificationSettingsRequest {
            settings: Some(s),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![path.into()],
            }),
            request_id: String::new(),
        };
    for (req, field) in [
        (
            settings(
                pb::NotificationSettings {
                    administrators: Some(pb::AdministratorsDefinition {
                        email_addresses: vec!["not-an-address".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "administrators",
            ),
            "settings.administrators.email_addresses[0]",
        ),
        (
            settings(
                pb::NotificationSettings {
                    alert_routing: Some(pb::AlertRouting {
                        email_addresses: vec!["soc@".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "alert_routing",
            ),
            "settings.alert_routing.email_addresses[0]",
        ),
        (
            settings(
                pb::NotificationSettings {
                    email: Some(pb::EmailSettings {
                        link_base_url: "tenure.example".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "email",
            ),
            "settings.email.link_base_url",
        ),
        (
            settings(
                pb::NotificationSettings {
                    expiry_reminders: Some(pb::ExpiryReminderSettings {
                        enabled: true,
                        before_end: vec![prost_types::Duration {
                            seconds: 60,
                            nanos: 0,
                        }],
                    }),
                    ..Default::default()
                },
                "expiry_reminders",
            ),
            "settings.expiry_reminders.before_end[0]",
        ),
        (
            settings(pb::NotificationSettings::default(), "smtp"),
            "update_mask.paths[0]",
        ),
    ] {
        assert_status(
            h.notifications()
                .update_notification_settings(h.req(ADMIN, req))
                .await,
            Code::InvalidArgument,
            field,
        );
    }
    let span = pb::AuditFilter {
        start_time: Some(prost_types::Timestamp {
            seconds: 2_000_000_000,
            nanos: 0,
        }),
        end_time: Some(prost_types::Timestamp {
            seconds: 1_900_000_000,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert_status(
        h.audit()
            .query_audit(h.req(
                ADMIN,
                pb::QueryAuditRequest {
                    filter: Some(span.clone()),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "filter.end_time",
    );
    assert_status(
        h.audit()
            .export_audit(h.req(
                ADMIN,
                pb::ExportAuditRequest {
                    filter: Some(span.clone()),
                },
            ))
            .await,
        Code::InvalidArgument,
        "filter.end_time",
    );
    assert_status(
        h.notifications()
            .list_deliveries(h.req(
                ADMIN,
                pb::ListDeliveriesRequest {
                    start_time: span.start_time,
                    end_time: span.end_time,
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "end_time",
    );
    assert_status(
        h.audit()
            .verify_audit_chain(h.req(
                ADMIN,
                pb::VerifyAuditChainRequest {
                    from_sequence: 10,
                    to_sequence: 5,
                },
            ))
            .await,
        Code::InvalidArgument,
        "to_sequence",
    );
    assert_status(
        h.audit()
            .update_audit_retention(h.req(
                ADMIN,
                pb::UpdateAuditRetentionRequest {
                    retention: Some(pb::AuditRetention {
                        keep_for: Some(prost_types::Duration {
                            seconds: 86400,
                            nanos: 0,
                        }),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "retention.keep_for",
    );
    // Who may: Ferry has no reading role.
    assert_status(
        h.audit()
            .query_audit(h.req("ferry", pb::QueryAuditRequest::default()))
            .await,
        Code::PermissionDenied,
        "tenure/read",
    );
    assert_status(
        h.alerts()
            .list_alerts(h.req("ferry", pb::ListAlertsRequest::default()))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        h.alerts()
            .update_alert_settings(h.req("ferry", update(k, freq(4, 3600), vec!["thresholds"])))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        h.alerts()
            .get_alert(h.req(ADMIN, pb::GetAlertRequest { id: "nope".into() }))
            .await,
        Code::NotFound,
        "",
    );
    h.stop().await;
}
