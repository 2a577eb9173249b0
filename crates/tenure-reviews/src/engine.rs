//! The reviews context's application layer: definitions, the timers that start rounds,
//! move stages, remind and complete, the decisions of reviewers, and applying results
//! through the assignments context. Transport-free: [`crate::api`] decodes and encodes.
//!
//! Network calls (snapshots, reviewer resolution, removals) never run inside a write
//! transaction; every write after them is conditional on the row versions read before,
//! so racing replicas each do a piece of work once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tenure_platform::auth::Caller;
use tenure_platform::clock::{SharedClock, from_micros, from_proto, to_micros, to_proto};
use tenure_platform::db::Db;
use tenure_platform::events::{EventLog, NewEvent, UnitOfWork};
use tenure_platform::{ApiError, ApiResult, Violations};
use tenure_proto::common::v1 as common;
use tenure_proto::reviews::v1 as pb;
use tokio::sync::Notify;

use crate::clients::{Assignments, Removal};
use crate::rules;
use crate::store::{self, Def, Item, Round};

/// The actor of timer work.
pub const SYSTEM: &str = "system";
/// The permission that configuring reviews needs (Privileged Role Administrator holds
/// `tenure/*`).
pub const WRITE: &str = "tenure/reviews/write";
/// The permission that reading every review needs.
pub const READ: &str = "tenure/read";
/// How long a replica holds a round it is applying before another may take over.
const APPLY_LEASE: TimeDelta = TimeDelta::minutes(5);

/// The reviews context's engine.
pub struct Engine {
    /// Storage.
    pub db: Db,
    /// This context's event log.
    pub log: EventLog<pb::Event>,
    /// The clock.
    pub clock: SharedClock,
    /// The assignments context.
    pub assignments: Assignments,
    /// Woken when a timer instant changes.
    pub timer_wake: Notify,
}

fn decision(d: i32) -> pb::ReviewDecision {
    pb::ReviewDecision::try_from(d).unwrap_or(pb::ReviewDecision::Unspecified)
}

/// A page of `v` after `token` (an offset), `size` long (default 100, at most 1,000).
pub fn page<T>(v: Vec<T>, size: i32, token: &str) -> ApiResult<(Vec<T>, String)> {
    if size < 0 {
        return Err(ApiError::invalid("page_size", "must not be negative"));
    }
    let size = match size {
        0 => 100,
        n => n.min(1000),
    } as usize;
    let from: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| ApiError::invalid("page_token", "is not a token this method returned"))?
    };
    let total = v.len();
    let items: Vec<T> = v.into_iter().skip(from).take(size).collect();
    let next = if from + items.len() < total {
        (from + items.len()).to_string()
    } else {
        String::new()
    };
    Ok((items, next))
}

fn stage_is_self_review(def: &pb::ReviewDefinition, stage: i32) -> bool {
    usize::try_from(stage)
        .ok()
        .and_then(|s| def.stages.get(s))
        .is_some_and(|s| {
            s.reviewers
                .iter()
                .any(|r| r.kind() == pb::ReviewerKind::Self_)
        })
}

fn check_text(v: &mut Violations, field: &str, s: &str) {
    v.check(
        s.chars().count() > rules::MAX_TEXT,
        field,
        "must be at most 1000 characters",
    );
}

/// Lookups made while resolving reviewers for one round, so each group and role is
/// asked for once.
#[derive(Default)]
struct Cache {
    groups: HashMap<String, Vec<common::PrincipalRef>>,
    holders: HashMap<(String, String, bool), Vec<common::PrincipalRef>>,
}

impl Engine {
    /// A new engine.
    pub fn new(
        db: Db,
        log: EventLog<pb::Event>,
        clock: SharedClock,
        assignments: Assignments,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            log,
            clock,
            assignments,
            timer_wake: Notify::new(),
        })
    }

    async fn commit(&self, uow: UnitOfWork<pb::Event>) -> ApiResult<()> {
        uow.commit().await?;
        self.timer_wake.notify_one();
        Ok(())
    }

    // ----- who may -------------------------------------------------------------------

    /// Whether the caller may configure reviews at `scope` (PRA active there or above).
    pub async fn can_write(&self, c: &Caller, scope: &str) -> ApiResult<bool> {
        self.assignments
            .has_permission(&c.token, &c.principal_id, WRITE, scope)
            .await
    }

    /// Whether the caller may read every review at `scope`.
    pub async fn can_read(&self, c: &Caller, scope: &str) -> ApiResult<bool> {
        self.assignments
            .has_permission(&c.token, &c.principal_id, READ, scope)
            .await
    }

    async fn require_write(&self, c: &Caller, scope: &str) -> ApiResult<()> {
        if self.can_write(c, scope).await? {
            return Ok(());
        }
        Err(ApiError::denied(format!(
            "{} needs Privileged Role Administrator active at {scope} or above to manage access reviews",
            c.principal_id
        )))
    }

    // ----- definitions -----------------------------------------------------------------

    /// Checks that everything a definition names exists, fills in the names, and checks
    /// what needs the other context's knowledge (directory roles only at "/", reviewer
    /// kinds against principal kinds).
    async fn resolve_refs(&self, d: &mut pb::ReviewDefinition) -> ApiResult<()> {
        const F: &str = "review_definition";
        let scope = d.scope.clone().unwrap_or_default();
        if self.assignments.scope(&scope.scope_id).await?.is_none() {
            return Err(ApiError::not_found("scope", &scope.scope_id));
        }
        let mut v = Violations::new();
        for (i, role_id) in scope.role_ids.iter().enumerate() {
            let Some(role) = self.assignments.role(role_id).await? else {
                return Err(ApiError::not_found("role", role_id));
            };
            if role.kind() == tenure_proto::assignments::v1::RoleKind::Directory
                && scope.scope_id != "/"
            {
                v.add(
                    format!("{F}.scope.role_ids[{i}]"),
                    format!("{role_id} is a directory role: it is reviewed only at scope \"/\""),
                );
            }
        }
        for (si, stage) in d.stages.iter_mut().enumerate() {
            for (ri, r) in stage.reviewers.iter_mut().enumerate() {
                let f = format!("{F}.stages[{si}].reviewers[{ri}]");
                match r.kind() {
                    pb::ReviewerKind::Principal | pb::ReviewerKind::GroupMembers => {
                        let id = r
                            .principal
                            .as_ref()
                            .map(|p| p.id.clone())
                            .unwrap_or_default();
                        let Some(p) = self.assignments.principal(&id).await? else {
                            return Err(ApiError::not_found("principal", id));
                        };
                        let is_group = p.r#type() == common::PrincipalType::Group;
                        if r.kind() == pb::ReviewerKind::Principal && is_group {
                            v.add(
                                format!("{f}.principal"),
                                "is a group: use GROUP_MEMBERS to have its members review",
                            );
                        }
                        if r.kind() == pb::ReviewerKind::GroupMembers && !is_group {
                            v.add(format!("{f}.principal"), "is not a group");
                        }
                        r.principal = Some(principal_ref(&p));
                    }
                    pb::ReviewerKind::RoleHolders => {
                        if self.assignments.role(&r.role_id).await?.is_none() {
                            return Err(ApiError::not_found("role", &r.role_id));
                        }
                        if !r.scope_id.is_empty()
                            && self.assignments.scope(&r.scope_id).await?.is_none()
                        {
                            return Err(ApiError::not_found("scope", &r.scope_id));
                        }
                    }
                    _ => {}
                }
            }
        }
        for f in &mut d.fallback_reviewers {
            let Some(p) = self.assignments.principal(&f.id).await? else {
                return Err(ApiError::not_found("principal", &f.id));
            };
            *f = principal_ref(&p);
        }
        v.finish()
    }

    fn with_output(s: &Def) -> pb::ReviewDefinition {
        let mut d = s.def.clone();
        d.next_round_time = if d.enabled == Some(false) {
            None
        } else {
            s.next_round_at.map(|t| to_proto(from_micros(t)))
        };
        d.rounds_started = i32::try_from(s.rounds_started).unwrap_or(i32::MAX);
        d.etag = s.version.to_string();
        d
    }

    /// Creates a definition.
    pub async fn create_definition(
        &self,
        c: &Caller,
        mut d: pb::ReviewDefinition,
    ) -> ApiResult<pb::ReviewDefinition> {
        let now = self.clock.now();
        rules::normalise(&mut d, now).or_else(Violations::finish)?;
        let scope = d
            .scope
            .as_ref()
            .map(|s| s.scope_id.clone())
            .unwrap_or_default();
        // An unknown scope is NOT_FOUND (scopes are readable by anybody), not a denial.
        if self.assignments.scope(&scope).await?.is_none() {
            return Err(ApiError::not_found("scope", scope));
        }
        self.require_write(c, &scope).await?;
        self.resolve_refs(&mut d).await?;
        d.id = uuid::Uuid::now_v7().to_string();
        d.created_by = c.principal_id.clone();
        d.create_time = Some(to_proto(now));
        d.update_time = Some(to_proto(now));
        d.next_round_time = None;
        d.rounds_started = 0;
        d.etag = String::new();
        let next = rules::next_round(
            d.schedule.as_ref().unwrap_or(&Default::default()),
            None,
            0,
            now,
        );
        let s = Def {
            def: d,
            version: 1,
            next_round_at: next.map(|(_, t)| to_micros(t)),
            next_index: next.map_or(0, |(k, _)| i64::from(k)),
            rounds_started: 0,
            deleted: false,
        };
        let s = Def {
            next_round_at: if s.def.enabled == Some(false) {
                None
            } else {
                s.next_round_at
            },
            ..s
        };
        let mut uow = self.log.begin().await?;
        store::insert_def(&mut uow, &s).await?;
        let out = Self::with_output(&s);
        uow.emit(NewEvent::new(
            pb::DefinitionCreated {
                review_definition: Some(out.clone()),
            },
            c.principal_id.clone(),
            out.id.clone(),
        ));
        self.commit(uow).await?;
        Ok(out)
    }

    async fn load_def(&self, id: &str) -> ApiResult<Def> {
        match store::get_def(&self.db, id).await? {
            Some(d) if !d.deleted => Ok(d),
            _ => Err(ApiError::not_found("review definition", id)),
        }
    }

    /// Gets a definition.
    pub async fn get_definition(&self, c: &Caller, id: &str) -> ApiResult<pb::ReviewDefinition> {
        let d = self.load_def(id).await?;
        let scope = d
            .def
            .scope
            .as_ref()
            .map(|s| s.scope_id.clone())
            .unwrap_or_default();
        if !self.can_read(c, &scope).await? {
            return Err(ApiError::denied(
                "reading a review definition needs read access at its scope",
            ));
        }
        Ok(Self::with_output(&d))
    }

    /// Lists definitions the caller may read.
    pub async fn list_definitions(
        &self,
        c: &Caller,
        r: pb::ListReviewDefinitionsRequest,
    ) -> ApiResult<pb::ListReviewDefinitionsResponse> {
        let mut readable: HashMap<String, bool> = HashMap::new();
        let mut out = Vec::new();
        for d in store::list_defs(&self.db).await? {
            let sc = d.def.scope.clone().unwrap_or_default();
            if !r.role_id.is_empty() && !sc.role_ids.contains(&r.role_id) {
                continue;
            }
            if !r.scope_id.is_empty() && sc.scope_id != r.scope_id {
                continue;
            }
            let ok = match readable.get(&sc.scope_id) {
                Some(ok) => *ok,
                None => {
                    let ok = self.can_read(c, &sc.scope_id).await?;
                    readable.insert(sc.scope_id.clone(), ok);
                    ok
                }
            };
            if ok {
                out.push(Self::with_output(&d));
            }
        }
        let (review_definitions, next_page_token) = page(out, r.page_size, &r.page_token)?;
        Ok(pb::ListReviewDefinitionsResponse {
            review_definitions,
            next_page_token,
        })
    }

    /// Changes a definition; later rounds use the new one. A timer that started a
    /// round meanwhile (without an etag from the caller) is merged over by retrying.
    pub async fn update_definition(
        &self,
        c: &Caller,
        r: pb::UpdateReviewDefinitionRequest,
    ) -> ApiResult<pb::ReviewDefinition> {
        let with_etag = r
            .review_definition
            .as_ref()
            .is_some_and(|d| !d.etag.is_empty());
        let mut attempt = 0;
        loop {
            match self.update_once(c, r.clone()).await {
                Err(ApiError::Aborted(_)) if !with_etag && attempt < 3 => attempt += 1,
                other => return other,
            }
        }
    }

    async fn update_once(
        &self,
        c: &Caller,
        r: pb::UpdateReviewDefinitionRequest,
    ) -> ApiResult<pb::ReviewDefinition> {
        let input = r.review_definition.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(ApiError::invalid("update_mask", "is required"));
        }
        let mut cur = self.load_def(&input.id).await?;
        let old_scope = cur
            .def
            .scope
            .as_ref()
            .map(|s| s.scope_id.clone())
            .unwrap_or_default();
        self.require_write(c, &old_scope).await?;
        if !input.etag.is_empty() && input.etag != cur.version.to_string() {
            return Err(ApiError::precondition(
                "the etag is stale: read the definition again",
            ));
        }
        let before = Self::with_output(&cur);
        let mut d = cur.def.clone();
        for (i, p) in paths.iter().enumerate() {
            match p.as_str() {
                "display_name" => d.display_name = input.display_name.clone(),
                "description" => d.description = input.description.clone(),
                "scope" => d.scope = input.scope.clone(),
                "schedule" => d.schedule = input.schedule,
                "settings" => d.settings = input.settings.clone(),
                "stages" => d.stages = input.stages.clone(),
                "fallback_reviewers" => d.fallback_reviewers = input.fallback_reviewers.clone(),
                "enabled" => d.enabled = Some(input.enabled.unwrap_or(true)),
                _ => {
                    return Err(ApiError::invalid(
                        format!("update_mask.paths[{i}]"),
                        format!("{p:?} cannot be changed"),
                    ));
                }
            }
        }
        let now = self.clock.now();
        rules::normalise(&mut d, now).or_else(Violations::finish)?;
        let new_scope = d
            .scope
            .as_ref()
            .map(|s| s.scope_id.clone())
            .unwrap_or_default();
        if new_scope != old_scope {
            if self.assignments.scope(&new_scope).await?.is_none() {
                return Err(ApiError::not_found("scope", new_scope));
            }
            self.require_write(c, &new_scope).await?;
        }
        self.resolve_refs(&mut d).await?;
        d.update_time = Some(to_proto(now));
        // The next round follows the (new) schedule: the first one when none has run,
        // else the first occurrence after now.
        let sched = d.schedule.unwrap_or_default();
        // A start moved into the future begins the series again there.
        let restarts = sched
            .start_time
            .as_ref()
            .and_then(from_proto)
            .is_some_and(|t| t > now);
        let next = if cur.rounds_started == 0 || restarts {
            rules::next_round(&sched, None, 0, now)
        } else {
            rules::next_round(
                &sched,
                Some(0),
                i32::try_from(cur.rounds_started).unwrap_or(i32::MAX),
                now,
            )
        };
        cur.next_index = next.map_or(cur.next_index, |(k, _)| i64::from(k));
        cur.next_round_at = if d.enabled == Some(false) {
            None
        } else {
            next.map(|(_, t)| to_micros(t))
        };
        cur.def = d;
        let mut uow = self.log.begin().await?;
        if !store::update_def(&mut uow, &cur).await? {
            uow.rollback().await?;
            return Err(ApiError::Aborted(
                "the definition changed meanwhile; retry".into(),
            ));
        }
        cur.version += 1;
        let after = Self::with_output(&cur);
        uow.emit(NewEvent::new(
            pb::DefinitionUpdated {
                before: Some(before),
                after: Some(after.clone()),
            },
            c.principal_id.clone(),
            after.id.clone(),
        ));
        self.commit(uow).await?;
        Ok(after)
    }

    /// Deletes a definition (no more rounds; past rounds stay).
    pub async fn delete_definition(&self, c: &Caller, id: &str) -> ApiResult<()> {
        let mut cur = self.load_def(id).await?;
        let scope = cur
            .def
            .scope
            .as_ref()
            .map(|s| s.scope_id.clone())
            .unwrap_or_default();
        self.require_write(c, &scope).await?;
        if store::has_open_round(&self.db, id).await? {
            return Err(ApiError::precondition(
                "a round is in progress: stop it first (StopReviewRound)",
            ));
        }
        let before = Self::with_output(&cur);
        cur.deleted = true;
        cur.next_round_at = None;
        let mut uow = self.log.begin().await?;
        if !store::update_def(&mut uow, &cur).await? {
            uow.rollback().await?;
            return Err(ApiError::Aborted(
                "the definition changed meanwhile; retry".into(),
            ));
        }
        uow.emit(NewEvent::new(
            pb::DefinitionDeleted {
                review_definition: Some(before),
            },
            c.principal_id.clone(),
            id.to_owned(),
        ));
        self.commit(uow).await
    }

    // ----- rounds: start -------------------------------------------------------------

    /// Resolves who reviews `holder`'s item in `stage`: the stage's reviewer sets, less
    /// the holder (and, for a group, its members) unless the stage is self-review;
    /// the fallback reviewers when that leaves nobody.
    async fn resolve_reviewers(
        &self,
        def: &pb::ReviewDefinition,
        stage: usize,
        holder: &common::PrincipalRef,
        cache: &mut Cache,
    ) -> ApiResult<Vec<common::PrincipalRef>> {
        let def_scope = def
            .scope
            .as_ref()
            .map(|s| s.scope_id.clone())
            .unwrap_or_default();
        let holder_is_group = holder.r#type() == common::PrincipalType::Group;
        let mut set: BTreeMap<String, common::PrincipalRef> = BTreeMap::new();
        let mut self_review = false;
        if let Some(st) = def.stages.get(stage) {
            for r in &st.reviewers {
                match r.kind() {
                    pb::ReviewerKind::Principal => {
                        if let Some(p) = &r.principal {
                            set.insert(p.id.clone(), p.clone());
                        }
                    }
                    pb::ReviewerKind::GroupMembers => {
                        let id = r
                            .principal
                            .as_ref()
                            .map(|p| p.id.clone())
                            .unwrap_or_default();
                        for m in self.members(&id, cache).await? {
                            set.insert(m.id.clone(), m);
                        }
                    }
                    pb::ReviewerKind::Self_ => {
                        self_review = true;
                        if !holder_is_group {
                            set.insert(holder.id.clone(), holder.clone());
                        }
                    }
                    pb::ReviewerKind::RoleHolders => {
                        let scope = if r.scope_id.is_empty() {
                            def_scope.clone()
                        } else {
                            r.scope_id.clone()
                        };
                        let key = (r.role_id.clone(), scope.clone(), r.include_eligible);
                        if !cache.holders.contains_key(&key) {
                            let v = self
                                .assignments
                                .role_holders(&r.role_id, &scope, r.include_eligible)
                                .await?;
                            cache.holders.insert(key.clone(), v);
                        }
                        for m in cache.holders.get(&key).cloned().unwrap_or_default() {
                            set.insert(m.id.clone(), m);
                        }
                    }
                    pb::ReviewerKind::Unspecified => {}
                }
            }
        }
        // Nobody decides on their own access (also through a group) unless self-review.
        let mut own: Vec<String> = vec![];
        if !self_review {
            own.push(holder.id.clone());
        }
        if holder_is_group {
            own.push(holder.id.clone());
            own.extend(
                self.members(&holder.id, cache)
                    .await?
                    .into_iter()
                    .map(|m| m.id),
            );
        }
        set.retain(|id, p| !own.contains(id) && p.r#type() != common::PrincipalType::Group);
        if set.is_empty() {
            for f in &def.fallback_reviewers {
                if !own.contains(&f.id) {
                    set.insert(f.id.clone(), f.clone());
                }
            }
        }
        Ok(set.into_values().collect())
    }

    async fn members(
        &self,
        group: &str,
        cache: &mut Cache,
    ) -> ApiResult<Vec<common::PrincipalRef>> {
        if let Some(v) = cache.groups.get(group) {
            return Ok(v.clone());
        }
        let v = self.assignments.group_members(group).await?;
        cache.groups.insert(group.to_owned(), v.clone());
        Ok(v)
    }

    /// Snapshots the members under review into items (with recommendations and the
    /// first stage's reviewers).
    async fn snapshot(
        &self,
        def: &pb::ReviewDefinition,
        round_id: &str,
        now: DateTime<Utc>,
    ) -> ApiResult<Vec<pb::DecisionItem>> {
        let scope = def.scope.clone().unwrap_or_default();
        let settings = def.settings.clone().unwrap_or_default();
        let look_back = settings.recommendation_look_back_days;
        let since = to_micros(now - TimeDelta::days(i64::from(look_back)));
        let types: Vec<common::AssignmentType> = {
            let mut t: Vec<_> = scope
                .assignment_types
                .iter()
                .filter_map(|x| common::AssignmentType::try_from(*x).ok())
                .collect();
            if t.is_empty() {
                t = vec![
                    common::AssignmentType::Eligible,
                    common::AssignmentType::Active,
                ];
            }
            t.sort_by_key(|x| *x as i32);
            t.dedup();
            t
        };
        let mut cache = Cache::default();
        let mut sign_ins: HashMap<String, Option<DateTime<Utc>>> = HashMap::new();
        let mut items = Vec::new();
        for role_id in &scope.role_ids {
            let role = self
                .assignments
                .role(role_id)
                .await?
                .map(|r| common::RoleRef {
                    id: r.id,
                    display_name: r.display_name,
                })
                .unwrap_or(common::RoleRef {
                    id: role_id.clone(),
                    display_name: role_id.clone(),
                });
            for t in &types {
                let list = self
                    .assignments
                    .assignments(
                        role_id,
                        &scope.scope_id,
                        scope.include_descendant_scopes,
                        *t,
                    )
                    .await?;
                for a in list {
                    let Some(p) = a.principal.clone() else {
                        continue;
                    };
                    let holders: Vec<(common::PrincipalRef, Option<common::PrincipalRef>)> =
                        if p.r#type() == common::PrincipalType::Group && scope.expand_groups {
                            self.members(&p.id, &mut cache)
                                .await?
                                .into_iter()
                                .filter(|m| m.r#type() != common::PrincipalType::Group)
                                .map(|m| (m, Some(p.clone())))
                                .collect()
                        } else {
                            vec![(p.clone(), None)]
                        };
                    for (holder, via) in holders {
                        if !scope.principal_types.is_empty()
                            && !scope.principal_types.contains(&holder.r#type)
                        {
                            continue;
                        }
                        let a_scope = a.scope.clone().unwrap_or_default();
                        let sign_in = match sign_ins.get(&holder.id) {
                            Some(s) => *s,
                            None => {
                                let s = self
                                    .assignments
                                    .principal(&holder.id)
                                    .await?
                                    .and_then(|x| x.last_sign_in_time)
                                    .as_ref()
                                    .and_then(from_proto);
                                sign_ins.insert(holder.id.clone(), s);
                                s
                            }
                        };
                        let (count, last) =
                            store::activations(&self.db, &holder.id, role_id, &a_scope.id, since)
                                .await?;
                        let activity = rules::Activity {
                            last_sign_in: sign_in,
                            last_activation: last.map(from_micros),
                            activations: i32::try_from(count).unwrap_or(i32::MAX),
                        };
                        if scope.inactive_days > 0
                            && !rules::is_inactive(&activity, scope.inactive_days, now)
                        {
                            continue;
                        }
                        let eligible = *t == common::AssignmentType::Eligible;
                        let is_group = holder.r#type() == common::PrincipalType::Group;
                        let (rec, reason) = if settings.recommendations_enabled == Some(false) {
                            (pb::Recommendation::None, String::new())
                        } else {
                            rules::recommend(&activity, eligible, is_group, look_back, now)
                        };
                        let reviewers = self.resolve_reviewers(def, 0, &holder, &mut cache).await?;
                        items.push(pb::DecisionItem {
                            id: uuid::Uuid::now_v7().to_string(),
                            round_id: round_id.to_owned(),
                            principal: Some(holder),
                            role: Some(role.clone()),
                            scope: Some(a_scope),
                            assignment_type: (*t).into(),
                            assignment_id: a.id.clone(),
                            via_group: via,
                            recommendation: rec.into(),
                            recommendation_reason: reason,
                            activity: Some(pb::ActivitySummary {
                                last_sign_in_time: activity.last_sign_in.map(to_proto),
                                last_activation_time: activity.last_activation.map(to_proto),
                                activation_count: activity.activations,
                                look_back_days: look_back,
                            }),
                            stage: 0,
                            reviewers,
                            decision: pb::ReviewDecision::NotReviewed.into(),
                            apply_result: Some(pb::ApplyResult {
                                status: pb::ApplyStatus::Pending.into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        Ok(items)
    }

    /// Starts the due round of a definition, once across replicas: the definition's
    /// conditional update (and the round number's uniqueness) decide who wins.
    pub async fn start_round(&self, d: Def) -> ApiResult<Option<String>> {
        let now = self.clock.now();
        let def = Self::with_output(&d);
        let round_id = uuid::Uuid::now_v7().to_string();
        let items = self.snapshot(&def, &round_id, now).await?;
        let sched = def.schedule.unwrap_or_default();
        let settings = def.settings.clone().unwrap_or_default();
        let end = now + TimeDelta::days(i64::from(sched.duration_days));
        let ends = rules::stage_ends(now, end, &def.stages);
        let stage_end = ends.first().copied().unwrap_or(end);
        let number = d.rounds_started + 1;
        let mut round = pb::ReviewRound {
            id: round_id.clone(),
            definition_id: def.id.clone(),
            display_name: def.display_name.clone(),
            round_number: i32::try_from(number).unwrap_or(i32::MAX),
            status: pb::RoundStatus::InProgress.into(),
            start_time: Some(to_proto(now)),
            end_time: Some(to_proto(end)),
            current_stage: 0,
            stage_end_time: Some(to_proto(stage_end)),
            definition: Some(def.clone()),
            ..Default::default()
        };
        let due = rules::reminder_times(&settings, now, stage_end)
            .first()
            .copied()
            .unwrap_or(stage_end);
        let next = rules::next_round(
            &sched,
            Some(u32::try_from(d.next_index).unwrap_or(0)),
            i32::try_from(number).unwrap_or(i32::MAX),
            now,
        );
        let mut upd = d.clone();
        upd.rounds_started = number;
        upd.next_round_at = next.map(|(_, t)| to_micros(t));
        upd.next_index = next.map_or(d.next_index + 1, |(k, _)| i64::from(k));
        let mut uow = self.log.begin().await?;
        if !store::update_def(&mut uow, &upd).await? {
            uow.rollback().await?;
            return Ok(None); // another replica started it, or the definition changed
        }
        let stored = Round {
            round: round.clone(),
            version: 1,
            scope_id: def
                .scope
                .as_ref()
                .map(|s| s.scope_id.clone())
                .unwrap_or_default(),
            reminded_until: to_micros(now),
            due_at: Some(to_micros(due)),
        };
        store::insert_round(&mut uow, &stored).await?;
        let mut all_reviewers: BTreeMap<String, common::PrincipalRef> = BTreeMap::new();
        for (seq, item) in items.iter().enumerate() {
            store::insert_item(&mut uow, item, seq as i64, to_micros(now)).await?;
            let ids: Vec<String> = item.reviewers.iter().map(|r| r.id.clone()).collect();
            store::add_reviewers(&mut uow, &round_id, &item.id, 0, &ids).await?;
            for r in &item.reviewers {
                all_reviewers.insert(r.id.clone(), r.clone());
            }
        }
        round.progress = Some(pb::RoundProgress {
            total: i32::try_from(items.len()).unwrap_or(i32::MAX),
            not_reviewed: i32::try_from(items.len()).unwrap_or(i32::MAX),
            ..Default::default()
        });
        let scope = def.scope.clone().unwrap_or_default();
        let mut roles = Vec::new();
        for r in &scope.role_ids {
            roles.push(common::RoleRef {
                id: r.clone(),
                display_name: items
                    .iter()
                    .find_map(|i| {
                        i.role
                            .as_ref()
                            .filter(|x| &x.id == r)
                            .map(|x| x.display_name.clone())
                    })
                    .unwrap_or_default(),
            });
        }
        uow.emit(
            NewEvent::new(
                pb::RoundStarted {
                    round: Some(round),
                    reviewers: all_reviewers.into_values().collect(),
                    roles,
                    scope: Some(common::ScopeRef {
                        id: scope.scope_id.clone(),
                        display_name: scope.scope_id.clone(),
                        r#type: 0,
                    }),
                },
                SYSTEM,
                round_id.clone(),
            )
            .correlated(round_id.clone()),
        );
        self.commit(uow).await?;
        tracing::info!(round = %round_id, definition = %def.id, items = items.len(), "review round started");
        Ok(Some(round_id))
    }

    // ----- rounds: read --------------------------------------------------------------

    async fn with_progress(&self, r: &Round) -> ApiResult<pb::ReviewRound> {
        let mut x = r.round.clone();
        x.progress = Some(store::progress(&self.db, &x.id).await?);
        Ok(x)
    }

    async fn load_round(&self, id: &str) -> ApiResult<Round> {
        store::get_round(&self.db, id)
            .await?
            .ok_or_else(|| ApiError::not_found("review round", id))
    }

    /// Whether the caller is a reviewer of anything in the round (any stage).
    async fn reviews_in(&self, c: &Caller, round_id: &str) -> ApiResult<bool> {
        Ok(!store::reviewer_items(&self.db, round_id, &c.principal_id)
            .await?
            .is_empty())
    }

    /// Gets a round with its progress.
    pub async fn get_round(&self, c: &Caller, id: &str) -> ApiResult<pb::ReviewRound> {
        let r = self.load_round(id).await?;
        if !(self.reviews_in(c, id).await? || self.can_read(c, &r.scope_id).await?) {
            return Err(ApiError::denied(
                "reading a round needs read access at its scope, or being one of its reviewers",
            ));
        }
        self.with_progress(&r).await
    }

    /// Lists rounds the caller may see, newest first.
    pub async fn list_rounds(
        &self,
        c: &Caller,
        r: pb::ListReviewRoundsRequest,
    ) -> ApiResult<pb::ListReviewRoundsResponse> {
        let mine = store::rounds_of_reviewer(&self.db, &c.principal_id).await?;
        let mut readable: HashMap<String, bool> = HashMap::new();
        let mut out = Vec::new();
        for x in store::list_rounds(&self.db, &r.definition_id).await? {
            if !r.statuses.is_empty() && !r.statuses.contains(&x.round.status) {
                continue;
            }
            let ok = if mine.contains(&x.round.id) {
                true
            } else if let Some(ok) = readable.get(&x.scope_id) {
                *ok
            } else {
                let ok = self.can_read(c, &x.scope_id).await?;
                readable.insert(x.scope_id.clone(), ok);
                ok
            };
            if ok {
                out.push(x);
            }
        }
        let (rounds, next_page_token) = page(out, r.page_size, &r.page_token)?;
        let mut v = Vec::with_capacity(rounds.len());
        for x in &rounds {
            v.push(self.with_progress(x).await?);
        }
        Ok(pb::ListReviewRoundsResponse {
            rounds: v,
            next_page_token,
        })
    }

    /// Lists the items of a round the caller may see.
    pub async fn list_items(
        &self,
        c: &Caller,
        r: pb::ListDecisionItemsRequest,
    ) -> ApiResult<pb::ListDecisionItemsResponse> {
        if r.round_id.is_empty() {
            return Err(ApiError::invalid("round_id", "is required"));
        }
        let round = self.load_round(&r.round_id).await?;
        let def = round.round.definition.clone().unwrap_or_default();
        let mine: Vec<(String, i32)> =
            store::reviewer_items(&self.db, &r.round_id, &c.principal_id).await?;
        let reader = self.can_read(c, &round.scope_id).await?;
        let self_review = def
            .stages
            .iter()
            .enumerate()
            .any(|(i, _)| stage_is_self_review(&def, i32::try_from(i).unwrap_or_default()));
        let own_visible = |i: &pb::DecisionItem| {
            self_review && i.principal.as_ref().is_some_and(|p| p.id == c.principal_id)
        };
        if !reader && mine.is_empty() && !self_review {
            return Err(ApiError::denied(
                "listing items needs read access at the round's scope, or being a reviewer",
            ));
        }
        let in_progress = round.round.status() == pb::RoundStatus::InProgress;
        let mut out = Vec::new();
        for Item { item, .. } in store::items_of_round(&self.db, &r.round_id).await? {
            let reviews_it = mine.iter().any(|(id, _)| *id == item.id);
            if !(reader || reviews_it || own_visible(&item)) {
                continue;
            }
            if r.only_mine_to_decide
                && !(in_progress
                    && mine
                        .iter()
                        .any(|(id, s)| *id == item.id && *s == item.stage))
            {
                continue;
            }
            if !r.decisions.is_empty() && !r.decisions.contains(&item.decision) {
                continue;
            }
            if !r.principal_id.is_empty()
                && item
                    .principal
                    .as_ref()
                    .is_none_or(|p| p.id != r.principal_id)
            {
                continue;
            }
            if !r.role_id.is_empty() && item.role.as_ref().is_none_or(|p| p.id != r.role_id) {
                continue;
            }
            out.push(item);
        }
        let (items, next_page_token) = page(out, r.page_size, &r.page_token)?;
        Ok(pb::ListDecisionItemsResponse {
            items,
            next_page_token,
        })
    }

    /// The rounds in progress with items waiting for the caller, soonest end first.
    pub async fn my_pending(
        &self,
        c: &Caller,
        r: pb::ListMyPendingReviewsRequest,
    ) -> ApiResult<pb::ListMyPendingReviewsResponse> {
        let mut out = Vec::new();
        for round_id in store::rounds_of_reviewer(&self.db, &c.principal_id).await? {
            let Some(round) = store::get_round(&self.db, &round_id).await? else {
                continue;
            };
            if round.round.status() != pb::RoundStatus::InProgress {
                continue;
            }
            let stage = round.round.current_stage;
            let mine = store::reviewer_items(&self.db, &round_id, &c.principal_id).await?;
            let (mut total, mut pending) = (0, 0);
            for Item { item, .. } in store::items_of_round(&self.db, &round_id).await? {
                if item.stage != stage || !mine.iter().any(|(id, s)| *id == item.id && *s == stage)
                {
                    continue;
                }
                total += 1;
                if decision(item.decision) == pb::ReviewDecision::NotReviewed {
                    pending += 1;
                }
            }
            if pending > 0 {
                out.push(pb::PendingReview {
                    round: Some(self.with_progress(&round).await?),
                    pending_items: pending,
                    total_items: total,
                });
            }
        }
        out.sort_by_key(|p| {
            p.round
                .as_ref()
                .and_then(|r| r.end_time.as_ref())
                .and_then(from_proto)
                .map(to_micros)
                .unwrap_or_default()
        });
        let (reviews, next_page_token) = page(out, r.page_size, &r.page_token)?;
        Ok(pb::ListMyPendingReviewsResponse {
            reviews,
            next_page_token,
        })
    }

    /// The items about one principal across rounds, newest first.
    pub async fn history(
        &self,
        c: &Caller,
        r: pb::ListDecisionHistoryRequest,
    ) -> ApiResult<pb::ListDecisionHistoryResponse> {
        if r.principal_id.trim().is_empty() {
            return Err(ApiError::invalid("principal_id", "is required"));
        }
        if r.principal_id != c.principal_id && !self.can_read(c, "/").await? {
            return Err(ApiError::denied(
                "a principal's review history needs read access at \"/\", or being that principal",
            ));
        }
        let items: Vec<pb::DecisionItem> = store::items_of_principal(&self.db, &r.principal_id)
            .await?
            .into_iter()
            .map(|i| i.item)
            .filter(|i| r.role_id.is_empty() || i.role.as_ref().is_some_and(|x| x.id == r.role_id))
            .collect();
        if items.is_empty()
            && store::items_of_principal(&self.db, &r.principal_id)
                .await?
                .is_empty()
            && self.assignments.principal(&r.principal_id).await?.is_none()
        {
            return Err(ApiError::not_found("principal", &r.principal_id));
        }
        let (items, next_page_token) = page(items, r.page_size, &r.page_token)?;
        Ok(pb::ListDecisionHistoryResponse {
            items,
            next_page_token,
        })
    }

    // ----- decisions -----------------------------------------------------------------

    /// Checks that the caller may decide the item now; returns its round.
    async fn may_decide(
        &self,
        c: &Caller,
        item: &pb::DecisionItem,
        field: &str,
    ) -> ApiResult<Round> {
        let round = self.load_round(&item.round_id).await?;
        let def = round.round.definition.clone().unwrap_or_default();
        let own = item
            .principal
            .as_ref()
            .is_some_and(|p| p.id == c.principal_id);
        if own && !stage_is_self_review(&def, item.stage) {
            return Err(ApiError::denied(format!(
                "{field}: nobody reviews their own access unless the review is self-review"
            )));
        }
        if !store::is_item_reviewer(&self.db, &item.id, item.stage, &c.principal_id).await? {
            return Err(ApiError::denied(format!(
                "{field}: {} is not a reviewer of this item in its current stage",
                c.principal_id
            )));
        }
        if round.round.status() != pb::RoundStatus::InProgress
            || round.round.current_stage != item.stage
        {
            return Err(ApiError::precondition(
                "the round (or the item's stage) is not in progress: decisions are final",
            ));
        }
        Ok(round)
    }

    /// Writes one decision inside `uow`; false when the item changed meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn record_in(
        &self,
        uow: &mut UnitOfWork<pb::Event>,
        c: &Caller,
        item_id: &str,
        stage: i32,
        d: pb::ReviewDecision,
        justification: &str,
        accepted: bool,
    ) -> ApiResult<pb::DecisionItem> {
        let Some(mut cur) = store::get_item_tx(uow, item_id).await? else {
            return Err(ApiError::not_found("decision item", item_id));
        };
        if cur.item.stage != stage {
            return Err(ApiError::precondition("the item moved on to another stage"));
        }
        let now = uow.now();
        let me = cur
            .item
            .reviewers
            .iter()
            .find(|r| r.id == c.principal_id)
            .cloned()
            .unwrap_or(common::PrincipalRef {
                id: c.principal_id.clone(),
                ..Default::default()
            });
        let previous = cur
            .item
            .history
            .iter()
            .rev()
            .find(|h| {
                h.stage == stage && h.reviewer.as_ref().is_some_and(|r| r.id == c.principal_id)
            })
            .map_or(pb::ReviewDecision::NotReviewed, |h| decision(h.decision));
        let x = &mut cur.item;
        x.history.push(pb::StageDecision {
            stage,
            reviewer: Some(me.clone()),
            decision: d.into(),
            justification: justification.to_owned(),
            decide_time: Some(to_proto(now)),
            accepted_recommendation: accepted,
        });
        x.decision = d.into();
        x.justification = justification.to_owned();
        x.decided_by = Some(me);
        x.decide_time = Some(to_proto(now));
        if !store::update_item(uow, &cur).await? {
            return Err(ApiError::Aborted(
                "the item changed meanwhile; retry".into(),
            ));
        }
        uow.emit(
            NewEvent::new(
                pb::DecisionRecorded {
                    item: Some(cur.item.clone()),
                    previous_decision: previous.into(),
                },
                c.principal_id.clone(),
                item_id.to_owned(),
            )
            .correlated(cur.item.round_id.clone()),
        );
        Ok(cur.item)
    }

    /// Records (or changes) the caller's decision on an item.
    pub async fn decide(
        &self,
        c: &Caller,
        r: pb::RecordDecisionRequest,
    ) -> ApiResult<pb::DecisionItem> {
        let d = decision(r.decision);
        let mut v = Violations::new();
        if !matches!(
            d,
            pb::ReviewDecision::Approve | pb::ReviewDecision::Deny | pb::ReviewDecision::DontKnow
        ) {
            v.add("decision", "must be APPROVE, DENY or DONT_KNOW");
        }
        check_text(&mut v, "justification", &r.justification);
        v.check(r.item_id.is_empty(), "item_id", "is required");
        v.finish()?;
        let item = store::get_item(&self.db, &r.item_id)
            .await?
            .ok_or_else(|| ApiError::not_found("decision item", &r.item_id))?
            .item;
        let round = self.may_decide(c, &item, "item_id").await?;
        let settings = round
            .round
            .definition
            .as_ref()
            .and_then(|d| d.settings.clone())
            .unwrap_or_default();
        if d == pb::ReviewDecision::Approve
            && settings.require_justification_on_approve
            && r.justification.trim().is_empty()
        {
            return Err(ApiError::invalid(
                "justification",
                "is required to approve in this review",
            ));
        }
        let mut uow = self.log.begin().await?;
        if !store::lock_open_round(&mut uow, &item.round_id, item.stage).await? {
            uow.rollback().await?;
            return Err(ApiError::precondition(
                "the round is not in progress: decisions are final",
            ));
        }
        let out = match self
            .record_in(
                &mut uow,
                c,
                &item.id,
                item.stage,
                d,
                r.justification.trim(),
                false,
            )
            .await
        {
            Ok(x) => x,
            Err(e) => {
                uow.rollback().await?;
                return Err(e);
            }
        };
        self.commit(uow).await?;
        Ok(out)
    }

    /// Takes the recommendation as the caller's decision for many items, all or none.
    pub async fn accept_recommendations(
        &self,
        c: &Caller,
        r: pb::AcceptRecommendationsRequest,
    ) -> ApiResult<pb::AcceptRecommendationsResponse> {
        let mut v = Violations::new();
        v.check(r.round_id.is_empty(), "round_id", "is required");
        check_text(&mut v, "justification", &r.justification);
        v.finish()?;
        let round = self.load_round(&r.round_id).await?;
        if round.round.status() != pb::RoundStatus::InProgress {
            return Err(ApiError::precondition(
                "the round is not in progress: decisions are final",
            ));
        }
        let stage = round.round.current_stage;
        let settings = round
            .round
            .definition
            .as_ref()
            .and_then(|d| d.settings.clone())
            .unwrap_or_default();
        let mut chosen: Vec<pb::DecisionItem> = Vec::new();
        let mut skipped = 0;
        if r.item_ids.is_empty() {
            let mine = store::reviewer_items(&self.db, &r.round_id, &c.principal_id).await?;
            for Item { item, .. } in store::items_of_round(&self.db, &r.round_id).await? {
                if item.stage != stage || !mine.iter().any(|(id, s)| *id == item.id && *s == stage)
                {
                    continue;
                }
                let decided_by_me = item.history.iter().any(|h| {
                    h.stage == stage && h.reviewer.as_ref().is_some_and(|x| x.id == c.principal_id)
                });
                if decided_by_me {
                    continue;
                }
                if self.may_decide(c, &item, "item_ids").await.is_err() {
                    continue;
                }
                chosen.push(item);
            }
        } else {
            for (i, id) in r.item_ids.iter().enumerate() {
                let field = format!("item_ids[{i}]");
                let item = store::get_item(&self.db, id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("decision item", id))?
                    .item;
                if item.round_id != r.round_id {
                    return Err(ApiError::invalid(field, "is not an item of this round"));
                }
                self.may_decide(c, &item, &field).await?;
                chosen.push(item);
            }
        }
        let mut plan = Vec::new();
        for item in chosen {
            let d = match item.recommendation() {
                pb::Recommendation::Approve => pb::ReviewDecision::Approve,
                pb::Recommendation::Deny => pb::ReviewDecision::Deny,
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            if d == pb::ReviewDecision::Approve
                && settings.require_justification_on_approve
                && r.justification.trim().is_empty()
            {
                return Err(ApiError::invalid(
                    "justification",
                    "is required to approve in this review",
                ));
            }
            plan.push((item, d));
        }
        let mut uow = self.log.begin().await?;
        if !store::lock_open_round(&mut uow, &r.round_id, stage).await? {
            uow.rollback().await?;
            return Err(ApiError::precondition(
                "the round is not in progress: decisions are final",
            ));
        }
        for (item, d) in &plan {
            if let Err(e) = self
                .record_in(
                    &mut uow,
                    c,
                    &item.id,
                    stage,
                    *d,
                    r.justification.trim(),
                    true,
                )
                .await
            {
                uow.rollback().await?;
                return Err(e);
            }
        }
        self.commit(uow).await?;
        Ok(pb::AcceptRecommendationsResponse {
            decided_count: i32::try_from(plan.len()).unwrap_or(i32::MAX),
            skipped_count: skipped,
        })
    }

    // ----- rounds: stop, complete, apply ---------------------------------------------

    /// Stops a round in progress early.
    pub async fn stop(&self, c: &Caller, id: &str, reason: &str) -> ApiResult<pb::ReviewRound> {
        let mut v = Violations::new();
        check_text(&mut v, "reason", reason);
        v.finish()?;
        let r = self.load_round(id).await?;
        self.require_write(c, &r.scope_id).await?;
        if r.round.status() != pb::RoundStatus::InProgress {
            return Err(ApiError::precondition("the round is not in progress"));
        }
        match self
            .complete(r, Some((c.principal_id.as_str(), reason)))
            .await?
        {
            Some(r) => self.with_progress(&r).await,
            None => Err(ApiError::Aborted(
                "the round changed meanwhile; retry".into(),
            )),
        }
    }

    /// Completes a round: undecided items get the default; the round becomes
    /// COMPLETED, or APPLYING with auto-apply (the timer then applies). None when
    /// another writer changed the round first.
    pub async fn complete(
        &self,
        mut r: Round,
        stopped: Option<(&str, &str)>,
    ) -> ApiResult<Option<Round>> {
        let now = self.clock.now();
        let def = r.round.definition.clone().unwrap_or_default();
        let settings = def.settings.clone().unwrap_or_default();
        let auto = settings.auto_apply;
        let x = &mut r.round;
        x.status = if auto {
            pb::RoundStatus::Applying
        } else {
            pb::RoundStatus::Completed
        }
        .into();
        x.complete_time = Some(to_proto(now));
        if let Some((who, why)) = stopped {
            x.stopped_early = true;
            x.stopped_by = who.to_owned();
            x.stop_reason = why.trim().to_owned();
            x.end_time = Some(to_proto(now));
            x.stage_end_time = Some(to_proto(now));
        }
        r.due_at = auto.then(|| to_micros(now));
        let mut uow = self.log.begin().await?;
        if !store::update_round(&mut uow, &r).await? {
            uow.rollback().await?;
            return Ok(None);
        }
        r.version += 1;
        let mut defaulted = 0;
        let mut done = Vec::new();
        for mut it in store::items_of_round_tx(&mut uow, &r.round.id).await? {
            let x = &mut it.item;
            let default = rules::default_for(settings.default_decision(), x.recommendation());
            if let (true, Some(d)) = (rules::is_undecided(decision(x.decision)), default) {
                x.decision = d.into();
                x.decided_by_default = true;
                x.decided_by = None;
                x.decide_time = Some(to_proto(now));
                x.justification = "default decision for undecided items".to_owned();
                defaulted += 1;
            }
            let status = if decision(x.decision) == pb::ReviewDecision::Deny {
                pb::ApplyStatus::Pending
            } else {
                pb::ApplyStatus::NotNeeded
            };
            x.apply_result = Some(pb::ApplyResult {
                status: status.into(),
                ..Default::default()
            });
            if !store::update_item(&mut uow, &it).await? {
                uow.rollback().await?;
                return Ok(None);
            }
            done.push(it.item);
        }
        let mut ev_round = r.round.clone();
        ev_round.progress = Some(progress_of(done.iter()));
        uow.emit(
            NewEvent::new(
                pb::RoundCompleted {
                    round: Some(ev_round),
                    defaulted_count: defaulted,
                    stopped_early: stopped.is_some(),
                },
                stopped.map_or(SYSTEM.to_owned(), |(w, _)| w.to_owned()),
                r.round.id.clone(),
            )
            .correlated(r.round.id.clone()),
        );
        self.commit(uow).await?;
        tracing::info!(round = %r.round.id, defaulted, stopped = stopped.is_some(), "review round completed");
        Ok(Some(r))
    }

    /// Applies the results of a completed round (by hand, or to retry failed items).
    pub async fn apply_results(&self, c: &Caller, id: &str) -> ApiResult<pb::ReviewRound> {
        let r = self.load_round(id).await?;
        self.require_write(c, &r.scope_id).await?;
        if r.round.status() == pb::RoundStatus::InProgress {
            return Err(ApiError::precondition(
                "the round is still in progress: results are applied once it completes",
            ));
        }
        let r = self.apply(r).await?;
        self.with_progress(&r).await
    }

    /// Removes each denied item's assignment through the assignments context and
    /// records each result (`ResultApplied`), then marks the round APPLIED. Items
    /// applied already are left alone; a removal is idempotent by the item's id.
    pub async fn apply(&self, mut r: Round) -> ApiResult<Round> {
        let now = self.clock.now();
        // Hold the round for a while (other replicas' timers leave it alone).
        r.round.status = pb::RoundStatus::Applying.into();
        r.due_at = Some(to_micros(now + APPLY_LEASE));
        let mut uow = self.log.begin().await?;
        if !store::update_round(&mut uow, &r).await? {
            uow.rollback().await?;
            return Err(ApiError::Aborted(
                "the round is being applied elsewhere; retry".into(),
            ));
        }
        uow.commit().await?;
        r.version += 1;
        let name = r.round.display_name.clone();
        for it in store::items_of_round(&self.db, &r.round.id).await? {
            let x = &it.item;
            let status = x
                .apply_result
                .as_ref()
                .map_or(pb::ApplyStatus::Pending, |a| a.status());
            if decision(x.decision) != pb::ReviewDecision::Deny
                || !matches!(status, pb::ApplyStatus::Pending | pb::ApplyStatus::Failed)
            {
                continue;
            }
            let (st, reason) = if let Some(g) = &x.via_group {
                (
                    pb::ApplyStatus::NotSupported,
                    format!(
                        "the role is held through group {}: remove the member from the group in the identity provider",
                        if g.display_name.is_empty() {
                            &g.id
                        } else {
                            &g.display_name
                        }
                    ),
                )
            } else {
                match self
                    .assignments
                    .remove(
                        &x.assignment_id,
                        &format!("review-apply-{}", x.id),
                        &format!("{}/{}", x.round_id, x.id),
                        &format!("denied in access review \"{name}\""),
                    )
                    .await
                {
                    Removal::Removed => (pb::ApplyStatus::Applied, String::new()),
                    Removal::AlreadyGone(m) => (pb::ApplyStatus::AlreadyGone, m),
                    Removal::Failed(m) => (pb::ApplyStatus::Failed, m),
                }
            };
            let mut uow = self.log.begin().await?;
            let Some(mut cur) = store::get_item_tx(&mut uow, &x.id).await? else {
                uow.rollback().await?;
                continue;
            };
            let cs = cur
                .item
                .apply_result
                .as_ref()
                .map_or(pb::ApplyStatus::Pending, |a| a.status());
            if !matches!(cs, pb::ApplyStatus::Pending | pb::ApplyStatus::Failed) {
                uow.rollback().await?;
                continue;
            }
            cur.item.apply_result = Some(pb::ApplyResult {
                status: st.into(),
                reason,
                apply_time: Some(to_proto(self.clock.now())),
            });
            if !store::update_item(&mut uow, &cur).await? {
                uow.rollback().await?;
                continue;
            }
            uow.emit(
                NewEvent::new(
                    pb::ResultApplied {
                        item: Some(cur.item.clone()),
                    },
                    SYSTEM,
                    cur.item.id.clone(),
                )
                .correlated(cur.item.round_id.clone()),
            );
            uow.commit().await?;
        }
        r.round.status = pb::RoundStatus::Applied.into();
        r.due_at = None;
        let mut uow = self.log.begin().await?;
        if !store::update_round(&mut uow, &r).await? {
            uow.rollback().await?;
            return self.load_round(&r.round.id).await;
        }
        self.commit(uow).await?;
        r.version += 1;
        Ok(r)
    }

    // ----- timers --------------------------------------------------------------------

    /// The earliest instant a timer must act at.
    pub async fn next_due(&self) -> ApiResult<Option<i64>> {
        let a = store::next_def_due(&self.db).await?;
        let b = store::next_round_due(&self.db).await?;
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Does everything due now: starts rounds, reminds, moves stages, completes and
    /// applies. Each piece is conditional, so replicas racing here do it once.
    pub async fn process_due(&self) -> ApiResult<()> {
        let now = to_micros(self.clock.now());
        for d in store::due_defs(&self.db, now).await? {
            let id = d.def.id.clone();
            if let Err(e) = self.start_round(d).await {
                tracing::warn!(definition = %id, error = %e, "starting a review round failed; retrying later");
            }
        }
        for r in store::due_rounds(&self.db, now).await? {
            let id = r.round.id.clone();
            if let Err(e) = self.advance(r).await {
                tracing::warn!(round = %id, error = %e, "advancing a review round failed; retrying later");
            }
        }
        Ok(())
    }

    async fn advance(&self, r: Round) -> ApiResult<()> {
        let now = self.clock.now();
        match r.round.status() {
            pb::RoundStatus::InProgress => {
                let end = r
                    .round
                    .end_time
                    .as_ref()
                    .and_then(from_proto)
                    .unwrap_or(now);
                let stage_end = r
                    .round
                    .stage_end_time
                    .as_ref()
                    .and_then(from_proto)
                    .unwrap_or(end);
                let def = r.round.definition.clone().unwrap_or_default();
                let last =
                    usize::try_from(r.round.current_stage).unwrap_or(0) + 1 >= def.stages.len();
                if now >= end || (last && now >= stage_end) {
                    self.complete(r, None).await?;
                } else if now >= stage_end {
                    self.next_stage(r).await?;
                } else {
                    self.remind(r, now, stage_end).await?;
                }
            }
            pb::RoundStatus::Applying => {
                self.apply(r).await?;
            }
            _ => {
                let mut r = r;
                r.due_at = None;
                let mut uow = self.log.begin().await?;
                if store::update_round(&mut uow, &r).await? {
                    uow.commit().await?;
                } else {
                    uow.rollback().await?;
                }
            }
        }
        Ok(())
    }

    /// Emits one `ReminderDue` for the reminders due by now, with each reviewer's
    /// undecided items, and re-arms the round's timer.
    async fn remind(
        &self,
        mut r: Round,
        now: DateTime<Utc>,
        stage_end: DateTime<Utc>,
    ) -> ApiResult<()> {
        let settings = r
            .round
            .definition
            .as_ref()
            .and_then(|d| d.settings.clone())
            .unwrap_or_default();
        let times = rules::reminder_times(&settings, from_micros(r.reminded_until), stage_end);
        let due_now = times.iter().any(|t| *t <= now);
        let stage = r.round.current_stage;
        let mut pending: BTreeMap<String, (common::PrincipalRef, i32)> = BTreeMap::new();
        if due_now {
            for Item { item, .. } in store::items_of_round(&self.db, &r.round.id).await? {
                if item.stage != stage || decision(item.decision) != pb::ReviewDecision::NotReviewed
                {
                    continue;
                }
                for rv in &item.reviewers {
                    pending.entry(rv.id.clone()).or_insert((rv.clone(), 0)).1 += 1;
                }
            }
        }
        r.reminded_until = to_micros(now);
        r.due_at = Some(to_micros(
            rules::reminder_times(&settings, now, stage_end)
                .first()
                .copied()
                .unwrap_or(stage_end),
        ));
        let mut uow = self.log.begin().await?;
        if !store::update_round(&mut uow, &r).await? {
            uow.rollback().await?;
            return Ok(());
        }
        if due_now && !pending.is_empty() {
            uow.emit(
                NewEvent::new(
                    pb::ReminderDue {
                        round: Some(r.round.clone()),
                        reviewers: pending
                            .into_values()
                            .map(|(p, n)| pb::ReviewerPending {
                                reviewer: Some(p),
                                pending_items: n,
                            })
                            .collect(),
                        end_time: Some(to_proto(stage_end)),
                    },
                    SYSTEM,
                    r.round.id.clone(),
                )
                .correlated(r.round.id.clone()),
            );
        }
        self.commit(uow).await
    }

    /// Ends the current stage: items whose decision moves on go to the next stage with
    /// its reviewers (`StageStarted`); the others keep their decision.
    async fn next_stage(&self, mut r: Round) -> ApiResult<()> {
        let now = self.clock.now();
        let def = r.round.definition.clone().unwrap_or_default();
        let from = usize::try_from(r.round.current_stage).unwrap_or(0);
        let Some(stage) = def.stages.get(from) else {
            return Ok(());
        };
        let to = from + 1;
        let items = store::items_of_round(&self.db, &r.round.id).await?;
        let mut cache = Cache::default();
        let mut moving = Vec::new();
        for it in items {
            if usize::try_from(it.item.stage).ok() != Some(from)
                || !rules::moves_on(stage, decision(it.item.decision))
            {
                continue;
            }
            let holder = it.item.principal.clone().unwrap_or_default();
            let reviewers = self
                .resolve_reviewers(&def, to, &holder, &mut cache)
                .await?;
            moving.push((it, reviewers));
        }
        let start = r
            .round
            .start_time
            .as_ref()
            .and_then(from_proto)
            .unwrap_or(now);
        let end = r
            .round
            .end_time
            .as_ref()
            .and_then(from_proto)
            .unwrap_or(now);
        let ends = rules::stage_ends(start, end, &def.stages);
        let stage_end = ends.get(to).copied().unwrap_or(end);
        let settings = def.settings.clone().unwrap_or_default();
        r.round.current_stage = i32::try_from(to).unwrap_or(i32::MAX);
        r.round.stage_end_time = Some(to_proto(stage_end));
        r.reminded_until = to_micros(now);
        r.due_at = Some(to_micros(
            rules::reminder_times(&settings, now, stage_end)
                .first()
                .copied()
                .unwrap_or(stage_end),
        ));
        let mut uow = self.log.begin().await?;
        if !store::update_round(&mut uow, &r).await? {
            uow.rollback().await?;
            return Ok(());
        }
        let mut all: BTreeMap<String, common::PrincipalRef> = BTreeMap::new();
        let stage_i32 = r.round.current_stage;
        for (mut it, reviewers) in moving.iter().cloned() {
            it.item.stage = stage_i32;
            it.item.decision = pb::ReviewDecision::NotReviewed.into();
            it.item.justification.clear();
            it.item.decided_by = None;
            it.item.decide_time = None;
            it.item.reviewers = reviewers.clone();
            if !store::update_item(&mut uow, &it).await? {
                uow.rollback().await?;
                return Ok(());
            }
            let ids: Vec<String> = reviewers.iter().map(|x| x.id.clone()).collect();
            store::add_reviewers(&mut uow, &r.round.id, &it.item.id, stage_i32, &ids).await?;
            for x in reviewers {
                all.insert(x.id.clone(), x);
            }
        }
        uow.emit(
            NewEvent::new(
                pb::StageStarted {
                    round: Some(r.round.clone()),
                    stage: stage_i32,
                    reviewers: all.into_values().collect(),
                    item_count: i32::try_from(moving.len()).unwrap_or(i32::MAX),
                },
                SYSTEM,
                r.round.id.clone(),
            )
            .correlated(r.round.id.clone()),
        );
        self.commit(uow).await
    }

    /// Records an activation seen on the assignments stream (inside the consumer's unit
    /// of work).
    pub async fn activation_seen(
        &self,
        uow: &mut UnitOfWork<pb::Event>,
        instance: &tenure_proto::assignments::v1::Instance,
        via_group: &str,
        at: DateTime<Utc>,
    ) -> ApiResult<()> {
        store::record_activation(
            uow,
            &instance.id,
            instance.principal.as_ref().map_or("", |p| p.id.as_str()),
            via_group,
            instance.role.as_ref().map_or("", |p| p.id.as_str()),
            instance.scope.as_ref().map_or("/", |p| p.id.as_str()),
            to_micros(at),
        )
        .await
    }
}

/// The progress of a set of items.
pub fn progress_of<'a>(items: impl Iterator<Item = &'a pb::DecisionItem>) -> pb::RoundProgress {
    let mut p = pb::RoundProgress::default();
    for i in items {
        p.total += 1;
        match decision(i.decision) {
            pb::ReviewDecision::Approve => {
                p.approved += 1;
                p.decided += 1;
            }
            pb::ReviewDecision::Deny => {
                p.denied += 1;
                p.decided += 1;
            }
            pb::ReviewDecision::DontKnow => p.dont_know += 1,
            _ => p.not_reviewed += 1,
        }
        match i.apply_result.as_ref().map(|a| a.status()) {
            Some(
                pb::ApplyStatus::Applied
                | pb::ApplyStatus::AlreadyGone
                | pb::ApplyStatus::NotNeeded,
            ) => {
                p.applied += 1;
            }
            Some(pb::ApplyStatus::Failed) => p.apply_failed += 1,
            _ => {}
        }
    }
    p
}

fn principal_ref(p: &tenure_proto::assignments::v1::Principal) -> common::PrincipalRef {
    common::PrincipalRef {
        id: p.id.clone(),
        r#type: p.r#type,
        display_name: p.display_name.clone(),
        user_principal_name: p.user_principal_name.clone(),
    }
}
