//! Time, injected. Every component reads "now" from a [`Clock`] and waits for instants
//! through it, so tests move time with [`ManualClock::advance`] instead of sleeping, and
//! timers wake exactly when the (moved) time reaches them.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// A source of the current UTC time that can also wait for an instant.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Completes once [`Clock::now`] is at or after `deadline`.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the real clock
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                #[allow(clippy::disallowed_methods)]
                let left = deadline - Utc::now();
                if left <= TimeDelta::zero() {
                    return;
                }
                // Re-check after waking: the wall clock may have been stepped meanwhile.
                let left = left.to_std().unwrap_or(StdDuration::ZERO);
                tokio::time::sleep(left.min(StdDuration::from_secs(60))).await;
            }
        })
    }
}

/// A clock that only moves when told to. Waiters wake as soon as the time they wait for
/// is reached by [`ManualClock::advance`] or [`ManualClock::set`].
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        let (tx, _) = watch::channel(start);
        Self { now: Arc::new(tx) }
    }

    /// Moves the clock forward (or backward, with a negative delta).
    pub fn advance(&self, by: TimeDelta) {
        self.now.send_modify(|t| *t += by);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // `wait_for` only errs when the sender is gone; then the time can never come.
            if rx.wait_for(|now| *now >= deadline).await.is_err() {
                futures::future::pending::<()>().await;
            }
        })
    }
}

/// Converts a time to the integer stored in the database: microseconds since the Unix
/// epoch, the same on SQLite and PostgreSQL.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`to_micros`]. Out-of-range values (impossible for values this crate
/// wrote) clamp to the Unix epoch.
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::UNIX_EPOCH)
}

/// Converts a protobuf timestamp to UTC, `None` when it is out of chrono's range or its
/// nanoseconds are invalid.
pub fn from_proto(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

/// Converts a UTC time to a protobuf timestamp.
pub fn to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_waiter_when_advanced_past_deadline() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = ManualClock::new(start);
        let deadline = start + TimeDelta::seconds(10);
        let waiter = tokio::spawn(clock.sleep_until(deadline));
        clock.advance(TimeDelta::seconds(9));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "woke before its deadline");
        clock.advance(TimeDelta::seconds(1));
        tokio::time::timeout(StdDuration::from_secs(5), waiter)
            .await
            .expect("waiter did not wake at its deadline")
            .unwrap();
        assert_eq!(clock.now(), deadline);
    }

    #[test]
    fn micros_round_trip() {
        let t = DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap();
        assert_eq!(from_micros(to_micros(t)), t);
    }

    #[test]
    fn proto_timestamp_rejects_negative_nanos() {
        let ts = prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert!(from_proto(&ts).is_none());
        let t = DateTime::from_timestamp(1_800_000_000, 5).unwrap();
        assert_eq!(from_proto(&to_proto(t)), Some(t));
    }
}
