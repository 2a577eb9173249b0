//! `ScopesService`: the directory root and the resource hierarchy (management groups,
//! nestable → subscriptions → resource groups → resources): register, rename, move,
//! remove, and import a discovered subtree in one transaction.
//!
//! Reads are open to every authenticated caller. Writes need "tenure/scopes/write" (or
//! "tenure/scopes/import") at the scope concerned or above — Privileged Role
//! Administrator holds `tenure/*` — or one of Tenure's own service principals.
//! Scope ids match case-insensitively and are stored as first registered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use sqlx::Row as _;
use tenure_platform::auth::Caller;
use tenure_platform::clock::{to_micros, to_proto};
use tenure_platform::events::{NewEvent, UnitOfWork};
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1 as common;
use tenure_proto::common::v1::ScopeType;
use tonic::{Request, Response, Status};

use crate::api::principals::page;
use crate::core::Core;
use crate::directory_rules as rules;
use crate::model::{Id, Model};
use crate::store;

/// The permission to register, rename, move and remove scopes.
pub const WRITE_PERMISSION: &str = "tenure/scopes/write";
/// The permission of discovery connectors (import, and every single-scope write).
pub const IMPORT_PERMISSION: &str = "tenure/scopes/import";
/// The most scopes per import.
pub const MAX_IMPORT: usize = 10_000;

type Uow = UnitOfWork<pb::Event>;

/// The gRPC adapter of `ScopesService`.
pub struct ScopesApi {
    /// The context's core.
    pub core: Arc<Core>,
}

/// The stored id of the scope `id` names, matched case-insensitively.
pub fn resolve_scope(m: &Model, id: &str) -> Option<Id> {
    if let Some((k, _)) = m.scopes.get_key_value(id) {
        return Some(k.clone());
    }
    let key = rules::scope_key(id);
    m.scopes
        .keys()
        .find(|k| rules::scope_key(k) == key)
        .cloned()
}

/// The scope and every scope below it, parents before children (cycles cut).
fn subtree(m: &Model, root: &str) -> Vec<Id> {
    let mut children: HashMap<&str, Vec<&Id>> = HashMap::new();
    for (id, s) in &m.scopes {
        if let Some(p) = &s.parent {
            children.entry(&**p).or_default().push(id);
        }
    }
    let Some((root, _)) = m.scopes.get_key_value(root) else {
        return Vec::new();
    };
    let mut out = vec![root.clone()];
    let mut seen: HashSet<&str> = HashSet::from([&**root]);
    let mut queue: VecDeque<&str> = VecDeque::from([&**root]);
    while let Some(s) = queue.pop_front() {
        let mut kids: Vec<&Id> = children.get(s).cloned().unwrap_or_default();
        kids.sort();
        for k in kids {
            if seen.insert(&**k) {
                out.push(k.clone());
                queue.push_back(&**k);
            }
        }
    }
    out
}

/// Requires "tenure/scopes/write" or "tenure/scopes/import" at `scope` (or above), or a
/// Tenure service.
fn require_write(core: &Core, caller: &Caller, scope: &str) -> ApiResult<()> {
    if core.is_service(caller)
        || core.has_permission(&caller.principal_id, IMPORT_PERMISSION, scope)
    {
        return Ok(());
    }
    core.require(caller, WRITE_PERMISSION, scope)
}

fn type_name(t: ScopeType) -> &'static str {
    match t {
        ScopeType::Root => "the root",
        ScopeType::ManagementGroup => "a management group",
        ScopeType::Subscription => "a subscription",
        ScopeType::ResourceGroup => "a resource group",
        ScopeType::Resource => "a resource",
        ScopeType::Unspecified => "an unspecified scope",
    }
}

fn known_scope_type(t: i32) -> bool {
    matches!(ScopeType::try_from(t), Ok(t) if t != ScopeType::Unspecified)
}

/// Reads scope rows by stored id (any order) through `uow` or the reader.
async fn load_rows(
    core: &Core,
    uow: Option<&mut Uow>,
    ids: &[&str],
) -> ApiResult<HashMap<String, pb::Scope>> {
    let mut out = HashMap::with_capacity(ids.len());
    let mut uow = uow;
    for chunk in ids.chunks(store::IN_CHUNK) {
        let sql = format!(
            "SELECT {} FROM assignments_scopes WHERE id IN ({})",
            store::SCOPE_COLUMNS,
            store::placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        let rows = match uow.as_deref_mut() {
            Some(u) => q.fetch_all(&mut **u.tx()).await?,
            None => q.fetch_all(core.db.reader()).await?,
        };
        for row in rows {
            let s = store::scope_from_row(&row)?;
            out.insert(s.id.clone(), s);
        }
    }
    Ok(out)
}

/// How many assignments (not removed, not ended) and activations (not ended) exist at
/// `scopes`, and the first scope (in the given order) that holds one.
async fn holders(uow: &mut Uow, scopes: &[Id]) -> ApiResult<(i64, Option<String>)> {
    let now_us = to_micros(uow.now());
    let mut per_scope: HashMap<String, i64> = HashMap::new();
    for chunk in scopes.chunks(store::IN_CHUNK) {
        for sql in [
            format!(
                "SELECT scope_id, COUNT(*) AS n FROM assignments_assignments WHERE removed_at IS NULL \
                 AND (end_at IS NULL OR end_at > $1) AND scope_id IN ({}) GROUP BY scope_id",
                store::placeholders(2, chunk.len())
            ),
            format!(
                "SELECT scope_id, COUNT(*) AS n FROM assignments_activations WHERE ended_at IS NULL \
                 AND end_at > $1 AND scope_id IN ({}) GROUP BY scope_id",
                store::placeholders(2, chunk.len())
            ),
        ] {
            let mut q = sqlx::query(&sql).bind(now_us);
            for id in chunk {
                q = q.bind(&**id);
            }
            for row in q.fetch_all(&mut **uow.tx()).await? {
                let s: String = row.try_get("scope_id")?;
                let n: i64 = row.try_get("n")?;
                *per_scope.entry(s).or_default() += n;
            }
        }
    }
    let total = per_scope.values().sum();
    let first = scopes
        .iter()
        .find(|s| per_scope.contains_key(&***s))
        .map(ToString::to_string);
    Ok((total, first))
}

/// Removes scopes (give them deepest first) with their role-settings overrides, one
/// `ScopeRemoved` event each.
async fn remove_scopes(core: &Core, uow: &mut Uow, ids: &[Id], actor: &str) -> ApiResult<()> {
    let refs: Vec<&str> = ids.iter().map(|i| &**i).collect();
    let rows = load_rows(core, Some(uow), &refs).await?;
    for id in ids {
        sqlx::query("DELETE FROM assignments_scopes WHERE id = $1")
            .bind(&**id)
            .execute(&mut **uow.tx())
            .await?;
        sqlx::query("DELETE FROM assignments_role_settings WHERE scope_id = $1")
            .bind(&**id)
            .execute(&mut **uow.tx())
            .await?;
        let scope = rows.get(&**id).cloned().unwrap_or_else(|| pb::Scope {
            id: id.to_string(),
            ..Default::default()
        });
        uow.emit(NewEvent::new(
            pb::ScopeRemoved { scope: Some(scope) },
            actor,
            &**id,
        ));
    }
    Ok(())
}

fn holders_refused(count: i64, at: &str, first: Option<&str>) -> ApiError {
    ApiError::precondition(format!(
        "{count} assignment(s) or activation(s) that have not ended exist at or below {at} (the first at {}); remove them first",
        first.unwrap_or(at)
    ))
}

async fn update_row(uow: &mut Uow, s: &pb::Scope) -> ApiResult<()> {
    let labels = serde_json::to_string(&s.labels).map_err(|e| ApiError::Internal(e.into()))?;
    let now = to_micros(uow.now());
    sqlx::query(
        "UPDATE assignments_scopes SET parent_id = $2, display_name = $3, labels = $4, updated_at = $5 WHERE id = $1",
    )
    .bind(&s.id)
    .bind((!s.parent_id.is_empty()).then_some(s.parent_id.as_str()))
    .bind(&s.display_name)
    .bind(labels)
    .bind(now)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

async fn insert_row(uow: &mut Uow, s: &pb::Scope) -> ApiResult<()> {
    store::insert_scope(uow, s).await.map_err(|e| match &e {
        ApiError::Internal(cause)
            if cause
                .downcast_ref::<sqlx::Error>()
                .and_then(|d| d.as_database_error())
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            ApiError::AlreadyExists {
                kind: "scope",
                id: s.id.clone(),
            }
        }
        _ => e,
    })
}

fn scope_ref(s: &pb::Scope) -> common::ScopeRef {
    common::ScopeRef {
        id: s.id.clone(),
        display_name: s.display_name.clone(),
        r#type: s.r#type,
    }
}

/// One validated item of an import.
struct Item {
    scope: pb::Scope,
    key: String,
    parent_key: String,
}

impl ScopesApi {
    async fn get(&self, req: &pb::GetScopeRequest) -> ApiResult<pb::GetScopeResponse> {
        if let Some(why) = rules::text_problem(&req.id, true, rules::MAX_SCOPE_ID_LEN) {
            return Err(ApiError::invalid("id", why));
        }
        let (id, ancestors) = {
            let m = self.core.model();
            let id =
                resolve_scope(&m, &req.id).ok_or_else(|| ApiError::not_found("scope", &req.id))?;
            let mut anc = m.ancestors(&id);
            anc.remove(0);
            anc.reverse();
            (id, anc)
        };
        let scope = store::get_scope(&self.core, &id)
            .await?
            .ok_or_else(|| ApiError::not_found("scope", &req.id))?;
        Ok(pb::GetScopeResponse {
            scope: Some(scope),
            ancestors: ancestors.iter().map(|a| self.core.scope_ref(a)).collect(),
        })
    }

    async fn list(&self, req: &pb::ListScopesRequest) -> ApiResult<pb::ListScopesResponse> {
        let mut v = Violations::new();
        let parent = if req.parent_id.is_empty() {
            "/"
        } else {
            req.parent_id.as_str()
        };
        if let Some(why) = rules::text_problem(parent, true, rules::MAX_SCOPE_ID_LEN) {
            v.add("parent_id", why);
        }
        for (i, t) in req.types.iter().enumerate() {
            v.check(
                !known_scope_type(*t),
                format!("types[{i}]"),
                "must be a known scope type",
            );
        }
        v.finish()?;
        let page = page(req.page_size, &req.page_token)?;
        let mut ids: Vec<String> = {
            let m = self.core.model();
            let parent =
                resolve_scope(&m, parent).ok_or_else(|| ApiError::not_found("scope", parent))?;
            let below: Vec<Id> = if req.recursive {
                subtree(&m, &parent).into_iter().skip(1).collect()
            } else {
                m.scopes
                    .iter()
                    .filter(|(_, s)| s.parent.as_ref() == Some(&parent))
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            below
                .into_iter()
                .filter(|id| {
                    req.types.is_empty()
                        || m.scopes
                            .get(id)
                            .is_some_and(|s| req.types.contains(&i32::from(s.scope_type)))
                })
                .map(|id| id.to_string())
                .collect()
        };
        ids.sort();
        let (ids, next_page_token) = page.cut(ids, Clone::clone);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut rows = load_rows(&self.core, None, &refs).await?;
        Ok(pb::ListScopesResponse {
            scopes: ids.iter().filter_map(|id| rows.remove(id)).collect(),
            next_page_token,
        })
    }

    async fn register(
        &self,
        caller: &Caller,
        req: pb::RegisterScopeRequest,
    ) -> ApiResult<pb::RegisterScopeResponse> {
        const METHOD: &str = "RegisterScope";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        let Some(given) = req.scope else {
            return Err(ApiError::invalid("scope", "is required"));
        };
        let mut v = Violations::new();
        let (parsed, parent) = check_scope(&mut v, "scope", &given, "/");
        v.finish()?;
        let (Some(parsed), Some(parent)) = (parsed, parent) else {
            return Err(ApiError::invalid("scope.id", "is malformed"));
        };
        if parsed.scope_type == ScopeType::Root {
            return Err(ApiError::AlreadyExists {
                kind: "scope",
                id: "/".into(),
            });
        }
        let parent = {
            let m = core.model();
            let p =
                resolve_scope(&m, &parent).ok_or_else(|| ApiError::not_found("scope", &parent))?;
            let pt = m
                .scopes
                .get(&p)
                .map_or(ScopeType::Unspecified, |s| s.scope_type);
            if !rules::fits_under(parsed.scope_type, pt) {
                return Err(ApiError::invalid(
                    "scope.parent_id",
                    format!(
                        "{} cannot be placed under {}",
                        type_name(parsed.scope_type),
                        type_name(pt)
                    ),
                ));
            }
            if let Some(existing) = resolve_scope(&m, &given.id) {
                return Err(ApiError::AlreadyExists {
                    kind: "scope",
                    id: existing.to_string(),
                });
            }
            p
        };
        require_write(core, caller, &parent)?;
        let mut uow = core.begin().await?;
        let now = uow.now();
        let scope = pb::Scope {
            id: given.id.clone(),
            parent_id: parent.to_string(),
            r#type: parsed.scope_type.into(),
            display_name: if given.display_name.is_empty() {
                parsed.name.clone()
            } else {
                given.display_name.clone()
            },
            resource_type: parsed.resource_type.clone(),
            labels: given.labels,
            create_time: Some(to_proto(now)),
            update_time: Some(to_proto(now)),
        };
        insert_row(&mut uow, &scope).await?;
        uow.emit(NewEvent::new(
            pb::ScopeRegistered {
                scope: Some(scope.clone()),
            },
            me,
            &scope.id,
        ));
        let resp = pb::RegisterScopeResponse { scope: Some(scope) };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }

    async fn rename(
        &self,
        caller: &Caller,
        req: pb::RenameScopeRequest,
    ) -> ApiResult<pb::RenameScopeResponse> {
        const METHOD: &str = "RenameScope";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        let mut v = Violations::new();
        if let Some(why) = rules::text_problem(&req.id, true, rules::MAX_SCOPE_ID_LEN) {
            v.add("id", why);
        }
        if let Some(why) = rules::text_problem(&req.display_name, true, rules::MAX_NAME_LEN) {
            v.add("display_name", why);
        }
        v.finish()?;
        let id = resolve_scope(&core.model(), &req.id)
            .ok_or_else(|| ApiError::not_found("scope", &req.id))?;
        if &*id == "/" {
            return Err(ApiError::precondition("the root scope cannot be renamed"));
        }
        require_write(core, caller, &id)?;
        let mut uow = core.begin().await?;
        let mut scope = load_rows(core, Some(&mut uow), &[&id])
            .await?
            .remove(&*id)
            .ok_or_else(|| ApiError::not_found("scope", &req.id))?;
        if scope.display_name != req.display_name {
            let previous = std::mem::replace(&mut scope.display_name, req.display_name.clone());
            scope.update_time = Some(to_proto(uow.now()));
            update_row(&mut uow, &scope).await?;
            uow.emit(NewEvent::new(
                pb::ScopeRenamed {
                    scope: Some(scope_ref(&scope)),
                    previous_display_name: previous,
                },
                me,
                &scope.id,
            ));
        }
        let resp = pb::RenameScopeResponse { scope: Some(scope) };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }

    async fn move_scope(
        &self,
        caller: &Caller,
        req: pb::MoveScopeRequest,
    ) -> ApiResult<pb::MoveScopeResponse> {
        const METHOD: &str = "MoveScope";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        let mut v = Violations::new();
        if let Some(why) = rules::text_problem(&req.id, true, rules::MAX_SCOPE_ID_LEN) {
            v.add("id", why);
        }
        if let Some(why) = rules::text_problem(&req.new_parent_id, true, rules::MAX_SCOPE_ID_LEN) {
            v.add("new_parent_id", why);
        }
        v.finish()?;
        let (id, old_parent, new_parent) = {
            let m = core.model();
            let id =
                resolve_scope(&m, &req.id).ok_or_else(|| ApiError::not_found("scope", &req.id))?;
            let np = resolve_scope(&m, &req.new_parent_id)
                .ok_or_else(|| ApiError::not_found("scope", &req.new_parent_id))?;
            let info = m
                .scopes
                .get(&id)
                .cloned()
                .ok_or_else(|| ApiError::not_found("scope", &req.id))?;
            if info.scope_type == ScopeType::Root {
                return Err(ApiError::precondition("the root scope cannot be moved"));
            }
            if !rules::movable(info.scope_type) {
                return Err(ApiError::precondition(format!(
                    "{} cannot be moved: its parent is part of its id",
                    type_name(info.scope_type)
                )));
            }
            let nt = m
                .scopes
                .get(&np)
                .map_or(ScopeType::Unspecified, |s| s.scope_type);
            if !rules::fits_under(info.scope_type, nt) {
                return Err(ApiError::invalid(
                    "new_parent_id",
                    format!(
                        "must be the root or a management group, not {}",
                        type_name(nt)
                    ),
                ));
            }
            if m.is_within(&np, &id) {
                return Err(ApiError::invalid(
                    "new_parent_id",
                    "is the scope itself or below it; the move would make a cycle",
                ));
            }
            (id, info.parent.unwrap_or_else(|| Id::from("/")), np)
        };
        require_write(core, caller, &old_parent)?;
        require_write(core, caller, &new_parent)?;
        let mut uow = core.begin().await?;
        let mut scope = load_rows(core, Some(&mut uow), &[&id])
            .await?
            .remove(&*id)
            .ok_or_else(|| ApiError::not_found("scope", &req.id))?;
        if scope.parent_id != *new_parent {
            scope.parent_id = new_parent.to_string();
            scope.update_time = Some(to_proto(uow.now()));
            update_row(&mut uow, &scope).await?;
            uow.emit(NewEvent::new(
                pb::ScopeMoved {
                    scope: Some(scope_ref(&scope)),
                    previous_parent: Some(core.scope_ref(&old_parent)),
                    new_parent: Some(core.scope_ref(&new_parent)),
                },
                me,
                &scope.id,
            ));
        }
        let resp = pb::MoveScopeResponse { scope: Some(scope) };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }

    async fn remove(
        &self,
        caller: &Caller,
        req: pb::RemoveScopeRequest,
    ) -> ApiResult<pb::RemoveScopeResponse> {
        const METHOD: &str = "RemoveScope";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        if let Some(why) = rules::text_problem(&req.id, true, rules::MAX_SCOPE_ID_LEN) {
            return Err(ApiError::invalid("id", why));
        }
        let (id, parent, mut ids) = {
            let m = core.model();
            let id =
                resolve_scope(&m, &req.id).ok_or_else(|| ApiError::not_found("scope", &req.id))?;
            let parent = m.scopes.get(&id).and_then(|s| s.parent.clone());
            let ids = subtree(&m, &id);
            (id, parent, ids)
        };
        let Some(parent) = parent else {
            return Err(ApiError::precondition("the root scope cannot be removed"));
        };
        require_write(core, caller, &parent)?;
        ids.reverse(); // deepest first
        let mut uow = core.begin().await?;
        let (count, first) = holders(&mut uow, &ids).await?;
        if count > 0 {
            uow.rollback().await?;
            return Err(holders_refused(count, &id, first.as_deref()));
        }
        remove_scopes(core, &mut uow, &ids, me).await?;
        let resp = pb::RemoveScopeResponse {
            removed_scope_ids: ids.iter().map(ToString::to_string).collect(),
        };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }

    async fn import(
        &self,
        caller: &Caller,
        req: pb::ImportScopesRequest,
    ) -> ApiResult<pb::ImportScopesResponse> {
        const METHOD: &str = "ImportScopes";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        let mut v = Violations::new();
        if let Some(why) = rules::text_problem(&req.root_id, true, rules::MAX_SCOPE_ID_LEN) {
            v.add("root_id", why);
        }
        if req.scopes.len() > MAX_IMPORT {
            v.add("scopes", "must hold at most 10,000 scopes");
        }
        v.finish()?;
        let root = resolve_scope(&core.model(), &req.root_id)
            .ok_or_else(|| ApiError::not_found("scope", &req.root_id))?;
        core.require_or_service(caller, IMPORT_PERMISSION, &root)?;
        let root_key = rules::scope_key(&root);

        // Each item on its own.
        let mut v = Violations::new();
        let mut items: Vec<Item> = Vec::with_capacity(req.scopes.len());
        let mut seen: HashSet<String> = HashSet::with_capacity(req.scopes.len());
        for (i, s) in req.scopes.into_iter().enumerate() {
            let f = format!("scopes[{i}]");
            let (parsed, parent) = check_scope(&mut v, &f, &s, &root);
            let (Some(parsed), Some(parent)) = (parsed, parent) else {
                continue;
            };
            let key = rules::scope_key(&s.id);
            if parsed.scope_type == ScopeType::Root || key == root_key {
                v.add(
                    format!("{f}.id"),
                    "is the root or root_id itself, which is not imported",
                );
                continue;
            }
            if !seen.insert(key.clone()) {
                v.add(format!("{f}.id"), "is duplicated in the import");
                continue;
            }
            items.push(Item {
                scope: pb::Scope {
                    r#type: parsed.scope_type.into(),
                    resource_type: parsed.resource_type,
                    ..s
                },
                key,
                parent_key: rules::scope_key(&parent),
            });
        }
        v.finish()?;

        // The tree after the import: known scopes, with the imported ones laid over.
        let plan = {
            let m = core.model();
            plan_import(&m, &root, &root_key, &items, req.prune)?
        };
        for p in &plan.moved_in_from {
            require_write(core, caller, p)?;
        }

        let mut uow = core.begin().await?;
        let now = uow.now();
        let known_ids: Vec<&str> = plan.known.values().map(|k| &*k.0).collect();
        let rows = load_rows(core, Some(&mut uow), &known_ids).await?;
        // Display names after the import, for the events' references.
        let mut names: HashMap<String, (String, String, i32)> = HashMap::new();
        let (mut registered, mut updated, mut unchanged) = (0i32, 0i32, 0i32);
        for &idx in &plan.order {
            let item = &items[idx];
            let parent_id = plan.stored_id(&item.parent_key);
            let parent_ref = names.get(&item.parent_key).map_or_else(
                || core.scope_ref(&parent_id),
                |(id, name, t)| common::ScopeRef {
                    id: id.clone(),
                    display_name: name.clone(),
                    r#type: *t,
                },
            );
            match plan
                .known
                .get(&item.key)
                .and_then(|(id, _)| rows.get(&**id))
            {
                None => {
                    let parsed_name = rules::parse_scope_id(&item.scope.id)
                        .map(|p| p.name)
                        .unwrap_or_default();
                    let scope = pb::Scope {
                        parent_id,
                        display_name: if item.scope.display_name.is_empty() {
                            parsed_name
                        } else {
                            item.scope.display_name.clone()
                        },
                        create_time: Some(to_proto(now)),
                        update_time: Some(to_proto(now)),
                        ..item.scope.clone()
                    };
                    insert_row(&mut uow, &scope).await?;
                    names.insert(
                        item.key.clone(),
                        (scope.id.clone(), scope.display_name.clone(), scope.r#type),
                    );
                    uow.emit(NewEvent::new(
                        pb::ScopeRegistered {
                            scope: Some(scope.clone()),
                        },
                        me,
                        &scope.id,
                    ));
                    registered += 1;
                }
                Some(old) => {
                    let mut scope = old.clone();
                    let moved = rules::scope_key(&scope.parent_id) != item.parent_key;
                    let renamed = !item.scope.display_name.is_empty()
                        && item.scope.display_name != scope.display_name;
                    let relabelled = item.scope.labels != scope.labels;
                    let previous_parent = scope.parent_id.clone();
                    let previous_name = scope.display_name.clone();
                    if moved {
                        scope.parent_id = parent_id;
                    }
                    if renamed {
                        scope.display_name = item.scope.display_name.clone();
                    }
                    if relabelled {
                        scope.labels = item.scope.labels.clone();
                    }
                    names.insert(
                        item.key.clone(),
                        (scope.id.clone(), scope.display_name.clone(), scope.r#type),
                    );
                    if !(moved || renamed || relabelled) {
                        unchanged += 1;
                        continue;
                    }
                    scope.update_time = Some(to_proto(now));
                    update_row(&mut uow, &scope).await?;
                    if moved {
                        uow.emit(NewEvent::new(
                            pb::ScopeMoved {
                                scope: Some(scope_ref(&scope)),
                                previous_parent: Some(core.scope_ref(&previous_parent)),
                                new_parent: Some(parent_ref),
                            },
                            me,
                            &scope.id,
                        ));
                    }
                    if renamed {
                        uow.emit(NewEvent::new(
                            pb::ScopeRenamed {
                                scope: Some(scope_ref(&scope)),
                                previous_display_name: previous_name,
                            },
                            me,
                            &scope.id,
                        ));
                    }
                    if relabelled {
                        // No event of its own: a known scope registered again with its
                        // new labels (its create_time tells it is not new).
                        uow.emit(NewEvent::new(
                            pb::ScopeRegistered {
                                scope: Some(scope.clone()),
                            },
                            me,
                            &scope.id,
                        ));
                    }
                    updated += 1;
                }
            }
        }
        let mut removed = 0i32;
        if !plan.prune.is_empty() {
            let (count, first) = holders(&mut uow, &plan.prune).await?;
            if count > 0 {
                uow.rollback().await?;
                return Err(holders_refused(count, &root, first.as_deref()));
            }
            remove_scopes(core, &mut uow, &plan.prune, me).await?;
            removed = i32::try_from(plan.prune.len()).unwrap_or(i32::MAX);
        }
        let resp = pb::ImportScopesResponse {
            registered_count: registered,
            updated_count: updated,
            unchanged_count: unchanged,
            removed_count: removed,
        };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }
}

/// Checks one scope of a register or import request (field prefix `f`): its id, type,
/// name and labels, and the parent it names or implies (`default_parent` when free and
/// not given). Returns the parsed id and the parent id, when well-formed.
fn check_scope(
    v: &mut Violations,
    f: &str,
    s: &pb::Scope,
    default_parent: &str,
) -> (Option<rules::ParsedScope>, Option<String>) {
    let parsed = match rules::parse_scope_id(&s.id) {
        Ok(p) => p,
        Err(why) => {
            v.add(format!("{f}.id"), why);
            return (None, None);
        }
    };
    if s.r#type != i32::from(parsed.scope_type) {
        v.add(
            format!("{f}.type"),
            format!(
                "must be {} ({}) for this id",
                parsed.scope_type.as_str_name(),
                type_name(parsed.scope_type)
            ),
        );
    }
    if let Some(why) = rules::text_problem(&s.display_name, false, rules::MAX_NAME_LEN) {
        v.add(format!("{f}.display_name"), why);
    }
    if let Some(why) = rules::labels_problem(&s.labels) {
        v.add(format!("{f}.labels"), why);
    }
    let parent = match &parsed.implied_parent {
        Some(implied) => {
            if !s.parent_id.is_empty()
                && rules::scope_key(&s.parent_id) != rules::scope_key(implied)
            {
                v.add(
                    format!("{f}.parent_id"),
                    format!("must be {implied:?}, the prefix of the id"),
                );
            }
            implied.clone()
        }
        None if s.parent_id.is_empty() => default_parent.to_owned(),
        None => {
            if let Some(why) = rules::text_problem(&s.parent_id, true, rules::MAX_SCOPE_ID_LEN) {
                v.add(format!("{f}.parent_id"), why);
            }
            s.parent_id.clone()
        }
    };
    (Some(parsed), Some(parent))
}

/// What an import will do, worked out from the model before writing.
struct Plan {
    /// Known scopes by key: (stored id, parent key).
    known: HashMap<String, (Id, Option<String>)>,
    /// Items to write, parents first.
    order: Vec<usize>,
    /// Known scopes to remove (deepest first).
    prune: Vec<Id>,
    /// Old parents outside `root_id` of known scopes the import moves in.
    moved_in_from: Vec<Id>,
    /// Stored ids of items by key.
    item_ids: HashMap<String, String>,
}

impl Plan {
    fn stored_id(&self, key: &str) -> String {
        if let Some((id, _)) = self.known.get(key) {
            return id.to_string();
        }
        self.item_ids
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_owned())
    }
}

fn plan_import(
    m: &Model,
    root: &Id,
    root_key: &str,
    items: &[Item],
    prune: bool,
) -> ApiResult<Plan> {
    let mut known: HashMap<String, (Id, Option<String>)> = HashMap::with_capacity(m.scopes.len());
    let mut types: HashMap<String, ScopeType> =
        HashMap::with_capacity(m.scopes.len() + items.len());
    for (id, s) in &m.scopes {
        let key = rules::scope_key(id);
        types.insert(key.clone(), s.scope_type);
        known.insert(
            key,
            (id.clone(), s.parent.as_ref().map(|p| rules::scope_key(p))),
        );
    }
    let mut parent_of: HashMap<String, String> = known
        .iter()
        .filter_map(|(k, (_, p))| p.clone().map(|p| (k.clone(), p)))
        .collect();
    let mut item_ids = HashMap::with_capacity(items.len());
    for it in items {
        parent_of.insert(it.key.clone(), it.parent_key.clone());
        types.insert(it.key.clone(), it.scope.r#type());
        item_ids.insert(it.key.clone(), it.scope.id.clone());
    }
    let mut v = Violations::new();
    for (i, it) in items.iter().enumerate() {
        let Some(pt) = types.get(&it.parent_key).copied() else {
            return Err(ApiError::not_found(
                "scope",
                format!("{} (parent of scopes[{i}])", it.parent_key),
            ));
        };
        let t = it.scope.r#type();
        if !rules::fits_under(t, pt) {
            v.add(
                format!("scopes[{i}].parent_id"),
                format!("{} cannot be placed under {}", type_name(t), type_name(pt)),
            );
        }
        if let Some((_, Some(old))) = known.get(&it.key)
            && *old != it.parent_key
            && !rules::movable(t)
        {
            v.add(
                format!("scopes[{i}].parent_id"),
                format!("{} cannot be moved", type_name(t)),
            );
        }
    }
    v.finish()?;
    let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let order = match rules::order_under_root(&keys, &parent_of, root_key) {
        Ok(o) => o,
        Err((i, true)) => {
            return Err(ApiError::invalid(
                format!("scopes[{i}]"),
                "its parents form a cycle",
            ));
        }
        Err((i, false)) => {
            return Err(ApiError::invalid(
                format!("scopes[{i}]"),
                format!("is not under root_id {root}"),
            ));
        }
    };
    // Known scopes the import moves in from outside root_id: the caller must also be
    // allowed at their old parent.
    let mut moved_in_from: Vec<Id> = Vec::new();
    for it in items {
        if let Some((_, Some(old))) = known.get(&it.key)
            && *old != it.parent_key
            && let Some((old_id, _)) = known.get(old)
            && !m.is_within(old_id, root)
            && !moved_in_from.contains(old_id)
        {
            moved_in_from.push(old_id.clone());
        }
    }
    let mut prune_ids = Vec::new();
    if prune {
        let listed: HashSet<&str> = keys.iter().map(String::as_str).collect();
        let mut below = subtree(m, root);
        below.remove(0);
        prune_ids = below
            .into_iter()
            .filter(|id| !listed.contains(rules::scope_key(id).as_str()))
            .collect();
        let mut v = Violations::new();
        let pruned: HashSet<String> = prune_ids.iter().map(|i| rules::scope_key(i)).collect();
        for (i, it) in items.iter().enumerate() {
            v.check(
                pruned.contains(&it.parent_key),
                format!("scopes[{i}].parent_id"),
                "is below root_id but not in the import, so the prune would remove it",
            );
        }
        v.finish()?;
        prune_ids.reverse();
    }
    Ok(Plan {
        known,
        order,
        prune: prune_ids,
        moved_in_from,
        item_ids,
    })
}

#[tonic::async_trait]
impl pb::scopes_service_server::ScopesService for ScopesApi {
    async fn get_scope(
        &self,
        request: Request<pb::GetScopeRequest>,
    ) -> Result<Response<pb::GetScopeResponse>, Status> {
        caller(&request)?;
        self.get(request.get_ref())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        caller(&request)?;
        self.list(request.get_ref())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn register_scope(
        &self,
        request: Request<pb::RegisterScopeRequest>,
    ) -> Result<Response<pb::RegisterScopeResponse>, Status> {
        let who = caller(&request)?;
        self.register(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn rename_scope(
        &self,
        request: Request<pb::RenameScopeRequest>,
    ) -> Result<Response<pb::RenameScopeResponse>, Status> {
        let who = caller(&request)?;
        self.rename(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn move_scope(
        &self,
        request: Request<pb::MoveScopeRequest>,
    ) -> Result<Response<pb::MoveScopeResponse>, Status> {
        let who = caller(&request)?;
        ScopesApi::move_scope(self, &who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn remove_scope(
        &self,
        request: Request<pb::RemoveScopeRequest>,
    ) -> Result<Response<pb::RemoveScopeResponse>, Status> {
        let who = caller(&request)?;
        self.remove(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn import_scopes(
        &self,
        request: Request<pb::ImportScopesRequest>,
    ) -> Result<Response<pb::ImportScopesResponse>, Status> {
        let who = caller(&request)?;
        self.import(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}
