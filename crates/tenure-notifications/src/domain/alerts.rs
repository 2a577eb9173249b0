//! The security alerts' rules, free of transport and storage: the catalogue of kinds
//! (texts, default severity and thresholds), the validation of settings, and the
//! evaluation of each kind over a snapshot of what this context knows ([`World`]).
//! Evaluation returns the incidents that stand now, each with a stable key; the engine
//! reconciles them with the stored alert (raise, update, resolve).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use tenure_platform::error::Violations;
use tenure_proto::common::v1 as common;
use tenure_proto::notifications::v1 as pb;

use pb::AlertKind as K;
use pb::alert_settings::Thresholds as T;

/// Every kind, in enum order.
pub const KINDS: [K; 8] = [
    K::RolesWithoutMfaOnActivation,
    K::AdminsNotUsingPrivilegedRoles,
    K::RolesAssignedOutsideTenure,
    K::RolesActivatedTooFrequently,
    K::PotentialStaleAccounts,
    K::TooManyGlobalAdministrators,
    K::PermanentActiveHighlyPrivileged,
    K::BreakGlassAccountUsed,
];

/// The role whose holders TOO_MANY_GLOBAL_ADMINISTRATORS counts.
pub const GLOBAL_ADMINISTRATOR: &str = "global-administrator";

/// How long a break-glass use stands as an incident.
pub const BREAK_GLASS_WINDOW_DAYS: i64 = 7;

/// The fixed texts of a kind.
#[derive(Debug, Clone, Copy)]
pub struct KindText {
    /// The title.
    pub title: &'static str,
    /// What it means.
    pub description: &'static str,
    /// Why it matters.
    pub security_impact: &'static str,
    /// What to do.
    pub mitigation: &'static str,
    /// How to prevent it.
    pub how_to_prevent: &'static str,
}

/// The texts of `kind`.
pub fn text(kind: K) -> KindText {
    match kind {
        K::RolesWithoutMfaOnActivation | K::Unspecified => KindText {
            title: "Roles don't require multi-factor authentication for activation",
            description: "Some roles can be activated without a multi-factor sign-in.",
            security_impact: "A stolen password is enough to take the role.",
            mitigation: "Turn on \"require MFA\" in the activation settings of each role listed.",
            how_to_prevent: "Require MFA in the organisation-wide defaults and avoid overrides that turn it off.",
        },
        K::AdminsNotUsingPrivilegedRoles => KindText {
            title: "Administrators aren't using their privileged roles",
            description: "Holders of privileged roles have not activated (or, for active holders, signed in) within the configured number of days.",
            security_impact: "Unused standing access widens the attack surface for nothing.",
            mitigation: "Remove the roles that are not needed, or make them eligible instead of active.",
            how_to_prevent: "Review privileged roles regularly with access reviews.",
        },
        K::RolesAssignedOutsideTenure => KindText {
            title: "Roles are being assigned outside of Tenure",
            description: "Role memberships were observed in the target that Tenure did not grant.",
            security_impact: "Grants outside Tenure escape its checks, approvals, expiry and audit.",
            mitigation: "Remove the memberships in the target, or import them as assignments in Tenure.",
            how_to_prevent: "Restrict who can grant roles directly in the target.",
        },
        K::RolesActivatedTooFrequently => KindText {
            title: "Roles are being activated too frequently",
            description: "One principal activated one role many times within a short window.",
            security_impact: "Frequent activations suggest the maximum duration is too short, or that the role is used as if it were permanent.",
            mitigation: "Talk to the principal; lengthen the role's maximum activation duration if the work needs it.",
            how_to_prevent: "Size activation durations to the work the role is used for.",
        },
        K::PotentialStaleAccounts => KindText {
            title: "Potential stale accounts in a privileged role",
            description: "Holders of privileged roles have not signed in within the configured number of days.",
            security_impact: "Stale accounts with privileges are easy targets for takeover.",
            mitigation: "Confirm the accounts are still needed; remove their roles or disable them.",
            how_to_prevent: "Review privileged roles regularly and disable leavers promptly.",
        },
        K::TooManyGlobalAdministrators => KindText {
            title: "There are too many global administrators",
            description: "More Global Administrators than the configured count and percentage of privileged principals.",
            security_impact: "Every Global Administrator can take over the whole directory.",
            mitigation: "Replace Global Administrator with least-privileged roles where possible.",
            how_to_prevent: "Keep Global Administrator for a few break-glass and senior accounts, eligible only.",
        },
        K::PermanentActiveHighlyPrivileged => KindText {
            title: "Permanent active assignments to highly privileged roles",
            description: "Highly privileged roles are held as permanent active assignments.",
            security_impact: "Standing privileged access is always available to an attacker who takes the account.",
            mitigation: "Make the assignments eligible, or give them an end.",
            how_to_prevent: "Disallow permanent active assignments in the role settings.",
        },
        K::BreakGlassAccountUsed => KindText {
            title: "A break-glass account was used",
            description: "An emergency access account signed in or acted.",
            security_impact: "Break-glass accounts bypass the usual controls; every use must be explained.",
            mitigation: "Confirm who used the account and why; rotate its credentials afterwards.",
            how_to_prevent: "Keep break-glass credentials sealed and monitored.",
        },
    }
}

/// The default severity of `kind`.
pub fn default_severity(kind: K) -> pb::AlertSeverity {
    use pb::AlertSeverity as S;
    match kind {
        K::RolesAssignedOutsideTenure | K::BreakGlassAccountUsed => S::High,
        K::RolesActivatedTooFrequently
        | K::PotentialStaleAccounts
        | K::PermanentActiveHighlyPrivileged => S::Medium,
        _ => S::Low,
    }
}

/// The default thresholds of `kind` (`None` for kinds without thresholds).
pub fn default_thresholds(kind: K) -> Option<T> {
    match kind {
        K::RolesWithoutMfaOnActivation => Some(T::NoMfa(pb::NoMfaThresholds {
            only_highly_privileged: false,
        })),
        K::AdminsNotUsingPrivilegedRoles => {
            Some(T::AdminsNotUsingRoles(pb::AdminsNotUsingRolesThresholds {
                days_without_use: 30,
            }))
        }
        K::RolesActivatedTooFrequently => Some(T::ActivatedTooFrequently(
            pb::ActivatedTooFrequentlyThresholds {
                activation_count: 3,
                window: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            },
        )),
        K::PotentialStaleAccounts => Some(T::StaleAccounts(pb::StaleAccountsThresholds {
            days_without_sign_in: 30,
        })),
        K::TooManyGlobalAdministrators => Some(T::TooManyGlobalAdministrators(
            pb::TooManyGlobalAdministratorsThresholds {
                max_count: 3,
                max_percentage: 10,
            },
        )),
        K::BreakGlassAccountUsed => Some(T::BreakGlass(pb::BreakGlassThresholds::default())),
        _ => None,
    }
}

/// The settings of `kind` at first start.
pub fn default_settings(kind: K) -> pb::AlertSettings {
    let t = text(kind);
    pb::AlertSettings {
        kind: kind.into(),
        enabled: true,
        severity: default_severity(kind).into(),
        excluded_principal_ids: vec![],
        thresholds: default_thresholds(kind),
        title: t.title.into(),
        description: t.description.into(),
        mitigation: t.mitigation.into(),
        update_time: None,
        etag: String::new(),
    }
}

/// A kind from its wire value, refusing unspecified and unknown values.
pub fn parse_kind(v: i32, field: &str) -> Result<K, tenure_platform::ApiError> {
    match K::try_from(v) {
        Ok(K::Unspecified) | Err(_) => Err(tenure_platform::ApiError::invalid(
            field,
            format!("unknown or unspecified alert kind {v}"),
        )),
        Ok(k) => Ok(k),
    }
}

fn threshold_kind(t: &T) -> K {
    match t {
        T::NoMfa(_) => K::RolesWithoutMfaOnActivation,
        T::AdminsNotUsingRoles(_) => K::AdminsNotUsingPrivilegedRoles,
        T::ActivatedTooFrequently(_) => K::RolesActivatedTooFrequently,
        T::StaleAccounts(_) => K::PotentialStaleAccounts,
        T::TooManyGlobalAdministrators(_) => K::TooManyGlobalAdministrators,
        T::BreakGlass(_) => K::BreakGlassAccountUsed,
    }
}

/// Checks thresholds given for `kind`, naming fields under `settings.`.
pub fn check_thresholds(kind: K, t: Option<&T>, v: &mut Violations) {
    let Some(t) = t else {
        if default_thresholds(kind).is_some() {
            v.add("settings.thresholds", "required for this kind");
        }
        return;
    };
    if threshold_kind(t) != kind {
        v.add(
            "settings.thresholds",
            format!("are those of another kind, not {}", kind.as_str_name()),
        );
        return;
    }
    match t {
        T::NoMfa(_) => {}
        T::AdminsNotUsingRoles(x) => v.check(
            !(1..=365).contains(&x.days_without_use),
            "settings.admins_not_using_roles.days_without_use",
            "must be 1 to 365",
        ),
        T::ActivatedTooFrequently(x) => {
            v.check(
                !(2..=100).contains(&x.activation_count),
                "settings.activated_too_frequently.activation_count",
                "must be 2 to 100",
            );
            let secs = x.window.as_ref().map(|d| (d.seconds, d.nanos));
            v.check(
                !matches!(secs, Some((s, n)) if (60..=30 * 86400).contains(&s) && (0..1_000_000_000).contains(&n)),
                "settings.activated_too_frequently.window",
                "must be 1 minute to 30 days",
            );
        }
        T::StaleAccounts(x) => v.check(
            !(1..=365).contains(&x.days_without_sign_in),
            "settings.stale_accounts.days_without_sign_in",
            "must be 1 to 365",
        ),
        T::TooManyGlobalAdministrators(x) => {
            v.check(
                !(2..=100).contains(&x.max_count),
                "settings.too_many_global_administrators.max_count",
                "must be 2 to 100",
            );
            v.check(
                !(0..=100).contains(&x.max_percentage),
                "settings.too_many_global_administrators.max_percentage",
                "must be 0 to 100",
            );
        }
        T::BreakGlass(x) => {
            for (i, p) in x.principal_ids.iter().enumerate() {
                v.check(
                    p.is_empty() || p.len() > 200,
                    format!("settings.break_glass.principal_ids[{i}]"),
                    "must be a principal id",
                );
            }
        }
    }
}

/// An assignment in effect (or pending start), as projected.
#[derive(Debug, Clone)]
pub struct HeldAssignment {
    /// The assignment id.
    pub id: String,
    /// Eligible or active.
    pub eligible: bool,
    /// The principal (possibly a group).
    pub principal_id: String,
    /// The role.
    pub role: common::RoleRef,
    /// The scope.
    pub scope: common::ScopeRef,
    /// When it starts.
    pub start: DateTime<Utc>,
    /// When it ends; `None` when permanent.
    pub end: Option<DateTime<Utc>>,
}

/// An activation that happened.
#[derive(Debug, Clone)]
pub struct Activation {
    /// The activation request id.
    pub request_id: String,
    /// Who.
    pub principal_id: String,
    /// The role.
    pub role: common::RoleRef,
    /// The scope.
    pub scope_id: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A principal as projected.
#[derive(Debug, Clone, Default)]
pub struct PrincipalInfo {
    /// The reference.
    pub reference: common::PrincipalRef,
    /// Whether enabled.
    pub enabled: bool,
    /// The last sign-in, when known.
    pub last_sign_in: Option<DateTime<Utc>>,
}

/// What evaluation sees.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Now.
    pub now: DateTime<Utc>,
    /// Assignments not removed or expired.
    pub assignments: Vec<HeldAssignment>,
    /// Activations (history).
    pub activations: Vec<Activation>,
    /// Principals by id.
    pub principals: HashMap<String, PrincipalInfo>,
    /// Roles marked highly privileged.
    pub highly_privileged: HashSet<String>,
    /// Roles with their effective "require MFA on activation" (roles with eligible
    /// holders or settings), by id.
    pub roles_mfa: BTreeMap<String, (common::RoleRef, bool)>,
    /// Open drift items of kind GRANTED_OUTSIDE_TENURE.
    pub drift: Vec<tenure_proto::assignments::v1::DriftItem>,
    /// Uses of watched principals: (principal, when, what).
    pub uses: Vec<(String, DateTime<Utc>, String)>,
}

impl World {
    fn pref(&self, id: &str) -> common::PrincipalRef {
        self.principals
            .get(id)
            .map(|p| p.reference.clone())
            .unwrap_or_else(|| common::PrincipalRef {
                id: id.to_owned(),
                ..Default::default()
            })
    }

    fn in_effect(&self, a: &HeldAssignment) -> bool {
        a.start <= self.now && a.end.is_none_or(|e| e > self.now)
    }
}

/// The incident key of an assignment (administrators not using their roles).
pub fn assignment_key(assignment_id: &str) -> String {
    format!("assignment:{assignment_id}")
}

/// The incident key of one principal activating one role too often.
pub fn frequent_key(principal_id: &str, role_id: &str) -> String {
    format!("frequent:{principal_id}:{role_id}")
}

fn incident(
    principal: Option<common::PrincipalRef>,
    role: Option<common::RoleRef>,
    scope: Option<common::ScopeRef>,
    detail: String,
) -> pb::AlertIncident {
    pb::AlertIncident {
        principal,
        role,
        scope,
        detail,
        ..Default::default()
    }
}

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// The incidents of `kind` that stand now under `settings`, by stable key.
pub fn evaluate(settings: &pb::AlertSettings, w: &World) -> BTreeMap<String, pb::AlertIncident> {
    let mut out = BTreeMap::new();
    let Ok(kind) = K::try_from(settings.kind) else {
        return out;
    };
    if !settings.enabled {
        return out;
    }
    let excluded: HashSet<&str> = settings
        .excluded_principal_ids
        .iter()
        .map(String::as_str)
        .collect();
    let th = settings
        .thresholds
        .clone()
        .or_else(|| default_thresholds(kind));
    let privileged = |a: &HeldAssignment| w.highly_privileged.contains(&a.role.id);
    match (kind, th) {
        (K::RolesWithoutMfaOnActivation, Some(T::NoMfa(t))) => {
            for (id, (role, mfa)) in &w.roles_mfa {
                if *mfa || (t.only_highly_privileged && !w.highly_privileged.contains(id)) {
                    continue;
                }
                out.insert(
                    format!("role:{id}"),
                    incident(
                        None,
                        Some(role.clone()),
                        None,
                        format!("{} can be activated without MFA", role.display_name),
                    ),
                );
            }
        }
        (K::AdminsNotUsingPrivilegedRoles, Some(T::AdminsNotUsingRoles(t))) => {
            let limit = TimeDelta::days(i64::from(t.days_without_use));
            for a in w
                .assignments
                .iter()
                .filter(|a| privileged(a) && w.in_effect(a))
            {
                if excluded.contains(a.principal_id.as_str()) {
                    continue;
                }
                let since = if a.eligible {
                    w.activations
                        .iter()
                        .filter(|x| x.principal_id == a.principal_id && x.role.id == a.role.id)
                        .map(|x| x.at)
                        .max()
                        .unwrap_or(a.start)
                        .max(a.start)
                } else {
                    w.principals
                        .get(&a.principal_id)
                        .and_then(|p| p.last_sign_in)
                        .unwrap_or(a.start)
                        .max(a.start)
                };
                if w.now - since >= limit {
                    let what = if a.eligible { "activation" } else { "sign-in" };
                    out.insert(
                        assignment_key(&a.id),
                        pb::AlertIncident {
                            assignment_id: a.id.clone(),
                            ..incident(
                                Some(w.pref(&a.principal_id)),
                                Some(a.role.clone()),
                                Some(a.scope.clone()),
                                format!("no {what} since {}", day(since)),
                            )
                        },
                    );
                }
            }
        }
        (K::RolesAssignedOutsideTenure, _) => {
            for d in &w.drift {
                if d.principal
                    .as_ref()
                    .is_some_and(|p| excluded.contains(p.id.as_str()))
                {
                    continue;
                }
                out.insert(
                    format!("drift:{}", d.id),
                    pb::AlertIncident {
                        drift_item_id: d.id.clone(),
                        ..incident(
                            d.principal.clone(),
                            d.role.clone(),
                            d.scope.clone(),
                            format!("observed in {} without a Tenure grant", d.source),
                        )
                    },
                );
            }
        }
        (K::RolesActivatedTooFrequently, Some(T::ActivatedTooFrequently(t))) => {
            let window = t
                .window
                .as_ref()
                .map_or(TimeDelta::hours(1), |d| TimeDelta::seconds(d.seconds));
            let mut groups: BTreeMap<(String, String), Vec<&Activation>> = BTreeMap::new();
            for a in &w.activations {
                if a.at > w.now - window
                    && a.at <= w.now
                    && !excluded.contains(a.principal_id.as_str())
                {
                    groups
                        .entry((a.principal_id.clone(), a.role.id.clone()))
                        .or_default()
                        .push(a);
                }
            }
            for ((p, r), mut list) in groups {
                if list.len() < usize::try_from(t.activation_count).unwrap_or(usize::MAX) {
                    continue;
                }
                list.sort_by_key(|a| a.at);
                let first = list.first().map(|a| a.at).unwrap_or(w.now);
                let last = list.last().map(|a| a.at).unwrap_or(w.now);
                out.insert(
                    frequent_key(&p, &r),
                    pb::AlertIncident {
                        request_ids: list.iter().map(|a| a.request_id.clone()).collect(),
                        ..incident(
                            Some(w.pref(&p)),
                            list.first().map(|a| a.role.clone()),
                            None,
                            format!(
                                "activated {} times between {} and {}",
                                list.len(),
                                first.format("%H:%M"),
                                last.format("%H:%M")
                            ),
                        )
                    },
                );
            }
        }
        (K::PotentialStaleAccounts, Some(T::StaleAccounts(t))) => {
            let limit = TimeDelta::days(i64::from(t.days_without_sign_in));
            let mut seen = HashSet::new();
            for a in w
                .assignments
                .iter()
                .filter(|a| privileged(a) && w.in_effect(a))
            {
                let Some(p) = w.principals.get(&a.principal_id) else {
                    continue;
                };
                let Some(last) = p.last_sign_in else { continue };
                if excluded.contains(a.principal_id.as_str())
                    || w.now - last < limit
                    || !seen.insert(a.principal_id.clone())
                {
                    continue;
                }
                out.insert(
                    format!("principal:{}", a.principal_id),
                    incident(
                        Some(p.reference.clone()),
                        Some(a.role.clone()),
                        Some(a.scope.clone()),
                        format!("no sign-in since {}", day(last)),
                    ),
                );
            }
        }
        (K::TooManyGlobalAdministrators, Some(T::TooManyGlobalAdministrators(t))) => {
            let held: Vec<&HeldAssignment> =
                w.assignments.iter().filter(|a| w.in_effect(a)).collect();
            let gas: std::collections::BTreeSet<&str> = held
                .iter()
                .filter(|a| {
                    a.role.id == GLOBAL_ADMINISTRATOR && !excluded.contains(a.principal_id.as_str())
                })
                .map(|a| a.principal_id.as_str())
                .collect();
            let privileged_principals: HashSet<&str> = held
                .iter()
                .filter(|a| privileged(a))
                .map(|a| a.principal_id.as_str())
                .collect();
            let count = gas.len();
            let total = privileged_principals.len().max(1);
            let pct = count * 100 / total;
            if count > usize::try_from(t.max_count).unwrap_or(usize::MAX)
                && pct > usize::try_from(t.max_percentage).unwrap_or(usize::MAX)
            {
                for p in gas {
                    out.insert(
                        format!("principal:{p}"),
                        incident(
                            Some(w.pref(p)),
                            Some(common::RoleRef {
                                id: GLOBAL_ADMINISTRATOR.into(),
                                display_name: "Global Administrator".into(),
                            }),
                            None,
                            format!(
                                "{count} Global Administrators, {pct}% of privileged principals"
                            ),
                        ),
                    );
                }
            }
        }
        (K::PermanentActiveHighlyPrivileged, _) => {
            for a in w
                .assignments
                .iter()
                .filter(|a| !a.eligible && a.end.is_none() && privileged(a) && w.in_effect(a))
            {
                if excluded.contains(a.principal_id.as_str()) {
                    continue;
                }
                out.insert(
                    format!("assignment:{}", a.id),
                    pb::AlertIncident {
                        assignment_id: a.id.clone(),
                        ..incident(
                            Some(w.pref(&a.principal_id)),
                            Some(a.role.clone()),
                            Some(a.scope.clone()),
                            format!("permanent active {}", a.role.display_name),
                        )
                    },
                );
            }
        }
        (K::BreakGlassAccountUsed, Some(T::BreakGlass(t))) => {
            let watched: HashSet<&str> = t.principal_ids.iter().map(String::as_str).collect();
            let since = w.now - TimeDelta::days(BREAK_GLASS_WINDOW_DAYS);
            let mut last: BTreeMap<&str, (DateTime<Utc>, &str)> = BTreeMap::new();
            for (p, at, what) in &w.uses {
                if watched.contains(p.as_str()) && *at > since && !excluded.contains(p.as_str()) {
                    let e = last.entry(p.as_str()).or_insert((*at, what));
                    if *at >= e.0 {
                        *e = (*at, what);
                    }
                }
            }
            for (p, (at, what)) in last {
                out.insert(
                    format!("principal:{p}"),
                    incident(
                        Some(w.pref(p)),
                        None,
                        None,
                        format!("{what} at {}", at.to_rfc3339()),
                    ),
                );
            }
        }
        _ => {}
    }
    out
}

/// The most incidents (added and changed incidents and removed ids together) that one
/// `AlertUpdated` carries; a larger change is split over several events.
pub const MAX_DELTA: usize = 100;

/// One `AlertUpdated`'s part of a change to an alert's incidents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Incidents found.
    pub added: Vec<pb::AlertIncident>,
    /// Incidents that stand with a changed finding, as they are now.
    pub changed: Vec<pb::AlertIncident>,
    /// Ids of incidents that no longer stand.
    pub removed: Vec<String>,
}

impl Delta {
    /// How many items it carries.
    pub fn len(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits the change into parts of at most `max` items each (at least one item a
    /// part): removals first, then changes, then additions. The parts touch distinct
    /// incidents, so applying them in any order gives the same set. Nothing changed
    /// gives no parts.
    pub fn split(self, max: usize) -> Vec<Delta> {
        let max = max.max(1);
        if self.len() <= max {
            return if self.is_empty() { vec![] } else { vec![self] };
        }
        let mut parts = Vec::with_capacity(self.len().div_ceil(max));
        let mut part = Delta::default();
        let full = |part: &mut Delta, parts: &mut Vec<Delta>| {
            if part.len() == max {
                parts.push(std::mem::take(part));
            }
        };
        for id in self.removed {
            part.removed.push(id);
            full(&mut part, &mut parts);
        }
        for inc in self.changed {
            part.changed.push(inc);
            full(&mut part, &mut parts);
        }
        for inc in self.added {
            part.added.push(inc);
            full(&mut part, &mut parts);
        }
        if !part.is_empty() {
            parts.push(part);
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_893_456_000, 0).unwrap()
    }

    fn role(id: &str) -> common::RoleRef {
        common::RoleRef {
            id: id.into(),
            display_name: id.into(),
        }
    }

    fn held(
        id: &str,
        p: &str,
        r: &str,
        eligible: bool,
        end: Option<DateTime<Utc>>,
    ) -> HeldAssignment {
        HeldAssignment {
            id: id.into(),
            eligible,
            principal_id: p.into(),
            role: role(r),
            scope: common::ScopeRef {
                id: "/".into(),
                ..Default::default()
            },
            start: t0() - TimeDelta::days(100),
            end,
        }
    }

    fn activations(p: &str, r: &str, n: i64, every: TimeDelta) -> Vec<Activation> {
        (0..n)
            .map(|i| Activation {
                request_id: format!("r{i}"),
                principal_id: p.into(),
                role: role(r),
                scope_id: "/".into(),
                at: t0() + every * i32::try_from(i).unwrap(),
            })
            .collect()
    }

    #[test]
    fn too_frequent_counts_activations_of_one_role_by_one_principal_within_the_window() {
        let mut s = default_settings(K::RolesActivatedTooFrequently);
        s.thresholds = Some(T::ActivatedTooFrequently(
            pb::ActivatedTooFrequentlyThresholds {
                activation_count: 4,
                window: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            },
        ));
        let mut w = World {
            now: t0() + TimeDelta::minutes(45),
            activations: activations("ferry", "billing", 3, TimeDelta::minutes(15)),
            ..World::default()
        };
        assert!(evaluate(&s, &w).is_empty(), "three is under four");
        w.activations = activations("ferry", "billing", 4, TimeDelta::minutes(15));
        let got = evaluate(&s, &w);
        assert_eq!(got.len(), 1);
        let inc = got.values().next().unwrap();
        assert_eq!(inc.request_ids.len(), 4);
        assert!(inc.detail.contains("4 times"));
        // an hour after the first, it falls out of the window
        w.now = t0() + TimeDelta::minutes(61);
        assert!(evaluate(&s, &w).is_empty());
        // other principals' activations do not add up
        w.now = t0() + TimeDelta::minutes(45);
        w.activations = activations("ferry", "billing", 2, TimeDelta::minutes(15));
        w.activations
            .extend(activations("lisa", "billing", 2, TimeDelta::minutes(15)));
        assert!(evaluate(&s, &w).is_empty());
        // excluded principals are never reported; disabled kinds report nothing
        w.activations = activations("ferry", "billing", 4, TimeDelta::minutes(15));
        s.excluded_principal_ids = vec!["ferry".into()];
        assert!(evaluate(&s, &w).is_empty());
        s.excluded_principal_ids.clear();
        s.enabled = false;
        assert!(evaluate(&s, &w).is_empty());
    }

    #[test]
    fn permanent_active_highly_privileged_ignores_eligible_bounded_and_ordinary_roles() {
        let s = default_settings(K::PermanentActiveHighlyPrivileged);
        let w = World {
            now: t0(),
            assignments: vec![
                held("a1", "admin", "pra", false, None),
                held("a2", "ferry", "pra", true, None),
                held("a3", "lisa", "pra", false, Some(t0() + TimeDelta::days(1))),
                held("a4", "eve", "reader", false, None),
            ],
            highly_privileged: ["pra".to_owned()].into(),
            ..World::default()
        };
        let got = evaluate(&s, &w);
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["assignment:a1"]);
    }

    #[test]
    fn too_many_global_administrators_needs_both_count_and_percentage() {
        let s = default_settings(K::TooManyGlobalAdministrators);
        let mut w = World {
            now: t0(),
            highly_privileged: [GLOBAL_ADMINISTRATOR.to_owned()].into(),
            ..World::default()
        };
        for i in 0..4 {
            w.assignments.push(held(
                &format!("g{i}"),
                &format!("p{i}"),
                GLOBAL_ADMINISTRATOR,
                true,
                None,
            ));
        }
        assert_eq!(evaluate(&s, &w).len(), 4, "4 > 3 and 100% > 10%");
        let mut s2 = s;
        s2.thresholds = Some(T::TooManyGlobalAdministrators(
            pb::TooManyGlobalAdministratorsThresholds {
                max_count: 4,
                max_percentage: 10,
            },
        ));
        assert!(evaluate(&s2, &w).is_empty(), "4 is not over 4");
    }

    #[test]
    fn stale_and_unused_look_at_sign_ins_and_activations() {
        let mut w = World {
            now: t0(),
            assignments: vec![
                held("a1", "ferry", "pra", true, None),
                held("a2", "lisa", "pra", false, None),
            ],
            highly_privileged: ["pra".to_owned()].into(),
            ..World::default()
        };
        w.principals.insert(
            "ferry".into(),
            PrincipalInfo {
                last_sign_in: Some(t0() - TimeDelta::days(40)),
                ..Default::default()
            },
        );
        w.principals.insert(
            "lisa".into(),
            PrincipalInfo {
                last_sign_in: Some(t0() - TimeDelta::days(2)),
                ..Default::default()
            },
        );
        let stale = evaluate(&default_settings(K::PotentialStaleAccounts), &w);
        assert_eq!(stale.keys().collect::<Vec<_>>(), vec!["principal:ferry"]);
        let unused = evaluate(&default_settings(K::AdminsNotUsingPrivilegedRoles), &w);
        assert_eq!(unused.keys().collect::<Vec<_>>(), vec!["assignment:a1"]);
        w.activations = activations("ferry", "pra", 1, TimeDelta::zero());
        w.activations[0].at = t0() - TimeDelta::days(3);
        assert!(evaluate(&default_settings(K::AdminsNotUsingPrivilegedRoles), &w).is_empty());
    }

    #[test]
    fn no_mfa_and_break_glass() {
        let mut w = World {
            now: t0(),
            ..World::default()
        };
        w.roles_mfa
            .insert("billing".into(), (role("billing"), false));
        w.roles_mfa.insert("pra".into(), (role("pra"), true));
        assert_eq!(
            evaluate(&default_settings(K::RolesWithoutMfaOnActivation), &w).len(),
            1
        );
        let mut only = default_settings(K::RolesWithoutMfaOnActivation);
        only.thresholds = Some(T::NoMfa(pb::NoMfaThresholds {
            only_highly_privileged: true,
        }));
        assert!(evaluate(&only, &w).is_empty());

        w.uses
            .push(("bg".into(), t0() - TimeDelta::hours(1), "signed in".into()));
        let mut bg = default_settings(K::BreakGlassAccountUsed);
        assert!(evaluate(&bg, &w).is_empty(), "no accounts named: inert");
        bg.thresholds = Some(T::BreakGlass(pb::BreakGlassThresholds {
            principal_ids: vec!["bg".into()],
        }));
        assert_eq!(evaluate(&bg, &w).len(), 1);
        w.now = t0() + TimeDelta::days(8);
        assert!(evaluate(&bg, &w).is_empty(), "a use stands for 7 days");
    }

    #[test]
    fn thresholds_are_checked_per_kind_and_range() {
        let mut v = Violations::new();
        check_thresholds(
            K::RolesActivatedTooFrequently,
            Some(&T::ActivatedTooFrequently(
                pb::ActivatedTooFrequentlyThresholds {
                    activation_count: 1,
                    window: Some(prost_types::Duration {
                        seconds: 10,
                        nanos: 0,
                    }),
                },
            )),
            &mut v,
        );
        let err = format!("{:?}", v.finish().unwrap_err());
        assert!(
            err.contains("activation_count") && err.contains("window"),
            "{err}"
        );
        let mut v = Violations::new();
        check_thresholds(
            K::PotentialStaleAccounts,
            Some(&T::NoMfa(pb::NoMfaThresholds::default())),
            &mut v,
        );
        assert!(format!("{:?}", v.finish().unwrap_err()).contains("another kind"));
        assert!(parse_kind(0, "kind").is_err());
        assert!(parse_kind(99, "kind").is_err());
        for k in KINDS {
            let mut v = Violations::new();
            check_thresholds(k, default_thresholds(k).as_ref(), &mut v);
            assert!(v.is_empty(), "defaults of {k:?} are valid");
        }
    }

    fn inc(id: &str) -> pb::AlertIncident {
        pb::AlertIncident {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_large_change_is_split_into_bounded_parts_that_cover_it_once() {
        let d = Delta {
            added: (0..150).map(|i| inc(&format!("a{i}"))).collect(),
            changed: (0..30).map(|i| inc(&format!("c{i}"))).collect(),
            removed: (0..45).map(|i| format!("r{i}")).collect(),
        };
        let parts = d.clone().split(100);
        assert_eq!(
            parts.iter().map(Delta::len).collect::<Vec<_>>(),
            [100, 100, 25]
        );
        let mut joined = Delta::default();
        for p in parts {
            joined.added.extend(p.added);
            joined.changed.extend(p.changed);
            joined.removed.extend(p.removed);
        }
        assert_eq!(joined, d);
        // A small change stays whole; no change gives no event.
        let small = Delta {
            added: vec![inc("x")],
            ..Delta::default()
        };
        assert_eq!(small.clone().split(100), vec![small]);
        assert!(Delta::default().split(100).is_empty());
    }
}
