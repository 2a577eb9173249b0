//! The gRPC edge shared by every context: the one mapping from [`ApiError`] to
//! `tonic::Status`, the trace-context layer, authentication, and what clients of other
//! contexts send along.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::auth::{AuthError, Caller, Verifier};
use crate::error::ApiError;
use crate::trace::TraceContext;

/// An id quoted in a status message is cut to this many bytes.
const MAX_ID_IN_MESSAGE: usize = 256;

/// A status message is cut to this many bytes.
const MAX_MESSAGE: usize = 4096;

/// At most this many field violations are detailed in one status.
pub const MAX_VIOLATIONS: usize = 20;

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Turns a domain error into the status the client sees. `INVALID_ARGUMENT` carries a
/// `google.rpc.BadRequest` with one field violation per bad field. `INTERNAL` says only
/// "internal error" and an id; the cause is logged here, once, with that id.
pub fn status(err: ApiError) -> Status {
    match err {
        ApiError::InvalidArgument(violations) => {
            // Status details travel in response headers: a bulk call with thousands of
            // bad items would make headers no client accepts. Report the first ones and
            // say how many more there were.
            let shown = &violations[..violations.len().min(MAX_VIOLATIONS)];
            let more = violations.len() - shown.len();
            let mut details = ErrorDetails::new();
            for v in shown {
                details.add_bad_request_violation(
                    truncate(&v.field, 256),
                    truncate(&v.description, 512),
                );
            }
            let mut msg = shown
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if more > 0 {
                msg.push_str(&format!("; and {more} more"));
            }
            Status::with_error_details(Code::InvalidArgument, truncate(&msg, MAX_MESSAGE), details)
        }
        // Messages travel in a response header: an id or message that echoes the
        // caller's input is cut short, so a huge id cannot make a header no client
        // accepts (HTTP/2 clients refuse header lists over 16 KiB by default).
        ApiError::NotFound { kind, id } => Status::not_found(format!(
            "{kind} {:?} not found",
            truncate(&id, MAX_ID_IN_MESSAGE)
        )),
        ApiError::AlreadyExists { kind, id } => Status::already_exists(format!(
            "{kind} {:?} already exists",
            truncate(&id, MAX_ID_IN_MESSAGE)
        )),
        ApiError::PermissionDenied(m) => Status::permission_denied(truncate(&m, MAX_MESSAGE)),
        ApiError::Unauthenticated(m) => Status::unauthenticated(truncate(&m, MAX_MESSAGE)),
        ApiError::FailedPrecondition(m) => Status::failed_precondition(truncate(&m, MAX_MESSAGE)),
        ApiError::Aborted(m) => Status::aborted(truncate(&m, MAX_MESSAGE)),
        ApiError::ResourceExhausted(m) => Status::resource_exhausted(truncate(&m, MAX_MESSAGE)),
        ApiError::Unavailable(m) => Status::unavailable(truncate(&m, MAX_MESSAGE)),
        ApiError::Internal(cause) => {
            let id = uuid::Uuid::new_v4();
            tracing::error!(error_id = %id, error = format!("{cause:#}"), "internal error");
            Status::internal(format!("internal error (id {id})"))
        }
    }
}

/// Turns a status from another context back into a domain error, keeping its code and
/// message (and field violations), so a caller sees the callee's reason.
pub fn from_status(s: &Status) -> ApiError {
    let msg = s.message().to_owned();
    match s.code() {
        Code::InvalidArgument => {
            let details = s.get_error_details();
            let violations: Vec<_> = details
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| {
                            crate::error::FieldViolation::new(
                                v.field.clone(),
                                v.description.clone(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if violations.is_empty() {
                ApiError::invalid("", msg)
            } else {
                ApiError::InvalidArgument(violations)
            }
        }
        Code::NotFound => ApiError::NotFound {
            kind: "object",
            id: msg,
        },
        Code::AlreadyExists => ApiError::AlreadyExists {
            kind: "object",
            id: msg,
        },
        Code::PermissionDenied => ApiError::PermissionDenied(msg),
        Code::Unauthenticated => ApiError::Unauthenticated(msg),
        Code::FailedPrecondition => ApiError::FailedPrecondition(msg),
        Code::Aborted => ApiError::Aborted(msg),
        Code::ResourceExhausted => ApiError::ResourceExhausted(msg),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ApiError::Unavailable(msg),
        _ => ApiError::Internal(anyhow::anyhow!("peer answered {:?}: {msg}", s.code())),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        status(e)
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        Status::unauthenticated(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// Authentication.

/// Checks bearer tokens against one or more issuers (the identity provider, and the
/// development issuer when it runs). The issuer is chosen by the token's `kid`.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    verifiers: Arc<Vec<Verifier>>,
}

impl Authenticator {
    /// An authenticator over `verifiers`.
    pub fn new(verifiers: Vec<Verifier>) -> Self {
        Self {
            verifiers: Arc::new(verifiers),
        }
    }

    /// Verifies a raw token.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let mut last = AuthError::UnknownKey;
        for v in self.verifiers.iter() {
            match v.verify(token) {
                Ok(c) => return Ok(c),
                Err(AuthError::UnknownKey) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Verifies the `authorization: Bearer …` metadata of a request.
    pub fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, AuthError> {
        let value = req
            .metadata()
            .get("authorization")
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Malformed)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?;
        self.verify(token.trim())
    }
}

impl tonic::service::Interceptor for Authenticator {
    /// Rejects unauthenticated calls with UNAUTHENTICATED and otherwise puts the
    /// [`Caller`] in the request's extensions, where [`caller`] finds it.
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match self.authenticate(&req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            Err(e) => {
                tracing::debug!(reason = %e, "refused a call");
                Err(e.into())
            }
        }
    }
}

/// The authenticated caller of a request that passed the [`Authenticator`].
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

// ---------------------------------------------------------------------------------------
// Trace context.

/// A tower layer that reads the W3C trace context from incoming metadata (or starts a new
/// trace), runs the call inside it, and opens a span named after the RPC.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

/// The service of [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for TraceService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let headers = req.headers();
        let tc = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(|tp| {
                TraceContext::parse(tp, headers.get("tracestate").and_then(|v| v.to_str().ok()))
            })
            .unwrap_or_else(TraceContext::new_root);
        let span =
            tracing::info_span!("rpc", method = %req.uri().path(), trace_id = %tc.trace_id());
        let fut = self.inner.call(req);
        Box::pin(tracing::Instrument::instrument(tc.scope(fut), span))
    }
}

// ---------------------------------------------------------------------------------------
// Writes see every commit.

/// Waits until this replica has caught up with the database; see [`SyncWritesLayer`].
pub type SyncFn =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), ApiError>> + Send + Sync>;

/// A tower layer for a context whose replicas answer from an in-memory projection: before
/// a mutating call of `package` (every method not named by a read verb:
/// [`crate::limits::READ_VERBS`]) runs, it awaits `sync`, which returns once this
/// replica has applied everything committed to the database by any replica. So a write's
/// validation and authorization never read a projection older than the last commit
/// (a principal created through one replica can be assigned through another at once, and
/// a Privileged Role Administrator removed on one replica cannot configure through
/// another). Reads stay on the fast path unless they ask for full consistency.
#[derive(Clone)]
pub struct SyncWritesLayer {
    prefix: String,
    sync: SyncFn,
}

impl SyncWritesLayer {
    /// For the methods of `package` (for example "tenure.assignments.v1").
    pub fn new(package: &str, sync: SyncFn) -> Self {
        Self {
            prefix: format!("/{package}."),
            sync,
        }
    }
}

impl std::fmt::Debug for SyncWritesLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncWritesLayer")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<S> tower::Layer<S> for SyncWritesLayer {
    type Service = SyncWritesService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SyncWritesService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`SyncWritesLayer`].
#[derive(Clone, Debug)]
pub struct SyncWritesService<S> {
    inner: S,
    layer: SyncWritesLayer,
}

/// Whether `path` (`/package.Service/Method`) names a mutating method of `prefix`
/// (one whose name is not a read verb: [`crate::limits::READ_VERBS`]).
pub fn is_write(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| !crate::limits::is_read_method(rest))
}

impl<S, B> tower::Service<http::Request<B>> for SyncWritesService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !is_write(&self.layer.prefix, req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The ready service goes into the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let sync = (self.layer.sync)();
        Box::pin(async move {
            if let Err(e) = sync.await {
                return Ok(Status::from(e).into_http());
            }
            inner.call(req).await
        })
    }
}

/// A client interceptor for calls to other contexts: sends the current trace context and
/// a bearer token (the originating caller's, or the service's own for background work).
#[derive(Clone, Default)]
pub struct Propagate {
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Propagate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Propagate")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Propagate {
    /// Sends `token` as the bearer token.
    pub fn with_token(token: Arc<str>) -> Self {
        Self { token: Some(token) }
    }
}

impl tonic::service::Interceptor for Propagate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        inject_trace(&mut req);
        if let Some(t) = &self.token {
            let v = MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| Status::internal("token is not valid metadata"))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

/// Adds the current trace context to an outgoing request.
pub fn inject_trace<T>(req: &mut Request<T>) {
    let tc = TraceContext::current();
    if tc.traceparent.is_empty() {
        return;
    }
    if let Ok(v) = MetadataValue::try_from(tc.traceparent.as_str()) {
        req.metadata_mut().insert("traceparent", v);
    }
    if !tc.tracestate.is_empty()
        && let Ok(v) = MetadataValue::try_from(tc.tracestate.as_str())
    {
        req.metadata_mut().insert("tracestate", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldViolation;

    #[test]
    fn invalid_argument_carries_bad_request_field_violations() {
        let s = status(ApiError::InvalidArgument(vec![
            FieldViolation::new("items[1].duration", "exceeds the maximum of 8h"),
            FieldViolation::new("justification", "required by the role's settings"),
        ]));
        assert_eq!(s.code(), Code::InvalidArgument);
        let details = s.get_error_details();
        let br = details.bad_request().expect("BadRequest details");
        assert_eq!(br.field_violations.len(), 2);
        assert_eq!(br.field_violations[0].field, "items[1].duration");
        assert_eq!(
            br.field_violations[1].description,
            "required by the role's settings"
        );
        // and the round trip keeps them
        match from_status(&s) {
            ApiError::InvalidArgument(v) => assert_eq!(v.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn thousands_of_violations_make_a_status_any_client_can_read() {
        let many: Vec<FieldViolation> = (0..5000)
            .map(|i| FieldViolation::new(format!("principals[{i}].display_name"), "x".repeat(300)))
            .collect();
        let s = status(ApiError::InvalidArgument(many));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().len() <= 4096 + 4);
        assert!(s.message().ends_with("more") || s.message().ends_with('…'));
        assert_eq!(
            s.get_error_details()
                .bad_request()
                .unwrap()
                .field_violations
                .len(),
            MAX_VIOLATIONS
        );
    }

    #[test]
    fn a_huge_id_makes_a_short_message() {
        let s = status(ApiError::NotFound {
            kind: "webhook",
            id: "x".repeat(200_000),
        });
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().len() < 400, "{}", s.message().len());
        let s = status(ApiError::denied("y".repeat(100_000)));
        assert!(s.message().len() <= MAX_MESSAGE + 4);
    }

    #[test]
    fn internal_never_leaks_the_cause() {
        let s = status(ApiError::Internal(anyhow::anyhow!(
            "password=hunter2 at db.example"
        )));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("hunter2"));
        assert!(s.message().starts_with("internal error"));
    }
}

/// An authorization check of a caller, supplied by the context that serves an RPC.
pub type Authorize =
    Arc<dyn Fn(Caller) -> futures::future::BoxFuture<'static, crate::ApiResult<()>> + Send + Sync>;

#[doc(hidden)]
pub mod __reexports {
    pub use futures;
    pub use tonic;
}

/// Defines `$name`, the gRPC `EventsService` of a context package `$pkg`, serving that
/// context's [`crate::events::EventLog`]: replay after `after_sequence`, then live.
/// Every context package declares the same `EventsService`, so one implementation
/// serves all four.
#[macro_export]
macro_rules! events_service {
    ($name:ident, $($pkg:ident)::+) => {
        /// Serves this context's event stream over gRPC.
        #[derive(Clone)]
        pub struct $name {
            /// The context's event log.
            pub log: $crate::events::EventLog<$($pkg)::+::Event>,
            /// Who may subscribe (events carry justifications, tickets and who holds
            /// what: readers and Tenure's own services only).
            pub authorize: $crate::grpc::Authorize,
        }

        const _: () = {
            use $crate::grpc::__reexports::{futures, tonic};
            use $($pkg)::+ as pkg;
            use futures::StreamExt as _;

            #[tonic::async_trait]
            impl pkg::events_service_server::EventsService for $name {
                async fn subscribe_events(
                    &self,
                    request: tonic::Request<pkg::SubscribeEventsRequest>,
                ) -> Result<
                    tonic::Response<tonic::codegen::BoxStream<pkg::SubscribeEventsResponse>>,
                    tonic::Status,
                > {
                    let who = $crate::grpc::caller(&request)?;
                    (self.authorize)(who).await.map_err($crate::grpc::status)?;
                    let limits = $crate::limits::stream_limits_of(&request);
                    let r = request.into_inner();
                    if r.after_sequence < 0 {
                        return Err($crate::grpc::status($crate::ApiError::invalid(
                            "after_sequence",
                            "must be zero or a sequence number",
                        )));
                    }
                    let filter = $crate::events::TypeFilter::new(r.event_types)
                        .map_err($crate::grpc::status)?;
                    let stream = self.log.subscribe(r.after_sequence, filter).map(|item| {
                        item.map(|e| pkg::SubscribeEventsResponse {
                            event: Some((*e).clone()),
                        })
                        .map_err($crate::grpc::status)
                    });
                    Ok(tonic::Response::new($crate::limits::bounded_stream(stream, limits)))
                }
            }
        };
    };
}

/// Collects the gRPC services of the contexts a process serves, with the message-size
/// limits and authentication applied to each the same way, and remembers their names for
/// health reporting.
pub struct Registry {
    /// The routes so far.
    pub routes: tonic::service::RoutesBuilder,
    /// The fully-qualified names of the registered services.
    pub names: Vec<&'static str>,
    /// Authenticates every call to a registered service.
    pub auth: Authenticator,
    /// Message-size limits.
    pub limits: crate::config::Limits,
    /// The per-principal rate limit on mutations, applied to every registered service.
    pub limiter: Option<crate::limits::MutationLimiter>,
}

impl Registry {
    /// An empty registry (with no rate limit until [`Registry::with_limiter`]).
    pub fn new(auth: Authenticator, limits: crate::config::Limits) -> Self {
        Self {
            routes: tonic::service::RoutesBuilder::default(),
            names: Vec::new(),
            auth,
            limits,
            limiter: None,
        }
    }

    /// Applies `limiter` to the services registered from now on.
    pub fn with_limiter(mut self, limiter: Option<crate::limits::MutationLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// How server streams treat consumers that stop reading.
    pub fn stream_limits(&self) -> crate::limits::StreamLimits {
        crate::limits::StreamLimits::from_config(&self.limits)
    }
}

/// The gRPC name of a service value's type.
pub fn name_of<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// Registers a generated `…Server` value with the registry's limits and authentication:
/// `register!(&mut registry, pb::x_service_server::XServiceServer::new(api))`.
#[macro_export]
macro_rules! register {
    ($reg:expr, $server:expr) => {{
        let reg: &mut $crate::grpc::Registry = $reg;
        let svc = $server
            .max_decoding_message_size(reg.limits.max_decoding_message_size)
            .max_encoding_message_size(reg.limits.max_encoding_message_size);
        reg.names.push($crate::grpc::name_of(&svc));
        // The authenticator runs first and puts the caller in the request; the rate
        // limit then counts that caller's mutations.
        reg.routes.add_service(
            $crate::grpc::__reexports::tonic::service::interceptor::InterceptedService::new(
                $crate::limits::Limited::new(svc, reg.limiter.clone(), reg.stream_limits()),
                reg.auth.clone(),
            ),
        );
    }};
}

/// Defines `$name`, an [`crate::consumer::EventSource`] that follows the `EventsService`
/// of context package `$pkg` over gRPC, sending a bearer token and the trace context.
/// The channel reconnects by itself; the consumer resubscribes after failures.
#[macro_export]
macro_rules! grpc_event_source {
    ($name:ident, $($pkg:ident)::+) => {
        /// Follows a context's event stream over gRPC.
        #[derive(Clone)]
        pub struct $name {
            /// The channel to the producing context.
            pub channel: $crate::grpc::__reexports::tonic::transport::Channel,
            /// Where the bearer token comes from; a fresh one is taken at every
            /// (re)subscription, so a long-lived consumer never presents an expired token.
            pub token: $crate::auth::ServiceToken,
        }

        const _: () = {
            use $crate::grpc::__reexports::{futures, tonic};
            use $($pkg)::+ as pkg;
            use futures::StreamExt as _;

            impl $crate::consumer::EventSource<pkg::Event> for $name {
                fn subscribe(
                    &self,
                    after: i64,
                ) -> futures::future::BoxFuture<
                    '_,
                    Result<futures::stream::BoxStream<'static, Result<pkg::Event, $crate::ApiError>>, $crate::ApiError>,
                > {
                    Box::pin(async move {
                        let token = self
                            .token
                            .get()
                            .map_err(|e| $crate::ApiError::Unavailable(format!("{e:#}")))?;
                        let mut client = pkg::events_service_client::EventsServiceClient::with_interceptor(
                            self.channel.clone(),
                            $crate::grpc::Propagate::with_token(token),
                        )
                        .max_decoding_message_size(16 * 1024 * 1024);
                        let response = client
                            .subscribe_events(pkg::SubscribeEventsRequest {
                                after_sequence: after,
                                event_types: Vec::new(),
                            })
                            .await
                            .map_err(|s| $crate::grpc::from_status(&s))?;
                        let stream = response.into_inner().map(|item| match item {
                            Ok(r) => r.event.ok_or_else(|| {
                                $crate::ApiError::Unavailable("empty event in stream".into())
                            }),
                            Err(s) => Err($crate::grpc::from_status(&s)),
                        });
                        Ok(stream.boxed())
                    })
                }
            }
        };
    };
}

/// A request to another context: `token` as the bearer token, the current trace
/// context, and a deadline.
pub fn outgoing<T>(
    token: &str,
    msg: T,
    deadline: std::time::Duration,
) -> crate::ApiResult<Request<T>> {
    let mut r = Request::new(msg);
    r.set_timeout(deadline);
    inject_trace(&mut r);
    let v = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| ApiError::Unauthenticated("the token is not valid metadata".into()))?;
    r.metadata_mut().insert("authorization", v);
    Ok(r)
}

/// Whether `principal_id` holds `permission` at `scope` now, asked of the assignments
/// context over `channel` with the caller's own token (a principal may always ask about
/// itself). An unknown principal holds nothing.
pub async fn has_permission(
    channel: &tonic::transport::Channel,
    token: &str,
    principal_id: &str,
    permission: &str,
    scope: &str,
) -> crate::ApiResult<bool> {
    use tenure_proto::assignments::v1 as asg;
    let mut c = asg::access_service_client::AccessServiceClient::new(channel.clone());
    let r = outgoing(
        token,
        asg::CheckAccessRequest {
            principal_id: principal_id.to_owned(),
            target: Some(asg::check_access_request::Target::Permission(
                permission.to_owned(),
            )),
            scope_id: scope.to_owned(),
            ..Default::default()
        },
        std::time::Duration::from_secs(5),
    )?;
    match c.check_access(r).await {
        Ok(resp) => Ok(resp.into_inner().allowed),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(from_status(&s)),
    }
}
