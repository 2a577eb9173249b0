//! Delivering notifications: the e-mail templates (plain text and HTML), the webhook
//! body (the proto3 JSON mapping of `Notification`) and signature, and the outbox
//! worker. Each due delivery is claimed with a conditional update (so racing replicas
//! send it once), sent outside any transaction with a deadline, and its outcome written
//! in a unit of work with its event. Deliveries run concurrently: a slow or failing
//! channel never holds up the others, and a failure only reschedules that delivery.

use std::time::Duration;

use chrono::TimeDelta;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message as Mail, Tokio1Executor};
use prost::Message as _;
use sqlx::Row as _;
use std::sync::Arc;
use tenure_platform::clock::{from_proto, to_micros, to_proto};
use tenure_platform::events::NewEvent;
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::common::v1 as common;
use tenure_proto::notifications::v1 as pb;

use crate::domain::rules;
use crate::engine::Engine;

/// How long a claimed delivery is held before another replica may try it.
const LEASE: TimeDelta = TimeDelta::seconds(60);
/// Retries stop this long after the delivery was queued.
const GIVE_UP_AFTER: TimeDelta = TimeDelta::hours(24);
/// The deadline of one webhook call.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(from_proto)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn lines(n: &pb::Notification) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if let Some(p) = &n.principal {
        let name = if p.display_name.is_empty() {
            &p.id
        } else {
            &p.display_name
        };
        v.push(("Principal", name.clone()));
    }
    if let Some(r) = &n.role {
        let name = if r.display_name.is_empty() {
            &r.id
        } else {
            &r.display_name
        };
        v.push(("Role", name.clone()));
    }
    if let Some(s) = &n.scope {
        let name = if s.display_name.is_empty() {
            &s.id
        } else {
            &s.display_name
        };
        v.push(("Scope", format!("{name} ({})", s.id)));
    }
    if n.start_time.is_some() {
        v.push(("Start", when(n.start_time.as_ref())));
    }
    if n.end_time.is_some() {
        v.push(("End", when(n.end_time.as_ref())));
    }
    if !n.justification.is_empty() {
        v.push(("Justification", n.justification.clone()));
    }
    if !n.reference_id.is_empty() {
        v.push(("Reference", n.reference_id.clone()));
    }
    v
}

/// The plain-text body: a summary, the facts (role, scope, principal, times,
/// justification) and the link to act.
pub fn text_body(n: &pb::Notification, summary: &str) -> String {
    let mut s = String::new();
    s.push_str(summary);
    s.push_str("\n\n");
    for (k, v) in lines(n) {
        s.push_str(&format!("{k}: {v}\n"));
    }
    if !n.action_url.is_empty() {
        s.push_str(&format!("\nOpen in Tenure: {}\n", n.action_url));
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML body (the same facts, escaped).
pub fn html_body(n: &pb::Notification) -> String {
    let summary = n.body_text.split("\n\n").next().unwrap_or_default();
    let mut s = format!(
        "<!doctype html><html><body><h2>{}</h2><p>{}</p><table>",
        esc(&n.title),
        esc(summary)
    );
    for (k, v) in lines(n) {
        s.push_str(&format!(
            "<tr><th align=\"left\">{k}</th><td>{}</td></tr>",
            esc(&v)
        ));
    }
    s.push_str("</table>");
    if !n.action_url.is_empty() {
        s.push_str(&format!(
            "<p><a href=\"{}\">Open in Tenure</a></p>",
            esc(&n.action_url)
        ));
    }
    s.push_str("</body></html>");
    s
}

fn ts_json(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    t.and_then(from_proto)
        .map(|t| serde_json::Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
        .unwrap_or(serde_json::Value::Null)
}

fn principal_json(p: Option<&common::PrincipalRef>) -> serde_json::Value {
    p.map_or(serde_json::Value::Null, |p| {
        serde_json::json!({
            "id": p.id,
            "type": p.r#type().as_str_name(),
            "displayName": p.display_name,
            "userPrincipalName": p.user_principal_name,
        })
    })
}

/// The webhook body: the proto3 JSON mapping of the notification (lowerCamelCase
/// names, enums by name, timestamps in RFC 3339, 64-bit integers as strings; unset
/// messages omitted as null).
pub fn notification_json(n: &pb::Notification) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": n.id,
        "eventKind": n.event_kind().as_str_name(),
        "critical": n.critical,
        "title": n.title,
        "bodyText": n.body_text,
        "actionUrl": n.action_url,
        "principal": principal_json(n.principal.as_ref()),
        "role": n.role.as_ref().map(|r| serde_json::json!({"id": r.id, "displayName": r.display_name})),
        "scope": n.scope.as_ref().map(|s| serde_json::json!({"id": s.id, "displayName": s.display_name, "type": s.r#type().as_str_name()})),
        "referenceId": n.reference_id,
        "justification": n.justification,
        "startTime": ts_json(n.start_time.as_ref()),
        "endTime": ts_json(n.end_time.as_ref()),
        "sourceContext": n.source_context,
        "sourceSequence": n.source_sequence.to_string(),
        "sourceEventId": n.source_event_id,
        "createTime": ts_json(n.create_time.as_ref()),
        "alertSeverity": n.alert_severity().as_str_name(),
    });
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    v
}

/// The next attempt after `attempts` failures: 1 s doubling, at most 1 h apart.
pub fn backoff(attempts: i32) -> TimeDelta {
    let exp = u32::try_from(attempts.clamp(1, 13) - 1).unwrap_or(0);
    TimeDelta::seconds((1i64 << exp).min(3600))
}

impl Engine {
    fn mailer(&self) -> ApiResult<AsyncSmtpTransport<Tokio1Executor>> {
        let smtp = &self.config.smtp;
        let host = smtp
            .host
            .clone()
            .ok_or_else(|| ApiError::Unavailable("no SMTP server configured".into()))?;
        let builder = match smtp.tls.as_str() {
            "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
                .map_err(|e| ApiError::Unavailable(format!("smtp: {e}")))?,
            _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                .map_err(|e| ApiError::Unavailable(format!("smtp: {e}")))?,
        };
        let mut builder = builder
            .port(smtp.port)
            .timeout(Some(Duration::from_secs(smtp.timeout_secs)));
        if let (Some(u), Some(p)) = (&smtp.username, &self.smtp_password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(builder.build())
    }

    async fn send_email(&self, n: &pb::Notification, to: &str) -> Result<(), String> {
        let settings = self.settings().await.map_err(|e| e.to_string())?;
        let email = settings.email.unwrap_or_default();
        let from_addr = if email.from_address.is_empty() {
            self.config.smtp.from_address.clone()
        } else {
            email.from_address
        };
        let from = Mailbox::new(
            Some(email.from_name).filter(|s| !s.is_empty()),
            from_addr
                .parse()
                .map_err(|e| format!("from address: {e}"))?,
        );
        let to: Mailbox = to.parse().map_err(|e| format!("recipient address: {e}"))?;
        let mail = Mail::builder()
            .from(from)
            .to(to)
            .subject(n.title.clone())
            .message_id(Some(format!("<{}@tenure>", n.id)))
            .multipart(MultiPart::alternative_plain_html(
                n.body_text.clone(),
                html_body(n),
            ))
            .map_err(|e| format!("building the message: {e}"))?;
        let mailer = self.mailer().map_err(|e| e.to_string())?;
        mailer
            .send(mail)
            .await
            .map(|_| ())
            .map_err(|e| format!("smtp: {e}"))
    }

    async fn send_webhook(&self, n: &pb::Notification, webhook_id: &str) -> Result<(), String> {
        let row = sqlx::query("SELECT url, secret FROM notifications_webhooks WHERE id = $1")
            .bind(webhook_id)
            .fetch_optional(self.db.reader())
            .await
            .map_err(|e| format!("database: {e}"))?
            .ok_or_else(|| "webhook deleted".to_owned())?;
        let url: String = row.try_get("url").map_err(|e| e.to_string())?;
        let secret: String = row.try_get("secret").map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(&notification_json(n)).map_err(|e| e.to_string())?;
        let t = self.now().timestamp();
        let resp = self
            .http
            .post(&url)
            .timeout(WEBHOOK_TIMEOUT)
            .header("content-type", "application/json")
            .header("Tenure-Webhook-Id", webhook_id)
            .header("Tenure-Notification-Id", &n.id)
            .header("Tenure-Signature", rules::signature(&secret, t, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(200).collect();
        Err(format!("HTTP {}: {excerpt}", status.as_u16()))
    }

    /// Starts every due delivery, each claimed once and sent on its own task, so that
    /// a slow or hanging channel (an SMTP server that never answers) holds up neither
    /// the other deliveries nor the next pass. A claim is held for longer than one
    /// attempt may take, so no other pass or replica sends it meanwhile.
    pub async fn deliver_due(self: &Arc<Self>) -> ApiResult<()> {
        let now = self.now();
        let lease = LEASE.max(TimeDelta::seconds(
            i64::try_from(self.config.smtp.timeout_secs).unwrap_or(300) + 30,
        ));
        let rows = sqlx::query(
            "SELECT id, next_attempt_at, event_kind FROM notifications_deliveries \
             WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT 200",
        )
        .bind(to_micros(now))
        .fetch_all(self.db.reader())
        .await?;
        for row in rows {
            let id: String = row.try_get("id")?;
            let due: i64 = row.try_get("next_attempt_at")?;
            let kind: i64 = row.try_get("event_kind")?;
            let n = sqlx::query(
                "UPDATE notifications_deliveries SET next_attempt_at = $1 WHERE id = $2 AND next_attempt_at = $3",
            )
            .bind(to_micros(now + lease))
            .bind(&id)
            .bind(due)
            .execute(self.db.writer())
            .await?
            .rows_affected();
            if n != 1 {
                continue;
            }
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(e) = engine
                    .deliver_one(&id, i32::try_from(kind).unwrap_or(0))
                    .await
                {
                    tracing::warn!(delivery = %id, error = %e, "delivery bookkeeping failed; it will be retried");
                }
                // the outcome may have scheduled a retry: let the timer re-arm
                engine.timer_wake.notify_one();
            });
        }
        Ok(())
    }

    async fn deliver_one(&self, id: &str, kind: i32) -> ApiResult<()> {
        let row = sqlx::query("SELECT body FROM notifications_deliveries WHERE id = $1")
            .bind(id)
            .fetch_one(self.db.reader())
            .await?;
        let b: Vec<u8> = row.try_get("body")?;
        let mut d = pb::Delivery::decode(b.as_slice()).map_err(|e| ApiError::Internal(e.into()))?;
        let nb: Vec<u8> =
            sqlx::query_scalar("SELECT body FROM notifications_notifications WHERE id = $1")
                .bind(&d.notification_id)
                .fetch_one(self.db.reader())
                .await?;
        let n =
            pb::Notification::decode(nb.as_slice()).map_err(|e| ApiError::Internal(e.into()))?;
        let outcome = match pb::Channel::try_from(d.channel) {
            Ok(pb::Channel::Email) => self.send_email(&n, &d.recipient).await,
            Ok(pb::Channel::Webhook) => self.send_webhook(&n, &d.recipient).await,
            _ => Ok(()),
        };
        let now = self.now();
        d.attempts += 1;
        let mut uow = self.log.begin().await?;
        let created = d.create_time.as_ref().and_then(from_proto).unwrap_or(now);
        let event = match outcome {
            Ok(()) => {
                d.status = pb::DeliveryStatus::Delivered.into();
                d.deliver_time = Some(to_proto(now));
                d.next_attempt_time = None;
                d.last_error.clear();
                Some(pb::event::Payload::NotificationDelivered(
                    pb::NotificationDelivered {
                        notification_id: d.notification_id.clone(),
                        delivery: Some(d.clone()),
                    },
                ))
            }
            Err(reason) => {
                d.last_error = reason;
                let next = now + backoff(d.attempts);
                if d.last_error == "webhook deleted" || next - created > GIVE_UP_AFTER {
                    d.status = pb::DeliveryStatus::Dead.into();
                    d.next_attempt_time = None;
                    Some(pb::event::Payload::NotificationFailed(
                        pb::NotificationFailed {
                            notification_id: d.notification_id.clone(),
                            delivery: Some(d.clone()),
                        },
                    ))
                } else {
                    tracing::info!(delivery = %d.id, error = %d.last_error, attempts = d.attempts, "delivery failed; retrying");
                    d.status = pb::DeliveryStatus::Retrying.into();
                    d.next_attempt_time = Some(to_proto(next));
                    None
                }
            }
        };
        self.store_delivery(uow.tx(), &d, kind).await?;
        if let Some(p) = event {
            uow.emit(NewEvent::new(
                pb::Event {
                    meta: None,
                    payload: Some(p),
                },
                "system",
                d.notification_id.clone(),
            ));
        }
        uow.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bodies_name_role_scope_principal_times_justification_and_link() {
        let mut n = pb::Notification {
            title: "Tenure: Ferry <asks>".into(),
            principal: Some(common::PrincipalRef {
                id: "ferry".into(),
                display_name: "Ferry Kuhlman".into(),
                ..Default::default()
            }),
            role: Some(common::RoleRef {
                id: "billing-administrator".into(),
                display_name: "Billing Administrator".into(),
            }),
            scope: Some(common::ScopeRef {
                id: "/".into(),
                display_name: "Directory".into(),
                ..Default::default()
            }),
            justification: "month-end & invoices".into(),
            start_time: Some(prost_types::Timestamp {
                seconds: 1_893_456_000,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 1_893_484_800,
                nanos: 0,
            }),
            action_url: "https://tenure.example/requests/r1".into(),
            ..Default::default()
        };
        n.body_text = text_body(&n, "Ferry asks.");
        for needle in [
            "Ferry Kuhlman",
            "Billing Administrator",
            "Directory (/)",
            "2030-01-01 00:00 UTC",
            "2030-01-01 08:00 UTC",
            "month-end & invoices",
            "https://tenure.example/requests/r1",
        ] {
            assert!(n.body_text.contains(needle), "{needle} in {}", n.body_text);
        }
        let html = html_body(&n);
        assert!(html.contains("month-end &amp; invoices"));
        assert!(html.contains("Ferry &lt;asks&gt;"));
        let j = notification_json(&n);
        assert_eq!(j["role"]["displayName"], "Billing Administrator");
        assert_eq!(j["eventKind"], "NOTIFICATION_EVENT_KIND_UNSPECIFIED");
        assert_eq!(j["startTime"], "2030-01-01T00:00:00Z");
    }

    #[test]
    fn backoff_doubles_from_one_second_to_at_most_an_hour() {
        assert_eq!(backoff(1), TimeDelta::seconds(1));
        assert_eq!(backoff(2), TimeDelta::seconds(2));
        assert_eq!(backoff(5), TimeDelta::seconds(16));
        assert_eq!(backoff(30), TimeDelta::seconds(3600));
    }
}
