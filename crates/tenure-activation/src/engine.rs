//! The activation context's application layer: the checks a request must pass, the
//! approval workflow, provisioning into the assignments context, and the timers.
//! Transport-free: the gRPC adapter in [`crate::api`] decodes and encodes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tenure_platform::auth::Caller;
use tenure_platform::clock::{SharedClock, from_proto, to_micros, to_proto};
use tenure_platform::db::Db;
use tenure_platform::events::{EventLog, NewEvent, UnitOfWork};
use tenure_platform::{ApiError, ApiResult, FieldViolation};
use tenure_proto::activation::v1 as pb;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1 as common;
use tokio::sync::Notify;

use crate::clients::Assignments;
use crate::store;

/// Shortest activation.
pub const MIN_DURATION: TimeDelta = TimeDelta::minutes(5);
/// Clock skew allowed for a start "now".
pub const START_SKEW: TimeDelta = TimeDelta::minutes(5);
/// How far ahead a start may be scheduled.
pub const MAX_START_AHEAD: TimeDelta = TimeDelta::days(30);
/// Most items in one ActivateRoles call.
pub const MAX_ITEMS: usize = 20;
/// Provisioning attempts before a request fails.
pub const MAX_ATTEMPTS: i64 = 5;
/// Default approval timeout.
pub const DEFAULT_TIMEOUT: TimeDelta = TimeDelta::hours(24);
/// How long after granting a request that may start at once the timer provisions it,
/// if the granting call did not (it failed, or the process stopped in between).
pub const GRANT_FALLBACK: TimeDelta = TimeDelta::seconds(2);

/// The activation context's engine.
pub struct Engine {
    /// Storage.
    pub db: Db,
    /// This context's event log.
    pub log: EventLog<pb::Event>,
    /// The clock.
    pub clock: SharedClock,
    /// The assignments context.
    pub assignments: Assignments,
    /// Woken when a request's timer changes.
    pub timer_wake: Notify,
}

fn dur(d: Option<&prost_types::Duration>) -> Option<TimeDelta> {
    d.and_then(|d| TimeDelta::new(d.seconds, u32::try_from(d.nanos).ok()?))
}

fn pdur(d: TimeDelta) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.num_seconds(),
        nanos: 0,
    }
}

/// The most serious code first: UNAUTHENTICATED > PERMISSION_DENIED > NOT_FOUND >
/// INVALID_ARGUMENT > FAILED_PRECONDITION.
fn severity(rule: pb::CheckRule) -> u8 {
    use pb::CheckRule as R;
    match rule {
        R::MfaRequired => 5,
        R::NotEligible | R::PrincipalDisabled => 4,
        R::NotFound => 3,
        R::DurationTooLong
        | R::DurationTooShort
        | R::JustificationRequired
        | R::TicketRequired
        | R::StartOutOfRange
        | R::DuplicateItem => 2,
        R::OverlappingActivation | R::NoApprover | R::Unspecified => 1,
    }
}

fn violation(
    field: String,
    rule: pb::CheckRule,
    description: impl Into<String>,
) -> pb::CheckViolation {
    pb::CheckViolation {
        field,
        rule: rule.into(),
        description: description.into(),
    }
}

/// An item that passed its checks, ready to become a request.
struct Planned {
    request: pb::Request,
    /// Resolved approvers per stage: (approver id, via group, escalation).
    approvers: Vec<Vec<(String, String, bool)>>,
}

/// What the engine resolved for one item.
struct Checked {
    result: pb::ActivationItemResult,
    planned: Option<Planned>,
}

impl Engine {
    /// A new engine.
    pub fn new(
        db: Db,
        log: EventLog<pb::Event>,
        clock: SharedClock,
        assignments: Assignments,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            log,
            clock,
            assignments,
            timer_wake: Notify::new(),
        })
    }

    /// Commits a unit of work and wakes the timer.
    async fn commit(&self, uow: UnitOfWork<pb::Event>) -> ApiResult<()> {
        uow.commit().await?;
        self.timer_wake.notify_one();
        Ok(())
    }

    /// Resolves the stages of the approval settings into approver sets, expanding groups
    /// (at request time) and leaving the requestor out. A stage naming nobody takes the
    /// default approvers.
    pub(crate) async fn resolve_stages(
        &self,
        approval: &asg::ApprovalSettings,
        defaults: &[common::PrincipalRef],
        requestor: &str,
        now: DateTime<Utc>,
    ) -> ApiResult<(Vec<pb::ApprovalStage>, Vec<Vec<(String, String, bool)>>)> {
        let mut stages = approval.stages.clone();
        if stages.is_empty() {
            stages.push(asg::ApprovalStage {
                required_approvals: 1,
                ..Default::default()
            });
        }
        let timeout = dur(approval.timeout.as_ref())
            .filter(|t| *t > TimeDelta::zero())
            .unwrap_or(DEFAULT_TIMEOUT);
        let mut out_stages = Vec::new();
        let mut out_sets = Vec::new();
        for (i, s) in stages.iter().enumerate() {
            let configured = if s.approvers.is_empty() {
                defaults.to_vec()
            } else {
                s.approvers.clone()
            };
            let mut set: Vec<(String, String, bool)> = Vec::new();
            let mut seen = HashSet::new();
            for (list, escalation) in [(&configured, false), (&s.escalation_approvers, true)] {
                for p in list.iter() {
                    if p.r#type == i32::from(common::PrincipalType::Group) {
                        for m in self.assignments.group_members(&p.id).await? {
                            if m.r#type != i32::from(common::PrincipalType::Group)
                                && m.id != requestor
                                && seen.insert((m.id.clone(), escalation))
                            {
                                set.push((m.id, p.id.clone(), escalation));
                            }
                        }
                    } else if p.id != requestor && seen.insert((p.id.clone(), escalation)) {
                        set.push((p.id.clone(), String::new(), escalation));
                    }
                }
            }
            let approvers: Vec<common::PrincipalRef> = set
                .iter()
                .filter(|a| !a.2)
                .map(|(id, _, _)| common::PrincipalRef {
                    id: id.clone(),
                    ..Default::default()
                })
                .collect();
            let escalation_approvers: Vec<common::PrincipalRef> = set
                .iter()
                .filter(|a| a.2)
                .map(|(id, _, _)| common::PrincipalRef {
                    id: id.clone(),
                    ..Default::default()
                })
                .collect();
            let escalate_after =
                dur(s.escalation_after.as_ref()).filter(|d| *d > TimeDelta::zero());
            let open = i == 0;
            out_stages.push(pb::ApprovalStage {
                index: i32::try_from(i).unwrap_or(0),
                status: if open {
                    pb::StageStatus::Pending
                } else {
                    pb::StageStatus::Waiting
                }
                .into(),
                required_approvals: s.required_approvals.max(1),
                configured_approvers: configured.clone(),
                approvers,
                escalation_approvers,
                escalate_time: if open && !s.escalation_approvers.is_empty() {
                    escalate_after.map(|d| to_proto(now + d))
                } else {
                    None
                },
                escalated: false,
                open_time: if open { Some(to_proto(now)) } else { None },
                deadline: if open {
                    Some(to_proto(now + timeout))
                } else {
                    None
                },
                decisions: Vec::new(),
            });
            out_sets.push(set);
        }
        Ok((out_stages, out_sets))
    }

    /// Checks one item against the role's effective settings and the caller's
    /// eligibility, and plans its request.
    async fn check_item(
        &self,
        caller: &Caller,
        index: usize,
        item: &pb::ActivationItem,
        batch: &pb::ActivateRolesRequest,
        batch_id: &str,
        seen: &mut HashSet<(String, String)>,
    ) -> ApiResult<Checked> {
        let now = self.clock.now();
        let f = |name: &str| format!("items[{index}].{name}");
        let mut v: Vec<pb::CheckViolation> = Vec::new();
        let scope_id = if item.scope_id.is_empty() {
            "/".to_owned()
        } else {
            item.scope_id.clone()
        };
        let mut result = pb::ActivationItemResult {
            index: i32::try_from(index).unwrap_or(0),
            ..Default::default()
        };
        let fail = |mut result: pb::ActivationItemResult, v: Vec<pb::CheckViolation>| {
            result.outcome = pb::ItemOutcome::Failed.into();
            result.violations = v;
            Ok(Checked {
                result,
                planned: None,
            })
        };
        if item.role_id.is_empty() {
            v.push(violation(
                f("role_id"),
                pb::CheckRule::NotFound,
                "is required",
            ));
            return fail(result, v);
        }
        if !seen.insert((item.role_id.clone(), scope_id.clone())) {
            v.push(violation(
                f("role_id"),
                pb::CheckRule::DuplicateItem,
                "the same role and scope appear twice in this request",
            ));
            return fail(result, v);
        }
        // Settings (also tells whether role and scope exist).
        let settings = match self
            .assignments
            .effective_settings(&caller.token, &item.role_id, &scope_id)
            .await
        {
            Ok(s) => s,
            Err(ApiError::NotFound { id, .. }) => {
                v.push(violation(
                    f("role_id"),
                    pb::CheckRule::NotFound,
                    format!("role or scope not found: {id}"),
                ));
                return fail(result, v);
            }
            Err(e) => return Err(e),
        };
        let rs = settings.role_settings.clone().unwrap_or_default();
        let act = rs.activation.clone().unwrap_or_default();
        // Eligibility: directly, through a group, or inherited from above.
        let grants = self
            .assignments
            .eligible_grants(&caller.token, &caller.principal_id, &scope_id)
            .await?;
        let eligible = grants.iter().find(|g| {
            let i = g.instance.as_ref();
            i.and_then(|i| i.role.as_ref())
                .is_some_and(|r| r.id == item.role_id)
                && (item.eligibility_id.is_empty()
                    || i.is_some_and(|i| {
                        i.assignment_id == item.eligibility_id || i.id == item.eligibility_id
                    }))
        });
        let Some(eligible) = eligible else {
            v.push(violation(
                f("role_id"),
                pb::CheckRule::NotEligible,
                format!(
                    "{} is not eligible for {} at {scope_id}",
                    caller.principal_id, item.role_id
                ),
            ));
            return fail(result, v);
        };
        let instance = eligible.instance.clone().unwrap_or_default();
        let eligibility_id = instance.assignment_id.clone();
        let eligibility_end = instance.end_time.as_ref().and_then(from_proto);
        // Window.
        let max = dur(act.maximum_duration.as_ref()).unwrap_or(TimeDelta::hours(8));
        let duration = match dur(item.duration.as_ref()) {
            None => max,
            Some(d) => d,
        };
        if duration > max {
            v.push(violation(
                f("duration"),
                pb::CheckRule::DurationTooLong,
                format!(
                    "exceeds the role's maximum activation duration of {} minutes",
                    max.num_minutes()
                ),
            ));
        } else if duration < MIN_DURATION {
            v.push(violation(
                f("duration"),
                pb::CheckRule::DurationTooShort,
                "must be at least 5 minutes",
            ));
        }
        let start = match item.start_time.as_ref().map(from_proto) {
            None => now,
            Some(None) => {
                v.push(violation(
                    f("start_time"),
                    pb::CheckRule::StartOutOfRange,
                    "is not a valid timestamp",
                ));
                now
            }
            Some(Some(s)) if s < now - START_SKEW => {
                v.push(violation(
                    f("start_time"),
                    pb::CheckRule::StartOutOfRange,
                    "must not be in the past",
                ));
                now
            }
            Some(Some(s)) if s > now + MAX_START_AHEAD => {
                v.push(violation(
                    f("start_time"),
                    pb::CheckRule::StartOutOfRange,
                    "must be within 30 days",
                ));
                now
            }
            Some(Some(s)) => s.max(now),
        };
        let mut end = start + duration;
        if let Some(e) = eligibility_end {
            if e <= start {
                v.push(violation(
                    f("start_time"),
                    pb::CheckRule::NotEligible,
                    format!("the eligibility ends at {}", e.to_rfc3339()),
                ));
            }
            end = end.min(e);
        }
        // Justification, ticket, MFA.
        let justification = if item.justification.trim().is_empty() {
            batch.justification.trim()
        } else {
            item.justification.trim()
        };
        if act.require_justification.unwrap_or(true) && justification.is_empty() {
            v.push(violation(
                f("justification"),
                pb::CheckRule::JustificationRequired,
                "the role's settings require a justification",
            ));
        }
        if justification.len() > 2000 {
            v.push(violation(
                f("justification"),
                pb::CheckRule::JustificationRequired,
                "must be at most 2000 characters",
            ));
        }
        let ticket = item
            .ticket
            .clone()
            .or_else(|| batch.ticket.clone())
            .filter(|t| !t.ticket_number.trim().is_empty());
        if act.require_ticket.unwrap_or(false) && ticket.is_none() {
            v.push(violation(
                f("ticket.ticket_number"),
                pb::CheckRule::TicketRequired,
                "the role's settings require ticket information",
            ));
        }
        let mfa_required = act.require_mfa.unwrap_or(true);
        let mfa_max_age = dur(act.mfa_max_age.as_ref()).unwrap_or(TimeDelta::minutes(15));
        let mfa_ok = caller.has_fresh_mfa(now, mfa_max_age);
        if mfa_required && !mfa_ok {
            v.push(violation(
                f("mfa"),
                pb::CheckRule::MfaRequired,
                format!("MFA_STEP_UP_REQUIRED: sign in again with multi-factor authentication (at most {} minutes ago)", mfa_max_age.num_minutes()),
            ));
        }
        // Overlap with the caller's own requests for the same role and scope.
        let overlapping = store::query(
            &self.db,
            &format!(
                "requestor_id = $1 AND role_id = $2 AND scope_id = $3 AND action = {} AND status IN ({}, {}, {})",
                i32::from(pb::RequestAction::Activate),
                i32::from(pb::RequestStatus::PendingApproval),
                i32::from(pb::RequestStatus::Granted),
                i32::from(pb::RequestStatus::Provisioned),
            ),
            &[&caller.principal_id, &item.role_id, &scope_id],
            10,
        )
        .await?
        .into_iter()
        .find(|s| s.request.end_time.as_ref().and_then(from_proto).is_none_or(|e| e > now));
        if let Some(o) = &overlapping {
            result.overlapping_request_id.clone_from(&o.request.id);
            v.push(violation(f("role_id"), pb::CheckRule::OverlappingActivation, format!("request {} of the same role and scope is pending or in effect; extend it instead", o.request.id)));
        }
        // Approval.
        let approval_required = act.require_approval.unwrap_or(false);
        let (stages, approvers) = if approval_required {
            let approval = act.approval.clone().unwrap_or_default();
            let (stages, sets) = self
                .resolve_stages(
                    &approval,
                    &settings.default_approvers,
                    &caller.principal_id,
                    now,
                )
                .await?;
            if stages.iter().any(|s| s.approvers.is_empty()) {
                v.push(violation(
                    f("role_id"),
                    pb::CheckRule::NoApprover,
                    "nobody other than the requestor can approve this role",
                ));
            }
            (stages, sets)
        } else {
            (Vec::new(), Vec::new())
        };
        result.requirements = Some(pb::ItemRequirements {
            eligibility_id: eligibility_id.clone(),
            member_type: eligible.member_type,
            maximum_duration: Some(pdur(max)),
            mfa_required,
            mfa_satisfied: mfa_ok,
            justification_required: act.require_justification.unwrap_or(true),
            ticket_required: act.require_ticket.unwrap_or(false),
            approval_required,
            stages: stages.clone(),
        });
        result.start_time = Some(to_proto(start));
        result.end_time = Some(to_proto(end));
        if !v.is_empty() {
            return fail(result, v);
        }
        let status = if approval_required {
            pb::RequestStatus::PendingApproval
        } else {
            pb::RequestStatus::Granted
        };
        let request = pb::Request {
            id: uuid::Uuid::now_v7().to_string(),
            batch_id: batch_id.to_owned(),
            action: pb::RequestAction::Activate.into(),
            status: status.into(),
            status_reason: String::new(),
            end_reason: 0,
            requestor: Some(common::PrincipalRef {
                id: caller.principal_id.clone(),
                ..Default::default()
            }),
            role: Some(common::RoleRef {
                id: item.role_id.clone(),
                display_name: settings
                    .role
                    .as_ref()
                    .map(|r| r.display_name.clone())
                    .unwrap_or_default(),
            }),
            scope: Some(settings.scope.clone().unwrap_or(common::ScopeRef {
                id: scope_id.clone(),
                ..Default::default()
            })),
            assignment_id: eligibility_id,
            member_type: eligible.member_type,
            target_request_id: String::new(),
            start_time: Some(to_proto(start)),
            duration: Some(pdur(end - start)),
            end_time: Some(to_proto(end)),
            justification: justification.to_owned(),
            ticket,
            mfa_verified: mfa_ok,
            auth_time: caller.auth_time.map(to_proto),
            stages,
            current_stage: 0,
            instance_id: String::new(),
            create_time: Some(to_proto(now)),
            update_time: Some(to_proto(now)),
            complete_time: None,
            ended_by: String::new(),
        };
        result.outcome = if approval_required {
            pb::ItemOutcome::PendingApproval
        } else if start > now {
            pb::ItemOutcome::Granted
        } else {
            pb::ItemOutcome::Provisioned
        }
        .into();
        result.request = Some(request.clone());
        Ok(Checked {
            result,
            planned: Some(Planned { request, approvers }),
        })
    }

    /// ActivateRoles: checks every item, then writes all (or, with `partial`, those that
    /// pass) in one transaction, then provisions the approval-free items that start now.
    pub async fn activate(
        &self,
        caller: &Caller,
        req: pb::ActivateRolesRequest,
    ) -> ApiResult<pb::ActivateRolesResponse> {
        const METHOD: &str = "ActivateRoles";
        if let Some(done) = tenure_platform::idempotency::replay::<pb::ActivateRolesResponse>(
            &self.db,
            crate::PREFIX,
            METHOD,
            &req.request_id,
            &caller.principal_id,
        )
        .await?
        {
            return self.refresh(done).await;
        }
        if req.items.is_empty() {
            return Err(ApiError::invalid(
                "items",
                "name at least one role to activate",
            ));
        }
        if req.items.len() > MAX_ITEMS {
            return Err(ApiError::invalid(
                "items",
                format!("at most {MAX_ITEMS} roles in one request"),
            ));
        }
        let batch_id = uuid::Uuid::now_v7().to_string();
        let mut seen = HashSet::new();
        let mut checked = Vec::with_capacity(req.items.len());
        for (i, item) in req.items.iter().enumerate() {
            checked.push(
                self.check_item(caller, i, item, &req, &batch_id, &mut seen)
                    .await?,
            );
        }
        let failed: Vec<&pb::ActivationItemResult> = checked
            .iter()
            .map(|c| &c.result)
            .filter(|r| r.outcome() == pb::ItemOutcome::Failed)
            .collect();
        if req.validate_only {
            return Ok(pb::ActivateRolesResponse {
                results: checked.into_iter().map(|c| c.result).collect(),
                batch_id,
            });
        }
        if !failed.is_empty() && !req.partial {
            return Err(all_or_nothing_error(&failed));
        }
        let mut results = Vec::new();
        let mut to_write = Vec::new();
        for c in checked {
            let mut r = c.result;
            if c.planned.is_none() && r.outcome() != pb::ItemOutcome::Failed {
                r.outcome = pb::ItemOutcome::NotAttempted.into();
            }
            results.push(r);
            if let Some(p) = c.planned {
                to_write.push(p);
            }
        }
        let now = self.clock.now();
        let mut uow = self.log.begin().await?;
        for p in &to_write {
            let r = &p.request;
            let due = due_at(r, now);
            store::insert(&mut uow, r, due).await?;
            uow.emit(
                NewEvent::new(
                    pb::RequestCreated {
                        request: Some(r.clone()),
                    },
                    &caller.principal_id,
                    &r.id,
                )
                .correlated(r.batch_id.clone()),
            );
            if r.status() == pb::RequestStatus::PendingApproval {
                for (stage, set) in p.approvers.iter().enumerate() {
                    let pairs: Vec<(String, String)> = set
                        .iter()
                        .filter(|a| !a.2)
                        .map(|a| (a.0.clone(), a.1.clone()))
                        .collect();
                    let esc: Vec<(String, String)> = set
                        .iter()
                        .filter(|a| a.2)
                        .map(|a| (a.0.clone(), a.1.clone()))
                        .collect();
                    let st = i32::try_from(stage).unwrap_or(0);
                    store::add_approvers(&mut uow, &r.id, st, &pairs, false).await?;
                    store::add_approvers(&mut uow, &r.id, st, &esc, true).await?;
                }
                let s0 = &r.stages[0];
                uow.emit(
                    NewEvent::new(
                        pb::ApprovalRequested {
                            request: Some(r.clone()),
                            stage_index: 0,
                            approvers: s0.approvers.clone(),
                            escalation: false,
                            deadline: s0.deadline,
                        },
                        &caller.principal_id,
                        &r.id,
                    )
                    .correlated(r.batch_id.clone()),
                );
            } else {
                uow.emit(
                    NewEvent::new(
                        pb::RequestGranted {
                            request: Some(r.clone()),
                        },
                        &caller.principal_id,
                        &r.id,
                    )
                    .correlated(r.batch_id.clone()),
                );
            }
        }
        let response = pb::ActivateRolesResponse {
            results: results.clone(),
            batch_id: batch_id.clone(),
        };
        tenure_platform::idempotency::remember(
            &mut uow,
            crate::PREFIX,
            METHOD,
            &req.request_id,
            &caller.principal_id,
            &response,
        )
        .await?;
        self.commit(uow).await?;
        // Provision approval-free items that start now, before replying. Each starts
        // from the version just written (1), so provisioning need not read it back.
        let mut current: HashMap<String, pb::Request> = HashMap::new();
        let mut reread = false;
        for p in &to_write {
            let r = &p.request;
            if r.status() == pb::RequestStatus::Granted
                && r.start_time
                    .as_ref()
                    .and_then(from_proto)
                    .is_some_and(|s| s <= self.clock.now())
            {
                let written = store::Stored {
                    request: r.clone(),
                    version: 1,
                    due_at: due_at(r, now),
                    attempts: 0,
                };
                match self.provision_stored(written).await {
                    Ok(s) => {
                        current.insert(s.request.id.clone(), s.request);
                    }
                    Err(e) => {
                        reread = true;
                        tracing::warn!(request = %r.id, error = %e, "provisioning failed; the timer retries");
                    }
                }
            } else {
                current.insert(r.id.clone(), r.clone());
            }
        }
        let resp = pb::ActivateRolesResponse { results, batch_id };
        if reread {
            return self.refresh(resp).await;
        }
        let mut resp = resp;
        for r in &mut resp.results {
            if let Some(req) = &r.request
                && let Some(cur) = current.remove(&req.id)
            {
                r.outcome = outcome_of(cur.status(), r.outcome()).into();
                r.request = Some(cur);
            }
        }
        Ok(resp)
    }

    /// Re-reads the requests of a response so its statuses are current.
    async fn refresh(
        &self,
        mut resp: pb::ActivateRolesResponse,
    ) -> ApiResult<pb::ActivateRolesResponse> {
        for r in &mut resp.results {
            if let Some(req) = &r.request
                && let Some(s) = store::get(&self.db, &req.id).await?
            {
                r.outcome = outcome_of(s.request.status(), r.outcome()).into();
                r.request = Some(s.request);
            }
        }
        Ok(resp)
    }
}

/// An item's outcome for a request now in `status` (`was` when the status says
/// nothing new).
fn outcome_of(status: pb::RequestStatus, was: pb::ItemOutcome) -> pb::ItemOutcome {
    match status {
        pb::RequestStatus::Provisioned => pb::ItemOutcome::Provisioned,
        pb::RequestStatus::Granted => pb::ItemOutcome::Granted,
        pb::RequestStatus::PendingApproval => pb::ItemOutcome::PendingApproval,
        pb::RequestStatus::Failed => pb::ItemOutcome::Failed,
        _ => was,
    }
}

/// The error of an all-or-nothing ActivateRoles with failing items: the most serious
/// code, with a field violation for each problem of each failing item.
fn all_or_nothing_error(failed: &[&pb::ActivationItemResult]) -> ApiError {
    let worst = failed
        .iter()
        .flat_map(|r| r.violations.iter())
        .max_by_key(|v| severity(v.rule()))
        .map(|v| v.rule())
        .unwrap_or(pb::CheckRule::Unspecified);
    let violations: Vec<FieldViolation> = failed
        .iter()
        .flat_map(|r| r.violations.iter())
        .map(|v| {
            FieldViolation::new(
                v.field.clone(),
                format!("{:?}: {}", v.rule(), v.description),
            )
        })
        .collect();
    let summary = violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let prefix = "nothing was activated";
    match severity(worst) {
        5 => ApiError::Unauthenticated(format!("{prefix}: {summary}")),
        4 => ApiError::PermissionDenied(format!("{prefix}: {summary}")),
        3 => ApiError::NotFound {
            kind: "role or scope",
            id: format!("{prefix}: {summary}"),
        },
        2 => ApiError::InvalidArgument(violations),
        _ => ApiError::FailedPrecondition(format!("{prefix}: {summary}")),
    }
}

/// The next instant a timer must act on `r`, if any.
pub fn due_at(r: &pb::Request, now: DateTime<Utc>) -> Option<i64> {
    match r.status() {
        pb::RequestStatus::PendingApproval => {
            let s = r
                .stages
                .get(usize::try_from(r.current_stage).unwrap_or(0))?;
            let deadline = s.deadline.as_ref().and_then(from_proto);
            let escalate = if s.escalated {
                None
            } else {
                s.escalate_time.as_ref().and_then(from_proto)
            };
            match (deadline, escalate) {
                (Some(d), Some(e)) => Some(to_micros(d.min(e))),
                (d, e) => d.or(e).map(to_micros),
            }
        }
        pb::RequestStatus::Granted => {
            // A start still ahead when the request last changed fires exactly at the
            // start: nobody else provisions it. A request that could start when it
            // changed is provisioned by the call that granted it (`activate`,
            // `decide`); the timer is only its fallback, [`GRANT_FALLBACK`] later, so
            // it does not race that call.
            let start = r.start_time.as_ref().and_then(from_proto)?;
            let changed = r.update_time.as_ref().and_then(from_proto).unwrap_or(now);
            Some(to_micros(if start > changed {
                start
            } else {
                changed + GRANT_FALLBACK
            }))
        }
        _ => None,
    }
}

/// Maps a per-stage map for tests and callers.
pub type StageMap = BTreeMap<i32, Vec<String>>;

/// How long to wait before provisioning attempt `n` (1-based).
pub fn backoff(n: i64) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << n.clamp(0, 6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(start: DateTime<Utc>, changed: DateTime<Utc>) -> pb::Request {
        pb::Request {
            status: pb::RequestStatus::Granted.into(),
            start_time: Some(to_proto(start)),
            update_time: Some(to_proto(changed)),
            ..Default::default()
        }
    }

    fn t(secs: i64, micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_893_456_000 + secs, 0).unwrap_or_default()
            + TimeDelta::microseconds(micros)
    }

    #[test]
    fn a_future_start_is_due_exactly_at_the_start_even_within_the_fallback_slack() {
        let changed = t(0, 0);
        for start in [
            t(0, 1),
            t(1, 0),
            t(1, 999_999),
            t(2, 0),
            t(3, 0),
            t(3_600, 0),
        ] {
            assert_eq!(
                due_at(&granted(start, changed), changed),
                Some(to_micros(start)),
                "start {start} after a change at {changed}"
            );
        }
    }

    #[test]
    fn a_start_that_had_come_when_granted_falls_back_after_the_slack() {
        let changed = t(10, 0);
        // Starting at the grant itself, or earlier (a start "now" within the skew, or an
        // approval that came after the scheduled start): the granting call provisions;
        // the timer only falls back.
        for start in [t(10, 0), t(9, 999_999), t(-300, 0)] {
            assert_eq!(
                due_at(&granted(start, changed), changed),
                Some(to_micros(changed + GRANT_FALLBACK)),
                "start {start} at or before a change at {changed}"
            );
        }
    }

    #[test]
    fn only_granted_and_pending_requests_are_due() {
        let mut r = granted(t(60, 0), t(0, 0));
        for status in [
            pb::RequestStatus::Provisioned,
            pb::RequestStatus::Canceled,
            pb::RequestStatus::Failed,
        ] {
            r.status = status.into();
            assert_eq!(due_at(&r, t(0, 0)), None, "{status:?}");
        }
    }
}
