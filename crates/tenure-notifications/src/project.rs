//! The projections of the assignments stream this context keeps in its own tables
//! (prefixed `notifications_p_`): principals with their sign-ins and e-mail, group
//! members, scopes, assignments and activations in effect, the activation history,
//! role settings, roles, and open drift. Written only by the consumer of that stream,
//! inside its unit of work; read to evaluate alerts and to resolve recipients.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use prost::Message as _;
use sqlx::{Any, Row as _, Transaction};
use tenure_platform::ApiResult;
use tenure_platform::clock::{from_micros, from_proto, to_micros};
use tenure_platform::db::flag;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1 as common;

use crate::domain::alerts::{Activation, HeldAssignment, PrincipalInfo, World};

type Tx = Transaction<'static, Any>;

fn ts(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.and_then(from_proto).map(to_micros)
}

/// Upserts a principal.
pub async fn principal(tx: &mut Tx, p: &asg::Principal) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO notifications_p_principals (id, type, display_name, upn, email, enabled, last_sign_in) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET type = excluded.type, \
         display_name = excluded.display_name, upn = excluded.upn, email = excluded.email, \
         enabled = excluded.enabled, last_sign_in = excluded.last_sign_in",
    )
    .bind(&p.id)
    .bind(i64::from(p.r#type))
    .bind(&p.display_name)
    .bind(&p.user_principal_name)
    .bind(&p.email)
    .bind(flag(p.enabled.unwrap_or(true)))
    .bind(ts(p.last_sign_in_time.as_ref()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_assignment(tx: &mut Tx, a: &asg::Assignment) -> ApiResult<()> {
    let start = ts(a.start_time.as_ref()).unwrap_or(0);
    let end = if a.permanent {
        None
    } else {
        ts(a.end_time.as_ref())
    };
    sqlx::query(
        "INSERT INTO notifications_p_assignments (id, type, principal_id, role_id, scope_id, start_at, end_at, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET type = excluded.type, \
         principal_id = excluded.principal_id, role_id = excluded.role_id, scope_id = excluded.scope_id, \
         start_at = excluded.start_at, end_at = excluded.end_at, body = excluded.body",
    )
    .bind(&a.id)
    .bind(i64::from(a.assignment_type))
    .bind(a.principal.as_ref().map_or("", |p| p.id.as_str()))
    .bind(a.role.as_ref().map_or("", |p| p.id.as_str()))
    .bind(a.scope.as_ref().map_or("/", |p| p.id.as_str()))
    .bind(start)
    .bind(end)
    .bind(a.encode_to_vec())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn delete(tx: &mut Tx, table: &str, id: &str) -> ApiResult<()> {
    sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn upsert_instance(tx: &mut Tx, i: &asg::Instance) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO notifications_p_instances (id, principal_id, role_id, scope_id, end_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET end_at = excluded.end_at",
    )
    .bind(&i.id)
    .bind(i.principal.as_ref().map_or("", |p| p.id.as_str()))
    .bind(i.role.as_ref().map_or("", |p| p.id.as_str()))
    .bind(i.scope.as_ref().map_or("/", |p| p.id.as_str()))
    .bind(ts(i.end_time.as_ref()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Upserts roles (from the catalogue or events).
pub async fn role(tx: &mut Tx, r: &asg::RoleDefinition) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO notifications_p_roles (id, display_name, highly_privileged) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, highly_privileged = excluded.highly_privileged",
    )
    .bind(&r.id)
    .bind(&r.display_name)
    .bind(flag(r.highly_privileged))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Applies one assignments event to the projections. Returns the assignments whose
/// window changed (for expiry reminders) and those that went away.
pub async fn apply(tx: &mut Tx, e: &asg::Event) -> ApiResult<Changed> {
    use asg::event::Payload as P;
    let mut ch = Changed::default();
    let Some(p) = &e.payload else { return Ok(ch) };
    match p {
        P::PrincipalSynced(x) => {
            if let Some(p) = &x.principal {
                principal(tx, p).await?;
            }
        }
        P::PrincipalDisabled(x) => {
            if let Some(p) = &x.principal {
                sqlx::query("UPDATE notifications_p_principals SET enabled = 0 WHERE id = $1")
                    .bind(&p.id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        P::PrincipalDeleted(x) => {
            if let Some(p) = &x.principal {
                delete(tx, "notifications_p_principals", &p.id).await?;
                sqlx::query(
                    "DELETE FROM notifications_p_members WHERE group_id = $1 OR member_id = $1",
                )
                .bind(&p.id)
                .execute(&mut **tx)
                .await?;
            }
            for id in &x.removed_assignment_ids {
                delete(tx, "notifications_p_assignments", id).await?;
                ch.gone.push(id.clone());
            }
        }
        P::GroupMembersSet(x) => {
            let g = x.group.as_ref().map_or("", |g| g.id.as_str());
            for m in &x.added_members {
                sqlx::query(
                    "INSERT INTO notifications_p_members (group_id, member_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(g)
                .bind(&m.id)
                .execute(&mut **tx)
                .await?;
            }
            for m in &x.removed_members {
                sqlx::query(
                    "DELETE FROM notifications_p_members WHERE group_id = $1 AND member_id = $2",
                )
                .bind(g)
                .bind(&m.id)
                .execute(&mut **tx)
                .await?;
            }
        }
        P::RoleDefinitionCreated(x) => {
            if let Some(r) = &x.role_definition {
                role(tx, r).await?;
            }
        }
        P::RoleDefinitionUpdated(x) => {
            if let Some(r) = &x.after {
                role(tx, r).await?;
            }
        }
        P::RoleDefinitionDeleted(x) => {
            if let Some(r) = &x.role_definition {
                delete(tx, "notifications_p_roles", &r.id).await?;
            }
        }
        P::ScopeRegistered(x) => {
            if let Some(s) = &x.scope {
                sqlx::query(
                    "INSERT INTO notifications_p_scopes (id, parent_id, display_name) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET parent_id = excluded.parent_id, display_name = excluded.display_name",
                )
                .bind(&s.id)
                .bind(&s.parent_id)
                .bind(&s.display_name)
                .execute(&mut **tx)
                .await?;
            }
        }
        P::ScopeRenamed(x) => {
            if let Some(s) = &x.scope {
                sqlx::query("UPDATE notifications_p_scopes SET display_name = $2 WHERE id = $1")
                    .bind(&s.id)
                    .bind(&s.display_name)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        P::ScopeMoved(x) => {
            if let (Some(s), Some(p)) = (&x.scope, &x.new_parent) {
                sqlx::query("UPDATE notifications_p_scopes SET parent_id = $2 WHERE id = $1")
                    .bind(&s.id)
                    .bind(&p.id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        P::ScopeRemoved(x) => {
            if let Some(s) = &x.scope {
                delete(tx, "notifications_p_scopes", &s.id).await?;
            }
        }
        P::AssignmentCreated(x) => {
            if let Some(a) = &x.assignment {
                upsert_assignment(tx, a).await?;
                ch.windows.push(a.clone());
            }
        }
        P::AssignmentUpdated(x) => {
            if let Some(a) = &x.after {
                upsert_assignment(tx, a).await?;
                ch.windows.push(a.clone());
            }
        }
        P::AssignmentExtended(x) => {
            if let Some(a) = &x.assignment {
                upsert_assignment(tx, a).await?;
                ch.windows.push(a.clone());
            }
        }
        P::AssignmentRenewed(x) => {
            if let Some(a) = &x.assignment {
                upsert_assignment(tx, a).await?;
                ch.windows.push(a.clone());
            }
        }
        P::AssignmentRemoved(x) => {
            if let Some(a) = &x.assignment {
                delete(tx, "notifications_p_assignments", &a.id).await?;
                ch.gone.push(a.id.clone());
            }
        }
        P::AssignmentExpired(x) => {
            if let Some(a) = &x.assignment {
                delete(tx, "notifications_p_assignments", &a.id).await?;
                ch.gone.push(a.id.clone());
            }
        }
        P::InstanceActivated(x) => {
            if let Some(i) = &x.instance {
                upsert_instance(tx, i).await?;
                let at = ts(i.start_time.as_ref())
                    .or_else(|| ts(e.meta.as_ref().and_then(|m| m.occurred_at.as_ref())))
                    .unwrap_or(0);
                sqlx::query(
                    "INSERT INTO notifications_p_activations (instance_id, request_id, principal_id, role_id, role_name, scope_id, activated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (instance_id) DO NOTHING",
                )
                .bind(&i.id)
                .bind(&i.request_id)
                .bind(i.principal.as_ref().map_or("", |p| p.id.as_str()))
                .bind(i.role.as_ref().map_or("", |p| p.id.as_str()))
                .bind(i.role.as_ref().map_or("", |p| p.display_name.as_str()))
                .bind(i.scope.as_ref().map_or("/", |p| p.id.as_str()))
                .bind(at)
                .execute(&mut **tx)
                .await?;
            }
        }
        P::InstanceExtended(x) => {
            if let Some(i) = &x.instance {
                upsert_instance(tx, i).await?;
            }
        }
        P::InstanceDeactivated(x) => {
            if let Some(i) = &x.instance {
                delete(tx, "notifications_p_instances", &i.id).await?;
            }
        }
        P::InstanceExpired(x) => {
            if let Some(i) = &x.instance {
                delete(tx, "notifications_p_instances", &i.id).await?;
            }
        }
        P::RoleSettingsChanged(x) => {
            let role_id = x.role.as_ref().map_or("", |r| r.id.as_str());
            let scope_id = x.scope.as_ref().map_or("", |s| s.id.as_str());
            match &x.after {
                Some(after) => {
                    sqlx::query(
                        "INSERT INTO notifications_p_role_settings (role_id, scope_id, body) VALUES ($1, $2, $3) \
                         ON CONFLICT (role_id, scope_id) DO UPDATE SET body = excluded.body",
                    )
                    .bind(role_id)
                    .bind(scope_id)
                    .bind(after.encode_to_vec())
                    .execute(&mut **tx)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "DELETE FROM notifications_p_role_settings WHERE role_id = $1 AND scope_id = $2",
                    )
                    .bind(role_id)
                    .bind(scope_id)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        P::DriftObserved(x) => {
            if let Some(d) = &x.drift_item
                && d.kind() == asg::DriftKind::GrantedOutsideTenure
            {
                sqlx::query(
                    "INSERT INTO notifications_p_drift (id, body) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                )
                .bind(&d.id)
                .bind(d.encode_to_vec())
                .execute(&mut **tx)
                .await?;
            }
        }
        P::DriftResolved(x) => {
            if let Some(d) = &x.drift_item {
                delete(tx, "notifications_p_drift", &d.id).await?;
            }
        }
    }
    Ok(ch)
}

/// What an event changed that reminders care about.
#[derive(Debug, Default)]
pub struct Changed {
    /// Assignments with a new or changed window.
    pub windows: Vec<asg::Assignment>,
    /// Assignments that went away.
    pub gone: Vec<String>,
}

/// A principal's reference and address.
pub async fn principal_ref(
    tx: &mut Tx,
    id: &str,
) -> ApiResult<Option<(common::PrincipalRef, String, bool)>> {
    let row = sqlx::query(
        "SELECT type, display_name, upn, email, enabled FROM notifications_p_principals WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let t: i64 = row.try_get("type")?;
    let upn: String = row.try_get("upn")?;
    let email: String = row.try_get("email")?;
    let enabled: i64 = row.try_get("enabled")?;
    let address = if email.is_empty() && upn.contains('@') {
        upn.clone()
    } else {
        email
    };
    Ok(Some((
        common::PrincipalRef {
            id: id.to_owned(),
            r#type: i32::try_from(t).unwrap_or(0),
            display_name: row.try_get("display_name")?,
            user_principal_name: upn,
        },
        address,
        enabled != 0,
    )))
}

/// The principal and, for groups, its transitive members (users and service
/// principals), each with its address; disabled principals are left out.
pub async fn expand(tx: &mut Tx, id: &str) -> ApiResult<Vec<(common::PrincipalRef, String)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut todo = vec![id.to_owned()];
    while let Some(p) = todo.pop() {
        if !seen.insert(p.clone()) || seen.len() > 10_000 {
            continue;
        }
        let Some((r, addr, enabled)) = principal_ref(tx, &p).await? else {
            continue;
        };
        if r.r#type == common::PrincipalType::Group as i32 {
            let rows =
                sqlx::query("SELECT member_id FROM notifications_p_members WHERE group_id = $1")
                    .bind(&p)
                    .fetch_all(&mut **tx)
                    .await?;
            for row in rows {
                todo.push(row.try_get("member_id")?);
            }
        } else if enabled {
            out.push((r, addr));
        }
    }
    Ok(out)
}

/// Like [`expand`] for a principal named in a source event: when this context's
/// projection of the assignments stream has not taken the principal in yet (the
/// consumers of the streams run independently, so another context's event can come
/// first), the address the event itself carries (a user principal name) is used.
pub async fn expand_ref(
    tx: &mut Tx,
    r: &common::PrincipalRef,
) -> ApiResult<Vec<(common::PrincipalRef, String)>> {
    if principal_ref(tx, &r.id).await?.is_some() {
        return expand(tx, &r.id).await;
    }
    if r.r#type != common::PrincipalType::Group as i32 && r.user_principal_name.contains('@') {
        return Ok(vec![(r.clone(), r.user_principal_name.clone())]);
    }
    Ok(vec![])
}

/// `scope` and its ancestors up to "/".
pub async fn ancestors(tx: &mut Tx, scope: &str) -> ApiResult<Vec<String>> {
    let mut out = vec![];
    let mut cur = if scope.is_empty() {
        "/".to_owned()
    } else {
        scope.to_owned()
    };
    for _ in 0..64 {
        out.push(cur.clone());
        if cur == "/" {
            return Ok(out);
        }
        let parent: Option<String> =
            sqlx::query_scalar("SELECT parent_id FROM notifications_p_scopes WHERE id = $1")
                .bind(&cur)
                .fetch_optional(&mut **tx)
                .await?;
        cur = match parent {
            Some(p) if !p.is_empty() => p,
            _ => "/".to_owned(),
        };
    }
    if !out.iter().any(|s| s == "/") {
        out.push("/".to_owned());
    }
    Ok(out)
}

/// The holders (principal ids, possibly groups) of `roles` at any of `scopes` now:
/// active assignments and activations, and eligible assignments when asked; with the
/// reason for each.
pub async fn holders(
    tx: &mut Tx,
    roles: &[String],
    scopes: &[String],
    include_eligible: bool,
    now: DateTime<Utc>,
) -> ApiResult<Vec<(String, String)>> {
    let now = to_micros(now);
    let mut out = Vec::new();
    let rows = sqlx::query(
        "SELECT type, principal_id, role_id, scope_id, start_at, end_at FROM notifications_p_assignments",
    )
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let role: String = row.try_get("role_id")?;
        let scope: String = row.try_get("scope_id")?;
        let t: i64 = row.try_get("type")?;
        let start: i64 = row.try_get("start_at")?;
        let end: Option<i64> = row.try_get("end_at")?;
        let eligible = t == common::AssignmentType::Eligible as i64;
        if !roles.contains(&role) || !scopes.contains(&scope) || (eligible && !include_eligible) {
            continue;
        }
        if start > now || end.is_some_and(|e| e <= now) {
            continue;
        }
        let kind = if eligible { "eligible" } else { "active" };
        out.push((
            row.try_get("principal_id")?,
            format!("{kind} {role} at {scope}"),
        ));
    }
    let rows = sqlx::query(
        "SELECT principal_id, role_id, scope_id, end_at FROM notifications_p_instances",
    )
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let role: String = row.try_get("role_id")?;
        let scope: String = row.try_get("scope_id")?;
        let end: Option<i64> = row.try_get("end_at")?;
        if roles.contains(&role) && scopes.contains(&scope) && end.is_none_or(|e| e > now) {
            out.push((
                row.try_get("principal_id")?,
                format!("activated {role} at {scope}"),
            ));
        }
    }
    Ok(out)
}

/// The stored notification rules of a role-settings layer ("" role for the defaults).
pub async fn role_settings_rules(
    tx: &mut Tx,
    role_id: &str,
    scope_id: &str,
) -> ApiResult<Vec<common::NotificationRule>> {
    let body: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT body FROM notifications_p_role_settings WHERE role_id = $1 AND scope_id = $2",
    )
    .bind(role_id)
    .bind(scope_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(body
        .and_then(|b| asg::RoleSettings::decode(b.as_slice()).ok())
        .map(|s| s.notification_rules)
        .unwrap_or_default())
}

/// Loads what alert evaluation needs.
pub async fn world(tx: &mut Tx, now: DateTime<Utc>) -> ApiResult<World> {
    load_world(tx, now, None).await
}

/// Loads the part of the world about some principals' holding and use of some roles,
/// one (principal, role) pair each: the principals, the roles, each principal's
/// assignments and activations of its pair's role. Enough for the kinds an activation
/// affects ("activated too frequently", "administrators aren't using their privileged
/// roles") about those pairs; no role settings, drift or break-glass uses. Reads by
/// index, not the whole projection.
pub async fn world_of(
    tx: &mut Tx,
    now: DateTime<Utc>,
    pairs: &BTreeSet<(String, String)>,
) -> ApiResult<World> {
    load_world(tx, now, Some(pairs)).await
}

async fn load_world(
    tx: &mut Tx,
    now: DateTime<Utc>,
    focus: Option<&BTreeSet<(String, String)>>,
) -> ApiResult<World> {
    let mut w = World {
        now,
        ..World::default()
    };
    let principals = match focus {
        None => sqlx::query(
            "SELECT id, type, display_name, upn, enabled, last_sign_in FROM notifications_p_principals",
        )
        .fetch_all(&mut **tx)
        .await?,
        Some(pairs) => {
            let ids: BTreeSet<&str> = pairs.iter().map(|(p, _)| p.as_str()).collect();
            let mut rows = Vec::with_capacity(ids.len());
            for p in ids {
                rows.extend(sqlx::query(
                    "SELECT id, type, display_name, upn, enabled, last_sign_in FROM notifications_p_principals WHERE id = $1",
                )
                .bind(p)
                .fetch_optional(&mut **tx)
                .await?);
            }
            rows
        }
    };
    for row in principals {
        let id: String = row.try_get("id")?;
        let t: i64 = row.try_get("type")?;
        let enabled: i64 = row.try_get("enabled")?;
        let last: Option<i64> = row.try_get("last_sign_in")?;
        w.principals.insert(
            id.clone(),
            PrincipalInfo {
                reference: common::PrincipalRef {
                    id,
                    r#type: i32::try_from(t).unwrap_or(0),
                    display_name: row.try_get("display_name")?,
                    user_principal_name: row.try_get("upn")?,
                },
                enabled: enabled != 0,
                last_sign_in: last.map(from_micros),
            },
        );
    }
    let mut role_names: HashMap<String, String> = HashMap::new();
    for row in sqlx::query("SELECT id, display_name, highly_privileged FROM notifications_p_roles")
        .fetch_all(&mut **tx)
        .await?
    {
        let id: String = row.try_get("id")?;
        let hp: i64 = row.try_get("highly_privileged")?;
        if hp != 0 {
            w.highly_privileged.insert(id.clone());
        }
        role_names.insert(id, row.try_get("display_name")?);
    }
    let mut eligible_roles: BTreeSet<(String, String)> = BTreeSet::new();
    let assignments = match focus {
        None => {
            sqlx::query("SELECT body FROM notifications_p_assignments")
                .fetch_all(&mut **tx)
                .await?
        }
        Some(pairs) => {
            let mut rows = Vec::new();
            for (p, r) in pairs {
                rows.extend(sqlx::query(
                    "SELECT body FROM notifications_p_assignments WHERE principal_id = $1 AND role_id = $2",
                )
                .bind(p)
                .bind(r)
                .fetch_all(&mut **tx)
                .await?);
            }
            rows
        }
    };
    for row in assignments {
        let body: Vec<u8> = row.try_get("body")?;
        let Ok(a) = asg::Assignment::decode(body.as_slice()) else {
            continue;
        };
        let eligible = a.assignment_type == common::AssignmentType::Eligible as i32;
        let role = a.role.clone().unwrap_or_default();
        if eligible {
            eligible_roles.insert((role.id.clone(), role.display_name.clone()));
        }
        w.assignments.push(HeldAssignment {
            id: a.id.clone(),
            eligible,
            principal_id: a
                .principal
                .as_ref()
                .map(|p| p.id.clone())
                .unwrap_or_default(),
            role,
            scope: a.scope.clone().unwrap_or_default(),
            start: a.start_time.as_ref().and_then(from_proto).unwrap_or(now),
            end: if a.permanent {
                None
            } else {
                a.end_time.as_ref().and_then(from_proto)
            },
        });
    }
    let activations = match focus {
        None => sqlx::query(
            "SELECT request_id, principal_id, role_id, role_name, scope_id, activated_at FROM notifications_p_activations",
        )
        .fetch_all(&mut **tx)
        .await?,
        Some(pairs) => {
            let mut rows = Vec::new();
            for (p, r) in pairs {
                rows.extend(sqlx::query(
                    "SELECT request_id, principal_id, role_id, role_name, scope_id, activated_at FROM notifications_p_activations \
                     WHERE principal_id = $1 AND role_id = $2",
                )
                .bind(p)
                .bind(r)
                .fetch_all(&mut **tx)
                .await?);
            }
            rows
        }
    };
    for row in activations {
        let at: i64 = row.try_get("activated_at")?;
        w.activations.push(Activation {
            request_id: row.try_get("request_id")?,
            principal_id: row.try_get("principal_id")?,
            role: common::RoleRef {
                id: row.try_get("role_id")?,
                display_name: row.try_get("role_name")?,
            },
            scope_id: row.try_get("scope_id")?,
            at: from_micros(at),
        });
    }
    if focus.is_some() {
        // What one principal's use of one role needs ends here (see `world_of`).
        return Ok(w);
    }
    // The effective "require MFA on activation" of every role with eligible holders:
    // the role's override, else the organisation defaults, else the built-in (true).
    let mut settings: HashMap<String, asg::RoleSettings> = HashMap::new();
    for row in sqlx::query("SELECT role_id, scope_id, body FROM notifications_p_role_settings")
        .fetch_all(&mut **tx)
        .await?
    {
        let scope: String = row.try_get("scope_id")?;
        if !scope.is_empty() {
            continue;
        }
        let body: Vec<u8> = row.try_get("body")?;
        if let Ok(s) = asg::RoleSettings::decode(body.as_slice()) {
            settings.insert(row.try_get("role_id")?, s);
        }
    }
    let mfa_of = |s: Option<&asg::RoleSettings>| {
        s.and_then(|s| s.activation.as_ref())
            .and_then(|a| a.require_mfa)
    };
    let default_mfa = mfa_of(settings.get("")).unwrap_or(true);
    for (id, name) in eligible_roles {
        let mfa = mfa_of(settings.get(&id)).unwrap_or(default_mfa);
        let name = role_names.get(&id).cloned().unwrap_or(name);
        w.roles_mfa.insert(
            id.clone(),
            (
                common::RoleRef {
                    id,
                    display_name: name,
                },
                mfa,
            ),
        );
    }
    for row in sqlx::query("SELECT body FROM notifications_p_drift")
        .fetch_all(&mut **tx)
        .await?
    {
        let body: Vec<u8> = row.try_get("body")?;
        if let Ok(d) = asg::DriftItem::decode(body.as_slice()) {
            w.drift.push(d);
        }
    }
    for row in sqlx::query("SELECT principal_id, used_at, detail FROM notifications_p_break_glass")
        .fetch_all(&mut **tx)
        .await?
    {
        let at: i64 = row.try_get("used_at")?;
        w.uses.push((
            row.try_get("principal_id")?,
            from_micros(at),
            row.try_get("detail")?,
        ));
    }
    Ok(w)
}

/// Records a use of a principal (for BREAK_GLASS_ACCOUNT_USED).
pub async fn record_use(
    tx: &mut Tx,
    principal: &str,
    at: DateTime<Utc>,
    detail: &str,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO notifications_p_break_glass (principal_id, used_at, detail) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(principal)
    .bind(to_micros(at))
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
