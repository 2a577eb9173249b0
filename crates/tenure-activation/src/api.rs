//! `ActivationService`: the gRPC adapter over the [`Engine`].

use std::sync::Arc;

use tenure_platform::grpc::{caller, status};
use tenure_proto::activation::v1 as pb;
use tonic::{Request, Response, Status};

use crate::engine::Engine;

/// The gRPC adapter.
#[derive(Clone)]
pub struct ActivationApi {
    /// The engine.
    pub engine: Arc<Engine>,
}

/// At most once per request id (see `tenure_platform::idempotency::once`).
async fn idempotent<R, F, Fut>(
    engine: &Engine,
    method: &str,
    request_id: &str,
    who: &str,
    run: F,
) -> Result<R, tenure_platform::ApiError>
where
    R: prost::Message + Default,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<R, tenure_platform::ApiError>>,
{
    tenure_platform::idempotency::once(&engine.log, crate::PREFIX, method, request_id, who, run)
        .await
}

#[tonic::async_trait]
impl pb::activation_service_server::ActivationService for ActivationApi {
    async fn activate_roles(
        &self,
        request: Request<pb::ActivateRolesRequest>,
    ) -> Result<Response<pb::ActivateRolesResponse>, Status> {
        let c = caller(&request)?;
        self.engine
            .activate(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn extend_activation(
        &self,
        request: Request<pb::ExtendActivationRequest>,
    ) -> Result<Response<pb::ExtendActivationResponse>, Status> {
        let c = caller(&request)?;
        self.engine
            .extend(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn renew_assignment(
        &self,
        request: Request<pb::RenewAssignmentRequest>,
    ) -> Result<Response<pb::RenewAssignmentResponse>, Status> {
        let c = caller(&request)?;
        self.engine
            .renew(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn deactivate_role(
        &self,
        request: Request<pb::DeactivateRoleRequest>,
    ) -> Result<Response<pb::DeactivateRoleResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        idempotent(
            e,
            "DeactivateRole",
            &r.request_id,
            &c.principal_id,
            || async {
                let s = e.end_now(&c, &r.activation_request_id, false, "").await?;
                Ok(pb::DeactivateRoleResponse {
                    request: Some(s.request),
                })
            },
        )
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn revoke_activation(
        &self,
        request: Request<pb::RevokeActivationRequest>,
    ) -> Result<Response<pb::RevokeActivationResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        idempotent(e, "RevokeActivation", &r.request_id, &c.principal_id, || async {
            let s = crate::store::get(&e.db, &r.activation_request_id)
                .await?
                .ok_or_else(|| tenure_platform::ApiError::not_found("request", &r.activation_request_id))?;
            let scope = s.request.scope.as_ref().map_or("/".to_owned(), |x| x.id.clone());
            if !e.assignments.has_permission(&c.token, &c.principal_id, "tenure/activation/revoke", &scope).await? {
                return Err(tenure_platform::ApiError::denied("revoking needs Privileged Role Administrator active at the request's scope"));
            }
            let s = e.end_now(&c, &r.activation_request_id, true, &r.justification).await?;
            Ok(pb::RevokeActivationResponse { request: Some(s.request) })
        })
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn cancel_request(
        &self,
        request: Request<pb::CancelRequestRequest>,
    ) -> Result<Response<pb::CancelRequestResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        idempotent(
            e,
            "CancelRequest",
            &r.request_id,
            &c.principal_id,
            || async {
                if r.reason.len() > 2000 {
                    return Err(tenure_platform::ApiError::invalid(
                        "reason",
                        "must be at most 2000 characters",
                    ));
                }
                let s = e.cancel(&c, &r.id, r.reason.trim()).await?;
                Ok(pb::CancelRequestResponse {
                    request: Some(s.request),
                })
            },
        )
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn approve_request(
        &self,
        request: Request<pb::ApproveRequestRequest>,
    ) -> Result<Response<pb::ApproveRequestResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        idempotent(
            e,
            "ApproveRequest",
            &r.request_id,
            &c.principal_id,
            || async {
                let s = e.decide(&c, &r.id, true, &r.justification).await?;
                Ok(pb::ApproveRequestResponse {
                    request: Some(s.request),
                })
            },
        )
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn deny_request(
        &self,
        request: Request<pb::DenyRequestRequest>,
    ) -> Result<Response<pb::DenyRequestResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        idempotent(e, "DenyRequest", &r.request_id, &c.principal_id, || async {
            let s = e.decide(&c, &r.id, false, &r.justification).await?;
            Ok(pb::DenyRequestResponse {
                request: Some(s.request),
            })
        })
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn get_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::GetRequestResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        self.engine
            .get(&c, &r.id)
            .await
            .map(|req| Response::new(pb::GetRequestResponse { request: Some(req) }))
            .map_err(status)
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let c = caller(&request)?;
        self.engine
            .list(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}
