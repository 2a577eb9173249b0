//! Follows the assignments context's stream: when an activation instance ends there
//! (expired at its end, its eligibility removed, its principal disabled or deleted),
//! the request that provisioned it becomes ENDED here, exactly once.

use std::sync::Arc;

use futures::future::BoxFuture;
use tenure_platform::ApiError;
use tenure_platform::consumer::EventHandler;
use tenure_platform::events::UnitOfWork;
use tenure_proto::activation::v1 as pb;
use tenure_proto::assignments::v1 as asg;

use crate::engine::Engine;

tenure_platform::grpc_event_source!(AssignmentsStream, tenure_proto::assignments::v1);

/// Reacts to instances ending in the assignments context.
pub struct InstanceEnds {
    /// The engine.
    pub engine: Arc<Engine>,
}

fn reason_of(r: asg::InstanceEndReason) -> Option<pb::EndReason> {
    use asg::InstanceEndReason as R;
    match r {
        R::Expired => Some(pb::EndReason::Expired),
        R::EligibilityRemoved | R::AssignmentRemoved => Some(pb::EndReason::EligibilityRemoved),
        R::PrincipalDisabled | R::PrincipalDeleted => Some(pb::EndReason::PrincipalDisabled),
        // Deactivations and revocations are ended by this context itself.
        R::Deactivated | R::Revoked | R::Unspecified => None,
    }
}

impl EventHandler<asg::Event, pb::Event> for InstanceEnds {
    fn handle<'a>(
        &'a self,
        uow: &'a mut UnitOfWork<pb::Event>,
        event: &'a asg::Event,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            use asg::event::Payload as P;
            let (instance, reason) = match &event.payload {
                Some(P::InstanceExpired(e)) => (e.instance.as_ref(), Some(pb::EndReason::Expired)),
                Some(P::InstanceDeactivated(e)) => (e.instance.as_ref(), reason_of(e.reason())),
                _ => return Ok(()),
            };
            let (Some(instance), Some(reason)) = (instance, reason) else {
                return Ok(());
            };
            if instance.request_id.is_empty() {
                return Ok(());
            }
            // The request changes in its own unit of work (with its event); a repeat of
            // this event finds it ENDED already and does nothing.
            self.engine
                .instance_ended_in(uow, &instance.request_id, reason)
                .await
        })
    }
}
