//! The assignments context's application core, shared by its gRPC services: storage, the
//! event log, the clock, and the access model kept as a projection of the log (filled at
//! start from the current rows, [`crate::load`]).
//!
//! # Consistency of the access model
//! Every change commits with its events ([`Core::commit`]). The projector task follows
//! this context's own log and applies each event to the [`Model`] in sequence order, then
//! advances `applied`. A write returns only after the model has applied its sequence, so
//! the next call after a reply sees the change ("read your writes", and no stale allow
//! after a removal). Another replica applies the same events from the same log; a caller
//! that must see a write made elsewhere passes `min_sequence` (the sequence the write
//! returned) and the check waits until this replica has applied it.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use tenure_platform::auth::Caller;
use tenure_platform::clock::{SharedClock, to_micros};
use tenure_platform::db::Db;
use tenure_platform::events::{EventLog, TypeFilter, UnitOfWork};
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1 as common;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::model::{Model, Target};

/// The permission every configuring call needs (held by Privileged Role Administrator).
pub const ADMIN_PERMISSION_PREFIX: &str = "tenure/";
/// The built-in role that administers Tenure.
pub const PRIVILEGED_ROLE_ADMINISTRATOR: &str = "privileged-role-administrator";

/// What the context is told at start.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Made a permanent active Privileged Role Administrator at first start.
    pub bootstrap_principal: Option<String>,
    /// Tenure's own service identities (for provisioning and other internal calls).
    pub service_principals: Vec<String>,
}

/// The shared core of the assignments context.
pub struct Core {
    /// Storage.
    pub db: Db,
    /// This context's event log.
    pub log: EventLog<pb::Event>,
    /// The clock.
    pub clock: SharedClock,
    /// What the context was told at start.
    pub settings: Settings,
    model: RwLock<Model>,
    applied: watch::Sender<i64>,
    /// Woken when schedules change, so the expiry timer re-reads the next due instant.
    pub expiry_wake: Notify,
}

impl Core {
    /// A core over an opened log; call [`Core::start`] to fill the model and follow the log.
    pub fn new(
        db: Db,
        log: EventLog<pb::Event>,
        clock: SharedClock,
        settings: Settings,
    ) -> Arc<Self> {
        let (applied, _) = watch::channel(0);
        Arc::new(Self {
            db,
            log,
            clock,
            settings,
            model: RwLock::new(Model::default()),
            applied,
            expiry_wake: Notify::new(),
        })
    }

    /// Fills the model from the current rows ([`crate::load`]), then follows the log
    /// from the sequence they are as of, until `stop`.
    pub async fn start(self: &Arc<Self>, stop: &CancellationToken) -> anyhow::Result<()> {
        // Load what is committed now, before the server listens, so it answers from a
        // full model from its first call.
        let started = std::time::Instant::now();
        let (model, after) = crate::load::load(&self.db).await?;
        tracing::info!(
            grants = model.grant_count(),
            principals = model.principals.len(),
            sequence = after,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "access model loaded"
        );
        *self.model_mut() = model;
        self.applied.send_replace(after);
        let core = Arc::clone(self);
        let stop = stop.clone();
        tokio::spawn(async move { core.project(after, stop).await });
        Ok(())
    }

    async fn project(self: Arc<Self>, mut after: i64, stop: CancellationToken) {
        loop {
            let mut stream = Box::pin(self.log.subscribe(after, TypeFilter::default()));
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    n = stream.next() => n,
                };
                match next {
                    Some(Ok(e)) => {
                        let seq = e.meta.as_ref().map_or(after, |m| m.sequence);
                        self.model_mut().apply(&e);
                        after = seq;
                        self.applied.send_replace(seq);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "access model projection interrupted; resuming");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// The model, for reading.
    pub fn model(&self) -> RwLockReadGuard<'_, Model> {
        self.model
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn model_mut(&self) -> std::sync::RwLockWriteGuard<'_, Model> {
        self.model
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last sequence the model has applied.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Waits until this replica's model has applied everything committed to the database
    /// before the call, by any replica (one read of the log's head row). The server runs
    /// it before every mutating call of this context (see
    /// `tenure_platform::grpc::SyncWritesLayer`); CheckAccess runs it on request.
    pub async fn sync(&self) -> ApiResult<()> {
        // SQLite is one process: every commit went through this model already
        // (`commit` waits for it), so the head-row read would only cost.
        if self.db.backend() == tenure_platform::db::Backend::Sqlite {
            return Ok(());
        }
        let head = self.log.committed_head().await?;
        if head > self.applied() {
            self.wait_applied(head, Duration::from_secs(5)).await?;
        }
        Ok(())
    }

    /// Waits until the model has applied `sequence` (at most `timeout`).
    pub async fn wait_applied(&self, sequence: i64, timeout: Duration) -> ApiResult<()> {
        let mut rx = self.applied.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|a| *a >= sequence)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Unavailable(
                "the access model is not running".into(),
            )),
            Err(_) => Err(ApiError::Unavailable(format!(
                "this replica has not yet applied sequence {sequence}; retry"
            ))),
        }
    }

    /// Starts a unit of work.
    pub async fn begin(&self) -> ApiResult<UnitOfWork<pb::Event>> {
        self.log.begin().await
    }

    /// Commits a unit of work and waits until the access model reflects it. Returns the
    /// last sequence written (or the current head when it wrote no event).
    pub async fn commit(&self, uow: UnitOfWork<pb::Event>) -> ApiResult<i64> {
        let seqs = uow.commit().await?;
        let Some(&last) = seqs.last() else {
            return Ok(self.applied());
        };
        self.expiry_wake.notify_one();
        self.wait_applied(last, Duration::from_secs(10)).await?;
        Ok(last)
    }

    // ----- who may do what -------------------------------------------------------------

    /// Whether `principal` holds a role granting `permission` at `scope` (or above), now.
    pub fn has_permission(&self, principal: &str, permission: &str, scope: &str) -> bool {
        let now = to_micros(self.clock.now());
        !self
            .model()
            .evaluate(
                principal,
                Target::Permission(permission),
                scope,
                now,
                common::AssignmentType::Active,
            )
            .is_empty()
    }

    /// Whether the caller is one of Tenure's own services.
    pub fn is_service(&self, caller: &Caller) -> bool {
        self.settings
            .service_principals
            .contains(&caller.principal_id)
    }

    /// Requires the caller to hold `permission` active at `scope` or above (a
    /// configuring call needs Privileged Role Administrator, which holds `tenure/*`).
    pub fn require(&self, caller: &Caller, permission: &str, scope: &str) -> ApiResult<()> {
        if self.has_permission(&caller.principal_id, permission, scope) {
            return Ok(());
        }
        Err(ApiError::denied(format!(
            "{} needs permission {permission} at {scope} (held by Privileged Role Administrator, active)",
            caller.principal_id
        )))
    }

    /// Requires the caller to be an administrator or one of Tenure's services.
    pub fn require_or_service(
        &self,
        caller: &Caller,
        permission: &str,
        scope: &str,
    ) -> ApiResult<()> {
        if self.is_service(caller) {
            return Ok(());
        }
        self.require(caller, permission, scope)
    }

    /// Whether the caller may read everything (auditors, readers and administrators).
    pub fn can_read_all(&self, caller: &Caller) -> bool {
        self.is_service(caller) || self.has_permission(&caller.principal_id, "tenure/read", "/")
    }

    // ----- idempotency -------------------------------------------------------------------

    /// The stored response of an earlier call of `method` with `request_id`, if any.
    pub async fn replay<R: prost::Message + Default>(
        &self,
        method: &str,
        request_id: &str,
        caller: &str,
    ) -> ApiResult<Option<R>> {
        tenure_platform::idempotency::replay(&self.db, crate::PREFIX, method, request_id, caller)
            .await
    }

    /// Records the response of a mutation in its own transaction.
    pub async fn remember<R: prost::Message>(
        &self,
        uow: &mut UnitOfWork<pb::Event>,
        method: &str,
        request_id: &str,
        caller: &str,
        response: &R,
    ) -> ApiResult<()> {
        tenure_platform::idempotency::remember(
            uow,
            crate::PREFIX,
            method,
            request_id,
            caller,
            response,
        )
        .await
    }

    // ----- references --------------------------------------------------------------------

    /// A reference to a principal, from the model (id only when unknown).
    pub fn principal_ref(&self, id: &str) -> common::PrincipalRef {
        let m = self.model();
        match m.principals.get(id) {
            Some(p) => common::PrincipalRef {
                id: id.to_owned(),
                r#type: p.principal_type.into(),
                display_name: p.display_name.to_string(),
                user_principal_name: p.user_principal_name.to_string(),
            },
            None => common::PrincipalRef {
                id: id.to_owned(),
                ..Default::default()
            },
        }
    }

    /// A reference to a role.
    pub fn role_ref(&self, id: &str) -> common::RoleRef {
        let m = self.model();
        common::RoleRef {
            id: id.to_owned(),
            display_name: m
                .roles
                .get(id)
                .map(|r| r.display_name.to_string())
                .unwrap_or_default(),
        }
    }

    /// A reference to a scope.
    pub fn scope_ref(&self, id: &str) -> common::ScopeRef {
        let m = self.model();
        match m.scopes.get(id) {
            Some(s) => common::ScopeRef {
                id: id.to_owned(),
                display_name: s.display_name.to_string(),
                r#type: s.scope_type.into(),
            },
            None => common::ScopeRef {
                id: id.to_owned(),
                ..Default::default()
            },
        }
    }

    /// NOT_FOUND unless the principal exists.
    pub fn known_principal(&self, field: &str, id: &str) -> ApiResult<()> {
        if id.is_empty() {
            return Err(ApiError::invalid(field, "is required"));
        }
        if self.model().principals.contains_key(id) {
            Ok(())
        } else {
            Err(ApiError::not_found("principal", id))
        }
    }

    /// NOT_FOUND unless the role exists.
    pub fn known_role(&self, field: &str, id: &str) -> ApiResult<()> {
        if id.is_empty() {
            return Err(ApiError::invalid(field, "is required"));
        }
        if self.model().roles.contains_key(id) {
            Ok(())
        } else {
            Err(ApiError::not_found("role", id))
        }
    }

    /// NOT_FOUND unless the scope exists.
    pub fn known_scope(&self, field: &str, id: &str) -> ApiResult<()> {
        if id.is_empty() {
            return Err(ApiError::invalid(field, "is required"));
        }
        if self.model().scopes.contains_key(id) {
            Ok(())
        } else {
            Err(ApiError::not_found("scope", id))
        }
    }
}

/// A validated page request: keyset pagination on a sort key, opaque to clients.
#[derive(Debug, Clone)]
pub struct Page {
    /// How many items at most.
    pub size: usize,
    /// Return items whose key is greater than this.
    pub after: Option<String>,
}

/// The default page size.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The largest page size.
pub const MAX_PAGE_SIZE: usize = 1000;

impl Page {
    /// Parses `page_size` (0 = default 50, at most 1000) and `page_token`.
    pub fn parse(page_size: i32, page_token: &str) -> ApiResult<Self> {
        if page_size < 0 {
            return Err(ApiError::invalid("page_size", "must not be negative"));
        }
        let size = if page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            (page_size as usize).min(MAX_PAGE_SIZE)
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(page_token)
                .map_err(|_| {
                    ApiError::invalid("page_token", "is not a token this server issued")
                })?;
            Some(String::from_utf8(raw).map_err(|_| {
                ApiError::invalid("page_token", "is not a token this server issued")
            })?)
        };
        Ok(Self { size, after })
    }

    /// The token that continues after `key`.
    pub fn token(key: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
    }

    /// Cuts a sorted list into this page; returns the items and the next token.
    pub fn cut<T>(&self, items: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        let mut out: Vec<T> = match &self.after {
            Some(a) => items
                .into_iter()
                .filter(|i| key(i).as_str() > a.as_str())
                .collect(),
            None => items,
        };
        let next = if out.len() > self.size {
            out.truncate(self.size);
            out.last().map(|l| Self::token(&key(l))).unwrap_or_default()
        } else {
            String::new()
        };
        (out, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cut_and_continue() {
        let p = Page::parse(2, "").unwrap();
        let (a, next) = p.cut(vec!["a", "b", "c"], |s| (*s).to_owned());
        assert_eq!(a, vec!["a", "b"]);
        let p2 = Page::parse(2, &next).unwrap();
        let (b, next2) = p2.cut(vec!["a", "b", "c"], |s| (*s).to_owned());
        assert_eq!(b, vec!["c"]);
        assert!(next2.is_empty());
        assert!(Page::parse(-1, "").is_err());
        assert!(Page::parse(0, "!!!").is_err());
        assert_eq!(Page::parse(5000, "").unwrap().size, MAX_PAGE_SIZE);
    }
}
