//! The reviews context's tables (prefixed `reviews_`). Definitions, rounds and items
//! are stored as their protobuf documents (`body`) with the columns that queries and
//! timers need beside them.

use tenure_platform::db::{Backend, MigrationSpec};

use crate::{MIGRATION_BASE, PREFIX};

const V1: &str = r#"
CREATE TABLE reviews_definitions (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    deleted BIGINT NOT NULL,
    -- when the next round starts (NULL: none will, or paused) and its series index
    next_round_at BIGINT,
    next_index BIGINT NOT NULL,
    rounds_started BIGINT NOT NULL,
    version BIGINT NOT NULL,
    body {blob} NOT NULL
);
CREATE INDEX reviews_definitions_due ON reviews_definitions (next_round_at);

CREATE TABLE reviews_rounds (
    id TEXT PRIMARY KEY,
    definition_id TEXT NOT NULL,
    round_number BIGINT NOT NULL,
    status BIGINT NOT NULL,
    scope_id TEXT NOT NULL,
    start_at BIGINT NOT NULL,
    end_at BIGINT NOT NULL,
    current_stage BIGINT NOT NULL,
    -- reminders up to this instant are sent
    reminded_until BIGINT NOT NULL,
    -- the next instant a timer must act on this round (reminder, stage end, end,
    -- applying); NULL when nothing is due
    due_at BIGINT,
    version BIGINT NOT NULL,
    body {blob} NOT NULL,
    UNIQUE (definition_id, round_number)
);
CREATE INDEX reviews_rounds_due ON reviews_rounds (due_at);
CREATE INDEX reviews_rounds_definition ON reviews_rounds (definition_id, start_at);

CREATE TABLE reviews_items (
    id TEXT PRIMARY KEY,
    round_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    principal_id TEXT NOT NULL,
    role_id TEXT NOT NULL,
    stage BIGINT NOT NULL,
    decision BIGINT NOT NULL,
    apply_status BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    body {blob} NOT NULL
);
CREATE INDEX reviews_items_round ON reviews_items (round_id, seq);
CREATE INDEX reviews_items_principal ON reviews_items (principal_id, created_at);

-- Who may decide an item in a stage, resolved when the stage starts.
CREATE TABLE reviews_item_reviewers (
    item_id TEXT NOT NULL,
    stage BIGINT NOT NULL,
    reviewer_id TEXT NOT NULL,
    round_id TEXT NOT NULL,
    PRIMARY KEY (item_id, stage, reviewer_id)
);
CREATE INDEX reviews_item_reviewers_reviewer ON reviews_item_reviewers (reviewer_id, round_id);

-- Activations seen on the assignments stream (InstanceActivated), for recommendations.
CREATE TABLE reviews_activations (
    instance_id TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL,
    via_group TEXT NOT NULL,
    role_id TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    activated_at BIGINT NOT NULL
);
CREATE INDEX reviews_activations_principal ON reviews_activations (principal_id, role_id, activated_at);
CREATE INDEX reviews_activations_group ON reviews_activations (via_group, role_id, activated_at);
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
            description: "reviews tables".into(),
            sql: format!(
                "{}\n{}",
                V1.replace("{blob}", blob),
                tenure_platform::idempotency::table_sql(PREFIX, backend)
            )
            .into(),
        },
    ]
}
