//! The activation context's calls to the assignments context, always over gRPC (also
//! when both run in one process). Reads go with the caller's own token, so the
//! assignments context decides on the originating subject; provisioning and timer work
//! go with Tenure's service token. Every call carries the trace context and a deadline.

use std::time::Duration;

use tenure_platform::auth::ServiceToken;
use tenure_platform::grpc::from_status;
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1 as common;
use tonic::Request;
use tonic::transport::Channel;

/// The deadline of a call to another context.
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

    fn service_request<T>(&self, msg: T) -> ApiResult<Request<T>> {
        let token = self
            .service
            .get()
            .map_err(|e| ApiError::Unavailable(format!("{e:#}")))?;
        request(&token, msg)
    }

    /// The role's effective settings at the scope (read with the caller's token).
    pub async fn effective_settings(
        &self,
        token: &str,
        role_id: &str,
        scope_id: &str,
    ) -> ApiResult<asg::GetEffectiveRoleSettingsResponse> {
        let mut c =
            asg::role_settings_service_client::RoleSettingsServiceClient::new(self.channel.clone());
        let r = request(
            token,
            asg::GetEffectiveRoleSettingsRequest {
                role_id: role_id.to_owned(),
                scope_id: scope_id.to_owned(),
            },
        )?;
        Ok(c.get_effective_role_settings(r)
            .await
            .map_err(|s| from_status(&s))?
            .into_inner())
    }

    /// The caller's eligible grants that reach `scope` (direct, through groups, inherited).
    pub async fn eligible_grants(
        &self,
        token: &str,
        principal_id: &str,
        scope_id: &str,
    ) -> ApiResult<Vec<asg::Grant>> {
        let mut c = asg::access_service_client::AccessServiceClient::new(self.channel.clone());
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = request(
                token,
                asg::ListEffectiveRolesRequest {
                    principal_id: principal_id.to_owned(),
                    scope_id: scope_id.to_owned(),
                    assignment_type: common::AssignmentType::Eligible.into(),
                    at_time: None,
                    page_size: 1000,
                    page_token: page_token.clone(),
                },
            )?;
            let resp = c
                .list_effective_roles(r)
                .await
                .map_err(|s| from_status(&s))?
                .into_inner();
            out.extend(resp.grants);
            if resp.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = resp.next_page_token;
        }
    }

    /// The transitive members of a group (as Tenure's service).
    pub async fn group_members(&self, group_id: &str) -> ApiResult<Vec<common::PrincipalRef>> {
        let mut c =
            asg::principals_service_client::PrincipalsServiceClient::new(self.channel.clone());
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = self.service_request(asg::ListGroupMembersRequest {
                group_id: group_id.to_owned(),
                transitive: true,
                page_size: 1000,
                page_token: page_token.clone(),
            })?;
            let resp = c
                .list_group_members(r)
                .await
                .map_err(|s| from_status(&s))?
                .into_inner();
            out.extend(resp.members);
            if resp.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = resp.next_page_token;
        }
    }

    /// One of Tenure's assignments (read with the caller's token).
    pub async fn assignment(&self, token: &str, id: &str) -> ApiResult<asg::Assignment> {
        let mut c =
            asg::assignments_service_client::AssignmentsServiceClient::new(self.channel.clone());
        let r = request(token, asg::GetAssignmentRequest { id: id.to_owned() })?;
        c.get_assignment(r)
            .await
            .map_err(|s| from_status(&s))?
            .into_inner()
            .assignment
            .ok_or_else(|| ApiError::Unavailable("empty assignment in reply".into()))
    }

    /// Provisions an activation (as Tenure's service; idempotent by request id).
    pub async fn provision(
        &self,
        msg: asg::ProvisionActivationRequest,
    ) -> ApiResult<asg::ProvisionActivationResponse> {
        let mut c =
            asg::provisioning_service_client::ProvisioningServiceClient::new(self.channel.clone());
        Ok(c.provision_activation(self.service_request(msg)?)
            .await
            .map_err(|s| from_status(&s))?
            .into_inner())
    }

    /// Extends an activation (as Tenure's service).
    pub async fn extend(
        &self,
        msg: asg::ExtendActivationRequest,
    ) -> ApiResult<asg::ExtendActivationResponse> {
        let mut c =
            asg::provisioning_service_client::ProvisioningServiceClient::new(self.channel.clone());
        Ok(c.extend_activation(self.service_request(msg)?)
            .await
            .map_err(|s| from_status(&s))?
            .into_inner())
    }

    /// Ends an activation (as Tenure's service).
    pub async fn end(
        &self,
        msg: asg::EndActivationRequest,
    ) -> ApiResult<asg::EndActivationResponse> {
        let mut c =
            asg::provisioning_service_client::ProvisioningServiceClient::new(self.channel.clone());
        Ok(c.end_activation(self.service_request(msg)?)
            .await
            .map_err(|s| from_status(&s))?
            .into_inner())
    }

    /// Renews an expired assignment (as Tenure's service).
    pub async fn renew(
        &self,
        msg: asg::ProvisionRenewalRequest,
    ) -> ApiResult<asg::ProvisionRenewalResponse> {
        let mut c =
            asg::provisioning_service_client::ProvisioningServiceClient::new(self.channel.clone());
        Ok(c.provision_renewal(self.service_request(msg)?)
            .await
            .map_err(|s| from_status(&s))?
            .into_inner())
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

    /// The channel (for the event consumer).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The service token source (for the event consumer).
    pub fn service_token(&self) -> &ServiceToken {
        &self.service
    }
}
