//! The rules of role settings (the policy), as pure domain code: the built-in defaults,
//! how the layers (role at scope, role, organisation default, built-in) merge into the
//! effective settings with the origin of each value, how an update mask applies to a
//! layer, and what a valid layer is. No tonic, no sqlx.
//!
//! A *layer* is a [`pb::RoleSettings`] in which an unset field means "inherited". The
//! organisation defaults and the overrides are stored as layers; the built-in defaults
//! are the layer of last resort, with every field set.

use std::collections::BTreeMap;

use prost_types::Duration;
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{
    ExtraRecipients, NotificationEventKind as Ev, NotificationRecipientKind as Rc,
    NotificationRule, SettingOrigin,
};

const MINUTE: i64 = 60;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The event kinds whose notification rules live in role settings.
pub const EVENT_KINDS: [Ev; 3] = [Ev::EligibleAssigned, Ev::ActiveAssigned, Ev::Activated];
/// The recipient kinds whose notification rules live in role settings.
pub const RECIPIENT_KINDS: [Rc; 3] = [Rc::Administrators, Rc::Assignee, Rc::Approvers];

/// At most this many approval stages.
pub const MAX_STAGES: usize = 3;
/// At most this many approvers (or escalation approvers) per stage.
pub const MAX_APPROVERS: usize = 100;
/// At most this many required approvals per stage.
pub const MAX_REQUIRED_APPROVALS: i32 = 10;
/// At most this many extra recipients (addresses, and principals) per rule.
pub const MAX_EXTRA_RECIPIENTS: usize = 100;

/// The activation fields, as mask paths below "activation".
pub const ACTIVATION_FIELDS: [&str; 8] = [
    "maximum_duration",
    "require_mfa",
    "mfa_max_age",
    "require_justification",
    "require_ticket",
    "require_approval",
    "approval",
    "require_approval_for_extension",
];
/// The assignment fields, as mask paths below "assignment".
pub const ASSIGNMENT_FIELDS: [&str; 6] = [
    "allow_permanent_eligible",
    "eligible_expire_after",
    "allow_permanent_active",
    "active_expire_after",
    "require_mfa_on_active_assignment",
    "require_justification_on_active_assignment",
];

/// A duration of whole seconds.
pub fn secs(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}

/// A protobuf duration in microseconds; `None` when it is not a proper non-negative
/// duration.
pub fn duration_micros(d: &Duration) -> Option<i64> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return None;
    }
    d.seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(d.nanos / 1000))
}

/// A protobuf duration as a chrono delta (zero when malformed).
pub fn to_delta(d: &Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::microseconds(duration_micros(d).unwrap_or(0))
}

/// The built-in defaults: every field set.
pub fn built_in() -> pb::RoleSettings {
    pb::RoleSettings {
        activation: Some(pb::ActivationSettings {
            maximum_duration: Some(secs(8 * HOUR)),
            require_mfa: Some(true),
            mfa_max_age: Some(secs(15 * MINUTE)),
            require_justification: Some(true),
            require_ticket: Some(false),
            require_approval: Some(false),
            approval: Some(built_in_approval()),
            require_approval_for_extension: Some(true),
        }),
        assignment: Some(pb::AssignmentSettings {
            allow_permanent_eligible: Some(false),
            eligible_expire_after: Some(secs(365 * DAY)),
            allow_permanent_active: Some(false),
            active_expire_after: Some(secs(180 * DAY)),
            require_mfa_on_active_assignment: Some(false),
            require_justification_on_active_assignment: Some(true),
        }),
        notification_rules: EVENT_KINDS
            .iter()
            .flat_map(|e| {
                RECIPIENT_KINDS.iter().map(|r| NotificationRule {
                    event_kind: (*e).into(),
                    recipient_kind: (*r).into(),
                    enabled: Some(true),
                    critical_only: Some(false),
                    default_recipients_enabled: Some(true),
                    extra_recipients: Some(ExtraRecipients::default()),
                })
            })
            .collect(),
        ..Default::default()
    }
}

/// The built-in approval workflow: one stage with the default approvers and one required
/// approval, 24 hours, approvers justify.
pub fn built_in_approval() -> pb::ApprovalSettings {
    pb::ApprovalSettings {
        stages: vec![pb::ApprovalStage {
            approvers: vec![],
            required_approvals: 1,
            escalation_approvers: vec![],
            escalation_after: None,
        }],
        timeout: Some(secs(24 * HOUR)),
        require_approver_justification: Some(true),
    }
}

/// An approval workflow taken as a whole, with its unset parts at the built-in defaults.
pub fn complete_approval(a: &pb::ApprovalSettings) -> pb::ApprovalSettings {
    let b = built_in_approval();
    let mut out = a.clone();
    if out.stages.is_empty() {
        out.stages = b.stages;
    }
    for s in &mut out.stages {
        if s.required_approvals == 0 {
            s.required_approvals = 1;
        }
    }
    if out.timeout.is_none() {
        out.timeout = b.timeout;
    }
    if out.require_approver_justification.is_none() {
        out.require_approver_justification = b.require_approver_justification;
    }
    out
}

/// The origins key of a notification rule.
pub fn rule_key(event: Ev, recipient: Rc) -> String {
    format!(
        "notification_rules.{}.{}",
        event.as_str_name(),
        recipient.as_str_name()
    )
}

fn rule_of(s: &pb::RoleSettings, e: Ev, r: Rc) -> Option<&NotificationRule> {
    s.notification_rules
        .iter()
        .find(|x| x.event_kind == e as i32 && x.recipient_kind == r as i32)
}

macro_rules! pick {
    ($layers:expr, $origins:expr, $key:expr, $get:expr) => {{
        let mut found = None;
        for (origin, layer) in $layers.iter() {
            if let Some(v) = $get(layer) {
                found = Some((v, *origin));
                break;
            }
        }
        found.map(|(v, origin)| {
            $origins.insert($key.to_owned(), origin);
            v
        })
    }};
}

/// Merges layers, most specific first, over the built-in defaults: the effective
/// settings (every field set) and where each value came from, keyed by field path
/// ("activation.maximum_duration", ..., "notification_rules.<EVENT>.<RECIPIENT>" and
/// its fields below it). `role_id` and `scope_id` are left empty.
pub fn merge(
    layers: &[(SettingOrigin, &pb::RoleSettings)],
) -> (pb::RoleSettings, BTreeMap<String, SettingOrigin>) {
    let built = built_in();
    let mut all: Vec<(SettingOrigin, &pb::RoleSettings)> = layers.to_vec();
    all.push((SettingOrigin::BuiltIn, &built));
    let mut o = BTreeMap::new();

    macro_rules! act {
        ($f:ident) => {
            pick!(
                all,
                o,
                concat!("activation.", stringify!($f)),
                |l: &&pb::RoleSettings| l.activation.as_ref().and_then(|a| a.$f.clone())
            )
        };
    }
    macro_rules! asg {
        ($f:ident) => {
            pick!(
                all,
                o,
                concat!("assignment.", stringify!($f)),
                |l: &&pb::RoleSettings| l.assignment.as_ref().and_then(|a| a.$f.clone())
            )
        };
    }
    let activation = pb::ActivationSettings {
        maximum_duration: act!(maximum_duration),
        require_mfa: act!(require_mfa),
        mfa_max_age: act!(mfa_max_age),
        require_justification: act!(require_justification),
        require_ticket: act!(require_ticket),
        require_approval: act!(require_approval),
        approval: act!(approval).map(|a| complete_approval(&a)),
        require_approval_for_extension: act!(require_approval_for_extension),
    };
    let assignment = pb::AssignmentSettings {
        allow_permanent_eligible: asg!(allow_permanent_eligible),
        eligible_expire_after: asg!(eligible_expire_after),
        allow_permanent_active: asg!(allow_permanent_active),
        active_expire_after: asg!(active_expire_after),
        require_mfa_on_active_assignment: asg!(require_mfa_on_active_assignment),
        require_justification_on_active_assignment: asg!(
            require_justification_on_active_assignment
        ),
    };
    let mut rules = Vec::with_capacity(9);
    for e in EVENT_KINDS {
        for r in RECIPIENT_KINDS {
            let key = rule_key(e, r);
            macro_rules! rf {
                ($f:ident) => {
                    pick!(
                        all,
                        o,
                        format!("{key}.{}", stringify!($f)),
                        |l: &&pb::RoleSettings| rule_of(l, e, r).and_then(|x| x.$f.clone())
                    )
                };
            }
            let rule = NotificationRule {
                event_kind: e.into(),
                recipient_kind: r.into(),
                enabled: rf!(enabled),
                critical_only: rf!(critical_only),
                default_recipients_enabled: rf!(default_recipients_enabled),
                extra_recipients: rf!(extra_recipients),
            };
            // The rule as a whole comes from the most specific layer that set any part.
            let most_specific = [
                "enabled",
                "critical_only",
                "default_recipients_enabled",
                "extra_recipients",
            ]
            .iter()
            .filter_map(|f| o.get(&format!("{key}.{f}")).copied())
            .max_by_key(|x| *x as i32)
            .unwrap_or(SettingOrigin::BuiltIn);
            o.insert(key, most_specific);
            rules.push(rule);
        }
    }
    (
        pb::RoleSettings {
            activation: Some(activation),
            assignment: Some(assignment),
            notification_rules: rules,
            ..Default::default()
        },
        o,
    )
}

/// Every path an update mask may name.
pub fn known_path(path: &str) -> bool {
    match path {
        "*" | "activation" | "assignment" | "notification_rules" => true,
        _ => match path.split_once('.') {
            Some(("activation", f)) => ACTIVATION_FIELDS.contains(&f),
            Some(("assignment", f)) => ASSIGNMENT_FIELDS.contains(&f),
            _ => false,
        },
    }
}

/// Checks the mask: required, known paths only.
pub fn check_mask(paths: &[String]) -> ApiResult<()> {
    if paths.is_empty() {
        return Err(ApiError::invalid(
            "update_mask",
            "is required: name the fields to change (\"*\" replaces the whole layer)",
        ));
    }
    let mut v = Violations::new();
    for (i, p) in paths.iter().enumerate() {
        v.check(
            !known_path(p),
            format!("update_mask.paths[{i}]"),
            format!("unknown field path {p:?} in update_mask"),
        );
    }
    v.finish()
}

macro_rules! copy_field {
    ($dst:expr, $src:expr, $group:ident, $f:ident) => {{
        let value = $src.$group.as_ref().and_then(|g| g.$f.clone());
        $dst.$group.get_or_insert_with(Default::default).$f = value;
    }};
}

/// Applies the masked fields of `given` to the layer `current` (an unset masked field
/// becomes inherited). The mask must have passed [`check_mask`].
pub fn apply_mask(
    current: &pb::RoleSettings,
    given: &pb::RoleSettings,
    paths: &[String],
) -> pb::RoleSettings {
    let mut out = layer_content(current);
    for p in paths {
        match p.as_str() {
            "*" => {
                out.activation = given.activation.clone();
                out.assignment = given.assignment;
                out.notification_rules = given.notification_rules.clone();
            }
            "activation" => out.activation = given.activation.clone(),
            "assignment" => out.assignment = given.assignment,
            "notification_rules" => out.notification_rules = given.notification_rules.clone(),
            "activation.maximum_duration" => copy_field!(out, given, activation, maximum_duration),
            "activation.require_mfa" => copy_field!(out, given, activation, require_mfa),
            "activation.mfa_max_age" => copy_field!(out, given, activation, mfa_max_age),
            "activation.require_justification" => {
                copy_field!(out, given, activation, require_justification);
            }
            "activation.require_ticket" => copy_field!(out, given, activation, require_ticket),
            "activation.require_approval" => copy_field!(out, given, activation, require_approval),
            "activation.approval" => copy_field!(out, given, activation, approval),
            "activation.require_approval_for_extension" => {
                copy_field!(out, given, activation, require_approval_for_extension);
            }
            "assignment.allow_permanent_eligible" => {
                copy_field!(out, given, assignment, allow_permanent_eligible);
            }
            "assignment.eligible_expire_after" => {
                copy_field!(out, given, assignment, eligible_expire_after);
            }
            "assignment.allow_permanent_active" => {
                copy_field!(out, given, assignment, allow_permanent_active);
            }
            "assignment.active_expire_after" => {
                copy_field!(out, given, assignment, active_expire_after);
            }
            "assignment.require_mfa_on_active_assignment" => {
                copy_field!(out, given, assignment, require_mfa_on_active_assignment);
            }
            "assignment.require_justification_on_active_assignment" => {
                copy_field!(
                    out,
                    given,
                    assignment,
                    require_justification_on_active_assignment
                );
            }
            _ => {}
        }
    }
    normalize(out)
}

/// Only the settings of a layer (no ids, times, etag), with empty groups dropped and
/// approver references reduced to their ids (names are filled on read).
pub fn layer_content(s: &pb::RoleSettings) -> pb::RoleSettings {
    normalize(pb::RoleSettings {
        activation: s.activation.clone(),
        assignment: s.assignment,
        notification_rules: s.notification_rules.clone(),
        ..Default::default()
    })
}

fn normalize(mut s: pb::RoleSettings) -> pb::RoleSettings {
    if s.activation
        .as_ref()
        .is_some_and(|a| *a == pb::ActivationSettings::default())
    {
        s.activation = None;
    }
    if s.assignment
        .as_ref()
        .is_some_and(|a| *a == pb::AssignmentSettings::default())
    {
        s.assignment = None;
    }
    if let Some(ap) = s.activation.as_mut().and_then(|a| a.approval.as_mut()) {
        for st in &mut ap.stages {
            for p in st
                .approvers
                .iter_mut()
                .chain(st.escalation_approvers.iter_mut())
            {
                *p = tenure_proto::common::v1::PrincipalRef {
                    id: std::mem::take(&mut p.id),
                    ..Default::default()
                };
            }
        }
    }
    s
}

/// Whether a layer sets nothing.
pub fn is_empty_layer(s: &pb::RoleSettings) -> bool {
    layer_content(s) == pb::RoleSettings::default()
}

/// A principal a layer names, with the field that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPrincipal {
    /// The field path, for example "role_settings.activation.approval.stages[0].approvers[1]".
    pub field: String,
    /// The principal id.
    pub id: String,
    /// True for approvers (users or groups only), false for extra recipients.
    pub approver: bool,
}

/// The principals a layer names (approvers, escalation approvers, extra recipients), to
/// be checked for existence by the caller.
pub fn named_principals(s: &pb::RoleSettings, prefix: &str) -> Vec<NamedPrincipal> {
    let mut out = Vec::new();
    if let Some(ap) = s.activation.as_ref().and_then(|a| a.approval.as_ref()) {
        for (i, st) in ap.stages.iter().enumerate() {
            for (j, p) in st.approvers.iter().enumerate() {
                out.push(NamedPrincipal {
                    field: format!("{prefix}.activation.approval.stages[{i}].approvers[{j}]"),
                    id: p.id.clone(),
                    approver: true,
                });
            }
            for (j, p) in st.escalation_approvers.iter().enumerate() {
                out.push(NamedPrincipal {
                    field: format!(
                        "{prefix}.activation.approval.stages[{i}].escalation_approvers[{j}]"
                    ),
                    id: p.id.clone(),
                    approver: true,
                });
            }
        }
    }
    for (i, r) in s.notification_rules.iter().enumerate() {
        if let Some(x) = &r.extra_recipients {
            for (j, id) in x.principal_ids.iter().enumerate() {
                out.push(NamedPrincipal {
                    field: format!(
                        "{prefix}.notification_rules[{i}].extra_recipients.principal_ids[{j}]"
                    ),
                    id: id.clone(),
                    approver: false,
                });
            }
        }
    }
    out
}

fn check_range(
    v: &mut Violations,
    d: Option<&Duration>,
    field: String,
    min: i64,
    max: i64,
    what: &str,
) {
    let Some(d) = d else { return };
    match duration_micros(d) {
        Some(us) if us >= min * 1_000_000 && us <= max * 1_000_000 => {}
        _ => v.add(field, format!("must be {what}")),
    }
}

/// Checks an id-like string: non-empty, at most 256 characters, no control characters.
pub fn bad_id(id: &str) -> bool {
    id.is_empty() || id.chars().count() > 256 || id.chars().any(char::is_control)
}

/// A plausible e-mail address (RFC 5322 addr-spec, the common subset).
pub fn valid_email(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

/// Checks the values of a layer (ranges, counts, shapes); `prefix` is the request field
/// that holds it ("role_settings"). Existence of named principals is checked by the
/// caller (see [`named_principals`]).
pub fn validate_layer(s: &pb::RoleSettings, prefix: &str, v: &mut Violations) {
    if let Some(a) = &s.activation {
        let f = |n: &str| format!("{prefix}.activation.{n}");
        check_range(
            v,
            a.maximum_duration.as_ref(),
            f("maximum_duration"),
            30 * MINUTE,
            24 * HOUR,
            "30 minutes to 24 hours",
        );
        check_range(
            v,
            a.mfa_max_age.as_ref(),
            f("mfa_max_age"),
            MINUTE,
            12 * HOUR,
            "1 minute to 12 hours",
        );
        if let Some(ap) = &a.approval {
            validate_approval(ap, &f("approval"), v);
        }
    }
    if let Some(a) = &s.assignment {
        let f = |n: &str| format!("{prefix}.assignment.{n}");
        check_range(
            v,
            a.eligible_expire_after.as_ref(),
            f("eligible_expire_after"),
            DAY,
            3650 * DAY,
            "1 day to 3,650 days",
        );
        check_range(
            v,
            a.active_expire_after.as_ref(),
            f("active_expire_after"),
            HOUR,
            3650 * DAY,
            "1 hour to 3,650 days",
        );
    }
    let mut seen = Vec::new();
    for (i, r) in s.notification_rules.iter().enumerate() {
        let f = |n: &str| format!("{prefix}.notification_rules[{i}].{n}");
        let ev = Ev::try_from(r.event_kind)
            .ok()
            .filter(|e| EVENT_KINDS.contains(e));
        v.check(
            ev.is_none(),
            f("event_kind"),
            "must be ELIGIBLE_ASSIGNED, ACTIVE_ASSIGNED or ACTIVATED (other event kinds are configured in the notifications context)",
        );
        let rc = Rc::try_from(r.recipient_kind)
            .ok()
            .filter(|x| RECIPIENT_KINDS.contains(x));
        v.check(
            rc.is_none(),
            f("recipient_kind"),
            "must be ADMINISTRATORS, ASSIGNEE or APPROVERS",
        );
        if ev.is_some() && rc.is_some() {
            let pair = (r.event_kind, r.recipient_kind);
            v.check(
                seen.contains(&pair),
                f("event_kind"),
                "duplicates an earlier rule for the same event and recipient kinds",
            );
            seen.push(pair);
        }
        if let Some(x) = &r.extra_recipients {
            v.check(
                x.email_addresses.len() > MAX_EXTRA_RECIPIENTS,
                f("extra_recipients.email_addresses"),
                format!("at most {MAX_EXTRA_RECIPIENTS} addresses"),
            );
            for (j, e) in x.email_addresses.iter().enumerate() {
                v.check(
                    !valid_email(e),
                    format!(
                        "{prefix}.notification_rules[{i}].extra_recipients.email_addresses[{j}]"
                    ),
                    "is not a valid e-mail address",
                );
            }
            v.check(
                x.principal_ids.len() > MAX_EXTRA_RECIPIENTS,
                f("extra_recipients.principal_ids"),
                format!("at most {MAX_EXTRA_RECIPIENTS} principals"),
            );
            for (j, id) in x.principal_ids.iter().enumerate() {
                v.check(
                    bad_id(id),
                    format!("{prefix}.notification_rules[{i}].extra_recipients.principal_ids[{j}]"),
                    "must be 1 to 256 characters without control characters",
                );
            }
        }
    }
}

fn validate_approval(ap: &pb::ApprovalSettings, prefix: &str, v: &mut Violations) {
    v.check(
        ap.stages.len() > MAX_STAGES,
        format!("{prefix}.stages"),
        format!("at most {MAX_STAGES} approval stages"),
    );
    check_range(
        v,
        ap.timeout.as_ref(),
        format!("{prefix}.timeout"),
        HOUR,
        14 * DAY,
        "1 hour to 14 days",
    );
    let timeout = ap
        .timeout
        .as_ref()
        .and_then(duration_micros)
        .unwrap_or(24 * HOUR * 1_000_000);
    for (i, st) in ap.stages.iter().enumerate() {
        let f = |n: &str| format!("{prefix}.stages[{i}].{n}");
        v.check(
            st.approvers.len() > MAX_APPROVERS,
            f("approvers"),
            format!("at most {MAX_APPROVERS} approvers"),
        );
        v.check(
            st.escalation_approvers.len() > MAX_APPROVERS,
            f("escalation_approvers"),
            format!("at most {MAX_APPROVERS} escalation approvers"),
        );
        for (list, name) in [
            (&st.approvers, "approvers"),
            (&st.escalation_approvers, "escalation_approvers"),
        ] {
            let mut ids: Vec<&str> = Vec::new();
            for (j, p) in list.iter().enumerate() {
                if bad_id(&p.id) {
                    v.add(
                        format!("{prefix}.stages[{i}].{name}[{j}].id"),
                        "must be 1 to 256 characters without control characters",
                    );
                } else if ids.contains(&p.id.as_str()) {
                    v.add(
                        format!("{prefix}.stages[{i}].{name}[{j}].id"),
                        "is named twice",
                    );
                }
                ids.push(&p.id);
            }
        }
        let required = st.required_approvals;
        if !(0..=MAX_REQUIRED_APPROVALS).contains(&required) {
            v.add(
                f("required_approvals"),
                format!("must be 1 to {MAX_REQUIRED_APPROVALS} (0 means 1)"),
            );
        } else if !st.approvers.is_empty()
            && st
                .approvers
                .iter()
                .all(|p| p.r#type != tenure_proto::common::v1::PrincipalType::Group as i32)
            && required.max(1) as usize > st.approvers.len()
        {
            // Only checkable when every approver is a single principal; the caller
            // fills `type` from the directory before validating.
            v.add(
                f("required_approvals"),
                "must not exceed the number of approvers",
            );
        }
        if !st.escalation_approvers.is_empty() {
            match st.escalation_after.as_ref() {
                None => v.add(
                    f("escalation_after"),
                    "is required when escalation_approvers are named",
                ),
                Some(d) => match duration_micros(d) {
                    Some(us) if us > 0 && us < timeout => {}
                    _ => v.add(
                        f("escalation_after"),
                        "must be positive and shorter than the approval timeout",
                    ),
                },
            }
        } else if let Some(d) = &st.escalation_after {
            v.check(
                duration_micros(d).is_none_or(|us| us <= 0 || us >= timeout),
                f("escalation_after"),
                "must be positive and shorter than the approval timeout",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_with_max(h: i64) -> pb::RoleSettings {
        pb::RoleSettings {
            activation: Some(pb::ActivationSettings {
                maximum_duration: Some(secs(h * HOUR)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn built_in_defaults_are_the_documented_ones_and_complete() {
        let (eff, origins) = merge(&[]);
        let a = eff.activation.as_ref().unwrap();
        assert_eq!(a.maximum_duration, Some(secs(8 * HOUR)));
        assert_eq!(a.require_mfa, Some(true));
        assert_eq!(a.mfa_max_age, Some(secs(15 * MINUTE)));
        assert_eq!(a.require_justification, Some(true));
        assert_eq!(a.require_ticket, Some(false));
        assert_eq!(a.require_approval, Some(false));
        assert_eq!(a.require_approval_for_extension, Some(true));
        let ap = a.approval.as_ref().unwrap();
        assert_eq!(ap.stages.len(), 1);
        assert_eq!(ap.timeout, Some(secs(24 * HOUR)));
        let s = eff.assignment.as_ref().unwrap();
        assert_eq!(s.allow_permanent_eligible, Some(false));
        assert_eq!(s.eligible_expire_after, Some(secs(365 * DAY)));
        assert_eq!(s.allow_permanent_active, Some(false));
        assert_eq!(s.active_expire_after, Some(secs(180 * DAY)));
        assert_eq!(s.require_mfa_on_active_assignment, Some(false));
        assert_eq!(s.require_justification_on_active_assignment, Some(true));
        assert_eq!(eff.notification_rules.len(), 9);
        assert!(
            eff.notification_rules
                .iter()
                .all(|r| r.enabled == Some(true)
                    && r.critical_only == Some(false)
                    && r.default_recipients_enabled == Some(true))
        );
        // 8 activation + 6 assignment + 9 rules × (1 + 4 fields)
        assert_eq!(origins.len(), 8 + 6 + 45);
        assert!(origins.values().all(|o| *o == SettingOrigin::BuiltIn));
    }

    #[test]
    fn the_most_specific_layer_that_sets_a_field_wins_field_by_field() {
        let org = pb::RoleSettings {
            activation: Some(pb::ActivationSettings {
                maximum_duration: Some(secs(4 * HOUR)),
                require_ticket: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let role = layer_with_max(2);
        let at_scope = pb::RoleSettings {
            activation: Some(pb::ActivationSettings {
                require_mfa: Some(false),
                ..Default::default()
            }),
            notification_rules: vec![NotificationRule {
                event_kind: Ev::Activated.into(),
                recipient_kind: Rc::Approvers.into(),
                enabled: Some(false),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (eff, o) = merge(&[
            (SettingOrigin::RoleAtScope, &at_scope),
            (SettingOrigin::Role, &role),
            (SettingOrigin::OrganisationDefault, &org),
        ]);
        let a = eff.activation.unwrap();
        assert_eq!(a.maximum_duration, Some(secs(2 * HOUR)));
        assert_eq!(o["activation.maximum_duration"], SettingOrigin::Role);
        assert_eq!(a.require_ticket, Some(true));
        assert_eq!(
            o["activation.require_ticket"],
            SettingOrigin::OrganisationDefault
        );
        assert_eq!(a.require_mfa, Some(false));
        assert_eq!(o["activation.require_mfa"], SettingOrigin::RoleAtScope);
        assert_eq!(
            o["activation.require_justification"],
            SettingOrigin::BuiltIn
        );
        let key = rule_key(Ev::Activated, Rc::Approvers);
        assert_eq!(o[&key], SettingOrigin::RoleAtScope);
        assert_eq!(o[&format!("{key}.enabled")], SettingOrigin::RoleAtScope);
        assert_eq!(o[&format!("{key}.critical_only")], SettingOrigin::BuiltIn);
        let rule = eff
            .notification_rules
            .iter()
            .find(|r| {
                r.event_kind == Ev::Activated as i32 && r.recipient_kind == Rc::Approvers as i32
            })
            .unwrap();
        assert_eq!(rule.enabled, Some(false));
        assert_eq!(rule.default_recipients_enabled, Some(true));
    }

    #[test]
    fn an_approval_workflow_is_inherited_as_a_whole_and_completed_with_built_ins() {
        let role = pb::RoleSettings {
            activation: Some(pb::ActivationSettings {
                approval: Some(pb::ApprovalSettings {
                    timeout: Some(secs(2 * HOUR)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (eff, o) = merge(&[(SettingOrigin::Role, &role)]);
        let ap = eff.activation.unwrap().approval.unwrap();
        assert_eq!(ap.timeout, Some(secs(2 * HOUR)));
        assert_eq!(ap.stages.len(), 1);
        assert_eq!(ap.stages[0].required_approvals, 1);
        assert_eq!(ap.require_approver_justification, Some(true));
        assert_eq!(o["activation.approval"], SettingOrigin::Role);
    }

    #[test]
    fn masks_copy_the_named_fields_and_unset_means_inherited() {
        let current = pb::RoleSettings {
            activation: Some(pb::ActivationSettings {
                maximum_duration: Some(secs(2 * HOUR)),
                require_ticket: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let given = pb::RoleSettings {
            activation: Some(pb::ActivationSettings {
                require_mfa: Some(false),
                maximum_duration: Some(secs(HOUR)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = apply_mask(
            &current,
            &given,
            &[
                "activation.require_mfa".into(),
                "activation.require_ticket".into(),
            ],
        );
        let a = out.activation.unwrap();
        assert_eq!(a.require_mfa, Some(false));
        assert_eq!(a.require_ticket, None, "masked and unset: inherited again");
        assert_eq!(a.maximum_duration, Some(secs(2 * HOUR)), "not masked: kept");
        let cleared = apply_mask(
            &current,
            &pb::RoleSettings::default(),
            &["activation".into()],
        );
        assert!(is_empty_layer(&cleared));
        let all = apply_mask(&current, &given, &["*".into()]);
        assert_eq!(all, layer_content(&given));
        assert!(check_mask(&[]).is_err());
        assert!(check_mask(&["activation.nope".into()]).is_err());
        assert!(check_mask(&["role_id".into()]).is_err());
        assert!(
            check_mask(&[
                "assignment.active_expire_after".into(),
                "notification_rules".into()
            ])
            .is_ok()
        );
    }

    fn violations(s: &pb::RoleSettings) -> Vec<String> {
        let mut v = Violations::new();
        validate_layer(s, "role_settings", &mut v);
        match v.finish() {
            Ok(()) => vec![],
            Err(ApiError::InvalidArgument(list)) => list.into_iter().map(|f| f.field).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn validation_names_every_bad_field() {
        assert!(violations(&built_in()).is_empty());
        assert_eq!(
            violations(&layer_with_max(25)),
            vec!["role_settings.activation.maximum_duration"]
        );
        assert!(violations(&layer_with_max(24)).is_empty());
        let s = pb::RoleSettings {
            activation: Some(pb::ActivationSettings {
                maximum_duration: Some(secs(29 * MINUTE)),
                mfa_max_age: Some(secs(13 * HOUR)),
                approval: Some(pb::ApprovalSettings {
                    stages: vec![
                        pb::ApprovalStage {
                            required_approvals: 11,
                            ..Default::default()
                        },
                        pb::ApprovalStage {
                            approvers: vec![tenure_proto::common::v1::PrincipalRef {
                                id: "a".into(),
                                ..Default::default()
                            }],
                            required_approvals: 2,
                            ..Default::default()
                        },
                        pb::ApprovalStage {
                            escalation_approvers: vec![tenure_proto::common::v1::PrincipalRef {
                                id: "b".into(),
                                ..Default::default()
                            }],
                            escalation_after: Some(secs(25 * HOUR)),
                            ..Default::default()
                        },
                        pb::ApprovalStage::default(),
                    ],
                    timeout: Some(secs(30 * MINUTE)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            assignment: Some(pb::AssignmentSettings {
                eligible_expire_after: Some(secs(3651 * DAY)),
                active_expire_after: Some(Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            notification_rules: vec![
                NotificationRule {
                    event_kind: Ev::AlertRaised.into(),
                    recipient_kind: Rc::Assignee.into(),
                    ..Default::default()
                },
                NotificationRule {
                    event_kind: Ev::Activated.into(),
                    recipient_kind: Rc::Assignee.into(),
                    ..Default::default()
                },
                NotificationRule {
                    event_kind: Ev::Activated.into(),
                    recipient_kind: Rc::Assignee.into(),
                    extra_recipients: Some(ExtraRecipients {
                        email_addresses: vec!["not-an-address".into()],
                        principal_ids: vec![],
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let got = violations(&s);
        for want in [
            "role_settings.activation.maximum_duration",
            "role_settings.activation.mfa_max_age",
            "role_settings.activation.approval.stages",
            "role_settings.activation.approval.timeout",
            "role_settings.activation.approval.stages[0].required_approvals",
            "role_settings.activation.approval.stages[1].required_approvals",
            "role_settings.activation.approval.stages[2].escalation_after",
            "role_settings.assignment.eligible_expire_after",
            "role_settings.assignment.active_expire_after",
            "role_settings.notification_rules[0].event_kind",
            "role_settings.notification_rules[2].event_kind",
            "role_settings.notification_rules[2].extra_recipients.email_addresses[0]",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} missing from {got:?}");
        }
    }

    #[test]
    fn e_mail_addresses() {
        assert!(valid_email("secops@contoso.example"));
        assert!(!valid_email("secops@contoso"));
        assert!(!valid_email("sec ops@contoso.example"));
        assert!(!valid_email("@contoso.example"));
        assert!(!valid_email("a@b@c.example"));
    }

    #[test]
    fn named_principals_carry_their_fields() {
        let s = pb::RoleSettings {
            activation: Some(pb::ActivationSettings {
                approval: Some(pb::ApprovalSettings {
                    stages: vec![pb::ApprovalStage {
                        approvers: vec![tenure_proto::common::v1::PrincipalRef {
                            id: "a".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let n = named_principals(&s, "role_settings");
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[0].field,
            "role_settings.activation.approval.stages[0].approvers[0]"
        );
        assert!(n[0].approver);
    }
}
