//! `AssignmentsService`: eligible and active assignments made by administrators, and
//! the instances in effect.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::Row as _;
use tenure_platform::auth::Caller;
use tenure_platform::clock::{from_proto, to_micros};
use tenure_platform::events::{NewEvent, UnitOfWork};
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult, FieldViolation, Violations};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1 as common;
use tonic::{Request, Response, Status};

use crate::core::{Core, Page};
use crate::policy::{AssignmentPolicy, assignment_policy};
use crate::store::{self, AssignmentRow, NewAssignment};

/// Allowed clock skew for a start "now" given by a client.
const START_SKEW: TimeDelta = TimeDelta::minutes(5);
/// The shortest assignment window.
const MIN_WINDOW: TimeDelta = TimeDelta::minutes(5);
/// The longest justification or ticket field.
const MAX_TEXT: usize = 2000;

/// The gRPC adapter.
#[derive(Clone)]
pub struct AssignmentsApi {
    /// The context core.
    pub core: Arc<Core>,
}

/// Whether `principal_id` is the caller or a group the caller belongs to (transitively):
/// nobody creates, changes or removes their own assignments, also not through a group.
pub fn is_self(core: &Core, caller: &Caller, principal_id: &str) -> bool {
    if principal_id == caller.principal_id {
        return true;
    }
    let m = core.model();
    m.subjects(&caller.principal_id)
        .iter()
        .any(|(s, _)| &**s == principal_id)
}

fn check_text(v: &mut Violations, field: &str, s: &str) {
    v.check(
        s.len() > MAX_TEXT,
        field,
        format!("must be at most {MAX_TEXT} characters"),
    );
    v.check(
        s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
        field,
        "must not contain control characters",
    );
}

/// Resolves a schedule input against the policy: (start, end or None for permanent).
fn resolve_schedule(
    v: &mut Violations,
    input: Option<&pb::ScheduleInput>,
    now: DateTime<Utc>,
    policy: &AssignmentPolicy,
) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
    let start = match input.and_then(|s| s.start_time.as_ref()) {
        None => now,
        Some(ts) => match from_proto(ts) {
            Some(t) if t < now - START_SKEW => {
                v.add("schedule.start_time", "must not be in the past");
                now
            }
            Some(t) => t.max(now),
            None => {
                v.add("schedule.start_time", "is not a valid timestamp");
                now
            }
        },
    };
    use pb::schedule_input::Expiration as E;
    let end = match input.and_then(|s| s.expiration.as_ref()) {
        Some(E::Permanent(true)) => {
            if !policy.allow_permanent {
                v.add(
                    "schedule.permanent",
                    "permanent assignments of this type are not allowed by the role's settings",
                );
            }
            None
        }
        Some(E::EndTime(ts)) => match from_proto(ts) {
            Some(e) => Some(e),
            None => {
                v.add("schedule.end_time", "is not a valid timestamp");
                None
            }
        },
        Some(E::Duration(d)) => {
            match TimeDelta::new(d.seconds, u32::try_from(d.nanos).unwrap_or(u32::MAX)) {
                Some(d) if d > TimeDelta::zero() => Some(start + d),
                _ => {
                    v.add("schedule.duration", "must be a positive duration");
                    None
                }
            }
        }
        Some(E::Permanent(false)) | None => Some(start + policy.expire_after),
    };
    if let Some(e) = end {
        if e <= start {
            v.add("schedule.end_time", "must be after schedule.start_time");
        } else if e - start < MIN_WINDOW {
            v.add("schedule.end_time", "the window must be at least 5 minutes");
        } else if e - start > policy.expire_after {
            v.add(
                "schedule.end_time",
                format!(
                    "the window exceeds the role's maximum of {} days for this assignment type",
                    policy.expire_after.num_days()
                ),
            );
        }
    }
    (start, end)
}

fn require_mfa(core: &Core, caller: &Caller, policy: &AssignmentPolicy) -> ApiResult<()> {
    if policy.require_mfa && !caller.has_fresh_mfa(core.clock.now(), policy.mfa_max_age) {
        return Err(ApiError::Unauthenticated(format!(
            "MFA_STEP_UP_REQUIRED: the role's settings require a multi-factor sign-in within the last {} minutes",
            policy.mfa_max_age.num_minutes()
        )));
    }
    Ok(())
}

fn assignment_type(v: &mut Violations, field: &str, t: i32) -> common::AssignmentType {
    match common::AssignmentType::try_from(t) {
        Ok(common::AssignmentType::Eligible) => common::AssignmentType::Eligible,
        Ok(common::AssignmentType::Active) => common::AssignmentType::Active,
        _ => {
            v.add(
                field,
                "must be ASSIGNMENT_TYPE_ELIGIBLE or ASSIGNMENT_TYPE_ACTIVE",
            );
            common::AssignmentType::Unspecified
        }
    }
}

/// Whether a role may be assigned at a scope: directory roles only at "/"; every role
/// only within its assignable scopes.
fn check_role_scope(core: &Core, v: &mut Violations, field: &str, role_id: &str, scope_id: &str) {
    let m = core.model();
    let Some(role) = m.roles.get(role_id) else {
        return;
    };
    if role.kind == pb::RoleKind::Directory && scope_id != "/" {
        v.add(field, "a directory role can only be assigned at \"/\"");
    }
    drop(m);
    // Assignable scopes are stored on the role row; the catalogue allows "/".
}

/// The window an assignment would occupy, to look for overlaps.
struct Slot<'a> {
    t: common::AssignmentType,
    principal: &'a str,
    role: &'a str,
    scope: &'a str,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
}

/// An overlapping assignment of the same type, principal, role and scope (other than
/// `except`), if any.
async fn overlapping(
    uow: &mut tenure_platform::events::UnitOfWork<pb::Event>,
    slot: &Slot<'_>,
    except: Option<&str>,
) -> ApiResult<Option<String>> {
    let rows = sqlx::query(
        "SELECT id, start_at, end_at FROM assignments_assignments WHERE assignment_type = $1 AND principal_id = $2 \
         AND role_id = $3 AND scope_id = $4 AND removed_at IS NULL",
    )
    .bind(i64::from(i32::from(slot.t)))
    .bind(slot.principal)
    .bind(slot.role)
    .bind(slot.scope)
    .fetch_all(&mut **uow.tx())
    .await?;
    let (s, e) = (to_micros(slot.start), slot.end.map(to_micros));
    for r in rows {
        let id: String = r.try_get("id")?;
        if Some(id.as_str()) == except {
            continue;
        }
        let (os, oe): (i64, Option<i64>) = (r.try_get("start_at")?, r.try_get("end_at")?);
        if e.is_none_or(|e| os < e) && oe.is_none_or(|oe| s < oe) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Ends the activations made from an eligibility; returns their ids.
async fn end_activations_of(
    uow: &mut tenure_platform::events::UnitOfWork<pb::Event>,
    core: &Core,
    eligibility_id: &str,
    reason: pb::InstanceEndReason,
    actor: &str,
    justification: &str,
) -> ApiResult<Vec<String>> {
    let now = uow.now();
    let now_us = to_micros(now);
    let rows = sqlx::query(&format!(
        "SELECT {} FROM assignments_activations WHERE eligibility_id = $1 AND ended_at IS NULL AND end_at > $2",
        store::ACTIVATION_COLUMNS
    ))
    .bind(eligibility_id)
    .bind(now_us)
    .fetch_all(&mut **uow.tx())
    .await?;
    let mut ended = Vec::new();
    for r in rows {
        let mut a = store::activation_from_row(&r)?;
        sqlx::query(
            "UPDATE assignments_activations SET ended_at = $1, end_reason = $2 WHERE id = $3",
        )
        .bind(now_us)
        .bind(i64::from(i32::from(reason)))
        .bind(&a.id)
        .execute(&mut **uow.tx())
        .await?;
        a.ended_at = Some(now_us);
        a.end_reason = reason.into();
        let instance = store::activation_proto(core, &a, now);
        uow.emit(
            NewEvent::new(
                pb::InstanceDeactivated {
                    instance: Some(instance),
                    reason: reason.into(),
                    justification: justification.to_owned(),
                },
                actor,
                &a.id,
            )
            .correlated(a.request_id.clone()),
        );
        ended.push(a.id);
    }
    Ok(ended)
}

/// Why and by whom an assignment is removed.
pub struct Removal<'a> {
    /// The reason recorded.
    pub reason: pb::RemovalReason,
    /// Who removes it.
    pub actor: &'a str,
    /// Why, in words.
    pub justification: &'a str,
    /// The change ticket, if any.
    pub ticket: Option<common::TicketInfo>,
    /// What asked for it (for example a review decision id).
    pub source_reference: &'a str,
}

/// Removes an assignment inside a unit of work (used by RemoveAssignment and by
/// principal deletion). Returns the ended activation ids.
pub async fn remove_in(
    uow: &mut tenure_platform::events::UnitOfWork<pb::Event>,
    core: &Core,
    row: &AssignmentRow,
    removal: Removal<'_>,
) -> ApiResult<Vec<String>> {
    let Removal {
        reason,
        actor,
        justification,
        ticket,
        source_reference,
    } = removal;
    let now = uow.now();
    let now_us = to_micros(now);
    sqlx::query(
        "UPDATE assignments_assignments SET removed_at = $1, removal_reason = $2, updated_by = $3, updated_at = $1, \
         version = version + 1 WHERE id = $4",
    )
    .bind(now_us)
    .bind(i64::from(i32::from(reason)))
    .bind(actor)
    .bind(&row.id)
    .execute(&mut **uow.tx())
    .await?;
    let ended = if row.assignment_type == i32::from(common::AssignmentType::Eligible) {
        end_activations_of(
            uow,
            core,
            &row.id,
            pb::InstanceEndReason::EligibilityRemoved,
            actor,
            justification,
        )
        .await?
    } else {
        Vec::new()
    };
    let mut after = row.clone();
    after.removed_at = Some(now_us);
    after.removal_reason = reason.into();
    after.updated_by = actor.to_owned();
    after.updated_at = now_us;
    after.version += 1;
    uow.emit(NewEvent::new(
        pb::AssignmentRemoved {
            assignment: Some(store::assignment_proto(core, &after, now)),
            reason: reason.into(),
            justification: justification.to_owned(),
            ticket,
            source_reference: source_reference.to_owned(),
            ended_instance_ids: ended.clone(),
        },
        actor,
        &row.id,
    ));
    Ok(ended)
}

/// The most assignments one CreateAssignments call creates.
pub const MAX_BATCH: usize = 1000;

/// What CreateAssignment and each item of CreateAssignments ask to create.
struct CreateInput<'a> {
    assignment_type: i32,
    principal_id: &'a str,
    role_id: &'a str,
    scope_id: &'a str,
    schedule: Option<&'a pb::ScheduleInput>,
    justification: &'a str,
    ticket: Option<&'a common::TicketInfo>,
}

impl<'a> From<&'a pb::CreateAssignmentRequest> for CreateInput<'a> {
    fn from(r: &'a pb::CreateAssignmentRequest) -> Self {
        Self {
            assignment_type: r.assignment_type,
            principal_id: &r.principal_id,
            role_id: &r.role_id,
            scope_id: &r.scope_id,
            schedule: r.schedule.as_ref(),
            justification: &r.justification,
            ticket: r.ticket.as_ref(),
        }
    }
}

impl<'a> From<&'a pb::CreateAssignmentsItem> for CreateInput<'a> {
    fn from(r: &'a pb::CreateAssignmentsItem) -> Self {
        Self {
            assignment_type: r.assignment_type,
            principal_id: &r.principal_id,
            role_id: &r.role_id,
            scope_id: &r.scope_id,
            schedule: r.schedule.as_ref(),
            justification: &r.justification,
            ticket: r.ticket.as_ref(),
        }
    }
}

/// Names the field of a batch item an error is about (`at` = "items[3]."); for a single
/// call (`at` empty) the error is unchanged. Field violations carry their own names.
fn name_field(e: ApiError, at: &str, field: &str) -> ApiError {
    if at.is_empty() {
        return e;
    }
    match e {
        ApiError::NotFound { kind, id } => ApiError::NotFound {
            kind,
            id: format!("{at}{field}: {id}"),
        },
        ApiError::PermissionDenied(m) => ApiError::PermissionDenied(format!("{at}{field}: {m}")),
        ApiError::Unauthenticated(m) => ApiError::Unauthenticated(format!("{at}{field}: {m}")),
        ApiError::InvalidArgument(list) => ApiError::InvalidArgument(
            list.into_iter()
                .map(|v| {
                    let name = if v.field.is_empty() || v.field == field {
                        format!("{at}{field}")
                    } else {
                        format!("{at}{}", v.field)
                    };
                    FieldViolation::new(name, v.description)
                })
                .collect(),
        ),
        other => other,
    }
}

/// Whether two windows `[start, end)` (an end of `None` is permanent) overlap.
fn windows_overlap(a: (i64, Option<i64>), b: (i64, Option<i64>)) -> bool {
    a.1.is_none_or(|ae| b.0 < ae) && b.1.is_none_or(|be| a.0 < be)
}

/// Pairs (later, earlier) of inputs of one batch with the same type, principal, role
/// and scope whose windows overlap.
fn duplicates_in_batch(news: &[NewAssignment]) -> Vec<(usize, usize)> {
    let mut by_key: HashMap<(common::AssignmentType, &str, &str, &str), Vec<usize>> =
        HashMap::with_capacity(news.len());
    let mut out = Vec::new();
    for (i, n) in news.iter().enumerate() {
        let key = (
            n.assignment_type,
            n.principal_id.as_str(),
            n.role_id.as_str(),
            n.scope_id.as_str(),
        );
        let earlier = by_key.entry(key).or_default();
        let window = (to_micros(n.start), n.end.map(to_micros));
        if let Some(&j) = earlier.iter().find(|&&j| {
            windows_overlap(
                window,
                (to_micros(news[j].start), news[j].end.map(to_micros)),
            )
        }) {
            out.push((i, j));
        }
        earlier.push(i);
    }
    out
}

/// The first new assignment (by index) that overlaps a stored one of the same type,
/// principal, role and scope, with the stored one's id. One query per 500 principals.
async fn first_overlap(
    uow: &mut UnitOfWork<pb::Event>,
    news: &[NewAssignment],
) -> ApiResult<Option<(usize, String)>> {
    let mut principals: Vec<&str> = news.iter().map(|n| n.principal_id.as_str()).collect();
    principals.sort_unstable();
    principals.dedup();
    type Key = (i32, String, String, String);
    let mut stored: HashMap<Key, Vec<(String, i64, Option<i64>)>> = HashMap::new();
    for chunk in principals.chunks(store::IN_CHUNK) {
        let sql = format!(
            "SELECT id, assignment_type, principal_id, role_id, scope_id, start_at, end_at \
             FROM assignments_assignments WHERE removed_at IS NULL AND principal_id IN ({})",
            store::placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q.bind(*p);
        }
        for r in q.fetch_all(&mut **uow.tx()).await? {
            let key = (
                i32::try_from(r.try_get::<i64, _>("assignment_type")?).unwrap_or(0),
                r.try_get("principal_id")?,
                r.try_get("role_id")?,
                r.try_get("scope_id")?,
            );
            stored.entry(key).or_default().push((
                r.try_get("id")?,
                r.try_get("start_at")?,
                r.try_get("end_at")?,
            ));
        }
    }
    for (i, n) in news.iter().enumerate() {
        let key = (
            i32::from(n.assignment_type),
            n.principal_id.clone(),
            n.role_id.clone(),
            n.scope_id.clone(),
        );
        let window = (to_micros(n.start), n.end.map(to_micros));
        if let Some((id, _, _)) = stored
            .get(&key)
            .into_iter()
            .flatten()
            .find(|(_, s, e)| windows_overlap(window, (*s, *e)))
        {
            return Ok(Some((i, id.clone())));
        }
    }
    Ok(None)
}

impl AssignmentsApi {
    /// Whether the caller may read assignments of `principal_id` at `scope_id`.
    fn may_read(&self, caller: &Caller, principal_id: &str, scope_id: &str) -> bool {
        self.core.can_read_all(caller)
            || self
                .core
                .has_permission(&caller.principal_id, "tenure/assignments/read", scope_id)
            || is_self(&self.core, caller, principal_id)
    }

    async fn create(
        &self,
        caller: &Caller,
        r: pb::CreateAssignmentRequest,
    ) -> ApiResult<pb::CreateAssignmentResponse> {
        const METHOD: &str = "CreateAssignment";
        if let Some(done) = self
            .core
            .replay(METHOD, &r.request_id, &caller.principal_id)
            .await?
        {
            return Ok(done);
        }
        let (uow, mut created) = self
            .create_in(caller, &[CreateInput::from(&r)], false, r.validate_only)
            .await?;
        let response = pb::CreateAssignmentResponse {
            assignment: created.pop(),
        };
        self.finish(
            uow,
            caller,
            METHOD,
            &r.request_id,
            r.validate_only,
            response,
        )
        .await
    }

    async fn create_many(
        &self,
        caller: &Caller,
        r: pb::CreateAssignmentsRequest,
    ) -> ApiResult<pb::CreateAssignmentsResponse> {
        const METHOD: &str = "CreateAssignments";
        if let Some(done) = self
            .core
            .replay(METHOD, &r.request_id, &caller.principal_id)
            .await?
        {
            return Ok(done);
        }
        if r.items.is_empty() || r.items.len() > MAX_BATCH {
            return Err(ApiError::invalid(
                "items",
                format!(
                    "must hold 1 to {MAX_BATCH} assignments; send larger sets in several calls"
                ),
            ));
        }
        let inputs: Vec<CreateInput<'_>> = r.items.iter().map(CreateInput::from).collect();
        let (uow, assignments) = self
            .create_in(caller, &inputs, true, r.validate_only)
            .await?;
        let response = pb::CreateAssignmentsResponse { assignments };
        self.finish(
            uow,
            caller,
            METHOD,
            &r.request_id,
            r.validate_only,
            response,
        )
        .await
    }

    /// Ends a create call: rolls back a dry run, or remembers the response for
    /// `request_id` and commits.
    async fn finish<R: prost::Message>(
        &self,
        mut uow: UnitOfWork<pb::Event>,
        caller: &Caller,
        method: &str,
        request_id: &str,
        validate_only: bool,
        response: R,
    ) -> ApiResult<R> {
        if validate_only {
            uow.rollback().await?;
            return Ok(response);
        }
        self.core
            .remember(
                &mut uow,
                method,
                request_id,
                &caller.principal_id,
                &response,
            )
            .await?;
        self.core.commit(uow).await?;
        Ok(response)
    }

    /// Checks one assignment to create: everything CreateAssignment checks before it
    /// looks for overlaps in the database, in the same order. `at` prefixes the fields
    /// errors name: "" for CreateAssignment, "items[3]." for an item of a batch.
    /// `policies` keeps the role settings already read in this call.
    async fn check_new(
        &self,
        caller: &Caller,
        r: &CreateInput<'_>,
        at: &str,
        now: DateTime<Utc>,
        policies: &mut HashMap<(String, String, common::AssignmentType), AssignmentPolicy>,
    ) -> ApiResult<NewAssignment> {
        let f = |name: &str| format!("{at}{name}");
        let mut v = Violations::new();
        let t = assignment_type(&mut v, &f("assignment_type"), r.assignment_type);
        v.check(r.principal_id.is_empty(), f("principal_id"), "is required");
        v.check(r.role_id.is_empty(), f("role_id"), "is required");
        v.check(r.scope_id.is_empty(), f("scope_id"), "is required");
        check_text(&mut v, &f("justification"), r.justification);
        if let Some(tk) = r.ticket {
            check_text(&mut v, &f("ticket.ticket_number"), &tk.ticket_number);
            check_text(&mut v, &f("ticket.ticket_system"), &tk.ticket_system);
        }
        std::mem::take(&mut v).finish()?;
        let named = |field: &'static str| move |e: ApiError| name_field(e, at, field);
        self.core
            .known_principal("principal_id", r.principal_id)
            .map_err(named("principal_id"))?;
        self.core
            .known_role("role_id", r.role_id)
            .map_err(named("role_id"))?;
        self.core
            .known_scope("scope_id", r.scope_id)
            .map_err(named("scope_id"))?;
        self.core
            .require(caller, "tenure/assignments/write", r.scope_id)
            .map_err(named("scope_id"))?;
        if is_self(&self.core, caller, r.principal_id) {
            return Err(name_field(
                ApiError::denied(
                    "nobody creates assignments for themselves (or for a group they belong to)",
                ),
                at,
                "principal_id",
            ));
        }
        if !self
            .core
            .model()
            .principals
            .get(r.principal_id)
            .is_some_and(|p| p.enabled)
        {
            v.add(f("principal_id"), "the principal is disabled");
        }
        check_role_scope(&self.core, &mut v, &f("scope_id"), r.role_id, r.scope_id);
        let key = (r.role_id.to_owned(), r.scope_id.to_owned(), t);
        let policy = match policies.get(&key) {
            Some(p) => p.clone(),
            None => {
                let p = assignment_policy(&self.core, r.role_id, r.scope_id, t)
                    .await
                    .map_err(named("role_id"))?;
                policies.insert(key, p.clone());
                p
            }
        };
        let mut sv = Violations::new();
        let (start, end) = resolve_schedule(&mut sv, r.schedule, now, &policy);
        if let Err(ApiError::InvalidArgument(list)) = sv.finish() {
            for fv in list {
                v.add(f(&fv.field), fv.description);
            }
        }
        if policy.require_justification && r.justification.trim().is_empty() {
            v.add(
                f("justification"),
                "is required by the role's settings for active assignments",
            );
        }
        v.finish()?;
        if t == common::AssignmentType::Active {
            require_mfa(&self.core, caller, &policy).map_err(named("assignment_type"))?;
        }
        Ok(NewAssignment {
            id: uuid::Uuid::now_v7().to_string(),
            assignment_type: t,
            principal_id: r.principal_id.to_owned(),
            role_id: r.role_id.to_owned(),
            scope_id: r.scope_id.to_owned(),
            start,
            end,
            justification: r.justification.trim().to_owned(),
            ticket: r.ticket.cloned(),
            actor: caller.principal_id.clone(),
        })
    }

    /// Checks and writes new assignments in one unit of work with one
    /// `AssignmentCreated` event each, all or nothing. `batch`: the inputs are the
    /// items of CreateAssignments, and errors name them by index; the lowest-index bad
    /// item decides the code, and when that is INVALID_ARGUMENT the bad fields of every
    /// item are reported together. With `validate_only` nothing is written. Returns the
    /// unit of work (to commit or roll back) and the assignments in input order.
    async fn create_in(
        &self,
        caller: &Caller,
        inputs: &[CreateInput<'_>],
        batch: bool,
        validate_only: bool,
    ) -> ApiResult<(UnitOfWork<pb::Event>, Vec<pb::Assignment>)> {
        let now = self.core.clock.now();
        let at = |i: usize| {
            if batch {
                format!("items[{i}].")
            } else {
                String::new()
            }
        };
        let mut policies = HashMap::new();
        let mut news = Vec::with_capacity(inputs.len());
        let mut invalid: Vec<FieldViolation> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match self
                .check_new(caller, input, &at(i), now, &mut policies)
                .await
            {
                Ok(n) => news.push(n),
                Err(ApiError::InvalidArgument(list)) => invalid.extend(list),
                // A lower-index item was invalid already: that one decides.
                Err(_) if !invalid.is_empty() => {}
                Err(e) => return Err(e),
            }
        }
        if !invalid.is_empty() {
            return Err(ApiError::InvalidArgument(invalid));
        }
        let duplicates = duplicates_in_batch(&news);
        if !duplicates.is_empty() {
            return Err(ApiError::InvalidArgument(
                duplicates
                    .into_iter()
                    .map(|(later, earlier)| {
                        FieldViolation::new(
                            format!("items[{later}]"),
                            format!(
                                "overlaps items[{earlier}]: the same type, principal, role and scope with overlapping windows"
                            ),
                        )
                    })
                    .collect(),
            ));
        }
        let mut uow = self.core.begin().await?;
        if let Some((i, id)) = first_overlap(&mut uow, &news).await? {
            uow.rollback().await?;
            return Err(ApiError::AlreadyExists {
                kind: "overlapping assignment",
                id: if batch {
                    format!("{id} (items[{i}]; extend or update it instead)")
                } else {
                    format!("{id} (extend or update it instead)")
                },
            });
        }
        let created: Vec<pb::Assignment> = news
            .iter()
            .map(|n| store::assignment_proto(&self.core, &n.to_row(now), now))
            .collect();
        if validate_only {
            return Ok((uow, created));
        }
        store::insert_assignments(&mut uow, &news).await?;
        for (n, a) in news.iter().zip(&created) {
            uow.emit(NewEvent::new(
                pb::AssignmentCreated {
                    assignment: Some(a.clone()),
                },
                &caller.principal_id,
                &n.id,
            ));
        }
        Ok((uow, created))
    }

    /// The assignment a change is about, once the caller may change it: it holds
    /// `tenure/assignments/write` at the assignment's scope, and the assignment is not
    /// its own (nor its group's).
    async fn load_for_change(
        &self,
        caller: &Caller,
        id: &str,
        verb: &str,
    ) -> ApiResult<AssignmentRow> {
        let row = self.load(id).await?;
        self.core
            .require(caller, "tenure/assignments/write", &row.scope_id)?;
        if is_self(&self.core, caller, &row.principal_id) {
            return Err(ApiError::denied(format!(
                "nobody {verb} their own assignments"
            )));
        }
        Ok(row)
    }

    async fn load(&self, id: &str) -> ApiResult<AssignmentRow> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        store::get_assignment(&self.core, id)
            .await?
            .ok_or_else(|| ApiError::not_found("assignment", id))
    }

    async fn update(
        &self,
        caller: &Caller,
        r: pb::UpdateAssignmentRequest,
    ) -> ApiResult<pb::UpdateAssignmentResponse> {
        const METHOD: &str = "UpdateAssignment";
        if let Some(done) = self
            .core
            .replay(METHOD, &r.request_id, &caller.principal_id)
            .await?
        {
            return Ok(done);
        }
        let want = r
            .assignment
            .clone()
            .ok_or_else(|| ApiError::invalid("assignment", "is required"))?;
        let row = self.load(&want.id).await.map_err(|e| match e {
            ApiError::InvalidArgument(_) => ApiError::invalid("assignment.id", "is required"),
            other => other,
        })?;
        self.core
            .require(caller, "tenure/assignments/write", &row.scope_id)?;
        if is_self(&self.core, caller, &row.principal_id) {
            return Err(ApiError::denied("nobody changes their own assignments"));
        }
        let now = self.core.clock.now();
        let now_us = to_micros(now);
        match store::assignment_status(&row, now_us) {
            pb::AssignmentStatus::Removed => {
                return Err(ApiError::precondition("the assignment was removed"));
            }
            pb::AssignmentStatus::Expired => {
                return Err(ApiError::precondition(
                    "the assignment has expired; renew it instead",
                ));
            }
            _ => {}
        }
        if !want.etag.is_empty() && want.etag != row.version.to_string() {
            return Err(ApiError::precondition(
                "etag does not match: the assignment changed since it was read",
            ));
        }
        let paths: Vec<String> = r
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        let mut v = Violations::new();
        if paths.is_empty() {
            v.add(
                "update_mask",
                "name the fields to change: start_time, end_time, permanent",
            );
        }
        let t = common::AssignmentType::try_from(row.assignment_type)
            .unwrap_or(common::AssignmentType::Eligible);
        let policy = assignment_policy(&self.core, &row.role_id, &row.scope_id, t).await?;
        let mut start = tenure_platform::clock::from_micros(row.start_at);
        let mut end = row.end_at.map(tenure_platform::clock::from_micros);
        for p in &paths {
            match p.as_str() {
                "start_time" => {
                    if row.start_at <= now_us {
                        v.add(
                            "update_mask",
                            "start_time can only change before the assignment starts",
                        );
                    }
                    match want.start_time.as_ref().and_then(from_proto) {
                        Some(s) if s >= now - START_SKEW => start = s.max(now),
                        _ => v.add(
                            "assignment.start_time",
                            "must be a valid time not in the past",
                        ),
                    }
                }
                "end_time" => match want.end_time.as_ref().and_then(from_proto) {
                    Some(e) => end = Some(e),
                    None => v.add("assignment.end_time", "must be a valid time"),
                },
                "permanent" => {
                    if want.permanent {
                        if !policy.allow_permanent {
                            v.add("assignment.permanent", "permanent assignments of this type are not allowed by the role's settings");
                        }
                        end = None;
                    } else if end.is_none() {
                        end = Some(start + policy.expire_after);
                    }
                }
                other => v.add(
                    "update_mask",
                    format!("unknown or unchangeable field {other:?}"),
                ),
            }
        }
        if let Some(e) = end {
            if e <= start {
                v.add("assignment.end_time", "must be after the start");
            } else if e - start > policy.expire_after && e > now {
                v.add(
                    "assignment.end_time",
                    format!(
                        "exceeds the role's maximum of {} days",
                        policy.expire_after.num_days()
                    ),
                );
            }
        }
        check_text(&mut v, "justification", &r.justification);
        if t == common::AssignmentType::Active
            && policy.require_justification
            && r.justification.trim().is_empty()
        {
            v.add(
                "justification",
                "is required by the role's settings for active assignments",
            );
        }
        v.finish()?;
        if t == common::AssignmentType::Active {
            require_mfa(&self.core, caller, &policy)?;
        }
        let mut uow = self.core.begin().await?;
        if let Some(id) = overlapping(
            &mut uow,
            &Slot {
                t,
                principal: &row.principal_id,
                role: &row.role_id,
                scope: &row.scope_id,
                start,
                end,
            },
            Some(&row.id),
        )
        .await?
        {
            uow.rollback().await?;
            return Err(ApiError::AlreadyExists {
                kind: "overlapping assignment",
                id,
            });
        }
        let mut after = row.clone();
        after.start_at = to_micros(start);
        after.end_at = end.map(to_micros);
        if !r.justification.trim().is_empty() {
            after.justification = r.justification.trim().to_owned();
        }
        if let Some(tk) = &r.ticket {
            after.ticket_number.clone_from(&tk.ticket_number);
            after.ticket_system.clone_from(&tk.ticket_system);
        }
        after.updated_by = caller.principal_id.clone();
        after.updated_at = now_us;
        after.version += 1;
        let n = sqlx::query(
            "UPDATE assignments_assignments SET start_at = $1, end_at = $2, justification = $3, ticket_number = $4, \
             ticket_system = $5, updated_by = $6, updated_at = $7, version = version + 1, expired_processed = 0 \
             WHERE id = $8 AND version = $9",
        )
        .bind(after.start_at)
        .bind(after.end_at)
        .bind(&after.justification)
        .bind(&after.ticket_number)
        .bind(&after.ticket_system)
        .bind(&after.updated_by)
        .bind(now_us)
        .bind(&row.id)
        .bind(row.version)
        .execute(&mut **uow.tx())
        .await?
        .rows_affected();
        if n != 1 {
            uow.rollback().await?;
            return Err(ApiError::Aborted(
                "the assignment changed concurrently; read it again".into(),
            ));
        }
        let response = pb::UpdateAssignmentResponse {
            assignment: Some(store::assignment_proto(&self.core, &after, now)),
        };
        uow.emit(NewEvent::new(
            pb::AssignmentUpdated {
                before: Some(store::assignment_proto(&self.core, &row, now)),
                after: response.assignment.clone(),
            },
            &caller.principal_id,
            &row.id,
        ));
        self.core
            .remember(
                &mut uow,
                METHOD,
                &r.request_id,
                &caller.principal_id,
                &response,
            )
            .await?;
        self.core.commit(uow).await?;
        Ok(response)
    }

    async fn remove(
        &self,
        caller: &Caller,
        r: pb::RemoveAssignmentRequest,
    ) -> ApiResult<pb::RemoveAssignmentResponse> {
        const METHOD: &str = "RemoveAssignment";
        if let Some(done) = self
            .core
            .replay(METHOD, &r.request_id, &caller.principal_id)
            .await?
        {
            return Ok(done);
        }
        let row = self.load(&r.id).await?;
        self.core
            .require_or_service(caller, "tenure/assignments/write", &row.scope_id)?;
        if is_self(&self.core, caller, &row.principal_id) {
            return Err(ApiError::denied("nobody removes their own assignments"));
        }
        let mut v = Violations::new();
        check_text(&mut v, "justification", &r.justification);
        let reason = match pb::RemovalReason::try_from(r.reason) {
            Ok(pb::RemovalReason::Unspecified) => pb::RemovalReason::Administrator,
            Ok(x) => x,
            Err(_) => {
                v.add("reason", "is not a known removal reason");
                pb::RemovalReason::Administrator
            }
        };
        let t = common::AssignmentType::try_from(row.assignment_type)
            .unwrap_or(common::AssignmentType::Eligible);
        let policy = assignment_policy(&self.core, &row.role_id, &row.scope_id, t).await?;
        if t == common::AssignmentType::Active
            && policy.require_justification
            && r.justification.trim().is_empty()
        {
            v.add(
                "justification",
                "is required by the role's settings for active assignments",
            );
        }
        v.finish()?;
        let now = self.core.clock.now();
        match store::assignment_status(&row, to_micros(now)) {
            pb::AssignmentStatus::Removed => return Err(ApiError::precondition("already removed")),
            pb::AssignmentStatus::Expired => return Err(ApiError::precondition("already expired")),
            _ => {}
        }
        let mut uow = self.core.begin().await?;
        // Re-read inside the transaction: a concurrent removal must not remove twice.
        let Some(current) = store::get_assignment_tx(&mut uow, &row.id).await? else {
            uow.rollback().await?;
            return Err(ApiError::not_found("assignment", &row.id));
        };
        if current.removed_at.is_some() {
            uow.rollback().await?;
            return Err(ApiError::precondition("already removed"));
        }
        let ended = remove_in(
            &mut uow,
            &self.core,
            &current,
            Removal {
                reason,
                actor: &caller.principal_id,
                justification: r.justification.trim(),
                ticket: r.ticket.clone(),
                source_reference: &r.source_reference,
            },
        )
        .await?;
        let mut after = current.clone();
        after.removed_at = Some(to_micros(now));
        after.removal_reason = reason.into();
        after.version += 1;
        let response = pb::RemoveAssignmentResponse {
            assignment: Some(store::assignment_proto(&self.core, &after, now)),
            ended_instance_ids: ended,
        };
        self.core
            .remember(
                &mut uow,
                METHOD,
                &r.request_id,
                &caller.principal_id,
                &response,
            )
            .await?;
        self.core.commit(uow).await?;
        Ok(response)
    }

    async fn extend(
        &self,
        caller: &Caller,
        r: pb::ExtendAssignmentRequest,
    ) -> ApiResult<pb::ExtendAssignmentResponse> {
        const METHOD: &str = "ExtendAssignment";
        if let Some(done) = self
            .core
            .replay(METHOD, &r.request_id, &caller.principal_id)
            .await?
        {
            return Ok(done);
        }
        let row = self.load_for_change(caller, &r.id, "extends").await?;
        let now = self.core.clock.now();
        match store::assignment_status(&row, to_micros(now)) {
            pb::AssignmentStatus::Removed => {
                return Err(ApiError::precondition("the assignment was removed"));
            }
            pb::AssignmentStatus::Expired => {
                return Err(ApiError::precondition(
                    "the assignment has expired; renew it instead",
                ));
            }
            _ => {}
        }
        let Some(current_end) = row.end_at.map(tenure_platform::clock::from_micros) else {
            return Err(ApiError::precondition("the assignment is permanent"));
        };
        let t = common::AssignmentType::try_from(row.assignment_type)
            .unwrap_or(common::AssignmentType::Eligible);
        let policy = assignment_policy(&self.core, &row.role_id, &row.scope_id, t).await?;
        let mut v = Violations::new();
        use pb::extend_assignment_request::Expiration as E;
        let new_end = match r.expiration {
            Some(E::NewEndTime(ts)) => from_proto(&ts).map(Some).unwrap_or_else(|| {
                v.add("new_end_time", "is not a valid timestamp");
                Some(current_end)
            }),
            Some(E::ExtendBy(d)) => {
                match TimeDelta::new(d.seconds, u32::try_from(d.nanos).unwrap_or(u32::MAX)) {
                    Some(d) if d > TimeDelta::zero() => Some(current_end + d),
                    _ => {
                        v.add("extend_by", "must be a positive duration");
                        Some(current_end)
                    }
                }
            }
            Some(E::Permanent(true)) => {
                if !policy.allow_permanent {
                    v.add(
                        "permanent",
                        "permanent assignments of this type are not allowed by the role's settings",
                    );
                }
                None
            }
            Some(E::Permanent(false)) | None => {
                v.add("new_end_time", "give new_end_time, extend_by or permanent");
                Some(current_end)
            }
        };
        if let Some(e) = new_end {
            if e <= current_end {
                v.add("new_end_time", "must be after the current end");
            } else if e > now + policy.expire_after {
                v.add(
                    "new_end_time",
                    format!(
                        "is beyond the role's maximum of {} days from now",
                        policy.expire_after.num_days()
                    ),
                );
            }
        }
        check_text(&mut v, "justification", &r.justification);
        if t == common::AssignmentType::Active
            && policy.require_justification
            && r.justification.trim().is_empty()
        {
            v.add(
                "justification",
                "is required by the role's settings for active assignments",
            );
        }
        v.finish()?;
        if t == common::AssignmentType::Active {
            require_mfa(&self.core, caller, &policy)?;
        }
        let mut uow = self.core.begin().await?;
        let n = sqlx::query(
            "UPDATE assignments_assignments SET end_at = $1, updated_by = $2, updated_at = $3, version = version + 1 \
             WHERE id = $4 AND version = $5",
        )
        .bind(new_end.map(to_micros))
        .bind(&caller.principal_id)
        .bind(to_micros(now))
        .bind(&row.id)
        .bind(row.version)
        .execute(&mut **uow.tx())
        .await?
        .rows_affected();
        if n != 1 {
            uow.rollback().await?;
            return Err(ApiError::Aborted(
                "the assignment changed concurrently; read it again".into(),
            ));
        }
        let mut after = row.clone();
        after.end_at = new_end.map(to_micros);
        after.updated_by = caller.principal_id.clone();
        after.updated_at = to_micros(now);
        after.version += 1;
        let assignment = store::assignment_proto(&self.core, &after, now);
        uow.emit(NewEvent::new(
            pb::AssignmentExtended {
                assignment: Some(assignment.clone()),
                previous_end_time: Some(tenure_platform::clock::to_proto(current_end)),
                justification: r.justification.trim().to_owned(),
                ticket: r.ticket.clone(),
                activation_request_id: String::new(),
            },
            &caller.principal_id,
            &row.id,
        ));
        let response = pb::ExtendAssignmentResponse {
            assignment: Some(assignment),
        };
        self.core
            .remember(
                &mut uow,
                METHOD,
                &r.request_id,
                &caller.principal_id,
                &response,
            )
            .await?;
        self.core.commit(uow).await?;
        Ok(response)
    }

    async fn renew(
        &self,
        caller: &Caller,
        r: pb::RenewAssignmentRequest,
    ) -> ApiResult<pb::RenewAssignmentResponse> {
        const METHOD: &str = "RenewAssignment";
        if let Some(done) = self
            .core
            .replay(METHOD, &r.request_id, &caller.principal_id)
            .await?
        {
            return Ok(done);
        }
        let row = self.load_for_change(caller, &r.id, "renews").await?;
        let now = self.core.clock.now();
        match store::assignment_status(&row, to_micros(now)) {
            pb::AssignmentStatus::Removed => {
                return Err(ApiError::precondition("the assignment was removed"));
            }
            pb::AssignmentStatus::Expired => {}
            _ => {
                return Err(ApiError::precondition(
                    "the assignment has not expired; extend it instead",
                ));
            }
        }
        let t = common::AssignmentType::try_from(row.assignment_type)
            .unwrap_or(common::AssignmentType::Eligible);
        let policy = assignment_policy(&self.core, &row.role_id, &row.scope_id, t).await?;
        let mut v = Violations::new();
        let (start, end) = resolve_schedule(&mut v, r.schedule.as_ref(), now, &policy);
        check_text(&mut v, "justification", &r.justification);
        if t == common::AssignmentType::Active
            && policy.require_justification
            && r.justification.trim().is_empty()
        {
            v.add(
                "justification",
                "is required by the role's settings for active assignments",
            );
        }
        v.finish()?;
        if t == common::AssignmentType::Active {
            require_mfa(&self.core, caller, &policy)?;
        }
        let mut uow = self.core.begin().await?;
        if let Some(id) = overlapping(
            &mut uow,
            &Slot {
                t,
                principal: &row.principal_id,
                role: &row.role_id,
                scope: &row.scope_id,
                start,
                end,
            },
            Some(&row.id),
        )
        .await?
        {
            uow.rollback().await?;
            return Err(ApiError::AlreadyExists {
                kind: "newer overlapping assignment",
                id,
            });
        }
        let after = renew_in(
            &mut uow,
            &row,
            start,
            end,
            &caller.principal_id,
            r.justification.trim(),
            r.ticket.as_ref(),
        )
        .await?;
        let assignment = store::assignment_proto(&self.core, &after, now);
        uow.emit(NewEvent::new(
            pb::AssignmentRenewed {
                assignment: Some(assignment.clone()),
                previous_end_time: row.end_at.map(|e| {
                    tenure_platform::clock::to_proto(tenure_platform::clock::from_micros(e))
                }),
                justification: r.justification.trim().to_owned(),
                ticket: r.ticket.clone(),
                activation_request_id: String::new(),
            },
            &caller.principal_id,
            &row.id,
        ));
        let response = pb::RenewAssignmentResponse {
            assignment: Some(assignment),
        };
        self.core
            .remember(
                &mut uow,
                METHOD,
                &r.request_id,
                &caller.principal_id,
                &response,
            )
            .await?;
        self.core.commit(uow).await?;
        Ok(response)
    }

    async fn list(
        &self,
        caller: &Caller,
        r: pb::ListAssignmentsRequest,
    ) -> ApiResult<pb::ListAssignmentsResponse> {
        let page = Page::parse(r.page_size, &r.page_token)?;
        if !r.scope_id.is_empty() {
            self.core.known_scope("scope_id", &r.scope_id)?;
        }
        let scope = if r.scope_id.is_empty() {
            "/"
        } else {
            r.scope_id.as_str()
        };
        let reads_all = self.core.can_read_all(caller)
            || self
                .core
                .has_permission(&caller.principal_id, "tenure/assignments/read", scope);
        // Callers without read access see their own assignments and their groups'.
        let own: Vec<String> = if reads_all {
            Vec::new()
        } else {
            self.core
                .model()
                .subjects(&caller.principal_id)
                .into_iter()
                .map(|(s, _)| s.to_string())
                .collect::<Vec<_>>()
        };
        let own = if !reads_all && own.is_empty() {
            vec![caller.principal_id.clone()]
        } else {
            own
        };
        let scope_filter = if r.include_descendants {
            ""
        } else {
            r.scope_id.as_str()
        };
        let sql = format!(
            "SELECT {} FROM assignments_assignments WHERE ($1 = 0 OR assignment_type = $1) \
             AND ($2 = '' OR principal_id = $2) AND ($3 = '' OR role_id = $3) AND ($4 = '' OR scope_id = $4) \
             AND id > $5 ORDER BY id LIMIT 500",
            store::ASSIGNMENT_COLUMNS
        );
        let now = self.core.clock.now();
        let now_us = to_micros(now);
        let ends_before = r.ends_before.as_ref().and_then(from_proto).map(to_micros);
        let mut cursor = page.after.clone().unwrap_or_default();
        let mut out = Vec::new();
        'scan: loop {
            let rows = sqlx::query(&sql)
                .bind(i64::from(r.assignment_type))
                .bind(&r.principal_id)
                .bind(&r.role_id)
                .bind(scope_filter)
                .bind(&cursor)
                .fetch_all(self.core.db.reader())
                .await?;
            let exhausted = rows.len() < 500;
            for row in &rows {
                let a = store::assignment_from_row(row)?;
                cursor.clone_from(&a.id);
                if !reads_all && !own.contains(&a.principal_id) {
                    continue;
                }
                if r.include_descendants
                    && !r.scope_id.is_empty()
                    && !self.core.model().is_within(&a.scope_id, &r.scope_id)
                {
                    continue;
                }
                let st = store::assignment_status(&a, now_us);
                let wanted = if r.statuses.is_empty() {
                    matches!(
                        st,
                        pb::AssignmentStatus::InEffect | pb::AssignmentStatus::PendingStart
                    )
                } else {
                    r.statuses.contains(&i32::from(st))
                };
                if !wanted || ends_before.is_some_and(|eb| a.end_at.is_none_or(|e| e >= eb)) {
                    continue;
                }
                out.push(a);
                if out.len() > page.size {
                    break 'scan;
                }
            }
            if exhausted {
                break;
            }
        }
        let page = Page {
            size: page.size,
            after: None,
        };
        let (items, next_page_token) = page.cut(out, |a| a.id.clone());
        Ok(pb::ListAssignmentsResponse {
            assignments: items
                .iter()
                .map(|a| store::assignment_proto(&self.core, a, now))
                .collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl pb::assignments_service_server::AssignmentsService for AssignmentsApi {
    async fn create_assignment(
        &self,
        request: Request<pb::CreateAssignmentRequest>,
    ) -> Result<Response<pb::CreateAssignmentResponse>, Status> {
        let caller = caller(&request)?;
        self.create(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn create_assignments(
        &self,
        request: Request<pb::CreateAssignmentsRequest>,
    ) -> Result<Response<pb::CreateAssignmentsResponse>, Status> {
        let caller = caller(&request)?;
        self.create_many(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn get_assignment(
        &self,
        request: Request<pb::GetAssignmentRequest>,
    ) -> Result<Response<pb::GetAssignmentResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let row = self.load(&r.id).await.map_err(status)?;
        if !self.may_read(&caller, &row.principal_id, &row.scope_id) {
            return Err(status(ApiError::not_found("assignment", &r.id)));
        }
        let now = self.core.clock.now();
        Ok(Response::new(pb::GetAssignmentResponse {
            assignment: Some(store::assignment_proto(&self.core, &row, now)),
        }))
    }

    async fn list_assignments(
        &self,
        request: Request<pb::ListAssignmentsRequest>,
    ) -> Result<Response<pb::ListAssignmentsResponse>, Status> {
        let caller = caller(&request)?;
        self.list(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn update_assignment(
        &self,
        request: Request<pb::UpdateAssignmentRequest>,
    ) -> Result<Response<pb::UpdateAssignmentResponse>, Status> {
        let caller = caller(&request)?;
        self.update(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn remove_assignment(
        &self,
        request: Request<pb::RemoveAssignmentRequest>,
    ) -> Result<Response<pb::RemoveAssignmentResponse>, Status> {
        let caller = caller(&request)?;
        self.remove(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn extend_assignment(
        &self,
        request: Request<pb::ExtendAssignmentRequest>,
    ) -> Result<Response<pb::ExtendAssignmentResponse>, Status> {
        let caller = caller(&request)?;
        self.extend(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn renew_assignment(
        &self,
        request: Request<pb::RenewAssignmentRequest>,
    ) -> Result<Response<pb::RenewAssignmentResponse>, Status> {
        let caller = caller(&request)?;
        self.renew(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn get_instance(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Result<Response<pb::GetInstanceResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let now = self.core.clock.now();
        let instance = crate::api::instances::get(&self.core, &r.id, now)
            .await
            .map_err(status)?;
        let principal = instance
            .principal
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_default();
        let scope = instance
            .scope
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        if !self.may_read(&caller, &principal, &scope) {
            return Err(status(ApiError::not_found("instance", &r.id)));
        }
        Ok(Response::new(pb::GetInstanceResponse {
            instance: Some(instance),
        }))
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let scope = if r.scope_id.is_empty() {
            "/".to_owned()
        } else {
            r.scope_id.clone()
        };
        let reads_all = self.core.can_read_all(&caller)
            || self
                .core
                .has_permission(&caller.principal_id, "tenure/assignments/read", &scope);
        crate::api::instances::list(&self.core, &caller, reads_all, r)
            .await
            .map(Response::new)
            .map_err(status)
    }
}

/// Writes a renewal: a new window on the same assignment id.
pub async fn renew_in(
    uow: &mut tenure_platform::events::UnitOfWork<pb::Event>,
    row: &AssignmentRow,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    actor: &str,
    justification: &str,
    ticket: Option<&common::TicketInfo>,
) -> ApiResult<AssignmentRow> {
    let now_us = to_micros(uow.now());
    let mut after = row.clone();
    after.start_at = to_micros(start);
    after.end_at = end.map(to_micros);
    if !justification.is_empty() {
        after.justification = justification.to_owned();
    }
    if let Some(t) = ticket {
        after.ticket_number.clone_from(&t.ticket_number);
        after.ticket_system.clone_from(&t.ticket_system);
    }
    after.updated_by = actor.to_owned();
    after.updated_at = now_us;
    after.version += 1;
    let n = sqlx::query(
        "UPDATE assignments_assignments SET start_at = $1, end_at = $2, justification = $3, ticket_number = $4, \
         ticket_system = $5, updated_by = $6, updated_at = $7, version = version + 1, expired_processed = 0 \
         WHERE id = $8 AND version = $9 AND removed_at IS NULL",
    )
    .bind(after.start_at)
    .bind(after.end_at)
    .bind(&after.justification)
    .bind(&after.ticket_number)
    .bind(&after.ticket_system)
    .bind(actor)
    .bind(now_us)
    .bind(&row.id)
    .bind(row.version)
    .execute(&mut **uow.tx())
    .await?
    .rows_affected();
    if n != 1 {
        return Err(ApiError::Aborted(
            "the assignment changed concurrently; read it again".into(),
        ));
    }
    Ok(after)
}
