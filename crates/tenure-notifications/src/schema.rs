//! The notifications context's tables (prefixed `notifications_`). Documents are stored
//! as their protobuf encoding (`body`) with the columns queries need beside them.
//!
//! Three groups: the context's own configuration and results (settings, rule sets,
//! webhooks, alerts, notifications and their delivery outbox, the audit trail), and the
//! projections of the assignments stream it needs to evaluate alerts and resolve
//! recipients (principals, group members, scopes, assignments, activations, role
//! settings, roles, drift). Projections are written only by the consumer of that
//! stream, in the same transaction as its cursor.

use tenure_platform::db::{Backend, MigrationSpec};

use crate::{MIGRATION_BASE, PREFIX};

const V1: &str = r#"
CREATE TABLE notifications_settings (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL,
    body {blob} NOT NULL
);
CREATE TABLE notifications_alert_settings (
    kind BIGINT PRIMARY KEY,
    version BIGINT NOT NULL,
    body {blob} NOT NULL
);
CREATE TABLE notifications_rule_sets (
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    body {blob} NOT NULL,
    PRIMARY KEY (role_id, scope_id)
);
CREATE TABLE notifications_webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL UNIQUE,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    body {blob} NOT NULL
);
CREATE TABLE notifications_retention (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    keep_for_secs BIGINT NOT NULL,
    body {blob} NOT NULL
);

CREATE TABLE notifications_alerts (
    id TEXT PRIMARY KEY,
    kind BIGINT NOT NULL,
    status BIGINT NOT NULL,
    severity BIGINT NOT NULL,
    raised_at BIGINT NOT NULL,
    body {blob} NOT NULL
);
CREATE INDEX notifications_alerts_kind ON notifications_alerts (kind, status);
CREATE TABLE notifications_alert_incidents (
    alert_id TEXT NOT NULL,
    incident_key TEXT NOT NULL,
    body {blob} NOT NULL,
    PRIMARY KEY (alert_id, incident_key)
);
CREATE TABLE notifications_alert_dismissed (
    kind BIGINT NOT NULL,
    incident_key TEXT NOT NULL,
    PRIMARY KEY (kind, incident_key)
);
CREATE TABLE notifications_timers (
    name TEXT PRIMARY KEY,
    due_at BIGINT NOT NULL
);

CREATE TABLE notifications_notifications (
    id TEXT PRIMARY KEY,
    event_kind BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    body {blob} NOT NULL
);
CREATE TABLE notifications_deliveries (
    id TEXT PRIMARY KEY,
    notification_id TEXT NOT NULL,
    channel BIGINT NOT NULL,
    recipient TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    event_kind BIGINT NOT NULL,
    status BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT,
    created_at BIGINT NOT NULL,
    body {blob} NOT NULL
);
CREATE INDEX notifications_deliveries_due ON notifications_deliveries (next_attempt_at);
CREATE INDEX notifications_deliveries_notification ON notifications_deliveries (notification_id);
CREATE TABLE notifications_reminders (
    assignment_id TEXT NOT NULL,
    offset_secs BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    PRIMARY KEY (assignment_id, offset_secs)
);
CREATE INDEX notifications_reminders_due ON notifications_reminders (due_at);

CREATE TABLE notifications_audit (
    sequence BIGINT PRIMARY KEY,
    occurred_at BIGINT NOT NULL,
    actor_id TEXT NOT NULL,
    action TEXT NOT NULL,
    full_action TEXT NOT NULL,
    target_principal_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    source_context TEXT NOT NULL,
    source_sequence BIGINT NOT NULL,
    result BIGINT NOT NULL,
    hash TEXT NOT NULL,
    body {blob} NOT NULL,
    UNIQUE (source_context, source_sequence)
);
CREATE INDEX notifications_audit_occurred ON notifications_audit (occurred_at);
CREATE INDEX notifications_audit_actor ON notifications_audit (actor_id);
CREATE INDEX notifications_audit_target ON notifications_audit (target_principal_id);
CREATE INDEX notifications_audit_request ON notifications_audit (request_id);
CREATE TABLE notifications_audit_head (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    last_sequence BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);
INSERT INTO notifications_audit_head (id, last_sequence, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE notifications_p_principals (
    id TEXT PRIMARY KEY,
    type BIGINT NOT NULL,
    display_name TEXT NOT NULL,
    upn TEXT NOT NULL,
    email TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    last_sign_in BIGINT
);
CREATE TABLE notifications_p_members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
CREATE TABLE notifications_p_scopes (
    id TEXT PRIMARY KEY,
    parent_id TEXT NOT NULL,
    display_name TEXT NOT NULL
);
CREATE TABLE notifications_p_assignments (
    id TEXT PRIMARY KEY,
    type BIGINT NOT NULL,
    principal_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    start_at BIGINT NOT NULL,
    end_at BIGINT,
    body {blob} NOT NULL
);
CREATE INDEX notifications_p_assignments_role ON notifications_p_assignments (role_id);
CREATE TABLE notifications_p_instances (
    id TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    end_at BIGINT
);
CREATE TABLE notifications_p_activations (
    instance_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    role_name TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    activated_at BIGINT NOT NULL
);
CREATE INDEX notifications_p_activations_who ON notifications_p_activations (principal_id, role_id, activated_at);
CREATE TABLE notifications_p_role_settings (
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    body {blob} NOT NULL,
    PRIMARY KEY (role_id, scope_id)
);
CREATE TABLE notifications_p_roles (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    highly_privileged BIGINT NOT NULL
);
CREATE TABLE notifications_p_drift (
    id TEXT PRIMARY KEY,
    body {blob} NOT NULL
);
CREATE TABLE notifications_p_break_glass (
    principal_id TEXT NOT NULL,
    used_at BIGINT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (principal_id, used_at)
);
"#;

/// Who reviews in each round, from the reviews stream (`RoundStarted`, `StageStarted`),
/// so that the round's completion reaches every reviewer; and the alert kinds waiting
/// to be evaluated.
const V2: &str = r#"
CREATE TABLE notifications_review_reviewers (
    round_id TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    type BIGINT NOT NULL,
    display_name TEXT NOT NULL,
    upn TEXT NOT NULL,
    PRIMARY KEY (round_id, principal_id)
);
-- Alert kinds an event affected and that are not evaluated since; the version moves
-- with each mark, so an evaluation claims exactly the marks it saw.
CREATE TABLE notifications_alert_dirty (
    kind BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
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
            description: "notifications tables".into(),
            sql: format!(
                "{}\n{}",
                V1.replace("{blob}", blob),
                tenure_platform::idempotency::table_sql(PREFIX, backend)
            )
            .into(),
        },
        MigrationSpec {
            version: MIGRATION_BASE + 200,
            description: "review round reviewers; alert kinds waiting for evaluation".into(),
            sql: V2.into(),
        },
        MigrationSpec::new(
            MIGRATION_BASE + 300,
            "one principal's assignments of one role, by index",
            // An activation's alerts read that pair's assignments; by role alone that
            // was every holder of the role.
            "CREATE INDEX notifications_p_assignments_who ON notifications_p_assignments (principal_id, role_id);",
        ),
        MigrationSpec::new(
            MIGRATION_BASE + 400,
            "audit entries of one source context in sequence order",
            // A query or export filtered by source context walks this index in sequence
            // order (one walk per context, merged) and stops at the page. The unique
            // (source_context, source_sequence) index made SQLite read every entry of
            // the context and sort them.
            "CREATE INDEX notifications_audit_context ON notifications_audit (source_context, sequence);",
        ),
    ]
}
