//! Test harness for the assignments context: the real server in-process on 127.0.0.1:0
//! with a fresh database (SQLite, or PostgreSQL with TENURE_TEST_DATABASE_URL), a manual
//! clock, a bootstrap administrator "admin", and development tokens for anyone.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tenure_platform::auth::DevIssuer;
use tenure_platform::clock::ManualClock;
use tenure_platform::config::Config;
use tenure_platform::testing::TestDb;
use tenure_proto::assignments::v1 as pb;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The bootstrap administrator (a permanent active Privileged Role Administrator).
pub const ADMIN: &str = "admin";

/// A running server and what a test needs to talk to it.
pub struct Harness {
    pub addr: std::net::SocketAddr,
    pub clock: ManualClock,
    pub channel: Channel,
    pub contexts: tenure_server::Contexts,
    issuer: DevIssuer,
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

/// 2030-01-01T00:00:00Z: tests start here and move forward.
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_893_456_000, 0).unwrap()
}

impl Harness {
    pub async fn start() -> Self {
        let db = TestDb::new().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(t0());
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            database_url: Some(db.url.clone()),
            ..Config::default()
        };
        config.auth.bootstrap_principal = Some(ADMIN.to_owned());
        let stop = tokio_util::sync::CancellationToken::new();
        let (addr, contexts, task) = tenure_server::spawn(
            config,
            Arc::new(clock.clone()),
            stop.clone().cancelled_owned(),
        )
        .await
        .unwrap();
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let issuer =
            DevIssuer::load_or_create(&dir.path().join("dev-issuer"), Arc::new(clock.clone()))
                .unwrap();
        Self {
            addr,
            clock,
            channel,
            contexts,
            issuer,
            stop,
            task: Some(task),
            _db: db,
            _dir: dir,
        }
    }

    /// A token for `subject` (valid for a day from the clock's now).
    pub fn token(&self, subject: &str) -> String {
        self.issuer
            .mint(subject, false, TimeDelta::hours(24))
            .unwrap()
    }

    /// A token for `subject` with a fresh MFA.
    pub fn token_mfa(&self, subject: &str) -> String {
        self.issuer
            .mint(subject, true, TimeDelta::hours(24))
            .unwrap()
    }

    /// A request carrying `subject`'s token.
    pub fn req<T>(&self, subject: &str, msg: T) -> Request<T> {
        authed(msg, &self.token(subject))
    }

    /// A request carrying `subject`'s MFA token.
    pub fn req_mfa<T>(&self, subject: &str, msg: T) -> Request<T> {
        authed(msg, &self.token_mfa(subject))
    }

    pub fn principals(&self) -> pb::principals_service_client::PrincipalsServiceClient<Channel> {
        pb::principals_service_client::PrincipalsServiceClient::new(self.channel.clone())
    }
    pub fn roles(
        &self,
    ) -> pb::role_definitions_service_client::RoleDefinitionsServiceClient<Channel> {
        pb::role_definitions_service_client::RoleDefinitionsServiceClient::new(self.channel.clone())
    }
    pub fn scopes(&self) -> pb::scopes_service_client::ScopesServiceClient<Channel> {
        pb::scopes_service_client::ScopesServiceClient::new(self.channel.clone())
    }
    pub fn assignments(&self) -> pb::assignments_service_client::AssignmentsServiceClient<Channel> {
        pb::assignments_service_client::AssignmentsServiceClient::new(self.channel.clone())
    }
    pub fn access(&self) -> pb::access_service_client::AccessServiceClient<Channel> {
        pb::access_service_client::AccessServiceClient::new(self.channel.clone())
    }
    pub fn settings(&self) -> pb::role_settings_service_client::RoleSettingsServiceClient<Channel> {
        pb::role_settings_service_client::RoleSettingsServiceClient::new(self.channel.clone())
    }
    pub fn provisioning(
        &self,
    ) -> pb::provisioning_service_client::ProvisioningServiceClient<Channel> {
        pb::provisioning_service_client::ProvisioningServiceClient::new(self.channel.clone())
    }
    pub fn drift(&self) -> pb::drift_service_client::DriftServiceClient<Channel> {
        pb::drift_service_client::DriftServiceClient::new(self.channel.clone())
    }
    pub fn events(&self) -> pb::events_service_client::EventsServiceClient<Channel> {
        pb::events_service_client::EventsServiceClient::new(self.channel.clone())
    }

    /// The assignments context's core (to read the log's head, run expiry, ...).
    pub fn core(&self) -> Arc<tenure_assignments::Core> {
        self.contexts.assignments.as_ref().unwrap().core.clone()
    }

    /// Every event of the assignments log after `after`, in order.
    pub async fn events_after(&self, after: i64) -> Vec<pb::Event> {
        self.core().log.read_after(after, 10_000).await.unwrap()
    }

    /// Upserts users (and groups) through the sync API as the admin.
    pub async fn users(&self, ids: &[&str]) {
        let principals = ids
            .iter()
            .map(|id| pb::Principal {
                id: (*id).to_owned(),
                r#type: tenure_proto::common::v1::PrincipalType::User.into(),
                display_name: format!("User {id}"),
                user_principal_name: format!("{id}@example.test"),
                email: format!("{id}@example.test"),
                ..Default::default()
            })
            .collect();
        self.principals()
            .upsert_principals(self.req(
                ADMIN,
                pb::UpsertPrincipalsRequest {
                    principals,
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap();
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// `msg` with a bearer token.
pub fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Asserts a call failed with `code` and, when given, that the message or a field
/// violation mentions `mentions`.
pub fn assert_status<T: std::fmt::Debug>(
    r: Result<T, Status>,
    code: Code,
    mentions: &str,
) -> Status {
    let s = r.expect_err("expected an error status");
    assert_eq!(s.code(), code, "status {s:?}");
    if !mentions.is_empty() {
        use tonic_types::StatusExt as _;
        let fields: Vec<String> = s
            .get_error_details()
            .bad_request()
            .map(|b| {
                b.field_violations
                    .iter()
                    .map(|v| format!("{} {}", v.field, v.description))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            s.message().contains(mentions) || fields.iter().any(|f| f.contains(mentions)),
            "{mentions:?} not in {:?} / {fields:?}",
            s.message()
        );
    }
    s
}
