//! The request workflow after creation: provisioning (with bounded retries), approval
//! decisions, cancel, deactivate, revoke, extend, renew, the timers, and what the
//! assignments context tells us through its stream.

use chrono::{DateTime, TimeDelta, Utc};
use tenure_platform::auth::Caller;
use tenure_platform::clock::{from_proto, to_micros, to_proto};
use tenure_platform::events::{NewEvent, UnitOfWork};
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::activation::v1 as pb;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1 as common;

use crate::engine::{Engine, MAX_ATTEMPTS, backoff, due_at};
use crate::store::{self, Stored};

/// Most due requests one timer pass takes.
pub const DUE_BATCH: i64 = 200;
/// Due requests one timer pass works at once. Each holds at most one database
/// connection at a time (PostgreSQL's pool, shared by all contexts, has 16), and the
/// rest of its time it waits for the assignments context.
pub const DUE_CONCURRENCY: usize = 16;

/// What a timer pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Due requests it took (at most [`DUE_BATCH`]).
    pub due: usize,
    /// Of those, the ones whose step failed (logged; a provisioning failure has also
    /// scheduled its retry).
    pub failed: usize,
}

impl Pass {
    /// A full pass that got somewhere: more may be due already, so the timer runs the
    /// next pass at once instead of waiting for a wake-up.
    pub fn more_due(&self) -> bool {
        i64::try_from(self.due).is_ok_and(|d| d >= DUE_BATCH) && self.failed < self.due
    }

    /// Every due request failed (the assignments context or the database is down, or
    /// the rows keep conflicting): the timer backs off instead of retrying at once.
    pub fn all_failed(&self) -> bool {
        self.due > 0 && self.failed == self.due
    }
}

fn status_name(s: pb::RequestStatus) -> &'static str {
    s.as_str_name().trim_start_matches("REQUEST_STATUS_")
}

fn already_decided(s: pb::RequestStatus) -> ApiError {
    ApiError::precondition(format!(
        "REQUEST_ALREADY_DECIDED: the request is {}",
        status_name(s)
    ))
}

/// Whether a provisioning failure is worth retrying.
fn transient(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Unavailable(_)
            | ApiError::Aborted(_)
            | ApiError::Internal(_)
            | ApiError::ResourceExhausted(_)
    )
}

impl Engine {
    async fn load(&self, id: &str) -> ApiResult<Stored> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        store::get(&self.db, id)
            .await?
            .ok_or_else(|| ApiError::not_found("request", id))
    }

    /// Applies `change` to the current version of a request inside a unit of work,
    /// retrying when a concurrent writer got there first. `change` returns the events to
    /// emit, or an error that aborts without writing.
    async fn transition<F>(&self, id: &str, actor: &str, change: F) -> ApiResult<Stored>
    where
        F: FnMut(&mut Stored, DateTime<Utc>) -> ApiResult<Vec<pb::Event>>,
    {
        self.transition_known(id, None, actor, change).await
    }

    /// [`Engine::transition`] starting from a version the caller has just read: the
    /// first attempt skips the read and relies on the version check of the update
    /// alone; a concurrent change makes it read and retry as usual.
    async fn transition_known<F>(
        &self,
        id: &str,
        mut known: Option<Stored>,
        actor: &str,
        mut change: F,
    ) -> ApiResult<Stored>
    where
        F: FnMut(&mut Stored, DateTime<Utc>) -> ApiResult<Vec<pb::Event>>,
    {
        for _ in 0..5 {
            let mut uow = self.log.begin().await?;
            let current = match known.take() {
                Some(s) => Some(s),
                None => store::get_tx(&mut uow, id).await?,
            };
            let Some(mut s) = current else {
                uow.rollback().await?;
                return Err(ApiError::not_found("request", id));
            };
            let now = uow.now();
            let events = match change(&mut s, now) {
                Ok(e) => e,
                Err(e) => {
                    uow.rollback().await?;
                    return Err(e);
                }
            };
            s.request.update_time = Some(to_proto(now));
            let due = due_at(&s.request, now);
            let attempts = s.attempts;
            if !store::update(&mut uow, &s, due, attempts).await? {
                uow.rollback().await?;
                continue;
            }
            for e in events {
                uow.emit(NewEvent::new(e, actor, id));
            }
            uow.commit().await?;
            self.timer_wake.notify_one();
            s.version += 1;
            return Ok(s);
        }
        Err(ApiError::Aborted(
            "the request is changing concurrently; retry".into(),
        ))
    }

    /// Provisions a GRANTED request whose start has come, through the assignments
    /// context (idempotent by the request id there, so a retry never provisions twice).
    pub async fn provision(&self, id: &str) -> ApiResult<Stored> {
        let s = self.load(id).await?;
        self.provision_stored(s).await
    }

    /// [`Engine::provision`] of a request as the caller has just read (or written) it.
    pub async fn provision_stored(&self, s: Stored) -> ApiResult<Stored> {
        let id = s.request.id.clone();
        let id = id.as_str();
        if s.request.status() != pb::RequestStatus::Granted {
            return Ok(s);
        }
        let r = &s.request;
        let result = match r.action() {
            pb::RequestAction::Activate => self
                .assignments
                .provision(asg::ProvisionActivationRequest {
                    request_id: r.id.clone(),
                    eligibility_id: r.assignment_id.clone(),
                    principal_id: r
                        .requestor
                        .as_ref()
                        .map(|p| p.id.clone())
                        .unwrap_or_default(),
                    role_id: r.role.as_ref().map(|x| x.id.clone()).unwrap_or_default(),
                    scope_id: r.scope.as_ref().map(|x| x.id.clone()).unwrap_or_default(),
                    start_time: r.start_time,
                    end_time: r.end_time,
                    justification: r.justification.clone(),
                    ticket: r.ticket.clone(),
                    actor_id: r
                        .requestor
                        .as_ref()
                        .map(|p| p.id.clone())
                        .unwrap_or_default(),
                })
                .await
                .map(|p| (p.instance.map(|i| i.id).unwrap_or_default(), p.sequence)),
            pb::RequestAction::Extend => self
                .assignments
                .extend(asg::ExtendActivationRequest {
                    request_id: r.id.clone(),
                    activation_request_id: r.target_request_id.clone(),
                    new_end_time: r.end_time,
                    justification: r.justification.clone(),
                    actor_id: r
                        .requestor
                        .as_ref()
                        .map(|p| p.id.clone())
                        .unwrap_or_default(),
                })
                .await
                .map(|p| (p.instance.map(|i| i.id).unwrap_or_default(), p.sequence)),
            pb::RequestAction::Renew => self
                .assignments
                .renew(asg::ProvisionRenewalRequest {
                    request_id: r.id.clone(),
                    assignment_id: r.assignment_id.clone(),
                    start_time: r.start_time,
                    end_time: r.end_time,
                    justification: r.justification.clone(),
                    ticket: r.ticket.clone(),
                    actor_id: r
                        .requestor
                        .as_ref()
                        .map(|p| p.id.clone())
                        .unwrap_or_default(),
                })
                .await
                .map(|p| (p.assignment.map(|a| a.id).unwrap_or_default(), p.sequence)),
            pb::RequestAction::Unspecified => {
                Err(ApiError::precondition("request without an action"))
            }
        };
        match result {
            Ok((instance_id, sequence)) => {
                let done = self
                    .transition_known(id, Some(s.clone()), "system", |s, now| {
                        if s.request.status() != pb::RequestStatus::Granted {
                            return Ok(Vec::new());
                        }
                        s.request.status = pb::RequestStatus::Provisioned.into();
                        s.request.instance_id.clone_from(&instance_id);
                        let mut events = vec![pb::Event::from(pb::RequestProvisioned {
                            request: Some(s.request.clone()),
                            assignments_sequence: sequence,
                        })];
                        if s.request.action() != pb::RequestAction::Activate {
                            s.request.complete_time = Some(to_proto(now));
                        }
                        if s.request.action() == pb::RequestAction::Renew {
                            events.push(
                                pb::RequestRenewed {
                                    request: Some(s.request.clone()),
                                    assignment_id: s.request.assignment_id.clone(),
                                }
                                .into(),
                            );
                        }
                        Ok(events)
                    })
                    .await?;
                if done.request.action() == pb::RequestAction::Extend {
                    self.apply_extension(&done).await?;
                }
                Ok(done)
            }
            Err(e) => {
                let retry = transient(&e) && s.attempts + 1 < MAX_ATTEMPTS;
                let reason = e.to_string();
                let now = self.clock.now();
                let mut uow = self.log.begin().await?;
                let Some(mut cur) = store::get_tx(&mut uow, id).await? else {
                    uow.rollback().await?;
                    return Err(e);
                };
                let attempts = cur.attempts + 1;
                if retry {
                    let next = now
                        + TimeDelta::from_std(backoff(attempts)).unwrap_or(TimeDelta::seconds(1));
                    store::update(&mut uow, &cur, Some(to_micros(next)), attempts).await?;
                } else {
                    cur.request.status = pb::RequestStatus::Failed.into();
                    cur.request.status_reason = format!("provisioning failed: {reason}");
                    cur.request.complete_time = Some(to_proto(now));
                    cur.request.update_time = Some(to_proto(now));
                    store::update(&mut uow, &cur, None, attempts).await?;
                    uow.emit(NewEvent::new(
                        pb::RequestFailed {
                            request: Some(cur.request.clone()),
                            reason: reason.clone(),
                            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                        },
                        "system",
                        id,
                    ));
                }
                uow.commit().await?;
                self.timer_wake.notify_one();
                Err(e)
            }
        }
    }

    /// After an extension is provisioned, the activation request it extends gets the
    /// new end, and the extension is announced.
    async fn apply_extension(&self, ext: &Stored) -> ApiResult<()> {
        let new_end = ext.request.end_time;
        let mut previous = None;
        let target = self
            .transition(
                &ext.request.target_request_id,
                &ext.request
                    .requestor
                    .as_ref()
                    .map(|p| p.id.clone())
                    .unwrap_or_default(),
                |s, _| {
                    previous = s.request.end_time;
                    s.request.end_time = new_end;
                    if let (Some(st), Some(en)) = (
                        s.request.start_time.as_ref().and_then(from_proto),
                        new_end.as_ref().and_then(from_proto),
                    ) {
                        s.request.duration = Some(prost_types::Duration {
                            seconds: (en - st).num_seconds(),
                            nanos: 0,
                        });
                    }
                    Ok(Vec::new())
                },
            )
            .await?;
        let mut uow = self.log.begin().await?;
        uow.emit(
            NewEvent::new(
                pb::RequestExtended {
                    extension: Some(ext.request.clone()),
                    activation: Some(target.request.clone()),
                    previous_end_time: previous,
                },
                ext.request
                    .requestor
                    .as_ref()
                    .map(|p| p.id.clone())
                    .unwrap_or_default(),
                &ext.request.id,
            )
            .correlated(target.request.id.clone()),
        );
        uow.commit().await?;
        Ok(())
    }

    /// Approves or denies the current stage of a pending request.
    pub async fn decide(
        &self,
        caller: &Caller,
        id: &str,
        approve: bool,
        justification: &str,
    ) -> ApiResult<Stored> {
        let s = self.load(id).await?;
        if s.request
            .requestor
            .as_ref()
            .is_some_and(|r| r.id == caller.principal_id)
        {
            return Err(ApiError::denied(
                "nobody approves or denies their own request",
            ));
        }
        if s.request.status() != pb::RequestStatus::PendingApproval {
            return Err(already_decided(s.request.status()));
        }
        let stage = s.request.current_stage;
        let escalated = s
            .request
            .stages
            .get(usize::try_from(stage).unwrap_or(0))
            .is_some_and(|st| st.escalated);
        let Some((via_group, as_escalation)) =
            store::approver_of(&self.db, id, stage, &caller.principal_id, escalated).await?
        else {
            return Err(ApiError::denied(format!(
                "{} is not an approver of stage {} of this request",
                caller.principal_id,
                stage + 1
            )));
        };
        if justification.len() > 2000 {
            return Err(ApiError::invalid(
                "justification",
                "must be at most 2000 characters",
            ));
        }
        if justification.trim().is_empty() {
            let settings = self
                .assignments
                .effective_settings(
                    &caller.token,
                    s.request.role.as_ref().map_or("", |r| r.id.as_str()),
                    s.request.scope.as_ref().map_or("/", |r| r.id.as_str()),
                )
                .await?;
            let require = settings
                .role_settings
                .and_then(|r| r.activation)
                .and_then(|a| a.approval)
                .and_then(|a| a.require_approver_justification)
                .unwrap_or(true);
            if require {
                return Err(ApiError::invalid(
                    "justification",
                    "the role's settings require the approver's justification",
                ));
            }
        }
        let me = caller.principal_id.clone();
        let done = self
            .transition(id, &me, |s, now| {
                if s.request.status() != pb::RequestStatus::PendingApproval
                    || s.request.current_stage != stage
                {
                    return Err(already_decided(s.request.status()));
                }
                let idx = usize::try_from(stage).unwrap_or(0);
                let last = idx + 1 == s.request.stages.len();
                let st = &mut s.request.stages[idx];
                if st
                    .decisions
                    .iter()
                    .any(|d| d.approver.as_ref().is_some_and(|a| a.id == me))
                {
                    return Err(ApiError::precondition(
                        "REQUEST_ALREADY_DECIDED: you already decided this stage",
                    ));
                }
                st.decisions.push(pb::ApprovalDecision {
                    approver: Some(common::PrincipalRef {
                        id: me.clone(),
                        ..Default::default()
                    }),
                    decision: if approve {
                        pb::Decision::Approve
                    } else {
                        pb::Decision::Deny
                    }
                    .into(),
                    justification: justification.trim().to_owned(),
                    decide_time: Some(to_proto(now)),
                    via_group: (!via_group.is_empty()).then(|| common::PrincipalRef {
                        id: via_group.clone(),
                        ..Default::default()
                    }),
                    as_escalation_approver: as_escalation,
                });
                let approver = Some(common::PrincipalRef {
                    id: me.clone(),
                    ..Default::default()
                });
                if !approve {
                    st.status = pb::StageStatus::Denied.into();
                    s.request.status = pb::RequestStatus::Denied.into();
                    s.request.status_reason = format!("denied by {me}: {}", justification.trim());
                    s.request.complete_time = Some(to_proto(now));
                    return Ok(vec![
                        pb::RequestDenied {
                            request: Some(s.request.clone()),
                            stage_index: stage,
                            approver,
                            justification: justification.trim().to_owned(),
                        }
                        .into(),
                    ]);
                }
                let approvals = st
                    .decisions
                    .iter()
                    .filter(|d| d.decision() == pb::Decision::Approve)
                    .count();
                let stage_completed =
                    i32::try_from(approvals).unwrap_or(i32::MAX) >= st.required_approvals.max(1);
                let mut events = Vec::new();
                if stage_completed {
                    st.status = pb::StageStatus::Approved.into();
                    if last {
                        s.request.status = pb::RequestStatus::Granted.into();
                    } else {
                        s.request.current_stage += 1;
                        let next = &mut s.request.stages[idx + 1];
                        next.status = pb::StageStatus::Pending.into();
                        next.open_time = Some(to_proto(now));
                        let timeout = s.request.stages[idx]
                            .deadline
                            .as_ref()
                            .and_then(from_proto)
                            .zip(
                                s.request.stages[idx]
                                    .open_time
                                    .as_ref()
                                    .and_then(from_proto),
                            )
                            .map(|(d, o)| d - o)
                            .unwrap_or(TimeDelta::hours(24));
                        let next = &mut s.request.stages[idx + 1];
                        next.deadline = Some(to_proto(now + timeout));
                    }
                }
                events.push(pb::Event::from(pb::RequestApproved {
                    request: Some(s.request.clone()),
                    stage_index: stage,
                    approver,
                    justification: justification.trim().to_owned(),
                    stage_completed,
                    request_approved: stage_completed && last,
                }));
                if stage_completed && !last {
                    let next = &s.request.stages[idx + 1];
                    events.push(
                        pb::ApprovalRequested {
                            request: Some(s.request.clone()),
                            stage_index: stage + 1,
                            approvers: next.approvers.clone(),
                            escalation: false,
                            deadline: next.deadline,
                        }
                        .into(),
                    );
                }
                if stage_completed && last {
                    events.push(
                        pb::RequestGranted {
                            request: Some(s.request.clone()),
                        }
                        .into(),
                    );
                }
                Ok(events)
            })
            .await?;
        if done.request.status() == pb::RequestStatus::Granted
            && done
                .request
                .start_time
                .as_ref()
                .and_then(from_proto)
                .is_some_and(|t| t <= self.clock.now())
        {
            return match self.provision(id).await {
                Ok(s) => Ok(s),
                Err(e) => {
                    tracing::warn!(request = %id, error = %e, "provisioning after approval failed; the timer retries");
                    self.load(id).await
                }
            };
        }
        Ok(done)
    }

    /// Cancels the caller's pending (or scheduled) request.
    pub async fn cancel(&self, caller: &Caller, id: &str, reason: &str) -> ApiResult<Stored> {
        let s = self.load(id).await?;
        if s.request
            .requestor
            .as_ref()
            .is_none_or(|r| r.id != caller.principal_id)
        {
            return Err(ApiError::denied("only the requestor cancels a request"));
        }
        self.transition(id, &caller.principal_id, |s, now| {
            let future_start = s
                .request
                .start_time
                .as_ref()
                .and_then(from_proto)
                .is_some_and(|t| t > now);
            match s.request.status() {
                pb::RequestStatus::PendingApproval => {}
                pb::RequestStatus::Granted if future_start => {}
                other => {
                    return Err(ApiError::precondition(format!(
                        "the request is {}; only pending or scheduled requests can be canceled",
                        status_name(other)
                    )));
                }
            }
            s.request.status = pb::RequestStatus::Canceled.into();
            s.request.status_reason = reason.to_owned();
            s.request.complete_time = Some(to_proto(now));
            Ok(vec![
                pb::RequestCanceled {
                    request: Some(s.request.clone()),
                    reason: reason.to_owned(),
                }
                .into(),
            ])
        })
        .await
    }

    /// Ends an activation now: deactivated by its holder, or revoked by an administrator.
    pub async fn end_now(
        &self,
        caller: &Caller,
        id: &str,
        revoke: bool,
        justification: &str,
    ) -> ApiResult<Stored> {
        let s = self.load(id).await?;
        let holder = s
            .request
            .requestor
            .as_ref()
            .map(|r| r.id.clone())
            .unwrap_or_default();
        if revoke {
            if holder == caller.principal_id {
                return Err(ApiError::denied(
                    "nobody revokes their own activation; deactivate it",
                ));
            }
            if justification.trim().is_empty() {
                return Err(ApiError::invalid("justification", "is required to revoke"));
            }
        } else if holder != caller.principal_id {
            return Err(ApiError::denied(
                "only the holder deactivates an activation",
            ));
        }
        match s.request.status() {
            pb::RequestStatus::Ended | pb::RequestStatus::Revoked => return Ok(s),
            pb::RequestStatus::Granted if !revoke => {
                return self
                    .cancel(caller, id, "deactivated before its start")
                    .await;
            }
            pb::RequestStatus::Provisioned | pb::RequestStatus::Granted => {}
            other => {
                return Err(ApiError::precondition(format!(
                    "the request is {}",
                    status_name(other)
                )));
            }
        }
        if s.request.action() != pb::RequestAction::Activate {
            return Err(ApiError::precondition(
                "only activation requests can be ended",
            ));
        }
        if s.request.status() == pb::RequestStatus::Provisioned {
            self.assignments
                .end(asg::EndActivationRequest {
                    request_id: id.to_owned(),
                    reason: if revoke {
                        asg::InstanceEndReason::Revoked
                    } else {
                        asg::InstanceEndReason::Deactivated
                    }
                    .into(),
                    justification: justification.to_owned(),
                    actor_id: caller.principal_id.clone(),
                })
                .await?;
        }
        let me = caller.principal_id.clone();
        self.transition(id, &me, |s, now| {
            if matches!(
                s.request.status(),
                pb::RequestStatus::Ended | pb::RequestStatus::Revoked
            ) {
                return Ok(Vec::new());
            }
            s.request.complete_time = Some(to_proto(now));
            s.request.ended_by.clone_from(&me);
            if revoke {
                s.request.status = pb::RequestStatus::Revoked.into();
                s.request.status_reason = justification.to_owned();
                Ok(vec![
                    pb::RequestRevoked {
                        request: Some(s.request.clone()),
                        justification: justification.to_owned(),
                    }
                    .into(),
                ])
            } else {
                s.request.status = pb::RequestStatus::Ended.into();
                s.request.end_reason = pb::EndReason::Deactivated.into();
                Ok(vec![
                    pb::RoleDeactivated {
                        request: Some(s.request.clone()),
                    }
                    .into(),
                ])
            }
        })
        .await
    }

    /// Marks an activation ended because the assignments context ended its instance
    /// (expiry, eligibility removed, principal disabled), inside the consumer's unit of
    /// work, so the change, its event and the consumer's cursor commit together.
    pub async fn instance_ended_in(
        &self,
        uow: &mut UnitOfWork<pb::Event>,
        request_id: &str,
        reason: pb::EndReason,
    ) -> ApiResult<()> {
        let Some(mut s) = store::get_tx(uow, request_id).await? else {
            return Ok(());
        };
        if s.request.status() != pb::RequestStatus::Provisioned
            || s.request.action() != pb::RequestAction::Activate
        {
            return Ok(());
        }
        let now = uow.now();
        s.request.status = pb::RequestStatus::Ended.into();
        s.request.end_reason = reason.into();
        s.request.complete_time = Some(to_proto(now));
        s.request.update_time = Some(to_proto(now));
        if !store::update(uow, &s, None, s.attempts).await? {
            return Err(ApiError::Aborted(
                "the request changed concurrently; the event is handled again".into(),
            ));
        }
        uow.emit(NewEvent::new(
            pb::RequestEnded {
                request: Some(s.request.clone()),
                reason: reason.into(),
            },
            "system",
            request_id,
        ));
        Ok(())
    }

    /// The timer pass: times out and escalates pending stages, and provisions granted
    /// requests whose start (or retry time) has come. It takes up to [`DUE_BATCH`] due
    /// requests, earliest first, and works [`DUE_CONCURRENCY`] of them at once: each
    /// provisioning is a call to the assignments context and a transaction of its own,
    /// and one after the other they fell behind 167 starts/s (BENCHMARKS.md, workload
    /// 4). Each change is still a conditional update on the request's version and the
    /// provisioning call is idempotent by the request id, so racing tasks or replicas do
    /// each piece of work once.
    pub async fn process_due(&self) -> ApiResult<Pass> {
        use futures::StreamExt as _;
        let now = self.clock.now();
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM activation_requests WHERE due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at, id LIMIT $2",
        )
        .bind(to_micros(now))
        .bind(DUE_BATCH)
        .fetch_all(self.db.reader())
        .await?;
        let due = rows.len();
        let failed = futures::stream::iter(rows)
            .map(|id| async move {
                let r = self.process_one(&id).await;
                if let Err(e) = &r {
                    tracing::warn!(request = %id, error = %e, "activation timer step failed");
                }
                r.is_err()
            })
            .buffer_unordered(DUE_CONCURRENCY)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        Ok(Pass { due, failed })
    }

    /// The timer's work on one due request.
    async fn process_one(&self, id: &str) -> ApiResult<()> {
        let Some(s) = store::get(&self.db, id).await? else {
            return Ok(());
        };
        // The row just read is the starting version: the transitions below check it
        // on update instead of reading it again.
        match s.request.status() {
            pb::RequestStatus::PendingApproval => {
                self.transition_known(id, Some(s), "system", |s, now| {
                    if s.request.status() != pb::RequestStatus::PendingApproval {
                        return Ok(Vec::new());
                    }
                    let idx = usize::try_from(s.request.current_stage).unwrap_or(0);
                    let Some(st) = s.request.stages.get_mut(idx) else {
                        return Ok(Vec::new());
                    };
                    if st
                        .deadline
                        .as_ref()
                        .and_then(from_proto)
                        .is_some_and(|d| d <= now)
                    {
                        st.status = pb::StageStatus::TimedOut.into();
                        s.request.status = pb::RequestStatus::TimedOut.into();
                        s.request.status_reason =
                            "no decision before the approval timeout; denied automatically".into();
                        s.request.complete_time = Some(to_proto(now));
                        return Ok(vec![
                            pb::RequestTimedOut {
                                request: Some(s.request.clone()),
                                stage_index: i32::try_from(idx).unwrap_or(0),
                            }
                            .into(),
                        ]);
                    }
                    if !st.escalated
                        && st
                            .escalate_time
                            .as_ref()
                            .and_then(from_proto)
                            .is_some_and(|e| e <= now)
                    {
                        st.escalated = true;
                        let approvers = st.escalation_approvers.clone();
                        let deadline = st.deadline;
                        return Ok(vec![
                            pb::ApprovalRequested {
                                request: Some(s.request.clone()),
                                stage_index: i32::try_from(idx).unwrap_or(0),
                                approvers,
                                escalation: true,
                                deadline,
                            }
                            .into(),
                        ]);
                    }
                    Ok(Vec::new())
                })
                .await?;
            }
            pb::RequestStatus::Granted => {
                self.provision_stored(s).await?;
            }
            _ => {
                // Nothing due any more: clear the timer.
                let mut uow = self.log.begin().await?;
                if let Some(cur) = store::get_tx(&mut uow, id).await? {
                    store::update(&mut uow, &cur, None, cur.attempts).await?;
                }
                uow.commit().await?;
            }
        }
        Ok(())
    }

    /// The next instant the timer must wake.
    pub async fn next_due(&self) -> ApiResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(due_at) FROM activation_requests WHERE due_at IS NOT NULL",
        )
        .fetch_one(self.db.reader())
        .await?)
    }

    /// Checks an extension or renewal item's common fields.
    pub fn check_justification(v: &mut Violations, required: bool, justification: &str) {
        v.check(
            required && justification.trim().is_empty(),
            "justification",
            "the role's settings require a justification",
        );
        v.check(
            justification.len() > 2000,
            "justification",
            "must be at most 2000 characters",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_pass_that_got_somewhere_runs_the_next_at_once() {
        let full = usize::try_from(DUE_BATCH).unwrap();
        let pass = |due, failed| Pass { due, failed };
        assert!(pass(full, 0).more_due(), "a backlog drains");
        assert!(pass(full, full - 1).more_due(), "one success is progress");
        assert!(!pass(full, full).more_due(), "nothing but failures");
        assert!(!pass(full - 1, 0).more_due(), "not full: nothing more due");
        assert!(!pass(0, 0).more_due());
    }

    #[test]
    fn the_timer_backs_off_only_when_every_due_request_failed() {
        let pass = |due, failed| Pass { due, failed };
        assert!(pass(1, 1).all_failed());
        assert!(pass(200, 200).all_failed());
        assert!(!pass(3, 2).all_failed(), "the others made progress");
        assert!(!pass(0, 0).all_failed(), "an empty pass is no failure");
    }
}
