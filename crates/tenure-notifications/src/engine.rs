//! The application layer of the notifications context: settings, the audit trail's
//! writer, alert reconciliation (raise, update, resolve, dismiss), and making
//! notifications (who is told, over which channels) with their deliveries queued in
//! the outbox. Every change goes through a unit of work with its events.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use prost::Message as _;
use sqlx::{Any, Row as _, Transaction};
use tenure_platform::clock::{SharedClock, from_micros, from_proto, to_micros, to_proto};
use tenure_platform::config::NotificationsConfig;
use tenure_platform::db::Db;
use tenure_platform::events::{EventLog, NewEvent, UnitOfWork};
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::common::v1 as common;
use tenure_proto::notifications::v1 as pb;
use tokio::sync::Notify;

use crate::clients::Assignments;
use crate::domain::alerts::{self, KINDS};
use crate::domain::audit::{self, Facts};
use crate::domain::rules::{self, owned_by_role_settings, recipient_kinds};
use crate::project;

use common::NotificationEventKind as E;
use common::NotificationRecipientKind as R;

/// A unit of work of this context.
pub type Uow = UnitOfWork<pb::Event>;
type Tx = Transaction<'static, Any>;

/// What a unit of work reads once and reuses for every event of a consumer's batch:
/// settings, alert settings and webhooks change only through this context's own API
/// (never inside a consumer's batch), and display names are forgotten whenever the
/// batch applies a principal change ([`Engine::forget_names`]).
#[derive(Default)]
struct BatchReads {
    settings: Option<pb::NotificationSettings>,
    alert_settings: std::collections::HashMap<i32, pb::AlertSettings>,
    webhooks: Option<Vec<pb::Webhook>>,
    names: std::collections::HashMap<String, Option<String>>,
}

/// The alert kinds a unit of work marked for evaluation, written once at its end.
#[derive(Default)]
struct Marks(BTreeSet<i64>);

/// The (principal, role) pairs whose activations a unit of work took in: their
/// alerts are evaluated once, together, at the unit's end ([`Engine::finish`]), so
/// a batch of activations reads each alert, its dismissals and its incident count
/// once rather than once per activation.
#[derive(Default)]
struct Pairs(BTreeSet<(String, String)>);

/// The audit entries a unit of work appended, not yet chained: [`Engine::flush_audit`]
/// reads (and, on PostgreSQL, locks) the chain's head only then, at the end of the
/// unit, numbers and hashes them onto it, and writes them in multi-row INSERTs (on
/// PostgreSQL every statement is a round trip). The head's lock is so held from the
/// flush to the commit, not through the whole unit: the four consumers that audit
/// (one per source stream) queued behind each other's whole batches for it, and an
/// alert waited behind all of them (BENCHMARKS.md, session 6).
#[derive(Default)]
struct AuditChain {
    pending: Vec<audit::PendingEntry>,
}

/// One audit entry's columns, as [`Engine::flush_audit`] inserts them.
struct AuditRow {
    sequence: i64,
    occurred: i64,
    actor_id: String,
    action: String,
    full_action: String,
    target_principal_id: String,
    role_id: String,
    scope_id: String,
    request_id: String,
    source_context: String,
    source_sequence: i64,
    result: i64,
    hash: String,
    body: Vec<u8>,
}

impl AuditRow {
    fn of(e: pb::AuditEntry, actor_id: String, full_action: String) -> Self {
        let body = e.encode_to_vec();
        let occurred = e
            .occurred_at
            .as_ref()
            .and_then(from_proto)
            .map_or(0, to_micros);
        Self {
            sequence: e.sequence,
            occurred,
            actor_id,
            action: e.action,
            full_action,
            target_principal_id: e.target_principal.map(|p| p.id).unwrap_or_default(),
            role_id: e.role.map(|r| r.id).unwrap_or_default(),
            scope_id: e.scope.map(|s| s.id).unwrap_or_default(),
            request_id: e.request_id,
            source_context: e.source_context,
            source_sequence: e.source_sequence,
            result: i64::from(e.result),
            hash: e.hash,
            body,
        }
    }
}

/// Audit entries per INSERT statement (14 parameters each: 448, well under both
/// backends' limits).
const AUDIT_ROWS_PER_INSERT: usize = 32;

fn audit_insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=14).map(|c| format!("${}", r * 14 + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO notifications_audit (sequence, occurred_at, actor_id, action, full_action, \
         target_principal_id, role_id, scope_id, request_id, source_context, source_sequence, result, hash, body) \
         VALUES {}",
        values.join(", ")
    )
}

/// Emits a change to an alert's incidents as `AlertUpdated` events of at most
/// [`alerts::MAX_DELTA`] items each. `after` is the alert's summary after the whole
/// change; each part carries the count as it stands after that part, so a follower's
/// incidents and the summary's count agree after every event.
fn emit_updates(uow: &mut Uow, after: &pb::Alert, delta: alerts::Delta) {
    let net = |d: &alerts::Delta| {
        i32::try_from(d.added.len()).unwrap_or(i32::MAX)
            - i32::try_from(d.removed.len()).unwrap_or(i32::MAX)
    };
    let mut running = after.incident_count - net(&delta);
    for part in delta.split(alerts::MAX_DELTA) {
        running += net(&part);
        let mut alert = after.clone();
        alert.incidents.clear();
        alert.incident_count = running;
        uow.emit(NewEvent::new(
            pb::AlertUpdated {
                alert: Some(alert),
                added_incidents: part.added,
                removed_incident_ids: part.removed,
                changed_incidents: part.changed,
            },
            "system",
            after.id.clone(),
        ));
    }
}

fn decode<M: prost::Message + Default>(b: &[u8]) -> ApiResult<M> {
    M::decode(b).map_err(|e| ApiError::Internal(e.into()))
}

/// The running context's core.
pub struct Engine {
    /// The database.
    pub db: Db,
    /// The context's event log.
    pub log: EventLog<pb::Event>,
    /// The clock.
    pub clock: SharedClock,
    /// The assignments context.
    pub assignments: Assignments,
    /// Deployment settings.
    pub config: NotificationsConfig,
    /// The SMTP password (read at start).
    pub smtp_password: Option<String>,
    /// Wakes the timer (deliveries, reminders, rescans).
    pub timer_wake: Notify,
    /// Wakes the evaluation of alert kinds marked by events.
    pub alert_wake: Notify,
    /// True once the role catalogue is loaded and the first full alert scan is done
    /// (it runs shortly after start, once the assignments context answers).
    pub first_scan_done: tokio::sync::watch::Sender<bool>,
    /// The HTTP client of webhooks.
    pub http: reqwest::Client,
}

/// How often the audit trail is pruned to its retention.
pub const PRUNE_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// What a rescan did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Alerts raised.
    pub raised: i32,
    /// Alerts updated.
    pub updated: i32,
    /// Alerts resolved.
    pub resolved: i32,
}

/// A notification about to be made.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// The event kind.
    pub kind: i32,
    /// Whether critical.
    pub critical: bool,
    /// The subject (without prefix).
    pub title: String,
    /// The first line of the body.
    pub summary: String,
    /// The path of the link to act, appended to the link base.
    pub action_path: String,
    /// The principal concerned.
    pub principal: Option<common::PrincipalRef>,
    /// The role.
    pub role: Option<common::RoleRef>,
    /// The scope.
    pub scope: Option<common::ScopeRef>,
    /// The request, round or alert.
    pub reference_id: String,
    /// The justification.
    pub justification: String,
    /// The start.
    pub start: Option<prost_types::Timestamp>,
    /// The end.
    pub end: Option<prost_types::Timestamp>,
    /// The approvers (APPROVERS recipients).
    pub approvers: Vec<common::PrincipalRef>,
    /// The reviewers (REVIEWERS recipients).
    pub reviewers: Vec<common::PrincipalRef>,
    /// For alerts: the severity.
    pub alert_severity: i32,
    /// The source event.
    pub source: common::EventMeta,
}

/// The built-in notification settings (before any change), from the deployment's.
pub fn default_notification_settings(c: &NotificationsConfig) -> pb::NotificationSettings {
    pb::NotificationSettings {
        administrators: Some(pb::AdministratorsDefinition {
            role_ids: vec![
                "privileged-role-administrator".into(),
                "global-administrator".into(),
            ],
            resource_role_ids: vec!["owner".into(), "user-access-administrator".into()],
            include_eligible: true,
            principal_ids: vec![],
            email_addresses: vec![],
        }),
        expiry_reminders: Some(pb::ExpiryReminderSettings {
            enabled: true,
            before_end: rules::default_reminders(),
        }),
        email: Some(pb::EmailSettings {
            enabled: c.smtp.host.is_some(),
            from_address: c.smtp.from_address.clone(),
            from_name: "Tenure".into(),
            link_base_url: c.link_base_url.clone(),
            subject_prefix: "Tenure:".into(),
        }),
        alert_routing: Some(pb::AlertRouting {
            min_email_severity: pb::AlertSeverity::Medium.into(),
            email_addresses: vec![],
        }),
        update_time: None,
        updated_by: String::new(),
        etag: "0".into(),
    }
}

/// The lock every alert evaluation and dismissal holds for its transaction. Reconciling
/// reads the active alert of a kind and then raises, updates or resolves it; two
/// evaluations at once (an API call and the consumer, or two replicas on PostgreSQL)
/// could otherwise both raise the same alert, or one overwrite what the other wrote.
/// One lock for all kinds, not one per kind: a unit of work that evaluates several
/// kinds cannot then take two locks in an order another unit reverses. A unit that
/// writes marks in `notifications_alert_dirty` takes it, if at all, before it writes
/// them (marks are written last, in [`Engine::finish`]), and
/// [`Engine::evaluate_marked`] takes it before it claims one: one order everywhere.
const ALERTS_LOCK: &str = "alerts";

/// The lock every unit of work holds before it writes role rows of the projection. The
/// catalogue load at start upserts every role in one transaction while the assignments
/// consumer, catching up, upserts the same roles from their events in another order:
/// on PostgreSQL the two deadlocked on the rows (seen in the server log during the
/// tests, each time one rolled back and was retried). Taken before any role row, and
/// no unit takes another lock after it that a role writer could hold.
pub const ROLES_LOCK: &str = "roles";

impl Engine {
    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    // ----- settings ------------------------------------------------------------------

    /// The notification settings and their version (0 before the first change).
    pub async fn settings_in(&self, tx: &mut Tx) -> ApiResult<(pb::NotificationSettings, i64)> {
        let row = sqlx::query("SELECT version, body FROM notifications_settings WHERE id = 1")
            .fetch_optional(&mut **tx)
            .await?;
        match row {
            Some(r) => {
                let b: Vec<u8> = r.try_get("body")?;
                Ok((decode(&b)?, r.try_get("version")?))
            }
            None => Ok((default_notification_settings(&self.config), 0)),
        }
    }

    /// The notification settings, read outside a unit of work.
    pub async fn settings(&self) -> ApiResult<pb::NotificationSettings> {
        let row = sqlx::query("SELECT body FROM notifications_settings WHERE id = 1")
            .fetch_optional(self.db.reader())
            .await?;
        match row {
            Some(r) => {
                let b: Vec<u8> = r.try_get("body")?;
                decode(&b)
            }
            None => Ok(default_notification_settings(&self.config)),
        }
    }

    /// The settings of an alert kind and their version.
    pub async fn alert_settings_in(
        &self,
        tx: &mut Tx,
        kind: pb::AlertKind,
    ) -> ApiResult<(pb::AlertSettings, i64)> {
        let row =
            sqlx::query("SELECT version, body FROM notifications_alert_settings WHERE kind = $1")
                .bind(kind as i64)
                .fetch_optional(&mut **tx)
                .await?;
        let (mut s, v) = match row {
            Some(r) => {
                let b: Vec<u8> = r.try_get("body")?;
                (decode::<pb::AlertSettings>(&b)?, r.try_get("version")?)
            }
            None => (alerts::default_settings(kind), 0),
        };
        let t = alerts::text(kind);
        s.title = t.title.into();
        s.description = t.description.into();
        s.mitigation = t.mitigation.into();
        s.etag = v.to_string();
        Ok((s, v))
    }

    /// The notification settings, read once per unit of work.
    async fn settings_of(&self, uow: &mut Uow) -> ApiResult<pb::NotificationSettings> {
        if let Some(s) = &uow.cache::<BatchReads>().settings {
            return Ok(s.clone());
        }
        let (s, _) = self.settings_in(uow.tx()).await?;
        uow.cache::<BatchReads>().settings = Some(s.clone());
        Ok(s)
    }

    /// The settings of an alert kind, read once per unit of work.
    async fn alert_settings_of(
        &self,
        uow: &mut Uow,
        kind: pb::AlertKind,
    ) -> ApiResult<pb::AlertSettings> {
        if let Some(s) = uow.cache::<BatchReads>().alert_settings.get(&(kind as i32)) {
            return Ok(s.clone());
        }
        let (s, _) = self.alert_settings_in(uow.tx(), kind).await?;
        uow.cache::<BatchReads>()
            .alert_settings
            .insert(kind as i32, s.clone());
        Ok(s)
    }

    /// Every webhook, read once per unit of work.
    async fn webhooks_of(&self, uow: &mut Uow) -> ApiResult<Vec<pb::Webhook>> {
        if let Some(w) = &uow.cache::<BatchReads>().webhooks {
            return Ok(w.clone());
        }
        let w = self.webhooks_in(uow.tx()).await?;
        uow.cache::<BatchReads>().webhooks = Some(w.clone());
        Ok(w)
    }

    /// A principal's display name (empty when unknown), read once per unit of work.
    async fn display_name(&self, uow: &mut Uow, id: &str) -> ApiResult<Option<String>> {
        if let Some(n) = uow.cache::<BatchReads>().names.get(id) {
            return Ok(n.clone());
        }
        let n = project::principal_ref(uow.tx(), id)
            .await?
            .map(|p| p.0.display_name);
        uow.cache::<BatchReads>()
            .names
            .insert(id.to_owned(), n.clone());
        Ok(n)
    }

    /// Forgets the display names this unit of work has read: called after it applies a
    /// principal's change, so later audit entries of the batch see the new name.
    pub fn forget_names(uow: &mut Uow) {
        uow.cache::<BatchReads>().names.clear();
    }

    // ----- audit ---------------------------------------------------------------------

    /// Appends an audit entry for a source event. It is chained (numbered and hashed
    /// onto the previous entry) and written when the unit of work calls
    /// [`Engine::finish`] before it commits; the consumers do, in their `finish`. A
    /// unit that commits without it fails and rolls back
    /// ([`UnitOfWork::mark_unwritten`](tenure_platform::events::UnitOfWork::mark_unwritten)),
    /// so an entry is never lost silently.
    pub async fn audit(
        &self,
        uow: &mut Uow,
        meta: &common::EventMeta,
        facts: Facts,
    ) -> ApiResult<()> {
        let actor_name = if meta.actor == "system" {
            String::new()
        } else {
            self.display_name(uow, &meta.actor)
                .await?
                .unwrap_or_default()
        };
        let mut facts = facts;
        if let Some(t) = &mut facts.target
            && t.display_name.is_empty()
            && let Some(name) = self.display_name(uow, &t.id).await?
        {
            t.display_name = name;
        }
        let mut e = audit::entry(meta, facts, actor_name);
        e.recorded_at = Some(to_proto(self.now()));
        uow.cache::<AuditChain>().pending.push(audit::PendingEntry {
            entry: e,
            full_action: meta.r#type.clone(),
            actor_id: meta.actor.clone(),
        });
        uow.mark_unwritten("audit entries");
        Ok(())
    }

    /// Chains the unit's pending audit entries onto the head and writes them and the
    /// new head. [`Engine::finish`] calls it, last.
    async fn flush_audit(&self, uow: &mut Uow) -> ApiResult<()> {
        let pending = std::mem::take(&mut uow.cache::<AuditChain>().pending);
        uow.written();
        if pending.is_empty() {
            return Ok(());
        }
        // A no-op update: it returns the head and, on PostgreSQL, takes the row's lock
        // until the commit, so two writers never chain onto one head.
        let row = sqlx::query(
            "UPDATE notifications_audit_head SET last_sequence = last_sequence WHERE id = 1 \
             RETURNING last_sequence, last_hash",
        )
        .fetch_one(&mut **uow.tx())
        .await?;
        let (mut seq, mut hash): (i64, String) =
            (row.try_get("last_sequence")?, row.try_get("last_hash")?);
        let mut rows = Vec::with_capacity(pending.len());
        for p in pending {
            let mut e = p.entry;
            seq += 1;
            e.sequence = seq;
            e.previous_hash = hash;
            e.hash = audit::hash(&e.previous_hash, &e);
            hash = e.hash.clone();
            rows.push(AuditRow::of(e, p.actor_id, p.full_action));
        }
        for chunk in rows.chunks(AUDIT_ROWS_PER_INSERT) {
            let sql = audit_insert_sql(chunk.len());
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(r.sequence)
                    .bind(r.occurred)
                    .bind(r.actor_id.as_str())
                    .bind(r.action.as_str())
                    .bind(r.full_action.as_str())
                    .bind(r.target_principal_id.as_str())
                    .bind(r.role_id.as_str())
                    .bind(r.scope_id.as_str())
                    .bind(r.request_id.as_str())
                    .bind(r.source_context.as_str())
                    .bind(r.source_sequence)
                    .bind(r.result)
                    .bind(r.hash.as_str())
                    .bind(r.body.as_slice());
            }
            q.execute(&mut **uow.tx()).await?;
        }
        sqlx::query(
            "UPDATE notifications_audit_head SET last_sequence = $1, last_hash = $2 WHERE id = 1",
        )
        .bind(seq)
        .bind(hash)
        .execute(&mut **uow.tx())
        .await?;
        Ok(())
    }

    // ----- alerts --------------------------------------------------------------------

    /// Evaluates `kinds` in `uow` and reconciles their alerts.
    pub async fn evaluate(&self, uow: &mut Uow, kinds: &[pb::AlertKind]) -> ApiResult<Counts> {
        uow.lock(ALERTS_LOCK).await?;
        let now = self.now();
        let world = project::world(uow.tx(), now).await?;
        let mut counts = Counts::default();
        for kind in kinds {
            let settings = self.alert_settings_of(uow, *kind).await?;
            let found = alerts::evaluate(&settings, &world);
            let c = self.reconcile(uow, &settings, found, now).await?;
            counts.raised += c.raised;
            counts.updated += c.updated;
            counts.resolved += c.resolved;
        }
        Ok(counts)
    }

    /// The alert kinds an activation concerns for its principal and role only.
    pub const PAIR_KINDS: [pb::AlertKind; 2] = [
        pb::AlertKind::RolesActivatedTooFrequently,
        pb::AlertKind::AdminsNotUsingPrivilegedRoles,
    ];

    /// Notes that one principal's use of one role changed (an activation): the unit's
    /// [`Engine::finish`] evaluates [`Engine::PAIR_KINDS`] for the pairs noted, in the
    /// same transaction.
    pub fn mark_pair(uow: &mut Uow, principal_id: &str, role_id: &str) {
        uow.cache::<Pairs>()
            .0
            .insert((principal_id.to_owned(), role_id.to_owned()));
        uow.mark_unwritten("alert evaluations of activations");
    }

    /// Evaluates [`Engine::PAIR_KINDS`] for the given principals' uses of the given
    /// roles only: reads those pairs' assignments and activations instead of the
    /// whole projection, and reconciles only the incidents about those pairs; the
    /// other incidents of the same alerts are left as they are (the next event about
    /// them, or the rescan, looks at them).
    pub async fn evaluate_pairs(
        &self,
        uow: &mut Uow,
        pairs: &BTreeSet<(String, String)>,
    ) -> ApiResult<Counts> {
        let mut counts = Counts::default();
        if pairs.is_empty() {
            return Ok(counts);
        }
        uow.lock(ALERTS_LOCK).await?;
        let now = self.now();
        let world = project::world_of(uow.tx(), now, pairs).await?;
        let mut keys: BTreeSet<String> = world
            .assignments
            .iter()
            .map(|a| alerts::assignment_key(&a.id))
            .collect();
        keys.extend(pairs.iter().map(|(p, r)| alerts::frequent_key(p, r)));
        for kind in Self::PAIR_KINDS {
            let settings = self.alert_settings_of(uow, kind).await?;
            let found = alerts::evaluate(&settings, &world);
            let c = self
                .reconcile_in(uow, &settings, found, now, Some(&keys))
                .await?;
            counts.raised += c.raised;
            counts.updated += c.updated;
            counts.resolved += c.resolved;
        }
        Ok(counts)
    }

    /// Marks alert kinds for evaluation (in the event's unit of work, so the mark
    /// commits with the cursor and survives a crash). [`Engine::evaluate_marked`]
    /// evaluates all marked kinds at once: a burst of events (a bulk load, a sync)
    /// costs one scan of the projections per pass, not one per event.
    pub fn mark(uow: &mut Uow, kinds: &[pb::AlertKind]) {
        uow.cache::<Marks>()
            .0
            .extend(kinds.iter().map(|k| *k as i64));
    }

    /// Does what a unit of work kept for its end: evaluates the alerts of the
    /// activations' (principal, role) pairs it noted, writes the alert kinds it marked
    /// (in one statement), the audit entries it appended and the audit chain's head.
    /// The consumers call it once per batch, before the commit.
    pub async fn finish(&self, uow: &mut Uow) -> ApiResult<()> {
        let pairs = std::mem::take(&mut uow.cache::<Pairs>().0);
        if !pairs.is_empty() {
            self.evaluate_pairs(uow, &pairs).await?;
        }
        let kinds = std::mem::take(&mut uow.cache::<Marks>().0);
        if !kinds.is_empty() {
            // One statement for all of them (a set: a row may be updated once per
            // statement).
            let values: Vec<String> = (1..=kinds.len()).map(|i| format!("(${i}, 1)")).collect();
            let sql = format!(
                "INSERT INTO notifications_alert_dirty (kind, version) VALUES {} \
                 ON CONFLICT (kind) DO UPDATE SET version = notifications_alert_dirty.version + 1",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for k in &kinds {
                q = q.bind(*k);
            }
            q.execute(&mut **uow.tx()).await?;
            self.alert_wake.notify_one();
        }
        self.flush_audit(uow).await
    }

    /// Evaluates the marked kinds together. The projections are read on a reader
    /// connection, outside the write transaction (on SQLite, one writer serves the
    /// whole process: a scan inside it would hold up every consumer); the write
    /// transaction then claims each mark by the version seen before the read, and
    /// reconciles. A mark made after that read has a newer version, so it stays for
    /// the next pass, which reads again. Returns how many kinds it evaluated.
    pub async fn evaluate_marked(&self) -> ApiResult<usize> {
        let rows = sqlx::query("SELECT kind, version FROM notifications_alert_dirty")
            .fetch_all(self.db.reader())
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let world = {
            let mut tx = self.db.reader().begin().await?;
            let w = project::world(&mut tx, now).await?;
            tx.rollback().await?;
            w
        };
        let mut uow = self.log.begin().await?;
        // Before the marks: every writer takes this lock before it writes a mark, so
        // taking it after claiming one could wait on a writer that waits on us.
        uow.lock(ALERTS_LOCK).await?;
        let mut kinds = Vec::new();
        for row in rows {
            let k: i64 = row.try_get("kind")?;
            let v: i64 = row.try_get("version")?;
            let claimed = sqlx::query(
                "DELETE FROM notifications_alert_dirty WHERE kind = $1 AND version = $2",
            )
            .bind(k)
            .bind(v)
            .execute(&mut **uow.tx())
            .await?
            .rows_affected();
            if claimed == 1
                && let Ok(kind) = pb::AlertKind::try_from(i32::try_from(k).unwrap_or(0))
            {
                kinds.push(kind);
            }
        }
        for kind in &kinds {
            let settings = self.alert_settings_of(&mut uow, *kind).await?;
            let found = alerts::evaluate(&settings, &world);
            self.reconcile(&mut uow, &settings, found, now).await?;
        }
        uow.commit().await?;
        Ok(kinds.len())
    }

    /// Evaluates every kind in a unit of work of its own (rescans).
    pub async fn rescan(&self, kinds: &[pb::AlertKind]) -> ApiResult<Counts> {
        let kinds = if kinds.is_empty() { &KINDS[..] } else { kinds };
        let mut uow = self.log.begin().await?;
        let c = self.evaluate(&mut uow, kinds).await?;
        uow.commit().await?;
        Ok(c)
    }

    /// The active alert of a kind, with its incidents by key: all of them, or with
    /// `only` those of these keys (an evaluation of one principal's use of one role
    /// reads its few incidents, not every incident of the alert).
    async fn active_alert(
        &self,
        tx: &mut Tx,
        kind: pb::AlertKind,
        only: Option<&BTreeSet<String>>,
    ) -> ApiResult<Option<(pb::Alert, BTreeMap<String, pb::AlertIncident>)>> {
        let row =
            sqlx::query("SELECT body FROM notifications_alerts WHERE kind = $1 AND status = $2")
                .bind(kind as i64)
                .bind(pb::AlertStatus::Active as i64)
                .fetch_optional(&mut **tx)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let b: Vec<u8> = row.try_get("body")?;
        let alert: pb::Alert = decode(&b)?;
        let mut incidents = BTreeMap::new();
        if let Some(keys) = only {
            for key in keys {
                let b: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT body FROM notifications_alert_incidents WHERE alert_id = $1 AND incident_key = $2",
                )
                .bind(&alert.id)
                .bind(key)
                .fetch_optional(&mut **tx)
                .await?;
                if let Some(b) = b {
                    incidents.insert(key.clone(), decode(&b)?);
                }
            }
            return Ok(Some((alert, incidents)));
        }
        for r in sqlx::query(
            "SELECT incident_key, body FROM notifications_alert_incidents WHERE alert_id = $1",
        )
        .bind(&alert.id)
        .fetch_all(&mut **tx)
        .await?
        {
            let b: Vec<u8> = r.try_get("body")?;
            incidents.insert(r.try_get("incident_key")?, decode(&b)?);
        }
        Ok(Some((alert, incidents)))
    }

    async fn store_alert(&self, tx: &mut Tx, a: &pb::Alert) -> ApiResult<()> {
        let mut body = a.clone();
        body.incidents.clear();
        sqlx::query(
            "INSERT INTO notifications_alerts (id, kind, status, severity, raised_at, body) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, severity = excluded.severity, body = excluded.body",
        )
        .bind(&a.id)
        .bind(i64::from(a.kind))
        .bind(i64::from(a.status))
        .bind(i64::from(a.severity))
        .bind(a.raise_time.as_ref().and_then(from_proto).map_or(0, to_micros))
        .bind(body.encode_to_vec())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn reconcile(
        &self,
        uow: &mut Uow,
        settings: &pb::AlertSettings,
        found: BTreeMap<String, pb::AlertIncident>,
        now: DateTime<Utc>,
    ) -> ApiResult<Counts> {
        self.reconcile_in(uow, settings, found, now, None).await
    }

    /// Reconciles the alert of a kind with the incidents `found`. With `only`, the
    /// evaluation covered just those incident keys: incidents outside them stay as
    /// stored, and only dismissals of those keys can be forgotten.
    async fn reconcile_in(
        &self,
        uow: &mut Uow,
        settings: &pb::AlertSettings,
        mut found: BTreeMap<String, pb::AlertIncident>,
        now: DateTime<Utc>,
        only: Option<&BTreeSet<String>>,
    ) -> ApiResult<Counts> {
        let covered = |key: &str| only.is_none_or(|k| k.contains(key));
        let kind = pb::AlertKind::try_from(settings.kind).unwrap_or(pb::AlertKind::Unspecified);
        let mut counts = Counts::default();
        // Dismissed incidents do not raise again while they stand; once they clear they
        // are forgotten, so a recurrence raises.
        let dismissed: Vec<String> = sqlx::query_scalar(
            "SELECT incident_key FROM notifications_alert_dismissed WHERE kind = $1",
        )
        .bind(kind as i64)
        .fetch_all(&mut **uow.tx())
        .await?;
        for key in dismissed {
            if found.remove(&key).is_none() && covered(&key) {
                sqlx::query("DELETE FROM notifications_alert_dismissed WHERE kind = $1 AND incident_key = $2")
                    .bind(kind as i64)
                    .bind(&key)
                    .execute(&mut **uow.tx())
                    .await?;
            }
        }
        let nowp = to_proto(now);
        // With `only`, what was found and stored is about those keys alone; the
        // incidents outside them still stand, and keep the alert active.
        found.retain(|k, _| covered(k));
        let existing = self.active_alert(uow.tx(), kind, only).await?;
        let others = match (&existing, only) {
            (Some((alert, stored)), Some(_)) => {
                let all = self.incident_count(uow.tx(), &alert.id).await?;
                all - i32::try_from(stored.len()).unwrap_or(i32::MAX)
            }
            _ => 0,
        };
        match existing {
            None if found.is_empty() => {}
            None => {
                let t = alerts::text(kind);
                let severity = if settings.severity == 0 {
                    alerts::default_severity(kind) as i32
                } else {
                    settings.severity
                };
                let mut alert = pb::Alert {
                    id: uuid::Uuid::now_v7().to_string(),
                    kind: kind.into(),
                    status: pb::AlertStatus::Active.into(),
                    severity,
                    title: t.title.into(),
                    description: t.description.into(),
                    security_impact: t.security_impact.into(),
                    mitigation: t.mitigation.into(),
                    how_to_prevent: t.how_to_prevent.into(),
                    incident_count: i32::try_from(found.len()).unwrap_or(i32::MAX),
                    raise_time: Some(nowp),
                    update_time: Some(nowp),
                    last_scan_time: Some(nowp),
                    ..Default::default()
                };
                for (key, mut inc) in found {
                    inc.id = uuid::Uuid::now_v7().to_string();
                    inc.first_seen_time = Some(nowp);
                    inc.last_seen_time = Some(nowp);
                    self.store_incident(uow.tx(), &alert.id, &key, &inc).await?;
                    alert.incidents.push(inc);
                }
                self.store_alert(uow.tx(), &alert).await?;
                // The raise carries at most MAX_DELTA incidents and counts those; the
                // rest follow as additions, so a follower of the stream rebuilds every
                // incident however many one evaluation (a batch of activations, a
                // rescan) found at once.
                let rest = alert
                    .incidents
                    .split_off(alert.incidents.len().min(alerts::MAX_DELTA));
                let mut raised = alert.clone();
                raised.incident_count = i32::try_from(raised.incidents.len()).unwrap_or(i32::MAX);
                uow.emit(NewEvent::new(
                    pb::AlertRaised {
                        alert: Some(raised),
                    },
                    "system",
                    alert.id.clone(),
                ));
                let delta = alerts::Delta {
                    added: rest,
                    ..Default::default()
                };
                emit_updates(uow, &alert, delta);
                self.notify_alert(uow, &alert).await?;
                counts.raised += 1;
            }
            Some((mut alert, _)) if found.is_empty() && others <= 0 => {
                alert.status = pb::AlertStatus::Resolved.into();
                alert.close_time = Some(nowp);
                alert.update_time = Some(nowp);
                alert.last_scan_time = Some(nowp);
                self.store_alert(uow.tx(), &alert).await?;
                alert.incidents = self.incidents(uow.tx(), &alert.id, 100).await?;
                uow.emit(NewEvent::new(
                    pb::AlertResolved {
                        alert: Some(alert.clone()),
                    },
                    "system",
                    alert.id.clone(),
                ));
                counts.resolved += 1;
            }
            Some((mut alert, stored)) => {
                // The change, not the whole alert: the event carries what was added,
                // changed and removed, with the alert's summary.
                let mut delta = alerts::Delta::default();
                for (key, old) in &stored {
                    if !found.contains_key(key) {
                        delta.removed.push(old.id.clone());
                        sqlx::query("DELETE FROM notifications_alert_incidents WHERE alert_id = $1 AND incident_key = $2")
                            .bind(&alert.id)
                            .bind(key)
                            .execute(&mut **uow.tx())
                            .await?;
                    }
                }
                for (key, mut inc) in found {
                    match stored.get(&key) {
                        Some(old) => {
                            inc.id.clone_from(&old.id);
                            inc.first_seen_time = old.first_seen_time;
                            inc.last_seen_time = old.last_seen_time;
                            // An incident found as it was stored is not written again:
                            // a rescan of an alert with tens of thousands of incidents
                            // would otherwise rewrite every one of them, holding the
                            // (on SQLite, only) writer for the whole pass.
                            if inc == *old {
                                continue;
                            }
                            inc.last_seen_time = Some(nowp);
                            self.store_incident(uow.tx(), &alert.id, &key, &inc).await?;
                            if old.detail != inc.detail || old.request_ids != inc.request_ids {
                                delta.changed.push(inc);
                            }
                        }
                        None => {
                            inc.id = uuid::Uuid::now_v7().to_string();
                            inc.first_seen_time = Some(nowp);
                            inc.last_seen_time = Some(nowp);
                            self.store_incident(uow.tx(), &alert.id, &key, &inc).await?;
                            delta.added.push(inc);
                        }
                    }
                }
                alert.last_scan_time = Some(nowp);
                let count = self.incident_count(uow.tx(), &alert.id).await?;
                alert.incident_count = count;
                alert.incidents.clear();
                if !delta.is_empty() {
                    alert.update_time = Some(nowp);
                    self.store_alert(uow.tx(), &alert).await?;
                    emit_updates(uow, &alert, delta);
                    counts.updated += 1;
                } else {
                    self.store_alert(uow.tx(), &alert).await?;
                }
            }
        }
        Ok(counts)
    }

    async fn store_incident(
        &self,
        tx: &mut Tx,
        alert_id: &str,
        key: &str,
        inc: &pb::AlertIncident,
    ) -> ApiResult<()> {
        sqlx::query(
            "INSERT INTO notifications_alert_incidents (alert_id, incident_key, body) VALUES ($1, $2, $3) \
             ON CONFLICT (alert_id, incident_key) DO UPDATE SET body = excluded.body",
        )
        .bind(alert_id)
        .bind(key)
        .bind(inc.encode_to_vec())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn incident_count(&self, tx: &mut Tx, alert_id: &str) -> ApiResult<i32> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM notifications_alert_incidents WHERE alert_id = $1",
        )
        .bind(alert_id)
        .fetch_one(&mut **tx)
        .await?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// The first `limit` incidents of an alert, oldest first.
    pub async fn incidents(
        &self,
        tx: &mut Tx,
        alert_id: &str,
        limit: i64,
    ) -> ApiResult<Vec<pb::AlertIncident>> {
        let rows = sqlx::query(
            "SELECT body FROM notifications_alert_incidents WHERE alert_id = $1 ORDER BY incident_key LIMIT $2",
        )
        .bind(alert_id)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter()
            .map(|r| {
                let b: Vec<u8> = r.try_get("body")?;
                decode(&b)
            })
            .collect()
    }

    /// Dismisses an alert: its incidents stop raising while they stand.
    pub async fn dismiss(
        &self,
        uow: &mut Uow,
        actor: &str,
        id: &str,
        reason: &str,
    ) -> ApiResult<pb::Alert> {
        uow.lock(ALERTS_LOCK).await?;
        let row = sqlx::query("SELECT body FROM notifications_alerts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **uow.tx())
            .await?
            .ok_or_else(|| ApiError::not_found("alert", id))?;
        let b: Vec<u8> = row.try_get("body")?;
        let mut alert: pb::Alert = decode(&b)?;
        if alert.status != pb::AlertStatus::Active as i32 {
            return Err(ApiError::precondition(format!(
                "the alert is {}, not active",
                alert.status().as_str_name()
            )));
        }
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT incident_key FROM notifications_alert_incidents WHERE alert_id = $1",
        )
        .bind(id)
        .fetch_all(&mut **uow.tx())
        .await?;
        for k in keys {
            sqlx::query("INSERT INTO notifications_alert_dismissed (kind, incident_key) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(i64::from(alert.kind))
                .bind(&k)
                .execute(&mut **uow.tx())
                .await?;
        }
        let now = to_proto(self.now());
        alert.status = pb::AlertStatus::Dismissed.into();
        alert.close_time = Some(now);
        alert.update_time = Some(now);
        alert.dismissed_by = actor.to_owned();
        alert.dismiss_reason = reason.to_owned();
        self.store_alert(uow.tx(), &alert).await?;
        alert.incidents = self.incidents(uow.tx(), id, 100).await?;
        uow.emit(NewEvent::new(
            pb::AlertDismissed {
                alert: Some(alert.clone()),
                reason: reason.to_owned(),
            },
            actor,
            id,
        ));
        Ok(alert)
    }

    // ----- notifications -------------------------------------------------------------

    async fn notify_alert(&self, uow: &mut Uow, alert: &pb::Alert) -> ApiResult<()> {
        let high = alert.severity == pb::AlertSeverity::High as i32;
        let first = alert.incidents.first();
        let d = Draft {
            kind: E::AlertRaised.into(),
            critical: high,
            title: format!("alert: {}", alert.title),
            summary: format!(
                "{} ({} incident{}). {}",
                alert.description,
                alert.incident_count,
                if alert.incident_count == 1 { "" } else { "s" },
                alert.mitigation
            ),
            action_path: format!("/alerts/{}", alert.id),
            principal: first.and_then(|i| i.principal.clone()),
            role: first.and_then(|i| i.role.clone()),
            scope: None,
            reference_id: alert.id.clone(),
            alert_severity: alert.severity,
            source: common::EventMeta {
                context: crate::PREFIX.into(),
                ..Default::default()
            },
            ..Draft::default()
        };
        self.notify(uow, d).await.map(|_| ())
    }

    /// The rule layers for a pair, most specific first.
    async fn layers(
        &self,
        tx: &mut Tx,
        e: E,
        r: R,
        role_id: &str,
        scope_id: &str,
    ) -> ApiResult<Vec<Vec<common::NotificationRule>>> {
        let mut out = Vec::new();
        if owned_by_role_settings(e, r) {
            if !role_id.is_empty() {
                out.push(project::role_settings_rules(tx, role_id, scope_id).await?);
                out.push(project::role_settings_rules(tx, role_id, "").await?);
            }
            out.push(project::role_settings_rules(tx, "", "").await?);
        } else {
            if !role_id.is_empty() {
                out.push(self.rule_set_rules(tx, role_id, scope_id).await?);
                out.push(self.rule_set_rules(tx, role_id, "").await?);
            }
            out.push(self.rule_set_rules(tx, "", "").await?);
        }
        Ok(out)
    }

    async fn rule_set_rules(
        &self,
        tx: &mut Tx,
        role_id: &str,
        scope_id: &str,
    ) -> ApiResult<Vec<common::NotificationRule>> {
        let b: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT body FROM notifications_rule_sets WHERE role_id = $1 AND scope_id = $2",
        )
        .bind(role_id)
        .bind(scope_id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(match b {
            Some(b) => decode::<pb::NotificationRuleSet>(&b)?.rules,
            None => vec![],
        })
    }

    /// Who "administrators" are for events at `scope`, with why.
    pub async fn administrators(
        &self,
        tx: &mut Tx,
        settings: &pb::NotificationSettings,
        scope: &str,
    ) -> ApiResult<Vec<pb::ResolvedAdministrator>> {
        let def = settings.administrators.clone().unwrap_or_default();
        let scopes = project::ancestors(tx, scope).await?;
        let mut roles = def.role_ids.clone();
        if scope != "/" && !scope.is_empty() {
            roles.extend(def.resource_role_ids.iter().cloned());
        }
        let mut found: Vec<(String, String)> =
            project::holders(tx, &roles, &scopes, def.include_eligible, self.now()).await?;
        found.extend(
            def.principal_ids
                .iter()
                .map(|p| (p.clone(), "listed in principal_ids".to_owned())),
        );
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (id, why) in found {
            for (p, addr) in project::expand(tx, &id).await? {
                if addr.is_empty() || !seen.insert(addr.to_lowercase()) {
                    continue;
                }
                let reason = if p.id == id {
                    why.clone()
                } else {
                    format!("{why} (through group {id})")
                };
                out.push(pb::ResolvedAdministrator {
                    principal: Some(p),
                    email_address: addr,
                    reason,
                });
            }
        }
        for a in &def.email_addresses {
            if seen.insert(a.to_lowercase()) {
                out.push(pb::ResolvedAdministrator {
                    principal: None,
                    email_address: a.clone(),
                    reason: "listed in email_addresses".into(),
                });
            }
        }
        Ok(out)
    }

    /// Makes a notification: resolves its recipients per the rules, queues one
    /// delivery per e-mail address and per matching webhook, records the stream
    /// delivery, and emits `NotificationQueued`. Returns it (none when nobody and
    /// nothing is told... it is still made for the stream).
    pub async fn notify(&self, uow: &mut Uow, d: Draft) -> ApiResult<pb::Notification> {
        let now = self.now();
        let nowp = to_proto(now);
        let settings = self.settings_of(uow).await?;
        let email = settings.email.clone().unwrap_or_default();
        let e = E::try_from(d.kind).unwrap_or(E::Unspecified);
        let role_id = d.role.as_ref().map_or(String::new(), |r| r.id.clone());
        let scope_id = d.scope.as_ref().map_or("/".to_owned(), |s| {
            if s.id.is_empty() {
                "/".into()
            } else {
                s.id.clone()
            }
        });
        let id = uuid::Uuid::now_v7().to_string();
        let action_url = if email.link_base_url.is_empty() || d.action_path.is_empty() {
            String::new()
        } else {
            format!(
                "{}{}",
                email.link_base_url.trim_end_matches('/'),
                d.action_path
            )
        };
        let mut n = pb::Notification {
            id: id.clone(),
            event_kind: d.kind,
            critical: d.critical,
            title: format!("{} {}", email.subject_prefix, d.title)
                .trim()
                .to_owned(),
            body_text: String::new(),
            action_url,
            principal: d.principal.clone(),
            role: d.role.clone(),
            scope: d.scope.clone(),
            reference_id: d.reference_id.clone(),
            justification: d.justification.clone(),
            start_time: d.start,
            end_time: d.end,
            source_context: d.source.context.clone(),
            source_sequence: d.source.sequence,
            source_event_id: d.source.id.clone(),
            create_time: Some(nowp),
            deliveries: vec![],
            alert_severity: d.alert_severity,
        };
        n.body_text = crate::delivery::text_body(&n, &d.summary);

        // E-mail recipients, each address once (the first recipient kind that selects
        // it is recorded).
        let mut emails: BTreeMap<String, (Option<common::PrincipalRef>, R)> = BTreeMap::new();
        let email_on = email.enabled && self.config.smtp.host.is_some();
        if email_on {
            for r in recipient_kinds(e) {
                let layers = self.layers(uow.tx(), e, *r, &role_id, &scope_id).await?;
                let refs: Vec<&[common::NotificationRule]> =
                    layers.iter().map(Vec::as_slice).collect();
                let rule = rules::effective(e, *r, &refs);
                if !rule.enabled || (rule.critical_only && !d.critical) {
                    continue;
                }
                let mut people: Vec<(Option<common::PrincipalRef>, String)> = Vec::new();
                if rule.default_recipients {
                    match r {
                        R::Administrators => {
                            for a in self.administrators(uow.tx(), &settings, &scope_id).await? {
                                people.push((a.principal, a.email_address));
                            }
                            if e == E::AlertRaised
                                && d.alert_severity
                                    >= settings
                                        .alert_routing
                                        .as_ref()
                                        .map_or(pb::AlertSeverity::Medium as i32, |a| {
                                            a.min_email_severity
                                        })
                            {
                                for a in settings
                                    .alert_routing
                                    .iter()
                                    .flat_map(|a| a.email_addresses.iter())
                                {
                                    people.push((None, a.clone()));
                                }
                            }
                        }
                        R::Assignee => {
                            if let Some(p) = &d.principal {
                                for (p, a) in project::expand(uow.tx(), &p.id).await? {
                                    people.push((Some(p), a));
                                }
                            }
                        }
                        R::Approvers => {
                            for ap in &d.approvers {
                                for (p, a) in project::expand_ref(uow.tx(), ap).await? {
                                    people.push((Some(p), a));
                                }
                            }
                        }
                        R::Reviewers => {
                            for rv in &d.reviewers {
                                for (p, a) in project::expand_ref(uow.tx(), rv).await? {
                                    people.push((Some(p), a));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                for a in &rule.extra_emails {
                    people.push((None, a.clone()));
                }
                for pid in &rule.extra_principals {
                    for (p, a) in project::expand(uow.tx(), pid).await? {
                        people.push((Some(p), a));
                    }
                }
                if e == E::AlertRaised {
                    let min = settings
                        .alert_routing
                        .as_ref()
                        .map_or(pb::AlertSeverity::Medium as i32, |a| a.min_email_severity);
                    if d.alert_severity < min {
                        people.clear();
                    }
                }
                for (p, a) in people {
                    if a.is_empty() {
                        continue;
                    }
                    emails.entry(a.to_lowercase()).or_insert((p, *r));
                }
            }
        }
        let mut deliveries = Vec::new();
        for (addr, (p, r)) in emails {
            deliveries.push(pb::Delivery {
                id: uuid::Uuid::now_v7().to_string(),
                notification_id: id.clone(),
                channel: pb::Channel::Email.into(),
                recipient: addr,
                principal: p,
                recipient_kind: r.into(),
                status: pb::DeliveryStatus::Pending.into(),
                create_time: Some(nowp),
                next_attempt_time: Some(nowp),
                ..Default::default()
            });
        }
        for w in self.webhooks_of(uow).await? {
            if w.enabled != Some(true)
                || (!w.event_kinds.is_empty() && !w.event_kinds.contains(&d.kind))
                || (w.critical_only && !d.critical)
                || (e == E::AlertRaised && d.alert_severity < w.min_alert_severity)
            {
                continue;
            }
            deliveries.push(pb::Delivery {
                id: uuid::Uuid::now_v7().to_string(),
                notification_id: id.clone(),
                channel: pb::Channel::Webhook.into(),
                recipient: w.id.clone(),
                status: pb::DeliveryStatus::Pending.into(),
                create_time: Some(nowp),
                next_attempt_time: Some(nowp),
                ..Default::default()
            });
        }
        deliveries.push(pb::Delivery {
            id: uuid::Uuid::now_v7().to_string(),
            notification_id: id.clone(),
            channel: pb::Channel::Stream.into(),
            recipient: "stream".into(),
            status: pb::DeliveryStatus::Delivered.into(),
            create_time: Some(nowp),
            deliver_time: Some(nowp),
            ..Default::default()
        });
        let mut stored = n.clone();
        stored.deliveries.clear();
        sqlx::query(
            "INSERT INTO notifications_notifications (id, event_kind, created_at, body) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(i64::from(d.kind))
        .bind(to_micros(now))
        .bind(stored.encode_to_vec())
        .execute(&mut **uow.tx())
        .await?;
        for dl in &deliveries {
            self.store_delivery(uow.tx(), dl, d.kind).await?;
        }
        n.deliveries = deliveries;
        uow.emit(
            NewEvent::new(
                pb::NotificationQueued {
                    notification: Some(n.clone()),
                },
                "system",
                id.clone(),
            )
            .correlated(d.source.correlation_id.clone()),
        );
        Ok(n)
    }

    /// Writes a delivery row.
    pub async fn store_delivery(&self, tx: &mut Tx, dl: &pb::Delivery, kind: i32) -> ApiResult<()> {
        let pending = matches!(
            pb::DeliveryStatus::try_from(dl.status),
            Ok(pb::DeliveryStatus::Pending | pb::DeliveryStatus::Retrying)
        );
        let next = if pending {
            dl.next_attempt_time
                .as_ref()
                .and_then(from_proto)
                .map(to_micros)
        } else {
            None
        };
        sqlx::query(
            "INSERT INTO notifications_deliveries (id, notification_id, channel, recipient, principal_id, event_kind, status, attempts, next_attempt_at, created_at, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
             attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, body = excluded.body",
        )
        .bind(&dl.id)
        .bind(&dl.notification_id)
        .bind(i64::from(dl.channel))
        .bind(&dl.recipient)
        .bind(dl.principal.as_ref().map_or("", |p| p.id.as_str()))
        .bind(i64::from(kind))
        .bind(i64::from(dl.status))
        .bind(i64::from(dl.attempts))
        .bind(next)
        .bind(dl.create_time.as_ref().and_then(from_proto).map_or(0, to_micros))
        .bind(dl.encode_to_vec())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every webhook, with its secret hint (never the secret).
    pub async fn webhooks_in(&self, tx: &mut Tx) -> ApiResult<Vec<pb::Webhook>> {
        let rows = sqlx::query("SELECT body FROM notifications_webhooks ORDER BY created_at, id")
            .fetch_all(&mut **tx)
            .await?;
        rows.iter()
            .map(|r| {
                let b: Vec<u8> = r.try_get("body")?;
                decode(&b)
            })
            .collect()
    }

    /// Re-plans the expiry reminders of an assignment.
    pub async fn plan_reminders(
        &self,
        uow: &mut Uow,
        a: &tenure_proto::assignments::v1::Assignment,
    ) -> ApiResult<()> {
        let settings = self.settings_of(uow).await?;
        let tx = uow.tx();
        sqlx::query("DELETE FROM notifications_reminders WHERE assignment_id = $1")
            .bind(&a.id)
            .execute(&mut **tx)
            .await?;
        let rem = settings.expiry_reminders.unwrap_or_default();
        if !rem.enabled || a.permanent {
            return Ok(());
        }
        let Some(end) = a.end_time.as_ref().and_then(from_proto) else {
            return Ok(());
        };
        let now = self.now();
        for o in &rem.before_end {
            let due = end - rules::offset(o);
            if due <= now {
                continue;
            }
            sqlx::query(
                "INSERT INTO notifications_reminders (assignment_id, offset_secs, due_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(&a.id)
            .bind(o.seconds)
            .bind(to_micros(due))
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Sends the due expiry reminders, each once (a conditional delete claims it).
    pub async fn send_due_reminders(&self) -> ApiResult<()> {
        let now = to_micros(self.now());
        // In due order, so the planner walks the due-time index and stops at the first
        // row not due; without the order a PostgreSQL planner lacking statistics scanned
        // the whole table (4 ms at 40,000 reminders) on every wake-up.
        let rows = sqlx::query(
            "SELECT assignment_id, offset_secs FROM notifications_reminders \
             WHERE due_at <= $1 ORDER BY due_at LIMIT 100",
        )
        .bind(now)
        .fetch_all(self.db.reader())
        .await?;
        for row in rows {
            let id: String = row.try_get("assignment_id")?;
            let offset: i64 = row.try_get("offset_secs")?;
            let mut uow = self.log.begin().await?;
            let claimed = sqlx::query(
                "DELETE FROM notifications_reminders WHERE assignment_id = $1 AND offset_secs = $2",
            )
            .bind(&id)
            .bind(offset)
            .execute(&mut **uow.tx())
            .await?
            .rows_affected();
            if claimed == 1 {
                let body: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT body FROM notifications_p_assignments WHERE id = $1",
                )
                .bind(&id)
                .fetch_optional(&mut **uow.tx())
                .await?;
                if let Some(b) = body {
                    let a: tenure_proto::assignments::v1::Assignment = decode(&b)?;
                    let settings = self.settings_of(&mut uow).await?;
                    let smallest = settings
                        .expiry_reminders
                        .as_ref()
                        .and_then(|r| r.before_end.iter().map(|d| d.seconds).min())
                        .unwrap_or(offset);
                    let what = if a.assignment_type == common::AssignmentType::Eligible as i32 {
                        "eligible"
                    } else {
                        "active"
                    };
                    let role = a.role.clone().unwrap_or_default();
                    let d = Draft {
                        kind: E::ExpiringSoon.into(),
                        critical: offset <= smallest,
                        title: format!(
                            "{} {what} assignment of {} ends soon",
                            a.principal.as_ref().map_or("", |p| p.display_name.as_str()),
                            role.display_name
                        ),
                        summary: format!(
                            "The {what} assignment ends at the time below; renew or extend it if it is still needed."
                        ),
                        action_path: format!("/assignments/{}", a.id),
                        principal: a.principal.clone(),
                        role: a.role.clone(),
                        scope: a.scope.clone(),
                        reference_id: a.id.clone(),
                        justification: a.justification.clone(),
                        start: a.start_time,
                        end: a.end_time,
                        source: common::EventMeta {
                            context: crate::PREFIX.into(),
                            ..Default::default()
                        },
                        ..Draft::default()
                    };
                    self.notify(&mut uow, d).await?;
                }
            }
            uow.commit().await?;
        }
        Ok(())
    }

    /// The next instant a timer must act: a delivery attempt, a reminder, the rescan.
    pub async fn next_due(&self) -> ApiResult<Option<i64>> {
        let a: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM notifications_deliveries WHERE next_attempt_at IS NOT NULL",
        )
        .fetch_one(self.db.reader())
        .await?;
        let b: Option<i64> = sqlx::query_scalar("SELECT MIN(due_at) FROM notifications_reminders")
            .fetch_one(self.db.reader())
            .await?;
        let c: Option<i64> = sqlx::query_scalar("SELECT MIN(due_at) FROM notifications_timers")
            .fetch_one(self.db.reader())
            .await?;
        Ok([a, b, c].into_iter().flatten().min())
    }

    /// Runs the periodic rescan when due, once across replicas.
    pub async fn rescan_if_due(&self) -> ApiResult<()> {
        let now = to_micros(self.now());
        let interval =
            i64::try_from(self.config.alert_rescan_interval_secs).unwrap_or(3600) * 1_000_000;
        let due: Option<i64> =
            sqlx::query_scalar("SELECT due_at FROM notifications_timers WHERE name = 'rescan'")
                .fetch_optional(self.db.reader())
                .await?;
        let Some(due) = due else {
            let mut uow = self.log.begin().await?;
            sqlx::query("INSERT INTO notifications_timers (name, due_at) VALUES ('rescan', $1) ON CONFLICT DO NOTHING")
                .bind(now + interval)
                .execute(&mut **uow.tx())
                .await?;
            uow.commit().await?;
            return Ok(());
        };
        if due > now {
            return Ok(());
        }
        let mut uow = self.log.begin().await?;
        let claimed = sqlx::query(
            "UPDATE notifications_timers SET due_at = $1 WHERE name = 'rescan' AND due_at = $2",
        )
        .bind(now + interval)
        .bind(due)
        .execute(&mut **uow.tx())
        .await?
        .rows_affected();
        if claimed == 1 {
            self.evaluate(&mut uow, &KINDS).await?;
        }
        uow.commit().await?;
        Ok(())
    }

    /// Prunes the audit entries older than `keep_for_secs` (oldest first), recording
    /// the hash of the last pruned entry as the anchor the chain now starts from
    /// (`AuditEntriesPruned`). Nothing when the retention keeps everything.
    pub async fn prune_audit(&self, uow: &mut Uow, keep_for_secs: i64) -> ApiResult<()> {
        if keep_for_secs <= 0 {
            return Ok(());
        }
        // Saturating: a retention stored before the API bounded it must not overflow.
        let cutoff = to_micros(self.now()).saturating_sub(keep_for_secs.saturating_mul(1_000_000));
        let row = sqlx::query(
            "SELECT MAX(sequence) AS up_to, COUNT(*) AS n FROM notifications_audit WHERE occurred_at < $1",
        )
        .bind(cutoff)
        .fetch_one(&mut **uow.tx())
        .await?;
        let up_to: Option<i64> = row.try_get("up_to")?;
        let n: i64 = row.try_get("n")?;
        let Some(up_to) = up_to else { return Ok(()) };
        let anchor: String =
            sqlx::query_scalar("SELECT hash FROM notifications_audit WHERE sequence = $1")
                .bind(up_to)
                .fetch_one(&mut **uow.tx())
                .await?;
        sqlx::query("DELETE FROM notifications_audit WHERE sequence <= $1")
            .bind(up_to)
            .execute(&mut **uow.tx())
            .await?;
        uow.emit(NewEvent::new(
            pb::AuditEntriesPruned {
                up_to_sequence: up_to,
                anchor_hash: anchor,
                pruned_count: n,
            },
            "system",
            "audit",
        ));
        Ok(())
    }

    /// Prunes the audit trail to its retention when the prune timer is due (every
    /// [`PRUNE_INTERVAL`]), once across replicas; not only when the retention changes.
    pub async fn prune_if_due(&self) -> ApiResult<()> {
        let now = to_micros(self.now());
        let interval = PRUNE_INTERVAL.num_microseconds().unwrap_or(3_600_000_000);
        let due: Option<i64> =
            sqlx::query_scalar("SELECT due_at FROM notifications_timers WHERE name = 'prune'")
                .fetch_optional(self.db.reader())
                .await?;
        if due.is_some_and(|d| d > now) {
            return Ok(());
        }
        let mut uow = self.log.begin().await?;
        let claimed = match due {
            None => {
                sqlx::query(
                    "INSERT INTO notifications_timers (name, due_at) VALUES ('prune', $1) ON CONFLICT DO NOTHING",
                )
                .bind(now + interval)
                .execute(&mut **uow.tx())
                .await?
                .rows_affected()
            }
            Some(due) => {
                sqlx::query(
                    "UPDATE notifications_timers SET due_at = $1 WHERE name = 'prune' AND due_at = $2",
                )
                .bind(now + interval)
                .bind(due)
                .execute(&mut **uow.tx())
                .await?
                .rows_affected()
            }
        };
        if claimed == 1 {
            let keep: Option<i64> = sqlx::query_scalar(
                "SELECT keep_for_secs FROM notifications_retention WHERE id = 1",
            )
            .fetch_optional(&mut **uow.tx())
            .await?;
            self.prune_audit(&mut uow, keep.unwrap_or(0)).await?;
        }
        uow.commit().await?;
        Ok(())
    }

    /// Loads the role catalogue (highly privileged flags) from the assignments context.
    pub async fn load_roles(&self) -> ApiResult<()> {
        let roles = self.assignments.role_definitions().await?;
        let mut uow = self.log.begin().await?;
        uow.lock(ROLES_LOCK).await?;
        for r in &roles {
            project::role(uow.tx(), r).await?;
        }
        uow.commit().await?;
        Ok(())
    }

    /// Kinds affected by an assignments event.
    pub fn kinds_for_assignments(e: &tenure_proto::assignments::v1::Event) -> Vec<pb::AlertKind> {
        use pb::AlertKind as K;
        use tenure_proto::assignments::v1::event::Payload as P;
        match &e.payload {
            Some(P::InstanceActivated(_)) => vec![
                K::RolesActivatedTooFrequently,
                K::AdminsNotUsingPrivilegedRoles,
            ],
            Some(
                P::AssignmentCreated(_)
                | P::AssignmentUpdated(_)
                | P::AssignmentRemoved(_)
                | P::AssignmentExpired(_)
                | P::AssignmentExtended(_)
                | P::AssignmentRenewed(_)
                | P::PrincipalDeleted(_),
            ) => vec![
                K::RolesWithoutMfaOnActivation,
                K::AdminsNotUsingPrivilegedRoles,
                K::PotentialStaleAccounts,
                K::TooManyGlobalAdministrators,
                K::PermanentActiveHighlyPrivileged,
            ],
            Some(P::PrincipalSynced(_) | P::PrincipalDisabled(_)) => vec![
                K::AdminsNotUsingPrivilegedRoles,
                K::PotentialStaleAccounts,
                K::BreakGlassAccountUsed,
            ],
            Some(P::RoleSettingsChanged(_)) => vec![K::RolesWithoutMfaOnActivation],
            Some(
                P::RoleDefinitionCreated(_)
                | P::RoleDefinitionUpdated(_)
                | P::RoleDefinitionDeleted(_),
            ) => KINDS.to_vec(),
            Some(P::DriftObserved(_) | P::DriftResolved(_)) => vec![K::RolesAssignedOutsideTenure],
            _ => vec![],
        }
    }

    /// The break-glass principals being watched.
    pub async fn watched(&self, uow: &mut Uow) -> ApiResult<BTreeSet<String>> {
        let s = self
            .alert_settings_of(uow, pb::AlertKind::BreakGlassAccountUsed)
            .await?;
        Ok(match s.thresholds {
            Some(pb::alert_settings::Thresholds::BreakGlass(b)) if s.enabled => {
                b.principal_ids.into_iter().collect()
            }
            _ => BTreeSet::new(),
        })
    }

    /// Reads an alert with its first incidents.
    pub async fn alert(&self, id: &str) -> ApiResult<pb::Alert> {
        let mut tx = self.db.reader().begin().await?;
        let row = sqlx::query("SELECT body FROM notifications_alerts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ApiError::not_found("alert", id))?;
        let b: Vec<u8> = row.try_get("body")?;
        let mut a: pb::Alert = decode(&b)?;
        let rows = sqlx::query(
            "SELECT body FROM notifications_alert_incidents WHERE alert_id = $1 ORDER BY incident_key LIMIT 100",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            let b: Vec<u8> = r.try_get("body")?;
            a.incidents.push(decode(&b)?);
        }
        Ok(a)
    }
}

/// The micros of a time, for callers.
pub fn micros(t: DateTime<Utc>) -> i64 {
    to_micros(t)
}

/// The time of micros, for callers.
pub fn time(us: i64) -> DateTime<Utc> {
    from_micros(us)
}

/// Shared engine handle.
pub type SharedEngine = Arc<Engine>;
