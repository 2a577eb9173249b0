//! Instances: what is in effect. Activation instances are rows of their own; an
//! assignment's instance is the assignment itself seen as "in effect" (same id, origin
//! ASSIGNED), so nothing has to be kept in step.

use chrono::{DateTime, Utc};
use tenure_platform::auth::Caller;
use tenure_platform::clock::{from_micros, to_micros, to_proto};
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1 as common;

use crate::core::{Core, Page};
use crate::model::{GrantEntry, GrantSource};
use crate::store;

/// One instance by id (an activation instance id or an assignment id).
pub async fn get(core: &Core, id: &str, now: DateTime<Utc>) -> ApiResult<pb::Instance> {
    if id.is_empty() {
        return Err(ApiError::invalid("id", "is required"));
    }
    let row = sqlx::query(&format!(
        "SELECT {} FROM assignments_activations WHERE id = $1",
        store::ACTIVATION_COLUMNS
    ))
    .bind(id)
    .fetch_optional(core.db.reader())
    .await?;
    if let Some(r) = row {
        return Ok(store::activation_proto(
            core,
            &store::activation_from_row(&r)?,
            now,
        ));
    }
    match store::get_assignment(core, id).await? {
        Some(a) => Ok(store::assignment_instance(core, &a, now)),
        None => Err(ApiError::not_found("instance", id)),
    }
}

/// The instance view of a grant of the access model.
pub fn from_grant(core: &Core, g: &GrantEntry) -> pb::Instance {
    let (origin, assignment_id) = match g.source {
        GrantSource::Assignment => (common::InstanceOrigin::Assigned, g.id.to_string()),
        GrantSource::Activation => (
            common::InstanceOrigin::Activated,
            g.eligibility_id.as_deref().unwrap_or_default().to_owned(),
        ),
    };
    pb::Instance {
        id: g.id.to_string(),
        assignment_type: g.assignment_type.into(),
        origin: origin.into(),
        assignment_id,
        request_id: g.request_id.as_deref().unwrap_or_default().to_owned(),
        principal: Some(core.principal_ref(&g.principal)),
        role: Some(core.role_ref(&g.role)),
        scope: Some(core.scope_ref(&g.scope)),
        start_time: Some(to_proto(from_micros(g.start))),
        end_time: g.end.map(|e| to_proto(from_micros(e))),
        status: pb::InstanceStatus::InEffect.into(),
        end_reason: 0,
        ended_time: None,
        justification: String::new(),
        ticket: None,
    }
}

/// Lists instances with the request's filters (by default those in effect now), by
/// start time then id. Callers without read access see only their own and their groups'.
pub async fn list(
    core: &Core,
    caller: &Caller,
    reads_all: bool,
    r: pb::ListInstancesRequest,
) -> ApiResult<pb::ListInstancesResponse> {
    let page = Page::parse(r.page_size, &r.page_token)?;
    if !r.scope_id.is_empty() {
        core.known_scope("scope_id", &r.scope_id)?;
    }
    let now = core.clock.now();
    let now_us = to_micros(now);
    let own: Vec<String> = core
        .model()
        .subjects(&caller.principal_id)
        .into_iter()
        .map(|(s, _)| s.to_string())
        .collect();
    let mut all: Vec<pb::Instance> = Vec::new();
    let origin =
        common::InstanceOrigin::try_from(r.origin).unwrap_or(common::InstanceOrigin::Unspecified);
    if origin != common::InstanceOrigin::Assigned {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM assignments_activations WHERE ($1 = '' OR principal_id = $1) AND ($2 = '' OR role_id = $2) \
             AND ($3 = '' OR request_id = $3) ORDER BY start_at, id LIMIT 10000",
            store::ACTIVATION_COLUMNS
        ))
        .bind(&r.principal_id)
        .bind(&r.role_id)
        .bind(&r.request_id)
        .fetch_all(core.db.reader())
        .await?;
        for row in &rows {
            let a = store::activation_from_row(row)?;
            all.push(store::activation_proto(core, &a, now));
        }
    }
    if origin != common::InstanceOrigin::Activated && r.request_id.is_empty() {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM assignments_assignments WHERE ($1 = '' OR principal_id = $1) AND ($2 = '' OR role_id = $2) \
             AND start_at <= $3 ORDER BY start_at, id LIMIT 10000",
            store::ASSIGNMENT_COLUMNS
        ))
        .bind(&r.principal_id)
        .bind(&r.role_id)
        .bind(now_us)
        .fetch_all(core.db.reader())
        .await?;
        for row in &rows {
            let a = store::assignment_from_row(row)?;
            all.push(store::assignment_instance(core, &a, now));
        }
    }
    let statuses: Vec<i32> = if r.statuses.is_empty() {
        vec![pb::InstanceStatus::InEffect.into()]
    } else {
        r.statuses.clone()
    };
    let m = core.model();
    let mut items: Vec<pb::Instance> = all
        .into_iter()
        .filter(|i| statuses.contains(&i.status))
        .filter(|i| r.assignment_type == 0 || i.assignment_type == r.assignment_type)
        .filter(|i| {
            let scope = i.scope.as_ref().map_or("", |s| s.id.as_str());
            r.scope_id.is_empty()
                || scope == r.scope_id
                || (r.include_descendants && m.is_within(scope, &r.scope_id))
        })
        .filter(|i| {
            reads_all
                || own
                    .iter()
                    .any(|o| i.principal.as_ref().is_some_and(|p| &p.id == o))
        })
        .collect();
    drop(m);
    let key = |i: &pb::Instance| {
        format!(
            "{:020}|{}",
            i.start_time.as_ref().map_or(0, |t| t.seconds),
            i.id
        )
    };
    items.sort_by_key(key);
    let (items, next_page_token) = page.cut(items, key);
    Ok(pb::ListInstancesResponse {
        instances: items,
        next_page_token,
    })
}
