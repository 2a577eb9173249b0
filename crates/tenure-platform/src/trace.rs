//! W3C trace context, carried through a call.
//!
//! The server layer ([`crate::grpc::TraceLayer`]) reads `traceparent`/`tracestate` from
//! the incoming gRPC metadata (or starts a new trace when there is none) and runs the
//! call inside [`TraceContext::scope`]. Everything the call does sees it through
//! [`TraceContext::current`]: events store it, and clients of other contexts send it on
//! ([`crate::grpc::inject_trace`]), so one trace spans every context a change touches.

use std::fmt::Write as _;
use std::future::Future;

use rand::RngCore as _;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A W3C trace context: the `traceparent` and optional `tracestate` header values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `version-traceid-parentid-flags`, for example
    /// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    pub traceparent: String,
    /// Vendor-specific state, passed on untouched.
    pub tracestate: String,
}

impl TraceContext {
    /// Parses incoming header values; `None` when `traceparent` is not a valid version-00
    /// W3C value (then a new trace is started rather than trusting garbage).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let [version, trace_id, parent_id, flags] = parts.as_slice() else {
            return None;
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = *version == "00"
            && hex(trace_id, 32)
            && hex(parent_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0');
        if !valid {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| s.len() <= 512)
            .unwrap_or_default()
            .to_owned();
        Some(Self {
            traceparent: traceparent.trim().to_owned(),
            tracestate,
        })
    }

    /// A new, sampled trace with random ids.
    pub fn new_root() -> Self {
        let mut rng = rand::thread_rng();
        let mut trace = [0u8; 16];
        let mut span = [0u8; 8];
        rng.fill_bytes(&mut trace);
        rng.fill_bytes(&mut span);
        trace[0] |= 1; // never all zeros
        span[0] |= 1;
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        for b in trace {
            let _ = write!(s, "{b:02x}");
        }
        s.push('-');
        for b in span {
            let _ = write!(s, "{b:02x}");
        }
        s.push_str("-01");
        Self {
            traceparent: s,
            tracestate: String::new(),
        }
    }

    /// The trace id (32 hex digits), empty when unset.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The context of the call being served, or an empty one outside any call (timers
    /// and other background work).
    pub fn current() -> Self {
        CURRENT.try_with(Clone::clone).unwrap_or_default()
    }

    /// Runs `fut` with `self` as the current trace context.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_rejects_invalid_traceparents() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tc = TraceContext::parse(ok, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(tc.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tc.tracestate, "congo=t61rcWkgMzE");
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "accepted {bad:?}");
        }
    }

    #[test]
    fn new_root_is_valid() {
        let tc = TraceContext::new_root();
        assert!(TraceContext::parse(&tc.traceparent, None).is_some());
    }

    #[tokio::test]
    async fn scope_sets_current() {
        assert_eq!(TraceContext::current(), TraceContext::default());
        let tc = TraceContext::new_root();
        let seen = tc.clone().scope(async { TraceContext::current() }).await;
        assert_eq!(seen, tc);
    }
}
