//! The activation context of Tenure (package `tenure.activation.v1`).
//!
//! It owns its tables (prefixed `activation_`) and its event log, and is reached by
//! other contexts only through its gRPC services.

use tenure_platform::clock::SharedClock;
use tenure_platform::db::{Db, MigrationSpec};
use tenure_platform::events::EventLog;
use tenure_platform::grpc::Registry;
use tenure_proto::activation::v1 as pb;

/// The first migration version of this context; its migrations stay within
/// `MIGRATION_BASE..MIGRATION_BASE + 100_000`.
pub const MIGRATION_BASE: i64 = 200000;
/// The prefix of this context's tables and its event-log name.
pub const PREFIX: &str = "activation";

tenure_platform::events_service!(EventsApi, tenure_proto::activation::v1);

/// This context's migrations, for the backend in use.
pub fn migrations(backend: tenure_platform::db::Backend) -> Vec<MigrationSpec> {
    vec![MigrationSpec::event_log(MIGRATION_BASE, PREFIX, backend)]
}

/// The running context: its storage and its event log.
#[derive(Clone)]
pub struct ActivationContext {
    /// The context's event log.
    pub log: EventLog<pb::Event>,
}

impl ActivationContext {
    /// Migrates the context's tables and opens its event log.
    pub async fn open(db: Db, clock: SharedClock) -> anyhow::Result<Self> {
        db.migrate(migrations(db.backend())).await?;
        let log = EventLog::open(db, clock, PREFIX).await?;
        Ok(Self { log })
    }

    /// Registers this context's gRPC services.
    pub fn register(&self, registry: &mut Registry) {
        tenure_platform::register!(
            registry,
            pb::events_service_server::EventsServiceServer::new(self.events_api())
        );
        tenure_platform::register!(
            registry,
            pb::activation_service_server::ActivationServiceServer::new(Unbuilt)
        );
    }

    /// The gRPC event stream of this context.
    pub fn events_api(&self) -> EventsApi {
        EventsApi {
            log: self.log.clone(),
        }
    }
}

/// The services of this context whose RPCs are not built yet: every RPC answers
/// UNIMPLEMENTED (the generated default), so clients and reflection see the whole API.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unbuilt;

impl pb::activation_service_server::ActivationService for Unbuilt {}
