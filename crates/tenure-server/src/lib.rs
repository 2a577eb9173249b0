//! The Tenure server as a library: [`App::build`] opens storage and the contexts this
//! process serves; [`App::serve`] runs them on a listener it is given until a shutdown
//! future completes. `main` only parses the configuration, sets up telemetry and binds,
//! so tests run the real server on `127.0.0.1:0`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tenure_platform::auth::{DevIssuer, ServiceToken, Verifier, load_jwks_file, parse_algorithm};
use tenure_platform::clock::{Clock as _, SharedClock};
use tenure_platform::config::Config;
use tenure_platform::db::Db;
use tenure_platform::grpc::{Authenticator, Registry, TraceLayer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod devauth;
mod tls;

pub use devauth::{DevAuthApi, DevClock, DevClockApi};

/// The contexts this process serves (`None` for those served elsewhere).
#[derive(Clone, Default)]
pub struct Contexts {
    /// The assignments context.
    pub assignments: Option<tenure_assignments::AssignmentsContext>,
    /// The activation context.
    pub activation: Option<tenure_activation::ActivationContext>,
    /// The reviews context.
    pub reviews: Option<tenure_reviews::ReviewsContext>,
    /// The notifications context.
    pub notifications: Option<tenure_notifications::NotificationsContext>,
}

/// A server, built and ready to serve.
pub struct App {
    config: Config,
    /// The databases of the served contexts (one on PostgreSQL, one per context on SQLite).
    dbs: Vec<Db>,
    /// The contexts this process serves.
    pub contexts: Contexts,
    /// The development issuer, when enabled.
    pub dev_issuer: Option<DevIssuer>,
    auth: Authenticator,
    tls: tls::Tls,
    clock: SharedClock,
    background: CancellationToken,
    dev_clock: Option<DevClock>,
}

/// Refuses the development clock unless the development issuer is on and the server
/// listens on a loopback address (stricter than the issuer itself: no override).
pub fn check_dev_clock_allowed(config: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.dev_issuer_enabled(),
        "--dev-clock needs the development issuer (no auth.jwks_file, auth.dev_issuer not \"off\")"
    );
    anyhow::ensure!(
        config.listen.ip().is_loopback(),
        "--dev-clock is refused on {} (not loopback): it lets the administrator move the server's time",
        config.listen
    );
    Ok(())
}

impl App {
    /// Opens the database (running each served context's migrations) and the contexts.
    /// `self_addr` is where this process serves: contexts reach each other over gRPC,
    /// at this address when they run here, or at `peers.*` when they run elsewhere.
    pub async fn build(
        mut config: Config,
        clock: SharedClock,
        self_addr: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        // TLS files are read and checked before anything else starts.
        let tls = tls::Tls::load(&config)?;
        if config.dev_issuer_enabled() && config.auth.bootstrap_principal.is_none() {
            // With the development issuer anyone on this machine can mint any token
            // already; naming the first administrator "admin" takes nothing away and lets
            // a newcomer configure Tenure at once.
            tracing::warn!(
                "development issuer: \"admin\" is the bootstrap Privileged Role Administrator (set auth.bootstrap_principal to change it)"
            );
            config.auth.bootstrap_principal = Some("admin".to_owned());
        }
        let served = config.context_list()?;
        // One pool for all contexts on PostgreSQL; a file (and writer) each on SQLite.
        // `dbs` holds each distinct database once; a context finds its own by URL.
        let mut dbs: Vec<Db> = Vec::new();
        for ctx in &served {
            let url = config.database_url_for(ctx);
            if !dbs.iter().any(|d| d.url() == url) {
                dbs.push(
                    Db::connect(&url)
                        .await
                        .with_context(|| format!("opening the {ctx} database"))?,
                );
            }
        }
        let db_for = |ctx: &str| -> anyhow::Result<Db> {
            let url = config.database_url_for(ctx);
            dbs.iter()
                .find(|d| d.url() == url)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no database opened for {ctx}"))
        };

        let mut verifiers = Vec::new();
        if let Some(path) = &config.auth.jwks_file {
            let jwks = load_jwks_file(path)?;
            let algorithms = config
                .auth
                .algorithms
                .iter()
                .map(|a| parse_algorithm(a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let issuer = config.auth.issuer.as_deref().unwrap_or_default();
            verifiers.push(
                Verifier::new(
                    &jwks,
                    issuer,
                    &config.auth.audience,
                    config.auth.leeway_secs,
                    &algorithms,
                    clock.clone(),
                )
                .context("loading the identity provider's keys")?,
            );
        }
        let dev_issuer = if config.dev_issuer_enabled() {
            let issuer =
                DevIssuer::load_or_create(&config.data_dir.join("dev-issuer"), clock.clone())?;
            verifiers.push(issuer.verifier(config.auth.leeway_secs)?);
            Some(issuer)
        } else {
            None
        };
        anyhow::ensure!(
            !verifiers.is_empty(),
            "no way to authenticate callers: configure auth.issuer and auth.jwks_file, or enable the development issuer"
        );
        let service_token = match (
            &config.auth.service_token_file,
            &dev_issuer,
            config.auth.service_principals.first(),
        ) {
            (Some(file), _, _) => ServiceToken::File(file.clone()),
            (None, Some(issuer), Some(principal)) => ServiceToken::dev(issuer.clone(), principal),
            _ => ServiceToken::None,
        };
        let own = {
            let host = if self_addr.ip().is_unspecified() {
                std::net::SocketAddr::from(([127, 0, 0, 1], self_addr.port()))
            } else {
                self_addr
            };
            let scheme = if config.tls.enabled() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        };
        let peer = |name: &str,
                    configured: &Option<String>|
         -> anyhow::Result<tonic::transport::Channel> {
            let local = served.contains(&name);
            let url = if local {
                own.clone()
            } else {
                configured.clone().unwrap_or_else(|| own.clone())
            };
            let mut endpoint = tonic::transport::Channel::from_shared(url.clone())?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
            if let Some(client) = tls.for_peer(&url, local)? {
                endpoint = endpoint
                    .tls_config(client)
                    .with_context(|| format!("TLS for {name} at {url}"))?;
            }
            Ok(endpoint.connect_lazy())
        };

        let background = CancellationToken::new();
        let mut contexts = Contexts::default();
        if served.contains(&"assignments") {
            let settings = tenure_assignments::Settings {
                bootstrap_principal: config.auth.bootstrap_principal.clone(),
                service_principals: config.auth.service_principals.clone(),
            };
            contexts.assignments = Some(
                tenure_assignments::AssignmentsContext::open(
                    db_for("assignments")?,
                    clock.clone(),
                    settings,
                    &background,
                )
                .await?,
            );
        }
        if served.contains(&"activation") {
            let channel = peer("assignments", &config.peers.assignments)?;
            contexts.activation = Some(
                tenure_activation::ActivationContext::open(
                    db_for("activation")?,
                    clock.clone(),
                    channel,
                    service_token.clone(),
                    config.auth.service_principals.clone(),
                    &background,
                )
                .await?,
            );
        }
        if served.contains(&"reviews") {
            let channel = peer("assignments", &config.peers.assignments)?;
            contexts.reviews = Some(
                tenure_reviews::ReviewsContext::open(
                    db_for("reviews")?,
                    clock.clone(),
                    channel,
                    service_token.clone(),
                    config.auth.service_principals.clone(),
                    &background,
                )
                .await?,
            );
        }
        if served.contains(&"notifications") {
            let peers = tenure_notifications::Peers {
                assignments: peer("assignments", &config.peers.assignments)?,
                activation: peer("activation", &config.peers.activation)?,
                reviews: peer("reviews", &config.peers.reviews)?,
            };
            contexts.notifications = Some(
                tenure_notifications::NotificationsContext::open(
                    db_for("notifications")?,
                    clock.clone(),
                    peers,
                    service_token.clone(),
                    config.notifications.clone(),
                    &background,
                )
                .await?,
            );
        }
        Ok(Self {
            config,
            dbs,
            contexts,
            dev_issuer,
            auth: Authenticator::new(verifiers),
            tls,
            clock,
            background,
            dev_clock: None,
        })
    }

    /// Serves the development clock (`tenure serve --dev-clock`): `clock` must be the
    /// clock this app was built with. Refused unless [`check_dev_clock_allowed`].
    pub fn enable_dev_clock(&mut self, clock: DevClock) -> anyhow::Result<()> {
        check_dev_clock_allowed(&self.config)?;
        self.dev_clock = Some(clock);
        Ok(())
    }

    /// The database handles of the served contexts (for tests and tools).
    pub fn databases(&self) -> &[Db] {
        &self.dbs
    }

    /// Serves until `shutdown` completes, then shuts down in order: health turns
    /// NOT_SERVING, event streams end with UNAVAILABLE, new connections are refused and
    /// in-flight calls drain, background work stops, and the database closes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        let limiter = tenure_platform::limits::MutationLimiter::new(
            self.config.limits.mutations_per_principal_per_sec,
            self.config.limits.mutations_burst,
            self.clock.clone(),
            self.config.auth.service_principals.clone(),
        );
        let mut registry =
            Registry::new(self.auth.clone(), self.config.limits.clone()).with_limiter(limiter);
        let mut logs: Vec<Box<dyn Fn() + Send + Sync>> = Vec::new();

        if let Some(c) = &self.contexts.assignments {
            c.register(&mut registry);
            let log = c.log.clone();
            logs.push(Box::new(move || log.close()));
        }
        if let Some(c) = &self.contexts.activation {
            c.register(&mut registry);
            let log = c.log.clone();
            logs.push(Box::new(move || log.close()));
        }
        if let Some(c) = &self.contexts.reviews {
            c.register(&mut registry);
            let log = c.log.clone();
            logs.push(Box::new(move || log.close()));
        }
        if let Some(c) = &self.contexts.notifications {
            c.register(&mut registry);
            let log = c.log.clone();
            logs.push(Box::new(move || log.close()));
        }

        let Registry {
            mut routes, names, ..
        } = registry;
        if let Some(issuer) = &self.dev_issuer {
            tracing::warn!(
                %addr,
                "DEVELOPMENT ISSUER ENABLED: anyone who can reach {addr} can mint tokens for any principal. \
                 For local use only; configure auth.jwks_file for a real identity provider."
            );
            routes.add_service(
                tenure_proto::devauth::v1::dev_auth_service_server::DevAuthServiceServer::new(
                    DevAuthApi::new(issuer.clone()),
                ),
            );
            if let Some(clock) = &self.dev_clock {
                tracing::warn!(
                    now = %clock.clock().now().to_rfc3339(),
                    "DEVELOPMENT CLOCK ENABLED: the server's time stands still and the bootstrap \
                     administrator moves it (`tenurectl dev advance 2h`). Never in production."
                );
                routes.add_service(
                    tenure_proto::devauth::v1::dev_clock_service_server::DevClockServiceServer::new(
                        DevClockApi::new(
                            clock.clone(),
                            self.auth.clone(),
                            self.config.auth.bootstrap_principal.clone(),
                        ),
                    ),
                );
            }
        }

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let mut health_names: Vec<&str> = names.clone();
        health_names.push("");
        for n in &health_names {
            health_reporter
                .set_service_status(*n, tonic_health::ServingStatus::Serving)
                .await;
        }
        routes.add_service(health_service);
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tenure_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tenure_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        routes.add_service(reflection_v1);
        routes.add_service(reflection_v1alpha);

        // Mutations of the assignments context validate against a model that has applied
        // every commit, whichever replica made it.
        let sync_writes = {
            let core = self.contexts.assignments.as_ref().map(|c| c.core.clone());
            tenure_platform::grpc::SyncWritesLayer::new(
                "tenure.assignments.v1",
                Arc::new(move || {
                    let core = core.clone();
                    Box::pin(async move {
                        match core {
                            Some(c) => c.sync().await,
                            None => Ok(()),
                        }
                    })
                }),
            )
        };
        let limits = &self.config.limits;
        let drain = CancellationToken::new();
        let drain_signal = drain.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(server_tls) = self.tls.server.clone() {
            builder = builder.tls_config(server_tls).context("tls")?;
        }
        let server = builder
            .tcp_nodelay(true)
            .timeout(Duration::from_millis(limits.request_timeout_ms))
            .concurrency_limit_per_connection(limits.concurrency_per_connection)
            .load_shed(true)
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(TraceLayer)
            .layer(sync_writes)
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(
                // TCP_NODELAY on every accepted socket: the builder's setting only applies to
                // listeners tonic binds itself, and without it small HTTP/2 frames wait ~40 ms
                // for a delayed ACK (Nagle).
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                drain_signal.cancelled_owned(),
            );

        let contexts: Vec<&str> = self.config.context_list()?;
        tracing::info!(%addr, contexts = %contexts.join(","), backend = ?self.dbs.first().map(Db::backend), tls = self.tls.server.is_some(), mutual_tls = self.config.tls.client_ca_file.is_some(), "tenure listening");

        let reporter = health_reporter.clone();
        let shutdown_task = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, ending streams, draining calls");
            for n in &health_names {
                reporter
                    .set_service_status(*n, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            for close in &logs {
                close();
            }
            drain.cancel();
        });

        let served = server.await;
        shutdown_task.abort();
        self.background.cancel();
        for db in &self.dbs {
            db.close().await;
        }
        tracing::info!("tenure stopped");
        served.context("serving gRPC")
    }
}

/// Runs a server for tests and tools: binds `listen`, builds, serves until `shutdown`.
/// Returns the bound address and the task serving.
pub async fn spawn(
    config: Config,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    std::net::SocketAddr,
    Contexts,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let app = App::build(config, clock, addr).await?;
    let contexts = app.contexts.clone();
    let task = tokio::spawn(app.serve(listener, shutdown));
    Ok((addr, contexts, task))
}

/// Shared so the binary and tests wait for the same signals.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                futures::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Re-exported for `main`.
pub type Shared<T> = Arc<T>;
