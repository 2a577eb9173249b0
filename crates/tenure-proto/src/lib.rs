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
