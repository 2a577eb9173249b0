//! The event log of a context: a transactional outbox with a gapless, commit-ordered
//! sequence, and the live stream that serves it.
//!
//! # Writing
//! A state change and its events commit together through a [`UnitOfWork`]: the change is
//! written through [`UnitOfWork::tx`], its events are queued with [`UnitOfWork::emit`],
//! and [`UnitOfWork::commit`] appends them *last*, by bumping the log's one-row head
//! counter (`UPDATE … SET last_sequence = last_sequence + n RETURNING …`) and inserting
//! the rows, then commits.
//!
//! On PostgreSQL the head row's lock is held from that update to the commit, so two
//! transactions that emit events take sequences strictly in the order they commit. A
//! reader that has seen sequence `n` committed therefore never later finds a committed
//! `m < n` it has not seen: `WHERE sequence > cursor` never skips a late commit (a plain
//! `BIGSERIAL` would). A rollback releases the lock without consuming a number, so the
//! sequence is gapless. Taking the lock at the end keeps the serialised section short.
//! On SQLite the single writer gives the same order for free.
//!
//! # Reading
//! One tailer task per log ([`EventLog::spawn_tailer`]) reads newly committed rows into
//! a bounded in-memory ring of recent events and then advances a `watch` of the head.
//! It is woken in-process right after each local commit; on PostgreSQL also by
//! `LISTEN/NOTIFY` from other processes, with a polling fallback that does not depend on
//! NOTIFY. Subscribers ([`EventLog::subscribe`]) replay from the database while they are
//! behind the ring, then follow the ring: one database read per commit, however many
//! subscribers. A slow subscriber holds only its cursor: it falls back to reading the
//! database and never makes the server buffer for it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream;
use sqlx::{Any, Row, Transaction};
use tenure_proto::EventEnvelope;
use tenure_proto::common::v1::EventMeta;
use tokio::sync::{Notify, RwLock, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, from_micros, to_micros, to_proto};
use crate::db::{Backend, Db};
use crate::error::ApiError;
use crate::trace::TraceContext;

/// How many recent events each log keeps in memory for live subscribers.
const RING_CAPACITY: usize = 8192;
/// How many rows one database read returns at most.
const PAGE: i64 = 1000;
/// The columns an event is read back from ([`decode_row`]).
const EVENT_COLUMNS: &str = "sequence, id, event_type, occurred_at, actor, subject, \
     correlation_id, traceparent, tracestate, payload";
/// How often the tailer looks for new rows without being woken (a fallback only).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The SQL of the event-log tables of one context, for its migrations. `prefix` is the
/// context's table prefix.
pub fn log_migration_sql(prefix: &str, backend: Backend) -> String {
    let blob = match backend {
        Backend::Sqlite => "BLOB",
        Backend::Postgres => "BYTEA",
    };
    format!(
        "CREATE TABLE {prefix}_events (
            sequence BIGINT PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            occurred_at BIGINT NOT NULL,
            actor TEXT NOT NULL,
            subject TEXT NOT NULL,
            correlation_id TEXT NOT NULL,
            traceparent TEXT NOT NULL,
            tracestate TEXT NOT NULL,
            payload {blob} NOT NULL
        );
        CREATE INDEX {prefix}_events_subject ON {prefix}_events (subject);
        CREATE TABLE {prefix}_event_head (
            id BIGINT PRIMARY KEY CHECK (id = 1),
            last_sequence BIGINT NOT NULL
        );
        INSERT INTO {prefix}_event_head (id, last_sequence) VALUES (1, 0);
        CREATE TABLE {prefix}_cursors (
            source TEXT PRIMARY KEY,
            last_sequence BIGINT NOT NULL
        );"
    )
}

/// An event about to be written: the payload and who/what it is about.
#[derive(Debug, Clone)]
pub struct NewEvent<E> {
    /// The envelope with its payload set (metadata is filled in on emit).
    pub event: E,
    /// Who caused it: a principal id, or "system".
    pub actor: String,
    /// The id of the object it is about.
    pub subject: String,
    /// Correlates work across contexts (for example an activation request id).
    pub correlation_id: String,
}

impl<E> NewEvent<E> {
    /// An event by `actor` about `subject`.
    pub fn new(event: impl Into<E>, actor: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            event: event.into(),
            actor: actor.into(),
            subject: subject.into(),
            correlation_id: String::new(),
        }
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn correlated(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = correlation_id.into();
        self
    }
}

struct Inner<E> {
    db: Db,
    clock: SharedClock,
    prefix: String,
    channel: String,
    /// Highest sequence whose event is in `ring` (or, before the first fetch, the head at
    /// start). Subscribers wait on it.
    head: watch::Sender<i64>,
    wake: Notify,
    /// Cancelled when the server shuts down: the tailer stops and every live
    /// subscription ends with UNAVAILABLE so its client reconnects elsewhere.
    closing: CancellationToken,
    ring: RwLock<VecDeque<Arc<E>>>,
    /// Set while a NOTIFY to other processes is queued, so bursts send one.
    notify_queued: std::sync::atomic::AtomicBool,
    sql_bump: String,
    /// Multi-row INSERTs of 1, 2, 4, … [`INSERT_ROWS`] events (index = log2 of the rows),
    /// so a unit of work appends its events in a few statements and the statement cache
    /// holds a handful of shapes.
    sql_insert: Vec<String>,
    sql_after: String,
}

/// The most event rows one INSERT statement carries (10 parameters each).
const INSERT_ROWS: usize = 64;

fn insert_sql(prefix: &str, rows: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = format!(
        "INSERT INTO {prefix}_events (sequence, id, event_type, occurred_at, actor, \
         subject, correlation_id, traceparent, tracestate, payload) VALUES "
    );
    for r in 0..rows {
        let b = r * 10;
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 1..=10 {
            if c > 1 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${}", b + c);
        }
        sql.push(')');
    }
    sql
}

/// The event log of one context. Cheap to clone.
pub struct EventLog<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for EventLog<E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E: EventEnvelope> EventLog<E> {
    /// Opens the log whose tables carry `prefix` (created by the context's migrations
    /// from [`log_migration_sql`]). Call [`EventLog::spawn_tailer`] before subscribing.
    pub async fn open(db: Db, clock: SharedClock, prefix: &str) -> anyhow::Result<Self> {
        let head: i64 = sqlx::query_scalar(&format!(
            "SELECT last_sequence FROM {prefix}_event_head WHERE id = 1"
        ))
        .fetch_one(db.reader())
        .await?;
        let (head_tx, _) = watch::channel(head);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                clock,
                channel: format!("tenure_{prefix}_events"),
                head: head_tx,
                wake: Notify::new(),
                closing: CancellationToken::new(),
                ring: RwLock::new(VecDeque::with_capacity(RING_CAPACITY)),
                notify_queued: std::sync::atomic::AtomicBool::new(false),
                sql_bump: format!(
                    "UPDATE {prefix}_event_head SET last_sequence = last_sequence + $1 \
                     WHERE id = 1 RETURNING last_sequence"
                ),
                sql_insert: std::iter::successors(Some(1usize), |n| {
                    (*n < INSERT_ROWS).then_some(n * 2)
                })
                .map(|n| insert_sql(prefix, n))
                .collect(),
                sql_after: format!(
                    "SELECT {EVENT_COLUMNS} FROM {prefix}_events \
                     WHERE sequence > $1 ORDER BY sequence LIMIT $2"
                ),
                prefix: prefix.to_owned(),
            }),
        })
    }

    /// The database this log lives in.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The clock events are stamped with.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The table prefix of the owning context.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The highest sequence known to be committed and available to subscribers.
    pub fn head(&self) -> i64 {
        *self.inner.head.borrow()
    }

    /// The last sequence committed to the database by any process (one read of the head
    /// row): what a fully consistent read must have applied before it answers.
    pub async fn committed_head(&self) -> Result<i64, ApiError> {
        let head: i64 = sqlx::query_scalar(&format!(
            "SELECT last_sequence FROM {}_event_head WHERE id = 1",
            self.inner.prefix
        ))
        .fetch_one(self.inner.db.reader())
        .await?;
        Ok(head)
    }

    /// Waits until the head reaches `sequence` (for tests and read-your-writes).
    pub async fn wait_for(&self, sequence: i64) {
        let mut rx = self.inner.head.subscribe();
        let _ = rx.wait_for(|h| *h >= sequence).await;
    }

    /// Calls `wake` whenever the head moves, whoever committed: this process or, through
    /// the tailer, another replica. Timers use it to re-arm when another replica has
    /// changed what is due, so a replica that dies leaves its due work to the others at
    /// once rather than at a safety-net poll.
    pub fn spawn_waker(
        &self,
        stop: &CancellationToken,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rx = log.inner.head.subscribe();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                wake();
            }
        })
    }

    /// Starts a unit of work: a write transaction whose events are appended on commit.
    pub async fn begin(&self) -> Result<UnitOfWork<E>, ApiError> {
        let tx = self.inner.db.begin().await?;
        Ok(UnitOfWork {
            log: self.clone(),
            tx,
            pending: Vec::new(),
            cache: Cache::default(),
            unwritten: None,
            locks: Vec::new(),
        })
    }

    /// Wakes the tailer: something may have been committed.
    pub fn poke(&self) {
        self.inner.wake.notify_one();
    }

    /// Ends every live subscription (with UNAVAILABLE) and stops the tailer. Part of the
    /// server's shutdown.
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    /// Starts the task that moves committed events into the ring and advances the head.
    /// It stops when `stop` is cancelled or the log is closed. On PostgreSQL it also
    /// listens for other processes' commits.
    pub fn spawn_tailer(&self, stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        let closing = self.inner.closing.clone();
        let stop = {
            let s = stop.child_token();
            let s2 = s.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = closing.cancelled() => s2.cancel(),
                    () = s2.cancelled() => {}
                }
            });
            s
        };
        if log.inner.db.backend() == Backend::Postgres {
            tokio::spawn(listen_for_remote_commits(log.clone(), stop.clone()));
        }
        tokio::spawn(async move {
            loop {
                if let Err(e) = log.fetch_new().await {
                    tracing::warn!(context = E::CONTEXT, error = %e, "event tailer read failed; retrying");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = log.inner.wake.notified() => {}
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            }
        })
    }

    async fn fetch_new(&self) -> anyhow::Result<()> {
        loop {
            let after = self.head();
            let rows = self.read_after(after, PAGE).await?;
            let Some(last) = rows.last().and_then(|e| e.meta()).map(|m| m.sequence) else {
                return Ok(());
            };
            let full = rows.len() as i64 == PAGE;
            {
                let mut ring = self.inner.ring.write().await;
                for e in rows {
                    if ring.len() == RING_CAPACITY {
                        ring.pop_front();
                    }
                    ring.push_back(Arc::new(e));
                }
            }
            self.inner.head.send_replace(last);
            if !full {
                return Ok(());
            }
        }
    }

    /// Reads up to `limit` committed events after `after`, in sequence order.
    pub async fn read_after(&self, after: i64, limit: i64) -> anyhow::Result<Vec<E>> {
        let rows = sqlx::query(&self.inner.sql_after)
            .bind(after)
            .bind(limit)
            .fetch_all(self.inner.db.reader())
            .await?;
        rows.iter().map(decode_row::<E>).collect()
    }

    /// Reads up to `limit` committed events after `after` and at most `upto` whose type
    /// may pass `filter` (a non-empty one), in sequence order: the filter is applied in
    /// the database, so a subscriber of a few event types far behind the head does not
    /// read and decode every other event of the log on its way. The match in SQL may be
    /// wider than the filter's (`LIKE` treats `_` as a wildcard; SQLite's ignores case):
    /// the caller still applies [`TypeFilter::accepts`].
    async fn read_matching(
        &self,
        after: i64,
        upto: i64,
        limit: i64,
        filter: &TypeFilter,
    ) -> anyhow::Result<Vec<E>> {
        let mut terms = Vec::with_capacity(filter.0.len());
        for i in 0..filter.0.len() {
            let n = 3 + 2 * i;
            terms.push(format!("event_type = ${n} OR event_type LIKE ${}", n + 1));
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM {}_events \
             WHERE sequence > $1 AND sequence <= $2 AND ({}) ORDER BY sequence LIMIT ${}",
            self.inner.prefix,
            terms.join(" OR "),
            3 + 2 * filter.0.len()
        );
        let mut q = sqlx::query(&sql).bind(after).bind(upto);
        for name in &filter.0 {
            q = q.bind(name.as_str()).bind(format!("%.{name}"));
        }
        let rows = q.bind(limit).fetch_all(self.inner.db.reader()).await?;
        rows.iter().map(decode_row::<E>).collect()
    }

    /// Events after `after` from the ring, or `None` when the ring does not reach back
    /// that far (the caller then reads the database).
    async fn recent_from_ring(&self, after: i64, max: usize) -> Option<Vec<Arc<E>>> {
        let ring = self.inner.ring.read().await;
        let first = ring.front()?.meta()?.sequence;
        if first > after + 1 {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).unwrap_or(0);
        Some(ring.iter().skip(skip).take(max).cloned().collect())
    }

    /// Every event after `after` whose type passes `filter`, then every new one as it
    /// commits, in sequence order without gaps. The stream ends only on a database error.
    pub fn subscribe(
        &self,
        after: i64,
        filter: TypeFilter,
    ) -> impl Stream<Item = Result<Arc<E>, ApiError>> + Send + 'static {
        let log = self.clone();
        async_stream::try_stream! {
            let mut cursor = after.max(0);
            let mut head_rx = log.inner.head.subscribe();
            loop {
                let head = *head_rx.borrow_and_update();
                if cursor >= head {
                    let closing = tokio::select! {
                        changed = head_rx.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            false
                        }
                        () = log.inner.closing.cancelled() => true,
                    };
                    if closing {
                        Err(ApiError::Unavailable("the server is shutting down; reconnect".into()))?;
                    }
                    continue;
                }
                // With a filter, a read from the database returns only what may pass;
                // a page that is not full has looked at everything up to `head`.
                let mut scanned_to = None;
                let batch: Vec<Arc<E>> = match log.recent_from_ring(cursor, 512).await {
                    Some(b) if !b.is_empty() => b,
                    _ if !filter.0.is_empty() => {
                        let rows = log
                            .read_matching(cursor, head, PAGE, &filter)
                            .await
                            .map_err(ApiError::Internal)?;
                        if (rows.len() as i64) < PAGE {
                            scanned_to = Some(head);
                        }
                        rows.into_iter().map(Arc::new).collect()
                    }
                    _ => log
                        .read_after(cursor, PAGE)
                        .await
                        .map_err(ApiError::Internal)?
                        .into_iter()
                        .map(Arc::new)
                        .collect(),
                };
                for e in batch {
                    let seq = e.meta().map_or(cursor, |m| m.sequence);
                    if seq <= cursor {
                        continue;
                    }
                    cursor = seq;
                    if filter.accepts(e.as_ref()) {
                        yield e;
                    }
                }
                if let Some(h) = scanned_to {
                    cursor = cursor.max(h);
                }
            }
        }
    }
}

async fn listen_for_remote_commits<E: EventEnvelope>(log: EventLog<E>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect(log.inner.db.url()).await?;
            l.listen(&log.inner.channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(mut l) => {
                backoff = Duration::from_millis(200);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        n = l.recv() => match n {
                            Ok(_) => log.poke(),
                            Err(e) => {
                                tracing::debug!(error = %e, "event notification listener lost; reconnecting");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for event notifications; polling meanwhile");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn decode_row<E: EventEnvelope>(row: &sqlx::any::AnyRow) -> anyhow::Result<E> {
    let payload: Vec<u8> = row.try_get("payload")?;
    let mut event = E::decode(payload.as_slice())?;
    event.set_meta(EventMeta {
        id: row.try_get("id")?,
        context: E::CONTEXT.to_owned(),
        sequence: row.try_get("sequence")?,
        r#type: row.try_get("event_type")?,
        occurred_at: Some(to_proto(from_micros(row.try_get("occurred_at")?))),
        actor: row.try_get("actor")?,
        subject: row.try_get("subject")?,
        correlation_id: row.try_get("correlation_id")?,
        traceparent: row.try_get("traceparent")?,
        tracestate: row.try_get("tracestate")?,
    });
    Ok(event)
}

/// Which event types a subscriber wants: by full name ("tenure.assignments.v1.X") or
/// simple name ("X"); empty means all.
#[derive(Debug, Clone, Default)]
pub struct TypeFilter(Vec<String>);

impl TypeFilter {
    /// A filter from the names a subscriber sent. Names must be non-empty and at most
    /// 200 characters; at most 100 names.
    pub fn new(names: Vec<String>) -> Result<Self, ApiError> {
        if names.len() > 100 {
            return Err(ApiError::invalid("event_types", "at most 100 event types"));
        }
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() || n.len() > 200 {
                return Err(ApiError::invalid(
                    format!("event_types[{i}]"),
                    "must be a type name of 1 to 200 characters",
                ));
            }
        }
        Ok(Self(names))
    }

    /// Whether `event` passes.
    pub fn accepts<E: EventEnvelope>(&self, event: &E) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(ty) = event.meta().map(|m| m.r#type.as_str()) else {
            return false;
        };
        let simple = ty.rsplit('.').next().unwrap_or(ty);
        self.0.iter().any(|n| n == ty || n == simple)
    }
}

/// A write transaction and the events it will append when it commits.
pub struct UnitOfWork<E: EventEnvelope> {
    log: EventLog<E>,
    tx: Transaction<'static, Any>,
    pending: Vec<(E, EventMeta, DateTime<Utc>)>,
    cache: Cache,
    unwritten: Option<&'static str>,
    locks: Vec<String>,
}

/// Values a handler keeps for the length of one unit of work (reads it need not repeat
/// for every event of a batch, or state it writes back once before the commit), one per
/// type.
#[derive(Default)]
struct Cache(Vec<Box<dyn std::any::Any + Send>>);

impl Cache {
    fn get<T: Default + Send + 'static>(&mut self) -> &mut T {
        let i = match self.0.iter().position(|b| b.is::<T>()) {
            Some(i) => i,
            None => {
                self.0.push(Box::new(T::default()));
                self.0.len() - 1
            }
        };
        match self.0[i].downcast_mut::<T>() {
            Some(v) => v,
            None => unreachable!("slot {i} was found by its type"),
        }
    }
}

impl<E: EventEnvelope> UnitOfWork<E> {
    /// The transaction, for the state change itself.
    pub fn tx(&mut self) -> &mut Transaction<'static, Any> {
        &mut self.tx
    }

    /// The clock of the log (so a change and its events carry one "now").
    pub fn now(&self) -> DateTime<Utc> {
        self.log.inner.clock.now()
    }

    /// Queues an event; it is written when the unit commits. The trace context of the
    /// current call is recorded with it.
    pub fn emit(&mut self, new: NewEvent<E>) {
        let trace = TraceContext::current();
        let now = self.now();
        let meta = EventMeta {
            id: uuid::Uuid::now_v7().to_string(),
            context: E::CONTEXT.to_owned(),
            sequence: 0,
            r#type: new.event.payload_type().unwrap_or_default().to_owned(),
            occurred_at: Some(to_proto(now)),
            actor: new.actor,
            subject: new.subject,
            correlation_id: new.correlation_id,
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        };
        self.pending.push((new.event, meta, now));
    }

    /// The value of type `T` this unit of work keeps (created empty on first use). It
    /// lives exactly as long as the transaction, so what is cached in it can never
    /// outlive what the transaction saw.
    pub fn cache<T: Default + Send + 'static>(&mut self) -> &mut T {
        self.cache.get::<T>()
    }

    /// Holds the lock `name` (of this log's context) until the unit commits or rolls
    /// back, against every other unit of work, in this process or another replica,
    /// that asks for it. For a read-then-write that no row lock covers (an alert that
    /// may not exist yet: two evaluations must not both raise it). On PostgreSQL a
    /// transaction-scoped advisory lock; on SQLite nothing is needed, since the single
    /// writer connection already runs one write transaction at a time.
    ///
    /// Asking again for a lock the unit holds costs nothing: a consumer's batch
    /// evaluates an alert per activation event, each asking for the same lock, and
    /// each request was a round trip to PostgreSQL.
    pub async fn lock(&mut self, name: &str) -> Result<(), ApiError> {
        if self.locks.iter().any(|held| held == name) {
            return Ok(());
        }
        if self.log.inner.db.backend() == Backend::Postgres {
            // The function returns `void`, which the Any driver cannot decode: count it.
            sqlx::query("SELECT count(*) FROM (SELECT pg_advisory_xact_lock($1)) AS held")
                .bind(lock_key(&self.log.inner.prefix, name))
                .execute(&mut *self.tx)
                .await?;
        }
        self.locks.push(name.to_owned());
        Ok(())
    }

    /// Records that this unit holds `what` in its [`UnitOfWork::cache`] to be written
    /// before it commits (audit entries chained at the end of a batch, say), until
    /// [`UnitOfWork::written`]. A commit while something is unwritten fails and rolls
    /// back: a caller that forgot the final write gets an error, not a silent loss.
    pub fn mark_unwritten(&mut self, what: &'static str) {
        self.unwritten = Some(what);
    }

    /// Clears [`UnitOfWork::mark_unwritten`]: what was held is written.
    pub fn written(&mut self) {
        self.unwritten = None;
    }

    /// How many events are queued.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Appends the queued events (taking the next sequences in commit order) and commits
    /// the transaction. Returns the sequences the events got, in emit order.
    pub async fn commit(mut self) -> Result<Vec<i64>, ApiError> {
        if let Some(what) = self.unwritten {
            self.tx.rollback().await?;
            return Err(ApiError::Internal(anyhow::anyhow!(
                "a unit of work of {} committed with {what} not yet written; rolled back",
                E::CONTEXT
            )));
        }
        let mut sequences = Vec::with_capacity(self.pending.len());
        if !self.pending.is_empty() {
            let n = self.pending.len() as i64;
            let last: i64 = sqlx::query_scalar(&self.log.inner.sql_bump)
                .bind(n)
                .fetch_one(&mut *self.tx)
                .await?;
            let mut seq = last - n;
            let mut rest = self.pending.len();
            let mut events = self.pending.drain(..);
            while rest > 0 {
                // The largest power of two that fits: at most log2(INSERT_ROWS)+1 shapes.
                let rows = 1usize << (usize::BITS - 1 - rest.min(INSERT_ROWS).leading_zeros());
                let mut q = sqlx::query(&self.log.inner.sql_insert[rows.trailing_zeros() as usize]);
                for (event, meta, at) in events.by_ref().take(rows) {
                    seq += 1;
                    q = q
                        .bind(seq)
                        .bind(meta.id)
                        .bind(meta.r#type)
                        .bind(to_micros(at))
                        .bind(meta.actor)
                        .bind(meta.subject)
                        .bind(meta.correlation_id)
                        .bind(meta.traceparent)
                        .bind(meta.tracestate)
                        .bind(event.encode_to_vec());
                    sequences.push(seq);
                }
                q.execute(&mut *self.tx).await?;
                rest -= rows;
            }
            drop(events);
        }
        self.tx.commit().await?;
        if !sequences.is_empty() {
            self.log.poke();
            if self.log.inner.db.backend() == Backend::Postgres {
                notify_other_processes(&self.log);
            }
        }
        Ok(sequences)
    }

    /// Abandons the change and its events.
    pub async fn rollback(self) -> Result<(), ApiError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// The advisory lock number of `name` in the context `prefix`: FNV-1a over both, so
/// every replica computes the same number.
fn lock_key(prefix: &str, name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prefix.bytes().chain([b'.']).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// Tells other processes (replicas) that the log moved, off the caller's path and at
/// most one queued at a time. A hint only: they poll too. Sent outside the writing
/// transaction, so the commit does not take NOTIFY's global commit lock.
fn notify_other_processes<E: EventEnvelope>(log: &EventLog<E>) {
    use std::sync::atomic::Ordering;
    if log.inner.notify_queued.swap(true, Ordering::AcqRel) {
        return;
    }
    let log = log.clone();
    tokio::spawn(async move {
        log.inner.notify_queued.store(false, Ordering::Release);
        let r = sqlx::query("SELECT pg_notify($1, '')")
            .bind(&log.inner.channel)
            .execute(log.inner.db.writer())
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "pg_notify failed; other replicas will poll");
        }
    });
}

/// Reads the stored cursor of `source` in the consuming context's cursor table.
pub async fn load_cursor(db: &Db, prefix: &str, source: &str) -> Result<i64, ApiError> {
    let v: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT last_sequence FROM {prefix}_cursors WHERE source = $1"
    ))
    .bind(source)
    .fetch_optional(db.reader())
    .await?;
    Ok(v.unwrap_or(0))
}

/// Moves the cursor of `source` from `from` to `to` inside the consumer's transaction, so
/// the cursor moves exactly when what was done with the event commits. Returns false,
/// changing nothing, when the stored cursor is not `from`: another replica running the
/// same consumer got there first. Called before the handler runs, it also takes the
/// cursor row's lock, so replicas racing for one event queue behind the first, and each
/// of the others finds the cursor moved and skips the event (effectively once across
/// replicas, not only across restarts).
pub async fn claim_cursor(
    tx: &mut Transaction<'static, Any>,
    prefix: &str,
    source: &str,
    from: i64,
    to: i64,
) -> Result<bool, ApiError> {
    let done = sqlx::query(&format!(
        "INSERT INTO {prefix}_cursors (source, last_sequence) VALUES ($1, $2) \
         ON CONFLICT (source) DO UPDATE SET last_sequence = excluded.last_sequence \
         WHERE {prefix}_cursors.last_sequence = $3"
    ))
    .bind(source)
    .bind(to)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}
