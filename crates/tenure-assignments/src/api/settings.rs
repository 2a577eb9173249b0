//! `RoleSettingsService`: organisation defaults, per-role and per-role-at-scope
//! overrides, and the effective settings with the origin of each value. The rules live
//! in [`crate::settings_rules`], storage and the effective settings in
//! [`crate::settings_store`].

use std::sync::Arc;

use tenure_platform::auth::Caller;
use tenure_platform::clock::to_micros;
use tenure_platform::events::NewEvent;
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{PrincipalType, SettingOrigin};
use tonic::{Request, Response, Status};

use crate::core::{Core, Page};
use crate::settings_rules as rules;
use crate::settings_store::{self as store, StoredLayer};

/// The permission that changing role settings needs (Privileged Role Administrator).
pub const SETTINGS_WRITE: &str = "tenure/settings/write";

const UPDATE_DEFAULTS: &str = "RoleSettingsService/UpdateDefaultRoleSettings";
const UPDATE: &str = "RoleSettingsService/UpdateRoleSettings";
const DELETE: &str = "RoleSettingsService/DeleteRoleSettings";

/// The gRPC adapter of `RoleSettingsService`.
#[derive(Clone)]
pub struct RoleSettingsApi {
    /// The context's core.
    pub core: Arc<Core>,
}

/// An update of a layer: the call, the layer, the given values and the mask.
struct Change<'a> {
    method: &'static str,
    request_id: &'a str,
    target: &'a Target,
    given: &'a pb::RoleSettings,
    paths: &'a [String],
}

/// Which layer a call is about.
struct Target {
    role_id: String,
    scope_id: String,
}

impl Target {
    fn defaults() -> Self {
        Self {
            role_id: String::new(),
            scope_id: String::new(),
        }
    }

    /// The scope where the caller needs the write permission.
    fn auth_scope(&self) -> &str {
        if self.scope_id.is_empty() {
            "/"
        } else {
            &self.scope_id
        }
    }
}

fn check_ids(
    v: &mut Violations,
    field_role: &str,
    role_id: &str,
    field_scope: &str,
    scope_id: &str,
) {
    v.check(
        !role_id.is_empty() && rules::bad_id(role_id),
        field_role,
        "must be at most 256 characters without control characters",
    );
    v.check(
        !scope_id.is_empty() && rules::bad_id(scope_id),
        field_scope,
        "must be at most 256 characters without control characters",
    );
}

impl RoleSettingsApi {
    /// Resolves and checks the layer of a role (and scope): NOT_FOUND for an unknown role
    /// or scope; INVALID_ARGUMENT for a scope with a directory role, or a scope outside
    /// the role's assignable scopes when `check_assignable`.
    async fn role_target(
        &self,
        role_field: &str,
        role_id: &str,
        scope_field: &str,
        scope_id: &str,
        check_assignable: bool,
    ) -> ApiResult<Target> {
        let mut v = Violations::new();
        v.check(role_id.is_empty(), role_field, "is required");
        check_ids(&mut v, role_field, role_id, scope_field, scope_id);
        v.finish()?;
        let resource = store::check_role_and_scope(&self.core, role_id, scope_id)?;
        if !scope_id.is_empty() {
            if !resource {
                return Err(ApiError::invalid(
                    scope_field,
                    "directory roles have role-wide settings only; leave scope_id empty",
                ));
            }
            if check_assignable {
                let role = crate::store::get_role(&self.core, role_id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("role", role_id))?;
                let assignable = if role.assignable_scope_ids.is_empty() {
                    vec!["/".to_owned()]
                } else {
                    role.assignable_scope_ids
                };
                let m = self.core.model();
                if !assignable.iter().any(|a| m.is_within(scope_id, a)) {
                    return Err(ApiError::invalid(
                        scope_field,
                        "is outside the role's assignable scopes",
                    ));
                }
            }
        }
        Ok(Target {
            role_id: role_id.to_owned(),
            scope_id: scope_id.to_owned(),
        })
    }

    /// A stored layer as the API shows it, approver names filled.
    fn show(&self, l: &StoredLayer) -> pb::RoleSettings {
        let mut p = l.to_proto();
        store::fill_refs(&self.core, &mut p);
        p
    }

    /// The organisation defaults with every field set.
    fn defaults_view(&self, stored: Option<&StoredLayer>) -> pb::RoleSettings {
        let layers: Vec<(SettingOrigin, &pb::RoleSettings)> = stored
            .map(|l| (SettingOrigin::OrganisationDefault, &l.settings))
            .into_iter()
            .collect();
        let (mut eff, _) = rules::merge(&layers);
        if let Some(l) = stored {
            let meta = l.to_proto();
            eff.update_time = meta.update_time;
            eff.updated_by = meta.updated_by;
            eff.etag = meta.etag;
        } else {
            eff.etag = "0".to_owned();
        }
        store::fill_refs(&self.core, &mut eff);
        eff
    }

    /// Checks a new layer's values and the principals it names: INVALID_ARGUMENT naming
    /// every bad field, then NOT_FOUND for an unknown principal.
    fn validate(&self, layer: &pb::RoleSettings) -> ApiResult<()> {
        let mut typed = layer.clone();
        store::fill_refs(&self.core, &mut typed);
        let mut v = Violations::new();
        rules::validate_layer(&typed, "role_settings", &mut v);
        let named = rules::named_principals(&typed, "role_settings");
        {
            let m = self.core.model();
            for n in &named {
                if let Some(p) = m.principals.get(n.id.as_str()) {
                    v.check(
                        n.approver && p.principal_type == PrincipalType::ServicePrincipal,
                        &n.field,
                        "approvers must be users or groups",
                    );
                }
            }
        }
        v.finish()?;
        let m = self.core.model();
        for n in &named {
            if !n.id.is_empty() && !m.principals.contains_key(n.id.as_str()) {
                return Err(ApiError::not_found("principal", n.id.clone()));
            }
        }
        Ok(())
    }

    /// Applies an update to a layer, in one unit of work with its event; returns the
    /// stored layer after it (or the one before when nothing changed).
    async fn update_layer<R: prost::Message + Clone>(
        &self,
        who: &Caller,
        change: Change<'_>,
        respond: impl FnOnce(&Self, Option<&StoredLayer>) -> R,
    ) -> ApiResult<R> {
        let Change {
            method,
            request_id,
            target,
            given,
            paths,
        } = change;
        let core = &self.core;
        let mut uow = core.begin().await?;
        let current = store::get_layer_tx(&mut uow, &target.role_id, &target.scope_id).await?;
        let current_version = current.as_ref().map_or(0, |l| l.version);
        if !given.etag.is_empty() && given.etag != current_version.to_string() {
            return Err(ApiError::precondition(format!(
                "role_settings.etag {:?} is stale: the settings are at {current_version}; read them again",
                given.etag
            )));
        }
        let before = current
            .as_ref()
            .map(|l| l.settings.clone())
            .unwrap_or_default();
        let after = rules::apply_mask(&before, given, paths);
        self.validate(&after)?;
        let unchanged = rules::layer_content(&before) == after;
        let stored = if unchanged && (current.is_some() || rules::is_empty_layer(&after)) {
            current
        } else {
            let now = uow.now();
            let next = StoredLayer {
                role_id: target.role_id.clone(),
                scope_id: target.scope_id.clone(),
                settings: after,
                updated_by: who.principal_id.clone(),
                updated_at: to_micros(now),
                version: current_version + 1,
            };
            store::put_layer(&mut uow, &next, current_version).await?;
            uow.emit(self.changed(who, target, current.as_ref(), Some(&next)));
            Some(next)
        };
        let response = respond(self, stored.as_ref());
        core.remember(&mut uow, method, request_id, &who.principal_id, &response)
            .await?;
        core.commit(uow).await?;
        Ok(response)
    }

    fn changed(
        &self,
        who: &Caller,
        target: &Target,
        before: Option<&StoredLayer>,
        after: Option<&StoredLayer>,
    ) -> NewEvent<pb::Event> {
        let subject = if target.role_id.is_empty() {
            "defaults".to_owned()
        } else if target.scope_id.is_empty() {
            target.role_id.clone()
        } else {
            format!("{}@{}", target.role_id, target.scope_id)
        };
        NewEvent::new(
            pb::RoleSettingsChanged {
                role: (!target.role_id.is_empty()).then(|| self.core.role_ref(&target.role_id)),
                scope: (!target.scope_id.is_empty()).then(|| self.core.scope_ref(&target.scope_id)),
                before: before.map(|l| self.show(l)),
                after: after.map(|l| self.show(l)),
            },
            who.principal_id.clone(),
            subject,
        )
    }
}

#[tonic::async_trait]
impl pb::role_settings_service_server::RoleSettingsService for RoleSettingsApi {
    async fn get_default_role_settings(
        &self,
        request: Request<pb::GetDefaultRoleSettingsRequest>,
    ) -> Result<Response<pb::GetDefaultRoleSettingsResponse>, Status> {
        caller(&request)?;
        let stored = store::get_layer(&self.core, "", "").await.map_err(status)?;
        Ok(Response::new(pb::GetDefaultRoleSettingsResponse {
            role_settings: Some(self.defaults_view(stored.as_ref())),
        }))
    }

    async fn update_default_role_settings(
        &self,
        request: Request<pb::UpdateDefaultRoleSettingsRequest>,
    ) -> Result<Response<pb::UpdateDefaultRoleSettingsResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let run = async {
            if let Some(r) = self
                .core
                .replay::<pb::UpdateDefaultRoleSettingsResponse>(
                    UPDATE_DEFAULTS,
                    &req.request_id,
                    &who.principal_id,
                )
                .await?
            {
                return Ok(r);
            }
            let given = req.role_settings.clone().unwrap_or_default();
            let mut v = Violations::new();
            v.check(req.role_settings.is_none(), "role_settings", "is required");
            v.check(
                !given.role_id.is_empty(),
                "role_settings.role_id",
                "must be empty for the organisation defaults",
            );
            v.check(
                !given.scope_id.is_empty(),
                "role_settings.scope_id",
                "must be empty for the organisation defaults",
            );
            v.finish()?;
            let paths = req
                .update_mask
                .as_ref()
                .map(|m| m.paths.clone())
                .unwrap_or_default();
            rules::check_mask(&paths)?;
            self.core.require(&who, SETTINGS_WRITE, "/")?;
            let target = Target::defaults();
            let change = Change {
                method: UPDATE_DEFAULTS,
                request_id: &req.request_id,
                target: &target,
                given: &given,
                paths: &paths,
            };
            self.update_layer(&who, change, |api, l| {
                pb::UpdateDefaultRoleSettingsResponse {
                    role_settings: Some(api.defaults_view(l)),
                }
            })
            .await
        };
        run.await.map(Response::new).map_err(status)
    }

    async fn get_role_settings(
        &self,
        request: Request<pb::GetRoleSettingsRequest>,
    ) -> Result<Response<pb::GetRoleSettingsResponse>, Status> {
        caller(&request)?;
        let req = request.into_inner();
        let run = async {
            let t = self
                .role_target("role_id", &req.role_id, "scope_id", &req.scope_id, false)
                .await?;
            let stored = store::get_layer(&self.core, &t.role_id, &t.scope_id).await?;
            Ok(pb::GetRoleSettingsResponse {
                role_settings: Some(match stored {
                    Some(l) => self.show(&l),
                    None => pb::RoleSettings {
                        role_id: t.role_id,
                        scope_id: t.scope_id,
                        etag: "0".to_owned(),
                        ..Default::default()
                    },
                }),
            })
        };
        run.await.map(Response::new).map_err(status)
    }

    async fn list_role_settings(
        &self,
        request: Request<pb::ListRoleSettingsRequest>,
    ) -> Result<Response<pb::ListRoleSettingsResponse>, Status> {
        caller(&request)?;
        let req = request.into_inner();
        let run = async {
            let mut v = Violations::new();
            v.check(
                !req.role_id.is_empty() && rules::bad_id(&req.role_id),
                "role_id",
                "must be at most 256 characters without control characters",
            );
            v.finish()?;
            let page = Page::parse(
                if req.page_size == 0 {
                    100
                } else {
                    req.page_size
                },
                &req.page_token,
            )?;
            let after = match &page.after {
                Some(a) => Some(a.split_once('\n').ok_or_else(|| {
                    ApiError::invalid("page_token", "is not a token this server issued")
                })?),
                None => None,
            };
            let mut layers =
                store::list_layers(&self.core, &req.role_id, after, page.size + 1).await?;
            let next_page_token = if layers.len() > page.size {
                layers.truncate(page.size);
                layers
                    .last()
                    .map(|l| Page::token(&format!("{}\n{}", l.role_id, l.scope_id)))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Ok(pb::ListRoleSettingsResponse {
                role_settings: layers.iter().map(|l| self.show(l)).collect(),
                next_page_token,
            })
        };
        run.await.map(Response::new).map_err(status)
    }

    async fn update_role_settings(
        &self,
        request: Request<pb::UpdateRoleSettingsRequest>,
    ) -> Result<Response<pb::UpdateRoleSettingsResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let run = async {
            if let Some(r) = self
                .core
                .replay::<pb::UpdateRoleSettingsResponse>(
                    UPDATE,
                    &req.request_id,
                    &who.principal_id,
                )
                .await?
            {
                return Ok(r);
            }
            let Some(given) = req.role_settings.clone() else {
                return Err(ApiError::invalid("role_settings", "is required"));
            };
            let paths = req
                .update_mask
                .as_ref()
                .map(|m| m.paths.clone())
                .unwrap_or_default();
            let t = self
                .role_target(
                    "role_settings.role_id",
                    &given.role_id,
                    "role_settings.scope_id",
                    &given.scope_id,
                    true,
                )
                .await?;
            rules::check_mask(&paths)?;
            self.core.require(&who, SETTINGS_WRITE, t.auth_scope())?;
            let change = Change {
                method: UPDATE,
                request_id: &req.request_id,
                target: &t,
                given: &given,
                paths: &paths,
            };
            self.update_layer(&who, change, |api, l| pb::UpdateRoleSettingsResponse {
                role_settings: Some(l.map_or_else(
                    || pb::RoleSettings {
                        role_id: t.role_id.clone(),
                        scope_id: t.scope_id.clone(),
                        etag: "0".to_owned(),
                        ..Default::default()
                    },
                    |l| api.show(l),
                )),
            })
            .await
        };
        run.await.map(Response::new).map_err(status)
    }

    async fn delete_role_settings(
        &self,
        request: Request<pb::DeleteRoleSettingsRequest>,
    ) -> Result<Response<pb::DeleteRoleSettingsResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let run = async {
            if let Some(r) = self
                .core
                .replay::<pb::DeleteRoleSettingsResponse>(
                    DELETE,
                    &req.request_id,
                    &who.principal_id,
                )
                .await?
            {
                return Ok(r);
            }
            let t = self
                .role_target("role_id", &req.role_id, "scope_id", &req.scope_id, false)
                .await?;
            self.core.require(&who, SETTINGS_WRITE, t.auth_scope())?;
            let response = pb::DeleteRoleSettingsResponse {};
            let mut uow = self.core.begin().await?;
            if let Some(current) = store::get_layer_tx(&mut uow, &t.role_id, &t.scope_id).await? {
                store::delete_layer(&mut uow, &t.role_id, &t.scope_id).await?;
                uow.emit(self.changed(&who, &t, Some(&current), None));
            }
            self.core
                .remember(
                    &mut uow,
                    DELETE,
                    &req.request_id,
                    &who.principal_id,
                    &response,
                )
                .await?;
            self.core.commit(uow).await?;
            Ok(response)
        };
        run.await.map(Response::new).map_err(status)
    }

    async fn get_effective_role_settings(
        &self,
        request: Request<pb::GetEffectiveRoleSettingsRequest>,
    ) -> Result<Response<pb::GetEffectiveRoleSettingsResponse>, Status> {
        caller(&request)?;
        let req = request.into_inner();
        let run = async {
            let mut v = Violations::new();
            v.check(req.role_id.is_empty(), "role_id", "is required");
            check_ids(&mut v, "role_id", &req.role_id, "scope_id", &req.scope_id);
            v.finish()?;
            let (eff, origins) =
                store::effective_settings(&self.core, &req.role_id, &req.scope_id).await?;
            let needs_defaults = eff
                .activation
                .as_ref()
                .and_then(|a| a.approval.as_ref())
                .is_some_and(|ap| ap.stages.iter().any(|s| s.approvers.is_empty()));
            let default_approvers = if needs_defaults {
                store::default_approvers(&self.core, &eff.scope_id)
            } else {
                Vec::new()
            };
            Ok(pb::GetEffectiveRoleSettingsResponse {
                role: Some(self.core.role_ref(&eff.role_id)),
                scope: Some(self.core.scope_ref(&eff.scope_id)),
                origins: origins.into_iter().map(|(k, o)| (k, o.into())).collect(),
                role_settings: Some(eff),
                default_approvers,
            })
        };
        run.await.map(Response::new).map_err(status)
    }
}
