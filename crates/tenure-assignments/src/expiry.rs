//! Exact expiry: one timer for the next due instant of any schedule or activation,
//! re-armed whenever schedules change (no polling interval). When it fires, every due
//! schedule and activation is marked processed and its "expired" event emitted, up to
//! [`BATCH`] in one unit of work; a conditional update makes the work happen once even
//! when several replicas race. After a restart, what ended while the server was down is due
//! at once. The access query never depends on this: it compares end times itself.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use tenure_platform::ApiResult;
use tenure_platform::backoff::{Backoff, coalesce};
use tenure_platform::clock::{from_micros, to_micros};
use tenure_platform::events::{NewEvent, UnitOfWork};
use tenure_proto::assignments::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::store;

/// Runs the expiry timer until `stop`.
pub async fn run(core: Arc<Core>, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        if let Err(e) = process_due(&core, core.clock.now()).await {
            tracing::warn!(error = %e, "expiry processing failed; retrying");
            if !backoff.wait(&stop).await {
                return;
            }
            continue;
        }
        backoff.reset();
        let next = match next_due(&core).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next expiry failed; retrying");
                Some(to_micros(core.clock.now()) + 1_000_000)
            }
        };
        // Arm the wake-up before sleeping so a change made meanwhile is not missed.
        let woken = core.expiry_wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match next {
            Some(due) => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = &mut woken => {
                        if !coalesce(&stop).await {
                            return;
                        }
                    }
                    () = core.clock.sleep_until(from_micros(due)) => {}
                }
            }
            None => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = &mut woken => {
                        if !coalesce(&stop).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// The first pending end. Each query names exactly the conditions of its partial index
/// (migration 140) and asks for the first row in its order, so it reads one index
/// entry; `MIN(…)` let a planner without statistics read them all.
async fn next_due(core: &Core) -> ApiResult<Option<i64>> {
    let a: Option<i64> = sqlx::query_scalar(
        "SELECT end_at FROM assignments_assignments \
         WHERE expired_processed = 0 AND removed_at IS NULL AND end_at IS NOT NULL \
         ORDER BY end_at LIMIT 1",
    )
    .fetch_optional(core.db.reader())
    .await?;
    let b: Option<i64> = sqlx::query_scalar(
        "SELECT end_at FROM assignments_activations \
         WHERE expired_processed = 0 AND ended_at IS NULL ORDER BY end_at LIMIT 1",
    )
    .fetch_optional(core.db.reader())
    .await?;
    Ok(match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    })
}

/// Most expiries one unit of work commits. A burst of ends then costs one transaction,
/// one sequence bump and one wait for the access model per hundred, not per expiry: one
/// each kept a PostgreSQL server 25-40 s behind 167 ends a second (BENCHMARKS.md,
/// workload 4).
pub const BATCH: usize = 100;

/// What one [`process_due`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Expired events emitted (schedules and activations).
    pub expired: usize,
    /// Units of work committed.
    pub units: usize,
}

/// Processes everything due at `now` (the run loop passes the clock's now; tests may
/// pass an instant ahead of it to process a burst while the timer sleeps), in batches
/// of up to [`BATCH`] per unit of work, ordered by end then id so racing replicas
/// claim rows in the same order.
pub async fn process_due(core: &Core, now: DateTime<Utc>) -> ApiResult<Pass> {
    let now_us = to_micros(now);
    let mut pass = Pass::default();
    loop {
        let due: Vec<String> = sqlx::query(&format!(
            "SELECT id FROM assignments_assignments WHERE expired_processed = 0 AND removed_at IS NULL \
             AND end_at IS NOT NULL AND end_at <= $1 ORDER BY end_at, id LIMIT {BATCH}"
        ))
        .bind(now_us)
        .fetch_all(core.db.reader())
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;
        let mut uow = core.begin().await?;
        for id in &due {
            if !claim(&mut uow, "assignments_assignments", id).await? {
                continue;
            }
            let Some(row) = store::get_assignment_tx(&mut uow, id).await? else {
                continue;
            };
            let assignment = store::assignment_proto(core, &row, now);
            uow.emit(NewEvent::new(
                pb::AssignmentExpired {
                    assignment: Some(assignment),
                    ended_instance_ids: vec![],
                },
                "system",
                id,
            ));
        }
        commit(core, uow, &mut pass).await?;
        if due.len() < BATCH {
            break;
        }
    }
    loop {
        let due: Vec<String> = sqlx::query(&format!(
            "SELECT id FROM assignments_activations WHERE expired_processed = 0 AND ended_at IS NULL AND end_at <= $1 \
             ORDER BY end_at, id LIMIT {BATCH}"
        ))
        .bind(now_us)
        .fetch_all(core.db.reader())
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;
        let mut uow = core.begin().await?;
        for id in &due {
            if !claim(&mut uow, "assignments_activations", id).await? {
                continue;
            }
            let row = sqlx::query(&format!(
                "SELECT {} FROM assignments_activations WHERE id = $1",
                store::ACTIVATION_COLUMNS
            ))
            .bind(id)
            .fetch_one(&mut **uow.tx())
            .await?;
            let row = store::activation_from_row(&row)?;
            let instance = store::activation_proto(core, &row, now);
            uow.emit(
                NewEvent::new(
                    pb::InstanceExpired {
                        instance: Some(instance),
                    },
                    "system",
                    id,
                )
                .correlated(row.request_id),
            );
        }
        commit(core, uow, &mut pass).await?;
        if due.len() < BATCH {
            break;
        }
    }
    Ok(pass)
}

/// Marks `id` of `table` processed unless another pass (or replica) already has.
async fn claim(uow: &mut UnitOfWork<pb::Event>, table: &str, id: &str) -> ApiResult<bool> {
    Ok(sqlx::query(&format!(
        "UPDATE {table} SET expired_processed = 1 WHERE id = $1 AND expired_processed = 0"
    ))
    .bind(id)
    .execute(&mut **uow.tx())
    .await?
    .rows_affected()
        == 1)
}

/// Commits a batch that emitted something; abandons one that claimed nothing.
async fn commit(core: &Core, uow: UnitOfWork<pb::Event>, pass: &mut Pass) -> ApiResult<()> {
    let n = uow.pending();
    if n == 0 {
        uow.rollback().await?;
        return Ok(());
    }
    core.commit(uow).await?;
    pass.expired += n;
    pass.units += 1;
    Ok(())
}
