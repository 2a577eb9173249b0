//! Test support shared by every crate's tests: a fresh database per test on either
//! backend. With `TENURE_TEST_DATABASE_URL` set (a PostgreSQL URL whose user may create
//! databases), each [`TestDb`] is a new PostgreSQL database, dropped afterwards;
//! otherwise a new SQLite file in a temporary folder.

use crate::db::Db;

/// The environment variable naming the PostgreSQL server tests use.
pub const TEST_DATABASE_URL_VAR: &str = "TENURE_TEST_DATABASE_URL";

/// A database that exists for one test.
pub struct TestDb {
    /// The URL to open it with.
    pub url: String,
    admin_url: Option<String>,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Whether the tests run on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var(TEST_DATABASE_URL_VAR).is_ok_and(|v| !v.is_empty())
}

impl TestDb {
    /// A fresh, empty database.
    pub async fn new() -> anyhow::Result<Self> {
        match std::env::var(TEST_DATABASE_URL_VAR)
            .ok()
            .filter(|v| !v.is_empty())
        {
            Some(admin_url) => {
                let name = format!("tenure_t_{}", uuid::Uuid::new_v4().simple());
                let admin = Db::connect(&admin_url).await?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(admin.writer())
                    .await?;
                admin.close().await;
                let url = replace_database(&admin_url, &name)?;
                Ok(Self {
                    url,
                    admin_url: Some(admin_url),
                    name: Some(name),
                    _dir: None,
                })
            }
            None => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Ok(Self {
                    url,
                    admin_url: None,
                    name: None,
                    _dir: Some(dir),
                })
            }
        }
    }

    /// Opens a connection pool to the test database.
    pub async fn connect(&self) -> anyhow::Result<Db> {
        Db::connect(&self.url).await
    }

    /// Opens the database a server started on [`TestDb::url`] keeps `context` in: the
    /// same database on PostgreSQL, the context's own file on SQLite
    /// ([`crate::db::context_url`]).
    pub async fn connect_context(&self, context: &str) -> anyhow::Result<Db> {
        Db::connect(&crate::db::context_url(&self.url, context)).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (Some(admin_url), Some(name)) = (self.admin_url.take(), self.name.take()) else {
            return;
        };
        // Drop from a thread of its own: Drop cannot await, and the test's runtime may
        // be shutting down.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(admin) = Db::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(admin.writer())
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// `postgres://u@h:p/olddb?x` → `postgres://u@h:p/newdb?x`.
fn replace_database(url: &str, db: &str) -> anyhow::Result<String> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base
        .find("://")
        .ok_or_else(|| anyhow::anyhow!("not a URL"))?
        + 3;
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host_part = path_start.map_or(base, |i| &base[..i]);
    Ok(match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            super::replace_database("postgres://u@127.0.0.1:5432/test?sslmode=disable", "x")
                .unwrap(),
            "postgres://u@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(
            super::replace_database("postgres://h", "x").unwrap(),
            "postgres://h/x"
        );
    }
}
