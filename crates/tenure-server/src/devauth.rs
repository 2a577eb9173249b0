//! The development issuer's token service (see `proto/tenure/devauth/v1`).

use chrono::TimeDelta;
use tenure_platform::ApiError;
use tenure_platform::auth::DevIssuer;
use tenure_platform::clock::to_proto;
use tenure_platform::grpc::status;
use tenure_proto::devauth::v1 as pb;
use tonic::{Request, Response, Status};

/// Mints development tokens.
#[derive(Debug, Clone)]
pub struct DevAuthApi {
    issuer: DevIssuer,
}

impl DevAuthApi {
    /// Serves `issuer`.
    pub fn new(issuer: DevIssuer) -> Self {
        Self { issuer }
    }
}

#[tonic::async_trait]
impl pb::dev_auth_service_server::DevAuthService for DevAuthApi {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let r = request.into_inner();
        let mut v = tenure_platform::Violations::new();
        v.check(
            r.subject.trim().is_empty(),
            "subject",
            "must name a principal",
        );
        v.check(
            r.subject.len() > 256,
            "subject",
            "must be at most 256 characters",
        );
        let ttl = match r.ttl {
            None => TimeDelta::hours(8),
            Some(d) => TimeDelta::new(d.seconds, u32::try_from(d.nanos).unwrap_or(0))
                .unwrap_or(TimeDelta::MAX),
        };
        v.check(
            ttl < TimeDelta::minutes(1) || ttl > TimeDelta::hours(24),
            "ttl",
            "must be between 1 minute and 24 hours",
        );
        v.finish().map_err(status)?;
        let token = self
            .issuer
            .mint(r.subject.trim(), r.mfa, ttl)
            .map_err(|e| status(ApiError::Internal(e)))?;
        Ok(Response::new(pb::IssueTokenResponse {
            token,
            expires_at: Some(to_proto(self.issuer.now() + ttl)),
        }))
    }
}
