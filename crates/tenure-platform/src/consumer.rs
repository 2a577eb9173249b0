//! The event consumer: follows another context's event stream and hands each event to a
//! handler inside a transaction of the consuming context that also moves the consumer's
//! cursor. What the handler did and the cursor commit together, so each event takes
//! effect exactly once however often the consumer crashes, restarts or reconnects
//! (effectively once; delivery itself is at least once). Several replicas may run the
//! same consumer against one database: each event's cursor move is claimed, under the
//! cursor row's lock, before the handler runs, so exactly one replica handles it.
//! Events already waiting are handled in batches (one unit of work and one claim per
//! batch), so a busy consumer pays one transaction per batch rather than per event.
//!
//! The consumer reconnects with exponential backoff (100 ms doubling to 10 s, with
//! jitter) and resumes after its stored cursor. A gap in the sequence (which a correct
//! producer never sends) makes it reconnect rather than skip.

use std::sync::Arc;

use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tenure_proto::EventEnvelope;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::ApiError;
use crate::events::{EventLog, UnitOfWork, claim_cursor, load_cursor};

/// Where a consumer reads events from (usually another context's gRPC `EventsService`).
pub trait EventSource<E>: Send + Sync + 'static {
    /// Every event after `after`, then live ones, in sequence order.
    fn subscribe(
        &self,
        after: i64,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<E, ApiError>>, ApiError>>;
}

/// What a consumer does with each event, inside the consuming context's unit of work.
pub trait EventHandler<S, O: EventEnvelope>: Send + Sync + 'static {
    /// Handles one event. An error rolls back the unit of work (and the cursor), and the
    /// event is delivered again after a backoff. Write only through `uow`: opening
    /// another unit of work here would wait for the writer this one holds (on SQLite,
    /// the only one) and lose the effectively-once guarantee.
    fn handle<'a>(
        &'a self,
        uow: &'a mut UnitOfWork<O>,
        event: &'a S,
    ) -> BoxFuture<'a, Result<(), ApiError>>;

    /// Called once after the batch's events were handled, before the unit of work
    /// commits: writes back what the handler kept in [`UnitOfWork::cache`] for the
    /// batch (a running hash chain, say). An error rolls the whole batch back.
    fn finish<'a>(&'a self, uow: &'a mut UnitOfWork<O>) -> BoxFuture<'a, Result<(), ApiError>> {
        let _ = uow;
        Box::pin(async { Ok(()) })
    }
}

/// A running consumer's identity and parts.
pub struct Consumer<S, O: EventEnvelope> {
    /// The cursor's name in the consuming context's cursor table, for example
    /// "assignments" for the assignments stream.
    pub name: String,
    /// The consuming context's own event log (its database and its events).
    pub log: EventLog<O>,
    /// The stream to follow.
    pub source: Arc<dyn EventSource<S>>,
    /// What to do with each event.
    pub handler: Arc<dyn EventHandler<S, O>>,
}

impl<S, O> Consumer<S, O>
where
    S: EventEnvelope,
    O: EventEnvelope,
{
    /// The stored cursor: the last sequence handled.
    pub async fn cursor(&self) -> Result<i64, ApiError> {
        load_cursor(self.log.db(), self.log.prefix(), &self.name).await
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                r = self.follow() => r,
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(source = %self.name, "event stream ended; reconnecting");
                    backoff.reset();
                }
                Err(e) => {
                    tracing::warn!(source = %self.name, error = %e, "event consumer interrupted; reconnecting");
                }
            }
            if !backoff.wait(&stop).await {
                return;
            }
        }
    }

    /// Follows the stream from the stored cursor until it fails or ends.
    ///
    /// Events that have already arrived when one is taken are handled together, up to
    /// [`MAX_BATCH`], in one unit of work with one cursor claim: under load a consumer
    /// pays one transaction per batch, not per event, and an idle one still handles
    /// each event the moment it arrives (nothing waits for a batch to fill). A batch
    /// commits or rolls back whole, so each event still takes effect exactly once.
    async fn follow(&self) -> Result<(), ApiError> {
        let mut cursor = self.cursor().await?;
        let mut stream = self.source.subscribe(cursor).await?;
        let mut batch: Vec<S> = Vec::new();
        loop {
            let Some(first) = stream.next().await else {
                return Ok(());
            };
            batch.clear();
            batch.push(first?);
            // What the stream has already delivered joins the batch; an error there is
            // returned once the events before it are handled.
            let mut failed = None;
            while batch.len() < MAX_BATCH {
                match stream.next().now_or_never() {
                    Some(Some(Ok(e))) => batch.push(e),
                    Some(Some(Err(e))) => {
                        failed = Some(e);
                        break;
                    }
                    Some(None) | None => break,
                }
            }
            loop {
                // Replays of what is done already drop out; what is left must follow on.
                batch.retain(|e| seq_of(e) > cursor);
                let Some(last) = batch.last().map(seq_of) else {
                    break;
                };
                if let Some(gap) = batch
                    .iter()
                    .zip(cursor + 1..)
                    .find(|(e, want)| seq_of(*e) != *want)
                {
                    return Err(ApiError::Internal(anyhow::anyhow!(
                        "gap in {} stream: expected {}, got {}",
                        self.name,
                        gap.1,
                        seq_of(gap.0)
                    )));
                }
                let mut uow = self.log.begin().await?;
                if !claim_cursor(uow.tx(), self.log.prefix(), &self.name, cursor, last).await? {
                    // Another replica of this consumer handled some of them: skip to
                    // where it is, and take what is left of the batch from there.
                    uow.rollback().await?;
                    cursor = self.cursor().await?;
                    tracing::debug!(source = %self.name, cursor, "another replica moved the cursor");
                    continue;
                }
                for event in &batch {
                    self.handler.handle(&mut uow, event).await?;
                }
                self.handler.finish(&mut uow).await?;
                uow.commit().await?;
                cursor = last;
                break;
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }
}

/// The most events one unit of work of a consumer handles. Bounded so that a consumer
/// catching up on a backlog still lets the context's other writers in between batches
/// (on SQLite they share one writer).
pub const MAX_BATCH: usize = 64;

fn seq_of<E: EventEnvelope>(e: &E) -> i64 {
    e.meta().map_or(0, |m| m.sequence)
}

/// An [`EventSource`] over an [`EventLog`] in the same process (tests, and a context
/// consuming its own log).
pub struct LocalSource<E>(pub EventLog<E>);

impl<E: EventEnvelope> EventSource<E> for LocalSource<E> {
    fn subscribe(
        &self,
        after: i64,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<E, ApiError>>, ApiError>> {
        let stream = self
            .0
            .subscribe(after, crate::events::TypeFilter::default())
            .map(|r| r.map(|e| (*e).clone()))
            .boxed();
        Box::pin(async move { Ok(stream) })
    }
}
