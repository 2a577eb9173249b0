//! `AlertsService`: list, get, incidents, dismiss, settings, rescan, and the stream.

use std::sync::Arc;

use futures::StreamExt as _;
use prost::Message as _;
use sqlx::Row as _;
use tenure_platform::clock::to_proto;
use tenure_platform::events::{NewEvent, TypeFilter};
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::notifications::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{ALERTS_WRITE, READ, WRITE, idempotent, offset_token, page_size, require};
use crate::domain::alerts::{self, KINDS};
use crate::engine::Engine;

/// The gRPC adapter.
#[derive(Clone)]
pub struct AlertsApi {
    /// The engine.
    pub engine: Arc<Engine>,
}

fn severity(v: i32, field: &str) -> ApiResult<i32> {
    pb::AlertSeverity::try_from(v)
        .map(|s| s as i32)
        .map_err(|_| ApiError::invalid(field, format!("unknown severity {v}")))
}

fn kinds(v: &[i32], field: &str) -> ApiResult<Vec<pb::AlertKind>> {
    v.iter()
        .enumerate()
        .map(|(i, k)| alerts::parse_kind(*k, &format!("{field}[{i}]")))
        .collect()
}

impl AlertsApi {
    async fn list(&self, r: pb::ListAlertsRequest) -> ApiResult<pb::ListAlertsResponse> {
        let size = page_size(r.page_size, "page_size")?;
        let offset = offset_token(&r.page_token)?;
        let ks = kinds(&r.kinds, "kinds")?;
        let min = severity(r.min_severity, "min_severity")?;
        let mut statuses = Vec::new();
        for (i, s) in r.statuses.iter().enumerate() {
            match pb::AlertStatus::try_from(*s) {
                Ok(pb::AlertStatus::Unspecified) | Ok(pb::AlertStatus::Active) => {
                    statuses.push(pb::AlertStatus::Active as i64);
                }
                Ok(s) => statuses.push(s as i64),
                Err(_) => {
                    return Err(ApiError::invalid(
                        format!("statuses[{i}]"),
                        "unknown status",
                    ));
                }
            }
        }
        if statuses.is_empty() {
            statuses.push(pb::AlertStatus::Active as i64);
        }
        let rows = sqlx::query("SELECT kind, status, severity, body FROM notifications_alerts ORDER BY raised_at DESC, id DESC")
            .fetch_all(self.engine.db.reader())
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let k: i64 = row.try_get("kind")?;
            let s: i64 = row.try_get("status")?;
            let sev: i64 = row.try_get("severity")?;
            if !statuses.contains(&s)
                || (!ks.is_empty() && !ks.iter().any(|x| *x as i64 == k))
                || sev < i64::from(min)
            {
                continue;
            }
            let b: Vec<u8> = row.try_get("body")?;
            out.push(pb::Alert::decode(b.as_slice()).map_err(|e| ApiError::Internal(e.into()))?);
        }
        let total = out.len() as i64;
        let page: Vec<pb::Alert> = out
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(size).unwrap_or(0))
            .collect();
        let next = offset + size;
        Ok(pb::ListAlertsResponse {
            alerts: page,
            next_page_token: if next < total {
                next.to_string()
            } else {
                String::new()
            },
        })
    }

    async fn update_settings(
        &self,
        c: &tenure_platform::auth::Caller,
        r: pb::UpdateAlertSettingsRequest,
    ) -> ApiResult<pb::UpdateAlertSettingsResponse> {
        let s = r
            .settings
            .ok_or_else(|| ApiError::invalid("settings", "required"))?;
        let kind = alerts::parse_kind(s.kind, "settings.kind")?;
        let mask = r
            .update_mask
            .ok_or_else(|| ApiError::invalid("update_mask", "required"))?;
        let mut v = tenure_platform::error::Violations::new();
        v.check(
            mask.paths.is_empty(),
            "update_mask",
            "name at least one path",
        );
        for (i, p) in mask.paths.iter().enumerate() {
            match p.as_str() {
                "enabled" | "excluded_principal_ids" => {}
                "severity" => {
                    v.check(
                        pb::AlertSeverity::try_from(s.severity).is_err(),
                        "settings.severity",
                        "unknown severity",
                    );
                }
                "thresholds" => alerts::check_thresholds(kind, s.thresholds.as_ref(), &mut v),
                other => v.add(
                    format!("update_mask.paths[{i}]"),
                    format!("unknown path {other:?}"),
                ),
            }
        }
        for (i, p) in s.excluded_principal_ids.iter().enumerate() {
            v.check(
                p.is_empty() || p.len() > 200,
                format!("settings.excluded_principal_ids[{i}]"),
                "must be a principal id",
            );
        }
        v.finish()?;
        require(&self.engine, c, WRITE).await?;
        let engine = self.engine.clone();
        let who = c.principal_id.clone();
        let etag = s.etag.clone();
        idempotent(&self.engine, "UpdateAlertSettings", &r.request_id, &c.principal_id, move |uow| {
            Box::pin(async move {
                let (before, version) = engine.alert_settings_in(uow.tx(), kind).await?;
                if !etag.is_empty() && etag != version.to_string() {
                    return Err(ApiError::precondition("the settings changed since they were read (stale etag); read them again"));
                }
                let mut after = before.clone();
                for p in &mask.paths {
                    match p.as_str() {
                        "enabled" => after.enabled = s.enabled,
                        "severity" => after.severity = s.severity,
                        "excluded_principal_ids" => after.excluded_principal_ids.clone_from(&s.excluded_principal_ids),
                        "thresholds" => after.thresholds.clone_from(&s.thresholds),
                        _ => {}
                    }
                }
                if after.severity == 0 {
                    after.severity = alerts::default_severity(kind).into();
                }
                after.update_time = Some(to_proto(engine.now()));
                after.etag = (version + 1).to_string();
                let n = sqlx::query(
                    "INSERT INTO notifications_alert_settings (kind, version, body) VALUES ($1, $2, $3) \
                     ON CONFLICT (kind) DO UPDATE SET version = excluded.version, body = excluded.body \
                     WHERE notifications_alert_settings.version = $4",
                )
                .bind(kind as i64)
                .bind(version + 1)
                .bind(after.encode_to_vec())
                .bind(version)
                .execute(&mut **uow.tx())
                .await?
                .rows_affected();
                if n != 1 {
                    return Err(ApiError::Aborted("the settings changed concurrently; retry".into()));
                }
                uow.emit(NewEvent::new(
                    pb::AlertSettingsChanged {
                        before: Some(before),
                        after: Some(after.clone()),
                    },
                    who,
                    kind.as_str_name(),
                ));
                engine.evaluate(uow, &[kind]).await?;
                Ok(pb::UpdateAlertSettingsResponse { settings: Some(after) })
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::alerts_service_server::AlertsService for AlertsApi {
    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            require(&self.engine, &c, READ).await?;
            self.list(r).await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn get_alert(
        &self,
        request: Request<pb::GetAlertRequest>,
    ) -> Result<Response<pb::GetAlertResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            require(&self.engine, &c, READ).await?;
            let alert = self.engine.alert(&r.id).await?;
            Ok(pb::GetAlertResponse { alert: Some(alert) })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn list_alert_incidents(
        &self,
        request: Request<pb::ListAlertIncidentsRequest>,
    ) -> Result<Response<pb::ListAlertIncidentsResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let size = page_size(r.page_size, "page_size")?;
            let offset = offset_token(&r.page_token)?;
            require(&self.engine, &c, READ).await?;
            self.engine.alert(&r.alert_id).await?;
            let rows = sqlx::query(
                "SELECT body FROM notifications_alert_incidents WHERE alert_id = $1 ORDER BY incident_key LIMIT $2 OFFSET $3",
            )
            .bind(&r.alert_id)
            .bind(size + 1)
            .bind(offset)
            .fetch_all(self.engine.db.reader())
            .await?;
            let mut incidents = Vec::new();
            for row in &rows {
                let b: Vec<u8> = row.try_get("body")?;
                incidents.push(pb::AlertIncident::decode(b.as_slice()).map_err(|e| ApiError::Internal(e.into()))?);
            }
            let more = incidents.len() as i64 > size;
            incidents.truncate(usize::try_from(size).unwrap_or(0));
            Ok(pb::ListAlertIncidentsResponse {
                incidents,
                next_page_token: if more { (offset + size).to_string() } else { String::new() },
            })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn dismiss_alert(
        &self,
        request: Request<pb::DismissAlertRequest>,
    ) -> Result<Response<pb::DismissAlertResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let reason = r.reason.trim().to_owned();
            let mut v = tenure_platform::error::Violations::new();
            v.check(r.id.is_empty(), "id", "required");
            v.check(reason.is_empty(), "reason", "required");
            v.check(reason.len() > 2000, "reason", "at most 2000 characters");
            v.finish()?;
            require(&self.engine, &c, ALERTS_WRITE).await?;
            let engine = self.engine.clone();
            let who = c.principal_id.clone();
            let id = r.id.clone();
            idempotent(
                &self.engine,
                "DismissAlert",
                &r.request_id,
                &c.principal_id,
                move |uow| {
                    Box::pin(async move {
                        let alert = engine.dismiss(uow, &who, &id, &reason).await?;
                        Ok(pb::DismissAlertResponse { alert: Some(alert) })
                    })
                },
            )
            .await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn list_alert_settings(
        &self,
        request: Request<pb::ListAlertSettingsRequest>,
    ) -> Result<Response<pb::ListAlertSettingsResponse>, Status> {
        let c = caller(&request)?;
        async {
            require(&self.engine, &c, READ).await?;
            let mut tx = self.engine.db.reader().begin().await?;
            let mut settings = Vec::new();
            for k in KINDS {
                settings.push(self.engine.alert_settings_in(&mut tx, k).await?.0);
            }
            Ok(pb::ListAlertSettingsResponse { settings })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn update_alert_settings(
        &self,
        request: Request<pb::UpdateAlertSettingsRequest>,
    ) -> Result<Response<pb::UpdateAlertSettingsResponse>, Status> {
        let c = caller(&request)?;
        self.update_settings(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn rescan_alerts(
        &self,
        request: Request<pb::RescanAlertsRequest>,
    ) -> Result<Response<pb::RescanAlertsResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let ks = kinds(&r.kinds, "kinds")?;
            require(&self.engine, &c, ALERTS_WRITE).await?;
            let counts = self.engine.rescan(&ks).await?;
            let active = self
                .list(pb::ListAlertsRequest {
                    page_size: 1000,
                    ..Default::default()
                })
                .await?
                .alerts;
            Ok(pb::RescanAlertsResponse {
                raised_count: counts.raised,
                updated_count: counts.updated,
                resolved_count: counts.resolved,
                active_alerts: active,
            })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn subscribe_alerts(
        &self,
        request: Request<pb::SubscribeAlertsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::SubscribeAlertsResponse>>, Status> {
        let c = caller(&request)?;
        let limits = tenure_platform::limits::stream_limits_of(&request);
        let r = request.into_inner();
        if r.after_sequence < 0 {
            return Err(status(ApiError::invalid(
                "after_sequence",
                "must be zero or a sequence number",
            )));
        }
        let ks = kinds(&r.kinds, "kinds").map_err(status)?;
        let min = severity(r.min_severity, "min_severity").map_err(status)?;
        require(&self.engine, &c, READ).await.map_err(status)?;
        let filter = TypeFilter::new(vec![
            "AlertRaised".into(),
            "AlertUpdated".into(),
            "AlertResolved".into(),
            "AlertDismissed".into(),
        ])
        .map_err(status)?;
        let stream = self
            .engine
            .log
            .subscribe(r.after_sequence, filter)
            .filter_map(move |item| {
                let ks = ks.clone();
                async move {
                    let e = match item {
                        Ok(e) => e,
                        Err(err) => return Some(Err(status(err))),
                    };
                    use pb::event::Payload as P;
                    let mut out = pb::SubscribeAlertsResponse::default();
                    let (change, alert) = match &e.payload {
                        Some(P::AlertRaised(x)) => (pb::AlertChange::Raised, x.alert.as_ref()),
                        Some(P::AlertUpdated(x)) => (pb::AlertChange::Updated, x.alert.as_ref()),
                        Some(P::AlertResolved(x)) => (pb::AlertChange::Resolved, x.alert.as_ref()),
                        Some(P::AlertDismissed(x)) => {
                            (pb::AlertChange::Dismissed, x.alert.as_ref())
                        }
                        _ => return None,
                    };
                    let alert = alert?;
                    if (!ks.is_empty() && !ks.iter().any(|k| *k as i32 == alert.kind))
                        || alert.severity < min
                    {
                        return None;
                    }
                    // An update carries its change; a subscriber follows the incidents
                    // from the raise's without reading the alert again.
                    if let Some(P::AlertUpdated(x)) = &e.payload {
                        out.added_incidents.clone_from(&x.added_incidents);
                        out.removed_incident_ids.clone_from(&x.removed_incident_ids);
                        out.changed_incidents.clone_from(&x.changed_incidents);
                    }
                    let alert = alert.clone();
                    let meta = e.meta.clone().unwrap_or_default();
                    out.sequence = meta.sequence;
                    out.change = change.into();
                    out.alert = Some(alert);
                    out.change_time = meta.occurred_at;
                    Some(Ok(out))
                }
            });
        Ok(Response::new(tenure_platform::limits::bounded_stream(
            stream, limits,
        )))
    }
}
