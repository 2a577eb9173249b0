//! Exact expiry: one timer for the next due instant of any schedule or activation,
//! re-armed whenever schedules change (no polling interval). When it fires, every due
//! schedule and activation is marked processed and its "expired" event emitted, each in
//! its own unit of work; a conditional update makes the work happen once even when
//! several replicas race. After a restart, what ended while the server was down is due
//! at once. The access query never depends on this: it compares end times itself.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row as _;
use tenure_platform::ApiResult;
use tenure_platform::backoff::coalesce;
use tenure_platform::clock::{from_micros, to_micros};
use tenure_platform::events::NewEvent;
use tenure_proto::assignments::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::store;

/// Runs the expiry timer until `stop`.
pub async fn run(core: Arc<Core>, stop: CancellationToken) {
    loop {
        if let Err(e) = process_due(&core).await {
            tracing::warn!(error = %e, "expiry processing failed; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
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

async fn next_due(core: &Core) -> ApiResult<Option<i64>> {
    let a: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(end_at) FROM assignments_assignments WHERE expired_processed = 0 AND removed_at IS NULL AND end_at IS NOT NULL",
    )
    .fetch_one(core.db.reader())
    .await?;
    let b: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(end_at) FROM assignments_activations WHERE expired_processed = 0 AND ended_at IS NULL",
    )
    .fetch_one(core.db.reader())
    .await?;
    Ok(match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    })
}

/// Processes everything due now. Public for tests that move the clock.
pub async fn process_due(core: &Core) -> ApiResult<()> {
    let now = core.clock.now();
    let now_us = to_micros(now);
    let due_assignments: Vec<String> = sqlx::query(
        "SELECT id FROM assignments_assignments WHERE expired_processed = 0 AND removed_at IS NULL \
         AND end_at IS NOT NULL AND end_at <= $1 ORDER BY end_at LIMIT 500",
    )
    .bind(now_us)
    .fetch_all(core.db.reader())
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>("id"))
    .collect::<Result<_, _>>()?;
    for id in due_assignments {
        let mut uow = core.begin().await?;
        let claimed = sqlx::query("UPDATE assignments_assignments SET expired_processed = 1 WHERE id = $1 AND expired_processed = 0")
            .bind(&id)
            .execute(&mut **uow.tx())
            .await?
            .rows_affected()
            == 1;
        if !claimed {
            uow.rollback().await?;
            continue;
        }
        let Some(row) = store::get_assignment_tx(&mut uow, &id).await? else {
            uow.rollback().await?;
            continue;
        };
        let assignment = store::assignment_proto(core, &row, now);
        uow.emit(NewEvent::new(
            pb::AssignmentExpired {
                assignment: Some(assignment),
                ended_instance_ids: vec![],
            },
            "system",
            &id,
        ));
        core.commit(uow).await?;
    }
    let due_activations: Vec<String> = sqlx::query(
        "SELECT id FROM assignments_activations WHERE expired_processed = 0 AND ended_at IS NULL AND end_at <= $1 \
         ORDER BY end_at LIMIT 500",
    )
    .bind(now_us)
    .fetch_all(core.db.reader())
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>("id"))
    .collect::<Result<_, _>>()?;
    for id in due_activations {
        let mut uow = core.begin().await?;
        let claimed = sqlx::query("UPDATE assignments_activations SET expired_processed = 1 WHERE id = $1 AND expired_processed = 0")
            .bind(&id)
            .execute(&mut **uow.tx())
            .await?
            .rows_affected()
            == 1;
        if !claimed {
            uow.rollback().await?;
            continue;
        }
        let row = sqlx::query(&format!(
            "SELECT {} FROM assignments_activations WHERE id = $1",
            store::ACTIVATION_COLUMNS
        ))
        .bind(&id)
        .fetch_one(&mut **uow.tx())
        .await?;
        let instance = store::activation_proto(core, &store::activation_from_row(&row)?, now);
        uow.emit(
            NewEvent::new(
                pb::InstanceExpired {
                    instance: Some(instance),
                },
                "system",
                &id,
            )
            .correlated(store::activation_from_row(&row)?.request_id),
        );
        core.commit(uow).await?;
    }
    Ok(())
}
