//! The notifications context's calls to the assignments context, always over gRPC:
//! authorization questions with the caller's own token (CheckAccess about the caller),
//! and the role catalogue with Tenure's service token.

use std::time::Duration;

use tenure_platform::auth::ServiceToken;
use tenure_platform::grpc::{from_status, inject_trace};
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
    let mut r = Request::new(msg);
    r.set_timeout(DEADLINE);
    inject_trace(&mut r);
    let v = format!("Bearer {token}")
        .parse()
        .map_err(|_| ApiError::Unauthenticated("the token is not valid metadata".into()))?;
    r.metadata_mut().insert("authorization", v);
    Ok(r)
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
        let mut c = asg::access_service_client::AccessServiceClient::new(self.channel.clone());
        let r = request(
            token,
            asg::CheckAccessRequest {
                principal_id: principal_id.to_owned(),
                target: Some(asg::check_access_request::Target::Permission(
                    permission.to_owned(),
                )),
                scope_id: scope.to_owned(),
                ..Default::default()
            },
        )?;
        match c.check_access(r).await {
            Ok(resp) => Ok(resp.into_inner().allowed),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(from_status(&s)),
        }
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
