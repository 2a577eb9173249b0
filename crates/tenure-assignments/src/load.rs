//! Filling the access model at start from the context's current rows, not from the
//! history of its event log.
//!
//! The tables are the system of record and change in the same transaction as the events
//! the model otherwise follows ([`crate::core::Core::commit`]), so the rows as of a
//! sequence describe exactly the model the log builds up to that sequence. Reading them
//! costs what is held now (one short row per grant in effect or pending), where a replay
//! cost everything that ever happened, each event carrying whole messages to decode: at
//! 1,000,000 assignments the replay took 9.7 s (BENCHMARKS.md, workload 6).
//!
//! The rows and the log's head are read in one snapshot (a read transaction on SQLite,
//! `REPEATABLE READ` on PostgreSQL). Sequences are taken under the head row's lock in
//! the committing transaction, so the snapshot holds every event up to the head it reads
//! and none after: following the log from that head misses nothing and applies nothing
//! twice. [`replay`] builds the same model the old way; the tests compare the two.

use std::borrow::Cow;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use serde::Deserialize;
use sqlx::Row as _;
use sqlx::{Any, Transaction};
use std::sync::Arc;
use tenure_platform::db::{Backend, Db};
use tenure_platform::events::EventLog;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{AssignmentType, PrincipalType, ScopeType};
use tokio::sync::mpsc::Sender;

use crate::model::{GrantEntry, GrantSource, Model, PrincipalInfo, RoleInfo};

/// Rows per page of [`pages`] on SQLite: one database row carries this many table rows.
const SQLITE_PAGE_ROWS: usize = 8192;
/// Rows sent on together on PostgreSQL, where a page is one row.
const POSTGRES_BATCH: usize = 1024;

/// A text field of a loaded row: borrowed from the page unless JSON escaped it.
type Text<'a> = Cow<'a, str>;

#[derive(Deserialize)]
struct PrincipalRow<'a>(
    #[serde(borrow)] Text<'a>,
    i32,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    i64,
);

#[derive(Deserialize)]
struct ScopeRow<'a>(
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Option<Text<'a>>,
    i32,
    #[serde(borrow)] Text<'a>,
);

#[derive(Deserialize)]
struct RoleRow<'a>(
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    i32,
    #[serde(borrow)] Text<'a>,
);

#[derive(Deserialize)]
struct AssignmentRow<'a>(
    #[serde(borrow)] Text<'a>,
    i32,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    i64,
    Option<i64>,
);

#[derive(Deserialize)]
struct ActivationRow<'a>(
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    i64,
    i64,
);

/// A table the model is loaded from.
#[derive(Debug, Clone, Copy)]
enum Table {
    Principals,
    Members,
    Scopes,
    Roles,
    Assignments,
    Activations,
}

impl Table {
    /// In the order they are read (any order builds the same model).
    const ALL: [Table; 6] = [
        Table::Principals,
        Table::Members,
        Table::Scopes,
        Table::Roles,
        Table::Assignments,
        Table::Activations,
    ];

    /// The table, the columns a row of a page holds, and which rows the model holds.
    fn query(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Table::Principals => (
                "assignments_principals",
                "id, principal_type, display_name, user_principal_name, enabled",
                "1 = 1",
            ),
            Table::Members => (
                "assignments_group_members",
                "group_id, member_id",
                "removed_at IS NULL",
            ),
            Table::Scopes => (
                "assignments_scopes",
                "id, parent_id, scope_type, display_name",
                "1 = 1",
            ),
            Table::Roles => (
                "assignments_roles",
                "id, display_name, kind, permissions",
                "1 = 1",
            ),
            // Schedules not removed and whose expiry is not processed: what the log's
            // AssignmentRemoved and AssignmentExpired have not taken out of the model.
            Table::Assignments => (
                "assignments_assignments",
                "id, assignment_type, principal_id, role_id, scope_id, start_at, end_at",
                "removed_at IS NULL AND expired_processed = 0",
            ),
            // Activations not ended early and whose expiry is not processed.
            Table::Activations => (
                "assignments_activations",
                "id, request_id, eligibility_id, principal_id, role_id, scope_id, start_at, end_at",
                "ended_at IS NULL AND expired_processed = 0",
            ),
        }
    }

    /// Adds a page of this table's rows to the model.
    fn apply(self, m: &mut Model, page: &str) -> anyhow::Result<()> {
        match self {
            Table::Principals => {
                for PrincipalRow(id, principal_type, display_name, upn, enabled) in
                    serde_json::from_str::<Vec<PrincipalRow<'_>>>(page)?
                {
                    let info = PrincipalInfo {
                        principal_type: PrincipalType::try_from(principal_type)
                            .unwrap_or(PrincipalType::Unspecified),
                        display_name: Arc::from(display_name),
                        user_principal_name: Arc::from(upn),
                        enabled: enabled != 0,
                    };
                    m.upsert_principal(&id, info);
                }
            }
            Table::Members => {
                for (group, member) in serde_json::from_str::<Vec<(Text<'_>, Text<'_>)>>(page)? {
                    m.add_member(&group, &member);
                }
            }
            Table::Scopes => {
                for ScopeRow(id, parent, scope_type, display_name) in
                    serde_json::from_str::<Vec<ScopeRow<'_>>>(page)?
                {
                    let scope_type =
                        ScopeType::try_from(scope_type).unwrap_or(ScopeType::Unspecified);
                    m.upsert_scope(&id, parent.as_deref(), scope_type, &display_name);
                }
            }
            Table::Roles => {
                for RoleRow(id, display_name, kind, permissions) in
                    serde_json::from_str::<Vec<RoleRow<'_>>>(page)?
                {
                    let info = RoleInfo {
                        display_name: Arc::from(display_name),
                        kind: pb::RoleKind::try_from(kind).unwrap_or(pb::RoleKind::Unspecified),
                        permissions: permissions
                            .split('\n')
                            .filter(|p| !p.is_empty())
                            .map(Arc::from)
                            .collect(),
                    };
                    m.insert_role(&id, info);
                }
            }
            Table::Assignments => {
                for AssignmentRow(id, assignment_type, principal, role, scope, start, end) in
                    serde_json::from_str::<Vec<AssignmentRow<'_>>>(page)?
                {
                    let (principal, role, scope) =
                        (m.intern(&principal), m.intern(&role), m.intern(&scope));
                    m.insert_grant(GrantEntry {
                        id: Arc::from(id),
                        source: GrantSource::Assignment,
                        assignment_type: AssignmentType::try_from(assignment_type)
                            .unwrap_or(AssignmentType::Unspecified),
                        principal,
                        role,
                        scope,
                        start,
                        end,
                        request_id: None,
                        eligibility_id: None,
                    });
                }
            }
            Table::Activations => {
                for ActivationRow(
                    id,
                    request_id,
                    eligibility_id,
                    principal,
                    role,
                    scope,
                    start,
                    end,
                ) in serde_json::from_str::<Vec<ActivationRow<'_>>>(page)?
                {
                    let (principal, role, scope) =
                        (m.intern(&principal), m.intern(&role), m.intern(&scope));
                    let optional = |s: Text<'_>| (!s.is_empty()).then(|| Arc::from(s));
                    m.insert_grant(GrantEntry {
                        id: Arc::from(id),
                        source: GrantSource::Activation,
                        assignment_type: AssignmentType::Active,
                        principal,
                        role,
                        scope,
                        start,
                        end: Some(end),
                        request_id: optional(request_id),
                        eligibility_id: optional(eligibility_id),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Pages read and not yet applied, at most (each up to a few MiB).
const PAGES_IN_FLIGHT: usize = 4;

/// The model as the current rows describe it, and the log sequence they are as of.
///
/// A task reads the pages while this one builds the model from them: the database's
/// work (on SQLite, sqlx's worker thread) and the model's run on both cores at once.
pub async fn load(db: &Db) -> anyhow::Result<(Model, i64)> {
    let (send, mut pages) = tokio::sync::mpsc::channel(PAGES_IN_FLIGHT);
    let reader = tokio::spawn(read(db.clone(), send));
    let mut m = Model::default();
    while let Some((table, batch)) = pages.recv().await {
        for page in &batch {
            table
                .apply(&mut m, page)
                .with_context(|| format!("loading the access model from {}", table.query().0))?;
        }
    }
    let head = reader
        .await
        .map_err(|e| anyhow::anyhow!("reading the access model's rows: {e}"))??;
    Ok((m, head))
}

/// Reads every table's pages in one snapshot and sends them on; returns the log
/// sequence the snapshot is as of.
async fn read(db: Db, send: Sender<(Table, Vec<String>)>) -> anyhow::Result<i64> {
    let backend = db.backend();
    let mut tx = db.reader().begin().await?;
    if backend == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
    }
    // On SQLite the snapshot starts with this first read and holds to the end.
    let head: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM assignments_event_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
    for table in Table::ALL {
        pages(&mut tx, backend, table, &send)
            .await
            .with_context(|| format!("reading {} for the access model", table.query().0))?;
    }
    tx.rollback().await?;
    Ok(head)
}

/// Sends on the pages of the rows of `table` the model holds: a page is a JSON array
/// of rows, each row the array of its columns. The database builds the JSON (its
/// escaping makes it unambiguous whatever the fields hold); the load parses it without
/// copying the fields that need no unescaping.
///
/// Row by row, with a value per column, the drivers cost more per row than the replay
/// this load replaces: 10 µs a row on SQLite (a hand-over between sqlx's worker thread
/// and the caller, and an allocation per value), 2 µs on PostgreSQL. So:
/// - on SQLite, a page is one database row of [`SQLITE_PAGE_ROWS`] table rows, in rowid
///   order (the table's own; rowids do not move within the read transaction);
/// - on PostgreSQL, where rows stream over the connection without a thread between, a
///   page is one row, its columns in one JSON value. Aggregated pages measured slower
///   there (building the aggregate cost the server more than the driver saved), and
///   paging by the primary key made PostgreSQL sort the rest of the table for every
///   page where the table had no statistics.
async fn pages(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    table: Table,
    send: &Sender<(Table, Vec<String>)>,
) -> anyhow::Result<()> {
    let stopped = || anyhow::anyhow!("the access model's load stopped");
    let (name, columns, filter) = table.query();
    match backend {
        Backend::Sqlite => {
            let sql = format!(
                "SELECT max(k), '[' || group_concat(rec, ',') || ']' FROM \
                 (SELECT rowid AS k, json_array({columns}) AS rec FROM {name} \
                  WHERE ({filter}) AND rowid > $1 ORDER BY rowid LIMIT {SQLITE_PAGE_ROWS}) AS page"
            );
            let mut last = 0i64;
            loop {
                let row = sqlx::query(&sql).bind(last).fetch_one(&mut **tx).await?;
                let Some(next) = row.try_get::<Option<i64>, _>(0)? else {
                    return Ok(());
                };
                let page: String = row.try_get(1)?;
                send.send((table, vec![page]))
                    .await
                    .map_err(|_| stopped())?;
                last = next;
            }
        }
        Backend::Postgres => {
            let sql = format!(
                "SELECT '[' || CAST(json_build_array({columns}) AS TEXT) || ']' \
                 FROM {name} WHERE {filter}"
            );
            let mut rows = sqlx::query_scalar::<_, String>(&sql).fetch(&mut **tx);
            let mut batch = Vec::with_capacity(POSTGRES_BATCH);
            while let Some(page) = rows.try_next().await? {
                batch.push(page);
                if batch.len() == POSTGRES_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(POSTGRES_BATCH));
                    send.send((table, full)).await.map_err(|_| stopped())?;
                }
            }
            if !batch.is_empty() {
                send.send((table, batch)).await.map_err(|_| stopped())?;
            }
            Ok(())
        }
    }
}

/// The model as the log's history builds it, event by event, up to and including
/// sequence `upto`: how the server started before [`load`], kept to check the two agree.
pub async fn replay(log: &EventLog<pb::Event>, upto: i64) -> anyhow::Result<Model> {
    let mut m = Model::default();
    let mut after = 0;
    while after < upto {
        let batch = log.read_after(after, 5000).await?;
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            let sequence = e.meta.as_ref().map_or(after, |meta| meta.sequence);
            if sequence > upto {
                return Ok(m);
            }
            m.apply(e);
            after = sequence;
        }
    }
    Ok(m)
}
