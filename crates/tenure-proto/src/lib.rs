//! Tenure's protobuf contracts, generated at build time from `proto/`.
//!
//! One module per package: [`common::v1`] holds the shared types and the event metadata;
//! each context (`assignments`, `activation`, `reviews`, `notifications`) has its own
//! `v1` module with its services, messages and its `Event` envelope.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The encoded `FileDescriptorSet` of every Tenure package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tenure_descriptor.bin"));

/// Types shared by all contexts.
pub mod common {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenure.common.v1.rs"));
    }
}

/// The assignments context: principals, roles, scopes, assignments, settings, access.
pub mod assignments {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenure.assignments.v1.rs"));
    }
}

/// The activation context: just-in-time requests and approvals.
pub mod activation {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenure.activation.v1.rs"));
    }
}

/// The access reviews context.
pub mod reviews {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenure.reviews.v1.rs"));
    }
}

/// The notifications, alerts and audit context.
pub mod notifications {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenure.notifications.v1.rs"));
    }
}

/// The local development issuer's token service.
pub mod devauth {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenure.devauth.v1.rs"));
    }
}

/// What the event log needs of a context's `Event` envelope: its context name, access
/// to the shared metadata, and the fully-qualified type name of its payload.
pub trait EventEnvelope: prost::Message + Default + Clone + Send + Sync + 'static {
    /// The context that owns this envelope ("assignments", "activation", ...).
    const CONTEXT: &'static str;

    /// The envelope's metadata, when set.
    fn meta(&self) -> Option<&common::v1::EventMeta>;

    /// Sets the metadata.
    fn set_meta(&mut self, meta: common::v1::EventMeta);

    /// The fully-qualified protobuf name of the payload ("tenure.assignments.v1.X"), or
    /// `None` when no payload is set.
    fn payload_type(&self) -> Option<&'static str>;
}

/// Implements [`EventEnvelope`] for a context's `Event`, and `From<Payload>` for each
/// event message so producers write `Event::from(EligibleAssigned { .. })`. Every
/// variant of the payload `oneof` must be listed: a missing one fails to compile.
#[macro_export]
macro_rules! event_envelope {
    ($context:literal, $module:path, { $($variant:ident),* $(,)? }) => {
        const _: () = {
            use $module as m;
            impl $crate::EventEnvelope for m::Event {
                const CONTEXT: &'static str = $context;

                fn meta(&self) -> Option<&$crate::common::v1::EventMeta> {
                    self.meta.as_ref()
                }

                fn set_meta(&mut self, meta: $crate::common::v1::EventMeta) {
                    self.meta = Some(meta);
                }

                fn payload_type(&self) -> Option<&'static str> {
                    use prost::Name as _;
                    match self.payload.as_ref()? {
                        $(m::event::Payload::$variant(_) => {
                            const NAME: &str = concat!(
                                "tenure.", $context, ".v1.", stringify!($variant)
                            );
                            debug_assert_eq!(NAME, m::$variant::full_name());
                            Some(NAME)
                        })*
                    }
                }
            }
            $(
                impl From<m::$variant> for m::Event {
                    fn from(p: m::$variant) -> Self {
                        m::Event { meta: None, payload: Some(m::event::Payload::$variant(p)) }
                    }
                }
            )*
        };
    };
}

event_envelope!("assignments", crate::assignments::v1, {
    PrincipalSynced, PrincipalDisabled, PrincipalDeleted, GroupMembersSet,
    RoleDefinitionCreated, RoleDefinitionUpdated, RoleDefinitionDeleted,
    ScopeRegistered, ScopeRenamed, ScopeMoved, ScopeRemoved,
    AssignmentCreated, AssignmentUpdated, AssignmentRemoved, AssignmentExtended,
    AssignmentRenewed, AssignmentExpired,
    InstanceActivated, InstanceExtended, InstanceDeactivated, InstanceExpired,
    RoleSettingsChanged, DriftObserved, DriftResolved,
});

event_envelope!("activation", crate::activation::v1, {
    RequestCreated, ApprovalRequested, RequestApproved, RequestDenied, RequestCanceled,
    RequestTimedOut, RequestGranted, RequestProvisioned, RequestExtended, RequestRenewed,
    RoleDeactivated, RequestRevoked, RequestFailed, RequestEnded,
});

event_envelope!("reviews", crate::reviews::v1, {
    DefinitionCreated, DefinitionUpdated, DefinitionDeleted, RoundStarted, StageStarted,
    ReminderDue, DecisionRecorded, RoundCompleted, ResultApplied,
});

event_envelope!("notifications", crate::notifications::v1, {
    NotificationQueued, NotificationDelivered, NotificationFailed,
    AlertRaised, AlertUpdated, AlertResolved, AlertDismissed, AlertSettingsChanged,
    NotificationSettingsChanged, NotificationRulesChanged,
    WebhookCreated, WebhookUpdated, WebhookDeleted,
    AuditRetentionChanged, AuditEntriesPruned,
});
