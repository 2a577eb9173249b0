//! Storage of the assignments context (sqlx), and the conversion of its rows to the
//! protobuf messages its API and events carry.

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::any::AnyRow;
use tenure_platform::ApiResult;
use tenure_platform::clock::{from_micros, to_micros, to_proto};
use tenure_platform::events::UnitOfWork;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1 as common;

use crate::core::Core;

type Uow = UnitOfWork<pb::Event>;

fn lines(v: &[String]) -> String {
    v.join("\n")
}

fn split(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn ts(us: i64) -> Option<prost_types::Timestamp> {
    Some(to_proto(from_micros(us)))
}

// ----- principals --------------------------------------------------------------------------

/// Inserts or replaces a principal row.
pub async fn upsert_principal(uow: &mut Uow, p: &pb::Principal) -> ApiResult<()> {
    let now = to_micros(uow.now());
    let created = p
        .create_time
        .as_ref()
        .map_or(now, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
    sqlx::query(
        "INSERT INTO assignments_principals (id, principal_type, display_name, user_principal_name, email, enabled, \
         last_sign_in_at, app_id, source, created_at, updated_at, disabled_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL) \
         ON CONFLICT (id) DO UPDATE SET principal_type = excluded.principal_type, display_name = excluded.display_name, \
         user_principal_name = excluded.user_principal_name, email = excluded.email, enabled = excluded.enabled, \
         last_sign_in_at = excluded.last_sign_in_at, app_id = excluded.app_id, source = excluded.source, \
         updated_at = excluded.updated_at",
    )
    .bind(&p.id)
    .bind(i64::from(p.r#type))
    .bind(&p.display_name)
    .bind(&p.user_principal_name)
    .bind(&p.email)
    .bind(i64::from(p.enabled.unwrap_or(true)))
    .bind(p.last_sign_in_time.as_ref().map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000)))
    .bind(&p.app_id)
    .bind(&p.source)
    .bind(created)
    .bind(now)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// The columns of a principal row.
pub const PRINCIPAL_COLUMNS: &str = "id, principal_type, display_name, user_principal_name, email, enabled, \
     last_sign_in_at, app_id, source, created_at, updated_at";

/// A principal row as a message (member count left 0).
pub fn principal_from_row(r: &AnyRow) -> ApiResult<pb::Principal> {
    Ok(pb::Principal {
        id: r.try_get("id")?,
        r#type: i32::try_from(r.try_get::<i64, _>("principal_type")?).unwrap_or(0),
        display_name: r.try_get("display_name")?,
        user_principal_name: r.try_get("user_principal_name")?,
        email: r.try_get("email")?,
        enabled: Some(r.try_get::<i64, _>("enabled")? != 0),
        last_sign_in_time: r.try_get::<Option<i64>, _>("last_sign_in_at")?.and_then(ts),
        app_id: r.try_get("app_id")?,
        source: r.try_get("source")?,
        direct_member_count: 0,
        create_time: ts(r.try_get("created_at")?),
        update_time: ts(r.try_get("updated_at")?),
    })
}

/// Reads a principal.
pub async fn get_principal(core: &Core, id: &str) -> ApiResult<Option<pb::Principal>> {
    let row = sqlx::query(&format!(
        "SELECT {PRINCIPAL_COLUMNS} FROM assignments_principals WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(core.db.reader())
    .await?;
    row.as_ref().map(principal_from_row).transpose()
}

// ----- roles -------------------------------------------------------------------------------

/// Inserts a role row.
pub async fn insert_role(uow: &mut Uow, r: &pb::RoleDefinition) -> ApiResult<()> {
    let now = to_micros(uow.now());
    sqlx::query(
        "INSERT INTO assignments_roles (id, display_name, description, kind, built_in, highly_privileged, permissions, \
         assignable_scope_ids, created_at, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1)",
    )
    .bind(&r.id)
    .bind(&r.display_name)
    .bind(&r.description)
    .bind(i64::from(r.kind))
    .bind(i64::from(r.built_in))
    .bind(i64::from(r.highly_privileged))
    .bind(lines(&r.permissions))
    .bind(lines(&r.assignable_scope_ids))
    .bind(now)
    .bind(now)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// The columns of a role row.
pub const ROLE_COLUMNS: &str = "id, display_name, description, kind, built_in, highly_privileged, permissions, \
     assignable_scope_ids, created_at, updated_at, version";

/// A role row as a message.
pub fn role_from_row(r: &AnyRow) -> ApiResult<pb::RoleDefinition> {
    Ok(pb::RoleDefinition {
        id: r.try_get("id")?,
        display_name: r.try_get("display_name")?,
        description: r.try_get("description")?,
        kind: i32::try_from(r.try_get::<i64, _>("kind")?).unwrap_or(0),
        built_in: r.try_get::<i64, _>("built_in")? != 0,
        highly_privileged: r.try_get::<i64, _>("highly_privileged")? != 0,
        permissions: split(&r.try_get::<String, _>("permissions")?),
        assignable_scope_ids: split(&r.try_get::<String, _>("assignable_scope_ids")?),
        create_time: ts(r.try_get("created_at")?),
        update_time: ts(r.try_get("updated_at")?),
        etag: r.try_get::<i64, _>("version")?.to_string(),
    })
}

/// Reads a role.
pub async fn get_role(core: &Core, id: &str) -> ApiResult<Option<pb::RoleDefinition>> {
    let row = sqlx::query(&format!(
        "SELECT {ROLE_COLUMNS} FROM assignments_roles WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(core.db.reader())
    .await?;
    row.as_ref().map(role_from_row).transpose()
}

// ----- scopes ------------------------------------------------------------------------------

/// Inserts a scope row.
pub async fn insert_scope(uow: &mut Uow, s: &pb::Scope) -> ApiResult<()> {
    let now = to_micros(uow.now());
    let labels = serde_json::to_string(&s.labels)
        .map_err(|e| tenure_platform::ApiError::Internal(e.into()))?;
    sqlx::query(
        "INSERT INTO assignments_scopes (id, parent_id, scope_type, display_name, resource_type, labels, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&s.id)
    .bind((!s.parent_id.is_empty()).then_some(s.parent_id.as_str()))
    .bind(i64::from(s.r#type))
    .bind(&s.display_name)
    .bind(&s.resource_type)
    .bind(labels)
    .bind(now)
    .bind(now)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// The columns of a scope row.
pub const SCOPE_COLUMNS: &str =
    "id, parent_id, scope_type, display_name, resource_type, labels, created_at, updated_at";

/// A scope row as a message.
pub fn scope_from_row(r: &AnyRow) -> ApiResult<pb::Scope> {
    let labels: String = r.try_get("labels")?;
    Ok(pb::Scope {
        id: r.try_get("id")?,
        parent_id: r
            .try_get::<Option<String>, _>("parent_id")?
            .unwrap_or_default(),
        r#type: i32::try_from(r.try_get::<i64, _>("scope_type")?).unwrap_or(0),
        display_name: r.try_get("display_name")?,
        resource_type: r.try_get("resource_type")?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        create_time: ts(r.try_get("created_at")?),
        update_time: ts(r.try_get("updated_at")?),
    })
}

/// Reads a scope.
pub async fn get_scope(core: &Core, id: &str) -> ApiResult<Option<pb::Scope>> {
    let row = sqlx::query(&format!(
        "SELECT {SCOPE_COLUMNS} FROM assignments_scopes WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(core.db.reader())
    .await?;
    row.as_ref().map(scope_from_row).transpose()
}

// ----- assignments -------------------------------------------------------------------------

/// A new schedule to write.
#[derive(Debug, Clone)]
pub struct NewAssignment {
    /// Its id.
    pub id: String,
    /// Eligible or active.
    pub assignment_type: common::AssignmentType,
    /// Assignee.
    pub principal_id: String,
    /// Role.
    pub role_id: String,
    /// Scope.
    pub scope_id: String,
    /// Start.
    pub start: DateTime<Utc>,
    /// End; `None` is permanent.
    pub end: Option<DateTime<Utc>>,
    /// Why.
    pub justification: String,
    /// Ticket.
    pub ticket: Option<common::TicketInfo>,
    /// Who made it.
    pub actor: String,
}

/// A stored schedule.
#[derive(Debug, Clone)]
pub struct AssignmentRow {
    /// Id.
    pub id: String,
    /// Eligible or active.
    pub assignment_type: i32,
    /// Assignee.
    pub principal_id: String,
    /// Role.
    pub role_id: String,
    /// Scope.
    pub scope_id: String,
    /// Start (µs).
    pub start_at: i64,
    /// End (µs), `None` permanent.
    pub end_at: Option<i64>,
    /// Why.
    pub justification: String,
    /// Ticket number.
    pub ticket_number: String,
    /// Ticket system.
    pub ticket_system: String,
    /// Creator.
    pub created_by: String,
    /// Created (µs).
    pub created_at: i64,
    /// Last updater.
    pub updated_by: String,
    /// Updated (µs).
    pub updated_at: i64,
    /// Why removed (enum number), 0 while not removed.
    pub removal_reason: i32,
    /// Removed (µs).
    pub removed_at: Option<i64>,
    /// Optimistic concurrency version (the etag).
    pub version: i64,
}

impl NewAssignment {
    /// The row this creates at `now`.
    pub fn to_row(&self, now: DateTime<Utc>) -> AssignmentRow {
        let now = to_micros(now);
        AssignmentRow {
            id: self.id.clone(),
            assignment_type: self.assignment_type.into(),
            principal_id: self.principal_id.clone(),
            role_id: self.role_id.clone(),
            scope_id: self.scope_id.clone(),
            start_at: to_micros(self.start),
            end_at: self.end.map(to_micros),
            justification: self.justification.clone(),
            ticket_number: self
                .ticket
                .as_ref()
                .map(|t| t.ticket_number.clone())
                .unwrap_or_default(),
            ticket_system: self
                .ticket
                .as_ref()
                .map(|t| t.ticket_system.clone())
                .unwrap_or_default(),
            created_by: self.actor.clone(),
            created_at: now,
            updated_by: self.actor.clone(),
            updated_at: now,
            removal_reason: 0,
            removed_at: None,
            version: 1,
        }
    }
}

/// Inserts a schedule.
pub async fn insert_assignment(uow: &mut Uow, a: &NewAssignment) -> ApiResult<()> {
    insert_assignments(uow, std::slice::from_ref(a)).await
}

/// Rows per multi-row INSERT of schedules (14 values each, well below the bind limits
/// of SQLite and PostgreSQL).
const INSERT_CHUNK: usize = 200;

/// Inserts schedules, several rows per statement.
pub async fn insert_assignments(uow: &mut Uow, all: &[NewAssignment]) -> ApiResult<()> {
    const COLUMNS: usize = 14;
    let now = uow.now();
    for chunk in all.chunks(INSERT_CHUNK) {
        let values = (0..chunk.len())
            .map(|i| {
                let b = i * COLUMNS;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, 0, NULL, 0, 1)",
                    b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7,
                    b + 8, b + 9, b + 10, b + 11, b + 12, b + 13, b + 14
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO assignments_assignments (id, assignment_type, principal_id, role_id, scope_id, start_at, end_at, \
             justification, ticket_number, ticket_system, created_by, created_at, updated_by, updated_at, removal_reason, \
             removed_at, expired_processed, version) VALUES {values}"
        );
        let rows: Vec<AssignmentRow> = chunk.iter().map(|a| a.to_row(now)).collect();
        let mut q = sqlx::query(&sql);
        for r in &rows {
            q = q
                .bind(&r.id)
                .bind(i64::from(r.assignment_type))
                .bind(&r.principal_id)
                .bind(&r.role_id)
                .bind(&r.scope_id)
                .bind(r.start_at)
                .bind(r.end_at)
                .bind(&r.justification)
                .bind(&r.ticket_number)
                .bind(&r.ticket_system)
                .bind(&r.created_by)
                .bind(r.created_at)
                .bind(&r.updated_by)
                .bind(r.updated_at);
        }
        q.execute(&mut **uow.tx()).await?;
    }
    Ok(())
}

/// The columns of a schedule row.
pub const ASSIGNMENT_COLUMNS: &str = "id, assignment_type, principal_id, role_id, scope_id, start_at, end_at, \
     justification, ticket_number, ticket_system, created_by, created_at, updated_by, updated_at, removal_reason, \
     removed_at, version";

/// Reads a schedule row.
pub fn assignment_from_row(r: &AnyRow) -> ApiResult<AssignmentRow> {
    Ok(AssignmentRow {
        id: r.try_get("id")?,
        assignment_type: i32::try_from(r.try_get::<i64, _>("assignment_type")?).unwrap_or(0),
        principal_id: r.try_get("principal_id")?,
        role_id: r.try_get("role_id")?,
        scope_id: r.try_get("scope_id")?,
        start_at: r.try_get("start_at")?,
        end_at: r.try_get("end_at")?,
        justification: r.try_get("justification")?,
        ticket_number: r.try_get("ticket_number")?,
        ticket_system: r.try_get("ticket_system")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_by: r.try_get("updated_by")?,
        updated_at: r.try_get("updated_at")?,
        removal_reason: i32::try_from(r.try_get::<i64, _>("removal_reason")?).unwrap_or(0),
        removed_at: r.try_get("removed_at")?,
        version: r.try_get("version")?,
    })
}

/// Reads a schedule by id, from the writer when inside a unit of work.
pub async fn get_assignment(core: &Core, id: &str) -> ApiResult<Option<AssignmentRow>> {
    let row = sqlx::query(&format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments_assignments WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(core.db.reader())
    .await?;
    row.as_ref().map(assignment_from_row).transpose()
}

/// Reads a schedule inside a unit of work (sees its own writes; locks nothing extra).
pub async fn get_assignment_tx(uow: &mut Uow, id: &str) -> ApiResult<Option<AssignmentRow>> {
    let row = sqlx::query(&format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments_assignments WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **uow.tx())
    .await?;
    row.as_ref().map(assignment_from_row).transpose()
}

/// The status of a schedule at `now`.
pub fn assignment_status(r: &AssignmentRow, now: i64) -> pb::AssignmentStatus {
    if r.removed_at.is_some() {
        pb::AssignmentStatus::Removed
    } else if r.end_at.is_some_and(|e| e <= now) {
        pb::AssignmentStatus::Expired
    } else if r.start_at > now {
        pb::AssignmentStatus::PendingStart
    } else {
        pb::AssignmentStatus::InEffect
    }
}

/// A schedule row as the API and events show it, at `now`.
pub fn assignment_proto(core: &Core, r: &AssignmentRow, now: DateTime<Utc>) -> pb::Assignment {
    let now_us = to_micros(now);
    pb::Assignment {
        id: r.id.clone(),
        assignment_type: r.assignment_type,
        principal: Some(core.principal_ref(&r.principal_id)),
        role: Some(core.role_ref(&r.role_id)),
        scope: Some(core.scope_ref(&r.scope_id)),
        start_time: ts(r.start_at),
        end_time: r.end_at.and_then(ts),
        permanent: r.end_at.is_none(),
        status: assignment_status(r, now_us).into(),
        justification: r.justification.clone(),
        ticket: (!r.ticket_number.is_empty() || !r.ticket_system.is_empty()).then(|| {
            common::TicketInfo {
                ticket_number: r.ticket_number.clone(),
                ticket_system: r.ticket_system.clone(),
            }
        }),
        created_by: r.created_by.clone(),
        create_time: ts(r.created_at),
        updated_by: r.updated_by.clone(),
        update_time: ts(r.updated_at),
        removal_reason: r.removal_reason,
        remove_time: r.removed_at.and_then(ts),
        etag: r.version.to_string(),
    }
}

// ----- activations -------------------------------------------------------------------------

/// A stored activation instance.
#[derive(Debug, Clone)]
pub struct ActivationRow {
    /// Instance id.
    pub id: String,
    /// The activation context's request id.
    pub request_id: String,
    /// The eligible assignment it came from.
    pub eligibility_id: String,
    /// Holder.
    pub principal_id: String,
    /// Role.
    pub role_id: String,
    /// Scope.
    pub scope_id: String,
    /// Start (µs).
    pub start_at: i64,
    /// Planned end (µs).
    pub end_at: i64,
    /// When it actually ended early (µs).
    pub ended_at: Option<i64>,
    /// Why it ended (enum number).
    pub end_reason: i32,
    /// Why it was asked for.
    pub justification: String,
    /// Ticket number.
    pub ticket_number: String,
    /// Ticket system.
    pub ticket_system: String,
    /// Created (µs).
    pub created_at: i64,
}

/// The columns of an activation row.
pub const ACTIVATION_COLUMNS: &str = "id, request_id, eligibility_id, principal_id, role_id, scope_id, start_at, end_at, \
     ended_at, end_reason, justification, ticket_number, ticket_system, created_at";

/// Reads an activation row.
pub fn activation_from_row(r: &AnyRow) -> ApiResult<ActivationRow> {
    Ok(ActivationRow {
        id: r.try_get("id")?,
        request_id: r.try_get("request_id")?,
        eligibility_id: r.try_get("eligibility_id")?,
        principal_id: r.try_get("principal_id")?,
        role_id: r.try_get("role_id")?,
        scope_id: r.try_get("scope_id")?,
        start_at: r.try_get("start_at")?,
        end_at: r.try_get("end_at")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: i32::try_from(r.try_get::<i64, _>("end_reason")?).unwrap_or(0),
        justification: r.try_get("justification")?,
        ticket_number: r.try_get("ticket_number")?,
        ticket_system: r.try_get("ticket_system")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Inserts an activation instance.
pub async fn insert_activation(uow: &mut Uow, a: &ActivationRow) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO assignments_activations (id, request_id, eligibility_id, principal_id, role_id, scope_id, start_at, \
         end_at, ended_at, end_reason, justification, ticket_number, ticket_system, created_at, expired_processed) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, 0, $9, $10, $11, $12, 0)",
    )
    .bind(&a.id)
    .bind(&a.request_id)
    .bind(&a.eligibility_id)
    .bind(&a.principal_id)
    .bind(&a.role_id)
    .bind(&a.scope_id)
    .bind(a.start_at)
    .bind(a.end_at)
    .bind(&a.justification)
    .bind(&a.ticket_number)
    .bind(&a.ticket_system)
    .bind(a.created_at)
    .execute(&mut **uow.tx())
    .await?;
    Ok(())
}

/// An activation as the API and events show it, at `now`.
pub fn activation_proto(core: &Core, r: &ActivationRow, now: DateTime<Utc>) -> pb::Instance {
    let now_us = to_micros(now);
    let ended = r.ended_at.is_some() || r.end_at <= now_us;
    let end_reason = if r.ended_at.is_some() {
        r.end_reason
    } else if r.end_at <= now_us {
        pb::InstanceEndReason::Expired.into()
    } else {
        0
    };
    pb::Instance {
        id: r.id.clone(),
        assignment_type: common::AssignmentType::Active.into(),
        origin: common::InstanceOrigin::Activated.into(),
        assignment_id: r.eligibility_id.clone(),
        request_id: r.request_id.clone(),
        principal: Some(core.principal_ref(&r.principal_id)),
        role: Some(core.role_ref(&r.role_id)),
        scope: Some(core.scope_ref(&r.scope_id)),
        start_time: ts(r.start_at),
        end_time: ts(r.end_at),
        status: if ended {
            pb::InstanceStatus::Ended
        } else {
            pb::InstanceStatus::InEffect
        }
        .into(),
        end_reason,
        ended_time: r
            .ended_at
            .or(if r.end_at <= now_us {
                Some(r.end_at)
            } else {
                None
            })
            .and_then(ts),
        justification: r.justification.clone(),
        ticket: (!r.ticket_number.is_empty() || !r.ticket_system.is_empty()).then(|| {
            common::TicketInfo {
                ticket_number: r.ticket_number.clone(),
                ticket_system: r.ticket_system.clone(),
            }
        }),
    }
}

/// The instance view of an assignment (what an in-effect schedule puts in effect): the
/// instance id is the assignment id, origin ASSIGNED.
pub fn assignment_instance(core: &Core, r: &AssignmentRow, now: DateTime<Utc>) -> pb::Instance {
    let now_us = to_micros(now);
    let status = assignment_status(r, now_us);
    let ended = matches!(
        status,
        pb::AssignmentStatus::Removed | pb::AssignmentStatus::Expired
    );
    pb::Instance {
        id: r.id.clone(),
        assignment_type: r.assignment_type,
        origin: common::InstanceOrigin::Assigned.into(),
        assignment_id: r.id.clone(),
        request_id: String::new(),
        principal: Some(core.principal_ref(&r.principal_id)),
        role: Some(core.role_ref(&r.role_id)),
        scope: Some(core.scope_ref(&r.scope_id)),
        start_time: ts(r.start_at),
        end_time: r.end_at.and_then(ts),
        status: if ended {
            pb::InstanceStatus::Ended
        } else {
            pb::InstanceStatus::InEffect
        }
        .into(),
        end_reason: match status {
            pb::AssignmentStatus::Removed => pb::InstanceEndReason::AssignmentRemoved.into(),
            pb::AssignmentStatus::Expired => pb::InstanceEndReason::Expired.into(),
            _ => 0,
        },
        ended_time: r
            .removed_at
            .or(r.end_at.filter(|e| *e <= now_us))
            .and_then(ts),
        justification: r.justification.clone(),
        ticket: (!r.ticket_number.is_empty() || !r.ticket_system.is_empty()).then(|| {
            common::TicketInfo {
                ticket_number: r.ticket_number.clone(),
                ticket_system: r.ticket_system.clone(),
            }
        }),
    }
}

// ----- generic helpers ---------------------------------------------------------------------

/// "$first, $first+1, …" for `n` values, for an `IN (…)` list.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many values an `IN (…)` list binds at most per query (well below the limits of
/// SQLite and PostgreSQL).
pub const IN_CHUNK: usize = 500;
