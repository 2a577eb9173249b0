//! The notifications context of Tenure (package `tenure.notifications.v1`).
//!
//! It owns its tables (prefixed `notifications_`) and its event log, and is reached by
//! other contexts only through its gRPC services.

use tenure_platform::clock::SharedClock;
use tenure_platform::db::{Db, MigrationSpec};
use tenure_platform::events::EventLog;
use tenure_platform::grpc::Registry;
use tenure_proto::notifications::v1 as pb;

/// The first migration version of this context; its migrations stay within
/// `MIGRATION_BASE..MIGRATION_BASE + 100_000`.
pub const MIGRATION_BASE: i64 = 400000;
/// The prefix of this context's tables and its event-log name.
pub const PREFIX: &str = "notifications";

tenure_platform::events_service!(EventsApi, tenure_proto::notifications::v1);

/// This context's migrations, for the backend in use.
pub fn migrations(backend: tenure_platform::db::Backend) -> Vec<MigrationSpec> {
    vec![MigrationSpec::event_log(MIGRATION_BASE, PREFIX, backend)]
}

/// The running context: its storage and its event log.
#[derive(Clone)]
pub struct NotificationsContext {
    /// The context's event log.
    pub log: EventLog<pb::Event>,
}

impl NotificationsContext {
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
            pb::notifications_service_server::NotificationsServiceServer::new(Unbuilt)
        );
        tenure_platform::register!(
            registry,
            pb::alerts_service_server::AlertsServiceServer::new(Unbuilt)
        );
        tenure_platform::register!(
            registry,
            pb::audit_service_server::AuditServiceServer::new(Unbuilt)
        );
    }

    /// The gRPC event stream of this context.
    pub fn events_api(&self) -> EventsApi {
        EventsApi {
            log: self.log.clone(),
            // Not built yet: until this context checks readers, its (empty) stream is
            // refused to everyone.
            authorize: std::sync::Arc::new(|_| {
                Box::pin(async { Err(tenure_platform::ApiError::denied("not available yet")) })
            }),
        }
    }
}

/// The services of this context whose RPCs are not built yet: every RPC answers
/// UNIMPLEMENTED (the generated default), so clients and reflection see the whole API.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unbuilt;

impl pb::notifications_service_server::NotificationsService for Unbuilt {}
impl pb::alerts_service_server::AlertsService for Unbuilt {}
impl pb::audit_service_server::AuditService for Unbuilt {}
