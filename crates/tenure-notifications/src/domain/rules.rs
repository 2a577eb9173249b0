//! Who is told of what, free of transport and storage: the merge of notification
//! rules (the nine pairs owned by the assignments context's role settings, and this
//! context's rule sets for the others), the checks of addresses and webhook URLs, the
//! webhook signature, and reminder offsets.

use chrono::TimeDelta;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tenure_proto::common::v1 as common;

use common::NotificationEventKind as E;
use common::NotificationRecipientKind as R;

/// A rule with every field decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Effective {
    /// Notify these recipients at all.
    pub enabled: bool,
    /// Only critical notifications.
    pub critical_only: bool,
    /// The recipient kind's default recipients are told.
    pub default_recipients: bool,
    /// Extra addresses.
    pub extra_emails: Vec<String>,
    /// Extra principals.
    pub extra_principals: Vec<String>,
    /// The most specific layer that set any field (0 = built-in).
    pub origin_layer: usize,
}

/// Whether the pair is configured in the assignments context's role settings.
pub fn owned_by_role_settings(e: E, r: R) -> bool {
    matches!(e, E::EligibleAssigned | E::ActiveAssigned | E::Activated)
        && matches!(r, R::Administrators | R::Assignee | R::Approvers)
}

/// The recipient kinds that mean something for an event kind.
pub fn recipient_kinds(e: E) -> &'static [R] {
    match e {
        E::ReviewStarted | E::ReviewReminder | E::ReviewCompleted => {
            &[R::Administrators, R::Reviewers]
        }
        E::AlertRaised => &[R::Administrators],
        E::Unspecified => &[],
        _ => &[R::Administrators, R::Assignee, R::Approvers],
    }
}

/// Every meaningful event kind.
pub const EVENT_KINDS: [E; 11] = [
    E::EligibleAssigned,
    E::ActiveAssigned,
    E::Activated,
    E::ApprovalNeeded,
    E::RequestApproved,
    E::RequestDenied,
    E::ExpiringSoon,
    E::ReviewStarted,
    E::ReviewReminder,
    E::ReviewCompleted,
    E::AlertRaised,
];

/// Merges the rule layers for one pair, most specific first; fields unset in a layer
/// are taken from the next, and the built-in default (enabled, not critical only,
/// default recipients on, no extras) ends the chain.
pub fn effective(e: E, r: R, layers: &[&[common::NotificationRule]]) -> Effective {
    let mut enabled = None;
    let mut critical = None;
    let mut defaults = None;
    let mut extras: Option<common::ExtraRecipients> = None;
    let mut origin = 0;
    let n = layers.len();
    for (i, layer) in layers.iter().enumerate() {
        let Some(rule) = layer
            .iter()
            .find(|x| x.event_kind == e as i32 && x.recipient_kind == r as i32)
        else {
            continue;
        };
        let before = (enabled, critical, defaults, extras.is_some());
        enabled = enabled.or(rule.enabled);
        critical = critical.or(rule.critical_only);
        defaults = defaults.or(rule.default_recipients_enabled);
        if extras.is_none() {
            extras.clone_from(&rule.extra_recipients);
        }
        if origin == 0 && before != (enabled, critical, defaults, extras.is_some()) {
            origin = n - i;
        }
    }
    let extras = extras.unwrap_or_default();
    Effective {
        enabled: enabled.unwrap_or(true),
        critical_only: critical.unwrap_or(false),
        default_recipients: defaults.unwrap_or(true),
        extra_emails: extras.email_addresses,
        extra_principals: extras.principal_ids,
        origin_layer: origin,
    }
}

/// Whether `s` looks like an RFC 5322 addr-spec (local@domain, no spaces or angle
/// brackets, a dotted domain of letters, digits and hyphens).
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let domain_ok = domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    local_ok && domain_ok
}

/// Checks a webhook endpoint: an absolute https URL with a host, or http to a loopback
/// host (127.0.0.0/8, ::1, localhost). Returns why not.
pub fn check_webhook_url(s: &str) -> Result<(), &'static str> {
    let url = reqwest::Url::parse(s).map_err(|_| "must be an absolute URL")?;
    let host = url.host_str().ok_or("must name a host")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials");
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err("must be https (http is accepted only for loopback hosts)")
            }
        }
        _ => Err("must be an https URL"),
    }
}

/// Checks a link base URL (http or https, absolute).
pub fn check_link_base(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Ok(());
    }
    let url = reqwest::Url::parse(s).map_err(|_| "must be an absolute URL")?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http or https URL with a host");
    }
    Ok(())
}

/// The `Tenure-Signature` header value: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
/// "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", sign(secret, t, body))
}

/// The hex HMAC-SHA256 of `"<t>.<body>"` under `secret`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The default reminder offsets: 14 days and 1 day before the end.
pub fn default_reminders() -> Vec<prost_types::Duration> {
    vec![
        prost_types::Duration {
            seconds: 14 * 86400,
            nanos: 0,
        },
        prost_types::Duration {
            seconds: 86400,
            nanos: 0,
        },
    ]
}

/// Checks reminder offsets: at most 5, each 1 hour to 90 days, no duplicates.
pub fn check_reminders(
    offsets: &[prost_types::Duration],
    field: &str,
    v: &mut tenure_platform::error::Violations,
) {
    v.check(offsets.len() > 5, field, "at most 5 reminder offsets");
    let mut seen = std::collections::HashSet::new();
    for (i, d) in offsets.iter().enumerate() {
        let ok = (3600..=90 * 86400).contains(&d.seconds) && d.nanos == 0;
        v.check(!ok, format!("{field}[{i}]"), "must be 1 hour to 90 days");
        v.check(
            !seen.insert(d.seconds),
            format!("{field}[{i}]"),
            "is duplicated",
        );
    }
}

/// A reminder offset as a time delta.
pub fn offset(d: &prost_types::Duration) -> TimeDelta {
    TimeDelta::seconds(d.seconds)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rule(e: E, r: R, enabled: Option<bool>, critical: Option<bool>) -> common::NotificationRule {
        common::NotificationRule {
            event_kind: e.into(),
            recipient_kind: r.into(),
            enabled,
            critical_only: critical,
            default_recipients_enabled: None,
            extra_recipients: None,
        }
    }

    #[test]
    fn unset_fields_inherit_down_to_the_built_in_default() {
        let role = [rule(E::Activated, R::Administrators, None, Some(true))];
        let defaults = [rule(
            E::Activated,
            R::Administrators,
            Some(false),
            Some(false),
        )];
        let got = effective(E::Activated, R::Administrators, &[&role, &defaults]);
        assert!(!got.enabled, "from the defaults");
        assert!(got.critical_only, "from the role");
        assert!(got.default_recipients, "built-in");
        assert_eq!(got.origin_layer, 2);
        let none = effective(E::Activated, R::Assignee, &[&role, &defaults]);
        assert_eq!(
            none,
            Effective {
                enabled: true,
                default_recipients: true,
                ..Effective::default()
            }
        );
    }

    #[test]
    fn nine_pairs_belong_to_role_settings() {
        let n = EVENT_KINDS
            .iter()
            .flat_map(|e| recipient_kinds(*e).iter().map(move |r| (*e, *r)))
            .filter(|(e, r)| owned_by_role_settings(*e, *r))
            .count();
        assert_eq!(n, 9);
    }

    #[test]
    fn addresses_and_urls() {
        assert!(valid_email("ferry@contoso.example"));
        for bad in [
            "ferry", "@x.y", "a@b", "a b@c.d", "a@-b.c", "<a@b.c>", "a..b@c.d",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
        assert!(check_webhook_url("https://hooks.example/x").is_ok());
        assert!(check_webhook_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_webhook_url("http://[::1]:8080/x").is_ok());
        assert!(check_webhook_url("http://hooks.example/x").is_err());
        assert!(check_webhook_url("ftp://hooks.example/x").is_err());
        assert!(check_webhook_url("not a url").is_err());
        assert!(check_webhook_url("https://u:p@hooks.example/").is_err());
    }

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // RFC 4231 style check against a second computation
        let s = signature("k", 1, b"{}");
        assert_eq!(s, format!("t=1,v1={}", sign("k", 1, b"{}")));
        assert_ne!(sign("k", 1, b"{}"), sign("k", 2, b"{}"));
        assert_eq!(sign("k", 1, b"{}").len(), 64);
    }

    #[test]
    fn reminder_offsets() {
        let mut v = tenure_platform::error::Violations::new();
        check_reminders(&default_reminders(), "x", &mut v);
        assert!(v.is_empty());
        let d = |s| prost_types::Duration {
            seconds: s,
            nanos: 0,
        };
        let mut v = tenure_platform::error::Violations::new();
        check_reminders(&[d(60), d(7200), d(7200)], "x", &mut v);
        let e = format!("{:?}", v.finish().unwrap_err());
        assert!(e.contains("x[0]") && e.contains("x[2]"), "{e}");
    }
}
