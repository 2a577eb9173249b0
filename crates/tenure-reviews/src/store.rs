//! Reading and writing definitions, rounds, items and observed activations (sqlx).
//! Changes to a stored document are conditional on its row version, so racing writers
//! (replicas, timers, reviewers) each see whether they won.

use prost::Message as _;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use tenure_platform::db::Db;
use tenure_platform::events::UnitOfWork;
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::reviews::v1 as pb;

type Uow = UnitOfWork<pb::Event>;

fn body<M: prost::Message + Default>(row: &AnyRow) -> ApiResult<M> {
    let b: Vec<u8> = row.try_get("body")?;
    M::decode(b.as_slice()).map_err(|e| ApiError::Internal(e.into()))
}

// ----- definitions -----------------------------------------------------------------

/// A stored definition.
#[derive(Debug, Clone)]
pub struct Def {
    /// The definition (output-only fields as stored).
    pub def: pb::ReviewDefinition,
    /// Row version.
    pub version: i64,
    /// When the next round starts (µs).
    pub next_round_at: Option<i64>,
    /// The series index of the next round.
    pub next_index: i64,
    /// Rounds started.
    pub rounds_started: i64,
    /// Deleted (kept for past rounds).
    pub deleted: bool,
}

const DEF_COLS: &str = "body, version, next_round_at, next_index, rounds_started, deleted";

fn def_row(row: &AnyRow) -> ApiResult<Def> {
    Ok(Def {
        def: body(row)?,
        version: row.try_get("version")?,
        next_round_at: row.try_get("next_round_at")?,
        next_index: row.try_get("next_index")?,
        rounds_started: row.try_get("rounds_started")?,
        deleted: row.try_get::<i64, _>("deleted")? != 0,
    })
}

/// Inserts a definition.
pub async fn insert_def(uow: &mut Uow, d: &Def) -> ApiResult<()> {
    let scope = d
        .def
        .scope
        .as_ref()
        .map(|s| s.scope_id.clone())
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO reviews_definitions (id, display_name, scope_id, deleted, next_round_at, next_index, rounds_started, version, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8)",
    )
    .bind(&d.def.id)
    .bind(&d.def.display_name)
    .bind(scope)
    .bind(i64::from(d.deleted))
    .bind(d.next_round_at)
    .bind(d.next_index)
    .bind(d.rounds_started)
    .bind(d.def.encode_to_vec())
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// Writes a changed definition if nobody changed it since `d.version`.
pub async fn update_def(uow: &mut Uow, d: &Def) -> ApiResult<bool> {
    let scope = d
        .def
        .scope
        .as_ref()
        .map(|s| s.scope_id.clone())
        .unwrap_or_default();
    let n = sqlx::query(
        "UPDATE reviews_definitions SET display_name = $1, scope_id = $2, deleted = $3, next_round_at = $4, \
         next_index = $5, rounds_started = $6, version = version + 1, body = $7 WHERE id = $8 AND version = $9",
    )
    .bind(&d.def.display_name)
    .bind(scope)
    .bind(i64::from(d.deleted))
    .bind(d.next_round_at)
    .bind(d.next_index)
    .bind(d.rounds_started)
    .bind(d.def.encode_to_vec())
    .bind(&d.def.id)
    .bind(d.version)
    .execute(&mut **uow.tx())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Reads a definition (deleted ones too).
pub async fn get_def(db: &Db, id: &str) -> ApiResult<Option<Def>> {
    let row = sqlx::query(&format!(
        "SELECT {DEF_COLS} FROM reviews_definitions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.reader())
    .await?;
    row.as_ref().map(def_row).transpose()
}

/// Every definition not deleted, by display name.
pub async fn list_defs(db: &Db) -> ApiResult<Vec<Def>> {
    let rows = sqlx::query(&format!(
        "SELECT {DEF_COLS} FROM reviews_definitions WHERE deleted = 0 ORDER BY display_name, id"
    ))
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(def_row).collect()
}

/// Definitions whose next round is due at `now`.
pub async fn due_defs(db: &Db, now: i64) -> ApiResult<Vec<Def>> {
    let rows = sqlx::query(&format!(
        "SELECT {DEF_COLS} FROM reviews_definitions WHERE deleted = 0 AND next_round_at IS NOT NULL AND next_round_at <= $1 ORDER BY next_round_at LIMIT 100"
    ))
    .bind(now)
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(def_row).collect()
}

/// The earliest next round of any definition.
pub async fn next_def_due(db: &Db) -> ApiResult<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT MIN(next_round_at) FROM reviews_definitions WHERE deleted = 0")
            .fetch_one(db.reader())
            .await?,
    )
}

// ----- rounds ------------------------------------------------------------------------

/// A stored round.
#[derive(Debug, Clone)]
pub struct Round {
    /// The round (progress is computed on read).
    pub round: pb::ReviewRound,
    /// Row version.
    pub version: i64,
    /// The scope of its definition.
    pub scope_id: String,
    /// Reminders up to this instant are sent (µs).
    pub reminded_until: i64,
    /// The next instant a timer acts on it (µs).
    pub due_at: Option<i64>,
}

const ROUND_COLS: &str = "body, version, scope_id, reminded_until, due_at";

fn round_row(row: &AnyRow) -> ApiResult<Round> {
    Ok(Round {
        round: body(row)?,
        version: row.try_get("version")?,
        scope_id: row.try_get("scope_id")?,
        reminded_until: row.try_get("reminded_until")?,
        due_at: row.try_get("due_at")?,
    })
}

fn micros(t: Option<&prost_types::Timestamp>) -> i64 {
    t.and_then(tenure_platform::clock::from_proto)
        .map(tenure_platform::clock::to_micros)
        .unwrap_or_default()
}

/// Inserts a round. A second round with the same number of the same definition is
/// refused by the table (the loser of a race rolls back).
pub async fn insert_round(uow: &mut Uow, r: &Round) -> ApiResult<()> {
    let x = &r.round;
    sqlx::query(
        "INSERT INTO reviews_rounds (id, definition_id, round_number, status, scope_id, start_at, end_at, current_stage, \
         reminded_until, due_at, version, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11)",
    )
    .bind(&x.id)
    .bind(&x.definition_id)
    .bind(i64::from(x.round_number))
    .bind(i64::from(x.status))
    .bind(&r.scope_id)
    .bind(micros(x.start_time.as_ref()))
    .bind(micros(x.end_time.as_ref()))
    .bind(i64::from(x.current_stage))
    .bind(r.reminded_until)
    .bind(r.due_at)
    .bind(x.encode_to_vec())
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// Writes a changed round if nobody changed it since `r.version`.
pub async fn update_round(uow: &mut Uow, r: &Round) -> ApiResult<bool> {
    let x = &r.round;
    let n = sqlx::query(
        "UPDATE reviews_rounds SET status = $1, end_at = $2, current_stage = $3, reminded_until = $4, due_at = $5, \
         version = version + 1, body = $6 WHERE id = $7 AND version = $8",
    )
    .bind(i64::from(x.status))
    .bind(micros(x.end_time.as_ref()))
    .bind(i64::from(x.current_stage))
    .bind(r.reminded_until)
    .bind(r.due_at)
    .bind(x.encode_to_vec())
    .bind(&x.id)
    .bind(r.version)
    .execute(&mut **uow.tx())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Locks a round for a decision: true when it is in progress in `stage`. On PostgreSQL
/// the row lock orders the decision against the round's completion.
pub async fn lock_open_round(uow: &mut Uow, id: &str, stage: i32) -> ApiResult<bool> {
    let n = sqlx::query(
        "UPDATE reviews_rounds SET version = version WHERE id = $1 AND status = $2 AND current_stage = $3",
    )
    .bind(id)
    .bind(i64::from(i32::from(pb::RoundStatus::InProgress)))
    .bind(i64::from(stage))
    .execute(&mut **uow.tx())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Reads a round.
pub async fn get_round(db: &Db, id: &str) -> ApiResult<Option<Round>> {
    let row = sqlx::query(&format!(
        "SELECT {ROUND_COLS} FROM reviews_rounds WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.reader())
    .await?;
    row.as_ref().map(round_row).transpose()
}

/// Rounds, newest first; of one definition when `definition_id` is not empty.
pub async fn list_rounds(db: &Db, definition_id: &str) -> ApiResult<Vec<Round>> {
    let rows = if definition_id.is_empty() {
        sqlx::query(&format!(
            "SELECT {ROUND_COLS} FROM reviews_rounds ORDER BY start_at DESC, id DESC"
        ))
        .fetch_all(db.reader())
        .await?
    } else {
        sqlx::query(&format!(
            "SELECT {ROUND_COLS} FROM reviews_rounds WHERE definition_id = $1 ORDER BY start_at DESC, id DESC"
        ))
        .bind(definition_id)
        .fetch_all(db.reader())
        .await?
    };
    rows.iter().map(round_row).collect()
}

/// Whether a definition has a round in progress.
pub async fn has_open_round(db: &Db, definition_id: &str) -> ApiResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM reviews_rounds WHERE definition_id = $1 AND status = $2",
    )
    .bind(definition_id)
    .bind(i64::from(i32::from(pb::RoundStatus::InProgress)))
    .fetch_one(db.reader())
    .await?;
    Ok(n > 0)
}

/// Rounds whose timer is due at `now`.
pub async fn due_rounds(db: &Db, now: i64) -> ApiResult<Vec<Round>> {
    let rows = sqlx::query(&format!(
        "SELECT {ROUND_COLS} FROM reviews_rounds WHERE due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at LIMIT 100"
    ))
    .bind(now)
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(round_row).collect()
}

/// The earliest due instant of any round.
pub async fn next_round_due(db: &Db) -> ApiResult<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT MIN(due_at) FROM reviews_rounds")
        .fetch_one(db.reader())
        .await?)
}

// ----- items -------------------------------------------------------------------------

/// A stored item.
#[derive(Debug, Clone)]
pub struct Item {
    /// The item.
    pub item: pb::DecisionItem,
    /// Row version.
    pub version: i64,
}

fn item_row(row: &AnyRow) -> ApiResult<Item> {
    Ok(Item {
        item: body(row)?,
        version: row.try_get("version")?,
    })
}

/// Inserts an item (`seq` orders the items of a round).
pub async fn insert_item(
    uow: &mut Uow,
    i: &pb::DecisionItem,
    seq: i64,
    created_at: i64,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO reviews_items (id, round_id, seq, principal_id, role_id, stage, decision, apply_status, created_at, version, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10)",
    )
    .bind(&i.id)
    .bind(&i.round_id)
    .bind(seq)
    .bind(i.principal.as_ref().map(|p| p.id.clone()).unwrap_or_default())
    .bind(i.role.as_ref().map(|p| p.id.clone()).unwrap_or_default())
    .bind(i64::from(i.stage))
    .bind(i64::from(i.decision))
    .bind(i64::from(i.apply_result.as_ref().map_or(0, |a| a.status)))
    .bind(created_at)
    .bind(i.encode_to_vec())
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// Writes a changed item if nobody changed it since `i.version`.
pub async fn update_item(uow: &mut Uow, i: &Item) -> ApiResult<bool> {
    let x = &i.item;
    let n = sqlx::query(
        "UPDATE reviews_items SET stage = $1, decision = $2, apply_status = $3, version = version + 1, body = $4 \
         WHERE id = $5 AND version = $6",
    )
    .bind(i64::from(x.stage))
    .bind(i64::from(x.decision))
    .bind(i64::from(x.apply_result.as_ref().map_or(0, |a| a.status)))
    .bind(x.encode_to_vec())
    .bind(&x.id)
    .bind(i.version)
    .execute(&mut **uow.tx())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Reads an item.
pub async fn get_item(db: &Db, id: &str) -> ApiResult<Option<Item>> {
    let row = sqlx::query("SELECT body, version FROM reviews_items WHERE id = $1")
        .bind(id)
        .fetch_optional(db.reader())
        .await?;
    row.as_ref().map(item_row).transpose()
}

/// Reads an item inside a unit of work.
pub async fn get_item_tx(uow: &mut Uow, id: &str) -> ApiResult<Option<Item>> {
    let row = sqlx::query("SELECT body, version FROM reviews_items WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **uow.tx())
        .await?;
    row.as_ref().map(item_row).transpose()
}

/// The items of a round, in snapshot order.
pub async fn items_of_round(db: &Db, round_id: &str) -> ApiResult<Vec<Item>> {
    let rows =
        sqlx::query("SELECT body, version FROM reviews_items WHERE round_id = $1 ORDER BY seq")
            .bind(round_id)
            .fetch_all(db.reader())
            .await?;
    rows.iter().map(item_row).collect()
}

/// The items of a round, inside a unit of work.
pub async fn items_of_round_tx(uow: &mut Uow, round_id: &str) -> ApiResult<Vec<Item>> {
    let rows =
        sqlx::query("SELECT body, version FROM reviews_items WHERE round_id = $1 ORDER BY seq")
            .bind(round_id)
            .fetch_all(&mut **uow.tx())
            .await?;
    rows.iter().map(item_row).collect()
}

/// The items about a principal, newest first.
pub async fn items_of_principal(db: &Db, principal_id: &str) -> ApiResult<Vec<Item>> {
    let rows = sqlx::query(
        "SELECT body, version FROM reviews_items WHERE principal_id = $1 ORDER BY created_at DESC, seq DESC",
    )
    .bind(principal_id)
    .fetch_all(db.reader())
    .await?;
    rows.iter().map(item_row).collect()
}

/// Records who may decide an item in a stage.
pub async fn add_reviewers(
    uow: &mut Uow,
    round_id: &str,
    item_id: &str,
    stage: i32,
    reviewers: &[String],
) -> ApiResult<()> {
    for r in reviewers {
        sqlx::query(
            "INSERT INTO reviews_item_reviewers (item_id, stage, reviewer_id, round_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (item_id, stage, reviewer_id) DO NOTHING",
        )
        .bind(item_id)
        .bind(i64::from(stage))
        .bind(r)
        .bind(round_id)
        .execute(&mut **uow.tx())
        .await?;
    }
    Ok(())
}

/// Whether `reviewer` may decide the item in `stage`.
pub async fn is_item_reviewer(
    db: &Db,
    item_id: &str,
    stage: i32,
    reviewer: &str,
) -> ApiResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM reviews_item_reviewers WHERE item_id = $1 AND stage = $2 AND reviewer_id = $3",
    )
    .bind(item_id)
    .bind(i64::from(stage))
    .bind(reviewer)
    .fetch_one(db.reader())
    .await?;
    Ok(n > 0)
}

/// The (item id, stage) pairs `reviewer` reviews in a round, any stage.
pub async fn reviewer_items(
    db: &Db,
    round_id: &str,
    reviewer: &str,
) -> ApiResult<Vec<(String, i32)>> {
    let rows = sqlx::query(
        "SELECT item_id, stage FROM reviews_item_reviewers WHERE round_id = $1 AND reviewer_id = $2",
    )
    .bind(round_id)
    .bind(reviewer)
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>("item_id")?,
                i32::try_from(r.try_get::<i64, _>("stage")?).unwrap_or_default(),
            ))
        })
        .collect()
}

/// The rounds in which `reviewer` reviews anything.
pub async fn rounds_of_reviewer(db: &Db, reviewer: &str) -> ApiResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT round_id FROM reviews_item_reviewers WHERE reviewer_id = $1",
    )
    .bind(reviewer)
    .fetch_all(db.reader())
    .await?)
}

// ----- activity ----------------------------------------------------------------------

/// Records an activation seen on the assignments stream (once per instance).
pub async fn record_activation(
    uow: &mut Uow,
    instance_id: &str,
    principal_id: &str,
    via_group: &str,
    role_id: &str,
    scope_id: &str,
    at: i64,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO reviews_activations (instance_id, principal_id, via_group, role_id, scope_id, activated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (instance_id) DO NOTHING",
    )
    .bind(instance_id)
    .bind(principal_id)
    .bind(via_group)
    .bind(role_id)
    .bind(scope_id)
    .bind(at)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// How often `principal` (or, for a group, its members through it) activated `role`
/// at `scope` or below since `since`, and when last ever.
pub async fn activations(
    db: &Db,
    principal: &str,
    role: &str,
    scope: &str,
    since: i64,
) -> ApiResult<(i64, Option<i64>)> {
    let rows = sqlx::query(
        "SELECT scope_id, activated_at FROM reviews_activations \
         WHERE (principal_id = $1 OR via_group = $2) AND role_id = $3",
    )
    .bind(principal)
    .bind(principal)
    .bind(role)
    .fetch_all(db.reader())
    .await?;
    let prefix = if scope == "/" {
        "/".to_owned()
    } else {
        format!("{scope}/")
    };
    let (mut n, mut last) = (0, None::<i64>);
    for r in rows {
        let s: String = r.try_get("scope_id")?;
        if s != scope && !s.starts_with(&prefix) {
            continue;
        }
        let at: i64 = r.try_get("activated_at")?;
        if at >= since {
            n += 1;
        }
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    Ok((n, last))
}

/// The progress of a round, counted from its items.
pub async fn progress(db: &Db, round_id: &str) -> ApiResult<pb::RoundProgress> {
    let rows = sqlx::query(
        "SELECT decision, apply_status, COUNT(*) AS n FROM reviews_items WHERE round_id = $1 GROUP BY decision, apply_status",
    )
    .bind(round_id)
    .fetch_all(db.reader())
    .await?;
    let mut p = pb::RoundProgress::default();
    for r in rows {
        let d = i32::try_from(r.try_get::<i64, _>("decision")?).unwrap_or_default();
        let a = i32::try_from(r.try_get::<i64, _>("apply_status")?).unwrap_or_default();
        let n = i32::try_from(r.try_get::<i64, _>("n")?).unwrap_or(i32::MAX);
        p.total += n;
        match pb::ReviewDecision::try_from(d) {
            Ok(pb::ReviewDecision::Approve) => {
                p.approved += n;
                p.decided += n;
            }
            Ok(pb::ReviewDecision::Deny) => {
                p.denied += n;
                p.decided += n;
            }
            Ok(pb::ReviewDecision::DontKnow) => p.dont_know += n,
            _ => p.not_reviewed += n,
        }
        match pb::ApplyStatus::try_from(a) {
            Ok(
                pb::ApplyStatus::Applied
                | pb::ApplyStatus::AlreadyGone
                | pb::ApplyStatus::NotNeeded,
            ) => {
                p.applied += n;
            }
            Ok(pb::ApplyStatus::Failed) => p.apply_failed += n,
            _ => {}
        }
    }
    Ok(p)
}
