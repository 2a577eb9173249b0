//! Role settings resolution. (Placeholder until the RoleSettingsService lands: the
//! built-in defaults only, with no overrides.)

use std::collections::BTreeMap;

use tenure_platform::ApiResult;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::SettingOrigin;

use crate::core::Core;

/// The effective settings of a role at a scope, with the origin of each value.
pub async fn effective_settings(
    core: &Core,
    role_id: &str,
    scope_id: &str,
) -> ApiResult<(pb::RoleSettings, BTreeMap<String, SettingOrigin>)> {
    let _ = core;
    let d = |s: i64| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    Ok((
        pb::RoleSettings {
            role_id: role_id.to_owned(),
            scope_id: scope_id.to_owned(),
            activation: Some(pb::ActivationSettings {
                maximum_duration: d(8 * 3600),
                require_mfa: Some(true),
                mfa_max_age: d(15 * 60),
                require_justification: Some(true),
                require_ticket: Some(false),
                require_approval: Some(false),
                ..Default::default()
            }),
            assignment: Some(pb::AssignmentSettings {
                allow_permanent_eligible: Some(false),
                eligible_expire_after: d(365 * 86400),
                allow_permanent_active: Some(false),
                active_expire_after: d(180 * 86400),
                require_mfa_on_active_assignment: Some(false),
                require_justification_on_active_assignment: Some(true),
            }),
            ..Default::default()
        },
        BTreeMap::new(),
    ))
}
