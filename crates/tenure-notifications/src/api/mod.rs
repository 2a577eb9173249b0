//! The gRPC adapters of the notifications context: decode, check, call the engine,
//! encode. Authorization asks the assignments context (CheckAccess about the caller,
//! with the caller's own token): reading needs "tenure/read" at "/" (Privileged Role
//! Administrator, Global Reader, Security Reader, Security Administrator, Global
//! Administrator); configuring needs "tenure/notifications/write" (Privileged Role
//! Administrator); dismissing and rescanning alerts need "tenure/alerts/write"
//! (Privileged Role Administrator or Security Administrator).

use std::sync::Arc;

use tenure_platform::auth::Caller;
use tenure_platform::{ApiError, ApiResult};

use crate::engine::{Engine, Uow};

pub mod alerts;
pub mod audit;
pub mod notifications;

/// Reading configuration, alerts, deliveries and the trail.
pub const READ: &str = "tenure/read";
/// Configuring notifications, alerts and retention.
pub const WRITE: &str = "tenure/notifications/write";
/// Dismissing and rescanning alerts.
pub const ALERTS_WRITE: &str = "tenure/alerts/write";

/// Checks that the caller holds `permission` at "/".
pub async fn require(engine: &Engine, c: &Caller, permission: &str) -> ApiResult<()> {
    if engine
        .assignments
        .has_permission(&c.token, &c.principal_id, permission, "/")
        .await?
    {
        Ok(())
    } else {
        Err(ApiError::denied(format!(
            "this needs the permission {permission:?} at \"/\" (see the notifications service's authorization)"
        )))
    }
}

/// Page size: default 100, at most 1,000.
pub fn page_size(v: i32, field: &str) -> ApiResult<i64> {
    match v {
        0 => Ok(100),
        1..=1000 => Ok(i64::from(v)),
        _ => Err(ApiError::invalid(field, "must be 0 to 1000")),
    }
}

/// An offset page token: empty or a decimal offset.
pub fn offset_token(t: &str) -> ApiResult<i64> {
    if t.is_empty() {
        return Ok(0);
    }
    t.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| ApiError::invalid("page_token", "is not a token this service returned"))
}

/// Runs a mutation idempotently by `request_id`: a retry returns the first response;
/// the response is remembered in the same unit of work as the change.
pub async fn idempotent<R, F>(
    engine: &Arc<Engine>,
    method: &str,
    request_id: &str,
    who: &str,
    run: F,
) -> ApiResult<R>
where
    R: prost::Message + Default,
    F: for<'a> FnOnce(&'a mut Uow) -> futures::future::BoxFuture<'a, ApiResult<R>>,
{
    if let Some(done) = tenure_platform::idempotency::replay::<R>(
        &engine.db,
        crate::PREFIX,
        method,
        request_id,
        who,
    )
    .await?
    {
        return Ok(done);
    }
    let mut uow = engine.log.begin().await?;
    let r = run(&mut uow).await?;
    tenure_platform::idempotency::remember(&mut uow, crate::PREFIX, method, request_id, who, &r)
        .await?;
    uow.commit().await?;
    engine.timer_wake.notify_one();
    Ok(r)
}
