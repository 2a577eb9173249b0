//! Extension and renewal requests, and reading requests (who may see what).

use chrono::TimeDelta;
use tenure_platform::auth::Caller;
use tenure_platform::clock::{from_proto, to_micros, to_proto};
use tenure_platform::events::NewEvent;
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::activation::v1 as pb;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1 as common;

use crate::engine::{Engine, due_at};
use crate::store::{self, Stored};

/// Longest listing page.
const MAX_PAGE: i64 = 1000;

fn dur(d: Option<&prost_types::Duration>) -> Option<TimeDelta> {
    d.and_then(|d| TimeDelta::new(d.seconds, u32::try_from(d.nanos).ok()?))
}

impl Engine {
    /// Creates (and, when no approval is needed, applies) an EXTEND or RENEW request.
    #[allow(clippy::too_many_arguments)]
    async fn follow_up(
        &self,
        caller: &Caller,
        action: pb::RequestAction,
        base: &pb::Request,
        assignment_id: &str,
        target_request_id: &str,
        start: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        justification: &str,
        ticket: Option<common::TicketInfo>,
        validate_only: bool,
        method_and_id: (&str, &str),
    ) -> ApiResult<(Stored, pb::ItemRequirements)> {
        let role = base.role.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        let scope = base
            .scope
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_else(|| "/".into());
        let settings = self
            .assignments
            .effective_settings(&caller.token, &role, &scope)
            .await?;
        let act = settings
            .role_settings
            .clone()
            .unwrap_or_default()
            .activation
            .unwrap_or_default();
        let now = self.clock.now();
        let mut v = Violations::new();
        Engine::check_justification(
            &mut v,
            act.require_justification.unwrap_or(true),
            justification,
        );
        if act.require_ticket.unwrap_or(false)
            && ticket
                .as_ref()
                .is_none_or(|t| t.ticket_number.trim().is_empty())
        {
            v.add(
                "ticket.ticket_number",
                "the role's settings require ticket information",
            );
        }
        if action == pb::RequestAction::Extend {
            let max = dur(act.maximum_duration.as_ref()).unwrap_or(TimeDelta::hours(8));
            if end > now + max {
                v.add(
                    "new_end_time",
                    format!(
                        "is beyond now + the role's maximum activation duration of {} minutes",
                        max.num_minutes()
                    ),
                );
            }
        }
        v.finish()?;
        let mfa_required = act.require_mfa.unwrap_or(true);
        let mfa_max_age = dur(act.mfa_max_age.as_ref()).unwrap_or(TimeDelta::minutes(15));
        let mfa_ok = caller.has_fresh_mfa(now, mfa_max_age);
        if mfa_required && !mfa_ok {
            return Err(ApiError::Unauthenticated(format!(
                "MFA_STEP_UP_REQUIRED: sign in again with multi-factor authentication (at most {} minutes ago)",
                mfa_max_age.num_minutes()
            )));
        }
        let approval_required = act.require_approval.unwrap_or(false)
            && act.require_approval_for_extension.unwrap_or(true);
        let (stages, sets) = if approval_required {
            self.resolve_stages(
                &act.approval.clone().unwrap_or_default(),
                &settings.default_approvers,
                &caller.principal_id,
                now,
            )
            .await?
        } else {
            (Vec::new(), Vec::new())
        };
        if approval_required && stages.iter().any(|s| s.approvers.is_empty()) {
            return Err(ApiError::precondition(
                "nobody other than the requestor can approve this role",
            ));
        }
        let requirements = pb::ItemRequirements {
            eligibility_id: assignment_id.to_owned(),
            member_type: base.member_type,
            maximum_duration: act.maximum_duration,
            mfa_required,
            mfa_satisfied: mfa_ok,
            justification_required: act.require_justification.unwrap_or(true),
            ticket_required: act.require_ticket.unwrap_or(false),
            approval_required,
            stages: stages.clone(),
        };
        let request = pb::Request {
            id: uuid::Uuid::now_v7().to_string(),
            batch_id: String::new(),
            action: action.into(),
            status: if approval_required {
                pb::RequestStatus::PendingApproval
            } else {
                pb::RequestStatus::Granted
            }
            .into(),
            requestor: Some(common::PrincipalRef {
                id: caller.principal_id.clone(),
                ..Default::default()
            }),
            role: base.role.clone(),
            scope: base.scope.clone(),
            assignment_id: assignment_id.to_owned(),
            member_type: base.member_type,
            target_request_id: target_request_id.to_owned(),
            start_time: Some(to_proto(start)),
            duration: Some(prost_types::Duration {
                seconds: (end - start).num_seconds(),
                nanos: 0,
            }),
            end_time: Some(to_proto(end)),
            justification: justification.trim().to_owned(),
            ticket,
            mfa_verified: mfa_ok,
            auth_time: caller.auth_time.map(to_proto),
            stages,
            create_time: Some(to_proto(now)),
            update_time: Some(to_proto(now)),
            ..Default::default()
        };
        if validate_only {
            return Ok((
                Stored {
                    request,
                    version: 0,
                    due_at: None,
                    attempts: 0,
                },
                requirements,
            ));
        }
        let mut uow = self.log.begin().await?;
        // Only one follow-up of a kind pending at a time.
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM activation_requests WHERE requestor_id = $1 AND action = $2 AND status = $3 \
             AND (target_request_id = $4 AND $4 <> '' OR $4 = '' AND role_id = $5 AND scope_id = $6)",
        )
        .bind(&caller.principal_id)
        .bind(i64::from(i32::from(action)))
        .bind(i64::from(i32::from(pb::RequestStatus::PendingApproval)))
        .bind(target_request_id)
        .bind(&role)
        .bind(&scope)
        .fetch_one(&mut **uow.tx())
        .await?;
        if pending > 0 {
            uow.rollback().await?;
            return Err(ApiError::precondition(
                "a request of this kind is already pending for it",
            ));
        }
        store::insert(&mut uow, &request, due_at(&request, now)).await?;
        uow.emit(
            NewEvent::new(
                pb::RequestCreated {
                    request: Some(request.clone()),
                },
                &caller.principal_id,
                &request.id,
            )
            .correlated(target_request_id.to_owned()),
        );
        if approval_required {
            for (i, set) in sets.iter().enumerate() {
                let st = i32::try_from(i).unwrap_or(0);
                let plain: Vec<(String, String)> = set
                    .iter()
                    .filter(|a| !a.2)
                    .map(|a| (a.0.clone(), a.1.clone()))
                    .collect();
                let esc: Vec<(String, String)> = set
                    .iter()
                    .filter(|a| a.2)
                    .map(|a| (a.0.clone(), a.1.clone()))
                    .collect();
                store::add_approvers(&mut uow, &request.id, st, &plain, false).await?;
                store::add_approvers(&mut uow, &request.id, st, &esc, true).await?;
            }
            let s0 = &request.stages[0];
            uow.emit(NewEvent::new(
                pb::ApprovalRequested {
                    request: Some(request.clone()),
                    stage_index: 0,
                    approvers: s0.approvers.clone(),
                    escalation: false,
                    deadline: s0.deadline,
                },
                &caller.principal_id,
                &request.id,
            ));
        } else {
            uow.emit(NewEvent::new(
                pb::RequestGranted {
                    request: Some(request.clone()),
                },
                &caller.principal_id,
                &request.id,
            ));
        }
        let (method, request_id) = method_and_id;
        tenure_platform::idempotency::remember(
            &mut uow,
            crate::PREFIX,
            method,
            request_id,
            &caller.principal_id,
            &request,
        )
        .await?;
        uow.commit().await?;
        self.timer_wake.notify_one();
        let stored = if approval_required {
            store::get(&self.db, &request.id)
                .await?
                .ok_or_else(|| ApiError::not_found("request", &request.id))?
        } else {
            self.provision(&request.id).await?
        };
        Ok((stored, requirements))
    }

    /// Asks to extend the caller's activation in effect.
    pub async fn extend(
        &self,
        caller: &Caller,
        r: pb::ExtendActivationRequest,
    ) -> ApiResult<pb::ExtendActivationResponse> {
        const METHOD: &str = "ExtendActivation";
        if let Some(done) = tenure_platform::idempotency::replay::<pb::Request>(
            &self.db,
            crate::PREFIX,
            METHOD,
            &r.request_id,
            &caller.principal_id,
        )
        .await?
        {
            let current = store::get(&self.db, &done.id)
                .await?
                .map(|s| s.request)
                .unwrap_or(done);
            return Ok(pb::ExtendActivationResponse {
                request: Some(current),
                requirements: None,
            });
        }
        let target = store::get(&self.db, &r.activation_request_id)
            .await?
            .ok_or_else(|| ApiError::not_found("activation request", &r.activation_request_id))?;
        if target
            .request
            .requestor
            .as_ref()
            .is_none_or(|p| p.id != caller.principal_id)
        {
            return Err(ApiError::denied("only the holder extends an activation"));
        }
        if target.request.status() != pb::RequestStatus::Provisioned
            || target.request.action() != pb::RequestAction::Activate
        {
            return Err(ApiError::precondition(
                "only an activation in effect (PROVISIONED) can be extended",
            ));
        }
        let current_end = target
            .request
            .end_time
            .as_ref()
            .and_then(from_proto)
            .ok_or_else(|| ApiError::precondition("the activation has no end"))?;
        let new_end = match &r.expiration {
            Some(pb::extend_activation_request::Expiration::NewEndTime(t)) => from_proto(t)
                .ok_or_else(|| ApiError::invalid("new_end_time", "is not a valid timestamp"))?,
            Some(pb::extend_activation_request::Expiration::ExtendBy(d)) => {
                current_end
                    + dur(Some(d))
                        .filter(|d| *d > TimeDelta::zero())
                        .ok_or_else(|| {
                            ApiError::invalid("extend_by", "must be a positive duration")
                        })?
            }
            None => {
                return Err(ApiError::invalid(
                    "new_end_time",
                    "give new_end_time or extend_by",
                ));
            }
        };
        if new_end <= current_end {
            return Err(ApiError::invalid(
                "new_end_time",
                "must be after the current end",
            ));
        }
        let (s, requirements) = self
            .follow_up(
                caller,
                pb::RequestAction::Extend,
                &target.request,
                &target.request.assignment_id,
                &target.request.id,
                self.clock.now(),
                new_end,
                &r.justification,
                r.ticket.clone(),
                r.validate_only,
                (METHOD, &r.request_id),
            )
            .await?;
        Ok(pb::ExtendActivationResponse {
            request: Some(s.request),
            requirements: Some(requirements),
        })
    }

    /// Asks to renew one of the caller's expired assignments.
    pub async fn renew(
        &self,
        caller: &Caller,
        r: pb::RenewAssignmentRequest,
    ) -> ApiResult<pb::RenewAssignmentResponse> {
        const METHOD: &str = "RenewAssignment";
        if let Some(done) = tenure_platform::idempotency::replay::<pb::Request>(
            &self.db,
            crate::PREFIX,
            METHOD,
            &r.request_id,
            &caller.principal_id,
        )
        .await?
        {
            let current = store::get(&self.db, &done.id)
                .await?
                .map(|s| s.request)
                .unwrap_or(done);
            return Ok(pb::RenewAssignmentResponse {
                request: Some(current),
                requirements: None,
            });
        }
        if r.assignment_id.is_empty() {
            return Err(ApiError::invalid("assignment_id", "is required"));
        }
        let a = self
            .assignments
            .assignment(&caller.token, &r.assignment_id)
            .await?;
        if a.principal
            .as_ref()
            .is_none_or(|p| p.id != caller.principal_id)
        {
            return Err(ApiError::denied(
                "only the assignment's own principal renews it (group assignments are renewed by administrators)",
            ));
        }
        let now = self.clock.now();
        match a.status() {
            asg::AssignmentStatus::Expired => {}
            asg::AssignmentStatus::Removed => {
                return Err(ApiError::precondition("the assignment was removed"));
            }
            _ => return Err(ApiError::precondition("the assignment has not expired")),
        }
        if a.end_time
            .as_ref()
            .and_then(from_proto)
            .is_some_and(|e| now - e >= TimeDelta::days(30))
        {
            return Err(ApiError::precondition(
                "the assignment expired 30 days ago or more",
            ));
        }
        let end = match &r.expiration {
            Some(pb::renew_assignment_request::Expiration::EndTime(t)) => from_proto(t)
                .ok_or_else(|| ApiError::invalid("end_time", "is not a valid timestamp"))?,
            Some(pb::renew_assignment_request::Expiration::Duration(d)) => {
                now + dur(Some(d))
                    .filter(|d| *d > TimeDelta::zero())
                    .ok_or_else(|| ApiError::invalid("duration", "must be positive"))?
            }
            None => {
                let prev = a
                    .start_time
                    .as_ref()
                    .and_then(from_proto)
                    .zip(a.end_time.as_ref().and_then(from_proto))
                    .map(|(s, e)| e - s)
                    .unwrap_or(TimeDelta::days(30));
                now + prev
            }
        };
        if end <= now {
            return Err(ApiError::invalid("end_time", "must be in the future"));
        }
        let base = pb::Request {
            role: a.role.clone(),
            scope: a.scope.clone(),
            member_type: common::MemberType::Direct.into(),
            ..Default::default()
        };
        let (s, requirements) = self
            .follow_up(
                caller,
                pb::RequestAction::Renew,
                &base,
                &a.id,
                "",
                now,
                end,
                &r.justification,
                r.ticket.clone(),
                r.validate_only,
                (METHOD, &r.request_id),
            )
            .await?;
        Ok(pb::RenewAssignmentResponse {
            request: Some(s.request),
            requirements: Some(requirements),
        })
    }

    /// Whether the caller may read a request: its requestor, one of its approvers, or an
    /// administrator / reader.
    pub async fn may_read(&self, caller: &Caller, s: &Stored) -> ApiResult<bool> {
        if s.request
            .requestor
            .as_ref()
            .is_some_and(|r| r.id == caller.principal_id)
        {
            return Ok(true);
        }
        if store::is_any_approver(&self.db, &s.request.id, &caller.principal_id).await? {
            return Ok(true);
        }
        self.reads_all(
            caller,
            s.request.scope.as_ref().map_or("/", |x| x.id.as_str()),
        )
        .await
    }

    /// Whether the caller holds a reading role at the scope (asked of the assignments
    /// context, about the caller itself).
    pub async fn reads_all(&self, caller: &Caller, scope: &str) -> ApiResult<bool> {
        self.assignments
            .has_permission(&caller.token, &caller.principal_id, "tenure/read", scope)
            .await
    }

    /// Gets a request if the caller may see it (NOT_FOUND otherwise).
    pub async fn get(&self, caller: &Caller, id: &str) -> ApiResult<pb::Request> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        let s = store::get(&self.db, id)
            .await?
            .ok_or_else(|| ApiError::not_found("request", id))?;
        if !self.may_read(caller, &s).await? {
            return Err(ApiError::not_found("request", id));
        }
        Ok(s.request)
    }

    /// Lists requests by relation to the caller, newest first.
    pub async fn list(
        &self,
        caller: &Caller,
        r: pb::ListRequestsRequest,
    ) -> ApiResult<pb::ListRequestsResponse> {
        if r.page_size < 0 {
            return Err(ApiError::invalid("page_size", "must not be negative"));
        }
        let size = if r.page_size == 0 {
            50
        } else {
            i64::from(r.page_size).min(MAX_PAGE)
        };
        let after = r.created_after.as_ref().and_then(from_proto).map(to_micros);
        let before = r
            .created_before
            .as_ref()
            .and_then(from_proto)
            .map(to_micros);
        if let (Some(a), Some(b)) = (after, before)
            && a > b
        {
            return Err(ApiError::invalid(
                "created_after",
                "must not be after created_before",
            ));
        }
        // The page token is the (created_at, id) of the last item, newest first.
        let cursor: Option<(i64, String)> = if r.page_token.is_empty() {
            None
        } else {
            let (t, id) = r.page_token.split_once(':').ok_or_else(|| {
                ApiError::invalid("page_token", "is not a token this server issued")
            })?;
            Some((
                t.parse().map_err(|_| {
                    ApiError::invalid("page_token", "is not a token this server issued")
                })?,
                id.to_owned(),
            ))
        };
        let me = caller.principal_id.clone();
        let relation =
            pb::RequestRelation::try_from(r.relation).unwrap_or(pb::RequestRelation::Unspecified);
        let mut binds: Vec<String> = Vec::new();
        let bind = |binds: &mut Vec<String>, v: &str| {
            binds.push(v.to_owned());
            format!("${}", binds.len())
        };
        let mut sql = match relation {
            pb::RequestRelation::Unspecified | pb::RequestRelation::Mine => {
                format!("requestor_id = {}", bind(&mut binds, &me))
            }
            pb::RequestRelation::AwaitingMyApproval => format!(
                "status = {} AND id IN (SELECT request_id FROM activation_approvers WHERE approver_id = {})",
                i32::from(pb::RequestStatus::PendingApproval),
                bind(&mut binds, &me)
            ),
            pb::RequestRelation::DecidedByMe => format!(
                "id IN (SELECT request_id FROM activation_approvers WHERE approver_id = {})",
                bind(&mut binds, &me)
            ),
            pb::RequestRelation::All => {
                if !self.reads_all(caller, "/").await? {
                    return Err(ApiError::denied(
                        "listing all requests needs a reading role at \"/\"",
                    ));
                }
                "1 = 1".to_owned()
            }
        };
        for (column, value) in [
            ("requestor_id", &r.requestor_id),
            ("role_id", &r.role_id),
            ("scope_id", &r.scope_id),
        ] {
            if !value.is_empty() {
                sql.push_str(&format!(" AND {column} = {}", bind(&mut binds, value)));
            }
        }
        // Numbers below come from parsed integers, never from text.
        if r.action != 0 {
            sql.push_str(&format!(" AND action = {}", r.action));
        }
        if !r.statuses.is_empty() {
            let list: Vec<String> = r.statuses.iter().map(ToString::to_string).collect();
            sql.push_str(&format!(" AND status IN ({})", list.join(",")));
        }
        if let Some(a) = after {
            sql.push_str(&format!(" AND created_at >= {a}"));
        }
        if let Some(b) = before {
            sql.push_str(&format!(" AND created_at < {b}"));
        }
        if let Some((t, id)) = &cursor {
            let p = bind(&mut binds, id);
            sql.push_str(&format!(
                " AND (created_at < {t} OR created_at = {t} AND id < {p})"
            ));
        }
        let bind_refs: Vec<&str> = binds.iter().map(String::as_str).collect();
        let mut rows = store::query(&self.db, &sql, &bind_refs, size + 1).await?;
        let mut items = Vec::new();
        for s in rows.drain(..) {
            if relation == pb::RequestRelation::DecidedByMe
                && !s.request.stages.iter().any(|st| {
                    st.decisions
                        .iter()
                        .any(|d| d.approver.as_ref().is_some_and(|a| a.id == me))
                })
            {
                continue;
            }
            if relation == pb::RequestRelation::AwaitingMyApproval {
                let stage = s.request.current_stage;
                let escalated = s
                    .request
                    .stages
                    .get(usize::try_from(stage).unwrap_or(0))
                    .is_some_and(|x| x.escalated);
                let decided = s
                    .request
                    .stages
                    .get(usize::try_from(stage).unwrap_or(0))
                    .is_some_and(|x| {
                        x.decisions
                            .iter()
                            .any(|d| d.approver.as_ref().is_some_and(|a| a.id == me))
                    });
                if decided
                    || store::approver_of(&self.db, &s.request.id, stage, &me, escalated)
                        .await?
                        .is_none()
                {
                    continue;
                }
            }
            items.push(s.request);
        }
        let next_page_token = if items.len() as i64 > size {
            items.truncate(usize::try_from(size).unwrap_or(0));
            items
                .last()
                .map(|l| {
                    format!(
                        "{}:{}",
                        l.create_time
                            .as_ref()
                            .and_then(from_proto)
                            .map(to_micros)
                            .unwrap_or_default(),
                        l.id
                    )
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListRequestsResponse {
            requests: items,
            next_page_token,
        })
    }
}
