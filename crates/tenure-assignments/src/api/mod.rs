//! The gRPC adapters of the assignments context: each decodes its requests into domain
//! terms, calls the core, and encodes the results. One module per service.

use std::sync::Arc;

use tenure_platform::grpc::Registry;
use tenure_platform::register;
use tenure_proto::assignments::v1 as pb;

use crate::core::Core;

pub mod principals;
pub mod roles;
pub mod scopes;

/// Registers every service of the context.
pub fn register(core: &Arc<Core>, registry: &mut Registry) {
    register!(
        registry,
        pb::access_service_server::AccessServiceServer::new(Unbuilt)
    );
    register!(
        registry,
        pb::assignments_service_server::AssignmentsServiceServer::new(Unbuilt)
    );
    register!(
        registry,
        pb::drift_service_server::DriftServiceServer::new(Unbuilt)
    );
    register!(
        registry,
        pb::principals_service_server::PrincipalsServiceServer::new(principals::PrincipalsApi {
            core: core.clone()
        })
    );
    register!(
        registry,
        pb::provisioning_service_server::ProvisioningServiceServer::new(Unbuilt)
    );
    register!(
        registry,
        pb::role_settings_service_server::RoleSettingsServiceServer::new(Unbuilt)
    );
    register!(
        registry,
        pb::role_definitions_service_server::RoleDefinitionsServiceServer::new(roles::RolesApi {
            core: core.clone()
        })
    );
    register!(
        registry,
        pb::scopes_service_server::ScopesServiceServer::new(scopes::ScopesApi {
            core: core.clone()
        })
    );
}

/// Services not built yet: every RPC answers UNIMPLEMENTED.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unbuilt;

impl pb::access_service_server::AccessService for Unbuilt {}
impl pb::assignments_service_server::AssignmentsService for Unbuilt {}
impl pb::drift_service_server::DriftService for Unbuilt {}
impl pb::provisioning_service_server::ProvisioningService for Unbuilt {}
impl pb::role_settings_service_server::RoleSettingsService for Unbuilt {}
