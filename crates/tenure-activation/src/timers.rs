//! The activation context's timer: one wake-up for the next due instant of any request
//! (approval timeout, escalation, scheduled start, provisioning retry), re-armed when
//! requests change; no polling interval. Survives restarts: due work is in the table.

use std::sync::Arc;
use std::time::Duration;

use tenure_platform::backoff::{Backoff, coalesce};
use tenure_platform::clock::{from_micros, to_micros};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

/// Runs until `stop`.
pub async fn run(engine: Arc<Engine>, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        match engine.process_due().await {
            Ok(pass) if pass.more_due() => {
                // A full pass: a backlog is draining. The next pass runs now, not at the
                // next wake-up (which a commit's notification could delay).
                backoff.reset();
                tokio::task::yield_now().await;
                if stop.is_cancelled() {
                    return;
                }
                continue;
            }
            Ok(pass) if pass.all_failed() => {
                // Every due request failed: do not spin on them.
                if !backoff.wait(&stop).await {
                    return;
                }
                continue;
            }
            Ok(_) => backoff.reset(),
            Err(e) => {
                // Due work that keeps failing (a peer or the database down) is retried
                // with backoff, not at once in a loop.
                tracing::warn!(error = %e, "activation timer pass failed; retrying");
                if !backoff.wait(&stop).await {
                    return;
                }
                continue;
            }
        }
        let next = match engine.next_due().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next activation timer failed");
                Some(to_micros(engine.clock.now()) + 1_000_000)
            }
        };
        let woken = engine.timer_wake.notified();
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
                    () = engine.clock.sleep_until(from_micros(due)) => {}
                    // a safety net for due times another replica moved
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
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
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    }
}
