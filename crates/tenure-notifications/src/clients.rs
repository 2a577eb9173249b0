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

    fn service_request<T>(&self, msg: T) -> ApiResult<Request<T>> {
        let token = self
            .service
            .get()
            .map_err(|e| ApiError::Unavailable(format!("{e:#}")))?;
        request(&token, msg)
    }

    /// Whether the role exists.
    pub async fn role_exists(&self, id: &str) -> ApiResult<bool> {
        let mut c = asg::role_definitions_service_client::RoleDefinitionsServiceClient::new(
            self.channel.clone(),
        );
        let r = self.service_request(asg::GetRoleDefinitionRequest { id: id.to_owned() })?;
        match c.get_role_definition(r).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(from_status(&s)),
        }
    }

    /// Whether the scope exists.
    pub async fn scope_exists(&self, id: &str) -> ApiResult<bool> {
        let mut c = asg::scopes_service_client::ScopesServiceClient::new(self.channel.clone());
        let r = self.service_request(asg::GetScopeRequest { id: id.to_owned() })?;
        match c.get_scope(r).await {
            Ok(_) => Ok(true),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ) =>
            {
                Ok(false)
            }
            Err(s) => Err(from_status(&s)),
        }
    }

    /// Whether the principal exists.
    pub async fn principal_exists(&self, id: &str) -> ApiResult<bool> {
        let mut c =
            asg::principals_service_client::PrincipalsServiceClient::new(self.channel.clone());
        let r = self.service_request(asg::GetPrincipalRequest { id: id.to_owned() })?;
        match c.get_principal(r).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(from_status(&s)),
        }
    }
}
