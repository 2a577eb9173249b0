//! `DriftService`: connectors report the role memberships they observe; differences
//! from Tenure's grants open and resolve drift items (see [`crate::drift_store`]).

use std::sync::Arc;

use chrono::TimeDelta;
use tenure_platform::clock::from_proto;
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, Violations};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::AssignmentType;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::core::Page;
use crate::drift_store::{self as store, Key, Observation, Report};
use crate::settings_rules::bad_id;

/// The permission a connector needs to report.
pub const DRIFT_REPORT: &str = "tenure/drift/report";
/// At most this many memberships per call.
pub const MAX_MEMBERSHIPS: usize = 10_000;
/// How far in the future `observed_at` may be (clock skew).
const FUTURE_LEEWAY: TimeDelta = TimeDelta::minutes(5);

const REPORT: &str = "DriftService/ReportObservedMemberships";

/// The gRPC adapter of `DriftService`.
#[derive(Clone)]
pub struct DriftApi {
    /// The context's core.
    pub core: Arc<Core>,
}

const ID_RULE: &str = "must be 1 to 256 characters without control characters";

/// Decodes and checks a report: INVALID_ARGUMENT naming every bad field, NOT_FOUND for
/// an unknown `scope_id`.
fn decode(core: &Core, req: &pb::ReportObservedMembershipsRequest) -> Result<Report, ApiError> {
    let now = core.clock.now();
    let mut v = Violations::new();
    v.check(bad_id(&req.source), "source", ID_RULE);
    let scope_id = if req.scope_id.is_empty() {
        "/".to_owned()
    } else {
        req.scope_id.clone()
    };
    v.check(bad_id(&scope_id), "scope_id", ID_RULE);
    v.check(
        req.memberships.len() > MAX_MEMBERSHIPS,
        "memberships",
        format!("at most {MAX_MEMBERSHIPS} per call; send larger sets in several calls"),
    );
    let observed_at = match &req.observed_at {
        None => now,
        Some(t) => match from_proto(t) {
            Some(t) if t <= now + FUTURE_LEEWAY => t,
            Some(_) => {
                v.add("observed_at", "must not be in the future");
                now
            }
            None => {
                v.add("observed_at", "is not a valid time");
                now
            }
        },
    };
    let role_kind = match pb::RoleKind::try_from(req.role_kind) {
        Ok(pb::RoleKind::Unspecified) => None,
        Ok(k) => Some(k),
        Err(_) => {
            v.add("role_kind", "is not a role kind");
            None
        }
    };
    v.finish()?;
    if !core.model().scopes.contains_key(scope_id.as_str()) {
        return Err(ApiError::not_found("scope", scope_id));
    }
    let mut v = Violations::new();
    let mut observations = Vec::with_capacity(req.memberships.len());
    {
        let m = core.model();
        for (i, o) in req.memberships.iter().enumerate() {
            let f = |n: &str| format!("memberships[{i}].{n}");
            v.check(bad_id(&o.principal_id), f("principal_id"), ID_RULE);
            v.check(bad_id(&o.role_id), f("role_id"), ID_RULE);
            v.check(bad_id(&o.scope_id), f("scope_id"), ID_RULE);
            v.check(
                !o.external_id.is_empty() && bad_id(&o.external_id),
                f("external_id"),
                "must be at most 256 characters without control characters",
            );
            let assignment_type = match AssignmentType::try_from(o.assignment_type) {
                Ok(AssignmentType::Unspecified) => AssignmentType::Active,
                Ok(t) => t,
                Err(_) => {
                    v.add(f("assignment_type"), "is not an assignment type");
                    AssignmentType::Active
                }
            };
            if !bad_id(&o.scope_id) && !store::within(&m, &o.scope_id, &scope_id) {
                v.add(
                    f("scope_id"),
                    format!("is outside the report's scope_id {scope_id:?}"),
                );
            }
            observations.push(Observation {
                key: Key {
                    principal_id: o.principal_id.clone(),
                    role_id: o.role_id.clone(),
                    scope_id: o.scope_id.clone(),
                    assignment_type,
                },
                external_id: o.external_id.clone(),
            });
        }
    }
    v.finish()?;
    Ok(Report {
        source: req.source.clone(),
        scope_id,
        observations,
        complete: req.complete,
        observed_at,
        role_kind,
    })
}

#[tonic::async_trait]
impl pb::drift_service_server::DriftService for DriftApi {
    async fn report_observed_memberships(
        &self,
        request: Request<pb::ReportObservedMembershipsRequest>,
    ) -> Result<Response<pb::ReportObservedMembershipsResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let core = &self.core;
        let run = async {
            if let Some(r) = core
                .replay::<pb::ReportObservedMembershipsResponse>(
                    REPORT,
                    &req.request_id,
                    &who.principal_id,
                )
                .await?
            {
                return Ok(r);
            }
            let report = decode(core, &req)?;
            core.require_or_service(&who, DRIFT_REPORT, "/")?;
            let mut uow = core.begin().await?;
            let outcome = store::report(core, &mut uow, &who.principal_id, &report).await?;
            let response = pb::ReportObservedMembershipsResponse {
                opened: outcome.opened,
                resolved_count: outcome.resolved,
                matched_count: outcome.matched,
            };
            core.remember(
                &mut uow,
                REPORT,
                &req.request_id,
                &who.principal_id,
                &response,
            )
            .await?;
            core.commit(uow).await?;
            Ok(response)
        };
        run.await.map(Response::new).map_err(status)
    }

    async fn list_drift_items(
        &self,
        request: Request<pb::ListDriftItemsRequest>,
    ) -> Result<Response<pb::ListDriftItemsResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let core = &self.core;
        let run = async {
            let mut v = Violations::new();
            let status_filter = match pb::DriftStatus::try_from(req.status) {
                Ok(pb::DriftStatus::Unspecified) => pb::DriftStatus::Open,
                Ok(s) => s,
                Err(_) => {
                    v.add("status", "is not a drift status");
                    pb::DriftStatus::Open
                }
            };
            let kind = match pb::DriftKind::try_from(req.kind) {
                Ok(pb::DriftKind::Unspecified) => None,
                Ok(k) => Some(k),
                Err(_) => {
                    v.add("kind", "is not a drift kind");
                    None
                }
            };
            v.check(
                !req.source.is_empty() && bad_id(&req.source),
                "source",
                ID_RULE,
            );
            v.check(
                !req.scope_id.is_empty() && bad_id(&req.scope_id),
                "scope_id",
                ID_RULE,
            );
            v.finish()?;
            let page = Page::parse(
                if req.page_size == 0 {
                    100
                } else {
                    req.page_size
                },
                &req.page_token,
            )?;
            if !core.can_read_all(&who) {
                return Err(ApiError::denied(format!(
                    "{} needs permission tenure/read at / to list drift items",
                    who.principal_id
                )));
            }
            if !req.scope_id.is_empty() && !core.model().scopes.contains_key(req.scope_id.as_str())
            {
                return Err(ApiError::not_found("scope", req.scope_id.clone()));
            }
            let mut rows = store::list(core, status_filter, kind, &req.source).await?;
            if !req.scope_id.is_empty() {
                let m = core.model();
                rows.retain(|d| store::within(&m, &d.key.scope_id, &req.scope_id));
            }
            let (rows, next_page_token) = page.cut(rows, store::sort_key);
            Ok(pb::ListDriftItemsResponse {
                drift_items: rows.iter().map(|d| store::item_proto(core, d)).collect(),
                next_page_token,
            })
        };
        run.await.map(Response::new).map_err(status)
    }
}
