//! The notifications context of Tenure (package `tenure.notifications.v1`): it consumes
//! the other contexts' event streams (and its own) and turns them into notifications
//! (e-mail, webhook, a gRPC stream), security alerts, and a hash-chained audit trail.
//!
//! Layers: [`domain`] (pure rules: audit facts and hash chain, alert kinds and their
//! evaluation, notification rules and checks), [`engine`] (the application: settings,
//! audit writer, alert reconciliation, making notifications), [`project`] (the
//! projections of the assignments stream it keeps in its own tables), [`follow`] (the
//! consumers), [`delivery`] (e-mail, webhooks, the outbox worker), [`timers`],
//! [`clients`] (the assignments context over gRPC) and [`api`] (tonic adapters). Owns
//! its tables (prefixed `notifications_`) and its event log.

use std::sync::Arc;

use tenure_platform::auth::ServiceToken;
use tenure_platform::clock::SharedClock;
use tenure_platform::config::NotificationsConfig;
use tenure_platform::consumer::{Consumer, LocalSource};
use tenure_platform::db::Db;
use tenure_platform::events::EventLog;
use tenure_platform::grpc::Registry;
use tenure_proto::notifications::v1 as pb;
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod clients;
pub mod delivery;
pub mod domain;
pub mod engine;
pub mod follow;
pub mod project;
pub mod schema;
pub mod timers;

/// The first migration version of this context; its migrations stay within
/// `MIGRATION_BASE..MIGRATION_BASE + 100_000`.
pub const MIGRATION_BASE: i64 = 400000;
/// The prefix of this context's tables and its event-log name.
pub const PREFIX: &str = "notifications";

tenure_platform::events_service!(EventsApi, tenure_proto::notifications::v1);

/// This context's migrations, for the backend in use.
pub fn migrations(
    backend: tenure_platform::db::Backend,
) -> Vec<tenure_platform::db::MigrationSpec> {
    schema::migrations(backend)
}

/// Where the other contexts are reached.
#[derive(Clone, Debug)]
pub struct Peers {
    /// The assignments context.
    pub assignments: tonic::transport::Channel,
    /// The activation context.
    pub activation: tonic::transport::Channel,
    /// The reviews context.
    pub reviews: tonic::transport::Channel,
}

/// The running context.
#[derive(Clone)]
pub struct NotificationsContext {
    /// The engine.
    pub engine: Arc<engine::Engine>,
    /// The context's event log.
    pub log: EventLog<pb::Event>,
}

impl NotificationsContext {
    /// Migrates, opens the log, and starts the consumers of the three other streams and
    /// of its own (for the audit trail), the timer (deliveries, reminders, rescans) and
    /// the loading of the role catalogue, until `stop`.
    pub async fn open(
        db: Db,
        clock: SharedClock,
        peers: Peers,
        service_token: ServiceToken,
        config: NotificationsConfig,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        db.migrate(migrations(db.backend())).await?;
        let log = EventLog::open(db.clone(), clock.clone(), PREFIX).await?;
        log.spawn_tailer(stop);
        let smtp_password = match &config.smtp.password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "reading notifications.smtp.password_file {}: {e}",
                            p.display()
                        )
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        let engine = Arc::new(engine::Engine {
            db,
            log: log.clone(),
            clock,
            assignments: clients::Assignments::new(
                peers.assignments.clone(),
                service_token.clone(),
            ),
            config,
            smtp_password,
            timer_wake: tokio::sync::Notify::new(),
            alert_wake: tokio::sync::Notify::new(),
            first_scan_done: tokio::sync::watch::Sender::new(false),
            http,
        });
        if let Err(e) = service_token.get() {
            tracing::warn!(error = %e, "no service token: the notifications context cannot follow the other streams");
        }
        tokio::spawn(
            Consumer {
                name: "assignments".to_owned(),
                log: log.clone(),
                source: Arc::new(follow::AssignmentsStream {
                    channel: peers.assignments,
                    token: service_token.clone(),
                }),
                handler: Arc::new(follow::FromAssignments(engine.clone())),
            }
            .run(stop.clone()),
        );
        tokio::spawn(
            Consumer {
                name: "activation".to_owned(),
                log: log.clone(),
                source: Arc::new(follow::ActivationStream {
                    channel: peers.activation,
                    token: service_token.clone(),
                }),
                handler: Arc::new(follow::FromActivation(engine.clone())),
            }
            .run(stop.clone()),
        );
        tokio::spawn(
            Consumer {
                name: "reviews".to_owned(),
                log: log.clone(),
                source: Arc::new(follow::ReviewsStream {
                    channel: peers.reviews,
                    token: service_token,
                }),
                handler: Arc::new(follow::FromReviews(engine.clone())),
            }
            .run(stop.clone()),
        );
        tokio::spawn(
            Consumer {
                name: PREFIX.to_owned(),
                log: log.clone(),
                source: Arc::new(LocalSource(log.clone())),
                handler: Arc::new(follow::FromSelf(engine.clone())),
            }
            .run(stop.clone()),
        );
        tokio::spawn(timers::run(engine.clone(), stop.clone()));
        {
            let engine = engine.clone();
            log.spawn_waker(stop, move || engine.timer_wake.notify_one());
        }
        tokio::spawn(timers::evaluate_marked(engine.clone(), stop.clone()));
        let loader = engine.clone();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            let mut backoff = std::time::Duration::from_millis(100);
            loop {
                match loader.load_roles().await {
                    Ok(()) => {
                        if let Err(e) = loader.rescan(&[]).await {
                            tracing::warn!(error = %e, "first alert scan failed");
                        }
                        loader.first_scan_done.send_replace(true);
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "loading the role catalogue; retrying"),
                }
                tokio::select! {
                    () = stop2.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
        });
        Ok(Self { engine, log })
    }

    /// How far this context's consumer of `source` has taken in its stream: one of
    /// `assignments`, `activation`, `reviews`, or `notifications` (its own).
    pub async fn cursor(&self, source: &str) -> Result<i64, tenure_platform::ApiError> {
        tenure_platform::events::load_cursor(self.log.db(), PREFIX, source).await
    }

    /// Registers this context's gRPC services.
    pub fn register(&self, registry: &mut Registry) {
        use tenure_platform::register;
        register!(
            registry,
            pb::events_service_server::EventsServiceServer::new(self.events_api())
        );
        register!(
            registry,
            pb::notifications_service_server::NotificationsServiceServer::new(
                api::notifications::NotificationsApi {
                    engine: self.engine.clone()
                }
            )
        );
        register!(
            registry,
            pb::alerts_service_server::AlertsServiceServer::new(api::alerts::AlertsApi {
                engine: self.engine.clone()
            })
        );
        register!(
            registry,
            pb::audit_service_server::AuditServiceServer::new(api::audit::AuditApi {
                engine: self.engine.clone()
            })
        );
    }

    /// The gRPC event stream of this context.
    pub fn events_api(&self) -> EventsApi {
        EventsApi {
            log: self.log.clone(),
            // Readers only (no other context follows this stream).
            authorize: {
                let engine = self.engine.clone();
                std::sync::Arc::new(move |caller: tenure_platform::auth::Caller| {
                    let engine = engine.clone();
                    Box::pin(async move {
                        if engine
                            .assignments
                            .has_permission(&caller.token, &caller.principal_id, "tenure/read", "/")
                            .await?
                        {
                            Ok(())
                        } else {
                            Err(tenure_platform::ApiError::denied(
                                "the event stream needs a reading role (tenure/read) at \"/\"",
                            ))
                        }
                    })
                })
            },
        }
    }
}
