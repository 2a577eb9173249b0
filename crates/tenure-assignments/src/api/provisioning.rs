//! `ProvisioningService`: the internal API through which the activation context puts an
//! approved (or approval-free) request into effect, extends it, ends it, or renews an
//! expired assignment. Every call is idempotent by the activation context's request id:
//! a repeat has the effect of one call and returns the same instance.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::Row as _;
use tenure_platform::auth::Caller;
use tenure_platform::clock::{from_micros, from_proto, to_micros, to_proto};
use tenure_platform::events::NewEvent;
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1 as common;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::store::{self, ActivationRow};

/// The longest activation window.
const MAX_WINDOW: TimeDelta = TimeDelta::hours(24);

/// The gRPC adapter.
#[derive(Clone)]
pub struct ProvisioningApi {
    /// The context core.
    pub core: Arc<Core>,
}

fn ts(
    v: &mut Violations,
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Option<DateTime<Utc>> {
    match t.map(from_proto) {
        Some(Some(t)) => Some(t),
        Some(None) => {
            v.add(field, "is not a valid timestamp");
            None
        }
        None => {
            v.add(field, "is required");
            None
        }
    }
}

async fn activation_by_request(
    core: &Core,
    conn: &mut sqlx::AnyConnection,
    request_id: &str,
) -> ApiResult<Option<ActivationRow>> {
    let _ = core;
    let row = sqlx::query(&format!(
        "SELECT {} FROM assignments_activations WHERE request_id = $1",
        store::ACTIVATION_COLUMNS
    ))
    .bind(request_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(store::activation_from_row).transpose()
}

impl ProvisioningApi {
    fn authorize(&self, caller: &Caller) -> ApiResult<()> {
        self.core
            .require_or_service(caller, "tenure/provisioning/write", "/")
    }

    async fn provision(
        &self,
        caller: &Caller,
        r: pb::ProvisionActivationRequest,
    ) -> ApiResult<pb::ProvisionActivationResponse> {
        self.authorize(caller)?;
        let mut v = Violations::new();
        v.check(
            r.request_id.is_empty() || r.request_id.len() > 128,
            "request_id",
            "is required (at most 128 characters)",
        );
        v.check(r.eligibility_id.is_empty(), "eligibility_id", "is required");
        v.check(r.principal_id.is_empty(), "principal_id", "is required");
        v.check(r.role_id.is_empty(), "role_id", "is required");
        v.check(r.scope_id.is_empty(), "scope_id", "is required");
        let start = ts(&mut v, "start_time", r.start_time.as_ref());
        let end = ts(&mut v, "end_time", r.end_time.as_ref());
        if let (Some(s), Some(e)) = (start, end) {
            v.check(e <= s, "end_time", "must be after start_time");
            v.check(
                e - s > MAX_WINDOW,
                "end_time",
                "an activation lasts at most 24 hours",
            );
        }
        v.check(
            r.justification.len() > 2000,
            "justification",
            "must be at most 2000 characters",
        );
        v.finish()?;
        let (Some(start), Some(end)) = (start, end) else {
            return Err(ApiError::invalid("start_time", "is required"));
        };
        let now = self.core.clock.now();

        // Idempotent: the same request id returns the instance it made.
        let mut conn = self.core.db.reader().acquire().await?;
        if let Some(existing) = activation_by_request(&self.core, &mut conn, &r.request_id).await? {
            drop(conn);
            return Ok(pb::ProvisionActivationResponse {
                instance: Some(store::activation_proto(&self.core, &existing, now)),
                sequence: self.core.applied(),
            });
        }
        drop(conn);

        self.core.known_scope("scope_id", &r.scope_id)?;
        let eligibility = store::get_assignment(&self.core, &r.eligibility_id)
            .await?
            .ok_or_else(|| ApiError::not_found("eligibility", &r.eligibility_id))?;
        if eligibility.assignment_type != i32::from(common::AssignmentType::Eligible) {
            return Err(ApiError::precondition(format!(
                "{} is not an eligible assignment",
                r.eligibility_id
            )));
        }
        // The eligibility must cover the principal (directly or through a group), the
        // role, and the scope (at it or below it).
        let via_group = {
            let m = self.core.model();
            if !m
                .principals
                .get(r.principal_id.as_str())
                .is_some_and(|p| p.enabled)
            {
                return Err(ApiError::precondition(format!(
                    "principal {} is disabled or unknown",
                    r.principal_id
                )));
            }
            let subjects = m.subjects(&r.principal_id);
            let Some((_, chain)) = subjects
                .iter()
                .find(|(s, _)| **s == *eligibility.principal_id)
            else {
                return Err(ApiError::denied(
                    "the eligibility does not cover this principal",
                ));
            };
            if eligibility.role_id != r.role_id || !m.is_within(&r.scope_id, &eligibility.scope_id)
            {
                return Err(ApiError::denied(
                    "the eligibility does not cover this role and scope",
                ));
            }
            chain.last().map(ToString::to_string)
        };
        if eligibility.removed_at.is_some() {
            return Err(ApiError::precondition("the eligibility was removed"));
        }
        if eligibility.start_at > to_micros(start) {
            return Err(ApiError::precondition(format!(
                "the eligibility starts only at {}",
                from_micros(eligibility.start_at).to_rfc3339()
            )));
        }
        if let Some(e_end) = eligibility.end_at
            && e_end < to_micros(end)
        {
            return Err(ApiError::precondition(format!(
                "the eligibility is in effect only until {}",
                from_micros(e_end).to_rfc3339()
            )));
        }

        let mut uow = self.core.begin().await?;
        // A concurrent call with the same request id may commit meanwhile: the request
        // id is UNIQUE, so this insert then fails and the call answers with the
        // winner's instance below (never provisioned twice, and no re-read here).
        // Another activation of the same principal, role and scope overlapping?
        let overlap = sqlx::query(
            "SELECT request_id FROM assignments_activations WHERE principal_id = $1 AND role_id = $2 AND scope_id = $3 \
             AND ended_at IS NULL AND end_at > $4 AND start_at < $5 AND end_at > $6 AND request_id <> $7",
        )
        .bind(&r.principal_id)
        .bind(&r.role_id)
        .bind(&r.scope_id)
        .bind(to_micros(now))
        .bind(to_micros(end))
        .bind(to_micros(start))
        .bind(&r.request_id)
        .fetch_optional(&mut **uow.tx())
        .await?;
        if let Some(o) = overlap {
            let other: String = o.try_get("request_id")?;
            uow.rollback().await?;
            return Err(ApiError::precondition(format!(
                "activation {other} of the same role and scope overlaps; extend it instead"
            )));
        }
        let row = ActivationRow {
            id: uuid::Uuid::now_v7().to_string(),
            request_id: r.request_id.clone(),
            eligibility_id: r.eligibility_id.clone(),
            principal_id: r.principal_id.clone(),
            role_id: r.role_id.clone(),
            scope_id: r.scope_id.clone(),
            start_at: to_micros(start),
            end_at: to_micros(end),
            ended_at: None,
            end_reason: 0,
            justification: r.justification.clone(),
            ticket_number: r
                .ticket
                .as_ref()
                .map(|t| t.ticket_number.clone())
                .unwrap_or_default(),
            ticket_system: r
                .ticket
                .as_ref()
                .map(|t| t.ticket_system.clone())
                .unwrap_or_default(),
            created_at: to_micros(now),
        };
        if let Err(e) = store::insert_activation(&mut uow, &row).await {
            // A concurrent call with the same request id won: answer with its instance.
            uow.rollback().await?;
            let mut conn = self.core.db.writer().acquire().await?;
            if let Some(existing) =
                activation_by_request(&self.core, &mut conn, &r.request_id).await?
            {
                return Ok(pb::ProvisionActivationResponse {
                    instance: Some(store::activation_proto(&self.core, &existing, now)),
                    sequence: self.core.applied(),
                });
            }
            return Err(e);
        }
        let instance = store::activation_proto(&self.core, &row, now);
        let actor = if r.actor_id.is_empty() {
            caller.principal_id.clone()
        } else {
            r.actor_id.clone()
        };
        uow.emit(
            NewEvent::new(
                pb::InstanceActivated {
                    instance: Some(instance.clone()),
                    member_type: if via_group.is_some() {
                        common::MemberType::Group
                    } else {
                        common::MemberType::Direct
                    }
                    .into(),
                    via_group: via_group.map(|g| self.core.principal_ref(&g)),
                },
                actor,
                &row.id,
            )
            .correlated(r.request_id.clone()),
        );
        let sequence = self.core.commit(uow).await?;
        Ok(pb::ProvisionActivationResponse {
            instance: Some(instance),
            sequence,
        })
    }

    async fn extend(
        &self,
        caller: &Caller,
        r: pb::ExtendActivationRequest,
    ) -> ApiResult<pb::ExtendActivationResponse> {
        self.authorize(caller)?;
        const METHOD: &str = "Provisioning.ExtendActivation";
        let mut v = Violations::new();
        v.check(r.request_id.is_empty(), "request_id", "is required");
        v.check(
            r.activation_request_id.is_empty(),
            "activation_request_id",
            "is required",
        );
        let new_end = ts(&mut v, "new_end_time", r.new_end_time.as_ref());
        v.finish()?;
        let Some(new_end) = new_end else {
            return Err(ApiError::invalid("new_end_time", "is required"));
        };
        if let Some(done) = self
            .core
            .replay(METHOD, &r.request_id, &caller.principal_id)
            .await?
        {
            return Ok(done);
        }
        let now = self.core.clock.now();
        let mut uow = self.core.begin().await?;
        let Some(a) = activation_by_request(&self.core, uow.tx(), &r.activation_request_id).await?
        else {
            uow.rollback().await?;
            return Err(ApiError::not_found("activation", &r.activation_request_id));
        };
        if a.end_at == to_micros(new_end) && a.ended_at.is_none() {
            // Already extended to exactly this end (a retry, or a concurrent twin).
            uow.rollback().await?;
            return Ok(pb::ExtendActivationResponse {
                instance: Some(store::activation_proto(&self.core, &a, now)),
                sequence: self.core.applied(),
            });
        }
        let failure = if a.ended_at.is_some() || a.end_at <= to_micros(now) {
            Some("the activation has ended".to_owned())
        } else if to_micros(new_end) <= a.end_at {
            Some("the new end is not after the current end".to_owned())
        } else if to_micros(new_end) - a.start_at
            > MAX_WINDOW.num_microseconds().unwrap_or(i64::MAX) * 2
        {
            Some("an activation cannot be extended beyond twice its maximum window".to_owned())
        } else {
            None
        };
        if let Some(f) = failure {
            uow.rollback().await?;
            return Err(ApiError::precondition(f));
        }
        if let Some(e) = store::get_assignment_tx(&mut uow, &a.eligibility_id).await?
            && e.end_at.is_some_and(|ee| ee < to_micros(new_end))
        {
            uow.rollback().await?;
            return Err(ApiError::precondition(format!(
                "beyond the eligibility's end at {}",
                from_micros(e.end_at.unwrap_or_default()).to_rfc3339()
            )));
        }
        sqlx::query(
            "UPDATE assignments_activations SET end_at = $1, expired_processed = 0 WHERE id = $2",
        )
        .bind(to_micros(new_end))
        .bind(&a.id)
        .execute(&mut **uow.tx())
        .await?;
        let previous = a.end_at;
        let mut after = a.clone();
        after.end_at = to_micros(new_end);
        let instance = store::activation_proto(&self.core, &after, now);
        let actor = if r.actor_id.is_empty() {
            caller.principal_id.clone()
        } else {
            r.actor_id.clone()
        };
        uow.emit(
            NewEvent::new(
                pb::InstanceExtended {
                    instance: Some(instance.clone()),
                    previous_end_time: Some(to_proto(from_micros(previous))),
                    extension_request_id: r.request_id.clone(),
                    justification: r.justification.clone(),
                },
                actor,
                &a.id,
            )
            .correlated(a.request_id.clone()),
        );
        let mut response = pb::ExtendActivationResponse {
            instance: Some(instance),
            sequence: 0,
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
        response.sequence = self.core.commit(uow).await?;
        Ok(response)
    }

    async fn end(
        &self,
        caller: &Caller,
        r: pb::EndActivationRequest,
    ) -> ApiResult<pb::EndActivationResponse> {
        self.authorize(caller)?;
        let mut v = Violations::new();
        v.check(r.request_id.is_empty(), "request_id", "is required");
        let reason =
            pb::InstanceEndReason::try_from(r.reason).unwrap_or(pb::InstanceEndReason::Unspecified);
        v.check(
            !matches!(
                reason,
                pb::InstanceEndReason::Deactivated | pb::InstanceEndReason::Revoked
            ),
            "reason",
            "must be INSTANCE_END_REASON_DEACTIVATED or INSTANCE_END_REASON_REVOKED",
        );
        v.finish()?;
        let now = self.core.clock.now();
        let mut uow = self.core.begin().await?;
        let Some(a) = activation_by_request(&self.core, uow.tx(), &r.request_id).await? else {
            uow.rollback().await?;
            return Err(ApiError::not_found("activation", &r.request_id));
        };
        if a.ended_at.is_some() || a.end_at <= to_micros(now) {
            // Already over: unchanged, idempotent.
            uow.rollback().await?;
            return Ok(pb::EndActivationResponse {
                instance: Some(store::activation_proto(&self.core, &a, now)),
                sequence: self.core.applied(),
            });
        }
        sqlx::query("UPDATE assignments_activations SET ended_at = $1, end_reason = $2 WHERE id = $3 AND ended_at IS NULL")
            .bind(to_micros(now))
            .bind(i64::from(i32::from(reason)))
            .bind(&a.id)
            .execute(&mut **uow.tx())
            .await?;
        let mut after = a.clone();
        after.ended_at = Some(to_micros(now));
        after.end_reason = reason.into();
        let instance = store::activation_proto(&self.core, &after, now);
        let actor = if r.actor_id.is_empty() {
            caller.principal_id.clone()
        } else {
            r.actor_id.clone()
        };
        uow.emit(
            NewEvent::new(
                pb::InstanceDeactivated {
                    instance: Some(instance.clone()),
                    reason: reason.into(),
                    justification: r.justification.clone(),
                },
                actor,
                &a.id,
            )
            .correlated(a.request_id.clone()),
        );
        let sequence = self.core.commit(uow).await?;
        Ok(pb::EndActivationResponse {
            instance: Some(instance),
            sequence,
        })
    }

    async fn renew(
        &self,
        caller: &Caller,
        r: pb::ProvisionRenewalRequest,
    ) -> ApiResult<pb::ProvisionRenewalResponse> {
        self.authorize(caller)?;
        const METHOD: &str = "Provisioning.ProvisionRenewal";
        let mut v = Violations::new();
        v.check(r.request_id.is_empty(), "request_id", "is required");
        v.check(r.assignment_id.is_empty(), "assignment_id", "is required");
        v.check(
            r.actor_id.is_empty(),
            "actor_id",
            "is required (the requestor)",
        );
        let start = ts(&mut v, "start_time", r.start_time.as_ref());
        let end = ts(&mut v, "end_time", r.end_time.as_ref());
        if let (Some(s), Some(e)) = (start, end) {
            v.check(e <= s, "end_time", "must be after start_time");
        }
        v.finish()?;
        let (Some(start), Some(end)) = (start, end) else {
            return Err(ApiError::invalid("start_time", "is required"));
        };
        if let Some(done) = self
            .core
            .replay(METHOD, &r.request_id, &caller.principal_id)
            .await?
        {
            return Ok(done);
        }
        let row = store::get_assignment(&self.core, &r.assignment_id)
            .await?
            .ok_or_else(|| ApiError::not_found("assignment", &r.assignment_id))?;
        if row.principal_id != r.actor_id {
            return Err(ApiError::denied(
                "the assignment is not the requestor's own",
            ));
        }
        let now = self.core.clock.now();
        let now_us = to_micros(now);
        match store::assignment_status(&row, now_us) {
            pb::AssignmentStatus::Expired => {}
            pb::AssignmentStatus::Removed => {
                return Err(ApiError::precondition("the assignment was removed"));
            }
            _ => return Err(ApiError::precondition("the assignment has not expired")),
        }
        if row
            .end_at
            .is_some_and(|e| now - from_micros(e) > TimeDelta::days(30))
        {
            return Err(ApiError::precondition(
                "the assignment expired more than 30 days ago",
            ));
        }
        let t = common::AssignmentType::try_from(row.assignment_type)
            .unwrap_or(common::AssignmentType::Eligible);
        let policy =
            crate::policy::assignment_policy(&self.core, &row.role_id, &row.scope_id, t).await?;
        if end - start > policy.expire_after {
            return Err(ApiError::invalid(
                "end_time",
                format!(
                    "the window exceeds the role's maximum of {} days",
                    policy.expire_after.num_days()
                ),
            ));
        }
        let mut uow = self.core.begin().await?;
        let after = crate::api::assignments::renew_in(
            &mut uow,
            &row,
            start,
            Some(end),
            &r.actor_id,
            &r.justification,
            r.ticket.as_ref(),
        )
        .await?;
        let assignment = store::assignment_proto(&self.core, &after, now);
        uow.emit(
            NewEvent::new(
                pb::AssignmentRenewed {
                    assignment: Some(assignment.clone()),
                    previous_end_time: row.end_at.map(|e| to_proto(from_micros(e))),
                    justification: r.justification.clone(),
                    ticket: r.ticket.clone(),
                    activation_request_id: r.request_id.clone(),
                },
                &r.actor_id,
                &row.id,
            )
            .correlated(r.request_id.clone()),
        );
        let mut response = pb::ProvisionRenewalResponse {
            assignment: Some(assignment),
            sequence: 0,
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
        response.sequence = self.core.commit(uow).await?;
        Ok(response)
    }
}

#[tonic::async_trait]
impl pb::provisioning_service_server::ProvisioningService for ProvisioningApi {
    async fn provision_activation(
        &self,
        request: Request<pb::ProvisionActivationRequest>,
    ) -> Result<Response<pb::ProvisionActivationResponse>, Status> {
        let caller = caller(&request)?;
        self.provision(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn extend_activation(
        &self,
        request: Request<pb::ExtendActivationRequest>,
    ) -> Result<Response<pb::ExtendActivationResponse>, Status> {
        let caller = caller(&request)?;
        self.extend(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn end_activation(
        &self,
        request: Request<pb::EndActivationRequest>,
    ) -> Result<Response<pb::EndActivationResponse>, Status> {
        let caller = caller(&request)?;
        self.end(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn provision_renewal(
        &self,
        request: Request<pb::ProvisionRenewalRequest>,
    ) -> Result<Response<pb::ProvisionRenewalResponse>, Status> {
        let caller = caller(&request)?;
        self.renew(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}
