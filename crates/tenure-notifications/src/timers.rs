//! The notifications context's timer: one wake-up for the next due instant (a delivery
//! attempt, an expiry reminder, the alert rescan, pruning the audit trail), re-armed
//! when this context's log moves (a new notification queued) or when woken; no polling
//! interval. Survives restarts: due work is in the tables.

use std::sync::Arc;
use std::time::Duration;

use tenure_platform::backoff::coalesce;
use tenure_platform::clock::{from_micros, to_micros};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

/// Runs until `stop`.
pub async fn run(engine: Arc<Engine>, stop: CancellationToken) {
    loop {
        let head = engine.log.head();
        if let Err(e) = engine.rescan_if_due().await {
            tracing::warn!(error = %e, "alert rescan failed; retrying");
        }
        if let Err(e) = engine.prune_if_due().await {
            tracing::warn!(error = %e, "audit pruning failed; retrying");
        }
        if let Err(e) = engine.send_due_reminders().await {
            tracing::warn!(error = %e, "expiry reminders failed; retrying");
        }
        if let Err(e) = engine.deliver_due().await {
            tracing::warn!(error = %e, "delivery pass failed; retrying");
        }
        let next = match engine.next_due().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next notifications timer failed");
                Some(to_micros(engine.clock.now()) + 1_000_000)
            }
        };
        let woken = engine.timer_wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let due = async {
            match next {
                Some(d) => engine.clock.sleep_until(from_micros(d)).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = &mut woken => {
                if !coalesce(&stop).await {
                    return;
                }
            }
            () = engine.log.wait_for(head + 1) => {
                if !coalesce(&stop).await {
                    return;
                }
            }
            () = due => {}
            // a safety net for work another replica scheduled
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// Evaluates the alert kinds that events marked, until `stop`: woken by each mark;
/// while marks keep coming, a pass over all marked kinds every 50 ms, or, when a pass
/// takes longer than 5 ms, after nine times as long as it took (at most 10 s): a pass
/// reads the whole projection, so under a long burst (a bulk load) the passes take at
/// most a tenth of the time instead of a share that grows with the data. Activations
/// do not wait for this: their alerts are evaluated with the event.
/// A mark wakes this before the event's unit of work has committed, so after a
/// wake-up that finds nothing it looks again a few times over the next ~200 ms; and
/// once a second in any case.
pub async fn evaluate_marked(engine: Arc<Engine>, stop: CancellationToken) {
    const SETTLE_MS: [u64; 7] = [1, 2, 5, 10, 25, 50, 100];
    loop {
        let woken = engine.alert_wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let started = std::time::Instant::now();
        match engine.evaluate_marked().await {
            Ok(0) => {}
            Ok(_) => {
                // Let marks gather: under a burst of events, one scan per 50 ms, or
                // nine times the scan's own duration.
                let pause = (started.elapsed() * 9)
                    .clamp(Duration::from_millis(50), Duration::from_secs(10));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "evaluating marked alert kinds failed; retrying");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = &mut woken => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
        }
        for ms in SETTLE_MS {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            }
            match engine.evaluate_marked().await {
                Ok(0) => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "evaluating marked alert kinds failed; retrying");
                    break;
                }
            }
        }
    }
}
