//! Protective limits at the gRPC edge that the transport does not give by itself:
//! a per-principal rate limit on mutations ([`MutationLimiter`], applied by
//! [`Limited`] to every registered service), and an end for stream consumers that
//! stop reading ([`bounded_stream`]).
//!
//! The other limits (message sizes, concurrent streams, requests in flight per
//! connection with load shedding, the unary deadline) are tonic/tower settings applied in
//! `tenure-server` and the [`crate::register!`] macro.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::auth::Caller;
use crate::clock::SharedClock;

/// Method-name verbs that only read. Every other method counts as a mutation, so a new
/// RPC is rate limited unless its name says it reads.
pub const READ_VERBS: &[&str] = &[
    "Get",
    "List",
    "Check",
    "Query",
    "Subscribe",
    "Export",
    "Verify",
    "Resolve",
];

/// Whether the gRPC method `path` ("/pkg.Service/Method", or just "Method") only reads.
pub fn is_read_method(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or(path);
    READ_VERBS.iter().any(|verb| {
        method
            .strip_prefix(verb)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(|c: char| c.is_uppercase()))
    })
}

/// The injected clock, as the rate limiter's time source (nanoseconds since the Unix
/// epoch), so tests move the limiter's time with the rest of Tenure's.
#[derive(Clone)]
struct InjectedClock(SharedClock);

impl GovernorClock for InjectedClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let nanos = self.0.now().timestamp_nanos_opt().unwrap_or(0);
        Nanos::from(u64::try_from(nanos).unwrap_or(0))
    }
}

/// Keeps at most this many principals' buckets before forgetting the full ones.
const MAX_TRACKED_PRINCIPALS: usize = 10_000;

/// A per-principal rate limit on mutations (GCRA, from `governor`). Reads and Tenure's
/// own service principals are exempt: reads are cheap and answered from memory or one
/// query, and the services' calls are the consequences of work already admitted.
#[derive(Clone)]
pub struct MutationLimiter {
    inner: Arc<LimiterInner>,
}

struct LimiterInner {
    limiter: RateLimiter<String, DashMapStateStore<String>, InjectedClock, NoOpMiddleware<Nanos>>,
    clock: InjectedClock,
    exempt: Vec<String>,
}

impl std::fmt::Debug for MutationLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutationLimiter")
            .field("exempt", &self.inner.exempt)
            .finish_non_exhaustive()
    }
}

impl MutationLimiter {
    /// `per_second` mutations per principal on average, `burst` at once; `None` when
    /// `per_second` is 0 (no limit). `exempt` are Tenure's own service principals.
    pub fn new(
        per_second: u32,
        burst: u32,
        clock: SharedClock,
        exempt: Vec<String>,
    ) -> Option<Self> {
        let rate = std::num::NonZeroU32::new(per_second)?;
        let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(rate);
        let clock = InjectedClock(clock);
        let limiter = RateLimiter::new(
            Quota::per_second(rate).allow_burst(burst),
            DashMapStateStore::default(),
            clock.clone(),
        );
        Some(Self {
            inner: Arc::new(LimiterInner {
                limiter,
                clock,
                exempt,
            }),
        })
    }

    /// Admits or refuses a call of `path` by `principal`: RESOURCE_EXHAUSTED with a
    /// `google.rpc.RetryInfo` (and the wait in the message) when over the limit.
    pub fn check(&self, path: &str, principal: &str) -> Result<(), Status> {
        if is_read_method(path) || self.inner.exempt.iter().any(|e| e == principal) {
            return Ok(());
        }
        if self.inner.limiter.len() > MAX_TRACKED_PRINCIPALS {
            self.inner.limiter.retain_recent();
        }
        match self.inner.limiter.check_key(&principal.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let now = self.inner.clock.now();
                let wait = not_until.wait_time_from(now);
                // Round up to whole milliseconds so a client that waits as told is admitted.
                let wait_ms = wait.as_nanos().div_ceil(1_000_000).max(1);
                let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(u64::MAX));
                tracing::debug!(principal, path, ?wait, "rate limited a mutation");
                Err(Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    format!(
                        "too many changes by {principal:?}: retry in {wait_ms} ms \
                         (limits.mutations_per_principal_per_sec)"
                    ),
                    ErrorDetails::with_retry_info(Some(wait)),
                ))
            }
        }
    }
}

/// A service wrapper that applies a [`MutationLimiter`] to the authenticated caller
/// (put in the request's extensions by [`crate::grpc::Authenticator`], which runs
/// first), and hands the [`StreamLimits`] to handlers in the request's extensions (see
/// [`stream_limits_of`]). Without a limiter it admits every call.
#[derive(Clone, Debug)]
pub struct Limited<S> {
    inner: S,
    limiter: Option<MutationLimiter>,
    streams: StreamLimits,
}

impl<S> Limited<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limiter: Option<MutationLimiter>, streams: StreamLimits) -> Self {
        Self {
            inner,
            limiter,
            streams,
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Limited<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Map<S::Future, DecodeErrorFix<S::Error>>,
        futures::future::Ready<Result<S::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.streams);
        if let Some(limiter) = &self.limiter
            && let Some(caller) = req.extensions().get::<Caller>()
            && let Err(status) = limiter.check(req.uri().path(), &caller.principal_id)
        {
            return futures::future::Either::Right(futures::future::ready(Ok(status.into_http())));
        }
        futures::future::Either::Left(futures::FutureExt::map(
            self.inner.call(req),
            invalid_argument_for_undecodable_requests::<S::Error>,
        ))
    }
}

type DecodeErrorFix<E> = fn(
    Result<http::Response<tonic::body::Body>, E>,
) -> Result<http::Response<tonic::body::Body>, E>;

/// tonic answers a request body that is not a valid protobuf message with INTERNAL (as
/// gRPC's status table suggests); the fault is the caller's, and Tenure promises that
/// INTERNAL means a fault of its own. Rewrites that one answer to INVALID_ARGUMENT,
/// keeping the decoder's message.
fn invalid_argument_for_undecodable_requests<E>(
    r: Result<http::Response<tonic::body::Body>, E>,
) -> Result<http::Response<tonic::body::Body>, E> {
    let mut response = r?;
    let headers = response.headers_mut();
    let undecodable = headers.get("grpc-status").is_some_and(|v| v == "13")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.starts_with("failed%20to%20decode%20Protobuf%20message"));
    if undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    Ok(response)
}

/// How server streams treat consumers that stop reading.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Messages buffered per stream ahead of the consumer.
    pub buffer: usize,
    /// How long the buffer may stay full before the stream ends with
    /// RESOURCE_EXHAUSTED.
    pub stall_timeout: Duration,
}

impl StreamLimits {
    /// From the configuration.
    pub fn from_config(l: &crate::config::Limits) -> Self {
        Self {
            buffer: l.stream_buffer_messages,
            stall_timeout: Duration::from_millis(l.slow_consumer_timeout_ms),
        }
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self::from_config(&crate::config::Limits::default())
    }
}

/// The stream limits the server put in `request`'s extensions (the defaults when
/// served without them), for [`bounded_stream`].
pub fn stream_limits_of<R>(request: &tonic::Request<R>) -> StreamLimits {
    request
        .extensions()
        .get::<StreamLimits>()
        .copied()
        .unwrap_or_default()
}

/// Counts streams ended because their consumer stopped reading (for tests and metrics).
static SLOW_CONSUMERS_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many server streams this process has ended because their consumer stopped
/// reading.
pub fn slow_consumers_dropped() -> u64 {
    SLOW_CONSUMERS_DROPPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs `inner` ahead of its consumer into a buffer of `limits.buffer` messages. When
/// the buffer stays full for `limits.stall_timeout` (the consumer reads nothing), the
/// stream stops producing: the consumer gets what was buffered, then RESOURCE_EXHAUSTED
/// saying to resume from its cursor. The server holds at most the buffer (and the HTTP/2
/// window) per stream, however slow the consumer.
pub fn bounded_stream<T, S>(
    inner: S,
    limits: StreamLimits,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>
where
    T: Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<T, Status>>(limits.buffer.max(1));
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut inner = std::pin::pin!(inner);
        while let Some(item) = inner.next().await {
            match tx.send_timeout(item, limits.stall_timeout).await {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                    SLOW_CONSUMERS_DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        stall_ms = limits.stall_timeout.as_millis(),
                        "ending a stream whose consumer stopped reading"
                    );
                    let _ = dropped_tx.send(());
                    return;
                }
                // The consumer went away.
                Err(tokio::sync::mpsc::error::SendTimeoutError::Closed(_)) => return,
            }
        }
    });
    Box::pin(async_stream::stream! {
        while let Some(item) = rx.recv().await {
            yield item;
        }
        if dropped_rx.await.is_ok() {
            yield Err(Status::resource_exhausted(
                "this stream was ended because its consumer stopped reading \
                 (limits.slow_consumer_timeout_ms); resume from the last sequence received",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_told_apart_by_their_verb() {
        for read in [
            "/tenure.assignments.v1.AccessService/CheckAccess",
            "/tenure.notifications.v1.AuditService/ExportAudit",
            "/tenure.assignments.v1.EventsService/SubscribeEvents",
            "GetPrincipal",
            "ListMyRoles",
            "VerifyAuditChain",
            "ResolveAdministrators",
        ] {
            assert!(is_read_method(read), "{read}");
        }
        for write in [
            "/tenure.activation.v1.ActivationService/ActivateRoles",
            "UpsertPrincipals",
            "RescanAlerts",
            "Getaway",
            "Listen",
            "",
        ] {
            assert!(!is_read_method(write), "{write}");
        }
    }
}
