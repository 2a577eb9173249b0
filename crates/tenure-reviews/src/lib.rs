//! The access reviews context of Tenure (package `tenure.reviews.v1`): periodic
//! certification of who holds privileged roles, directory and resource roles alike,
//! at any scope. A definition says what is reviewed, by whom, when and how; each round
//! snapshots the holders into decision items with recommendations from real activity;
//! reviewers decide; at the end undecided items get the default and denied assignments
//! are removed through the assignments context.
//!
//! Layers: [`rules`] (pure domain rules), [`engine`] (the application: definitions,
//! rounds, decisions, timers), [`store`] (sqlx), [`clients`] (the assignments context
//! over gRPC), [`follow`] (the consumer of the assignments stream), [`api`] (tonic
//! adapter). Owns its tables (prefixed `reviews_`) and its event log.

use std::sync::Arc;

use tenure_platform::auth::ServiceToken;
use tenure_platform::clock::SharedClock;
use tenure_platform::consumer::Consumer;
use tenure_platform::db::Db;
use tenure_platform::events::EventLog;
use tenure_platform::grpc::Registry;
use tenure_proto::reviews::v1 as pb;
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod clients;
pub mod engine;
pub mod follow;
pub mod rules;
pub mod schema;
pub mod store;
pub mod timers;

/// The first migration version of this context; its migrations stay within
/// `MIGRATION_BASE..MIGRATION_BASE + 100_000`.
pub const MIGRATION_BASE: i64 = 300000;
/// The prefix of this context's tables and its event-log name.
pub const PREFIX: &str = "reviews";
/// The consumer (cursor) name of the assignments stream.
pub const ASSIGNMENTS_CURSOR: &str = "assignments";

tenure_platform::events_service!(EventsApi, tenure_proto::reviews::v1);

/// This context's migrations, for the backend in use.
pub fn migrations(
    backend: tenure_platform::db::Backend,
) -> Vec<tenure_platform::db::MigrationSpec> {
    schema::migrations(backend)
}

/// The running context.
#[derive(Clone)]
pub struct ReviewsContext {
    /// The engine.
    pub engine: Arc<engine::Engine>,
    /// The context's event log.
    pub log: EventLog<pb::Event>,
    /// Tenure's own service identities (they may follow this context's stream).
    pub service_principals: Vec<String>,
}

impl ReviewsContext {
    /// Migrates, opens the log, and starts the timer and the follower of the
    /// assignments stream (until `stop`). `assignments` is the channel to the
    /// assignments context (this process's own address when it runs here too).
    pub async fn open(
        db: Db,
        clock: SharedClock,
        assignments: tonic::transport::Channel,
        service_token: ServiceToken,
        service_principals: Vec<String>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        db.migrate(migrations(db.backend())).await?;
        let log = EventLog::open(db.clone(), clock.clone(), PREFIX).await?;
        log.spawn_tailer(stop);
        let client = clients::Assignments::new(assignments.clone(), service_token.clone());
        let engine = engine::Engine::new(db, log.clone(), clock, client);
        tokio::spawn(timers::run(engine.clone(), stop.clone()));
        {
            let engine = engine.clone();
            log.spawn_waker(stop, move || engine.timer_wake.notify_one());
        }
        if let Err(e) = service_token.get() {
            tracing::warn!(error = %e, "no service token: the reviews context cannot follow the assignments stream");
        }
        let consumer = Consumer {
            name: ASSIGNMENTS_CURSOR.to_owned(),
            log: log.clone(),
            source: Arc::new(follow::AssignmentsStream {
                channel: assignments,
                token: service_token,
            }),
            handler: Arc::new(follow::Activity {
                engine: engine.clone(),
            }),
        };
        tokio::spawn(consumer.run(stop.clone()));
        Ok(Self {
            engine,
            log,
            service_principals,
        })
    }

    /// Registers this context's gRPC services.
    pub fn register(&self, registry: &mut Registry) {
        tenure_platform::register!(
            registry,
            pb::events_service_server::EventsServiceServer::new(self.events_api())
        );
        tenure_platform::register!(
            registry,
            pb::reviews_service_server::ReviewsServiceServer::new(api::ReviewsApi {
                engine: self.engine.clone()
            })
        );
    }

    /// The gRPC event stream of this context.
    pub fn events_api(&self) -> EventsApi {
        EventsApi {
            log: self.log.clone(),
            // Readers, and Tenure's own services (notifications follows this stream).
            authorize: {
                let engine = self.engine.clone();
                let services = self.service_principals.clone();
                std::sync::Arc::new(move |caller: tenure_platform::auth::Caller| {
                    let engine = engine.clone();
                    let trusted = services.contains(&caller.principal_id);
                    Box::pin(async move {
                        if trusted
                            || engine
                                .assignments
                                .has_permission(
                                    &caller.token,
                                    &caller.principal_id,
                                    "tenure/read",
                                    "/",
                                )
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

    /// The last assignments event this context has taken in (for tests and health).
    pub async fn assignments_cursor(&self) -> Result<i64, tenure_platform::ApiError> {
        tenure_platform::events::load_cursor(self.log.db(), PREFIX, ASSIGNMENTS_CURSOR).await
    }
}
