//! Follows the assignments context's stream and keeps what recommendations need in
//! this context's own table: each activation (`InstanceActivated`) with its principal,
//! the group it came through, role, scope and time. The row and the cursor commit
//! together (effectively once); a replayed event changes nothing.

use std::sync::Arc;

use futures::future::BoxFuture;
use tenure_platform::ApiError;
use tenure_platform::clock::from_proto;
use tenure_platform::consumer::EventHandler;
use tenure_platform::events::UnitOfWork;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::reviews::v1 as pb;

use crate::engine::Engine;

tenure_platform::grpc_event_source!(AssignmentsStream, tenure_proto::assignments::v1);

/// Records activations seen on the assignments stream.
pub struct Activity {
    /// The engine.
    pub engine: Arc<Engine>,
}

impl EventHandler<asg::Event, pb::Event> for Activity {
    fn handle<'a>(
        &'a self,
        uow: &'a mut UnitOfWork<pb::Event>,
        event: &'a asg::Event,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let Some(asg::event::Payload::InstanceActivated(e)) = &event.payload else {
                return Ok(());
            };
            let Some(instance) = &e.instance else {
                return Ok(());
            };
            let at = instance
                .start_time
                .as_ref()
                .or(event.meta.as_ref().and_then(|m| m.occurred_at.as_ref()))
                .and_then(from_proto)
                .unwrap_or_else(|| uow.now());
            let via = e.via_group.as_ref().map_or("", |g| g.id.as_str());
            self.engine.activation_seen(uow, instance, via, at).await
        })
    }
}
