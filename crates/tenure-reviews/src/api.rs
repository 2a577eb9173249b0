//! `ReviewsService`: the gRPC adapter over the [`Engine`]. Decodes, calls the engine,
//! encodes; mutations are idempotent by `request_id`.

use std::sync::Arc;

use tenure_platform::ApiError;
use tenure_platform::grpc::{caller, status};
use tenure_proto::reviews::v1 as pb;
use tonic::{Request, Response, Status};

use crate::engine::Engine;

/// The gRPC adapter.
#[derive(Clone)]
pub struct ReviewsApi {
    /// The engine.
    pub engine: Arc<Engine>,
}

/// Runs `run` once per (`method`, `request_id`): a retry gets the first response back.
/// At most once per request id (see `tenure_platform::idempotency::once`).
async fn idempotent<R, F, Fut>(
    engine: &Engine,
    method: &str,
    request_id: &str,
    who: &str,
    run: F,
) -> Result<R, tenure_platform::ApiError>
where
    R: prost::Message + Default,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<R, tenure_platform::ApiError>>,
{
    tenure_platform::idempotency::once(&engine.log, crate::PREFIX, method, request_id, who, run)
        .await
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::reviews_service_server::ReviewsService for ReviewsApi {
    async fn create_review_definition(
        &self,
        request: Request<pb::CreateReviewDefinitionRequest>,
    ) -> Rpc<pb::CreateReviewDefinitionResponse> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        idempotent(
            e,
            "CreateReviewDefinition",
            &r.request_id,
            &c.principal_id,
            || async {
                let d = r
                    .review_definition
                    .clone()
                    .ok_or_else(|| ApiError::invalid("review_definition", "is required"))?;
                Ok(pb::CreateReviewDefinitionResponse {
                    review_definition: Some(e.create_definition(&c, d).await?),
                })
            },
        )
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn get_review_definition(
        &self,
        request: Request<pb::GetReviewDefinitionRequest>,
    ) -> Rpc<pb::GetReviewDefinitionResponse> {
        let c = caller(&request)?;
        let r = request.into_inner();
        self.engine
            .get_definition(&c, &r.id)
            .await
            .map(|d| {
                Response::new(pb::GetReviewDefinitionResponse {
                    review_definition: Some(d),
                })
            })
            .map_err(status)
    }

    async fn list_review_definitions(
        &self,
        request: Request<pb::ListReviewDefinitionsRequest>,
    ) -> Rpc<pb::ListReviewDefinitionsResponse> {
        let c = caller(&request)?;
        self.engine
            .list_definitions(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn update_review_definition(
        &self,
        request: Request<pb::UpdateReviewDefinitionRequest>,
    ) -> Rpc<pb::UpdateReviewDefinitionResponse> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        let rid = r.request_id.clone();
        idempotent(
            e,
            "UpdateReviewDefinition",
            &rid,
            &c.principal_id,
            || async {
                Ok(pb::UpdateReviewDefinitionResponse {
                    review_definition: Some(e.update_definition(&c, r).await?),
                })
            },
        )
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn delete_review_definition(
        &self,
        request: Request<pb::DeleteReviewDefinitionRequest>,
    ) -> Rpc<pb::DeleteReviewDefinitionResponse> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        idempotent(
            e,
            "DeleteReviewDefinition",
            &r.request_id,
            &c.principal_id,
            || async {
                e.delete_definition(&c, &r.id).await?;
                Ok(pb::DeleteReviewDefinitionResponse {})
            },
        )
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn list_review_rounds(
        &self,
        request: Request<pb::ListReviewRoundsRequest>,
    ) -> Rpc<pb::ListReviewRoundsResponse> {
        let c = caller(&request)?;
        self.engine
            .list_rounds(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn get_review_round(
        &self,
        request: Request<pb::GetReviewRoundRequest>,
    ) -> Rpc<pb::GetReviewRoundResponse> {
        let c = caller(&request)?;
        let r = request.into_inner();
        self.engine
            .get_round(&c, &r.id)
            .await
            .map(|x| Response::new(pb::GetReviewRoundResponse { round: Some(x) }))
            .map_err(status)
    }

    async fn stop_review_round(
        &self,
        request: Request<pb::StopReviewRoundRequest>,
    ) -> Rpc<pb::StopReviewRoundResponse> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        idempotent(
            e,
            "StopReviewRound",
            &r.request_id,
            &c.principal_id,
            || async {
                Ok(pb::StopReviewRoundResponse {
                    round: Some(e.stop(&c, &r.id, &r.reason).await?),
                })
            },
        )
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn apply_review_results(
        &self,
        request: Request<pb::ApplyReviewResultsRequest>,
    ) -> Rpc<pb::ApplyReviewResultsResponse> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        idempotent(
            e,
            "ApplyReviewResults",
            &r.request_id,
            &c.principal_id,
            || async {
                Ok(pb::ApplyReviewResultsResponse {
                    round: Some(e.apply_results(&c, &r.id).await?),
                })
            },
        )
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn list_decision_items(
        &self,
        request: Request<pb::ListDecisionItemsRequest>,
    ) -> Rpc<pb::ListDecisionItemsResponse> {
        let c = caller(&request)?;
        self.engine
            .list_items(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn record_decision(
        &self,
        request: Request<pb::RecordDecisionRequest>,
    ) -> Rpc<pb::RecordDecisionResponse> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        let rid = r.request_id.clone();
        idempotent(e, "RecordDecision", &rid, &c.principal_id, || async {
            Ok(pb::RecordDecisionResponse {
                item: Some(e.decide(&c, r).await?),
            })
        })
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn accept_recommendations(
        &self,
        request: Request<pb::AcceptRecommendationsRequest>,
    ) -> Rpc<pb::AcceptRecommendationsResponse> {
        let c = caller(&request)?;
        let r = request.into_inner();
        let e = &self.engine;
        let rid = r.request_id.clone();
        idempotent(
            e,
            "AcceptRecommendations",
            &rid,
            &c.principal_id,
            || async { e.accept_recommendations(&c, r).await },
        )
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn list_my_pending_reviews(
        &self,
        request: Request<pb::ListMyPendingReviewsRequest>,
    ) -> Rpc<pb::ListMyPendingReviewsResponse> {
        let c = caller(&request)?;
        self.engine
            .my_pending(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_decision_history(
        &self,
        request: Request<pb::ListDecisionHistoryRequest>,
    ) -> Rpc<pb::ListDecisionHistoryResponse> {
        let c = caller(&request)?;
        self.engine
            .history(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}
