//! What the role settings say about assignments, in domain terms: whether permanent
//! assignments are allowed, how long they may last, and what an active assignment
//! needs (MFA, justification).

use chrono::TimeDelta;
use tenure_platform::ApiResult;
use tenure_proto::common::v1::AssignmentType;

use crate::core::Core;

/// The assignment rules in effect for one role at one scope and one assignment type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentPolicy {
    /// Whether an assignment of this type may be permanent.
    pub allow_permanent: bool,
    /// The longest window (and the default when no end is given).
    pub expire_after: TimeDelta,
    /// Whether the administrator must have a fresh MFA (active assignments).
    pub require_mfa: bool,
    /// How fresh that MFA must be.
    pub mfa_max_age: TimeDelta,
    /// Whether a justification is required.
    pub require_justification: bool,
}

/// The rules for `assignment_type` of `role_id` at `scope_id`.
pub async fn assignment_policy(
    core: &Core,
    role_id: &str,
    scope_id: &str,
    assignment_type: AssignmentType,
) -> ApiResult<AssignmentPolicy> {
    let (settings, _) = crate::settings_store::effective_settings(core, role_id, scope_id).await?;
    let a = settings.assignment.unwrap_or_default();
    let dur = |d: Option<prost_types::Duration>, default: TimeDelta| {
        d.and_then(|d| TimeDelta::new(d.seconds, u32::try_from(d.nanos).unwrap_or(0)))
            .unwrap_or(default)
    };
    let mfa_max_age = dur(
        settings.activation.as_ref().and_then(|x| x.mfa_max_age),
        TimeDelta::minutes(15),
    );
    Ok(match assignment_type {
        AssignmentType::Eligible => AssignmentPolicy {
            allow_permanent: a.allow_permanent_eligible.unwrap_or(false),
            expire_after: dur(a.eligible_expire_after, TimeDelta::days(365)),
            require_mfa: false,
            mfa_max_age,
            require_justification: false,
        },
        _ => AssignmentPolicy {
            allow_permanent: a.allow_permanent_active.unwrap_or(false),
            expire_after: dur(a.active_expire_after, TimeDelta::days(180)),
            require_mfa: a.require_mfa_on_active_assignment.unwrap_or(false),
            mfa_max_age,
            require_justification: a.require_justification_on_active_assignment.unwrap_or(true),
        },
    })
}
