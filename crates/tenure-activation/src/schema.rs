//! The activation context's tables (prefixed `activation_`). A request is stored as its
//! full protobuf document (`body`) with the columns queries and timers need beside it.

use tenure_platform::db::{Backend, MigrationSpec};

use crate::{MIGRATION_BASE, PREFIX};

const V1: &str = r#"
CREATE TABLE activation_requests (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    action BIGINT NOT NULL,
    status BIGINT NOT NULL,
    requestor_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    target_request_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- the next instant a timer must act on this request (timeout, escalation,
    -- scheduled start, provisioning retry); NULL when nothing is due
    due_at BIGINT,
    attempts BIGINT NOT NULL,
    version BIGINT NOT NULL,
    body {blob} NOT NULL
);
CREATE INDEX activation_requests_requestor ON activation_requests (requestor_id, created_at);
CREATE INDEX activation_requests_due ON activation_requests (due_at);
CREATE INDEX activation_requests_target ON activation_requests (target_request_id);
CREATE INDEX activation_requests_status ON activation_requests (status, role_id, scope_id);

-- Who may decide each stage of a request, resolved when the stage opens (groups
-- expanded to their transitive members; via_group names the group).
CREATE TABLE activation_approvers (
    request_id TEXT NOT NULL,
    stage BIGINT NOT NULL,
    approver_id TEXT NOT NULL,
    via_group TEXT NOT NULL,
    escalation BIGINT NOT NULL,
    PRIMARY KEY (request_id, stage, approver_id, escalation)
);
CREATE INDEX activation_approvers_approver ON activation_approvers (approver_id);
"#;

/// This context's migrations.
pub fn migrations(backend: Backend) -> Vec<MigrationSpec> {
    let blob = match backend {
        Backend::Sqlite => "BLOB",
        Backend::Postgres => "BYTEA",
    };
    vec![
        MigrationSpec::event_log(MIGRATION_BASE, PREFIX, backend),
        MigrationSpec {
            version: MIGRATION_BASE + 100,
            description: "activation tables".into(),
            sql: format!(
                "{}\n{}",
                V1.replace("{blob}", blob),
                tenure_platform::idempotency::table_sql(PREFIX, backend)
            )
            .into(),
        },
    ]
}
