//! `PrincipalsService`: users, groups and service principals as the identity provider's
//! sync writes them, and group membership (nested groups, cycles allowed).
//!
//! Reads are open to every authenticated caller (people pick approvers and reviewers by
//! name). Writes need "tenure/principals/sync" at "/" (Privileged Role Administrator
//! holds `tenure/*`; the sync agent gets a custom role with it) or one of Tenure's own
//! service principals. Nobody disables or deletes themselves.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use sqlx::Row as _;
use tenure_platform::auth::Caller;
use tenure_platform::clock::{from_micros, from_proto, to_micros, to_proto};
use tenure_platform::events::{NewEvent, UnitOfWork};
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1 as common;
use tonic::{Code, Request, Response, Status};

use crate::core::{Core, Page};
use crate::directory_rules as rules;
use crate::model::Id;
use crate::store;

/// The permission of the identity-provider sync.
pub const SYNC_PERMISSION: &str = "tenure/principals/sync";
/// The most principals per upsert.
pub const MAX_UPSERT: usize = 5000;
/// The most direct members of a group per call.
pub const MAX_MEMBERS: usize = 50_000;
/// The longest reason of a disable or delete.
const MAX_REASON_LEN: usize = 1024;
/// The default page size of this package's list calls.
const DEFAULT_PAGE: i32 = 100;

type Uow = UnitOfWork<pb::Event>;

/// Parses a page request with this package's default size (100).
pub(crate) fn page(page_size: i32, page_token: &str) -> ApiResult<Page> {
    Page::parse(
        if page_size == 0 {
            DEFAULT_PAGE
        } else {
            page_size
        },
        page_token,
    )
}

/// The micros of a protobuf timestamp, or `None` when it is not a valid time.
pub(crate) fn ts_micros(t: &prost_types::Timestamp) -> Option<i64> {
    from_proto(t).map(to_micros)
}

/// The gRPC adapter of `PrincipalsService`.
pub struct PrincipalsApi {
    /// The context's core.
    pub core: Arc<Core>,
}

/// A reference to a principal message.
fn pref(p: &pb::Principal) -> common::PrincipalRef {
    common::PrincipalRef {
        id: p.id.clone(),
        r#type: p.r#type,
        display_name: p.display_name.clone(),
        user_principal_name: if p.user_principal_name.is_empty() {
            p.email.clone()
        } else {
            p.user_principal_name.clone()
        },
    }
}

/// Whether the number is a principal type a principal may have.
fn known_type(t: i32) -> bool {
    matches!(
        common::PrincipalType::try_from(t),
        Ok(common::PrincipalType::User
            | common::PrincipalType::Group
            | common::PrincipalType::ServicePrincipal)
    )
}

/// A stored principal and when it was disabled.
struct Stored {
    principal: pb::Principal,
    disabled_at: Option<i64>,
}

fn stored_from_row(r: &sqlx::any::AnyRow) -> ApiResult<Stored> {
    Ok(Stored {
        principal: store::principal_from_row(r)?,
        disabled_at: r.try_get("disabled_at")?,
    })
}

/// Reads principals by id inside a unit of work.
async fn load_tx(uow: &mut Uow, ids: &[&str]) -> ApiResult<HashMap<String, Stored>> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(store::IN_CHUNK) {
        let sql = format!(
            "SELECT {}, disabled_at FROM assignments_principals WHERE id IN ({})",
            store::PRINCIPAL_COLUMNS,
            store::placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut **uow.tx()).await? {
            let s = stored_from_row(&row)?;
            out.insert(s.principal.id.clone(), s);
        }
    }
    Ok(out)
}

async fn load_one_tx(uow: &mut Uow, id: &str) -> ApiResult<Stored> {
    load_tx(uow, &[id])
        .await?
        .remove(id)
        .ok_or_else(|| ApiError::not_found("principal", id))
}

async fn insert_row(uow: &mut Uow, p: &pb::Principal, disabled_at: Option<i64>) -> ApiResult<()> {
    let now = to_micros(uow.now());
    sqlx::query(
        "INSERT INTO assignments_principals (id, principal_type, display_name, user_principal_name, email, enabled, \
         last_sign_in_at, app_id, source, created_at, updated_at, disabled_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&p.id)
    .bind(i64::from(p.r#type))
    .bind(&p.display_name)
    .bind(&p.user_principal_name)
    .bind(&p.email)
    .bind(i64::from(p.enabled.unwrap_or(true)))
    .bind(p.last_sign_in_time.as_ref().and_then(ts_micros))
    .bind(&p.app_id)
    .bind(&p.source)
    .bind(now)
    .bind(now)
    .bind(disabled_at)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

async fn update_row(uow: &mut Uow, p: &pb::Principal, disabled_at: Option<i64>) -> ApiResult<()> {
    let now = to_micros(uow.now());
    sqlx::query(
        "UPDATE assignments_principals SET display_name = $2, user_principal_name = $3, email = $4, enabled = $5, \
         last_sign_in_at = $6, app_id = $7, source = $8, updated_at = $9, disabled_at = $10 WHERE id = $1",
    )
    .bind(&p.id)
    .bind(&p.display_name)
    .bind(&p.user_principal_name)
    .bind(&p.email)
    .bind(i64::from(p.enabled.unwrap_or(true)))
    .bind(p.last_sign_in_time.as_ref().and_then(ts_micros))
    .bind(&p.app_id)
    .bind(&p.source)
    .bind(now)
    .bind(disabled_at)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// Ends every activation of `principal` still in effect, with `reason`, each with its
/// `InstanceDeactivated` event. Returns the ended instances (id, eligibility id).
async fn end_activations(
    core: &Core,
    uow: &mut Uow,
    principal: &str,
    reason: pb::InstanceEndReason,
    justification: &str,
    actor: &str,
) -> ApiResult<Vec<(String, String)>> {
    let now = uow.now();
    let now_us = to_micros(now);
    let rows = sqlx::query(&format!(
        "SELECT {} FROM assignments_activations WHERE principal_id = $1 AND ended_at IS NULL AND end_at > $2 ORDER BY id",
        store::ACTIVATION_COLUMNS
    ))
    .bind(principal)
    .bind(now_us)
    .fetch_all(&mut **uow.tx())
    .await?;
    let mut ended = Vec::with_capacity(rows.len());
    for row in rows {
        let mut a = store::activation_from_row(&row)?;
        sqlx::query(
            "UPDATE assignments_activations SET ended_at = $1, end_reason = $2 WHERE id = $3 AND ended_at IS NULL",
        )
        .bind(now_us)
        .bind(i64::from(i32::from(reason)))
        .bind(&a.id)
        .execute(&mut **uow.tx())
        .await?;
        a.ended_at = Some(now_us);
        a.end_reason = reason.into();
        let instance = store::activation_proto(core, &a, now);
        uow.emit(
            NewEvent::new(
                pb::InstanceDeactivated {
                    instance: Some(instance),
                    reason: reason.into(),
                    justification: justification.to_owned(),
                },
                actor,
                &a.id,
            )
            .correlated(&a.request_id),
        );
        ended.push((a.id, a.eligibility_id));
    }
    Ok(ended)
}

/// Disables a stored, enabled principal inside `uow`: ends its activations, marks it
/// disabled and emits `PrincipalDisabled`. Returns the ended instance ids.
async fn disable_in(
    core: &Core,
    uow: &mut Uow,
    p: &mut pb::Principal,
    reason: &str,
    actor: &str,
) -> ApiResult<Vec<String>> {
    let ended: Vec<String> = end_activations(
        core,
        uow,
        &p.id,
        pb::InstanceEndReason::PrincipalDisabled,
        reason,
        actor,
    )
    .await?
    .into_iter()
    .map(|(id, _)| id)
    .collect();
    let now = uow.now();
    p.enabled = Some(false);
    p.update_time = Some(to_proto(now));
    update_row(uow, p, Some(to_micros(now))).await?;
    uow.emit(NewEvent::new(
        pb::PrincipalDisabled {
            principal: Some(pref(p)),
            reason: reason.to_owned(),
            ended_instance_ids: ended.clone(),
        },
        actor,
        &p.id,
    ));
    Ok(ended)
}

impl PrincipalsApi {
    fn with_member_count(&self, mut p: pb::Principal) -> pb::Principal {
        if p.r#type == i32::from(common::PrincipalType::Group) {
            let n = self
                .core
                .model()
                .members_of
                .get(p.id.as_str())
                .map_or(0, HashSet::len);
            p.direct_member_count = i32::try_from(n).unwrap_or(i32::MAX);
        }
        p
    }

    async fn get(&self, req: pb::GetPrincipalRequest) -> ApiResult<pb::GetPrincipalResponse> {
        if let Some(p) = rules::id_problem(&req.id) {
            return Err(ApiError::invalid("id", p));
        }
        let p = store::get_principal(&self.core, &req.id)
            .await?
            .ok_or_else(|| ApiError::not_found("principal", &req.id))?;
        Ok(pb::GetPrincipalResponse {
            principal: Some(self.with_member_count(p)),
        })
    }

    async fn list(&self, req: pb::ListPrincipalsRequest) -> ApiResult<pb::ListPrincipalsResponse> {
        let mut v = Violations::new();
        for (i, t) in req.types.iter().enumerate() {
            v.check(
                !known_type(*t),
                format!("types[{i}]"),
                "must be user, group or service principal",
            );
        }
        if let Some(p) = rules::text_problem(&req.search, false, rules::MAX_NAME_LEN) {
            v.add("search", p);
        }
        let page = match page(req.page_size, &req.page_token) {
            Ok(p) => Some(p),
            Err(ApiError::InvalidArgument(list)) => {
                for f in list {
                    v.add(f.field, f.description);
                }
                None
            }
            Err(e) => return Err(e),
        };
        let after: Option<(String, String)> = match page.as_ref().and_then(|p| p.after.as_ref()) {
            Some(a) => match serde_json::from_str(a) {
                Ok(x) => Some(x),
                Err(_) => {
                    v.add("page_token", "is not a token this server issued");
                    None
                }
            },
            None => None,
        };
        v.finish()?;
        let Some(page) = page else {
            return Err(ApiError::invalid("page_token", "is not valid"));
        };
        let mut sql = format!(
            "SELECT {} FROM assignments_principals WHERE 1 = 1",
            store::PRINCIPAL_COLUMNS
        );
        let mut n = 0usize;
        let mut next = || {
            n += 1;
            n
        };
        if !req.include_disabled {
            sql.push_str(" AND enabled = 1");
        }
        let types: Vec<i64> = req.types.iter().map(|t| i64::from(*t)).collect();
        if !types.is_empty() {
            let first = next();
            for _ in 1..types.len() {
                next();
            }
            sql.push_str(&format!(
                " AND principal_type IN ({})",
                store::placeholders(first, types.len())
            ));
        }
        let pattern = rules::like_prefix(&req.search);
        if !req.search.is_empty() {
            let (a, b, c) = (next(), next(), next());
            sql.push_str(&format!(
                " AND (lower(display_name) LIKE ${a} ESCAPE '\\' OR lower(user_principal_name) LIKE ${b} ESCAPE '\\' \
                 OR lower(email) LIKE ${c} ESCAPE '\\')"
            ));
        }
        if after.is_some() {
            let (a, b, c) = (next(), next(), next());
            sql.push_str(&format!(
                " AND (display_name > ${a} OR (display_name = ${b} AND id > ${c}))"
            ));
        }
        let limit = next();
        sql.push_str(&format!(" ORDER BY display_name, id LIMIT ${limit}"));
        let mut q = sqlx::query(&sql);
        for t in &types {
            q = q.bind(*t);
        }
        if !req.search.is_empty() {
            q = q.bind(&pattern).bind(&pattern).bind(&pattern);
        }
        if let Some((name, id)) = &after {
            q = q.bind(name).bind(name).bind(id);
        }
        q = q.bind(i64::try_from(page.size + 1).unwrap_or(i64::MAX));
        let rows = q.fetch_all(self.core.db.reader()).await?;
        let mut principals = rows
            .iter()
            .map(store::principal_from_row)
            .collect::<ApiResult<Vec<_>>>()?;
        let mut next_page_token = String::new();
        if principals.len() > page.size {
            principals.truncate(page.size);
            if let Some(last) = principals.last() {
                let key = serde_json::to_string(&(&last.display_name, &last.id))
                    .map_err(|e| ApiError::Internal(e.into()))?;
                next_page_token = Page::token(&key);
            }
        }
        Ok(pb::ListPrincipalsResponse {
            principals: principals
                .into_iter()
                .map(|p| self.with_member_count(p))
                .collect(),
            next_page_token,
        })
    }

    async fn upsert(
        &self,
        caller: &Caller,
        req: pb::UpsertPrincipalsRequest,
    ) -> ApiResult<pb::UpsertPrincipalsResponse> {
        const METHOD: &str = "UpsertPrincipals";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        core.require_or_service(caller, SYNC_PERMISSION, "/")?;
        let mut v = Violations::new();
        if req.principals.is_empty() || req.principals.len() > MAX_UPSERT {
            return Err(ApiError::invalid(
                "principals",
                "must hold 1 to 5,000 principals",
            ));
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity(req.principals.len());
        for (i, p) in req.principals.iter().enumerate() {
            let f = |name: &str| format!("principals[{i}].{name}");
            if let Some(why) = rules::id_problem(&p.id) {
                v.add(f("id"), why);
            } else if !seen.insert(p.id.as_str()) {
                v.add(f("id"), "is duplicated in the batch");
            }
            v.check(
                !known_type(p.r#type),
                f("type"),
                "must be user, group or service principal",
            );
            for (name, value, required) in [
                ("display_name", &p.display_name, true),
                ("user_principal_name", &p.user_principal_name, false),
                ("email", &p.email, false),
                ("app_id", &p.app_id, false),
                ("source", &p.source, false),
            ] {
                if let Some(why) = rules::text_problem(value, required, rules::MAX_NAME_LEN) {
                    v.add(f(name), why);
                }
            }
            if let Some(t) = &p.last_sign_in_time {
                v.check(
                    ts_micros(t).is_none(),
                    f("last_sign_in_time"),
                    "is not a valid time",
                );
            }
        }
        v.finish()?;
        if let Some(i) = req
            .principals
            .iter()
            .position(|p| p.id == me && p.enabled == Some(false))
        {
            return Err(ApiError::denied(format!(
                "principals[{i}]: nobody disables themselves"
            )));
        }

        let mut v = Violations::new();
        let mut uow = core.begin().await?;
        let ids: Vec<&str> = req.principals.iter().map(|p| p.id.as_str()).collect();
        let mut existing = load_tx(&mut uow, &ids).await?;
        for (i, p) in req.principals.iter().enumerate() {
            if let Some(s) = existing.get(&p.id)
                && s.principal.r#type != p.r#type
            {
                v.add(
                    format!("principals[{i}].type"),
                    format!(
                        "differs from the stored type {}; a principal's type never changes",
                        s.principal.r#type().as_str_name()
                    ),
                );
            }
        }
        if let Err(e) = v.finish() {
            uow.rollback().await?;
            return Err(e);
        }

        let now = uow.now();
        let (mut created, mut updated, mut unchanged) = (0i32, 0i32, 0i32);
        for given in req.principals {
            let sign_in = given.last_sign_in_time.as_ref().and_then(ts_micros);
            match existing.remove(&given.id) {
                None => {
                    let enabled = given.enabled.unwrap_or(true);
                    let p = pb::Principal {
                        enabled: Some(enabled),
                        last_sign_in_time: sign_in.map(|t| to_proto(from_micros(t))),
                        direct_member_count: 0,
                        create_time: Some(to_proto(now)),
                        update_time: Some(to_proto(now)),
                        ..given
                    };
                    insert_row(&mut uow, &p, (!enabled).then(|| to_micros(now))).await?;
                    let id = p.id.clone();
                    uow.emit(NewEvent::new(
                        pb::PrincipalSynced {
                            principal: Some(p),
                            created: true,
                            changed_fields: vec![],
                        },
                        me,
                        id,
                    ));
                    created += 1;
                }
                Some(Stored {
                    principal: old,
                    disabled_at,
                }) => {
                    let was_enabled = old.enabled.unwrap_or(true);
                    let enabled = given.enabled.unwrap_or(was_enabled);
                    let old_sign_in = old.last_sign_in_time.as_ref().and_then(ts_micros);
                    let sign_in = rules::next_sign_in(old_sign_in, sign_in);
                    let changed = rules::changed_fields(&[
                        ("display_name", old.display_name != given.display_name),
                        (
                            "user_principal_name",
                            old.user_principal_name != given.user_principal_name,
                        ),
                        ("email", old.email != given.email),
                        ("enabled", was_enabled != enabled),
                        ("last_sign_in_time", old_sign_in != sign_in),
                        ("app_id", old.app_id != given.app_id),
                        ("source", old.source != given.source),
                    ]);
                    if changed.is_empty() {
                        unchanged += 1;
                        continue;
                    }
                    let mut p = pb::Principal {
                        id: old.id.clone(),
                        r#type: old.r#type,
                        display_name: given.display_name,
                        user_principal_name: given.user_principal_name,
                        email: given.email,
                        enabled: Some(was_enabled),
                        last_sign_in_time: sign_in.map(|t| to_proto(from_micros(t))),
                        app_id: given.app_id,
                        source: given.source,
                        direct_member_count: 0,
                        create_time: old.create_time,
                        update_time: Some(to_proto(now)),
                    };
                    let disabling = was_enabled && !enabled;
                    if !disabling {
                        p.enabled = Some(enabled);
                        update_row(&mut uow, &p, if enabled { None } else { disabled_at }).await?;
                    }
                    let mut synced = p.clone();
                    synced.enabled = Some(enabled);
                    uow.emit(NewEvent::new(
                        pb::PrincipalSynced {
                            principal: Some(synced),
                            created: false,
                            changed_fields: changed,
                        },
                        me,
                        &p.id,
                    ));
                    if disabling {
                        disable_in(
                            core,
                            &mut uow,
                            &mut p,
                            "disabled by the identity-provider sync",
                            me,
                        )
                        .await?;
                    }
                    updated += 1;
                }
            }
        }
        let resp = pb::UpsertPrincipalsResponse {
            created_count: created,
            updated_count: updated,
            unchanged_count: unchanged,
        };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }

    async fn disable(
        &self,
        caller: &Caller,
        req: pb::DisablePrincipalRequest,
    ) -> ApiResult<pb::DisablePrincipalResponse> {
        const METHOD: &str = "DisablePrincipal";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        core.require_or_service(caller, SYNC_PERMISSION, "/")?;
        check_id_and_reason(&req.id, &req.reason)?;
        if req.id == me {
            return Err(ApiError::denied("nobody disables themselves"));
        }
        let mut uow = core.begin().await?;
        let mut p = load_one_tx(&mut uow, &req.id).await?.principal;
        let ended = if p.enabled == Some(false) {
            Vec::new()
        } else {
            disable_in(core, &mut uow, &mut p, &req.reason, me).await?
        };
        let resp = pb::DisablePrincipalResponse {
            principal: Some(self.with_member_count(p)),
            ended_instance_ids: ended,
        };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }

    async fn delete(
        &self,
        caller: &Caller,
        req: pb::DeletePrincipalRequest,
    ) -> ApiResult<pb::DeletePrincipalResponse> {
        const METHOD: &str = "DeletePrincipal";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core.replay(METHOD, &req.request_id, me).await? {
            return Ok(r);
        }
        core.require_or_service(caller, SYNC_PERMISSION, "/")?;
        check_id_and_reason(&req.id, &req.reason)?;
        if req.id == me {
            return Err(ApiError::denied("nobody deletes themselves"));
        }
        let mut uow = core.begin().await?;
        let p = load_one_tx(&mut uow, &req.id).await?.principal;
        let now = uow.now();
        let now_us = to_micros(now);
        let reference = pref(&p);

        let ended = end_activations(
            core,
            &mut uow,
            &p.id,
            pb::InstanceEndReason::PrincipalDeleted,
            &req.reason,
            me,
        )
        .await?;

        let rows = sqlx::query(&format!(
            "SELECT {} FROM assignments_assignments WHERE principal_id = $1 AND removed_at IS NULL \
             AND (end_at IS NULL OR end_at > $2) ORDER BY id",
            store::ASSIGNMENT_COLUMNS
        ))
        .bind(&p.id)
        .bind(now_us)
        .fetch_all(&mut **uow.tx())
        .await?;
        let mut removed_assignment_ids = Vec::with_capacity(rows.len());
        for row in rows {
            let mut a = store::assignment_from_row(&row)?;
            sqlx::query(
                "UPDATE assignments_assignments SET removed_at = $1, removal_reason = $2, updated_at = $3, \
                 updated_by = $4, version = version + 1 WHERE id = $5",
            )
            .bind(now_us)
            .bind(i64::from(i32::from(pb::RemovalReason::PrincipalDeleted)))
            .bind(now_us)
            .bind(me)
            .bind(&a.id)
            .execute(&mut **uow.tx())
            .await?;
            a.removed_at = Some(now_us);
            a.removal_reason = pb::RemovalReason::PrincipalDeleted.into();
            a.updated_at = now_us;
            a.updated_by = me.to_owned();
            a.version += 1;
            let assignment = store::assignment_proto(core, &a, now);
            let with_it: Vec<String> = ended
                .iter()
                .filter(|(_, eligibility)| *eligibility == a.id)
                .map(|(id, _)| id.clone())
                .collect();
            uow.emit(NewEvent::new(
                pb::AssignmentRemoved {
                    assignment: Some(assignment),
                    reason: pb::RemovalReason::PrincipalDeleted.into(),
                    justification: req.reason.clone(),
                    ticket: None,
                    source_reference: String::new(),
                    ended_instance_ids: with_it,
                },
                me,
                &a.id,
            ));
            removed_assignment_ids.push(a.id);
        }

        // Memberships: the groups it was a member of hear of it; a deleted group's own
        // memberships end with it.
        let groups: Vec<String> = sqlx::query(
            "SELECT group_id FROM assignments_group_members WHERE member_id = $1 AND removed_at IS NULL ORDER BY group_id",
        )
        .bind(&p.id)
        .fetch_all(&mut **uow.tx())
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("group_id"))
        .collect::<Result<_, _>>()?;
        sqlx::query(
            "UPDATE assignments_group_members SET removed_at = $1 WHERE (member_id = $2 OR group_id = $3) AND removed_at IS NULL",
        )
        .bind(now_us)
        .bind(&p.id)
        .bind(&p.id)
        .execute(&mut **uow.tx())
        .await?;
        for g in groups {
            let count: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM assignments_group_members WHERE group_id = $1 AND removed_at IS NULL",
            )
            .bind(&g)
            .fetch_one(&mut **uow.tx())
            .await?;
            uow.emit(NewEvent::new(
                pb::GroupMembersSet {
                    group: Some(core.principal_ref(&g)),
                    added_members: vec![],
                    removed_members: vec![reference.clone()],
                    member_count: i32::try_from(count).unwrap_or(i32::MAX),
                },
                me,
                &g,
            ));
        }

        sqlx::query("DELETE FROM assignments_principals WHERE id = $1")
            .bind(&p.id)
            .execute(&mut **uow.tx())
            .await?;
        let ended_instance_ids: Vec<String> = ended.into_iter().map(|(id, _)| id).collect();
        uow.emit(NewEvent::new(
            pb::PrincipalDeleted {
                principal: Some(reference),
                reason: req.reason.clone(),
                removed_assignment_ids: removed_assignment_ids.clone(),
                ended_instance_ids: ended_instance_ids.clone(),
            },
            me,
            &p.id,
        ));
        let resp = pb::DeletePrincipalResponse {
            removed_assignment_ids,
            ended_instance_ids,
        };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await?;
        core.commit(uow).await?;
        Ok(resp)
    }

    async fn set_members(
        &self,
        caller: &Caller,
        req: pb::SetGroupMembersRequest,
    ) -> Result<pb::SetGroupMembersResponse, Status> {
        const METHOD: &str = "SetGroupMembers";
        let core = &self.core;
        let me = caller.principal_id.as_str();
        if let Some(r) = core
            .replay(METHOD, &req.request_id, me)
            .await
            .map_err(status)?
        {
            return Ok(r);
        }
        core.require_or_service(caller, SYNC_PERMISSION, "/")
            .map_err(status)?;
        let mut v = Violations::new();
        if let Some(why) = rules::id_problem(&req.group_id) {
            v.add("group_id", why);
        }
        if req.member_ids.len() > MAX_MEMBERS {
            return Err(status(ApiError::invalid(
                "member_ids",
                "must hold at most 50,000 members",
            )));
        }
        for (i, m) in req.member_ids.iter().enumerate() {
            if let Some(why) = rules::id_problem(m) {
                v.add(format!("member_ids[{i}]"), why);
            } else if *m == req.group_id {
                v.add(
                    format!("member_ids[{i}]"),
                    "a group cannot be a direct member of itself",
                );
            }
        }
        v.finish().map_err(status)?;
        // The group and the members must exist; every unknown member is named.
        let wanted: BTreeSet<String> = {
            let m = core.model();
            match m.principals.get(req.group_id.as_str()) {
                None => return Err(status(ApiError::not_found("principal", &req.group_id))),
                Some(g) if g.principal_type != common::PrincipalType::Group => {
                    return Err(status(ApiError::invalid("group_id", "is not a group")));
                }
                Some(_) => {}
            }
            let unknown: Vec<(usize, &String)> = req
                .member_ids
                .iter()
                .enumerate()
                .filter(|(_, id)| !m.principals.contains_key(id.as_str()))
                .collect();
            if !unknown.is_empty() {
                return Err(members_not_found(&unknown));
            }
            req.member_ids.iter().cloned().collect()
        };
        let mut uow = core.begin().await.map_err(status)?;
        let result = self
            .replace_members(&mut uow, me, &req.group_id, &wanted)
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = uow.rollback().await;
                return Err(status(e));
            }
        };
        core.remember(&mut uow, METHOD, &req.request_id, me, &resp)
            .await
            .map_err(status)?;
        core.commit(uow).await.map_err(status)?;
        Ok(resp)
    }

    async fn replace_members(
        &self,
        uow: &mut Uow,
        me: &str,
        group: &str,
        wanted: &BTreeSet<String>,
    ) -> ApiResult<pb::SetGroupMembersResponse> {
        let now_us = to_micros(uow.now());
        let current: BTreeSet<String> = sqlx::query(
            "SELECT member_id FROM assignments_group_members WHERE group_id = $1 AND removed_at IS NULL",
        )
        .bind(group)
        .fetch_all(&mut **uow.tx())
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("member_id"))
        .collect::<Result<_, _>>()?;
        let added: Vec<String> = wanted.difference(&current).cloned().collect();
        let removed: Vec<String> = current.difference(wanted).cloned().collect();
        if added.is_empty() && removed.is_empty() {
            return Ok(pb::SetGroupMembersResponse::default());
        }
        for m in &added {
            sqlx::query(
                "INSERT INTO assignments_group_members (group_id, member_id, added_at, removed_at) VALUES ($1, $2, $3, NULL)",
            )
            .bind(group)
            .bind(m)
            .bind(now_us)
            .execute(&mut **uow.tx())
            .await?;
        }
        for m in &removed {
            sqlx::query(
                "UPDATE assignments_group_members SET removed_at = $1 WHERE group_id = $2 AND member_id = $3 AND removed_at IS NULL",
            )
            .bind(now_us)
            .bind(group)
            .bind(m)
            .execute(&mut **uow.tx())
            .await?;
        }
        let core = &self.core;
        uow.emit(NewEvent::new(
            pb::GroupMembersSet {
                group: Some(core.principal_ref(group)),
                added_members: added.iter().map(|m| core.principal_ref(m)).collect(),
                removed_members: removed.iter().map(|m| core.principal_ref(m)).collect(),
                member_count: i32::try_from(wanted.len()).unwrap_or(i32::MAX),
            },
            me,
            group,
        ));
        Ok(pb::SetGroupMembersResponse {
            added_member_ids: added,
            removed_member_ids: removed,
        })
    }

    fn list_members(
        &self,
        req: &pb::ListGroupMembersRequest,
    ) -> ApiResult<pb::ListGroupMembersResponse> {
        if let Some(why) = rules::id_problem(&req.group_id) {
            return Err(ApiError::invalid("group_id", why));
        }
        let page = page(req.page_size, &req.page_token)?;
        let ids: Vec<Id> = {
            let m = self.core.model();
            match m.principals.get(req.group_id.as_str()) {
                None => return Err(ApiError::not_found("principal", &req.group_id)),
                Some(g) if g.principal_type != common::PrincipalType::Group => {
                    return Err(ApiError::invalid("group_id", "is not a group"));
                }
                Some(_) => {}
            }
            if req.transitive {
                m.transitive_members(&req.group_id)
            } else {
                m.members_of
                    .get(req.group_id.as_str())
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default()
            }
        };
        let mut ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        ids.sort();
        let (ids, next_page_token) = page.cut(ids, Clone::clone);
        Ok(pb::ListGroupMembersResponse {
            members: ids.iter().map(|i| self.core.principal_ref(i)).collect(),
            next_page_token,
        })
    }

    fn list_groups(
        &self,
        req: &pb::ListPrincipalGroupsRequest,
    ) -> ApiResult<pb::ListPrincipalGroupsResponse> {
        if let Some(why) = rules::id_problem(&req.principal_id) {
            return Err(ApiError::invalid("principal_id", why));
        }
        let page = page(req.page_size, &req.page_token)?;
        let mut ids: Vec<String> = {
            let m = self.core.model();
            if !m.principals.contains_key(req.principal_id.as_str()) {
                return Err(ApiError::not_found("principal", &req.principal_id));
            }
            // Breadth first over "member of", each group once, so cycles end. Unlike
            // `Model::subjects` (which serves access checks), disabled groups are listed:
            // membership holds whether or not the group grants anything now.
            let mut seen: HashSet<Id> = HashSet::new();
            let mut queue: VecDeque<Id> = m
                .groups_of
                .get(req.principal_id.as_str())
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            let mut out = Vec::new();
            while let Some(g) = queue.pop_front() {
                if &*g == req.principal_id.as_str() || !seen.insert(g.clone()) {
                    continue;
                }
                if req.transitive
                    && let Some(up) = m.groups_of.get(&g)
                {
                    queue.extend(up.iter().cloned());
                }
                out.push(g.to_string());
            }
            out
        };
        ids.sort();
        let (ids, next_page_token) = page.cut(ids, Clone::clone);
        Ok(pb::ListPrincipalGroupsResponse {
            groups: ids.iter().map(|i| self.core.principal_ref(i)).collect(),
            next_page_token,
        })
    }
}

fn check_id_and_reason(id: &str, reason: &str) -> ApiResult<()> {
    let mut v = Violations::new();
    if let Some(why) = rules::id_problem(id) {
        v.add("id", why);
    }
    if let Some(why) = rules::text_problem(reason, false, MAX_REASON_LEN) {
        v.add("reason", why);
    }
    v.finish()
}

/// NOT_FOUND naming every unknown member as a field violation `member_ids[i]`.
fn members_not_found(unknown: &[(usize, &String)]) -> Status {
    use tonic_types::{ErrorDetails, StatusExt as _};
    let mut details = ErrorDetails::new();
    let mut parts = Vec::with_capacity(unknown.len());
    for (i, id) in unknown {
        details.add_bad_request_violation(
            format!("member_ids[{i}]"),
            format!("principal {id:?} not found"),
        );
        parts.push(format!("member_ids[{i}]: principal {id:?} not found"));
    }
    Status::with_error_details(Code::NotFound, parts.join("; "), details)
}

#[tonic::async_trait]
impl pb::principals_service_server::PrincipalsService for PrincipalsApi {
    async fn get_principal(
        &self,
        request: Request<pb::GetPrincipalRequest>,
    ) -> Result<Response<pb::GetPrincipalResponse>, Status> {
        caller(&request)?;
        self.get(request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        caller(&request)?;
        self.list(request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn upsert_principals(
        &self,
        request: Request<pb::UpsertPrincipalsRequest>,
    ) -> Result<Response<pb::UpsertPrincipalsResponse>, Status> {
        let who = caller(&request)?;
        self.upsert(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn disable_principal(
        &self,
        request: Request<pb::DisablePrincipalRequest>,
    ) -> Result<Response<pb::DisablePrincipalResponse>, Status> {
        let who = caller(&request)?;
        self.disable(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn delete_principal(
        &self,
        request: Request<pb::DeletePrincipalRequest>,
    ) -> Result<Response<pb::DeletePrincipalResponse>, Status> {
        let who = caller(&request)?;
        self.delete(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn set_group_members(
        &self,
        request: Request<pb::SetGroupMembersRequest>,
    ) -> Result<Response<pb::SetGroupMembersResponse>, Status> {
        let who = caller(&request)?;
        self.set_members(&who, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_group_members(
        &self,
        request: Request<pb::ListGroupMembersRequest>,
    ) -> Result<Response<pb::ListGroupMembersResponse>, Status> {
        caller(&request)?;
        self.list_members(request.get_ref())
            .map(Response::new)
            .map_err(status)
    }

    async fn list_principal_groups(
        &self,
        request: Request<pb::ListPrincipalGroupsRequest>,
    ) -> Result<Response<pb::ListPrincipalGroupsResponse>, Status> {
        caller(&request)?;
        self.list_groups(request.get_ref())
            .map(Response::new)
            .map_err(status)
    }
}
