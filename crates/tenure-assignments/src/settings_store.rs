//! Storage of role settings (table `assignments_role_settings`: one row per layer, the
//! settings an encoded [`pb::RoleSettings`] layer) and the effective settings of a role
//! at a scope, which the assignments and the role settings services both use.

use std::collections::BTreeMap;

use prost::Message as _;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use tenure_platform::clock::{from_micros, to_micros, to_proto};
use tenure_platform::events::UnitOfWork;
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{self as common, AssignmentType, PrincipalType, SettingOrigin};

use crate::core::{Core, PRIVILEGED_ROLE_ADMINISTRATOR};
use crate::settings_rules;

/// A stored layer: the organisation defaults (`role_id` and `scope_id` empty), a role's
/// override (`scope_id` empty) or a resource role's override at a scope.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLayer {
    /// The role, empty for the defaults.
    pub role_id: String,
    /// The scope, empty for the defaults and role-wide overrides.
    pub scope_id: String,
    /// The settings it sets (unset = inherited).
    pub settings: pb::RoleSettings,
    /// Who changed it last.
    pub updated_by: String,
    /// When (µs).
    pub updated_at: i64,
    /// Optimistic concurrency version (the etag).
    pub version: i64,
}

impl StoredLayer {
    /// The layer as the API shows it (approver names not yet filled).
    pub fn to_proto(&self) -> pb::RoleSettings {
        pb::RoleSettings {
            role_id: self.role_id.clone(),
            scope_id: self.scope_id.clone(),
            update_time: Some(to_proto(from_micros(self.updated_at))),
            updated_by: self.updated_by.clone(),
            etag: self.version.to_string(),
            ..settings_rules::layer_content(&self.settings)
        }
    }
}

fn layer_from_row(r: &AnyRow) -> ApiResult<StoredLayer> {
    let bytes: Vec<u8> = r.try_get("settings")?;
    Ok(StoredLayer {
        role_id: r.try_get("role_id")?,
        scope_id: r.try_get("scope_id")?,
        settings: pb::RoleSettings::decode(bytes.as_slice()).map_err(|e| {
            ApiError::Internal(anyhow::Error::new(e).context("decoding role settings"))
        })?,
        updated_by: r.try_get("updated_by")?,
        updated_at: r.try_get("updated_at")?,
        version: r.try_get("version")?,
    })
}

const COLUMNS: &str = "role_id, scope_id, settings, updated_by, updated_at, version";

/// Reads one layer.
pub async fn get_layer(
    core: &Core,
    role_id: &str,
    scope_id: &str,
) -> ApiResult<Option<StoredLayer>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM assignments_role_settings WHERE role_id = $1 AND scope_id = $2"
    ))
    .bind(role_id)
    .bind(scope_id)
    .fetch_optional(core.db.reader())
    .await?;
    row.as_ref().map(layer_from_row).transpose()
}

/// Reads one layer inside a unit of work.
pub async fn get_layer_tx(
    uow: &mut UnitOfWork<pb::Event>,
    role_id: &str,
    scope_id: &str,
) -> ApiResult<Option<StoredLayer>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM assignments_role_settings WHERE role_id = $1 AND scope_id = $2"
    ))
    .bind(role_id)
    .bind(scope_id)
    .fetch_optional(&mut **uow.tx())
    .await?;
    row.as_ref().map(layer_from_row).transpose()
}

/// Writes a layer: inserts it when `expected_version` is 0, else updates it if its
/// version is still `expected_version`. ABORTED when a concurrent change won.
pub async fn put_layer(
    uow: &mut UnitOfWork<pb::Event>,
    layer: &StoredLayer,
    expected_version: i64,
) -> ApiResult<()> {
    let bytes = settings_rules::layer_content(&layer.settings).encode_to_vec();
    let done = if expected_version == 0 {
        sqlx::query(
            "INSERT INTO assignments_role_settings (role_id, scope_id, settings, updated_by, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (role_id, scope_id) DO NOTHING",
        )
        .bind(&layer.role_id)
        .bind(&layer.scope_id)
        .bind(bytes)
        .bind(&layer.updated_by)
        .bind(layer.updated_at)
        .bind(layer.version)
        .execute(&mut **uow.tx())
        .await?
    } else {
        sqlx::query(
            "UPDATE assignments_role_settings SET settings = $1, updated_by = $2, updated_at = $3, version = $4 \
             WHERE role_id = $5 AND scope_id = $6 AND version = $7",
        )
        .bind(bytes)
        .bind(&layer.updated_by)
        .bind(layer.updated_at)
        .bind(layer.version)
        .bind(&layer.role_id)
        .bind(&layer.scope_id)
        .bind(expected_version)
        .execute(&mut **uow.tx())
        .await?
    };
    if done.rows_affected() != 1 {
        return Err(ApiError::Aborted(
            "the role settings were changed concurrently; read them again and retry".into(),
        ));
    }
    Ok(())
}

/// Deletes a layer.
pub async fn delete_layer(
    uow: &mut UnitOfWork<pb::Event>,
    role_id: &str,
    scope_id: &str,
) -> ApiResult<()> {
    sqlx::query("DELETE FROM assignments_role_settings WHERE role_id = $1 AND scope_id = $2")
        .bind(role_id)
        .bind(scope_id)
        .execute(&mut **uow.tx())
        .await?;
    Ok(())
}

/// The overrides (not the defaults), by role then scope, after `(role, scope)`, at most
/// `limit`, optionally of one role.
pub async fn list_layers(
    core: &Core,
    role_id: &str,
    after: Option<(&str, &str)>,
    limit: usize,
) -> ApiResult<Vec<StoredLayer>> {
    let (ar, asc) = after.unwrap_or(("", ""));
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM assignments_role_settings WHERE role_id <> '' AND ($1 = '' OR role_id = $1) \
         AND (role_id > $2 OR (role_id = $2 AND scope_id > $3)) ORDER BY role_id, scope_id LIMIT $4"
    ))
    .bind(role_id)
    .bind(ar)
    .bind(asc)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(core.db.reader())
    .await?;
    rows.iter().map(layer_from_row).collect()
}

/// Checks that a role exists and, when `scope_id` is given, that the scope exists.
/// Returns whether the role is a resource role.
pub fn check_role_and_scope(core: &Core, role_id: &str, scope_id: &str) -> ApiResult<bool> {
    let m = core.model();
    if role_id.is_empty() {
        return Err(ApiError::invalid("role_id", "is required"));
    }
    let Some(role) = m.roles.get(role_id) else {
        return Err(ApiError::not_found("role", role_id));
    };
    if !scope_id.is_empty() && !m.scopes.contains_key(scope_id) {
        return Err(ApiError::not_found("scope", scope_id));
    }
    Ok(role.kind == pb::RoleKind::Resource)
}

/// The effective settings of `role_id` at `scope_id` ("" means "/"): every field set,
/// from the first layer that sets it (the role's override at exactly that scope, the
/// role's override, the organisation defaults, the built-in defaults), and where each
/// value came from (see `GetEffectiveRoleSettingsResponse.origins`). NOT_FOUND for an
/// unknown role or scope. `role_id` and `scope_id` of the result are as asked ("/" for
/// an empty scope); approver names are filled from the directory.
pub async fn effective_settings(
    core: &Core,
    role_id: &str,
    scope_id: &str,
) -> ApiResult<(pb::RoleSettings, BTreeMap<String, SettingOrigin>)> {
    let scope_id = if scope_id.is_empty() { "/" } else { scope_id };
    let resource = check_role_and_scope(core, role_id, scope_id)?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM assignments_role_settings \
         WHERE (role_id = '' AND scope_id = '') OR (role_id = $1 AND (scope_id = '' OR scope_id = $2))"
    ))
    .bind(role_id)
    .bind(scope_id)
    .fetch_all(core.db.reader())
    .await?;
    let layers = rows
        .iter()
        .map(layer_from_row)
        .collect::<ApiResult<Vec<_>>>()?;
    let find = |r: &str, s: &str| layers.iter().find(|l| l.role_id == r && l.scope_id == s);
    let mut ordered: Vec<(SettingOrigin, &pb::RoleSettings)> = Vec::with_capacity(3);
    if resource && let Some(l) = find(role_id, scope_id) {
        ordered.push((SettingOrigin::RoleAtScope, &l.settings));
    }
    if let Some(l) = find(role_id, "") {
        ordered.push((SettingOrigin::Role, &l.settings));
    }
    if let Some(l) = find("", "") {
        ordered.push((SettingOrigin::OrganisationDefault, &l.settings));
    }
    let (mut eff, origins) = settings_rules::merge(&ordered);
    eff.role_id = role_id.to_owned();
    eff.scope_id = scope_id.to_owned();
    fill_refs(core, &mut eff);
    Ok((eff, origins))
}

/// Fills the names and types of the approvers a layer names, from the directory.
pub fn fill_refs(core: &Core, s: &mut pb::RoleSettings) {
    let Some(ap) = s.activation.as_mut().and_then(|a| a.approval.as_mut()) else {
        return;
    };
    for st in &mut ap.stages {
        for p in st
            .approvers
            .iter_mut()
            .chain(st.escalation_approvers.iter_mut())
        {
            *p = core.principal_ref(&p.id);
        }
    }
}

/// The default approvers at `scope_id`: the principals holding Privileged Role
/// Administrator active at the scope or above now, groups resolved to their enabled
/// transitive members (users and service principals), by id.
pub fn default_approvers(core: &Core, scope_id: &str) -> Vec<common::PrincipalRef> {
    let now = to_micros(core.clock.now());
    let ids: Vec<String> = {
        let m = core.model();
        let mut ids = std::collections::BTreeSet::new();
        for g in m.role_grants_at(PRIVILEGED_ROLE_ADMINISTRATOR, scope_id, now, false) {
            if g.assignment_type != AssignmentType::Active {
                continue;
            }
            let Some(p) = m.principals.get(&g.principal) else {
                continue;
            };
            if !p.enabled {
                continue;
            }
            if p.principal_type == PrincipalType::Group {
                for member in m.transitive_members(&g.principal) {
                    if m.principals
                        .get(&member)
                        .is_some_and(|x| x.enabled && x.principal_type != PrincipalType::Group)
                    {
                        ids.insert(member.to_string());
                    }
                }
            } else {
                ids.insert(g.principal.to_string());
            }
        }
        ids.into_iter().collect()
    };
    ids.iter().map(|id| core.principal_ref(id)).collect()
}
