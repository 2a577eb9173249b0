//! Idempotent mutations: the first response to a call of a method with a `request_id`
//! is stored in the same transaction as the change, and a retry with the same id gets
//! that response back instead of acting again. Each context keeps its own table
//! (`<prefix>_idempotency`, see [`table_sql`]).

use sqlx::Row as _;
use tenure_proto::EventEnvelope;

use crate::clock::to_micros;
use crate::db::{Backend, Db};
use crate::error::{ApiError, ApiResult};
use crate::events::UnitOfWork;

/// The DDL of a context's idempotency table.
pub fn table_sql(prefix: &str, backend: Backend) -> String {
    let blob = match backend {
        Backend::Sqlite => "BLOB",
        Backend::Postgres => "BYTEA",
    };
    format!(
        "CREATE TABLE {prefix}_idempotency (
            method TEXT NOT NULL,
            request_id TEXT NOT NULL,
            caller TEXT NOT NULL,
            response {blob} NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (method, request_id)
        );"
    )
}

/// Request ids: 1 to 128 printable ASCII characters.
pub fn check_request_id(id: &str) -> ApiResult<()> {
    if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "request_id",
            "must be 1 to 128 printable ASCII characters",
        ));
    }
    Ok(())
}

/// The stored response of an earlier call of `method` with `request_id`, if any. A
/// request id reused by another caller is refused.
pub async fn replay<R: prost::Message + Default>(
    db: &Db,
    prefix: &str,
    method: &str,
    request_id: &str,
    caller: &str,
) -> ApiResult<Option<R>> {
    if request_id.is_empty() {
        return Ok(None);
    }
    check_request_id(request_id)?;
    let row = sqlx::query(&format!(
        "SELECT caller, response FROM {prefix}_idempotency WHERE method = $1 AND request_id = $2"
    ))
    .bind(method)
    .bind(request_id)
    .fetch_optional(db.reader())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let who: String = row.try_get("caller")?;
    if who != caller {
        return Err(ApiError::invalid(
            "request_id",
            "already used by another caller",
        ));
    }
    let bytes: Vec<u8> = row.try_get("response")?;
    Ok(Some(
        R::decode(bytes.as_slice()).map_err(|e| ApiError::Internal(e.into()))?,
    ))
}

/// Records the response of a mutation inside its unit of work.
pub async fn remember<E: EventEnvelope, R: prost::Message>(
    uow: &mut UnitOfWork<E>,
    prefix: &str,
    method: &str,
    request_id: &str,
    caller: &str,
    response: &R,
) -> ApiResult<()> {
    if request_id.is_empty() {
        return Ok(());
    }
    let now = to_micros(uow.now());
    sqlx::query(&format!(
        "INSERT INTO {prefix}_idempotency (method, request_id, caller, response, created_at) VALUES ($1, $2, $3, $4, $5)"
    ))
    .bind(method)
    .bind(request_id)
    .bind(caller)
    .bind(response.encode_to_vec())
    .bind(now)
    .execute(&mut **uow.tx())
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            ApiError::Aborted("a concurrent call with the same request_id is in progress; retry".into())
        }
        _ => ApiError::from(e),
    })?;
    Ok(())
}

/// Runs a mutation at most once per `request_id`: a retry gets the stored response.
/// For operations whose own changes commit inside `run` (in units of work of their own),
/// the response is recorded right after; a crash between the two lets a retry run again,
/// which those operations answer from their state (for example "already decided").
pub async fn once<E, R, F, Fut>(
    log: &crate::events::EventLog<E>,
    prefix: &str,
    method: &str,
    request_id: &str,
    caller: &str,
    run: F,
) -> ApiResult<R>
where
    E: EventEnvelope,
    R: prost::Message + Default,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ApiResult<R>>,
{
    if let Some(done) = replay::<R>(log.db(), prefix, method, request_id, caller).await? {
        return Ok(done);
    }
    let r = run().await?;
    if !request_id.is_empty() {
        let mut uow = log.begin().await?;
        remember(&mut uow, prefix, method, request_id, caller, &r).await?;
        uow.commit().await?;
    }
    Ok(r)
}
