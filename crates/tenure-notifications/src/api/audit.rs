//! `AuditService`: query, CSV export, chain verification, retention.

use std::sync::Arc;

use futures::StreamExt as _;
use prost::Message as _;
use sqlx::Row as _;
use tenure_platform::clock::{from_proto, to_micros, to_proto};
use tenure_platform::events::NewEvent;
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::notifications::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{READ, WRITE, idempotent, page_size, require};
use crate::domain::audit as rules;
use crate::engine::Engine;

/// The longest audit retention accepted: 1,000 years (longer is "keep everything").
const MAX_RETENTION_SECS: i64 = 1000 * 366 * 86_400;

/// The gRPC adapter.
#[derive(Clone)]
pub struct AuditApi {
    /// The engine.
    pub engine: Arc<Engine>,
}

#[derive(Debug, Clone)]
enum Bind {
    S(String),
    I(i64),
}

/// A filter turned into SQL.
#[derive(Debug, Clone, Default)]
struct Where {
    sql: String,
    binds: Vec<Bind>,
    /// The placeholders of the source contexts asked for (distinct), bound among
    /// `binds` but kept out of `sql`: each becomes one arm of the page query.
    contexts: Vec<String>,
}

impl Where {
    fn push(&mut self, clause: &str, b: Vec<Bind>) {
        let mut c = clause.to_owned();
        for v in b {
            self.binds.push(v);
            c = c.replacen('?', &format!("${}", self.binds.len()), 1);
        }
        self.sql.push_str(" AND ");
        self.sql.push_str(&c);
    }

    fn list(&mut self, col: &str, values: &[String]) {
        let marks = vec!["?"; values.len()].join(", ");
        self.push(
            &format!("{col} IN ({marks})"),
            values.iter().cloned().map(Bind::S).collect(),
        );
    }
}

fn build_filter(f: &pb::AuditFilter, me: &str) -> ApiResult<Where> {
    let mut v = tenure_platform::error::Violations::new();
    let start = f.start_time.as_ref().map(from_proto);
    let end = f.end_time.as_ref().map(from_proto);
    v.check(
        matches!(start, Some(None)),
        "filter.start_time",
        "is not a valid time",
    );
    v.check(
        matches!(end, Some(None)),
        "filter.end_time",
        "is not a valid time",
    );
    if let (Some(Some(s)), Some(Some(e))) = (start, end) {
        v.check(
            e < s,
            "filter.end_time",
            "must not be before filter.start_time",
        );
    }
    v.check(f.actor_ids.len() > 100, "filter.actor_ids", "at most 100");
    v.check(f.actions.len() > 100, "filter.actions", "at most 100");
    v.check(
        pb::AuditResult::try_from(f.result).is_err(),
        "filter.result",
        "unknown result",
    );
    for (i, c) in f.source_contexts.iter().enumerate() {
        v.check(
            !tenure_platform::config::CONTEXTS.contains(&c.as_str()),
            format!("filter.source_contexts[{i}]"),
            "must be assignments, activation, reviews or notifications",
        );
    }
    v.finish()?;
    let mut w = Where::default();
    if let Some(Some(s)) = start {
        w.push("occurred_at >= ?", vec![Bind::I(to_micros(s))]);
    }
    if let Some(Some(e)) = end {
        w.push("occurred_at < ?", vec![Bind::I(to_micros(e))]);
    }
    if !f.actor_ids.is_empty() {
        w.list("actor_id", &f.actor_ids);
    }
    if !f.target_principal_id.is_empty() {
        w.push(
            "target_principal_id = ?",
            vec![Bind::S(f.target_principal_id.clone())],
        );
    }
    if !f.role_id.is_empty() {
        w.push("role_id = ?", vec![Bind::S(f.role_id.clone())]);
    }
    if !f.scope_id.is_empty() {
        if f.include_descendant_scopes {
            let prefix = if f.scope_id == "/" {
                "/%".to_owned()
            } else {
                format!("{}/%", f.scope_id.trim_end_matches('/'))
            };
            w.push(
                "(scope_id = ? OR scope_id LIKE ?)",
                vec![Bind::S(f.scope_id.clone()), Bind::S(prefix)],
            );
        } else {
            w.push("scope_id = ?", vec![Bind::S(f.scope_id.clone())]);
        }
    }
    if !f.actions.is_empty() {
        let marks = vec!["?"; f.actions.len()].join(", ");
        let mut b: Vec<Bind> = f.actions.iter().cloned().map(Bind::S).collect();
        b.extend(f.actions.iter().cloned().map(Bind::S));
        w.push(
            &format!("(action IN ({marks}) OR full_action IN ({marks}))"),
            b,
        );
    }
    let mut contexts = f.source_contexts.clone();
    contexts.sort();
    contexts.dedup();
    for c in contexts {
        w.binds.push(Bind::S(c));
        w.contexts.push(format!("${}", w.binds.len()));
    }
    if !f.request_id.is_empty() {
        w.push("request_id = ?", vec![Bind::S(f.request_id.clone())]);
    }
    if f.result != 0 {
        w.push("result = ?", vec![Bind::I(i64::from(f.result))]);
    }
    if f.mine_only {
        w.push(
            "(actor_id = ? OR target_principal_id = ?)",
            vec![Bind::S(me.to_owned()), Bind::S(me.to_owned())],
        );
    }
    Ok(w)
}

/// The page query: entries matching `w` and `extra`, by sequence in `order`, at most
/// the last placeholder's number. Filtered by source contexts, it is one arm per context
/// (`source_context = $k`, walking the `(source_context, sequence)` index in order),
/// merged by `UNION ALL … ORDER BY sequence`: no arm reads beyond the page and nothing
/// is sorted, where `source_context IN (…)` read every entry of the contexts and sorted
/// them. The other placeholders are shared by the arms (bound by number).
fn page_sql(w: &Where, extra: &str, extra_binds: usize, order: &str) -> String {
    let mut n = w.binds.len();
    let mut extra_sql = extra.to_owned();
    for _ in 0..extra_binds {
        n += 1;
        extra_sql = extra_sql.replacen('?', &format!("${n}"), 1);
    }
    let arm = |context: Option<&str>| {
        let by_context = context.map_or(String::new(), |c| format!(" AND source_context = {c}"));
        format!(
            "SELECT body, sequence FROM notifications_audit WHERE 1=1{}{by_context}{extra_sql}",
            w.sql
        )
    };
    let arms: Vec<String> = if w.contexts.is_empty() {
        vec![arm(None)]
    } else {
        w.contexts.iter().map(|c| arm(Some(c))).collect()
    };
    format!(
        "{} ORDER BY sequence {order} LIMIT ${}",
        arms.join(" UNION ALL "),
        n + 1
    )
}

/// `sql` (from [`page_sql`]) with the filter's, the extra and the limit's values bound.
fn bound<'q>(
    sql: &'q str,
    w: &Where,
    extra_binds: &[i64],
    limit: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    for b in &w.binds {
        q = match b {
            Bind::S(s) => q.bind(s.clone()),
            Bind::I(i) => q.bind(*i),
        };
    }
    for i in extra_binds {
        q = q.bind(*i);
    }
    q.bind(limit)
}

async fn fetch(
    db: &tenure_platform::db::Db,
    w: &Where,
    extra: &str,
    extra_binds: &[i64],
    order: &str,
    limit: i64,
) -> ApiResult<Vec<pb::AuditEntry>> {
    let sql = page_sql(w, extra, extra_binds.len(), order);
    let rows = bound(&sql, w, extra_binds, limit)
        .fetch_all(db.reader())
        .await?;
    rows.iter()
        .map(|r| {
            let b: Vec<u8> = r.try_get("body")?;
            pb::AuditEntry::decode(b.as_slice()).map_err(|e| ApiError::Internal(e.into()))
        })
        .collect()
}

async fn authorize(
    engine: &Engine,
    c: &tenure_platform::auth::Caller,
    f: &pb::AuditFilter,
) -> ApiResult<()> {
    if f.mine_only {
        return Ok(());
    }
    require(engine, c, READ).await
}

/// A chunk of the CSV export is sent once it holds this much.
const CHUNK: usize = 60 * 1024;
/// The most a chunk holds (the API's promise), unless one row alone is larger.
const MAX_CHUNK: usize = 64 * 1024;

/// The CSV export cut into chunks at row boundaries. Rows are written straight into
/// the chunk's buffer (no string per field, no flush per row); a chunk is full at
/// [`CHUNK`], and never holds more than [`MAX_CHUNK`] unless one row alone is larger.
struct Chunks {
    buf: Vec<u8>,
    rows: i32,
}

impl Chunks {
    /// The first chunk, starting with the header row.
    fn new() -> Self {
        let mut buf = Vec::with_capacity(MAX_CHUNK);
        rules::write_csv_header(&mut buf);
        Self { buf, rows: 0 }
    }

    fn take(&mut self) -> pb::ExportAuditResponse {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_CHUNK));
        let rows = std::mem::take(&mut self.rows);
        pb::ExportAuditResponse {
            csv_chunk: full,
            row_count: rows,
        }
    }

    /// Adds a row; returns the chunks it filled (a row that would overflow the chunk
    /// sends it and starts the next, and may fill that one alone).
    fn push(
        &mut self,
        e: &pb::AuditEntry,
    ) -> (
        Option<pb::ExportAuditResponse>,
        Option<pb::ExportAuditResponse>,
    ) {
        let before = self.buf.len();
        rules::write_csv_row(&mut self.buf, e);
        let mut first = None;
        if self.buf.len() > MAX_CHUNK && (self.rows > 0 || before > 0) {
            let row = self.buf.split_off(before);
            first = Some(self.take());
            self.buf.extend_from_slice(&row);
        }
        self.rows += 1;
        let second = (self.buf.len() >= CHUNK).then(|| self.take());
        (first, second)
    }

    /// The last chunk, if anything is left.
    fn finish(mut self) -> Option<pb::ExportAuditResponse> {
        (!self.buf.is_empty() || self.rows > 0).then(|| self.take())
    }
}

impl AuditApi {
    async fn query(
        &self,
        c: &tenure_platform::auth::Caller,
        r: pb::QueryAuditRequest,
    ) -> ApiResult<pb::QueryAuditResponse> {
        let f = r.filter.unwrap_or_default();
        let w = build_filter(&f, &c.principal_id)?;
        let size = page_size(r.page_size, "page_size")?;
        let cursor = if r.page_token.is_empty() {
            None
        } else {
            Some(
                r.page_token
                    .parse::<i64>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| {
                        ApiError::invalid("page_token", "is not a token this service returned")
                    })?,
            )
        };
        authorize(&self.engine, c, &f).await?;
        let (extra, order) = match (cursor, r.newest_first) {
            (Some(_), false) => (" AND sequence > ?", "ASC"),
            (Some(_), true) => (" AND sequence < ?", "DESC"),
            (None, false) => ("", "ASC"),
            (None, true) => ("", "DESC"),
        };
        let binds: Vec<i64> = cursor.into_iter().collect();
        let mut entries = fetch(&self.engine.db, &w, extra, &binds, order, size + 1).await?;
        let more = entries.len() as i64 > size;
        entries.truncate(usize::try_from(size).unwrap_or(0));
        let next_page_token = if more {
            entries
                .last()
                .map(|e| e.sequence.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::QueryAuditResponse {
            entries,
            next_page_token,
        })
    }

    async fn verify(
        &self,
        r: pb::VerifyAuditChainRequest,
    ) -> ApiResult<pb::VerifyAuditChainResponse> {
        let mut v = tenure_platform::error::Violations::new();
        v.check(r.from_sequence < 0, "from_sequence", "must not be negative");
        v.check(r.to_sequence < 0, "to_sequence", "must not be negative");
        v.check(
            r.to_sequence != 0 && r.to_sequence < r.from_sequence,
            "to_sequence",
            "must not be before from_sequence",
        );
        v.finish()?;
        let db = self.engine.db.reader();
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(sequence) FROM notifications_audit")
                .fetch_one(db)
                .await?;
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(sequence) FROM notifications_audit")
                .fetch_one(db)
                .await?;
        let (Some(oldest), Some(newest)) = (oldest, newest) else {
            return Ok(pb::VerifyAuditChainResponse {
                valid: true,
                ..Default::default()
            });
        };
        let from = if r.from_sequence == 0 {
            oldest
        } else {
            r.from_sequence.max(oldest)
        };
        let to = if r.to_sequence == 0 {
            newest
        } else {
            r.to_sequence.min(newest)
        };
        // The anchor: the previous entry's hash, the genesis hash for entry 1, or the
        // kept entry's own link after a prune (recorded in AuditEntriesPruned).
        let mut anchor = if from == 1 {
            rules::GENESIS_HASH.to_owned()
        } else {
            let prev: Option<String> =
                sqlx::query_scalar("SELECT hash FROM notifications_audit WHERE sequence = $1")
                    .bind(from - 1)
                    .fetch_optional(db)
                    .await?;
            match prev {
                Some(h) => h,
                None => sqlx::query_scalar::<_, Vec<u8>>(
                    "SELECT body FROM notifications_audit WHERE sequence = $1",
                )
                .bind(from)
                .fetch_optional(db)
                .await?
                .and_then(|b| pb::AuditEntry::decode(b.as_slice()).ok())
                .map(|e| e.previous_hash)
                .unwrap_or_default(),
            }
        };
        let mut verified = 0i64;
        let mut cursor = from - 1;
        let mut head = (0i64, String::new());
        let w = Where::default();
        loop {
            let page = fetch(
                &self.engine.db,
                &w,
                " AND sequence > ? AND sequence <= ?",
                &[cursor, to],
                "ASC",
                1000,
            )
            .await?;
            if page.is_empty() {
                break;
            }
            if let Some((seq, reason)) = rules::first_break(&anchor, &page) {
                let expected_gap = page.first().is_some_and(|e| e.sequence != cursor + 1);
                return Ok(pb::VerifyAuditChainResponse {
                    valid: false,
                    verified_count: verified,
                    first_invalid_sequence: if expected_gap { cursor + 1 } else { seq },
                    reason,
                    head_sequence: head.0,
                    head_hash: head.1,
                });
            }
            if let Some(first) = page.first()
                && first.sequence != cursor + 1
            {
                return Ok(pb::VerifyAuditChainResponse {
                    valid: false,
                    verified_count: verified,
                    first_invalid_sequence: cursor + 1,
                    reason: format!("entry {} is missing", cursor + 1),
                    head_sequence: head.0,
                    head_hash: head.1,
                });
            }
            verified += page.len() as i64;
            if let Some(last) = page.last() {
                cursor = last.sequence;
                anchor.clone_from(&last.hash);
                head = (last.sequence, last.hash.clone());
            }
        }
        Ok(pb::VerifyAuditChainResponse {
            valid: true,
            verified_count: verified,
            first_invalid_sequence: 0,
            reason: String::new(),
            head_sequence: head.0,
            head_hash: head.1,
        })
    }

    async fn retention(&self) -> ApiResult<pb::AuditRetention> {
        let b: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM notifications_retention WHERE id = 1")
                .fetch_optional(self.engine.db.reader())
                .await?;
        Ok(
            b.and_then(|b| pb::AuditRetention::decode(b.as_slice()).ok())
                .unwrap_or_default(),
        )
    }
}

/// Prunes entries older than the retention (see [`Engine::prune_audit`]).
pub async fn prune(
    engine: &Engine,
    uow: &mut crate::engine::Uow,
    keep_for_secs: i64,
) -> ApiResult<()> {
    engine.prune_audit(uow, keep_for_secs).await
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn query_audit(
        &self,
        request: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<pb::QueryAuditResponse>, Status> {
        let c = caller(&request)?;
        self.query(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::ExportAuditResponse>>, Status> {
        let c = caller(&request)?;
        let limits = tenure_platform::limits::stream_limits_of(&request);
        let f = request.into_inner().filter.unwrap_or_default();
        let w = build_filter(&f, &c.principal_id).map_err(status)?;
        authorize(&self.engine, &c, &f).await.map_err(status)?;
        let snapshot: Option<i64> =
            sqlx::query_scalar("SELECT MAX(sequence) FROM notifications_audit")
                .fetch_one(self.engine.db.reader())
                .await
                .map_err(|e| status(e.into()))?;
        let snapshot = snapshot.unwrap_or(0);
        let engine = self.engine.clone();
        let w = Arc::new(w);
        // The next page is read (on SQLite's thread) while this one is encoded.
        let page_after = move |after: i64| {
            let (engine, w) = (engine.clone(), w.clone());
            tokio::spawn(async move {
                fetch(
                    &engine.db,
                    &w,
                    " AND sequence > ? AND sequence <= ?",
                    &[after, snapshot],
                    "ASC",
                    5000,
                )
                .await
            })
        };
        let stream = async_stream::try_stream! {
            let mut chunks = Chunks::new();
            let mut next = page_after(0);
            loop {
                let page = next.await.map_err(|e| ApiError::Internal(e.into()))??;
                let Some(last) = page.last().map(|e| e.sequence) else {
                    break;
                };
                next = page_after(last);
                for e in &page {
                    let (a, b) = chunks.push(e);
                    for full in a.into_iter().chain(b) {
                        yield full;
                    }
                }
            }
            if let Some(rest) = chunks.finish() {
                yield rest;
            }
        };
        Ok(Response::new(tenure_platform::limits::bounded_stream(
            stream.map(|r: ApiResult<pb::ExportAuditResponse>| r.map_err(status)),
            limits,
        )))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            require(&self.engine, &c, READ).await?;
            self.verify(r).await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn get_audit_retention(
        &self,
        request: Request<pb::GetAuditRetentionRequest>,
    ) -> Result<Response<pb::GetAuditRetentionResponse>, Status> {
        let c = caller(&request)?;
        async {
            require(&self.engine, &c, READ).await?;
            let retention = self.retention().await?;
            let oldest: Option<i64> =
                sqlx::query_scalar("SELECT MIN(sequence) FROM notifications_audit")
                    .fetch_one(self.engine.db.reader())
                    .await?;
            Ok(pb::GetAuditRetentionResponse {
                retention: Some(retention),
                oldest_sequence: oldest.unwrap_or(0),
            })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn update_audit_retention(
        &self,
        request: Request<pb::UpdateAuditRetentionRequest>,
    ) -> Result<Response<pb::UpdateAuditRetentionResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let engine = self.engine.clone();
        async {
            let keep = r.retention.as_ref().and_then(|x| x.keep_for);
            if let Some(k) = &keep
                && (k.seconds < 30 * 86400 || k.nanos != 0)
            {
                return Err(ApiError::invalid("retention.keep_for", "must be at least 30 days (whole seconds), or unset to keep everything"));
            }
            if let Some(k) = &keep
                && k.seconds > MAX_RETENTION_SECS
            {
                return Err(ApiError::invalid(
                    "retention.keep_for",
                    "must be at most 1,000 years, or unset to keep everything",
                ));
            }
            require(&engine, &c, WRITE).await?;
            let before = self.retention().await?;
            let after = pb::AuditRetention {
                keep_for: keep,
                update_time: Some(to_proto(engine.now())),
                updated_by: c.principal_id.clone(),
            };
            let e2 = engine.clone();
            let who = c.principal_id.clone();
            idempotent(&engine, "UpdateAuditRetention", &r.request_id, &c.principal_id, move |uow| {
                Box::pin(async move {
                    let secs = after.keep_for.as_ref().map_or(0, |d| d.seconds);
                    sqlx::query(
                        "INSERT INTO notifications_retention (id, keep_for_secs, body) VALUES (1, $1, $2) \
                         ON CONFLICT (id) DO UPDATE SET keep_for_secs = excluded.keep_for_secs, body = excluded.body",
                    )
                    .bind(secs)
                    .bind(after.encode_to_vec())
                    .execute(&mut **uow.tx())
                    .await?;
                    uow.emit(NewEvent::new(
                        pb::AuditRetentionChanged { before: Some(before), after: Some(after.clone()) },
                        who,
                        "audit",
                    ));
                    prune(&e2, uow, secs).await?;
                    Ok(pb::UpdateAuditRetentionResponse { retention: Some(after) })
                })
            })
            .await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filters_become_numbered_placeholders_in_order() {
        let f = pb::AuditFilter {
            actor_ids: vec!["a".into(), "b".into()],
            role_id: "r".into(),
            actions: vec!["X".into()],
            mine_only: true,
            ..Default::default()
        };
        let w = build_filter(&f, "me").unwrap();
        assert!(w.sql.contains("actor_id IN ($1, $2)"), "{}", w.sql);
        assert!(w.sql.contains("role_id = $3"));
        assert!(
            w.sql.contains("(action IN ($4) OR full_action IN ($5))"),
            "{}",
            w.sql
        );
        assert!(
            w.sql
                .contains("(actor_id = $6 OR target_principal_id = $7)")
        );
        assert_eq!(w.binds.len(), 7);
    }

    /// The page query filtered by source contexts (one, several, repeated, all), as
    /// QueryAudit pages it both ways and as ExportAudit reads it: on SQLite it walks
    /// the `(source_context, sequence)` index in order, with no temp B-tree for the
    /// ORDER BY (the plan that read every entry of the context and sorted them); on
    /// both backends it returns exactly the entries of those contexts, in order.
    #[tokio::test]
    async fn a_page_filtered_by_source_context_walks_the_index_in_order() {
        let test_db = tenure_platform::testing::TestDb::new().await.unwrap();
        let db = test_db.connect_context(crate::PREFIX).await.unwrap();
        db.migrate(crate::schema::migrations(db.backend()))
            .await
            .unwrap();
        const CONTEXTS: [&str; 4] = ["assignments", "activation", "reviews", "notifications"];
        // Irregularly interleaved, as consumers of four streams append them.
        let context_of = |i: i64| CONTEXTS[usize::try_from((i * 7 + i / 3) % 4).unwrap()];
        let n = 2000i64;
        let mut tx = db.begin().await.unwrap();
        for chunk in (1..=n).collect::<Vec<_>>().chunks(200) {
            let values: Vec<String> = (0..chunk.len())
                .map(|k| {
                    let b = k * 4;
                    format!(
                        "(${}, 0, 'a', 'X', 'x', '', '', '', '', ${}, ${}, 1, 'h', ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO notifications_audit (sequence, occurred_at, actor_id, action, full_action, \
                 target_principal_id, role_id, scope_id, request_id, source_context, source_sequence, result, hash, body) \
                 VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for i in chunk {
                let e = pb::AuditEntry {
                    sequence: *i,
                    source_context: context_of(*i).into(),
                    source_sequence: *i,
                    ..Default::default()
                };
                q = q
                    .bind(*i)
                    .bind(context_of(*i))
                    .bind(*i)
                    .bind(e.encode_to_vec());
            }
            q.execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();

        let on_sqlite = db.backend() == tenure_platform::db::Backend::Sqlite;
        let shapes: [(&[&str], bool); 5] = [
            (&["activation"], false),
            (&["activation"], true),
            (&["reviews", "activation"], false),
            (&["reviews", "activation", "activation"], true),
            (&CONTEXTS, false),
        ];
        for (contexts, newest_first) in shapes {
            let f = pb::AuditFilter {
                source_contexts: contexts.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            };
            let w = build_filter(&f, "me").unwrap();
            let (extra, order) = if newest_first {
                (" AND sequence < ?", "DESC")
            } else {
                (" AND sequence > ?", "ASC")
            };
            let mut expected: Vec<i64> = (1..=n)
                .filter(|i| contexts.contains(&context_of(*i)))
                .collect();
            if newest_first {
                expected.reverse();
            }
            // Paged as QueryAudit pages, 150 at a time.
            let mut got = Vec::new();
            let mut cursor = if newest_first { n + 1 } else { 0 };
            loop {
                let page = fetch(&db, &w, extra, &[cursor], order, 150).await.unwrap();
                let Some(last) = page.last() else { break };
                cursor = last.sequence;
                assert!(
                    page.iter()
                        .all(|e| contexts.contains(&e.source_context.as_str()))
                );
                got.extend(page.iter().map(|e| e.sequence));
            }
            assert_eq!(got, expected, "{contexts:?} newest first {newest_first}");
            // As ExportAudit reads: after a sequence, up to its snapshot.
            let export = fetch(
                &db,
                &w,
                " AND sequence > ? AND sequence <= ?",
                &[100, 1100],
                "ASC",
                5000,
            )
            .await
            .unwrap();
            let want: Vec<i64> = (101..=1100)
                .filter(|i| contexts.contains(&context_of(*i)))
                .collect();
            assert_eq!(export.iter().map(|e| e.sequence).collect::<Vec<_>>(), want);
            if !on_sqlite {
                continue;
            }
            for (extra, binds, order) in [
                (extra, &[cursor][..], order),
                (" AND sequence > ? AND sequence <= ?", &[0, n][..], "ASC"),
            ] {
                let sql = format!(
                    "EXPLAIN QUERY PLAN {}",
                    page_sql(&w, extra, binds.len(), order)
                );
                let plan: Vec<String> = bound(&sql, &w, binds, 150)
                    .fetch_all(db.reader())
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.try_get::<String, _>("detail").unwrap())
                    .collect();
                assert!(
                    !plan.iter().any(|d| d.contains("TEMP B-TREE")),
                    "{contexts:?}: {plan:?}"
                );
                assert!(
                    plan.iter()
                        .any(|d| d.contains("USING INDEX notifications_audit_context")),
                    "{contexts:?}: {plan:?}"
                );
            }
        }
    }

    /// The export's chunks: whole rows, header first, at most 64 KiB each unless one
    /// row alone is larger, counted right, and together the whole CSV.
    #[test]
    fn export_chunks_are_whole_rows_of_at_most_64_kib() {
        let entries: Vec<pb::AuditEntry> = (1..=2000)
            .map(|i| pb::AuditEntry {
                sequence: i,
                action: "RequestApproved".into(),
                // Now and then a long justification, twice one longer than a chunk.
                justification: match i {
                    700 | 1500 => "x".repeat(100 * 1024),
                    _ if i % 97 == 0 => "why, \"really\"\n".repeat(500),
                    _ => "month-end".into(),
                },
                hash: format!("{i:064x}"),
                ..Default::default()
            })
            .collect();
        let mut chunks = Vec::new();
        let mut c = Chunks::new();
        for e in &entries {
            let (a, b) = c.push(e);
            chunks.extend(a.into_iter().chain(b));
        }
        chunks.extend(c.finish());
        let mut whole = Vec::new();
        rules::write_csv_header(&mut whole);
        for e in &entries {
            rules::write_csv_row(&mut whole, e);
        }
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.csv_chunk.clone()).collect();
        assert_eq!(joined, whole);
        assert_eq!(chunks.iter().map(|c| c.row_count).sum::<i32>(), 2000);
        assert!(chunks[0].csv_chunk.starts_with(b"sequence,"));
        for c in &chunks {
            assert!(c.csv_chunk.ends_with(b"\r\n"));
            assert!(
                c.csv_chunk.len() <= MAX_CHUNK || c.row_count == 1,
                "{} bytes in {} rows",
                c.csv_chunk.len(),
                c.row_count
            );
        }
        assert_eq!(
            chunks
                .iter()
                .filter(|c| c.csv_chunk.len() > MAX_CHUNK)
                .count(),
            2
        );
    }

    #[test]
    fn end_before_start_names_the_field() {
        let f = pb::AuditFilter {
            start_time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 50,
                nanos: 0,
            }),
            ..Default::default()
        };
        let e = build_filter(&f, "me").unwrap_err();
        assert!(format!("{e:?}").contains("filter.end_time"));
    }
}
