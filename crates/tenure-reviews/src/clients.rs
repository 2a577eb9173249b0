//! The reviews context's calls to the assignments context, always over gRPC (also when
//! both run in one process). Authorization checks go with the caller's own token (the
//! caller asks about itself); snapshots, lookups and removals go with Tenure's service
//! token. Every call carries the trace context and a deadline.

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

/// What removing a denied assignment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Removed now (or by an earlier try with the same request id).
    Removed,
    /// It was removed or expired already.
    AlreadyGone(String),
    /// The removal failed; the reason in words.
    Failed(String),
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

    /// The channel (for the event consumer).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The service token source (for the event consumer).
    pub fn service_token(&self) -> &ServiceToken {
        &self.service
    }

    /// Whether the caller (`principal_id`, presenting `token`) holds `permission`
    /// active at `scope` or above now.
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

    /// A role definition, or None when unknown.
    pub async fn role(&self, id: &str) -> ApiResult<Option<asg::RoleDefinition>> {
        let mut c = asg::role_definitions_service_client::RoleDefinitionsServiceClient::new(
            self.channel.clone(),
        );
        let r = self.service_request(asg::GetRoleDefinitionRequest { id: id.to_owned() })?;
        match c.get_role_definition(r).await {
            Ok(x) => Ok(x.into_inner().role_definition),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(from_status(&s)),
        }
    }

    /// A scope, or None when unknown.
    pub async fn scope(&self, id: &str) -> ApiResult<Option<asg::Scope>> {
        let mut c = asg::scopes_service_client::ScopesServiceClient::new(self.channel.clone());
        let r = self.service_request(asg::GetScopeRequest { id: id.to_owned() })?;
        match c.get_scope(r).await {
            Ok(x) => Ok(x.into_inner().scope),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ) =>
            {
                Ok(None)
            }
            Err(s) => Err(from_status(&s)),
        }
    }

    /// A principal, or None when unknown.
    pub async fn principal(&self, id: &str) -> ApiResult<Option<asg::Principal>> {
        let mut c =
            asg::principals_service_client::PrincipalsServiceClient::new(self.channel.clone());
        let r = self.service_request(asg::GetPrincipalRequest { id: id.to_owned() })?;
        match c.get_principal(r).await {
            Ok(x) => Ok(x.into_inner().principal),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(from_status(&s)),
        }
    }

    /// The transitive members of a group.
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

    /// Who holds (active, and eligible too with `include_eligible`) a role at a scope or
    /// above, with group assignments expanded to their members.
    pub async fn role_holders(
        &self,
        role_id: &str,
        scope_id: &str,
        include_eligible: bool,
    ) -> ApiResult<Vec<common::PrincipalRef>> {
        let mut c = asg::access_service_client::AccessServiceClient::new(self.channel.clone());
        let mut out = Vec::new();
        let mut page_token = String::new();
        let t = if include_eligible {
            common::AssignmentType::Unspecified
        } else {
            common::AssignmentType::Active
        };
        loop {
            let r = self.service_request(asg::ListRoleMembersRequest {
                role_id: role_id.to_owned(),
                scope_id: scope_id.to_owned(),
                assignment_type: t.into(),
                exclude_inherited: false,
                expand_groups: true,
                page_size: 1000,
                page_token: page_token.clone(),
            })?;
            let resp = c
                .list_role_members(r)
                .await
                .map_err(|s| from_status(&s))?
                .into_inner();
            out.extend(resp.members.into_iter().filter_map(|m| m.principal));
            if resp.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = resp.next_page_token;
        }
    }

    /// The assignments in effect of a role at a scope (and below it with
    /// `descendants`), of one type.
    pub async fn assignments(
        &self,
        role_id: &str,
        scope_id: &str,
        descendants: bool,
        t: common::AssignmentType,
    ) -> ApiResult<Vec<asg::Assignment>> {
        let mut c =
            asg::assignments_service_client::AssignmentsServiceClient::new(self.channel.clone());
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = self.service_request(asg::ListAssignmentsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                assignment_type: t.into(),
                role_id: role_id.to_owned(),
                scope_id: scope_id.to_owned(),
                include_descendants: descendants,
                statuses: vec![asg::AssignmentStatus::InEffect.into()],
                ..Default::default()
            })?;
            let resp = c
                .list_assignments(r)
                .await
                .map_err(|s| from_status(&s))?
                .into_inner();
            out.extend(resp.assignments);
            if resp.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = resp.next_page_token;
        }
    }

    /// Removes a denied assignment (reason ACCESS_REVIEW), idempotent by `request_id`.
    pub async fn remove(
        &self,
        assignment_id: &str,
        request_id: &str,
        source_reference: &str,
        justification: &str,
    ) -> Removal {
        let mut c =
            asg::assignments_service_client::AssignmentsServiceClient::new(self.channel.clone());
        let r = match self.service_request(asg::RemoveAssignmentRequest {
            id: assignment_id.to_owned(),
            justification: justification.to_owned(),
            ticket: None,
            reason: asg::RemovalReason::AccessReview.into(),
            source_reference: source_reference.to_owned(),
            request_id: request_id.to_owned(),
        }) {
            Ok(r) => r,
            Err(e) => return Removal::Failed(e.to_string()),
        };
        match c.remove_assignment(r).await {
            Ok(_) => Removal::Removed,
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                Removal::AlreadyGone(s.message().to_owned())
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                Removal::AlreadyGone("the assignment no longer exists".to_owned())
            }
            Err(s) => Removal::Failed(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}
