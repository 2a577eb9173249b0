//! `RoleDefinitionsService`: the built-in catalogue (read-only, seeded by
//! [`crate::catalogue`]) and custom roles.
//!
//! Reads are open to every authenticated caller. Writes need "tenure/roles/write" at "/"
//! (Privileged Role Administrator holds `tenure/*`).

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::Row as _;
use tenure_platform::auth::Caller;
use tenure_platform::clock::{to_micros, to_proto};
use tenure_platform::events::{NewEvent, UnitOfWork};
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::assignments::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::principals::page;
use crate::api::scopes::resolve_scope;
use crate::core::{Core, Page};
use crate::directory_rules as rules;
use crate::model::{Id, permission_matches};
use crate::store;

/// The permission to create, change and delete custom roles.
pub const WRITE_PERMISSION: &str = "tenure/roles/write";

/// The update mask paths a custom role accepts.
const PATHS: &[&str] = &[
    "display_name",
    "description",
    "permissions",
    "assignable_scope_ids",
    "highly_privileged",
];

type Uow = UnitOfWork<pb::Event>;

/// The gRPC adapter of `RoleDefinitionsService`.
pub struct RolesApi {
    /// The context's core.
    pub core: Arc<Core>,
}

/// The sort key of the list: built-in first, then display name, then id.
fn list_key(r: &pb::RoleDefinition) -> String {
    format!(
        "{}\u{1}{}\u{1}{}",
        u8::from(!r.built_in),
        r.display_name,
        r.id
    )
}

async fn load_tx(uow: &mut Uow, id: &str) -> ApiResult<pb::RoleDefinition> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM assignments_roles WHERE id = $1",
        store::ROLE_COLUMNS
    ))
    .bind(id)
    .fetch_optional(&mut **uow.tx())
    .await?;
    row.as_ref()
        .map(store::role_from_row)
        .transpose()?
        .ok_or_else(|| ApiError::not_found("role", id))
}

/// ALREADY_EXISTS when another role has this display name (case-insensitive).
async fn name_free(uow: &mut Uow, name: &str, except: &str) -> ApiResult<()> {
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT id FROM assignments_roles WHERE lower(display_name) = lower($1) AND id <> $2",
    )
    .bind(name)
    .bind(except)
    .fetch_optional(&mut **uow.tx())
    .await?;
    match taken {
        Some(_) => Err(ApiError::AlreadyExists {
            kind: "role with display name",
            id: name.to_owned(),
        }),
        None => Ok(()),
    }
}

/// The scopes of live assignments and activations of `role` (not removed, not ended).
async fn live_scopes(uow: &mut Uow, role: &str) -> ApiResult<Vec<String>> {
    let now_us = to_micros(uow.now());
    let mut out = Vec::new();
    for sql in [
        "SELECT scope_id FROM assignments_assignments WHERE role_id = $1 AND removed_at IS NULL \
         AND (end_at IS NULL OR end_at > $2)",
        "SELECT scope_id FROM assignments_activations WHERE role_id = $1 AND ended_at IS NULL AND end_at > $2",
    ] {
        for row in sqlx::query(sql)
            .bind(role)
            .bind(now_us)
            .fetch_all(&mut **uow.tx())
            .await?
        {
            out.push(row.try_get::<String, _>("scope_id")?);
        }
    }
    Ok(out)
}

/// Checks the permissions of a role (field prefix `f`).
fn check_permissions(v: &mut Violations, f: &str, permissions: &[String]) {
    if permissions.is_empty() || permissions.len() > rules::MAX_PERMISSIONS {
        v.add(f, "must hold 1 to 500 permissions");
        return;
    }
    let mut seen = HashSet::new();
    for (i, p) in permissions.iter().enumerate() {
        if let Some(why) = rules::permission_problem(p) {
            v.add(format!("{f}[{i}]"), why);
        } else if !seen.insert(p.as_str()) {
            v.add(format!("{f}[{i}]"), "is duplicated");
        }
    }
}

impl RolesApi {
    /// Resolves assignable scopes to their stored ids: empty means ["/"]; directory roles
    /// only at "/"; each scope must exist.
    fn assignable_scopes(&self, kind: pb::RoleKind, given: &[String]) -> ApiResult<Vec<String>> {
        const F: &str = "role_definition.assignable_scope_ids";
        if given.is_empty() {
            return Ok(vec!["/".to_owned()]);
        }
        let mut v = Violations::new();
        if given.len() > rules::MAX_ASSIGNABLE_SCOPES {
            v.add(F, "must hold at most 100 scopes");
        }
        for (i, s) in given.iter().enumerate() {
            if let Some(why) = rules::text_problem(s, true, rules::MAX_SCOPE_ID_LEN) {
                v.add(format!("{F}[{i}]"), why);
            } else if kind == pb::RoleKind::Directory && s != "/" {
                v.add(
                    format!("{F}[{i}]"),
                    "a directory role is assignable at \"/\" only",
                );
            }
        }
        v.finish()?;
        let m = self.core.model();
        let mut out: Vec<String> = Vec::with_capacity(given.len());
        for s in given {
            let id = resolve_scope(&m, s).ok_or_else(|| ApiError::not_found("scope", s))?;
            if !out.iter().any(|o| **o == *id) {
                out.push(id.to_string());
            }
        }
        Ok(out)
    }

    async fn get(
        &self,
        req: &pb::GetRoleDefinitionRequest,
    ) -> ApiResult<pb::GetRoleDefinitionResponse> {
        if let Some(why) = rules::id_problem(&req.id) {
            return Err(ApiError::invalid("id", why));
        }
        let role = store::get_role(&self.core, &req.id)
            .await?
            .ok_or_else(|| ApiError::not_found("role", &req.id))?;
        Ok(pb::GetRoleDefinitionResponse {
            role_definition: Some(role),
        })
    }

    async fn list(
        &self,
        req: &pb::ListRoleDefinitionsRequest,
    ) -> ApiResult<pb::ListRoleDefinitionsResponse> {
        let mut v = Violations::new();
        v.check(
            pb::RoleKind::try_from(req.kind).is_err(),
            "kind",
            "is not a known role kind",
        );
        v.check(
            pb::BuiltInFilter::try_from(req.built_in).is_err(),
            "built_in",
            "is not a known filter",
        );
        if let Some(why) = rules::text_problem(&req.search, false, rules::MAX_NAME_LEN) {
            v.add("search", why);
        }
        if let Some(why) = rules::text_problem(&req.permission, false, rules::MAX_PERMISSION_LEN) {
            v.add("permission", why);
        }
        v.finish()?;
        let page: Page = page(req.page_size, &req.page_token)?;
        let rows = sqlx::query(&format!(
            "SELECT {} FROM assignments_roles",
            store::ROLE_COLUMNS
        ))
        .fetch_all(self.core.db.reader())
        .await?;
        let search = req.search.to_lowercase();
        let mut roles: Vec<pb::RoleDefinition> = rows
            .iter()
            .map(store::role_from_row)
            .collect::<ApiResult<Vec<_>>>()?
            .into_iter()
            .filter(|r| req.kind == 0 || r.kind == req.kind)
            .filter(|r| match req.built_in() {
                pb::BuiltInFilter::Unspecified => true,
                pb::BuiltInFilter::BuiltIn => r.built_in,
                pb::BuiltInFilter::Custom => !r.built_in,
            })
            .filter(|r| search.is_empty() || r.display_name.to_lowercase().contains(&search))
            .filter(|r| {
                req.permission.is_empty()
                    || r.permissions
                        .iter()
                        .any(|p| permission_matches(p, &req.permission))
            })
            .collect();
        roles.sort_by_cached_key(list_key);
        let (role_definitions, next_page_token) = page.cut(roles, list_key);
        Ok(pb::ListRoleDefinitionsResponse {
            role_definitions,
            next_page_token,
        })
    }

    async fn create(
        &self,
        caller: &Caller,
        req: pb::CreateRoleDefinitionRequest,
    ) -> ApiResult<pb::CreateRoleDefinitionResponse> {
        const METHOD: &str = "CreateRoleDefinition";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        core.require(caller, WRITE_PERMISSION, "/")?;
        let Some(given) = req.role_definition else {
            return Err(ApiError::invalid("role_definition", "is required"));
        };
        let mut v = Violations::new();
        if let Some(why) = rules::text_problem(&given.display_name, true, rules::MAX_NAME_LEN) {
            v.add("role_definition.display_name", why);
        }
        if let Some(why) =
            rules::text_problem(&given.description, false, rules::MAX_DESCRIPTION_LEN)
        {
            v.add("role_definition.description", why);
        }
        check_permissions(&mut v, "role_definition.permissions", &given.permissions);
        let kind = match pb::RoleKind::try_from(given.kind) {
            Ok(k) if k != pb::RoleKind::Unspecified => k,
            _ => {
                v.add("role_definition.kind", "must be directory or resource");
                pb::RoleKind::Unspecified
            }
        };
        if !req.role_definition_id.is_empty()
            && let Some(why) = rules::role_id_problem(&req.role_definition_id)
        {
            v.add("role_definition_id", why);
        }
        v.finish()?;
        let scopes = self.assignable_scopes(kind, &given.assignable_scope_ids)?;
        let id = if req.role_definition_id.is_empty() {
            format!("custom-{}", uuid::Uuid::new_v4())
        } else {
            req.role_definition_id.clone()
        };
        let mut uow = core.begin().await?;
        let now = uow.now();
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM assignments_roles WHERE id = $1")
                .bind(&id)
                .fetch_optional(&mut **uow.tx())
                .await?;
        if exists.is_some() {
            return Err(ApiError::AlreadyExists { kind: "role", id });
        }
        name_free(&mut uow, &given.display_name, &id).await?;
        let role = pb::RoleDefinition {
            id: id.clone(),
            display_name: given.display_name,
            description: given.description,
            kind: kind.into(),
            built_in: false,
            permissions: given.permissions,
            assignable_scope_ids: scopes,
            highly_privileged: given.highly_privileged,
            create_time: Some(to_proto(now)),
            update_time: Some(to_proto(now)),
            etag: "1".to_owned(),
        };
        store::insert_role(&mut uow, &role).await?;
        uow.emit(NewEvent::new(
            pb::RoleDefinitionCreated {
                role_definition: Some(role.clone()),
            },
            me,
            &id,
        ));
        let resp = pb::CreateRoleDefinitionResponse {
            role_definition: Some(role),
        };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }

    async fn update(
        &self,
        caller: &Caller,
        req: pb::UpdateRoleDefinitionRequest,
    ) -> ApiResult<pb::UpdateRoleDefinitionResponse> {
        const METHOD: &str = "UpdateRoleDefinition";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        core.require(caller, WRITE_PERMISSION, "/")?;
        let Some(given) = req.role_definition else {
            return Err(ApiError::invalid("role_definition", "is required"));
        };
        let mut v = Violations::new();
        if let Some(why) = rules::id_problem(&given.id) {
            v.add("role_definition.id", why);
        }
        let paths: Vec<String> = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            v.add("update_mask", "is required: name the fields to change");
        }
        for (i, p) in paths.iter().enumerate() {
            v.check(
                !PATHS.contains(&p.as_str()),
                format!("update_mask.paths[{i}]"),
                format!("must be one of {}", PATHS.join(", ")),
            );
        }
        let has = |p: &str| paths.iter().any(|x| x == p);
        if has("display_name")
            && let Some(why) = rules::text_problem(&given.display_name, true, rules::MAX_NAME_LEN)
        {
            v.add("role_definition.display_name", why);
        }
        if has("description")
            && let Some(why) =
                rules::text_problem(&given.description, false, rules::MAX_DESCRIPTION_LEN)
        {
            v.add("role_definition.description", why);
        }
        if has("permissions") {
            check_permissions(&mut v, "role_definition.permissions", &given.permissions);
        }
        v.finish()?;

        let mut uow = core.begin().await?;
        let before = load_tx(&mut uow, &given.id).await?;
        if before.built_in {
            return Err(ApiError::precondition("built-in roles are read-only"));
        }
        if !given.etag.is_empty() && given.etag != before.etag {
            return Err(ApiError::Aborted(format!(
                "etag {:?} does not match the current {:?}; read the role again",
                given.etag, before.etag
            )));
        }
        let mut after = before.clone();
        if has("display_name") {
            after.display_name = given.display_name.clone();
            name_free(&mut uow, &after.display_name, &after.id).await?;
        }
        if has("description") {
            after.description = given.description.clone();
        }
        if has("permissions") {
            after.permissions = given.permissions.clone();
        }
        if has("highly_privileged") {
            after.highly_privileged = given.highly_privileged;
        }
        if has("assignable_scope_ids") {
            after.assignable_scope_ids =
                self.assignable_scopes(before.kind(), &given.assignable_scope_ids)?;
            let live = live_scopes(&mut uow, &after.id).await?;
            let outside: Vec<&String> = {
                let m = core.model();
                live.iter()
                    .filter(|s| !after.assignable_scope_ids.iter().any(|a| m.is_within(s, a)))
                    .collect()
            };
            if let Some(first) = outside.first() {
                return Err(ApiError::precondition(format!(
                    "{} assignment(s) or activation(s) of role {} are outside the new assignable scopes (the first at {first}); remove them first",
                    outside.len(),
                    after.id
                )));
            }
        }
        if after == before {
            let resp = pb::UpdateRoleDefinitionResponse {
                role_definition: Some(before),
            };
            core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
                .await?;
            core.commit(uow).await?;
            return Ok(resp);
        }
        let now = uow.now();
        let version: i64 = before.etag.parse().unwrap_or(0);
        let done = sqlx::query(
            "UPDATE assignments_roles SET display_name = $1, description = $2, highly_privileged = $3, permissions = $4, \
             assignable_scope_ids = $5, updated_at = $6, version = version + 1 WHERE id = $7 AND version = $8",
        )
        .bind(&after.display_name)
        .bind(&after.description)
        .bind(i64::from(after.highly_privileged))
        .bind(after.permissions.join("\n"))
        .bind(after.assignable_scope_ids.join("\n"))
        .bind(to_micros(now))
        .bind(&after.id)
        .bind(version)
        .execute(&mut **uow.tx())
        .await?
        .rows_affected();
        if done != 1 {
            return Err(ApiError::Aborted(
                "the role changed concurrently; read it again and retry".into(),
            ));
        }
        after.update_time = Some(to_proto(now));
        after.etag = (version + 1).to_string();
        uow.emit(NewEvent::new(
            pb::RoleDefinitionUpdated {
                before: Some(before),
                after: Some(after.clone()),
            },
            me,
            &after.id,
        ));
        let resp = pb::UpdateRoleDefinitionResponse {
            role_definition: Some(after),
        };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }

    async fn delete(
        &self,
        caller: &Caller,
        req: pb::DeleteRoleDefinitionRequest,
    ) -> ApiResult<pb::DeleteRoleDefinitionResponse> {
        const METHOD: &str = "DeleteRoleDefinition";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        core.require(caller, WRITE_PERMISSION, "/")?;
        if let Some(why) = rules::id_problem(&req.id) {
            return Err(ApiError::invalid("id", why));
        }
        let mut uow = core.begin().await?;
        let role = load_tx(&mut uow, &req.id).await?;
        if role.built_in {
            return Err(ApiError::precondition(
                "built-in roles are read-only and cannot be deleted",
            ));
        }
        if !req.etag.is_empty() && req.etag != role.etag {
            return Err(ApiError::Aborted(format!(
                "etag {:?} does not match the current {:?}; read the role again",
                req.etag, role.etag
            )));
        }
        let live = live_scopes(&mut uow, &role.id).await?;
        if !live.is_empty() {
            return Err(ApiError::precondition(format!(
                "role {} still has {} assignment(s) or activation(s) that have not ended; remove them first",
                role.id,
                live.len()
            )));
        }
        sqlx::query("DELETE FROM assignments_roles WHERE id = $1")
            .bind(&role.id)
            .execute(&mut **uow.tx())
            .await?;
        sqlx::query("DELETE FROM assignments_role_settings WHERE role_id = $1")
            .bind(&role.id)
            .execute(&mut **uow.tx())
            .await?;
        let id: Id = Id::from(role.id.as_str());
        uow.emit(NewEvent::new(
            pb::RoleDefinitionDeleted {
                role_definition: Some(role),
            },
            me,
            &*id,
        ));
        let resp = pb::DeleteRoleDefinitionResponse {};
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }
}

#[tonic::async_trait]
impl pb::role_definitions_service_server::RoleDefinitionsService for RolesApi {
    async fn get_role_definition(
        &self,
        request: Request<pb::GetRoleDefinitionRequest>,
    ) -> Result<Response<pb::GetRoleDefinitionResponse>, Status> {
        caller(&request)?;
        self.get(request.get_ref())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_role_definitions(
        &self,
        request: Request<pb::ListRoleDefinitionsRequest>,
    ) -> Result<Response<pb::ListRoleDefinitionsResponse>, Status> {
        caller(&request)?;
        self.list(request.get_ref())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn create_role_definition(
        &self,
        request: Request<pb::CreateRoleDefinitionRequest>,
    ) -> Result<Response<pb::CreateRoleDefinitionResponse>, Status> {
        let who = caller(&request)?;
        self.create(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn update_role_definition(
        &self,
        request: Request<pb::UpdateRoleDefinitionRequest>,
    ) -> Result<Response<pb::UpdateRoleDefinitionResponse>, Status> {
        let who = caller(&request)?;
        self.update(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn delete_role_definition(
        &self,
        request: Request<pb::DeleteRoleDefinitionRequest>,
    ) -> Result<Response<pb::DeleteRoleDefinitionResponse>, Status> {
        let who = caller(&request)?;
        self.delete(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}
