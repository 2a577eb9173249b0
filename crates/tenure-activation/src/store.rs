//! Reading and writing requests (sqlx).

use prost::Message as _;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use tenure_platform::clock::{from_proto, to_micros};
use tenure_platform::events::UnitOfWork;
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::activation::v1 as pb;

type Uow = UnitOfWork<pb::Event>;

/// A stored request: the document and its row version.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The request.
    pub request: pb::Request,
    /// Optimistic concurrency version.
    pub version: i64,
    /// Next timer instant (µs).
    pub due_at: Option<i64>,
    /// Provisioning attempts made.
    pub attempts: i64,
}

fn decode(row: &AnyRow) -> ApiResult<Stored> {
    let body: Vec<u8> = row.try_get("body")?;
    Ok(Stored {
        request: pb::Request::decode(body.as_slice()).map_err(|e| ApiError::Internal(e.into()))?,
        version: row.try_get("version")?,
        due_at: row.try_get("due_at")?,
        attempts: row.try_get("attempts")?,
    })
}

const COLUMNS: &str = "body, version, due_at, attempts";

/// Inserts a new request.
pub async fn insert(uow: &mut Uow, r: &pb::Request, due_at: Option<i64>) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO activation_requests (id, batch_id, action, status, requestor_id, role_id, scope_id, \
         target_request_id, created_at, due_at, attempts, version, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, 1, $11)",
    )
    .bind(&r.id)
    .bind(&r.batch_id)
    .bind(i64::from(r.action))
    .bind(i64::from(r.status))
    .bind(r.requestor.as_ref().map(|p| p.id.clone()).unwrap_or_default())
    .bind(r.role.as_ref().map(|p| p.id.clone()).unwrap_or_default())
    .bind(r.scope.as_ref().map(|p| p.id.clone()).unwrap_or_default())
    .bind(&r.target_request_id)
    .bind(r.create_time.as_ref().and_then(from_proto).map(to_micros).unwrap_or_default())
    .bind(due_at)
    .bind(r.encode_to_vec())
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// Writes a changed request if nobody changed it since `version` was read; false when
/// somebody did (the caller re-reads and decides again).
pub async fn update(
    uow: &mut Uow,
    s: &Stored,
    due_at: Option<i64>,
    attempts: i64,
) -> ApiResult<bool> {
    let n = sqlx::query(
        "UPDATE activation_requests SET status = $1, due_at = $2, attempts = $3, version = version + 1, body = $4 \
         WHERE id = $5 AND version = $6",
    )
    .bind(i64::from(s.request.status))
    .bind(due_at)
    .bind(attempts)
    .bind(s.request.encode_to_vec())
    .bind(&s.request.id)
    .bind(s.version)
    .execute(&mut **uow.tx())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Reads a request.
pub async fn get(db: &tenure_platform::db::Db, id: &str) -> ApiResult<Option<Stored>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM activation_requests WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.reader())
    .await?;
    row.as_ref().map(decode).transpose()
}

/// Reads a request inside a unit of work.
pub async fn get_tx(uow: &mut Uow, id: &str) -> ApiResult<Option<Stored>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM activation_requests WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **uow.tx())
    .await?;
    row.as_ref().map(decode).transpose()
}

/// Requests matching a raw WHERE clause over the indexed columns (with `$1..` binds of
/// text values), newest first.
pub async fn query(
    db: &tenure_platform::db::Db,
    where_sql: &str,
    binds: &[&str],
    limit: i64,
) -> ApiResult<Vec<Stored>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM activation_requests WHERE {where_sql} ORDER BY created_at DESC, id DESC LIMIT {limit}"
    );
    let mut q = sqlx::query(&sql);
    for b in binds {
        q = q.bind(*b);
    }
    let rows = q.fetch_all(db.reader()).await?;
    rows.iter().map(decode).collect()
}

/// Records who may decide a stage.
pub async fn add_approvers(
    uow: &mut Uow,
    request_id: &str,
    stage: i32,
    approvers: &[(String, String)],
    escalation: bool,
) -> ApiResult<()> {
    for (id, via) in approvers {
        sqlx::query(
            "INSERT INTO activation_approvers (request_id, stage, approver_id, via_group, escalation) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (request_id, stage, approver_id, escalation) DO NOTHING",
        )
        .bind(request_id)
        .bind(i64::from(stage))
        .bind(id)
        .bind(via)
        .bind(i64::from(escalation))
        .execute(&mut **uow.tx())
        .await?;
    }
    Ok(())
}

/// The group through which `approver` may decide `stage` of a request ("" when named
/// directly), or None when not an approver of it.
pub async fn approver_of(
    db: &tenure_platform::db::Db,
    request_id: &str,
    stage: i32,
    approver: &str,
    escalated: bool,
) -> ApiResult<Option<(String, bool)>> {
    let rows = sqlx::query("SELECT via_group, escalation FROM activation_approvers WHERE request_id = $1 AND stage = $2 AND approver_id = $3")
        .bind(request_id)
        .bind(i64::from(stage))
        .bind(approver)
        .fetch_all(db.reader())
        .await?;
    for r in rows {
        let esc = r.try_get::<i64, _>("escalation")? != 0;
        if !esc || escalated {
            return Ok(Some((r.try_get("via_group")?, esc)));
        }
    }
    Ok(None)
}

/// Whether `principal` appears as an approver of any stage of the request.
pub async fn is_any_approver(
    db: &tenure_platform::db::Db,
    request_id: &str,
    principal: &str,
) -> ApiResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM activation_approvers WHERE request_id = $1 AND approver_id = $2",
    )
    .bind(request_id)
    .bind(principal)
    .fetch_one(db.reader())
    .await?;
    Ok(n > 0)
}
