//! The notifications context's calls to the assignments context, always over gRPC:
//! authorization questions with the caller's own token (CheckAccess about the caller),
//! and the role catalogue with Tenure's service token.

use std::time::Duration;

use tenure_platform::auth::ServiceToken;
use tenure_platform::grpc::from_status;
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::assignments::v1 as asg;
use tonic::Request;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(5);

/// A client of the assignments context.
#[derive(Clone, Debug)]
pub struct Assignments {
    channel: Channel,
    service: ServiceToken,
}

fn request<T>(token: &str, msg: T) -> ApiResult<Request<T>> {
    tenure_platform::grpc::outgoing(token, msg, DEADLINE)
}

impl Assignments {
    /// A client over `channel`, presenting `service` for Tenure's own calls.
    pub fn new(channel: Channel, service: ServiceToken) -> Self {
        Self { channel, service }
    }

    /// The channel (for the event consumer).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The service token source (for the event consumers).
    pub fn service_token(&self) -> &ServiceToken {
        &self.service
    }

    /// Whether `principal_id` holds `permission` at `scope` now (asked with the caller's
    /// own token, about the caller itself).
    pub async fn has_permission(
        &self,
        token: &str,
        principal_id: &str,
        permission: &str,
        scope: &str,
    ) -> ApiResult<bool> {
        tenure_platform::grpc::has_permission(&self.channel, token, principal_id, permission, scope)
            .await
    }

    /// Every role definition (as Tenure's service).
    pub async fn role_definitions(&self) -> ApiResult<Vec<asg::RoleDefinition>> {
        let token = self
            .service
            .get()
            .map_err(|e| ApiError::Unavailable(format!("{e:#}")))?;
        let mut c = asg::role_definitions_service_client::RoleDefinitionsServiceClient::new(
            self.channel.clone(),
        );
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = request(
                &token,
                asg::ListRoleDefinitionsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            )?;
            let resp = c
                .list_role_definitions(r)
                .await
                .map_err(|s| from_status(&s))?
                .into_inner();
            out.extend(resp.role_definitions);
            if resp.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = resp.next_page_token;
        }
    }
}
