//! The activation and approval context of Tenure (package `tenure.activation.v1`):
//! asking for privileged roles just in time, several at once, under every check of the
//! role's settings, through approvals in stages, and provisioning into the assignments
//! context by its idempotent gRPC API.
//!
//! Layers: [`engine`] and [`workflow`]/[`requests`] (the application: checks, state
//! transitions, timers), [`store`] (sqlx), [`clients`] (the assignments context over
//! gRPC), [`api`] (tonic adapter). Owns its tables (prefixed `activation_`) and its log.

use std::sync::Arc;

use tenure_platform::auth::ServiceToken;
use tenure_platform::clock::SharedClock;
use tenure_platform::consumer::Consumer;
use tenure_platform::db::Db;
use tenure_platform::events::EventLog;
use tenure_platform::grpc::Registry;
use tenure_proto::activation::v1 as pb;
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod clients;
pub mod engine;
pub mod follow;
pub mod requests;
pub mod schema;
pub mod store;
pub mod timers;
pub mod workflow;

/// The first migration version of this context.
pub const MIGRATION_BASE: i64 = 200_000;
/// The prefix of this context's tables and its event-log name.
pub const PREFIX: &str = "activation";

tenure_platform::events_service!(EventsApi, tenure_proto::activation::v1);

/// The running context.
#[derive(Clone)]
pub struct ActivationContext {
    /// The engine.
    pub engine: Arc<engine::Engine>,
    /// The context's event log.
    pub log: EventLog<pb::Event>,
    /// Tenure's own service identities (they may follow this context's stream).
    pub service_principals: Vec<String>,
}

impl ActivationContext {
    /// Migrates, opens the log, and starts the timer and the follower of the assignments
    /// stream (until `stop`). `assignments` is the channel to the assignments context
    /// (this process's own address when it runs here too).
    pub async fn open(
        db: Db,
        clock: SharedClock,
        assignments: tonic::transport::Channel,
        service_token: ServiceToken,
        service_principals: Vec<String>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        db.migrate(schema::migrations(db.backend())).await?;
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
            tracing::warn!(error = %e, "no service token: the activation context cannot follow the assignments stream");
        }
        let consumer = Consumer {
            name: "assignments".to_owned(),
            log: log.clone(),
            source: Arc::new(follow::AssignmentsStream {
                channel: assignments,
                token: service_token,
            }),
            handler: Arc::new(follow::InstanceEnds {
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
        use tenure_platform::register;
        register!(
            registry,
            pb::events_service_server::EventsServiceServer::new(EventsApi {
                log: self.log.clone(),
                authorize: {
                    let engine = self.engine.clone();
                    let services = self.service_principals.clone();
                    std::sync::Arc::new(move |caller: tenure_platform::auth::Caller| {
                        let engine = engine.clone();
                        let trusted = services.contains(&caller.principal_id);
                        Box::pin(async move {
                            if trusted || engine.reads_all(&caller, "/").await? {
                                Ok(())
                            } else {
                                Err(tenure_platform::ApiError::denied(
                                    "the event stream needs a reading role (tenure/read) at \"/\"",
                                ))
                            }
                        })
                    })
                },
            })
        );
        register!(
            registry,
            pb::activation_service_server::ActivationServiceServer::new(api::ActivationApi {
                engine: self.engine.clone()
            })
        );
    }
}
