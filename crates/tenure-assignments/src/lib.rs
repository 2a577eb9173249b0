//! The assignments context of Tenure (package `tenure.assignments.v1`): the system of
//! record of who may hold which privileged role, where, and until when, and the access
//! query every other system asks.
//!
//! Layers: [`model`] (pure domain: the access model and its evaluation), [`store`]
//! (sqlx), [`core`] (the write path, authorization, idempotency) and [`api`] (tonic
//! adapters, one module per service). It owns its tables (prefixed `assignments_`) and
//! its event log, and is reached by other contexts only through its gRPC services.

use std::sync::Arc;

use tenure_platform::clock::SharedClock;
use tenure_platform::db::Db;
use tenure_platform::events::EventLog;
use tenure_platform::grpc::Registry;
use tenure_proto::assignments::v1 as pb;
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod catalogue;
pub mod core;
pub mod directory_rules;
pub mod drift_store;
pub mod expiry;
pub mod load;
pub mod model;
pub mod policy;
pub mod schema;
pub mod settings_rules;
pub mod settings_store;
pub mod store;

pub use crate::core::{Core, Settings};

/// The first migration version of this context; its migrations stay within
/// `MIGRATION_BASE..MIGRATION_BASE + 100_000`.
pub const MIGRATION_BASE: i64 = 100_000;
/// The prefix of this context's tables and its event-log name.
pub const PREFIX: &str = "assignments";

tenure_platform::events_service!(EventsApi, tenure_proto::assignments::v1);

/// The running context.
#[derive(Clone)]
pub struct AssignmentsContext {
    /// The application core.
    pub core: Arc<Core>,
    /// The context's event log.
    pub log: EventLog<pb::Event>,
}

impl AssignmentsContext {
    /// Migrates, opens the log, fills the access model from it, starts following the log
    /// and the expiry timer (until `stop`), and seeds the built-in catalogue, the root
    /// scope and the bootstrap administrator when missing.
    pub async fn open(
        db: Db,
        clock: SharedClock,
        settings: Settings,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        db.migrate(schema::migrations(db.backend())).await?;
        let log = EventLog::open(db.clone(), clock.clone(), PREFIX).await?;
        log.spawn_tailer(stop);
        let core = Core::new(db, log.clone(), clock, settings);
        core.start(stop).await?;
        catalogue::seed(&core)
            .await
            .map_err(|e| anyhow::anyhow!("seeding the catalogue: {e}"))?;
        tokio::spawn(expiry::run(core.clone(), stop.clone()));
        {
            let core = core.clone();
            log.spawn_waker(stop, move || core.expiry_wake.notify_one());
        }
        Ok(Self { core, log })
    }

    /// Registers this context's gRPC services.
    pub fn register(&self, registry: &mut Registry) {
        use tenure_platform::register;
        register!(
            registry,
            pb::events_service_server::EventsServiceServer::new(self.events_api())
        );
        api::register(&self.core, registry);
    }

    /// The gRPC event stream of this context.
    pub fn events_api(&self) -> EventsApi {
        EventsApi {
            log: self.log.clone(),
            authorize: {
                let core = self.core.clone();
                std::sync::Arc::new(move |caller| {
                    let allowed = core.can_read_all(&caller);
                    Box::pin(async move {
                        if allowed {
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
