//! The built-in role catalogue, the root scope, and the bootstrap administrator, seeded
//! at first start, each written with its events (so the access model, a projection of
//! the log, sees them like any other change).

use sqlx::Row as _;
use tenure_platform::ApiResult;
use tenure_platform::clock::{to_micros, to_proto};
use tenure_platform::events::NewEvent;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1 as common;

use crate::core::{Core, PRIVILEGED_ROLE_ADMINISTRATOR};

/// One built-in role: id, name, kind, highly privileged, description, permissions.
pub struct BuiltIn {
    /// Kebab-case id.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Directory or resource role.
    pub kind: pb::RoleKind,
    /// Whether holding it is highly privileged (alerts watch these).
    pub highly_privileged: bool,
    /// What it is for.
    pub description: &'static str,
    /// Permission patterns.
    pub permissions: &'static [&'static str],
}

use pb::RoleKind::{Directory as D, Resource as R};

/// The catalogue.
pub const BUILT_INS: &[BuiltIn] = &[
    BuiltIn {
        id: "global-administrator",
        name: "Global Administrator",
        kind: D,
        highly_privileged: true,
        description: "Can manage all aspects of the directory and the services that use it.",
        permissions: &["microsoft.directory/*", "tenure/read"],
    },
    BuiltIn {
        id: PRIVILEGED_ROLE_ADMINISTRATOR,
        name: "Privileged Role Administrator",
        kind: D,
        highly_privileged: true,
        description: "Can manage role assignments, role settings and privileged identity management in Tenure.",
        permissions: &[
            "tenure/*",
            "microsoft.directory/roleAssignments/*",
            "microsoft.directory/roleDefinitions/*",
        ],
    },
    BuiltIn {
        id: "security-administrator",
        name: "Security Administrator",
        kind: D,
        highly_privileged: true,
        description: "Can read security information and reports, and manage security configuration.",
        permissions: &[
            "tenure/read",
            "tenure/alerts/*",
            "microsoft.directory/securityPolicies/*",
            "microsoft.directory/securityReports/read",
        ],
    },
    BuiltIn {
        id: "security-reader",
        name: "Security Reader",
        kind: D,
        highly_privileged: false,
        description: "Can read security information and reports.",
        permissions: &["tenure/read", "microsoft.directory/securityReports/read"],
    },
    BuiltIn {
        id: "global-reader",
        name: "Global Reader",
        kind: D,
        highly_privileged: false,
        description: "Can read everything a Global Administrator can, but not change anything.",
        permissions: &["tenure/read", "microsoft.directory/read/*"],
    },
    BuiltIn {
        id: "user-administrator",
        name: "User Administrator",
        kind: D,
        highly_privileged: false,
        description: "Can manage users and groups, and reset passwords of non-administrators.",
        permissions: &[
            "microsoft.directory/users/*",
            "microsoft.directory/groups/*",
        ],
    },
    BuiltIn {
        id: "billing-administrator",
        name: "Billing Administrator",
        kind: D,
        highly_privileged: false,
        description: "Can make purchases, manage subscriptions and support tickets, and monitor service health.",
        permissions: &[
            "microsoft.commerce/billing/*",
            "microsoft.directory/organization/read",
        ],
    },
    BuiltIn {
        id: "exchange-administrator",
        name: "Exchange Administrator",
        kind: D,
        highly_privileged: false,
        description: "Can manage all aspects of the Exchange product.",
        permissions: &["microsoft.exchange/*"],
    },
    BuiltIn {
        id: "sharepoint-administrator",
        name: "SharePoint Administrator",
        kind: D,
        highly_privileged: false,
        description: "Can manage all aspects of the SharePoint service.",
        permissions: &["microsoft.sharepoint/*"],
    },
    BuiltIn {
        id: "intune-administrator",
        name: "Intune Administrator",
        kind: D,
        highly_privileged: false,
        description: "Can manage all aspects of the Intune product.",
        permissions: &["microsoft.intune/*"],
    },
    BuiltIn {
        id: "device-administrator",
        name: "Device Administrator",
        kind: D,
        highly_privileged: false,
        description: "Is a local administrator on every joined device.",
        permissions: &["microsoft.directory/devices/*"],
    },
    BuiltIn {
        id: "application-administrator",
        name: "Application Administrator",
        kind: D,
        highly_privileged: true,
        description: "Can create and manage all aspects of app registrations and enterprise apps.",
        permissions: &[
            "microsoft.directory/applications/*",
            "microsoft.directory/servicePrincipals/*",
        ],
    },
    BuiltIn {
        id: "cloud-application-administrator",
        name: "Cloud Application Administrator",
        kind: D,
        highly_privileged: true,
        description: "Can create and manage app registrations and enterprise apps, except the application proxy.",
        permissions: &["microsoft.directory/applications/*"],
    },
    BuiltIn {
        id: "conditional-access-administrator",
        name: "Conditional Access Administrator",
        kind: D,
        highly_privileged: true,
        description: "Can manage Conditional Access capabilities.",
        permissions: &["microsoft.directory/conditionalAccessPolicies/*"],
    },
    BuiltIn {
        id: "helpdesk-administrator",
        name: "Helpdesk Administrator",
        kind: D,
        highly_privileged: false,
        description: "Can reset passwords for non-administrators and Helpdesk Administrators.",
        permissions: &[
            "microsoft.directory/users/password/update",
            "microsoft.directory/users/read",
        ],
    },
    BuiltIn {
        id: "owner",
        name: "Owner",
        kind: R,
        highly_privileged: true,
        description: "Full access to manage all resources, including assigning roles.",
        permissions: &["microsoft.resources/*", "microsoft.authorization/*"],
    },
    BuiltIn {
        id: "contributor",
        name: "Contributor",
        kind: R,
        highly_privileged: false,
        description: "Full access to manage all resources, but not to assign roles.",
        permissions: &["microsoft.resources/*"],
    },
    BuiltIn {
        id: "reader",
        name: "Reader",
        kind: R,
        highly_privileged: false,
        description: "View all resources, but make no changes.",
        permissions: &["microsoft.resources/read"],
    },
    BuiltIn {
        id: "user-access-administrator",
        name: "User Access Administrator",
        kind: R,
        highly_privileged: true,
        description: "Manage user access to resources.",
        permissions: &["microsoft.authorization/*", "microsoft.resources/read"],
    },
];

/// Seeds what is missing: the catalogue and the root scope once, and the bootstrap
/// administrator once per configured principal. Safe when replicas race: a marker row's
/// primary key lets one of them do it.
pub async fn seed(core: &Core) -> ApiResult<()> {
    if !marked(core, "catalogue").await? {
        let mut uow = core.begin().await?;
        if mark(&mut uow, "catalogue").await? {
            let now = uow.now();
            for b in BUILT_INS {
                let role = pb::RoleDefinition {
                    id: b.id.to_owned(),
                    display_name: b.name.to_owned(),
                    description: b.description.to_owned(),
                    kind: b.kind.into(),
                    built_in: true,
                    permissions: b.permissions.iter().map(|p| (*p).to_owned()).collect(),
                    assignable_scope_ids: vec!["/".to_owned()],
                    highly_privileged: b.highly_privileged,
                    create_time: Some(to_proto(now)),
                    update_time: Some(to_proto(now)),
                    etag: "1".to_owned(),
                };
                crate::store::insert_role(&mut uow, &role).await?;
                uow.emit(NewEvent::new(
                    pb::RoleDefinitionCreated {
                        role_definition: Some(role),
                    },
                    "system",
                    b.id,
                ));
            }
            let root = pb::Scope {
                id: "/".to_owned(),
                parent_id: String::new(),
                r#type: common::ScopeType::Root.into(),
                display_name: "Root".to_owned(),
                create_time: Some(to_proto(now)),
                update_time: Some(to_proto(now)),
                ..Default::default()
            };
            crate::store::insert_scope(&mut uow, &root).await?;
            uow.emit(NewEvent::new(
                pb::ScopeRegistered { scope: Some(root) },
                "system",
                "/",
            ));
            core.commit(uow).await?;
        } else {
            uow.rollback().await?;
        }
    }
    if let Some(admin) = core
        .settings
        .bootstrap_principal
        .clone()
        .filter(|a| !a.is_empty())
    {
        let key = format!("bootstrap:{admin}");
        if !marked(core, &key).await? {
            let mut uow = core.begin().await?;
            if mark(&mut uow, &key).await? {
                let now = uow.now();
                if !core.model().principals.contains_key(admin.as_str()) {
                    let p = pb::Principal {
                        id: admin.clone(),
                        r#type: common::PrincipalType::User.into(),
                        display_name: admin.clone(),
                        enabled: Some(true),
                        source: "bootstrap".to_owned(),
                        create_time: Some(to_proto(now)),
                        update_time: Some(to_proto(now)),
                        ..Default::default()
                    };
                    crate::store::upsert_principal(&mut uow, &p).await?;
                    uow.emit(NewEvent::new(
                        pb::PrincipalSynced {
                            principal: Some(p),
                            created: true,
                            changed_fields: vec![],
                        },
                        "system",
                        &admin,
                    ));
                }
                let a = crate::store::NewAssignment {
                    id: uuid::Uuid::now_v7().to_string(),
                    assignment_type: common::AssignmentType::Active,
                    principal_id: admin.clone(),
                    role_id: PRIVILEGED_ROLE_ADMINISTRATOR.to_owned(),
                    scope_id: "/".to_owned(),
                    start: now,
                    end: None,
                    justification: "bootstrap administrator from configuration".to_owned(),
                    ticket: None,
                    actor: "system".to_owned(),
                };
                crate::store::insert_assignment(&mut uow, &a).await?;
                let assignment = crate::store::assignment_proto(core, &a.to_row(now), now);
                uow.emit(NewEvent::new(
                    pb::AssignmentCreated {
                        assignment: Some(assignment),
                    },
                    "system",
                    &a.id,
                ));
                core.commit(uow).await?;
                tracing::info!(principal = %admin, "bootstrap principal made a permanent active Privileged Role Administrator");
            } else {
                uow.rollback().await?;
            }
        }
    }
    Ok(())
}

async fn marked(core: &Core, key: &str) -> ApiResult<bool> {
    let row = sqlx::query("SELECT value FROM assignments_meta WHERE key = $1")
        .bind(key)
        .fetch_optional(core.db.reader())
        .await?;
    Ok(row
        .map(|r| r.try_get::<String, _>("value"))
        .transpose()?
        .is_some())
}

/// Inserts the marker; false when another replica got there first.
async fn mark(
    uow: &mut tenure_platform::events::UnitOfWork<pb::Event>,
    key: &str,
) -> ApiResult<bool> {
    let now = to_micros(uow.now());
    let r = sqlx::query(
        "INSERT INTO assignments_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(now.to_string())
    .execute(&mut **uow.tx())
    .await?;
    Ok(r.rows_affected() == 1)
}
