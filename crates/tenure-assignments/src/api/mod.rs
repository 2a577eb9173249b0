//! The gRPC adapters of the assignments context: each decodes its requests into domain
//! terms, calls the core, and encodes the results. One module per service.

use std::sync::Arc;

use tenure_platform::grpc::Registry;
use tenure_platform::register;
use tenure_proto::assignments::v1 as pb;

use crate::core::Core;

pub mod access;
pub mod assignments;
pub mod drift;
pub mod instances;
pub mod principals;
pub mod provisioning;
pub mod roles;
pub mod scopes;
pub mod settings;

/// Registers every service of the context.
pub fn register(core: &Arc<Core>, registry: &mut Registry) {
    let c = || core.clone();
    register!(
        registry,
        pb::access_service_server::AccessServiceServer::new(access::AccessApi { core: c() })
    );
    register!(
        registry,
        pb::assignments_service_server::AssignmentsServiceServer::new(
            assignments::AssignmentsApi { core: c() }
        )
    );
    register!(
        registry,
        pb::drift_service_server::DriftServiceServer::new(drift::DriftApi { core: core.clone() })
    );
    register!(
        registry,
        pb::principals_service_server::PrincipalsServiceServer::new(principals::PrincipalsApi {
            core: core.clone()
        })
    );
    register!(
        registry,
        pb::provisioning_service_server::ProvisioningServiceServer::new(
            provisioning::ProvisioningApi { core: c() }
        )
    );
    register!(
        registry,
        pb::role_settings_service_server::RoleSettingsServiceServer::new(
            settings::RoleSettingsApi { core: core.clone() }
        )
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
