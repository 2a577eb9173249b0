//! `AccessService`: the access query. Answers come from the in-memory access model
//! (a projection of the log, exactly in step with committed state); answers about the
//! past come from the stored history.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use sqlx::Row as _;
use tenure_platform::auth::Caller;
use tenure_platform::clock::{from_proto, to_micros, to_proto};
use tenure_platform::grpc::{caller, status};
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1 as common;
use tonic::{Request, Response, Status};

use crate::api::instances::from_grant;
use crate::core::{Core, Page};
use crate::model::{GrantEntry, GrantSource, Match, Target};

/// The gRPC adapter.
#[derive(Clone)]
pub struct AccessApi {
    /// The context core.
    pub core: Arc<Core>,
}

fn grant_proto(core: &Core, m: &Match) -> pb::Grant {
    pb::Grant {
        instance: Some(from_grant(core, &m.grant)),
        member_type: m.member_type.into(),
        via_groups: m.via_groups.iter().map(|g| core.principal_ref(g)).collect(),
        inherited_from: m.inherited_from.as_ref().map(|s| core.scope_ref(s)),
        matched_permission: m
            .matched_permission
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
    }
}

impl AccessApi {
    fn may_ask_about(&self, caller: &Caller, principal_id: &str) -> bool {
        caller.principal_id == principal_id
            || self.core.is_service(caller)
            || self
                .core
                .has_permission(&caller.principal_id, "tenure/access/check", "/")
    }

    async fn check(
        &self,
        caller: &Caller,
        r: pb::CheckAccessRequest,
    ) -> ApiResult<pb::CheckAccessResponse> {
        let mut v = Violations::new();
        v.check(r.principal_id.is_empty(), "principal_id", "is required");
        v.check(r.principal_id.len() > 256, "principal_id", "is too long");
        let target = match &r.target {
            Some(pb::check_access_request::Target::RoleId(id)) if !id.is_empty() => {
                Some(Target::Role(id.as_str()))
            }
            Some(pb::check_access_request::Target::Permission(p))
                if !p.is_empty() && p.len() <= 256 =>
            {
                Some(Target::Permission(p.as_str()))
            }
            _ => {
                v.add("target", "set role_id or permission");
                None
            }
        };
        let scope = if r.scope_id.is_empty() {
            "/"
        } else {
            r.scope_id.as_str()
        };
        v.check(
            !scope.starts_with('/') || scope.len() > 1024,
            "scope_id",
            "must be a scope id such as \"/\" or \"/subscriptions/…\"",
        );
        let now = self.core.clock.now();
        let at = match &r.at_time {
            None => None,
            Some(ts) => match from_proto(ts) {
                Some(t) if t > now + TimeDelta::minutes(5) => {
                    v.add("at_time", "must not be more than 5 minutes in the future");
                    None
                }
                Some(t) => Some(t),
                None => {
                    v.add("at_time", "is not a valid timestamp");
                    None
                }
            },
        };
        v.check(r.min_sequence < 0, "min_sequence", "must not be negative");
        v.check(
            pb::Consistency::try_from(r.consistency).is_err(),
            "consistency",
            "is not a known consistency",
        );
        v.finish()?;
        let Some(target) = target else {
            return Err(ApiError::invalid("target", "set role_id or permission"));
        };
        if !self.may_ask_about(caller, &r.principal_id) {
            return Err(ApiError::denied(
                "asking about another principal needs the permission tenure/access/check",
            ));
        }
        if r.consistency() == pb::Consistency::Full {
            self.core.sync().await?;
        }
        if r.min_sequence > self.core.applied() {
            self.core
                .wait_applied(r.min_sequence, Duration::from_secs(5))
                .await?;
        }
        self.core.known_principal("principal_id", &r.principal_id)?;
        if let Target::Role(role) = target {
            self.core.known_role("role_id", role)?;
        }
        self.core.known_scope("scope_id", scope)?;
        let sequence = self.core.applied();
        let t = at.unwrap_or(now);
        let historical = at.is_some_and(|a| a < now);
        let grants: Vec<pb::Grant> = if historical {
            history(&self.core, &r.principal_id, target, scope, to_micros(t)).await?
        } else {
            let matches = self.core.model().evaluate(
                &r.principal_id,
                target,
                scope,
                to_micros(t),
                common::AssignmentType::Active,
            );
            matches.iter().map(|m| grant_proto(&self.core, m)).collect()
        };
        let allowed = !grants.is_empty();
        let valid_until = if allowed && !historical {
            // The answer holds until the last of the granting windows ends (absent changes).
            let ends: Vec<Option<prost_types::Timestamp>> = grants
                .iter()
                .map(|g| g.instance.as_ref().and_then(|i| i.end_time))
                .collect();
            if ends.iter().any(Option::is_none) {
                None
            } else {
                ends.into_iter()
                    .flatten()
                    .max_by_key(|t| (t.seconds, t.nanos))
            }
        } else {
            None
        };
        Ok(pb::CheckAccessResponse {
            allowed,
            grants,
            evaluated_at: Some(to_proto(t)),
            valid_until,
            sequence,
        })
    }
}

/// What was in effect at `t` (µs), from the stored history: group memberships with
/// their added/removed times, assignments with their windows and removal times, and
/// activations with their windows and early ends. The scope tree is today's (moves
/// are not historised).
async fn history(
    core: &Core,
    principal: &str,
    target: Target<'_>,
    scope: &str,
    t: i64,
) -> ApiResult<Vec<pb::Grant>> {
    let disabled: Option<Option<i64>> =
        sqlx::query_scalar("SELECT disabled_at FROM assignments_principals WHERE id = $1")
            .bind(principal)
            .fetch_optional(core.db.reader())
            .await?;
    if disabled.flatten().is_some_and(|d| d <= t) {
        return Ok(Vec::new());
    }
    // The principal and its groups at t, with the chain of groups.
    let mut subjects: Vec<(String, Vec<String>)> = vec![(principal.to_owned(), Vec::new())];
    let mut seen: HashSet<String> = HashSet::from([principal.to_owned()]);
    let mut queue: VecDeque<(String, Vec<String>)> =
        VecDeque::from([(principal.to_owned(), Vec::new())]);
    while let Some((member, chain)) = queue.pop_front() {
        let groups: Vec<String> = sqlx::query_scalar(
            "SELECT group_id FROM assignments_group_members WHERE member_id = $1 AND added_at <= $2 AND (removed_at IS NULL OR removed_at > $2)",
        )
        .bind(&member)
        .bind(t)
        .fetch_all(core.db.reader())
        .await?;
        for g in groups {
            if seen.insert(g.clone()) {
                let mut c = chain.clone();
                c.push(g.clone());
                subjects.push((g.clone(), c.clone()));
                queue.push_back((g, c));
            }
        }
    }
    let ancestors: Vec<String> = core
        .model()
        .ancestors(scope)
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut out = Vec::new();
    for (subject, chain) in &subjects {
        let assignments = sqlx::query(
            "SELECT id, role_id, scope_id, start_at, end_at FROM assignments_assignments WHERE principal_id = $1 \
             AND assignment_type = $2 AND start_at <= $3 AND (end_at IS NULL OR end_at > $3) AND (removed_at IS NULL OR removed_at > $3)",
        )
        .bind(subject)
        .bind(i64::from(i32::from(common::AssignmentType::Active)))
        .bind(t)
        .fetch_all(core.db.reader())
        .await?;
        let activations = sqlx::query(
            "SELECT id, role_id, scope_id, start_at, end_at, request_id, eligibility_id FROM assignments_activations \
             WHERE principal_id = $1 AND start_at <= $2 AND end_at > $2 AND (ended_at IS NULL OR ended_at > $2)",
        )
        .bind(subject)
        .bind(t)
        .fetch_all(core.db.reader())
        .await?;
        let rows = assignments
            .iter()
            .map(|r| (r, GrantSource::Assignment))
            .chain(activations.iter().map(|r| (r, GrantSource::Activation)));
        for (row, source) in rows {
            let g = GrantEntry {
                id: row.try_get::<String, _>("id")?.into(),
                source,
                assignment_type: common::AssignmentType::Active,
                principal: subject.as_str().into(),
                role: row.try_get::<String, _>("role_id")?.into(),
                scope: row.try_get::<String, _>("scope_id")?.into(),
                start: row.try_get("start_at")?,
                end: row.try_get("end_at")?,
                request_id: if source == GrantSource::Activation {
                    Some(row.try_get::<String, _>("request_id")?.into())
                } else {
                    None
                },
                eligibility_id: if source == GrantSource::Activation {
                    Some(row.try_get::<String, _>("eligibility_id")?.into())
                } else {
                    None
                },
            };
            if !ancestors.iter().any(|a| **a == *g.scope) {
                continue;
            }
            let matched_permission = match target {
                Target::Role(r) => {
                    if &*g.role != r {
                        continue;
                    }
                    None
                }
                Target::Permission(p) => match core.model().role_grants_permission(&g.role, p) {
                    Some(m) => Some(m),
                    None => continue,
                },
            };
            let inherited_from = (&*g.scope != scope).then(|| g.scope.clone());
            let member_type = if !chain.is_empty() {
                common::MemberType::Group
            } else if inherited_from.is_some() {
                common::MemberType::Inherited
            } else {
                common::MemberType::Direct
            };
            let m = Match {
                grant: g,
                member_type,
                via_groups: chain.iter().map(|c| c.as_str().into()).collect(),
                inherited_from,
                matched_permission,
            };
            out.push(grant_proto(core, &m));
        }
    }
    Ok(out)
}

#[tonic::async_trait]
impl pb::access_service_server::AccessService for AccessApi {
    async fn check_access(
        &self,
        request: Request<pb::CheckAccessRequest>,
    ) -> Result<Response<pb::CheckAccessResponse>, Status> {
        let caller = caller(&request)?;
        self.check(&caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn list_effective_roles(
        &self,
        request: Request<pb::ListEffectiveRolesRequest>,
    ) -> Result<Response<pb::ListEffectiveRolesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let run = || -> ApiResult<pb::ListEffectiveRolesResponse> {
            let page = Page::parse(r.page_size, &r.page_token)?;
            let principal = if r.principal_id.is_empty() {
                caller.principal_id.clone()
            } else {
                r.principal_id.clone()
            };
            if !(self.may_ask_about(&caller, &principal) || self.core.can_read_all(&caller)) {
                return Err(ApiError::denied(
                    "listing another principal's roles needs read access",
                ));
            }
            self.core.known_principal("principal_id", &principal)?;
            if !r.scope_id.is_empty() {
                self.core.known_scope("scope_id", &r.scope_id)?;
            }
            let now = self.core.clock.now();
            if r.at_time
                .as_ref()
                .and_then(from_proto)
                .is_some_and(|t| t < now - TimeDelta::seconds(1))
            {
                return Err(ApiError::invalid(
                    "at_time",
                    "past times are answered by CheckAccess (from history); leave at_time unset here",
                ));
            }
            let kind = common::AssignmentType::try_from(r.assignment_type)
                .ok()
                .filter(|k| *k != common::AssignmentType::Unspecified);
            let scope = (!r.scope_id.is_empty()).then_some(r.scope_id.as_str());
            let matches = self
                .core
                .model()
                .effective(&principal, scope, to_micros(now), kind);
            let mut grants: Vec<pb::Grant> =
                matches.iter().map(|m| grant_proto(&self.core, m)).collect();
            grants.sort_by(|a, b| {
                a.instance
                    .as_ref()
                    .map(|i| &i.id)
                    .cmp(&b.instance.as_ref().map(|i| &i.id))
            });
            let (grants, next_page_token) = page.cut(grants, |g| {
                g.instance
                    .as_ref()
                    .map(|i| i.id.clone())
                    .unwrap_or_default()
            });
            Ok(pb::ListEffectiveRolesResponse {
                grants,
                next_page_token,
            })
        };
        run().map(Response::new).map_err(status)
    }

    async fn list_role_members(
        &self,
        request: Request<pb::ListRoleMembersRequest>,
    ) -> Result<Response<pb::ListRoleMembersResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let run = || -> ApiResult<pb::ListRoleMembersResponse> {
            let page = Page::parse(r.page_size, &r.page_token)?;
            self.core.known_role("role_id", &r.role_id)?;
            let scope = if r.scope_id.is_empty() {
                "/"
            } else {
                r.scope_id.as_str()
            };
            self.core.known_scope("scope_id", scope)?;
            if !(self.core.can_read_all(&caller)
                || self
                    .core
                    .has_permission(&caller.principal_id, "tenure/assignments/read", scope))
            {
                return Err(ApiError::denied(
                    "listing role members needs read access at the scope",
                ));
            }
            let now = to_micros(self.core.clock.now());
            let kind = common::AssignmentType::try_from(r.assignment_type)
                .ok()
                .filter(|k| *k != common::AssignmentType::Unspecified);
            let m = self.core.model();
            let grants = m.role_grants_at(&r.role_id, scope, now, r.exclude_inherited);
            let mut members = Vec::new();
            for g in grants
                .into_iter()
                .filter(|g| kind.is_none_or(|k| g.assignment_type == k))
            {
                let inherited_from = (&*g.scope != scope).then(|| g.scope.clone());
                let direct = Match {
                    grant: g.clone(),
                    member_type: if inherited_from.is_some() {
                        common::MemberType::Inherited
                    } else {
                        common::MemberType::Direct
                    },
                    via_groups: Vec::new(),
                    inherited_from: inherited_from.clone(),
                    matched_permission: None,
                };
                let is_group = m
                    .principals
                    .get(&g.principal)
                    .is_some_and(|p| p.principal_type == common::PrincipalType::Group);
                members.push((g.principal.to_string(), direct));
                if r.expand_groups && is_group {
                    for member in m.transitive_members(&g.principal) {
                        if m.principals
                            .get(&member)
                            .is_some_and(|p| p.principal_type != common::PrincipalType::Group)
                        {
                            members.push((
                                member.to_string(),
                                Match {
                                    grant: g.clone(),
                                    member_type: common::MemberType::Group,
                                    via_groups: vec![g.principal.clone()],
                                    inherited_from: inherited_from.clone(),
                                    matched_permission: None,
                                },
                            ));
                        }
                    }
                }
            }
            drop(m);
            let items: Vec<pb::RoleMember> = members
                .iter()
                .map(|(p, mt)| pb::RoleMember {
                    principal: Some(self.core.principal_ref(p)),
                    grant: Some(grant_proto(&self.core, mt)),
                })
                .collect();
            let key = |m: &pb::RoleMember| {
                format!(
                    "{}|{}",
                    m.principal
                        .as_ref()
                        .map(|p| p.id.as_str())
                        .unwrap_or_default(),
                    m.grant
                        .as_ref()
                        .and_then(|g| g.instance.as_ref())
                        .map(|i| i.id.as_str())
                        .unwrap_or_default()
                )
            };
            let mut items = items;
            items.sort_by_key(key);
            let (members, next_page_token) = page.cut(items, key);
            Ok(pb::ListRoleMembersResponse {
                members,
                next_page_token,
            })
        };
        run().map(Response::new).map_err(status)
    }

    async fn list_my_roles(
        &self,
        request: Request<pb::ListMyRolesRequest>,
    ) -> Result<Response<pb::ListMyRolesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let page = Page::parse(r.page_size, &r.page_token).map_err(status)?;
        if !r.scope_id.is_empty() {
            self.core
                .known_scope("scope_id", &r.scope_id)
                .map_err(status)?;
        }
        let now = self.core.clock.now();
        let now_us = to_micros(now);
        let kind = common::AssignmentType::try_from(r.assignment_type)
            .ok()
            .filter(|k| *k != common::AssignmentType::Unspecified);
        let scope = (!r.scope_id.is_empty()).then_some(r.scope_id.as_str());
        let matches = self
            .core
            .model()
            .effective(&caller.principal_id, scope, now_us, None);
        let activations: Vec<&Match> = matches
            .iter()
            .filter(|m| m.grant.source == GrantSource::Activation)
            .collect();
        let mut roles = Vec::new();
        for m in &matches {
            if kind.is_some_and(|k| m.grant.assignment_type != k) {
                continue;
            }
            let activation = if m.grant.assignment_type == common::AssignmentType::Eligible {
                activations
                    .iter()
                    .find(|a| {
                        a.grant.role == m.grant.role
                            && a.grant.eligibility_id.as_deref() == Some(&*m.grant.id)
                    })
                    .map(|a| from_grant(&self.core, &a.grant))
            } else {
                None
            };
            let eligible = m.grant.assignment_type == common::AssignmentType::Eligible;
            roles.push(pb::MyRole {
                grant: Some(grant_proto(&self.core, m)),
                can_activate: eligible && activation.is_none(),
                can_extend: activation.is_some() || (m.grant.source == GrantSource::Activation),
                can_renew: false,
                activation,
            });
        }
        // Own assignments that expired within the last 30 days can be renewed.
        let since = to_micros(now - TimeDelta::days(30));
        let expired = sqlx::query(&format!(
            "SELECT {} FROM assignments_assignments WHERE principal_id = $1 AND removed_at IS NULL AND end_at IS NOT NULL \
             AND end_at <= $2 AND end_at > $3",
            crate::store::ASSIGNMENT_COLUMNS
        ))
        .bind(&caller.principal_id)
        .bind(now_us)
        .bind(since)
        .fetch_all(self.core.db.reader())
        .await
        .map_err(|e| status(e.into()))?;
        for row in &expired {
            let a = crate::store::assignment_from_row(row).map_err(status)?;
            if kind.is_some_and(|k| i32::from(k) != a.assignment_type)
                || scope.is_some_and(|s| s != a.scope_id)
            {
                continue;
            }
            let mut instance = crate::store::assignment_instance(&self.core, &a, now);
            instance.status = pb::InstanceStatus::Ended.into();
            roles.push(pb::MyRole {
                grant: Some(pb::Grant {
                    instance: Some(instance),
                    member_type: common::MemberType::Direct.into(),
                    via_groups: Vec::new(),
                    inherited_from: None,
                    matched_permission: String::new(),
                }),
                activation: None,
                can_activate: false,
                can_extend: false,
                can_renew: true,
            });
        }
        let key = |m: &pb::MyRole| {
            m.grant
                .as_ref()
                .and_then(|g| g.instance.as_ref())
                .map(|i| i.id.clone())
                .unwrap_or_default()
        };
        roles.sort_by_key(key);
        let (roles, next_page_token) = page.cut(roles, key);
        Ok(Response::new(pb::ListMyRolesResponse {
            roles,
            next_page_token,
        }))
    }
}
