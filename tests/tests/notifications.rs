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
    // A retention past any real one (here the largest a Duration holds) is refused: it
    // once reached the pruning timer and overflowed its arithmetic.
    for seconds in [i64::MAX, 315_576_000_000] {
        assert_status(
            h.audit()
                .update_audit_retention(h.req(
                    ADMIN,
                    pb::UpdateAuditRetentionRequest {
                        retention: Some(pb::AuditRetention {
                            keep_for: Some(prost_types::Duration { seconds, nanos: 0 }),
                            ..Default::default()
                        }),
                        request_id: String::new(),
                    },
                ))
                .await,
            Code::InvalidArgument,
            "retention.keep_for",
        );
    }
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

/// Creates an eligible assignment of `role` to `who` at "/" ending at `end`.
async fn assign_until(
    h: &Harness,
    who: &str,
    role: &str,
    end: chrono::DateTime<chrono::Utc>,
) -> asg::Assignment {
    h.assignments()
        .create_assignment(h.req_mfa(
            ADMIN,
            asg::CreateAssignmentRequest {
                assignment_type: AssignmentType::Eligible.into(),
                principal_id: who.into(),
                role_id: role.into(),
                scope_id: "/".into(),
                schedule: Some(asg::ScheduleInput {
                    start_time: None,
                    expiration: Some(asg::schedule_input::Expiration::EndTime(
                        tenure_platform::clock::to_proto(end),
                    )),
                }),
                justification: "test".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap()
}

fn mails_about(smtp: &SmtpSink, to: &str, needle: &str) -> usize {
    smtp.received()
        .iter()
        .filter(|m| m.to.iter().any(|t| t == to) && m.subject().contains(needle))
        .count()
}

async fn get_notification(
    h: &Harness,
    who: &str,
    id: &str,
) -> Result<pb::Notification, tonic::Status> {
    h.notifications()
        .get_notification(h.req(who, pb::GetNotificationRequest { id: id.into() }))
        .await
        .map(|r| r.into_inner().notification.unwrap())
}

async fn deliveries(h: &Harness, r: pb::ListDeliveriesRequest) -> Vec<pb::Delivery> {
    h.notifications()
        .list_deliveries(h.req(ADMIN, r))
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

/// Expiry reminders go out 14 days and 1 day before an eligible assignment ends, to
/// the holder and the administrators, each exactly once, also across a restart; the
/// 1-day one is critical.
#[tokio::test]
async fn expiry_reminders_14_days_and_1_day_before_the_end_once_each_across_a_restart() {
    let (mut h, smtp, _hooks) = start().await;
    h.seed_users(&["ferry", "lisa"]).await;
    h.assign(AssignmentType::Eligible, "lisa", PRA, "/").await;
    let end = t0() + TimeDelta::days(30);
    let a = assign_until(&h, "ferry", BILLING, end).await;
    // The notifications context has taken the assignment in when its e-mail went out.
    smtp.wait_for("ferry@example.test", "is eligible for").await;

    h.clock.set(end - TimeDelta::days(14));
    for to in ["ferry@example.test", "lisa@example.test"] {
        let m = smtp.wait_for(to, "eligible assignment of").await;
        assert!(m.text().contains("Billing Administrator"), "{}", m.text());
        assert!(m.text().contains("2030-01-31 00:00 UTC"), "{}", m.text());
    }
    let first = deliveries(
        &h,
        pb::ListDeliveriesRequest {
            recipient: "ferry@example.test".into(),
            event_kinds: vec![tenure_proto::common::v1::NotificationEventKind::ExpiringSoon.into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.len(), 1);
    let n = get_notification(&h, ADMIN, &first[0].notification_id)
        .await
        .unwrap();
    assert!(!n.critical, "the 14-day reminder is not critical");
    assert_eq!(n.reference_id, a.id);

    // A restart in between sends nothing again.
    h.restart().await;
    h.clock.set(end - TimeDelta::days(14) + TimeDelta::hours(1));
    h.clock.set(end - TimeDelta::days(1));
    for to in ["ferry@example.test", "lisa@example.test"] {
        for _ in 0..1000 {
            if mails_about(&smtp, to, "eligible assignment of") >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            mails_about(&smtp, to, "eligible assignment of"),
            2,
            "to {to}: {:?}",
            smtp.received()
                .iter()
                .map(|m| (m.to.clone(), m.subject()))
                .collect::<Vec<_>>()
        );
    }
    let both = deliveries(
        &h,
        pb::ListDeliveriesRequest {
            recipient: "ferry@example.test".into(),
            event_kinds: vec![tenure_proto::common::v1::NotificationEventKind::ExpiringSoon.into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(both.len(), 2);
    let last = get_notification(&h, ADMIN, &both[0].notification_id)
        .await
        .unwrap();
    assert!(last.critical, "the 1-day reminder is critical");
    // After the end, nothing more.
    h.clock.set(end + TimeDelta::days(1));
    h.restart().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mails_about(&smtp, "ferry@example.test", "eligible assignment of"),
        2
    );
    h.stop().await;
}

async fn alerts_of(h: &Harness, kind: pb::AlertKind) -> Vec<pb::Alert> {
    h.alerts()
        .list_alerts(h.req(
            ADMIN,
            pb::ListAlertsRequest {
                kinds: vec![kind.into()],
                statuses: vec![
                    pb::AlertStatus::Active.into(),
                    pb::AlertStatus::Resolved.into(),
                    pb::AlertStatus::Dismissed.into(),
                ],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .alerts
}

async fn wait_alert(h: &Harness, kind: pb::AlertKind, status: pb::AlertStatus) -> pb::Alert {
    for _ in 0..1000 {
        if let Some(a) = alerts_of(h, kind)
            .await
            .into_iter()
            .find(|a| a.status() == status)
        {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no {status:?} alert of {kind:?}: {:?}",
        alerts_of(h, kind).await
    );
}

/// Ferry, eligible Global Administrator at `/`.
async fn eligible_ferry(h: &Harness) {
    h.seed_users(&["ferry"]).await;
    h.assign(
        AssignmentType::Eligible,
        "ferry",
        "global-administrator",
        "/",
    )
    .await;
}

/// The identity provider's sync reports Ferry's last sign-in at `at`.
async fn ferry_signs_in(h: &Harness, at: chrono::DateTime<chrono::Utc>) {
    h.principals()
        .upsert_principals(h.req(
            ADMIN,
            asg::UpsertPrincipalsRequest {
                principals: vec![asg::Principal {
                    id: "ferry".into(),
                    r#type: PrincipalType::User.into(),
                    display_name: "Ferry".into(),
                    user_principal_name: "ferry@example.test".into(),
                    last_sign_in_time: Some(tenure_platform::clock::to_proto(at)),
                    ..Default::default()
                }],
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
}

/// Nothing happens but time: the rescan timer raises "potential stale accounts" once
/// Ferry has not signed in for 30 days; his next sign-in clears it and the alert
/// resolves itself.
#[tokio::test]
async fn the_rescan_timer_raises_an_alert_as_time_passes_and_a_cleared_condition_resolves_it() {
    let (h, _smtp, _hooks) = start().await;
    eligible_ferry(&h).await;
    ferry_signs_in(&h, t0()).await;
    // A day later nothing is stale.
    h.clock.set(t0() + TimeDelta::days(1));
    let stale = pb::AlertKind::PotentialStaleAccounts;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        alerts_of(&h, stale)
            .await
            .iter()
            .all(|a| a.status() != pb::AlertStatus::Active)
    );
    // 31 days without a sign-in, and no event at all: the timer's rescan raises it.
    h.clock.set(t0() + TimeDelta::days(31));
    let raised = wait_alert(&h, stale, pb::AlertStatus::Active).await;
    assert_eq!(raised.incident_count, 1);
    let incidents = h
        .alerts()
        .list_alert_incidents(h.req(
            ADMIN,
            pb::ListAlertIncidentsRequest {
                alert_id: raised.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert_eq!(incidents[0].principal.as_ref().unwrap().id, "ferry");
    // Ferry signs in: the condition clears and the alert resolves itself.
    ferry_signs_in(&h, t0() + TimeDelta::days(31)).await;
    let resolved = wait_alert(&h, stale, pb::AlertStatus::Resolved).await;
    assert_eq!(resolved.id, raised.id);
    h.stop().await;
}

/// Evaluations of one alert kind at once (rescans called together, beside the rescan
/// timer) raise one alert, not one each: each reads "no active alert" and raises
/// unless evaluations are serialized, which on PostgreSQL takes a lock of its own.
#[tokio::test]
async fn concurrent_evaluations_of_one_kind_raise_one_alert() {
    let (h, _smtp, _hooks) = start().await;
    eligible_ferry(&h).await;
    let stale = pb::AlertKind::PotentialStaleAccounts;
    // Raised once and resolved once, so the projection is known to hold Ferry's
    // sign-in at day 31 before the race below.
    ferry_signs_in(&h, t0() + TimeDelta::days(0)).await;
    h.clock.set(t0() + TimeDelta::days(31));
    wait_alert(&h, stale, pb::AlertStatus::Active).await;
    ferry_signs_in(&h, t0() + TimeDelta::days(31)).await;
    wait_alert(&h, stale, pb::AlertStatus::Resolved).await;
    // Stale again: eight rescans at once, beside the rescan timer.
    h.clock.set(t0() + TimeDelta::days(62));
    let rescans = (0..8).map(|_| {
        let mut alerts = h.alerts();
        let req = h.req(
            ADMIN,
            pb::RescanAlertsRequest {
                kinds: vec![stale.into()],
            },
        );
        async move { alerts.rescan_alerts(req).await }
    });
    let raised: i32 = futures::future::join_all(rescans)
        .await
        .into_iter()
        .map(|r| r.unwrap().into_inner().raised_count)
        .sum();
    let active: Vec<pb::Alert> = alerts_of(&h, stale)
        .await
        .into_iter()
        .filter(|a| a.status() == pb::AlertStatus::Active)
        .collect();
    assert_eq!(active.len(), 1, "one active alert of the kind: {active:?}");
    assert_eq!(active[0].incident_count, 1);
    assert!(raised <= 1, "{raised} rescans each raised it");
    h.stop().await;
}

async fn create_hook(h: &Harness, url: &str, secret: &str) -> pb::Webhook {
    h.notifications()
        .create_webhook(h.req(
            ADMIN,
            pb::CreateWebhookRequest {
                webhook: Some(pb::Webhook {
                    display_name: "SOC".into(),
                    url: url.into(),
                    secret: secret.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap()
}

/// A webhook that refuses every delivery (its receiver holds another secret) is
/// retried with a doubling backoff, capped at an hour, and after 24 hours the delivery
/// is dead with the reason; the log shows every attempt. RetryDelivery queues it again.
#[tokio::test]
async fn a_refused_webhook_is_retried_with_backoff_then_dead_with_the_reason() {
    let (h, _smtp, hooks) = start().await;
    h.seed_users(&["ferry"]).await;
    let hook = create_hook(&h, &hooks.url(), "another-secret-0123456789abcdef-0123").await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    let find = || pb::ListDeliveriesRequest {
        recipient: hook.id.clone(),
        event_kinds: vec![tenure_proto::common::v1::NotificationEventKind::EligibleAssigned.into()],
        ..Default::default()
    };
    let mut d = None;
    for _ in 0..1000 {
        if let Some(x) = deliveries(&h, find()).await.into_iter().next()
            && x.attempts >= 1
        {
            d = Some(x);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut d = d.expect("a first attempt");
    assert_eq!(d.status(), pb::DeliveryStatus::Retrying);
    assert!(d.last_error.starts_with("HTTP 401"), "{}", d.last_error);
    let created = tenure_platform::clock::from_proto(d.create_time.as_ref().unwrap()).unwrap();
    let mut gaps = Vec::new();
    let mut last_attempt = created;
    while d.status() == pb::DeliveryStatus::Retrying {
        let next =
            tenure_platform::clock::from_proto(d.next_attempt_time.as_ref().unwrap()).unwrap();
        gaps.push((next - last_attempt).num_seconds());
        last_attempt = next;
        let attempts = d.attempts;
        h.clock.set(next);
        let mut moved = None;
        for _ in 0..1000 {
            let x = deliveries(&h, find()).await.remove(0);
            if x.attempts > attempts {
                moved = Some(x);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        d = moved.expect("the next attempt");
        assert!(d.attempts < 60, "gives up in the end");
    }
    assert_eq!(d.status(), pb::DeliveryStatus::Dead);
    assert!(d.last_error.starts_with("HTTP 401"), "{}", d.last_error);
    assert_eq!(&gaps[..5], &[1, 2, 4, 8, 16], "doubling from one second");
    assert!(
        gaps.iter().all(|g| *g <= 3600),
        "at most an hour apart: {gaps:?}"
    );
    assert!(
        last_attempt - created <= TimeDelta::hours(24)
            && last_attempt - created > TimeDelta::hours(23),
        "retried for up to 24 hours"
    );
    // Every attempt reached the receiver.
    let calls = hooks
        .received()
        .iter()
        .filter(|c| c.notification_id == d.notification_id)
        .count();
    assert_eq!(i32::try_from(calls).unwrap(), d.attempts);
    // Dead in the log; a NotificationFailed event says why.
    let dead = deliveries(
        &h,
        pb::ListDeliveriesRequest {
            statuses: vec![pb::DeliveryStatus::Dead.into()],
            ..Default::default()
        },
    )
    .await;
    assert!(dead.iter().any(|x| x.id == d.id));
    let events = h
        .contexts
        .notifications
        .as_ref()
        .unwrap()
        .log
        .read_after(0, 10_000)
        .await
        .unwrap();
    assert!(events.iter().any(|e| matches!(
        &e.payload,
        Some(pb::event::Payload::NotificationFailed(f)) if f.delivery.as_ref().is_some_and(|x| x.id == d.id && x.last_error.starts_with("HTTP 401"))
    )));
    // Queued again by hand: PENDING with its attempts kept.
    let again = h
        .notifications()
        .retry_delivery(h.req(
            ADMIN,
            pb::RetryDeliveryRequest {
                id: d.id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(again.status(), pb::DeliveryStatus::Pending);
    h.stop().await;
}

/// An SMTP server that accepts connections and never answers holds up neither the
/// webhooks nor later notifications; when it is gone the e-mail is retried, and once
/// an SMTP server answers on that address again the e-mail is delivered: nothing lost.
#[tokio::test]
async fn a_hanging_or_down_smtp_server_never_blocks_webhooks_and_loses_nothing() {
    // An SMTP server that hangs: it accepts and keeps the sockets, saying nothing.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hang.local_addr().unwrap();
    let hanging = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let hooks = WebhookSink::start(SECRET).await;
    let h = Harness::start_with(|c| {
        c.notifications.smtp.host = Some("127.0.0.1".into());
        c.notifications.smtp.port = addr.port();
        c.notifications.smtp.tls = "none".into();
        c.notifications.smtp.timeout_secs = 300;
    })
    .await;
    h.seed_users(&["ferry", "gus"]).await;
    create_hook(&h, &hooks.url(), SECRET).await;
    let f = h
        .assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    hooks
        .wait_for("NOTIFICATION_EVENT_KIND_ELIGIBLE_ASSIGNED", &f.id)
        .await;
    // A later notification's webhook is not held up behind the hanging e-mail either.
    let g = h
        .assign(AssignmentType::Eligible, "gus", BILLING, "/")
        .await;
    hooks
        .wait_for("NOTIFICATION_EVENT_KIND_ELIGIBLE_ASSIGNED", &g.id)
        .await;
    let mail = || pb::ListDeliveriesRequest {
        recipient: "ferry@example.test".into(),
        ..Default::default()
    };
    let pending = deliveries(&h, mail()).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].status(), pb::DeliveryStatus::Pending);

    // The SMTP server goes away: the attempt fails and is retried later.
    hanging.abort();
    let _ = hanging.await;
    let mut failed = None;
    for _ in 0..1000 {
        let x = deliveries(&h, mail()).await.remove(0);
        if x.status() == pb::DeliveryStatus::Retrying {
            failed = Some(x);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failed = failed.expect("the e-mail attempt fails once the server is gone");
    assert!(
        failed.last_error.starts_with("smtp"),
        "{}",
        failed.last_error
    );

    // An SMTP server answers on that address again: the e-mail is delivered.
    let smtp = SmtpSink::start_at(addr).await;
    let next =
        tenure_platform::clock::from_proto(failed.next_attempt_time.as_ref().unwrap()).unwrap();
    h.clock.set(next);
    smtp.wait_for("ferry@example.test", "is eligible for").await;
    smtp.wait_for("gus@example.test", "is eligible for").await;
    // The outcome is recorded just after the SMTP server accepted the message.
    let mut done = deliveries(&h, mail()).await.remove(0);
    for _ in 0..1000 {
        if done.status() == pb::DeliveryStatus::Delivered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        done = deliveries(&h, mail()).await.remove(0);
    }
    assert_eq!(done.status(), pb::DeliveryStatus::Delivered);
    assert!(done.attempts >= 2);
    h.stop().await;
}

fn rule(
    e: tenure_proto::common::v1::NotificationEventKind,
    r: tenure_proto::common::v1::NotificationRecipientKind,
) -> tenure_proto::common::v1::NotificationRule {
    tenure_proto::common::v1::NotificationRule {
        event_kind: e.into(),
        recipient_kind: r.into(),
        ..Default::default()
    }
}

async fn put_rules(
    h: &Harness,
    role: &str,
    scope: &str,
    rules: Vec<tenure_proto::common::v1::NotificationRule>,
) -> Result<pb::NotificationRuleSet, tonic::Status> {
    h.notifications()
        .update_notification_rule_set(h.req(
            ADMIN,
            pb::UpdateNotificationRuleSetRequest {
                rule_set: Some(pb::NotificationRuleSet {
                    role_id: role.into(),
                    scope_id: scope.into(),
                    rules,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().rule_set.unwrap())
}

async fn get_rules(
    h: &Harness,
    role: &str,
    scope: &str,
) -> Result<pb::NotificationRuleSet, tonic::Status> {
    h.notifications()
        .get_notification_rule_set(h.req(
            ADMIN,
            pb::GetNotificationRuleSetRequest {
                role_id: role.into(),
                scope_id: scope.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().rule_set.unwrap())
}

async fn effective(
    h: &Harness,
    role: &str,
    scope: &str,
) -> Result<Vec<pb::EffectiveNotificationRule>, tonic::Status> {
    h.notifications()
        .get_effective_notification_rules(h.req(
            ADMIN,
            pb::GetEffectiveNotificationRulesRequest {
                role_id: role.into(),
                scope_id: scope.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().rules)
}

/// The organisation defaults and a role's override: written, read, listed, merged in
/// the rules in effect (with where each value came from), obeyed when an expiry
/// reminder goes out, and deleted; unknown roles, scopes and principals are NOT_FOUND,
/// in the rule sets and in the settings.
#[tokio::test]
async fn rule_sets_defaults_and_overrides_are_obeyed_and_unknown_ids_are_not_found() {
    use tenure_proto::common::v1::{
        ExtraRecipients, NotificationEventKind as E, NotificationRecipientKind as R, SettingOrigin,
    };
    let (h, smtp, _hooks) = start().await;
    h.seed_users(&["ferry", "lisa"]).await;
    h.assign(AssignmentType::Eligible, "lisa", PRA, "/").await;

    // The defaults start empty; administrators are no longer told of expiries.
    let empty = get_rules(&h, "", "").await.unwrap();
    assert!(empty.rules.is_empty());
    assert_eq!(empty.etag, "0");
    let mut off = rule(E::ExpiringSoon, R::Administrators);
    off.enabled = Some(false);
    assert_status(
        put_rules(&h, "", "", vec![off.clone()]).await,
        Code::InvalidArgument,
        "rules[0]",
    );
    off.critical_only = Some(false);
    off.default_recipients_enabled = Some(true);
    off.extra_recipients = Some(ExtraRecipients::default());
    let defaults = put_rules(&h, "", "", vec![off]).await.unwrap();
    assert_eq!(defaults.etag, "1");
    assert_eq!(get_rules(&h, "", "").await.unwrap().rules.len(), 1);
    // Billing Administrator's holders' expiries also go to the finance mailbox.
    let mut finance = rule(E::ExpiringSoon, R::Assignee);
    finance.extra_recipients = Some(ExtraRecipients {
        email_addresses: vec!["finance@example.test".into()],
        principal_ids: vec![],
    });
    put_rules(&h, BILLING, "", vec![finance.clone()])
        .await
        .unwrap();
    let listed = h
        .notifications()
        .list_notification_rule_sets(h.req(ADMIN, pb::ListNotificationRuleSetsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .rule_sets;
    assert_eq!(listed.len(), 1, "only overrides are listed");
    assert_eq!(listed[0].role_id, BILLING);

    // The rules in effect, with their origin.
    let eff = effective(&h, BILLING, "").await.unwrap();
    let find = |e: E, r: R| {
        eff.iter()
            .find(|x| {
                let x = x.rule.as_ref().unwrap();
                x.event_kind == e as i32 && x.recipient_kind == r as i32
            })
            .unwrap()
            .clone()
    };
    let admins = find(E::ExpiringSoon, R::Administrators);
    assert_eq!(admins.rule.as_ref().unwrap().enabled, Some(false));
    assert_eq!(admins.origin(), SettingOrigin::OrganisationDefault);
    let assignee = find(E::ExpiringSoon, R::Assignee);
    assert_eq!(assignee.origin(), SettingOrigin::Role);
    assert_eq!(
        assignee
            .rule
            .as_ref()
            .unwrap()
            .extra_recipients
            .as_ref()
            .unwrap()
            .email_addresses,
        vec!["finance@example.test".to_owned()]
    );
    assert!(find(E::Activated, R::Approvers).from_role_settings);
    assert_eq!(
        find(E::ReviewStarted, R::Reviewers).origin(),
        SettingOrigin::BuiltIn
    );

    // Obeyed: Ferry and the finance mailbox are reminded; Lisa, an administrator, not.
    let end = t0() + TimeDelta::days(20);
    assign_until(&h, "ferry", BILLING, end).await;
    smtp.wait_for("ferry@example.test", "is eligible for").await;
    h.clock.set(end - TimeDelta::days(14));
    smtp.wait_for("ferry@example.test", "eligible assignment of")
        .await;
    smtp.wait_for("finance@example.test", "eligible assignment of")
        .await;
    let to_lisa = deliveries(
        &h,
        pb::ListDeliveriesRequest {
            recipient: "lisa@example.test".into(),
            event_kinds: vec![E::ExpiringSoon.into()],
            ..Default::default()
        },
    )
    .await;
    assert!(to_lisa.is_empty(), "{to_lisa:?}");

    // Unknown ids: NOT_FOUND naming them.
    assert_status(
        put_rules(&h, "no-such-role", "", vec![finance.clone()]).await,
        Code::NotFound,
        "no-such-role",
    );
    assert_status(
        put_rules(&h, BILLING, "/no/such/scope", vec![finance.clone()]).await,
        Code::NotFound,
        "/no/such/scope",
    );
    let mut ghost = finance.clone();
    ghost.extra_recipients = Some(ExtraRecipients {
        email_addresses: vec![],
        principal_ids: vec!["ghost".into()],
    });
    assert_status(
        put_rules(&h, BILLING, "", vec![ghost]).await,
        Code::NotFound,
        "ghost",
    );
    assert_status(
        get_rules(&h, "no-such-role", "").await,
        Code::NotFound,
        "no-such-role",
    );
    assert_status(
        effective(&h, "no-such-role", "").await,
        Code::NotFound,
        "no-such-role",
    );
    assert_status(
        effective(&h, BILLING, "/nowhere").await,
        Code::NotFound,
        "/nowhere",
    );
    // A pair owned by the role settings, and one that makes no sense.
    assert_status(
        put_rules(&h, BILLING, "", vec![rule(E::Activated, R::Administrators)]).await,
        Code::InvalidArgument,
        "rules[0]",
    );
    assert_status(
        put_rules(&h, BILLING, "", vec![rule(E::AlertRaised, R::Reviewers)]).await,
        Code::InvalidArgument,
        "rules[0]",
    );
    let settings = |a: pb::AdministratorsDefinition| pb::UpdateNotificationSettingsRequest {
        settings: Some(pb::NotificationSettings {
            administrators: Some(a),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["administrators".into()],
        }),
        request_id: String::new(),
    };
    for (a, name) in [
        (
            pb::AdministratorsDefinition {
                role_ids: vec!["no-such-role".into()],
                ..Default::default()
            },
            "no-such-role",
        ),
        (
            pb::AdministratorsDefinition {
                role_ids: vec![PRA.into()],
                resource_role_ids: vec!["no-such-resource-role".into()],
                ..Default::default()
            },
            "no-such-resource-role",
        ),
        (
            pb::AdministratorsDefinition {
                role_ids: vec![PRA.into()],
                principal_ids: vec!["ghost".into()],
                ..Default::default()
            },
            "ghost",
        ),
    ] {
        assert_status(
            h.notifications()
                .update_notification_settings(h.req(ADMIN, settings(a)))
                .await,
            Code::NotFound,
            name,
        );
    }
    // Known ones are taken, and an explicit principal is an administrator.
    h.notifications()
        .update_notification_settings(h.req(
            ADMIN,
            settings(pb::AdministratorsDefinition {
                role_ids: vec![PRA.into()],
                principal_ids: vec!["ferry".into()],
                ..Default::default()
            }),
        ))
        .await
        .unwrap();
    let admins = h
        .notifications()
        .resolve_administrators(h.req(ADMIN, pb::ResolveAdministratorsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .administrators;
    assert!(
        admins
            .iter()
            .any(|a| a.email_address == "ferry@example.test"
                && a.reason == "listed in principal_ids"),
        "{admins:?}"
    );

    // The override is deleted; the defaults cannot be.
    h.notifications()
        .delete_notification_rule_set(h.req(
            ADMIN,
            pb::DeleteNotificationRuleSetRequest {
                role_id: BILLING.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(get_rules(&h, BILLING, "").await.unwrap().rules.is_empty());
    assert_status(
        h.notifications()
            .delete_notification_rule_set(
                h.req(ADMIN, pb::DeleteNotificationRuleSetRequest::default()),
            )
            .await,
        Code::InvalidArgument,
        "role_id",
    );
    h.stop().await;
}

/// GetNotification shows a notification with its deliveries to readers and its
/// recipients; SubscribeNotifications replays, filters, follows live, and resumes
/// after the last sequence received.
#[tokio::test]
async fn get_notification_and_subscribe_notifications_with_resume() {
    use tenure_proto::common::v1::NotificationEventKind as E;
    let (h, _smtp, _hooks) = start().await;
    h.seed_users(&["ferry", "gus", "dave"]).await;
    let f = h
        .assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    let g = h
        .assign(AssignmentType::Eligible, "gus", BILLING, "/")
        .await;
    let subscribe = |after: i64| {
        let h = &h;
        async move {
            h.notifications()
                .subscribe_notifications(h.req(
                    ADMIN,
                    pb::SubscribeNotificationsRequest {
                        after_sequence: after,
                        event_kinds: vec![E::EligibleAssigned.into()],
                        critical_only: false,
                    },
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let mut s = subscribe(0).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let n1 = first.notification.clone().unwrap();
    let n2 = second.notification.clone().unwrap();
    assert_eq!(n1.reference_id, f.id);
    assert_eq!(n2.reference_id, g.id);
    assert!(second.sequence > first.sequence);
    // Live: a third one arrives on the open stream.
    let d = h
        .assign(AssignmentType::Eligible, "dave", BILLING, "/")
        .await;
    let third = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(third.notification.as_ref().unwrap().reference_id, d.id);
    drop(s);
    // Resumed after the first: the second comes first, nothing before it.
    let mut resumed = subscribe(first.sequence).await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(again.sequence, second.sequence);
    assert_eq!(again.notification.unwrap().id, n2.id);
    // Critical only: an eligible assignment is not critical, so nothing of these.
    let mut critical = h
        .notifications()
        .subscribe_notifications(h.req(
            ADMIN,
            pb::SubscribeNotificationsRequest {
                after_sequence: 0,
                event_kinds: vec![E::EligibleAssigned.into()],
                critical_only: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), critical.next())
            .await
            .is_err(),
        "no critical eligible-assigned notification"
    );
    // Bad input and who may.
    let bad = h
        .notifications()
        .subscribe_notifications(h.req(
            ADMIN,
            pb::SubscribeNotificationsRequest {
                after_sequence: 0,
                event_kinds: vec![99],
                critical_only: false,
            },
        ))
        .await;
    assert_status(bad, Code::InvalidArgument, "event_kinds");
    let denied = h
        .notifications()
        .subscribe_notifications(h.req("ferry", pb::SubscribeNotificationsRequest::default()))
        .await;
    assert_status(denied, Code::PermissionDenied, "");

    // GetNotification: the reader sees it with its deliveries (e-mail to Ferry, the
    // stream); Ferry, a recipient, may read it; Gus may not; unknown ids are NOT_FOUND.
    let full = get_notification(&h, ADMIN, &n1.id).await.unwrap();
    assert_eq!(full.event_kind(), E::EligibleAssigned);
    assert!(
        full.deliveries
            .iter()
            .any(|x| x.channel() == pb::Channel::Email && x.recipient == "ferry@example.test")
    );
    assert!(
        full.deliveries
            .iter()
            .any(|x| x.channel() == pb::Channel::Stream)
    );
    assert_eq!(
        get_notification(&h, "ferry", &n1.id).await.unwrap().id,
        n1.id
    );
    assert_status(
        get_notification(&h, "gus", &n1.id).await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        get_notification(&h, ADMIN, "no-such-notification").await,
        Code::NotFound,
        "no-such-notification",
    );
    h.stop().await;
}

async fn oldest(h: &Harness) -> i64 {
    h.audit()
        .get_audit_retention(h.req(ADMIN, pb::GetAuditRetentionRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .oldest_sequence
}

/// Entries older than the retention are pruned by the timer as time passes, not only
/// when the retention is changed; the chain still verifies from the anchor.
#[tokio::test]
async fn audit_entries_older_than_the_retention_are_pruned_on_a_timer() {
    // No mail: a delivery in flight when the clock jumps would commit its event with
    // the first day's time after the prune.
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    let old = wait_audit(
        &h,
        pb::AuditFilter {
            target_principal_id: "ferry".into(),
            ..Default::default()
        },
        1,
    )
    .await;
    let before = oldest(&h).await;
    assert!(before > 0);
    h.audit()
        .update_audit_retention(h.req(
            ADMIN,
            pb::UpdateAuditRetentionRequest {
                retention: Some(pb::AuditRetention {
                    keep_for: Some(prost_types::Duration {
                        seconds: 30 * 86400,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(oldest(&h).await, before, "nothing is old yet");
    // Every stream's consumer, this context's own included, has audited everything so
    // far, so every first-day entry exists before the clock moves and the timer prunes.
    h.wait_notifications_caught_up().await;
    assert!(
        all_audit(&h)
            .await
            .iter()
            .any(|e| e.action == "AuditRetentionChanged"),
        "the retention change is audited"
    );

    // 31 days on, with no change to the retention: the timer prunes.
    h.clock.set(t0() + TimeDelta::days(31));
    let mut after = before;
    for _ in 0..1000 {
        after = oldest(&h).await;
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        after > old.iter().map(|e| e.sequence).max().unwrap(),
        "{after}"
    );
    // Everything that happened on the first day is gone.
    let left = audit_of(
        &h,
        pb::AuditFilter {
            end_time: Some(tenure_platform::clock::to_proto(t0() + TimeDelta::days(1))),
            ..Default::default()
        },
    )
    .await;
    assert!(left.is_empty(), "{left:?}");
    // The pruning is itself audited (by this context's own consumer, just after).
    let mut audited = false;
    for _ in 0..1000 {
        if all_audit(&h)
            .await
            .iter()
            .any(|e| e.action == "AuditEntriesPruned")
        {
            audited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(audited, "the pruning is itself audited");
    let v = h
        .audit()
        .verify_audit_chain(h.req(ADMIN, pb::VerifyAuditChainRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid, "{v:?}");
    h.stop().await;
}

/// An activation re-evaluates "activated too frequently" for its own principal and
/// role only: Ferry's incident clears when he activates again later, Gus's stands
/// until something about Gus, or the rescan, looks at it; then the alert resolves.
#[tokio::test]
async fn an_activation_reevaluates_only_its_own_principal_and_role() {
    // The periodic rescan is a month away: only events and explicit rescans evaluate.
    let h = Harness::start_with(|c| c.notifications.alert_rescan_interval_secs = 30 * 86400).await;
    // The first full scan after start is over (it would look at everything).
    h.contexts
        .notifications
        .as_ref()
        .unwrap()
        .engine
        .first_scan_done
        .subscribe()
        .wait_for(|done| *done)
        .await
        .unwrap();
    h.seed_users(&["ferry", "gus"]).await;
    for p in ["ferry", "gus"] {
        h.assign(AssignmentType::Eligible, p, BILLING, "/").await;
    }
    set_activation(&h, BILLING, no_approval()).await;
    let kind = pb::AlertKind::RolesActivatedTooFrequently;
    h.alerts()
        .update_alert_settings(h.req(
            ADMIN,
            pb::UpdateAlertSettingsRequest {
                settings: Some(pb::AlertSettings {
                    kind: kind.into(),
                    thresholds: Some(pb::alert_settings::Thresholds::ActivatedTooFrequently(
                        pb::ActivatedTooFrequentlyThresholds {
                            activation_count: 2,
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
    let mut last = std::collections::HashMap::new();
    for p in ["ferry", "gus"] {
        let first = activate(&h, p).await;
        h.clock.advance(TimeDelta::minutes(5));
        deactivate(&h, p, &first.id).await;
        last.insert(p, activate(&h, p).await.id);
    }
    let incidents_of = |a: &pb::Alert| {
        let mut v: Vec<String> = a
            .incidents
            .iter()
            .map(|i| i.principal.as_ref().unwrap().id.clone())
            .collect();
        v.sort();
        v
    };
    let mut alert = None;
    for _ in 0..1000 {
        if let Some(a) = alerts_of(&h, kind)
            .await
            .into_iter()
            .find(|a| a.status() == pb::AlertStatus::Active && a.incident_count == 2)
        {
            alert = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let alert = alert.expect("both too frequent");
    let get = |id: String| {
        let h = &h;
        async move {
            h.alerts()
                .get_alert(h.req(ADMIN, pb::GetAlertRequest { id }))
                .await
                .unwrap()
                .into_inner()
                .alert
                .unwrap()
        }
    };
    assert_eq!(
        incidents_of(&get(alert.id.clone()).await),
        vec!["ferry", "gus"]
    );

    // An hour on, Ferry activates once: his incident clears; Gus's, whose first
    // activation has left the window too, is not looked at.
    h.clock.advance(TimeDelta::minutes(55));
    deactivate(&h, "ferry", &last["ferry"]).await;
    activate(&h, "ferry").await;
    let mut now = get(alert.id.clone()).await;
    for _ in 0..1000 {
        if now.incident_count == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        now = get(alert.id.clone()).await;
    }
    assert_eq!(now.status(), pb::AlertStatus::Active);
    assert_eq!(incidents_of(&now), vec!["gus"]);
    // The rescan looks at everything: Gus's activations are out of the window too.
    h.contexts
        .notifications
        .as_ref()
        .unwrap()
        .engine
        .rescan(&[kind])
        .await
        .unwrap();
    let resolved = wait_alert(&h, kind, pb::AlertStatus::Resolved).await;
    assert_eq!(resolved.id, alert.id);
    h.stop().await;
}

/// Writes one activation row and its `InstanceActivated` per `(principal, request id)`
/// to the assignments context in one commit, as that context records activations: the
/// notifications context sees exactly what it would see after real activations,
/// without the cost of hundreds of ActivateRoles calls in a debug build.
async fn seed_activations(h: &Harness, who: &[(String, String)]) {
    let core = h.core();
    let mut uow = core.begin().await.unwrap();
    let now = uow.now();
    for (p, request) in who {
        // The row with its event, as the assignments context writes them (a restart
        // loads its model from the rows).
        tenure_assignments::store::insert_activation(
            &mut uow,
            &tenure_assignments::store::ActivationRow {
                id: format!("instance-{request}"),
                request_id: request.clone(),
                eligibility_id: String::new(),
                principal_id: p.clone(),
                role_id: BILLING.into(),
                scope_id: "/".into(),
                start_at: tenure_platform::clock::to_micros(now),
                end_at: tenure_platform::clock::to_micros(now + TimeDelta::days(30)),
                ended_at: None,
                end_reason: 0,
                justification: String::new(),
                ticket_number: String::new(),
                ticket_system: String::new(),
                created_at: tenure_platform::clock::to_micros(now),
            },
        )
        .await
        .unwrap();
        let instance = asg::Instance {
            id: format!("instance-{request}"),
            assignment_type: AssignmentType::Active.into(),
            origin: tenure_proto::common::v1::InstanceOrigin::Activated.into(),
            request_id: request.clone(),
            principal: Some(user(p)),
            role: Some(tenure_proto::common::v1::RoleRef {
                id: BILLING.into(),
                display_name: "Billing Administrator".into(),
            }),
            scope: Some(tenure_proto::common::v1::ScopeRef {
                id: "/".into(),
                ..Default::default()
            }),
            start_time: Some(tenure_platform::clock::to_proto(now)),
            // Far beyond the test's clock, so the expiry timer has nothing to do.
            end_time: Some(tenure_platform::clock::to_proto(now + TimeDelta::days(30))),
            status: asg::InstanceStatus::InEffect.into(),
            ..Default::default()
        };
        uow.emit(tenure_platform::events::NewEvent::new(
            asg::InstanceActivated {
                instance: Some(instance),
                ..Default::default()
            },
            p.clone(),
            format!("instance-{request}"),
        ));
    }
    core.commit(uow).await.unwrap();
}

/// The incidents a run of alert changes leaves standing, by id: the raise's, then
/// each update's added, changed and removed incidents applied in order.
#[derive(Default)]
struct Followed(std::collections::BTreeMap<String, pb::AlertIncident>);

impl Followed {
    fn raise(&mut self, a: &pb::Alert) {
        self.0 = a
            .incidents
            .iter()
            .map(|i| (i.id.clone(), i.clone()))
            .collect();
    }
    fn apply(
        &mut self,
        added: &[pb::AlertIncident],
        changed: &[pb::AlertIncident],
        removed: &[String],
    ) {
        for i in added {
            assert!(
                self.0.insert(i.id.clone(), i.clone()).is_none(),
                "added twice: {i:?}"
            );
        }
        for i in changed {
            assert!(
                self.0.insert(i.id.clone(), i.clone()).is_some(),
                "changed before added: {i:?}"
            );
        }
        for id in removed {
            assert!(self.0.remove(id).is_some(), "removed before added: {id}");
        }
    }
    /// What a finding is, without `last_seen_time` (which moves without an event).
    fn findings(&self) -> Vec<(String, String, String, Vec<String>)> {
        self.0.values().map(finding).collect()
    }
}

fn finding(i: &pb::AlertIncident) -> (String, String, String, Vec<String>) {
    (
        i.id.clone(),
        i.principal
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_default(),
        i.detail.clone(),
        i.request_ids.clone(),
    )
}

/// Reads alert changes from the stream and follows them until `done` says so;
/// `counts` adds up the (added, changed, removed) incidents of the updates.
async fn follow(
    stream: &mut tonic::Streaming<pb::SubscribeAlertsResponse>,
    done: impl Fn(&Followed, &(usize, usize, usize)) -> bool,
    from: &mut Followed,
    counts: &mut (usize, usize, usize),
    alert_id: &mut String,
) {
    while !done(from, counts) {
        let m = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("an alert change on the stream")
            .unwrap()
            .unwrap();
        let a = m.alert.as_ref().unwrap();
        match m.change() {
            pb::AlertChange::Raised => {
                from.raise(a);
                alert_id.clone_from(&a.id);
            }
            pb::AlertChange::Updated => {
                assert!(a.incidents.is_empty(), "an update carries no incidents");
                assert_eq!(&a.id, alert_id);
                from.apply(
                    &m.added_incidents,
                    &m.changed_incidents,
                    &m.removed_incident_ids,
                );
                counts.0 += m.added_incidents.len();
                counts.1 += m.changed_incidents.len();
                counts.2 += m.removed_incident_ids.len();
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            usize::try_from(a.incident_count).unwrap(),
            from.0.len(),
            "the summary counts the incidents the deltas give"
        );
    }
}

/// "Activated too frequently" with many principals changes often. 200 principals
/// activate twice within the hour (200 incidents: the raise carries at most 100, the
/// updates the rest), 20 of them a third time (their incidents change), and 10 once
/// more two hours on (theirs clear). Activations are evaluated per consumer batch, so
/// how many changes that takes depends on the batches. Each `AlertUpdated` carries at
/// most 100 items and the alert's summary, never all its incidents, so its size stays
/// bounded however many incidents the alert has; the
/// raise plus the deltas, read from the event log and from SubscribeAlerts alike, give
/// exactly the incidents ListAlertIncidents and GetAlert return.
#[tokio::test]
async fn a_busy_alert_logs_each_change_as_a_bounded_delta_that_rebuilds_its_incidents() {
    // Only events evaluate (no periodic rescan during the test).
    let h = Harness::start_with(|c| c.notifications.alert_rescan_interval_secs = 30 * 86400).await;
    let engine = h.contexts.notifications.as_ref().unwrap().engine.clone();
    engine
        .first_scan_done
        .subscribe()
        .wait_for(|done| *done)
        .await
        .unwrap();
    let kind = pb::AlertKind::RolesActivatedTooFrequently;
    h.alerts()
        .update_alert_settings(h.req(
            ADMIN,
            pb::UpdateAlertSettingsRequest {
                settings: Some(pb::AlertSettings {
                    kind: kind.into(),
                    thresholds: Some(pb::alert_settings::Thresholds::ActivatedTooFrequently(
                        pb::ActivatedTooFrequentlyThresholds {
                            activation_count: 2,
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
    let people: Vec<String> = (0..200).map(|i| format!("p{i:03}")).collect();
    let refs: Vec<&str> = people.iter().map(String::as_str).collect();
    h.seed_users(&refs).await;
    let mut stream = h
        .alerts()
        .subscribe_alerts(h.req(
            ADMIN,
            pb::SubscribeAlertsRequest {
                after_sequence: 0,
                kinds: vec![kind.into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let round = |n: usize, who: &[String]| -> Vec<(String, String)> {
        who.iter()
            .map(|p| (p.clone(), format!("{p}-r{n}")))
            .collect()
    };
    let mut from_stream = Followed::default();
    let mut counts = (0, 0, 0);
    let mut alert_id = String::new();
    // Everyone activates once (nothing yet), then again a minute later: the first
    // raises the alert, each of the 199 others adds its incident.
    seed_activations(&h, &round(1, &people)).await;
    h.clock.advance(TimeDelta::minutes(1));
    seed_activations(&h, &round(2, &people)).await;
    follow(
        &mut stream,
        |f, _| f.0.len() == 200,
        &mut from_stream,
        &mut counts,
        &mut alert_id,
    )
    .await;
    // 20 activate a third time: their incidents change (three activations now).
    h.clock.advance(TimeDelta::minutes(1));
    seed_activations(&h, &round(3, &people[..20])).await;
    follow(
        &mut stream,
        |_, c| c.1 == 20,
        &mut from_stream,
        &mut counts,
        &mut alert_id,
    )
    .await;
    // Two hours on, 10 others activate once: alone in the window, theirs clear.
    h.clock.advance(TimeDelta::hours(2));
    seed_activations(&h, &round(4, &people[20..30])).await;
    follow(
        &mut stream,
        |_, c| c.2 == 10,
        &mut from_stream,
        &mut counts,
        &mut alert_id,
    )
    .await;
    // The raise carried the first incidents, the updates the rest; 20 changed and 10
    // went, with nothing more on the stream than that.
    assert_eq!(
        (counts.1, counts.2),
        (20, 10),
        "(changed, removed) on the stream"
    );
    assert_eq!(from_stream.0.len(), 190);

    // What the alert says now: every standing incident, paged.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let r = h
            .alerts()
            .list_alert_incidents(h.req(
                ADMIN,
                pb::ListAlertIncidentsRequest {
                    alert_id: alert_id.clone(),
                    page_size: 1000,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        listed.extend(r.incidents);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(listed.len(), 190);
    let mut standing: Vec<_> = listed.iter().map(finding).collect();
    standing.sort();
    assert_eq!(from_stream.findings(), standing, "the stream's deltas");
    let changed_one = listed
        .iter()
        .find(|i| i.principal.as_ref().unwrap().id == "p005")
        .unwrap();
    assert_eq!(changed_one.request_ids.len(), 3, "{changed_one:?}");
    assert!(
        !listed
            .iter()
            .any(|i| i.principal.as_ref().unwrap().id == "p025"),
        "a cleared incident no longer stands"
    );

    // The event log: one raise and updates, each bounded: at most 100 items, and
    // beside its items a summary that does not grow with the alert.
    let events = engine.log.read_after(0, 100_000).await.unwrap();
    let mut from_log = Followed::default();
    let mut overheads = Vec::new();
    let mut raises = 0;
    for e in &events {
        use pb::event::Payload as P;
        match &e.payload {
            Some(P::AlertRaised(x)) if x.alert.as_ref().unwrap().id == alert_id => {
                raises += 1;
                let a = x.alert.as_ref().unwrap();
                assert!(a.incidents.len() <= 100, "{}", a.incidents.len());
                from_log.raise(a);
            }
            Some(P::AlertUpdated(x)) if x.alert.as_ref().unwrap().id == alert_id => {
                let a = x.alert.as_ref().unwrap();
                assert!(a.incidents.is_empty(), "an update carries no incidents");
                assert!(!a.title.is_empty(), "it carries the summary");
                let items = x.added_incidents.len()
                    + x.changed_incidents.len()
                    + x.removed_incident_ids.len();
                assert!((1..=100).contains(&items), "{items} items in one update");
                let carried: usize = x
                    .added_incidents
                    .iter()
                    .chain(&x.changed_incidents)
                    .map(prost::Message::encoded_len)
                    .sum::<usize>()
                    + x.removed_incident_ids
                        .iter()
                        .map(String::len)
                        .sum::<usize>();
                overheads.push(prost::Message::encoded_len(e) - carried);
                from_log.apply(
                    &x.added_incidents,
                    &x.changed_incidents,
                    &x.removed_incident_ids,
                );
            }
            _ => {}
        }
    }
    assert_eq!(raises, 1);
    assert!(!overheads.is_empty());
    assert_eq!(from_log.findings(), standing, "the log's deltas");
    let (small, large) = (
        *overheads.iter().min().unwrap(),
        *overheads.iter().max().unwrap(),
    );
    let all: usize = listed.iter().map(prost::Message::encoded_len).sum();
    eprintln!(
        "{} AlertUpdated, {small}..{large} bytes beside their items; the standing incidents {all} bytes",
        overheads.len()
    );
    // Before, each update carried the first 100 incidents (~24 KB here, ~130 KB with
    // 100 activations each); now its own items and the summary.
    assert!(large <= 4096, "largest AlertUpdated summary {large} bytes");
    assert!(
        large - small <= 4 * 100 + 512,
        "updates do not grow with the alert: {small}..{large} bytes"
    );

    // GetAlert: the same count, and its first incidents as the deltas left them.
    let got = h
        .alerts()
        .get_alert(h.req(
            ADMIN,
            pb::GetAlertRequest {
                id: alert_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert_eq!(got.incident_count, 190);
    assert_eq!(got.incidents.len(), 100);
    for i in &got.incidents {
        assert_eq!(
            from_log.0.get(&i.id).map(finding),
            Some(finding(i)),
            "GetAlert's incident {} as the deltas left it",
            i.id
        );
    }
    h.stop().await;
}
