//! Storage: one sqlx `Any` pool over SQLite (the embedded default) or PostgreSQL (the
//! production store), chosen by URL at start-up.
//!
//! How SQL is shared between the two backends, decided once:
//! - Queries are written once, with `$1`-style placeholders (sqlx binds them by number on
//!   both backends), and use only SQL both speak: `INSERT … ON CONFLICT`, `RETURNING`,
//!   plain joins and aggregates.
//! - Columns are `TEXT`, `BIGINT` (integers, flags as 0/1, times as UTC microseconds
//!   since the Unix epoch) and `BLOB`/`BYTEA` (protobuf payloads). No backend-specific
//!   types, so decoding is identical.
//! - DDL differs where it must, so each context ships its migrations per backend.
//! - Where only one backend needs a statement (row locks with `SKIP LOCKED` on
//!   PostgreSQL), the code asks [`Db::backend`].
//!
//! On SQLite each context has a file of its own ([`context_url`]). Each file gets one
//! writer connection (it allows one writer anyway; queuing in the pool
//! beats spinning on `SQLITE_BUSY`) and a pool of readers, in WAL mode.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor, Transaction};

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, embedded, one file.
    Sqlite,
    /// PostgreSQL, over the network.
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            anyhow::bail!("unsupported database URL scheme (expected sqlite: or postgres:)")
        }
    }
}

/// A database handle: a writer pool and a reader pool (the same pool on PostgreSQL).
#[derive(Debug, Clone)]
pub struct Db {
    backend: Backend,
    url: String,
    write: AnyPool,
    read: AnyPool,
}

/// One migration of a context.
#[derive(Debug, Clone)]
pub struct MigrationSpec {
    /// Its version; each context has its own range (see [`MigrationSpec::event_log`]).
    pub version: i64,
    /// What it does.
    pub description: Cow<'static, str>,
    /// The SQL.
    pub sql: Cow<'static, str>,
}

impl MigrationSpec {
    /// A migration from static SQL.
    pub fn new(version: i64, description: &'static str, sql: &'static str) -> Self {
        Self {
            version,
            description: Cow::Borrowed(description),
            sql: Cow::Borrowed(sql),
        }
    }

    /// The first migration of every context: its event log, event head and consumer
    /// cursor tables, at version `base + 1`.
    pub fn event_log(base: i64, prefix: &str, backend: Backend) -> Self {
        Self {
            version: base + 1,
            description: Cow::Owned(format!("{prefix} event log")),
            sql: Cow::Owned(crate::events::log_migration_sql(prefix, backend)),
        }
    }
}

impl Db {
    /// Connects to `url`, creating the SQLite file (and its folder) when missing.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        match backend {
            Backend::Sqlite => Self::connect_sqlite(url).await,
            Backend::Postgres => {
                let opts = AnyConnectOptions::from_str(url).context("parsing the database URL")?;
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await
                    .context("connecting to PostgreSQL")?;
                Ok(Self {
                    backend,
                    url: url.to_owned(),
                    write: pool.clone(),
                    read: pool,
                })
            }
        }
    }

    async fn connect_sqlite(url: &str) -> anyhow::Result<Self> {
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the data folder {}", dir.display()))?;
        }
        let url_rwc = format!("sqlite://{path}?mode=rwc");
        let opts = AnyConnectOptions::from_str(&url_rwc).context("parsing the database URL")?;
        fn init(
            conn: &mut sqlx::AnyConnection,
        ) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                )
                .await?;
                Ok(())
            })
        }
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |c, _| init(c))
            .connect_with(opts.clone())
            .await
            .context("opening the SQLite database")?;
        // Four readers per context: each SQLite connection is a thread of sqlx's, and a
        // process serving all four contexts has four of these pools; a reader idle for a
        // minute is closed.
        let read = AnyPoolOptions::new()
            .max_connections(4)
            .idle_timeout(Duration::from_secs(60))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |c, _| init(c))
            .connect_with(opts)
            .await
            .context("opening the SQLite database")?;
        Ok(Self {
            backend: Backend::Sqlite,
            url: url.to_owned(),
            write,
            read,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL this handle was opened with (may hold credentials: never log it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool for reads.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// The pool for writes. Prefer [`Db::begin`].
    pub fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// Starts a write transaction. Never hold one across a network call: on SQLite it
    /// holds the only writer.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        self.write.begin().await
    }

    /// Runs a set of migrations. Versions of different contexts must not overlap (each
    /// context has its own range); migrations of other contexts found in the shared
    /// history table are ignored, so contexts migrate independently.
    pub async fn migrate(&self, specs: Vec<MigrationSpec>) -> anyhow::Result<()> {
        let migrations: Vec<Migration> = specs
            .into_iter()
            .map(|m| {
                Migration::new(
                    m.version,
                    m.description,
                    MigrationType::Simple,
                    m.sql,
                    false,
                )
            })
            .collect();
        let migrator = Migrator {
            migrations: Cow::Owned(migrations),
            ignore_missing: true,
            locking: true,
            no_tx: false,
        };
        migrator
            .run(&self.write)
            .await
            .context("running migrations")?;
        Ok(())
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// The URL of one context's database given the configured one: unchanged on
/// PostgreSQL; on SQLite, the file with `-CONTEXT` before its extension
/// (`sqlite:///var/lib/tenure/tenure.db?x` → `sqlite:///var/lib/tenure/tenure-activation.db?x`).
pub fn context_url(url: &str, context: &str) -> String {
    if !url.starts_with("sqlite:") {
        return url.to_owned();
    }
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    // The file name starts after the last '/' (or after "sqlite:" for a bare name).
    let name_start = base.rfind('/').map_or("sqlite:".len(), |i| i + 1);
    let (dir, name) = base.split_at(name_start);
    let file = match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{}-{context}{}", &name[..dot], &name[dot..]),
        _ => format!("{name}-{context}"),
    };
    match query {
        Some(q) => format!("{dir}{file}?{q}"),
        None => format!("{dir}{file}"),
    }
}

/// Maps a boolean to the integer stored for it.
pub fn flag(b: bool) -> i64 {
    i64::from(b)
}

#[cfg(test)]
mod tests {
    use super::context_url;

    #[test]
    fn each_context_gets_its_own_sqlite_file_and_shares_postgres() {
        assert_eq!(
            context_url("sqlite:///var/lib/tenure/tenure.db", "activation"),
            "sqlite:///var/lib/tenure/tenure-activation.db"
        );
        assert_eq!(
            context_url("sqlite://data/x.db?mode=rwc", "reviews"),
            "sqlite://data/x-reviews.db?mode=rwc"
        );
        assert_eq!(
            context_url("sqlite:db", "assignments"),
            "sqlite:db-assignments"
        );
        assert_eq!(
            context_url("sqlite:///tmp/.hidden", "a"),
            "sqlite:///tmp/.hidden-a"
        );
        assert_eq!(
            context_url("postgres://u@h:5432/tenure", "activation"),
            "postgres://u@h:5432/tenure"
        );
    }
}
