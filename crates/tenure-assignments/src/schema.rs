//! The assignments context's tables. All carry the `assignments_` prefix; no other
//! context reads them. Times are UTC microseconds (BIGINT), flags 0/1 (BIGINT), enums
//! their protobuf numbers (BIGINT).

use tenure_platform::db::{Backend, MigrationSpec};

use crate::{MIGRATION_BASE, PREFIX};

const V1: &str = r#"
CREATE TABLE assignments_principals (
    id TEXT PRIMARY KEY,
    principal_type BIGINT NOT NULL,
    display_name TEXT NOT NULL,
    user_principal_name TEXT NOT NULL,
    email TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    last_sign_in_at BIGINT,
    app_id TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    disabled_at BIGINT
);

-- Group membership with its history: removed_at is NULL while the membership holds.
CREATE TABLE assignments_group_members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    removed_at BIGINT
);
CREATE INDEX assignments_group_members_group ON assignments_group_members (group_id, removed_at);
CREATE INDEX assignments_group_members_member ON assignments_group_members (member_id, removed_at);

CREATE TABLE assignments_roles (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    kind BIGINT NOT NULL,
    built_in BIGINT NOT NULL,
    highly_privileged BIGINT NOT NULL,
    -- newline-separated lists
    permissions TEXT NOT NULL,
    assignable_scope_ids TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);

CREATE TABLE assignments_scopes (
    id TEXT PRIMARY KEY,
    parent_id TEXT,
    scope_type BIGINT NOT NULL,
    display_name TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    -- JSON object of labels
    labels TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX assignments_scopes_parent ON assignments_scopes (parent_id);

-- Schedules: the plan an administrator made (eligible or active).
CREATE TABLE assignments_assignments (
    id TEXT PRIMARY KEY,
    assignment_type BIGINT NOT NULL,
    principal_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    start_at BIGINT NOT NULL,
    end_at BIGINT,
    justification TEXT NOT NULL,
    ticket_number TEXT NOT NULL,
    ticket_system TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    removal_reason BIGINT NOT NULL,
    removed_at BIGINT,
    -- set once the expiry of this schedule has been processed (event emitted)
    expired_processed BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX assignments_assignments_principal ON assignments_assignments (principal_id);
CREATE INDEX assignments_assignments_role_scope ON assignments_assignments (role_id, scope_id);
CREATE INDEX assignments_assignments_due ON assignments_assignments (expired_processed, end_at);

-- Activation instances provisioned by the activation context, keyed by its request id.
CREATE TABLE assignments_activations (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    eligibility_id TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    start_at BIGINT NOT NULL,
    end_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason BIGINT NOT NULL,
    justification TEXT NOT NULL,
    ticket_number TEXT NOT NULL,
    ticket_system TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expired_processed BIGINT NOT NULL
);
CREATE INDEX assignments_activations_principal ON assignments_activations (principal_id);
CREATE INDEX assignments_activations_due ON assignments_activations (expired_processed, end_at);

-- Role settings: organisation defaults (role_id = '', scope_id = ''), per-role overrides
-- (scope_id = ''), and per-role-and-scope overrides for resource roles.
CREATE TABLE assignments_role_settings (
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    settings {blob} NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (role_id, scope_id)
);

-- Idempotency: the first response to a mutation with a given request id.
CREATE TABLE assignments_idempotency (
    method TEXT NOT NULL,
    request_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    response {blob} NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (method, request_id)
);

CREATE TABLE assignments_drift (
    id TEXT PRIMARY KEY,
    kind BIGINT NOT NULL,
    status BIGINT NOT NULL,
    source TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    assignment_type BIGINT NOT NULL,
    external_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    first_observed_at BIGINT NOT NULL,
    last_observed_at BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE INDEX assignments_drift_source ON assignments_drift (source, status);

-- Set once the built-in catalogue and the bootstrap principal have been seeded.
CREATE TABLE assignments_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

/// Drift reports: a per-source row locked by each report (and counting them), and the
/// memberships seen by the calls of a report that is not complete yet.
const V120_DRIFT_SERIES: &str = r#"
CREATE TABLE assignments_drift_series (
    source TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    reports BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (source, scope_id)
);

CREATE TABLE assignments_drift_seen (
    source TEXT NOT NULL,
    report_scope_id TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    assignment_type BIGINT NOT NULL,
    observed_at BIGINT NOT NULL,
    PRIMARY KEY (source, report_scope_id, principal_id, role_id, scope_id, assignment_type)
);

CREATE INDEX assignments_drift_status ON assignments_drift (status, first_observed_at);
"#;

/// The expiry timer asks "what ends first among the rows not yet expired?" at every
/// change of the log. Over `(expired_processed, end_at)` with the other conditions
/// checked in the table, a PostgreSQL planner without fresh statistics (after a bulk
/// load, or with autovacuum off) read every pending row for it: 6 ms at 20,000
/// assignments, once per activation (BENCHMARKS.md, session 6). An index holding only
/// the rows the query asks about, in end order, answers it from its first entry on
/// either backend, whatever the statistics say.
const V140_DUE: &str = r#"
DROP INDEX assignments_assignments_due;
CREATE INDEX assignments_assignments_pending_end ON assignments_assignments (end_at, id)
    WHERE expired_processed = 0 AND removed_at IS NULL AND end_at IS NOT NULL;
DROP INDEX assignments_activations_due;
CREATE INDEX assignments_activations_pending_end ON assignments_activations (end_at, id)
    WHERE expired_processed = 0 AND ended_at IS NULL;
"#;

/// This context's migrations for `backend`.
pub fn migrations(backend: Backend) -> Vec<MigrationSpec> {
    let blob = match backend {
        Backend::Sqlite => "BLOB",
        Backend::Postgres => "BYTEA",
    };
    vec![
        MigrationSpec::event_log(MIGRATION_BASE, PREFIX, backend),
        MigrationSpec {
            version: MIGRATION_BASE + 100,
            description: "assignments tables".into(),
            sql: V1.replace("{blob}", blob).into(),
        },
        MigrationSpec {
            version: MIGRATION_BASE + 120,
            description: "assignments drift report series".into(),
            sql: V120_DRIFT_SERIES.into(),
        },
        MigrationSpec::new(
            MIGRATION_BASE + 140,
            "what is still to expire, by end, in partial indexes",
            V140_DUE,
        ),
    ]
}
