//! Drift: role memberships a connector observes in a target, compared with the grants
//! Tenure has in effect. Items are stored in `assignments_drift`; the memberships of a
//! report split over several calls are remembered in `assignments_drift_seen` until
//! the call that completes it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::any::AnyRow;
use tenure_platform::ApiResult;
use tenure_platform::clock::{from_micros, to_micros, to_proto};
use tenure_platform::events::{NewEvent, UnitOfWork};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{AssignmentType, PrincipalType};

use crate::core::Core;
use crate::model::{Model, Target};

type Uow = UnitOfWork<pb::Event>;

/// What identifies a membership: principal, role, scope and type (raw ids).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The principal id.
    pub principal_id: String,
    /// The role id.
    pub role_id: String,
    /// The scope id.
    pub scope_id: String,
    /// Eligible or active.
    pub assignment_type: AssignmentType,
}

/// One observed membership.
#[derive(Debug, Clone)]
pub struct Observation {
    /// What it is.
    pub key: Key,
    /// The target's own id of it.
    pub external_id: String,
}

/// A validated report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The connector's source name.
    pub source: String,
    /// The subtree the report covers.
    pub scope_id: String,
    /// What it observed.
    pub observations: Vec<Observation>,
    /// Whether this call completes the report of the subtree.
    pub complete: bool,
    /// When it observed them.
    pub observed_at: DateTime<Utc>,
    /// Only roles of this kind are compared on completion (None: every kind).
    pub role_kind: Option<pb::RoleKind>,
}

/// What a report did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The items it opened.
    pub opened: Vec<pb::DriftItem>,
    /// How many open items it resolved.
    pub resolved: i32,
    /// How many observed memberships matched Tenure's grants.
    pub matched: i32,
}

/// A stored drift item.
#[derive(Debug, Clone)]
pub struct DriftRow {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: pb::DriftKind,
    /// Open or resolved.
    pub status: pb::DriftStatus,
    /// Source.
    pub source: String,
    /// The membership.
    pub key: Key,
    /// The target's id of it.
    pub external_id: String,
    /// For MISSING_IN_TARGET: the Tenure grant.
    pub instance_id: String,
    /// First reported (µs).
    pub first_observed_at: i64,
    /// Last reported (µs).
    pub last_observed_at: i64,
    /// Resolved (µs).
    pub resolved_at: Option<i64>,
}

const COLUMNS: &str = "id, kind, status, source, principal_id, role_id, scope_id, assignment_type, external_id, \
     instance_id, first_observed_at, last_observed_at, resolved_at";

fn enum_of(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(0)
}

fn row(r: &AnyRow) -> ApiResult<DriftRow> {
    Ok(DriftRow {
        id: r.try_get("id")?,
        kind: pb::DriftKind::try_from(enum_of(r.try_get("kind")?)).unwrap_or_default(),
        status: pb::DriftStatus::try_from(enum_of(r.try_get("status")?)).unwrap_or_default(),
        source: r.try_get("source")?,
        key: Key {
            principal_id: r.try_get("principal_id")?,
            role_id: r.try_get("role_id")?,
            scope_id: r.try_get("scope_id")?,
            assignment_type: AssignmentType::try_from(enum_of(r.try_get("assignment_type")?))
                .unwrap_or_default(),
        },
        external_id: r.try_get("external_id")?,
        instance_id: r.try_get("instance_id")?,
        first_observed_at: r.try_get("first_observed_at")?,
        last_observed_at: r.try_get("last_observed_at")?,
        resolved_at: r.try_get("resolved_at")?,
    })
}

/// A drift item as the API and events show it: raw ids always, references when known.
pub fn item_proto(core: &Core, d: &DriftRow) -> pb::DriftItem {
    let (known_p, known_r, known_s) = {
        let m = core.model();
        (
            m.principals.contains_key(d.key.principal_id.as_str()),
            m.roles.contains_key(d.key.role_id.as_str()),
            m.scopes.contains_key(d.key.scope_id.as_str()),
        )
    };
    let ts = |us: i64| Some(to_proto(from_micros(us)));
    pb::DriftItem {
        id: d.id.clone(),
        kind: d.kind.into(),
        status: d.status.into(),
        source: d.source.clone(),
        membership: Some(pb::ObservedMembership {
            principal_id: d.key.principal_id.clone(),
            role_id: d.key.role_id.clone(),
            scope_id: d.key.scope_id.clone(),
            assignment_type: d.key.assignment_type.into(),
            external_id: d.external_id.clone(),
        }),
        principal: known_p.then(|| core.principal_ref(&d.key.principal_id)),
        role: known_r.then(|| core.role_ref(&d.key.role_id)),
        scope: known_s.then(|| core.scope_ref(&d.key.scope_id)),
        instance_id: d.instance_id.clone(),
        first_observed_time: ts(d.first_observed_at),
        last_observed_time: ts(d.last_observed_at),
        resolve_time: d.resolved_at.and_then(ts),
    }
}

/// Whether `scope` lies at or below `top`. A registered scope is placed by the
/// hierarchy; an unregistered one by its path, up to its nearest registered ancestor
/// (".../resourceGroups/x" lies below ".../").
pub fn within(m: &Model, scope: &str, top: &str) -> bool {
    if top == "/" {
        return true;
    }
    let mut cur = scope;
    loop {
        if m.scopes.contains_key(cur) {
            return m.is_within(cur, top);
        }
        if cur == top {
            return true;
        }
        match cur.rfind('/') {
            Some(i) if i > 0 => cur = &cur[..i],
            _ => return false,
        }
    }
}

/// Whether Tenure grants the membership now: a grant of that type of that role at
/// exactly that scope, in effect at `t`, to the principal or a group it belongs to.
pub fn granted(m: &Model, k: &Key, t: i64) -> bool {
    m.evaluate(
        &k.principal_id,
        Target::Role(&k.role_id),
        &k.scope_id,
        t,
        k.assignment_type,
    )
    .iter()
    .any(|x| x.inherited_from.is_none())
}

fn role_kind_matches(m: &Model, role: &str, kind: Option<pb::RoleKind>) -> bool {
    match (kind, m.roles.get(role)) {
        (None, _) | (_, None) => true,
        (Some(k), Some(r)) => r.kind == k,
    }
}

async fn insert(uow: &mut Uow, d: &DriftRow) -> ApiResult<()> {
    sqlx::query(&format!(
        "INSERT INTO assignments_drift ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL)"
    ))
    .bind(&d.id)
    .bind(i64::from(d.kind as i32))
    .bind(i64::from(d.status as i32))
    .bind(&d.source)
    .bind(&d.key.principal_id)
    .bind(&d.key.role_id)
    .bind(&d.key.scope_id)
    .bind(i64::from(d.key.assignment_type as i32))
    .bind(&d.external_id)
    .bind(&d.instance_id)
    .bind(d.first_observed_at)
    .bind(d.last_observed_at)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

async fn touch(uow: &mut Uow, id: &str, at: i64, external_id: &str) -> ApiResult<()> {
    sqlx::query(
        "UPDATE assignments_drift SET last_observed_at = $1, external_id = CASE WHEN $2 = '' THEN external_id ELSE $2 END \
         WHERE id = $3",
    )
    .bind(at)
    .bind(external_id)
    .bind(id)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// Runs a report in `uow`: opens, refreshes and resolves items, with their events.
pub async fn report(core: &Core, uow: &mut Uow, actor: &str, r: &Report) -> ApiResult<Outcome> {
    let now = uow.now();
    let now_us = to_micros(now);
    let seen_us = to_micros(r.observed_at);
    // One report of a source at a time: this row lock is held until commit (PostgreSQL;
    // SQLite has one writer anyway).
    for scope in ["", r.scope_id.as_str()] {
        sqlx::query(
            "INSERT INTO assignments_drift_series (source, scope_id, reports, updated_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (source, scope_id) DO UPDATE SET reports = assignments_drift_series.reports + 1, \
             updated_at = excluded.updated_at",
        )
        .bind(&r.source)
        .bind(scope)
        .bind(now_us)
        .execute(&mut **uow.tx())
        .await?;
    }
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM assignments_drift WHERE source = $1 AND status = $2"
    ))
    .bind(&r.source)
    .bind(i64::from(pb::DriftStatus::Open as i32))
    .fetch_all(&mut **uow.tx())
    .await?;
    let mut open: BTreeMap<(i32, Key), DriftRow> = BTreeMap::new();
    for x in &rows {
        let d = row(x)?;
        open.insert((d.kind as i32, d.key.clone()), d);
    }
    let outside = pb::DriftKind::GrantedOutsideTenure as i32;
    let missing = pb::DriftKind::MissingInTarget as i32;

    let mut out = Outcome::default();
    let mut to_resolve: Vec<DriftRow> = Vec::new();
    let mut observed: BTreeSet<Key> = BTreeSet::new();
    // Decide against the model first, then write: the model's lock is not held across
    // database calls.
    enum Act {
        Matched,
        Touch(String),
        Open,
    }
    let mut acts: Vec<(Observation, Act)> = Vec::new();
    {
        let m = core.model();
        for o in &r.observations {
            if !observed.insert(o.key.clone()) {
                continue;
            }
            let act = if granted(&m, &o.key, now_us) {
                Act::Matched
            } else if let Some(d) = open.get(&(outside, o.key.clone())) {
                Act::Touch(d.id.clone())
            } else {
                Act::Open
            };
            acts.push((o.clone(), act));
        }
    }
    for (o, act) in acts {
        if let Some(d) = open.remove(&(missing, o.key.clone())) {
            to_resolve.push(d);
        }
        match act {
            Act::Matched => {
                out.matched += 1;
                if let Some(d) = open.remove(&(outside, o.key.clone())) {
                    to_resolve.push(d);
                }
            }
            Act::Touch(id) => {
                touch(uow, &id, seen_us, &o.external_id).await?;
                open.remove(&(outside, o.key.clone()));
            }
            Act::Open => {
                let d = DriftRow {
                    id: uuid::Uuid::now_v7().to_string(),
                    kind: pb::DriftKind::GrantedOutsideTenure,
                    status: pb::DriftStatus::Open,
                    source: r.source.clone(),
                    key: o.key.clone(),
                    external_id: o.external_id.clone(),
                    instance_id: String::new(),
                    first_observed_at: seen_us,
                    last_observed_at: seen_us,
                    resolved_at: None,
                };
                insert(uow, &d).await?;
                let item = item_proto(core, &d);
                uow.emit(NewEvent::new(
                    pb::DriftObserved {
                        drift_item: Some(item.clone()),
                    },
                    actor,
                    &d.id,
                ));
                out.opened.push(item);
            }
        }
    }

    if r.complete {
        // The whole series: what earlier calls without `complete` saw, and this call.
        let seen = sqlx::query(
            "SELECT principal_id, role_id, scope_id, assignment_type FROM assignments_drift_seen \
             WHERE source = $1 AND report_scope_id = $2",
        )
        .bind(&r.source)
        .bind(&r.scope_id)
        .fetch_all(&mut **uow.tx())
        .await?;
        for x in &seen {
            observed.insert(Key {
                principal_id: x.try_get("principal_id")?,
                role_id: x.try_get("role_id")?,
                scope_id: x.try_get("scope_id")?,
                assignment_type: AssignmentType::try_from(enum_of(x.try_get("assignment_type")?))
                    .unwrap_or_default(),
            });
        }
        sqlx::query(
            "DELETE FROM assignments_drift_seen WHERE source = $1 AND report_scope_id = $2",
        )
        .bind(&r.source)
        .bind(&r.scope_id)
        .execute(&mut **uow.tx())
        .await?;

        let mut still_missing: BTreeMap<Key, String> = BTreeMap::new();
        let mut newly_missing: Vec<(Key, String)> = Vec::new();
        {
            let m = core.model();
            // Open GRANTED_OUTSIDE_TENURE items in the subtree: resolved when no longer
            // observed, or when Tenure grants them now.
            let stale: Vec<(i32, Key)> = open
                .iter()
                .filter(|((kind, k), _)| {
                    *kind == outside
                        && within(&m, &k.scope_id, &r.scope_id)
                        && role_kind_matches(&m, &k.role_id, r.role_kind)
                        && (!observed.contains(k) || granted(&m, k, now_us))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                if let Some(d) = open.remove(&k) {
                    to_resolve.push(d);
                }
            }
            // Active grants in effect in the subtree that the target lacks.
            let mut grants: Vec<_> = m
                .grants
                .values()
                .flatten()
                .filter(|g| g.assignment_type == AssignmentType::Active && g.in_effect(now_us))
                .filter(|g| m.principals.get(&g.principal).is_some_and(|p| p.enabled))
                .filter(|g| within(&m, &g.scope, &r.scope_id))
                .filter(|g| role_kind_matches(&m, &g.role, r.role_kind))
                .collect();
            grants.sort_by(|a, b| a.id.cmp(&b.id));
            for g in grants {
                let key = Key {
                    principal_id: g.principal.to_string(),
                    role_id: g.role.to_string(),
                    scope_id: g.scope.to_string(),
                    assignment_type: AssignmentType::Active,
                };
                if still_missing.contains_key(&key) || observed.contains(&key) {
                    continue;
                }
                // A target that lists a group's members instead of the group covers it.
                let via_member = m
                    .principals
                    .get(&g.principal)
                    .is_some_and(|p| p.principal_type == PrincipalType::Group)
                    && m.transitive_members(&g.principal).iter().any(|member| {
                        observed.contains(&Key {
                            principal_id: member.to_string(),
                            ..key.clone()
                        })
                    });
                if via_member {
                    continue;
                }
                if !open.contains_key(&(missing, key.clone())) {
                    newly_missing.push((key.clone(), g.id.to_string()));
                }
                still_missing.insert(key, g.id.to_string());
            }
            // Open MISSING_IN_TARGET items in the subtree that no longer stand.
            let gone: Vec<(i32, Key)> = open
                .keys()
                .filter(|(kind, k)| {
                    *kind == missing
                        && within(&m, &k.scope_id, &r.scope_id)
                        && role_kind_matches(&m, &k.role_id, r.role_kind)
                        && !still_missing.contains_key(k)
                })
                .cloned()
                .collect();
            for k in gone {
                if let Some(d) = open.remove(&k) {
                    to_resolve.push(d);
                }
            }
        }
        for (key, _) in still_missing
            .iter()
            .filter(|(k, _)| open.contains_key(&(missing, (*k).clone())))
        {
            if let Some(d) = open.get(&(missing, key.clone())) {
                touch(uow, &d.id, now_us, "").await?;
            }
        }
        for (key, instance_id) in newly_missing {
            let d = DriftRow {
                id: uuid::Uuid::now_v7().to_string(),
                kind: pb::DriftKind::MissingInTarget,
                status: pb::DriftStatus::Open,
                source: r.source.clone(),
                key,
                external_id: String::new(),
                instance_id,
                first_observed_at: now_us,
                last_observed_at: now_us,
                resolved_at: None,
            };
            insert(uow, &d).await?;
            let item = item_proto(core, &d);
            uow.emit(NewEvent::new(
                pb::DriftObserved {
                    drift_item: Some(item.clone()),
                },
                actor,
                &d.id,
            ));
            out.opened.push(item);
        }
    } else {
        for k in &observed {
            sqlx::query(
                "INSERT INTO assignments_drift_seen (source, report_scope_id, principal_id, role_id, scope_id, \
                 assignment_type, observed_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (source, report_scope_id, principal_id, role_id, scope_id, assignment_type) \
                 DO UPDATE SET observed_at = excluded.observed_at",
            )
            .bind(&r.source)
            .bind(&r.scope_id)
            .bind(&k.principal_id)
            .bind(&k.role_id)
            .bind(&k.scope_id)
            .bind(i64::from(k.assignment_type as i32))
            .bind(seen_us)
            .execute(&mut **uow.tx())
            .await?;
        }
    }

    for mut d in to_resolve {
        sqlx::query("UPDATE assignments_drift SET status = $1, resolved_at = $2 WHERE id = $3")
            .bind(i64::from(pb::DriftStatus::Resolved as i32))
            .bind(now_us)
            .bind(&d.id)
            .execute(&mut **uow.tx())
            .await?;
        d.status = pb::DriftStatus::Resolved;
        d.resolved_at = Some(now_us);
        uow.emit(NewEvent::new(
            pb::DriftResolved {
                drift_item: Some(item_proto(core, &d)),
            },
            actor,
            &d.id,
        ));
        out.resolved += 1;
    }
    Ok(out)
}

/// Drift items with a status, optionally of a kind and a source, newest first.
pub async fn list(
    core: &Core,
    status: pb::DriftStatus,
    kind: Option<pb::DriftKind>,
    source: &str,
) -> ApiResult<Vec<DriftRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM assignments_drift WHERE status = $1 AND ($2 = 0 OR kind = $2) AND ($3 = '' OR source = $3)"
    ))
    .bind(i64::from(status as i32))
    .bind(kind.map_or(0, |k| i64::from(k as i32)))
    .bind(source)
    .fetch_all(core.db.reader())
    .await?;
    let mut out = rows.iter().map(row).collect::<ApiResult<Vec<_>>>()?;
    out.sort_by_key(sort_key);
    Ok(out)
}

/// The page key of an item: newest first, then by id.
pub fn sort_key(d: &DriftRow) -> String {
    format!("{:020}|{}", i64::MAX - d.first_observed_at, d.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenure_proto::common::v1::ScopeType;

    #[test]
    fn unregistered_scopes_are_placed_by_their_path_up_to_a_registered_ancestor() {
        let mut m = Model::default();
        m.upsert_scope("/", None, ScopeType::Root, "Root");
        m.upsert_scope(
            "/managementGroups/mg",
            Some("/"),
            ScopeType::ManagementGroup,
            "mg",
        );
        m.upsert_scope(
            "/subscriptions/s1",
            Some("/managementGroups/mg"),
            ScopeType::Subscription,
            "s1",
        );
        assert!(within(
            &m,
            "/subscriptions/s1/resourceGroups/rg",
            "/managementGroups/mg"
        ));
        assert!(within(
            &m,
            "/subscriptions/s1/resourceGroups/rg",
            "/subscriptions/s1"
        ));
        assert!(!within(
            &m,
            "/subscriptions/s2/resourceGroups/rg",
            "/subscriptions/s1"
        ));
        assert!(!within(&m, "/subscriptions/s10", "/subscriptions/s1"));
        assert!(within(&m, "anything", "/"));
        assert!(!within(&m, "/", "/subscriptions/s1"));
    }

    #[test]
    fn newest_first_page_keys() {
        let d = |id: &str, at: i64| DriftRow {
            id: id.into(),
            kind: pb::DriftKind::GrantedOutsideTenure,
            status: pb::DriftStatus::Open,
            source: "s".into(),
            key: Key {
                principal_id: "p".into(),
                role_id: "r".into(),
                scope_id: "/".into(),
                assignment_type: AssignmentType::Active,
            },
            external_id: String::new(),
            instance_id: String::new(),
            first_observed_at: at,
            last_observed_at: at,
            resolved_at: None,
        };
        assert!(sort_key(&d("b", 200)) < sort_key(&d("a", 100)));
        assert!(sort_key(&d("a", 100)) < sort_key(&d("b", 100)));
    }
}
