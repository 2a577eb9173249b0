//! Exponential backoff with jitter for background loops (consumers, timers): after a
//! failure they wait 100 ms, doubling to 10 s, plus up to a quarter of that at random,
//! instead of retrying at once and spinning on a peer or database that is down.

use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;

/// The delays of one retrying loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    /// Delays from `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The delay before the next attempt (with jitter), and doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let quarter = u64::try_from(base.as_millis() / 4).unwrap_or(u64::MAX);
        base + Duration::from_millis(rand::thread_rng().gen_range(0..=quarter))
    }

    /// Waits the next delay; false when `stop` is cancelled first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// How long a timer loop woken by a commit waits before it looks at what is due: the
/// commits of a burst (a bulk load, a consumer catching up) then cost one look, not one
/// each. A commit can only bring a due instant closer, and nothing Tenure schedules is
/// due within this long of being written, so no timer fires later for it.
pub const WAKE_COALESCE: Duration = Duration::from_millis(10);

/// Waits [`WAKE_COALESCE`]; false when `stop` is cancelled first.
pub async fn coalesce(stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(WAKE_COALESCE) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_bounded_jitter_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let bases = [100, 200, 400, 800, 800];
        for base in bases {
            let d = b.next_delay().as_millis();
            assert!(
                (base..=base + base / 4).contains(&d),
                "{d} ms is not within [{base}, {base} + 25%]"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }

    #[tokio::test]
    async fn waiting_ends_early_when_stopped() {
        let stop = CancellationToken::new();
        let mut quick = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        assert!(
            quick.wait(&stop).await,
            "a wait that is not stopped completes"
        );
        stop.cancel();
        // Ten seconds unless the stop ends it: the test would time out.
        let mut slow = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let stopped = tokio::time::timeout(Duration::from_secs(5), slow.wait(&stop)).await;
        assert_eq!(stopped, Ok(false));
    }
}
