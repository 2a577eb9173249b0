//! `NotificationsService`: settings, administrators, rule sets, webhooks, the delivery
//! log, and the notification stream.

use std::sync::Arc;

use futures::StreamExt as _;
use prost::Message as _;
use rand::RngCore as _;
use sqlx::Row as _;
use tenure_platform::clock::{from_proto, to_micros, to_proto};
use tenure_platform::error::Violations;
use tenure_platform::events::{NewEvent, TypeFilter};
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult};
use tenure_proto::common::v1 as common;
use tenure_proto::notifications::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{READ, WRITE, idempotent, offset_token, page_size, require};
use crate::domain::rules::{self, owned_by_role_settings, recipient_kinds};
use crate::engine::Engine;

/// The gRPC adapter.
#[derive(Clone)]
pub struct NotificationsApi {
    /// The engine.
    pub engine: Arc<Engine>,
}

fn check_emails(list: &[String], field: &str, v: &mut Violations) {
    for (i, a) in list.iter().enumerate() {
        v.check(
            !rules::valid_email(a),
            format!("{field}[{i}]"),
            "is not a valid e-mail address",
        );
    }
}

fn event_kinds(list: &[i32], field: &str, v: &mut Violations) {
    for (i, k) in list.iter().enumerate() {
        v.check(
            !matches!(common::NotificationEventKind::try_from(*k), Ok(x) if x != common::NotificationEventKind::Unspecified),
            format!("{field}[{i}]"),
            "unknown or unspecified event kind",
        );
    }
}

fn check_webhook(w: &pb::Webhook, paths: Option<&[String]>, v: &mut Violations) {
    let has = |p: &str| paths.is_none_or(|ps| ps.iter().any(|x| x == p));
    if has("url")
        && let Err(why) = rules::check_webhook_url(&w.url)
    {
        v.add("webhook.url", why);
    }
    if has("secret") && !w.secret.is_empty() {
        v.check(
            w.secret.len() < 32,
            "webhook.secret",
            "must be at least 32 bytes (or empty to generate one)",
        );
    }
    if has("display_name") {
        v.check(
            w.display_name.len() > 200,
            "webhook.display_name",
            "at most 200 characters",
        );
    }
    if has("event_kinds") {
        event_kinds(&w.event_kinds, "webhook.event_kinds", v);
    }
    if has("min_alert_severity") {
        v.check(
            pb::AlertSeverity::try_from(w.min_alert_severity).is_err(),
            "webhook.min_alert_severity",
            "unknown severity",
        );
    }
}

fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn hint(secret: &str) -> String {
    secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

fn decode<M: prost::Message + Default>(b: &[u8]) -> ApiResult<M> {
    M::decode(b).map_err(|e| ApiError::Internal(e.into()))
}

async fn load_layer(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    owned: bool,
    role: &str,
    scope: &str,
) -> ApiResult<Vec<common::NotificationRule>> {
    if owned {
        return crate::project::role_settings_rules(tx, role, scope).await;
    }
    let b: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT body FROM notifications_rule_sets WHERE role_id = $1 AND scope_id = $2",
    )
    .bind(role)
    .bind(scope)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match b {
        Some(b) => decode::<pb::NotificationRuleSet>(&b)?.rules,
        None => vec![],
    })
}

impl NotificationsApi {
    async fn webhook(&self, id: &str) -> ApiResult<pb::Webhook> {
        let b: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM notifications_webhooks WHERE id = $1")
                .bind(id)
                .fetch_optional(self.engine.db.reader())
                .await?;
        decode(&b.ok_or_else(|| ApiError::not_found("webhook", id))?)
    }

    async fn update_settings(
        &self,
        c: &tenure_platform::auth::Caller,
        r: pb::UpdateNotificationSettingsRequest,
    ) -> ApiResult<pb::UpdateNotificationSettingsResponse> {
        let s = r.settings.unwrap_or_default();
        let mask = r
            .update_mask
            .ok_or_else(|| ApiError::invalid("update_mask", "required"))?;
        let mut v = Violations::new();
        v.check(
            mask.paths.is_empty(),
            "update_mask",
            "name at least one path",
        );
        let top = |p: &str| p.split('.').next().unwrap_or_default().to_owned();
        for (i, p) in mask.paths.iter().enumerate() {
            let ok = matches!(
                p.as_str(),
                "administrators"
                    | "expiry_reminders"
                    | "email"
                    | "alert_routing"
                    | "administrators.role_ids"
                    | "administrators.resource_role_ids"
                    | "administrators.include_eligible"
                    | "administrators.principal_ids"
                    | "administrators.email_addresses"
                    | "expiry_reminders.enabled"
                    | "expiry_reminders.before_end"
                    | "email.enabled"
                    | "email.from_address"
                    | "email.from_name"
                    | "email.link_base_url"
                    | "email.subject_prefix"
                    | "alert_routing.min_email_severity"
                    | "alert_routing.email_addresses"
            );
            v.check(
                !ok,
                format!("update_mask.paths[{i}]"),
                format!("unknown path {p:?}"),
            );
        }
        let tops: Vec<String> = mask.paths.iter().map(|p| top(p)).collect();
        if tops.iter().any(|t| t == "administrators") {
            let a = s.administrators.clone().unwrap_or_default();
            check_emails(
                &a.email_addresses,
                "settings.administrators.email_addresses",
                &mut v,
            );
            for (i, id) in a
                .role_ids
                .iter()
                .chain(a.resource_role_ids.iter())
                .enumerate()
            {
                v.check(
                    id.is_empty(),
                    format!("settings.administrators.role_ids[{i}]"),
                    "must be a role id",
                );
            }
        }
        if tops.iter().any(|t| t == "expiry_reminders") {
            let e = s.expiry_reminders.clone().unwrap_or_default();
            rules::check_reminders(
                &e.before_end,
                "settings.expiry_reminders.before_end",
                &mut v,
            );
        }
        if tops.iter().any(|t| t == "email") {
            let e = s.email.clone().unwrap_or_default();
            if !e.from_address.is_empty() {
                v.check(
                    !rules::valid_email(&e.from_address),
                    "settings.email.from_address",
                    "is not a valid e-mail address",
                );
            }
            if let Err(why) = rules::check_link_base(&e.link_base_url) {
                v.add("settings.email.link_base_url", why);
            }
            v.check(
                e.subject_prefix.len() > 100,
                "settings.email.subject_prefix",
                "at most 100 characters",
            );
        }
        if tops.iter().any(|t| t == "alert_routing") {
            let a = s.alert_routing.clone().unwrap_or_default();
            check_emails(
                &a.email_addresses,
                "settings.alert_routing.email_addresses",
                &mut v,
            );
            v.check(
                pb::AlertSeverity::try_from(a.min_email_severity).is_err(),
                "settings.alert_routing.min_email_severity",
                "unknown severity",
            );
        }
        v.finish()?;
        require(&self.engine, c, WRITE).await?;
        if tops.iter().any(|t| t == "administrators") {
            let a = s.administrators.clone().unwrap_or_default();
            self.require_roles(&a.role_ids).await?;
            self.require_roles(&a.resource_role_ids).await?;
            self.require_principals(&a.principal_ids).await?;
        }
        let engine = self.engine.clone();
        let who = c.principal_id.clone();
        idempotent(&self.engine, "UpdateNotificationSettings", &r.request_id, &c.principal_id, move |uow| {
            Box::pin(async move {
                let (before, version) = engine.settings_in(uow.tx()).await?;
                if !s.etag.is_empty() && s.etag != version.to_string() {
                    return Err(ApiError::precondition("the settings changed since they were read (stale etag); read them again"));
                }
                let mut after = before.clone();
                let src_a = s.administrators.clone().unwrap_or_default();
                let src_r = s.expiry_reminders.clone().unwrap_or_default();
                let src_e = s.email.clone().unwrap_or_default();
                let src_al = s.alert_routing.clone().unwrap_or_default();
                for p in &mask.paths {
                    let a = after.administrators.get_or_insert_with(Default::default);
                    match p.as_str() {
                        "administrators" => *a = src_a.clone(),
                        "administrators.role_ids" => a.role_ids.clone_from(&src_a.role_ids),
                        "administrators.resource_role_ids" => a.resource_role_ids.clone_from(&src_a.resource_role_ids),
                        "administrators.include_eligible" => a.include_eligible = src_a.include_eligible,
                        "administrators.principal_ids" => a.principal_ids.clone_from(&src_a.principal_ids),
                        "administrators.email_addresses" => a.email_addresses.clone_from(&src_a.email_addresses),
                        _ => {}
                    }
                    let r = after.expiry_reminders.get_or_insert_with(Default::default);
                    match p.as_str() {
                        "expiry_reminders" => *r = src_r.clone(),
                        "expiry_reminders.enabled" => r.enabled = src_r.enabled,
                        "expiry_reminders.before_end" => r.before_end.clone_from(&src_r.before_end),
                        _ => {}
                    }
                    let e = after.email.get_or_insert_with(Default::default);
                    match p.as_str() {
                        "email" => *e = src_e.clone(),
                        "email.enabled" => e.enabled = src_e.enabled,
                        "email.from_address" => e.from_address.clone_from(&src_e.from_address),
                        "email.from_name" => e.from_name.clone_from(&src_e.from_name),
                        "email.link_base_url" => e.link_base_url.clone_from(&src_e.link_base_url),
                        "email.subject_prefix" => e.subject_prefix.clone_from(&src_e.subject_prefix),
                        _ => {}
                    }
                    let al = after.alert_routing.get_or_insert_with(Default::default);
                    match p.as_str() {
                        "alert_routing" => *al = src_al.clone(),
                        "alert_routing.min_email_severity" => al.min_email_severity = src_al.min_email_severity,
                        "alert_routing.email_addresses" => al.email_addresses.clone_from(&src_al.email_addresses),
                        _ => {}
                    }
                }
                after.update_time = Some(to_proto(engine.now()));
                after.updated_by.clone_from(&who);
                after.etag = (version + 1).to_string();
                let n = sqlx::query(
                    "INSERT INTO notifications_settings (id, version, body) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version, body = excluded.body \
                     WHERE notifications_settings.version = $3",
                )
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
                    pb::NotificationSettingsChanged { before: Some(before), after: Some(after.clone()) },
                    who,
                    "settings",
                ));
                Ok(pb::UpdateNotificationSettingsResponse { settings: Some(after) })
            })
        })
        .await
    }

    async fn rule_set(
        &self,
        role_id: &str,
        scope_id: &str,
    ) -> ApiResult<Option<(pb::NotificationRuleSet, i64)>> {
        let row = sqlx::query("SELECT version, body FROM notifications_rule_sets WHERE role_id = $1 AND scope_id = $2")
            .bind(role_id)
            .bind(scope_id)
            .fetch_optional(self.engine.db.reader())
            .await?;
        match row {
            Some(r) => {
                let b: Vec<u8> = r.try_get("body")?;
                Ok(Some((decode(&b)?, r.try_get("version")?)))
            }
            None => Ok(None),
        }
    }

    /// NOT_FOUND for the first role the assignments context does not know.
    async fn require_roles(&self, ids: &[String]) -> ApiResult<()> {
        for id in ids {
            if !self.engine.assignments.role_exists(id).await? {
                return Err(ApiError::not_found("role", id));
            }
        }
        Ok(())
    }

    /// NOT_FOUND for the first principal the assignments context does not know.
    async fn require_principals(&self, ids: &[String]) -> ApiResult<()> {
        for id in ids {
            if !self.engine.assignments.principal_exists(id).await? {
                return Err(ApiError::not_found("principal", id));
            }
        }
        Ok(())
    }

    /// NOT_FOUND for an unknown role, scope or extra-recipient principal of a rule set.
    async fn require_rule_set_refs(&self, set: &pb::NotificationRuleSet) -> ApiResult<()> {
        if !set.role_id.is_empty() {
            self.require_roles(std::slice::from_ref(&set.role_id))
                .await?;
        }
        if !set.scope_id.is_empty() && !self.engine.assignments.scope_exists(&set.scope_id).await? {
            return Err(ApiError::not_found("scope", &set.scope_id));
        }
        for r in &set.rules {
            if let Some(x) = &r.extra_recipients {
                self.require_principals(&x.principal_ids).await?;
            }
        }
        Ok(())
    }

    fn check_rules(set: &pb::NotificationRuleSet, v: &mut Violations) {
        let defaults = set.role_id.is_empty();
        let mut seen = std::collections::HashSet::new();
        for (i, r) in set.rules.iter().enumerate() {
            let f = format!("rule_set.rules[{i}]");
            let e = common::NotificationEventKind::try_from(r.event_kind).unwrap_or_default();
            let k =
                common::NotificationRecipientKind::try_from(r.recipient_kind).unwrap_or_default();
            if e == common::NotificationEventKind::Unspecified
                || k == common::NotificationRecipientKind::Unspecified
            {
                v.add(&f, "event_kind and recipient_kind must be set and known");
                continue;
            }
            if owned_by_role_settings(e, k) {
                v.add(
                    &f,
                    "this pair is configured in the assignments context's role settings",
                );
            }
            if !recipient_kinds(e).contains(&k) {
                v.add(&f, "this recipient kind does not apply to this event kind");
            }
            if !seen.insert((r.event_kind, r.recipient_kind)) {
                v.add(&f, "duplicated (event kind, recipient kind) pair");
            }
            if defaults
                && (r.enabled.is_none()
                    || r.critical_only.is_none()
                    || r.default_recipients_enabled.is_none()
                    || r.extra_recipients.is_none())
            {
                v.add(&f, "every field of a default rule must be set");
            }
            if let Some(x) = &r.extra_recipients {
                check_emails(
                    &x.email_addresses,
                    &format!("{f}.extra_recipients.email_addresses"),
                    v,
                );
            }
        }
    }
}

#[tonic::async_trait]
impl pb::notifications_service_server::NotificationsService for NotificationsApi {
    async fn get_notification_settings(
        &self,
        request: Request<pb::GetNotificationSettingsRequest>,
    ) -> Result<Response<pb::GetNotificationSettingsResponse>, Status> {
        let c = caller(&request)?;
        async {
            require(&self.engine, &c, READ).await?;
            let mut tx = self.engine.db.reader().begin().await?;
            let (mut s, v) = self.engine.settings_in(&mut tx).await?;
            s.etag = v.to_string();
            Ok(pb::GetNotificationSettingsResponse { settings: Some(s) })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn update_notification_settings(
        &self,
        request: Request<pb::UpdateNotificationSettingsRequest>,
    ) -> Result<Response<pb::UpdateNotificationSettingsResponse>, Status> {
        let c = caller(&request)?;
        self.update_settings(&c, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn resolve_administrators(
        &self,
        request: Request<pb::ResolveAdministratorsRequest>,
    ) -> Result<Response<pb::ResolveAdministratorsResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            require(&self.engine, &c, READ).await?;
            let scope = if r.scope_id.is_empty() {
                "/".to_owned()
            } else {
                r.scope_id.clone()
            };
            let mut tx = self.engine.db.reader().begin().await?;
            if scope != "/" {
                let known: Option<String> =
                    sqlx::query_scalar("SELECT id FROM notifications_p_scopes WHERE id = $1")
                        .bind(&scope)
                        .fetch_optional(&mut *tx)
                        .await?;
                if known.is_none() {
                    return Err(ApiError::not_found("scope", scope));
                }
            }
            let (settings, _) = self.engine.settings_in(&mut tx).await?;
            let administrators = self
                .engine
                .administrators(&mut tx, &settings, &scope)
                .await?;
            Ok(pb::ResolveAdministratorsResponse { administrators })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn get_notification_rule_set(
        &self,
        request: Request<pb::GetNotificationRuleSetRequest>,
    ) -> Result<Response<pb::GetNotificationRuleSetResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            require(&self.engine, &c, READ).await?;
            self.require_rule_set_refs(&pb::NotificationRuleSet {
                role_id: r.role_id.clone(),
                scope_id: r.scope_id.clone(),
                ..Default::default()
            })
            .await?;
            let set = match self.rule_set(&r.role_id, &r.scope_id).await? {
                Some((mut s, v)) => {
                    s.etag = v.to_string();
                    s
                }
                None => pb::NotificationRuleSet {
                    role_id: r.role_id.clone(),
                    scope_id: r.scope_id.clone(),
                    etag: "0".into(),
                    ..Default::default()
                },
            };
            Ok(pb::GetNotificationRuleSetResponse {
                rule_set: Some(set),
            })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn list_notification_rule_sets(
        &self,
        request: Request<pb::ListNotificationRuleSetsRequest>,
    ) -> Result<Response<pb::ListNotificationRuleSetsResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let size = page_size(r.page_size, "page_size")?;
            let offset = offset_token(&r.page_token)?;
            require(&self.engine, &c, READ).await?;
            let rows = sqlx::query(
                "SELECT version, body FROM notifications_rule_sets WHERE role_id <> '' ORDER BY role_id, scope_id LIMIT $1 OFFSET $2",
            )
            .bind(size + 1)
            .bind(offset)
            .fetch_all(self.engine.db.reader())
            .await?;
            let mut sets = Vec::new();
            for row in &rows {
                let b: Vec<u8> = row.try_get("body")?;
                let v: i64 = row.try_get("version")?;
                let mut s: pb::NotificationRuleSet = decode(&b)?;
                s.etag = v.to_string();
                sets.push(s);
            }
            let more = sets.len() as i64 > size;
            sets.truncate(usize::try_from(size).unwrap_or(0));
            Ok(pb::ListNotificationRuleSetsResponse {
                rule_sets: sets,
                next_page_token: if more { (offset + size).to_string() } else { String::new() },
            })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn update_notification_rule_set(
        &self,
        request: Request<pb::UpdateNotificationRuleSetRequest>,
    ) -> Result<Response<pb::UpdateNotificationRuleSetResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let set = r.rule_set.clone().ok_or_else(|| ApiError::invalid("rule_set", "required"))?;
            let mut v = Violations::new();
            v.check(set.role_id.is_empty() && !set.scope_id.is_empty(), "rule_set.scope_id", "the defaults have no scope");
            Self::check_rules(&set, &mut v);
            v.finish()?;
            require(&self.engine, &c, WRITE).await?;
            self.require_rule_set_refs(&set).await?;
            let before = self.rule_set(&set.role_id, &set.scope_id).await?;
            let engine = self.engine.clone();
            let who = c.principal_id.clone();
            idempotent(&self.engine, "UpdateNotificationRuleSet", &r.request_id, &c.principal_id, move |uow| {
                Box::pin(async move {
                    let version = before.as_ref().map_or(0, |b| b.1);
                    if !set.etag.is_empty() && set.etag != version.to_string() {
                        return Err(ApiError::precondition("the rule set changed since it was read (stale etag)"));
                    }
                    let mut after = set.clone();
                    after.update_time = Some(to_proto(engine.now()));
                    after.etag = (version + 1).to_string();
                    sqlx::query(
                        "INSERT INTO notifications_rule_sets (role_id, scope_id, version, body) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (role_id, scope_id) DO UPDATE SET version = excluded.version, body = excluded.body",
                    )
                    .bind(&after.role_id)
                    .bind(&after.scope_id)
                    .bind(version + 1)
                    .bind(after.encode_to_vec())
                    .execute(&mut **uow.tx())
                    .await?;
                    uow.emit(NewEvent::new(
                        pb::NotificationRulesChanged { before: before.map(|b| b.0), after: Some(after.clone()) },
                        who,
                        if after.role_id.is_empty() { "defaults".to_owned() } else { after.role_id.clone() },
                    ));
                    Ok(pb::UpdateNotificationRuleSetResponse { rule_set: Some(after) })
                })
            })
            .await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn delete_notification_rule_set(
        &self,
        request: Request<pb::DeleteNotificationRuleSetRequest>,
    ) -> Result<Response<pb::DeleteNotificationRuleSetResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            if r.role_id.is_empty() {
                return Err(ApiError::invalid("role_id", "required (the defaults cannot be deleted)"));
            }
            require(&self.engine, &c, WRITE).await?;
            let before = self.rule_set(&r.role_id, &r.scope_id).await?;
            let who = c.principal_id.clone();
            let (role, scope) = (r.role_id.clone(), r.scope_id.clone());
            idempotent(&self.engine, "DeleteNotificationRuleSet", &r.request_id, &c.principal_id, move |uow| {
                Box::pin(async move {
                    sqlx::query("DELETE FROM notifications_rule_sets WHERE role_id = $1 AND scope_id = $2")
                        .bind(&role)
                        .bind(&scope)
                        .execute(&mut **uow.tx())
                        .await?;
                    if let Some((b, _)) = before {
                        uow.emit(NewEvent::new(pb::NotificationRulesChanged { before: Some(b), after: None }, who, role));
                    }
                    Ok(pb::DeleteNotificationRuleSetResponse {})
                })
            })
            .await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn get_effective_notification_rules(
        &self,
        request: Request<pb::GetEffectiveNotificationRulesRequest>,
    ) -> Result<Response<pb::GetEffectiveNotificationRulesResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            require(&self.engine, &c, READ).await?;
            let scope = if r.scope_id.is_empty() {
                "/".to_owned()
            } else {
                r.scope_id.clone()
            };
            self.require_rule_set_refs(&pb::NotificationRuleSet {
                role_id: r.role_id.clone(),
                scope_id: scope.clone(),
                ..Default::default()
            })
            .await?;
            let mut tx = self.engine.db.reader().begin().await?;
            let mut out = Vec::new();
            for e in rules::EVENT_KINDS {
                for k in recipient_kinds(e) {
                    let owned = owned_by_role_settings(e, *k);
                    let mut layers: Vec<Vec<common::NotificationRule>> = Vec::new();
                    if !r.role_id.is_empty() {
                        layers.push(load_layer(&mut tx, owned, &r.role_id, &scope).await?);
                        layers.push(load_layer(&mut tx, owned, &r.role_id, "").await?);
                    } else {
                        layers.push(vec![]);
                        layers.push(vec![]);
                    }
                    layers.push(load_layer(&mut tx, owned, "", "").await?);
                    let refs: Vec<&[common::NotificationRule]> =
                        layers.iter().map(Vec::as_slice).collect();
                    let eff = rules::effective(e, *k, &refs);
                    let origin = match eff.origin_layer {
                        3 => common::SettingOrigin::RoleAtScope,
                        2 => common::SettingOrigin::Role,
                        1 => common::SettingOrigin::OrganisationDefault,
                        _ => common::SettingOrigin::BuiltIn,
                    };
                    out.push(pb::EffectiveNotificationRule {
                        rule: Some(common::NotificationRule {
                            event_kind: e.into(),
                            recipient_kind: (*k).into(),
                            enabled: Some(eff.enabled),
                            critical_only: Some(eff.critical_only),
                            default_recipients_enabled: Some(eff.default_recipients),
                            extra_recipients: Some(common::ExtraRecipients {
                                email_addresses: eff.extra_emails,
                                principal_ids: eff.extra_principals,
                            }),
                        }),
                        origin: origin.into(),
                        from_role_settings: owned,
                    });
                }
            }
            Ok(pb::GetEffectiveNotificationRulesResponse { rules: out })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let w = r.webhook.clone().ok_or_else(|| ApiError::invalid("webhook", "required"))?;
            let mut v = Violations::new();
            check_webhook(&w, None, &mut v);
            v.finish()?;
            require(&self.engine, &c, WRITE).await?;
            let engine = self.engine.clone();
            let who = c.principal_id.clone();
            idempotent(&self.engine, "CreateWebhook", &r.request_id, &c.principal_id, move |uow| {
                Box::pin(async move {
                    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM notifications_webhooks WHERE url = $1")
                        .bind(&w.url)
                        .fetch_optional(&mut **uow.tx())
                        .await?;
                    if exists.is_some() {
                        return Err(ApiError::AlreadyExists { kind: "webhook for url", id: w.url.clone() });
                    }
                    let secret = if w.secret.is_empty() { new_secret() } else { w.secret.clone() };
                    let now = engine.now();
                    let hook = pb::Webhook {
                        id: uuid::Uuid::now_v7().to_string(),
                        display_name: w.display_name.clone(),
                        url: w.url.clone(),
                        secret: String::new(),
                        secret_hint: hint(&secret),
                        enabled: Some(w.enabled.unwrap_or(true)),
                        event_kinds: w.event_kinds.clone(),
                        critical_only: w.critical_only,
                        min_alert_severity: w.min_alert_severity,
                        create_time: Some(to_proto(now)),
                        update_time: Some(to_proto(now)),
                        etag: "1".into(),
                    };
                    sqlx::query(
                        "INSERT INTO notifications_webhooks (id, url, secret, created_at, version, body) VALUES ($1, $2, $3, $4, 1, $5)",
                    )
                    .bind(&hook.id)
                    .bind(&hook.url)
                    .bind(&secret)
                    .bind(to_micros(now))
                    .bind(hook.encode_to_vec())
                    .execute(&mut **uow.tx())
                    .await?;
                    uow.emit(NewEvent::new(pb::WebhookCreated { webhook: Some(hook.clone()) }, who, hook.id.clone()));
                    Ok(pb::CreateWebhookResponse { webhook: Some(hook), secret })
                })
            })
            .await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn get_webhook(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::GetWebhookResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            require(&self.engine, &c, READ).await?;
            Ok(pb::GetWebhookResponse {
                webhook: Some(self.webhook(&r.id).await?),
            })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let size = page_size(r.page_size, "page_size")?;
            let offset = offset_token(&r.page_token)?;
            require(&self.engine, &c, READ).await?;
            let mut tx = self.engine.db.reader().begin().await?;
            let all = self.engine.webhooks_in(&mut tx).await?;
            let total = all.len() as i64;
            let webhooks = all
                .into_iter()
                .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                .take(usize::try_from(size).unwrap_or(0))
                .collect();
            Ok(pb::ListWebhooksResponse {
                webhooks,
                next_page_token: if offset + size < total {
                    (offset + size).to_string()
                } else {
                    String::new()
                },
            })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn update_webhook(
        &self,
        request: Request<pb::UpdateWebhookRequest>,
    ) -> Result<Response<pb::UpdateWebhookResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let w = r.webhook.clone().ok_or_else(|| ApiError::invalid("webhook", "required"))?;
            let mask = r.update_mask.clone().ok_or_else(|| ApiError::invalid("update_mask", "required"))?;
            let mut v = Violations::new();
            v.check(mask.paths.is_empty(), "update_mask", "name at least one path");
            for (i, p) in mask.paths.iter().enumerate() {
                v.check(
                    !matches!(p.as_str(), "display_name" | "url" | "enabled" | "event_kinds" | "critical_only" | "min_alert_severity" | "secret"),
                    format!("update_mask.paths[{i}]"),
                    format!("unknown path {p:?}"),
                );
            }
            check_webhook(&w, Some(&mask.paths), &mut v);
            v.finish()?;
            require(&self.engine, &c, WRITE).await?;
            let before = self.webhook(&w.id).await?;
            let engine = self.engine.clone();
            let who = c.principal_id.clone();
            idempotent(&self.engine, "UpdateWebhook", &r.request_id, &c.principal_id, move |uow| {
                Box::pin(async move {
                    let version: i64 = before.etag.parse().unwrap_or(0);
                    if !w.etag.is_empty() && w.etag != before.etag {
                        return Err(ApiError::precondition("the webhook changed since it was read (stale etag)"));
                    }
                    let mut after = before.clone();
                    let mut new_secret_value = None;
                    for p in &mask.paths {
                        match p.as_str() {
                            "display_name" => after.display_name.clone_from(&w.display_name),
                            "url" => after.url.clone_from(&w.url),
                            "enabled" => after.enabled = Some(w.enabled.unwrap_or(true)),
                            "event_kinds" => after.event_kinds.clone_from(&w.event_kinds),
                            "critical_only" => after.critical_only = w.critical_only,
                            "min_alert_severity" => after.min_alert_severity = w.min_alert_severity,
                            "secret" => {
                                let s = if w.secret.is_empty() { new_secret() } else { w.secret.clone() };
                                after.secret_hint = hint(&s);
                                new_secret_value = Some((s, w.secret.is_empty()));
                            }
                            _ => {}
                        }
                    }
                    after.update_time = Some(to_proto(engine.now()));
                    after.etag = (version + 1).to_string();
                    if after.url != before.url {
                        let clash: Option<String> = sqlx::query_scalar("SELECT id FROM notifications_webhooks WHERE url = $1 AND id <> $2")
                            .bind(&after.url)
                            .bind(&after.id)
                            .fetch_optional(&mut **uow.tx())
                            .await?;
                        if clash.is_some() {
                            return Err(ApiError::AlreadyExists { kind: "webhook for url", id: after.url.clone() });
                        }
                    }
                    sqlx::query("UPDATE notifications_webhooks SET url = $1, version = $2, body = $3 WHERE id = $4")
                        .bind(&after.url)
                        .bind(version + 1)
                        .bind(after.encode_to_vec())
                        .bind(&after.id)
                        .execute(&mut **uow.tx())
                        .await?;
                    if let Some((s, _)) = &new_secret_value {
                        sqlx::query("UPDATE notifications_webhooks SET secret = $1 WHERE id = $2")
                            .bind(s)
                            .bind(&after.id)
                            .execute(&mut **uow.tx())
                            .await?;
                    }
                    uow.emit(NewEvent::new(
                        pb::WebhookUpdated { before: Some(before), after: Some(after.clone()), secret_rotated: new_secret_value.is_some() },
                        who,
                        after.id.clone(),
                    ));
                    Ok(pb::UpdateWebhookResponse {
                        webhook: Some(after),
                        secret: new_secret_value.filter(|(_, generated)| *generated).map(|(s, _)| s).unwrap_or_default(),
                    })
                })
            })
            .await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            require(&self.engine, &c, WRITE).await?;
            let before = self.webhook(&r.id).await?;
            let who = c.principal_id.clone();
            let id = r.id.clone();
            idempotent(&self.engine, "DeleteWebhook", &r.request_id, &c.principal_id, move |uow| {
                Box::pin(async move {
                    sqlx::query("DELETE FROM notifications_webhooks WHERE id = $1")
                        .bind(&id)
                        .execute(&mut **uow.tx())
                        .await?;
                    // pending deliveries become due now and die with "webhook deleted"
                    sqlx::query(
                        "UPDATE notifications_deliveries SET next_attempt_at = 0 WHERE recipient = $1 AND channel = $2 AND next_attempt_at IS NOT NULL",
                    )
                    .bind(&id)
                    .bind(pb::Channel::Webhook as i64)
                    .execute(&mut **uow.tx())
                    .await?;
                    uow.emit(NewEvent::new(pb::WebhookDeleted { webhook: Some(before) }, who, id));
                    Ok(pb::DeleteWebhookResponse {})
                })
            })
            .await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn get_notification(
        &self,
        request: Request<pb::GetNotificationRequest>,
    ) -> Result<Response<pb::GetNotificationResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let b: Option<Vec<u8>> = sqlx::query_scalar("SELECT body FROM notifications_notifications WHERE id = $1")
                .bind(&r.id)
                .fetch_optional(self.engine.db.reader())
                .await?;
            let mut n: pb::Notification = decode(&b.ok_or_else(|| ApiError::not_found("notification", &r.id))?)?;
            let rows = sqlx::query("SELECT principal_id, body FROM notifications_deliveries WHERE notification_id = $1 ORDER BY id")
                .bind(&r.id)
                .fetch_all(self.engine.db.reader())
                .await?;
            let mut recipient = false;
            for row in rows {
                let p: String = row.try_get("principal_id")?;
                recipient |= p == c.principal_id;
                let b: Vec<u8> = row.try_get("body")?;
                n.deliveries.push(decode(&b)?);
            }
            if !recipient {
                require(&self.engine, &c, READ).await?;
            }
            Ok(pb::GetNotificationResponse { notification: Some(n) })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            let size = page_size(r.page_size, "page_size")?;
            let offset = offset_token(&r.page_token)?;
            let mut v = Violations::new();
            let start = r.start_time.as_ref().map(from_proto);
            let end = r.end_time.as_ref().map(from_proto);
            v.check(matches!(start, Some(None)), "start_time", "is not a valid time");
            v.check(matches!(end, Some(None)), "end_time", "is not a valid time");
            if let (Some(Some(s)), Some(Some(e))) = (start, end) {
                v.check(e < s, "end_time", "must not be before start_time");
            }
            v.check(pb::Channel::try_from(r.channel).is_err(), "channel", "unknown channel");
            for (i, s) in r.statuses.iter().enumerate() {
                v.check(pb::DeliveryStatus::try_from(*s).is_err(), format!("statuses[{i}]"), "unknown status");
            }
            event_kinds(&r.event_kinds, "event_kinds", &mut v);
            v.finish()?;
            require(&self.engine, &c, READ).await?;
            let rows = sqlx::query(
                "SELECT channel, recipient, principal_id, event_kind, status, created_at, notification_id, body \
                 FROM notifications_deliveries ORDER BY created_at DESC, id DESC",
            )
            .fetch_all(self.engine.db.reader())
            .await?;
            let mut out = Vec::new();
            for row in rows {
                let ch: i64 = row.try_get("channel")?;
                let st: i64 = row.try_get("status")?;
                let kind: i64 = row.try_get("event_kind")?;
                let at: i64 = row.try_get("created_at")?;
                let recipient: String = row.try_get("recipient")?;
                let principal: String = row.try_get("principal_id")?;
                let nid: String = row.try_get("notification_id")?;
                if (r.channel != 0 && ch != i64::from(r.channel))
                    || (!r.statuses.is_empty() && !r.statuses.iter().any(|s| i64::from(*s) == st))
                    || (!r.event_kinds.is_empty() && !r.event_kinds.iter().any(|k| i64::from(*k) == kind))
                    || (!r.recipient.is_empty() && r.recipient != recipient && r.recipient != principal)
                    || (!r.notification_id.is_empty() && r.notification_id != nid)
                    || matches!(start, Some(Some(s)) if at < to_micros(s))
                    || matches!(end, Some(Some(e)) if at >= to_micros(e))
                {
                    continue;
                }
                let b: Vec<u8> = row.try_get("body")?;
                out.push(decode::<pb::Delivery>(&b)?);
            }
            let total = out.len() as i64;
            let deliveries = out
                .into_iter()
                .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                .take(usize::try_from(size).unwrap_or(0))
                .collect();
            Ok(pb::ListDeliveriesResponse {
                deliveries,
                next_page_token: if offset + size < total { (offset + size).to_string() } else { String::new() },
            })
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn retry_delivery(
        &self,
        request: Request<pb::RetryDeliveryRequest>,
    ) -> Result<Response<pb::RetryDeliveryResponse>, Status> {
        let c = caller(&request)?;
        let r = request.into_inner();
        async {
            require(&self.engine, &c, WRITE).await?;
            let engine = self.engine.clone();
            let id = r.id.clone();
            idempotent(
                &self.engine,
                "RetryDelivery",
                &r.request_id,
                &c.principal_id,
                move |uow| {
                    Box::pin(async move {
                        let row = sqlx::query(
                            "SELECT event_kind, body FROM notifications_deliveries WHERE id = $1",
                        )
                        .bind(&id)
                        .fetch_optional(&mut **uow.tx())
                        .await?
                        .ok_or_else(|| ApiError::not_found("delivery", &id))?;
                        let b: Vec<u8> = row.try_get("body")?;
                        let kind: i64 = row.try_get("event_kind")?;
                        let mut d: pb::Delivery = decode(&b)?;
                        if d.status != pb::DeliveryStatus::Dead as i32 {
                            return Err(ApiError::precondition(
                                "only a dead delivery can be retried",
                            ));
                        }
                        let now = to_proto(engine.now());
                        d.status = pb::DeliveryStatus::Pending.into();
                        d.next_attempt_time = Some(now);
                        d.create_time = Some(now);
                        engine
                            .store_delivery(uow.tx(), &d, i32::try_from(kind).unwrap_or(0))
                            .await?;
                        Ok(pb::RetryDeliveryResponse { delivery: Some(d) })
                    })
                },
            )
            .await
        }
        .await
        .map(Response::new)
        .map_err(status)
    }

    async fn subscribe_notifications(
        &self,
        request: Request<pb::SubscribeNotificationsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::SubscribeNotificationsResponse>>, Status>
    {
        let c = caller(&request)?;
        let limits = tenure_platform::limits::stream_limits_of(&request);
        let r = request.into_inner();
        let mut v = Violations::new();
        v.check(
            r.after_sequence < 0,
            "after_sequence",
            "must be zero or a sequence number",
        );
        event_kinds(&r.event_kinds, "event_kinds", &mut v);
        v.finish().map_err(status)?;
        let allowed = match require(&self.engine, &c, READ).await {
            Ok(()) => true,
            Err(_) => self
                .engine
                .assignments
                .has_permission(&c.token, &c.principal_id, "tenure/notifications/read", "/")
                .await
                .map_err(status)?,
        };
        if !allowed {
            return Err(status(ApiError::denied(
                "this needs a reading role or the permission \"tenure/notifications/read\"",
            )));
        }
        let filter = TypeFilter::new(vec!["NotificationQueued".into()]).map_err(status)?;
        let kinds = r.event_kinds.clone();
        let critical_only = r.critical_only;
        let stream = self
            .engine
            .log
            .subscribe(r.after_sequence, filter)
            .filter_map(move |item| {
                let kinds = kinds.clone();
                async move {
                    let e = match item {
                        Ok(e) => e,
                        Err(err) => return Some(Err(status(err))),
                    };
                    let Some(pb::event::Payload::NotificationQueued(q)) = &e.payload else {
                        return None;
                    };
                    let mut n = q.notification.clone()?;
                    if (!kinds.is_empty() && !kinds.contains(&n.event_kind))
                        || (critical_only && !n.critical)
                    {
                        return None;
                    }
                    n.deliveries.clear();
                    Some(Ok(pb::SubscribeNotificationsResponse {
                        sequence: e.meta.as_ref().map_or(0, |m| m.sequence),
                        notification: Some(n),
                    }))
                }
            });
        Ok(Response::new(tenure_platform::limits::bounded_stream(
            stream, limits,
        )))
    }
}
