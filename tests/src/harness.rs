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
    config: Config,
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
        Self::start_with(|_| {}).await
    }

    /// Starts with the configuration changed by `tune` (for example an SMTP server).
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Self {
        if std::env::var("RUST_LOG").is_ok() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
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
        tune(&mut config);
        let stop = tokio_util::sync::CancellationToken::new();
        let kept = config.clone();
        let (addr, contexts, task) = tenure_server::spawn(
            config.clone(),
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
            config: kept,
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
    pub fn activation(
        &self,
    ) -> tenure_proto::activation::v1::activation_service_client::ActivationServiceClient<Channel>
    {
        tenure_proto::activation::v1::activation_service_client::ActivationServiceClient::new(
            self.channel.clone(),
        )
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

    /// Writes principals straight through the core (with their PrincipalSynced events),
    /// for tests that must not depend on the PrincipalsService.
    pub async fn seed_principals(&self, ids: &[(&str, tenure_proto::common::v1::PrincipalType)]) {
        let core = self.core();
        let mut uow = core.begin().await.unwrap();
        for (id, t) in ids {
            let p = pb::Principal {
                id: (*id).to_owned(),
                r#type: (*t).into(),
                display_name: format!("Principal {id}"),
                user_principal_name: format!("{id}@example.test"),
                enabled: Some(true),
                ..Default::default()
            };
            tenure_assignments::store::upsert_principal(&mut uow, &p)
                .await
                .unwrap();
            uow.emit(tenure_platform::events::NewEvent::new(
                pb::PrincipalSynced {
                    principal: Some(p),
                    created: true,
                    changed_fields: vec![],
                },
                "test",
                *id,
            ));
        }
        core.commit(uow).await.unwrap();
    }

    /// Seeds users.
    pub async fn seed_users(&self, ids: &[&str]) {
        let v: Vec<_> = ids
            .iter()
            .map(|i| (*i, tenure_proto::common::v1::PrincipalType::User))
            .collect();
        self.seed_principals(&v).await;
    }

    /// Adds `member` to `group` straight through the core (with a GroupMembersSet event).
    pub async fn seed_membership(&self, group: &str, member: &str) {
        let core = self.core();
        let mut uow = core.begin().await.unwrap();
        let now = tenure_platform::clock::to_micros(uow.now());
        sqlx::query("INSERT INTO assignments_group_members (group_id, member_id, added_at, removed_at) VALUES ($1, $2, $3, NULL)")
            .bind(group)
            .bind(member)
            .bind(now)
            .execute(&mut **uow.tx())
            .await
            .unwrap();
        uow.emit(tenure_platform::events::NewEvent::new(
            pb::GroupMembersSet {
                group: Some(core.principal_ref(group)),
                added_members: vec![core.principal_ref(member)],
                removed_members: vec![],
                member_count: 1,
            },
            "test",
            group,
        ));
        core.commit(uow).await.unwrap();
    }

    /// Registers a scope straight through the core (with a ScopeRegistered event).
    pub async fn seed_scope(&self, id: &str, parent: &str, t: tenure_proto::common::v1::ScopeType) {
        let core = self.core();
        let mut uow = core.begin().await.unwrap();
        let s = pb::Scope {
            id: id.to_owned(),
            parent_id: parent.to_owned(),
            r#type: t.into(),
            display_name: id.to_owned(),
            ..Default::default()
        };
        tenure_assignments::store::insert_scope(&mut uow, &s)
            .await
            .unwrap();
        uow.emit(tenure_platform::events::NewEvent::new(
            pb::ScopeRegistered { scope: Some(s) },
            "test",
            id,
        ));
        core.commit(uow).await.unwrap();
    }

    /// Creates an assignment as the admin (with MFA), returning it.
    pub async fn assign(
        &self,
        t: tenure_proto::common::v1::AssignmentType,
        principal: &str,
        role: &str,
        scope: &str,
    ) -> pb::Assignment {
        self.assignments()
            .create_assignment(self.req_mfa(
                ADMIN,
                pb::CreateAssignmentRequest {
                    assignment_type: t.into(),
                    principal_id: principal.to_owned(),
                    role_id: role.to_owned(),
                    scope_id: scope.to_owned(),
                    justification: "test".to_owned(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .assignment
            .unwrap()
    }

    /// Whether `principal` holds `role` at `scope` now, through CheckAccess as the admin.
    pub async fn allowed(&self, principal: &str, role: &str, scope: &str) -> bool {
        self.access()
            .check_access(self.req(
                ADMIN,
                pb::CheckAccessRequest {
                    principal_id: principal.to_owned(),
                    target: Some(pb::check_access_request::Target::RoleId(role.to_owned())),
                    scope_id: scope.to_owned(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .allowed
    }

    /// Waits (bounded) until an event of `type_name` appears after `after`.
    pub async fn wait_event(&self, after: i64, type_name: &str) -> pb::Event {
        for _ in 0..500 {
            if let Some(e) = self.events_after(after).await.into_iter().find(|e| {
                e.meta
                    .as_ref()
                    .is_some_and(|m| m.r#type.ends_with(type_name))
            }) {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no {type_name} event after {after}");
    }

    /// Checks that the access model a start loads from the current rows holds what the
    /// event log's history builds up to the same sequence (every test that stops or
    /// restarts its server checks it on the state it left).
    pub async fn assert_model_loads_as_replayed(&self) {
        let Some(a) = self.contexts.assignments.as_ref() else {
            return;
        };
        let (loaded, head) = tenure_assignments::load::load(&a.core.db).await.unwrap();
        let replayed = tenure_assignments::load::replay(&a.core.log, head)
            .await
            .unwrap();
        let differences = loaded.differences(&replayed);
        assert!(
            differences.is_empty(),
            "the model loaded from the rows (here) and the one the log builds up to {head} (there) differ:\n{}",
            differences.join("\n")
        );
    }

    /// Stops the server and starts it again on the same database, data directory and
    /// clock (a new port): what a restart after a crash or an upgrade looks like.
    pub async fn restart(&mut self) {
        self.assert_model_loads_as_replayed().await;
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let (addr, contexts, task) = tenure_server::spawn(
            self.config.clone(),
            Arc::new(self.clock.clone()),
            stop.clone().cancelled_owned(),
        )
        .await
        .unwrap();
        self.channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        self.addr = addr;
        self.contexts = contexts;
        self.stop = stop;
        self.task = Some(task);
    }

    /// Sets the activation settings of `role` (the fields not given inherit).
    pub async fn set_activation(&self, role: &str, a: pb::ActivationSettings) {
        self.settings()
            .update_role_settings(self.req(
                ADMIN,
                pb::UpdateRoleSettingsRequest {
                    role_settings: Some(pb::RoleSettings {
                        role_id: role.into(),
                        activation: Some(a),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["activation".into()],
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap();
    }

    pub fn notifications(
        &self,
    ) -> tenure_proto::notifications::v1::notifications_service_client::NotificationsServiceClient<Channel>
    {
        tenure_proto::notifications::v1::notifications_service_client::NotificationsServiceClient::new(
            self.channel.clone(),
        )
    }
    pub fn alerts(
        &self,
    ) -> tenure_proto::notifications::v1::alerts_service_client::AlertsServiceClient<Channel> {
        tenure_proto::notifications::v1::alerts_service_client::AlertsServiceClient::new(
            self.channel.clone(),
        )
    }
    pub fn audit(
        &self,
    ) -> tenure_proto::notifications::v1::audit_service_client::AuditServiceClient<Channel> {
        tenure_proto::notifications::v1::audit_service_client::AuditServiceClient::new(
            self.channel.clone(),
        )
    }

    pub fn reviews(
        &self,
    ) -> tenure_proto::reviews::v1::reviews_service_client::ReviewsServiceClient<Channel> {
        tenure_proto::reviews::v1::reviews_service_client::ReviewsServiceClient::new(
            self.channel.clone(),
        )
    }

    /// Every event of the reviews log after `after`, in order.
    pub async fn review_events_after(&self, after: i64) -> Vec<tenure_proto::reviews::v1::Event> {
        self.contexts
            .reviews
            .as_ref()
            .unwrap()
            .log
            .read_after(after, 10_000)
            .await
            .unwrap()
    }

    /// Waits (bounded) until the reviews context has taken in every assignments event
    /// committed so far (its activity tables are then current).
    pub async fn wait_reviews_caught_up(&self) {
        let head = self.core().log.head();
        let reviews = self.contexts.reviews.as_ref().unwrap();
        for _ in 0..1000 {
            if reviews.assignments_cursor().await.unwrap() >= head {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the reviews context did not catch up with the assignments stream");
    }

    /// Waits (bounded) until the notifications context has taken in every event the
    /// four streams hold, its own included (which its consumers of the others extend),
    /// so every audit entry of what happened so far is written.
    pub async fn wait_notifications_caught_up(&self) {
        let n = self.contexts.notifications.as_ref().unwrap();
        let heads = || {
            [
                self.core().log.head(),
                self.contexts.activation.as_ref().unwrap().log.head(),
                self.contexts.reviews.as_ref().unwrap().log.head(),
                n.log.head(),
            ]
        };
        let sources = ["assignments", "activation", "reviews", "notifications"];
        for _ in 0..1000 {
            let before = heads();
            let mut behind = false;
            for (source, head) in sources.iter().zip(before) {
                behind |= n.cursor(source).await.unwrap() < head;
            }
            // Caught up, and nothing new was committed while looking.
            if !behind && heads() == before {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the notifications context did not catch up with the streams");
    }

    pub async fn stop(mut self) {
        self.assert_model_loads_as_replayed().await;
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// A reference to a user, for settings that name approvers.
pub fn user_ref(id: &str) -> tenure_proto::common::v1::PrincipalRef {
    tenure_proto::common::v1::PrincipalRef {
        id: id.into(),
        r#type: tenure_proto::common::v1::PrincipalType::User.into(),
        ..Default::default()
    }
}

/// Activation settings needing one approval by these users (and no MFA).
pub fn approval_by(approvers: &[&str]) -> pb::ActivationSettings {
    pb::ActivationSettings {
        require_approval: Some(true),
        require_mfa: Some(false),
        approval: Some(pb::ApprovalSettings {
            stages: vec![pb::ApprovalStage {
                approvers: approvers.iter().map(|a| user_ref(a)).collect(),
                required_approvals: 1,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
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
