//! The access model: principals, group memberships, scopes, roles and grants, in memory,
//! as a projection of this context's own event log (see [`crate::core`]). Pure domain
//! code: no tonic, no sqlx.
//!
//! Evaluation answers "does P hold R (or a permission) at S at time t", with the grants
//! that give it: direct, through which chain of groups (nested groups resolved without
//! loops), inherited from which scope above S. A grant counts at `t` when
//! `start <= t < end`; nothing is allowed at or after its end, whether or not the expiry
//! has been processed yet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{AssignmentType, MemberType, PrincipalType, ScopeType};

/// Interned string.
pub type Id = Arc<str>;

/// The hasher of the two maps a start fills with every grant and every name: SipHash
/// was a tenth of the model's load at 1,000,000 grants (BENCHMARKS.md, session 8).
/// foldhash is seeded per process; the grant ids it hashes are the server's own UUIDs.
type FastHash = foldhash::fast::RandomState;

/// What the model keeps of a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalInfo {
    /// User, group or service principal.
    pub principal_type: PrincipalType,
    /// Display name.
    pub display_name: Arc<str>,
    /// User principal name.
    pub user_principal_name: Arc<str>,
    /// Disabled principals hold nothing.
    pub enabled: bool,
}

/// What the model keeps of a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeInfo {
    /// The parent (None only for the root "/").
    pub parent: Option<Id>,
    /// Kind of scope.
    pub scope_type: ScopeType,
    /// Display name.
    pub display_name: Arc<str>,
}

/// What the model keeps of a role definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInfo {
    /// Display name.
    pub display_name: Arc<str>,
    /// Permission patterns (`a/b/c`, or a prefix ending in `*`).
    pub permissions: Vec<Arc<str>>,
    /// Directory or resource role.
    pub kind: pb::RoleKind,
}

/// Where a grant comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSource {
    /// An administrator's assignment (eligible or active).
    Assignment,
    /// An activation provisioned by the activation context.
    Activation,
}

/// One assignment or activation of a role to a principal at a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantEntry {
    /// The assignment id or the activation instance id.
    pub id: Id,
    /// Assignment or activation.
    pub source: GrantSource,
    /// Eligible or active (activations are active).
    pub assignment_type: AssignmentType,
    /// The principal it is assigned to (a user, group or service principal).
    pub principal: Id,
    /// The role.
    pub role: Id,
    /// The scope it is assigned at.
    pub scope: Id,
    /// Start, UTC microseconds.
    pub start: i64,
    /// End, UTC microseconds; `None` is permanent.
    pub end: Option<i64>,
    /// For activations: the activation context's request id.
    pub request_id: Option<Id>,
    /// For activations: the eligible assignment it was made from.
    pub eligibility_id: Option<Id>,
}

impl GrantEntry {
    /// Whether the grant is in effect at `t` (microseconds).
    pub fn in_effect(&self, t: i64) -> bool {
        self.start <= t && self.end.is_none_or(|e| t < e)
    }
}

/// What is checked: a role, or a permission any role may carry.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A role id.
    Role(&'a str),
    /// A permission string.
    Permission(&'a str),
}

/// A grant that matched a check, with how it reaches the principal.
#[derive(Debug, Clone)]
pub struct Match {
    /// The grant.
    pub grant: GrantEntry,
    /// Direct, through a group, or inherited.
    pub member_type: MemberType,
    /// The chain of groups, outermost last, through which the principal holds it.
    pub via_groups: Vec<Id>,
    /// The scope above the one asked about that it is inherited from, if any.
    pub inherited_from: Option<Id>,
    /// The permission pattern that matched (permission checks only).
    pub matched_permission: Option<Arc<str>>,
}

/// The whole model.
#[derive(Debug, Default)]
pub struct Model {
    /// Principals by id.
    pub principals: HashMap<Id, PrincipalInfo>,
    /// Direct groups of each member.
    pub groups_of: HashMap<Id, HashSet<Id>>,
    /// Direct members of each group.
    pub members_of: HashMap<Id, HashSet<Id>>,
    /// Scopes by id.
    pub scopes: HashMap<Id, ScopeInfo>,
    /// Roles by id.
    pub roles: HashMap<Id, RoleInfo>,
    /// Grants by the principal they are assigned to.
    pub grants: HashMap<Id, Vec<GrantEntry>>,
    /// Where each grant id lives (its principal), to remove or change it.
    grant_owner: HashMap<Id, Id, FastHash>,
    interned: HashSet<Id, FastHash>,
}

/// The micros of a protobuf timestamp (0 when unset).
fn micros(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| {
        t.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(t.nanos / 1000))
    })
}

impl Model {
    /// Interns a string so the many grants that name the same role or scope share it.
    pub fn intern(&mut self, s: &str) -> Id {
        if let Some(i) = self.interned.get(s) {
            return i.clone();
        }
        let i: Id = Arc::from(s);
        self.interned.insert(i.clone());
        i
    }

    /// Adds or replaces a principal.
    pub fn upsert_principal(&mut self, id: &str, info: PrincipalInfo) {
        let id = self.intern(id);
        self.principals.insert(id, info);
    }

    /// Removes a principal, its memberships and its grants.
    pub fn remove_principal(&mut self, id: &str) {
        self.principals.remove(id);
        if let Some(groups) = self.groups_of.remove(id) {
            for g in groups {
                if let Some(m) = self.members_of.get_mut(&g) {
                    m.remove(id);
                }
            }
        }
        if let Some(members) = self.members_of.remove(id) {
            for m in members {
                if let Some(g) = self.groups_of.get_mut(&m) {
                    g.remove(id);
                }
            }
        }
        if let Some(grants) = self.grants.remove(id) {
            for g in grants {
                self.grant_owner.remove(&g.id);
            }
        }
    }

    /// Adds `member` to `group`.
    pub fn add_member(&mut self, group: &str, member: &str) {
        let (g, m) = (self.intern(group), self.intern(member));
        self.members_of
            .entry(g.clone())
            .or_default()
            .insert(m.clone());
        self.groups_of.entry(m).or_default().insert(g);
    }

    /// Removes `member` from `group`.
    pub fn remove_member(&mut self, group: &str, member: &str) {
        if let Some(m) = self.members_of.get_mut(group) {
            m.remove(member);
        }
        if let Some(g) = self.groups_of.get_mut(member) {
            g.remove(group);
        }
    }

    /// Adds or replaces a scope.
    pub fn upsert_scope(
        &mut self,
        id: &str,
        parent: Option<&str>,
        scope_type: ScopeType,
        display_name: &str,
    ) {
        let id = self.intern(id);
        let parent = parent.filter(|p| !p.is_empty()).map(|p| self.intern(p));
        self.scopes.insert(
            id,
            ScopeInfo {
                parent,
                scope_type,
                display_name: Arc::from(display_name),
            },
        );
    }

    /// Adds or replaces a role.
    pub fn upsert_role(&mut self, role: &pb::RoleDefinition) {
        let info = RoleInfo {
            display_name: Arc::from(role.display_name.as_str()),
            permissions: role
                .permissions
                .iter()
                .map(|p| Arc::from(p.as_str()))
                .collect(),
            kind: role.kind(),
        };
        self.insert_role(&role.id, info);
    }

    /// Adds or replaces a grant.
    pub fn put_grant(&mut self, mut g: GrantEntry) {
        g.principal = self.intern(&g.principal);
        g.role = self.intern(&g.role);
        g.scope = self.intern(&g.scope);
        self.insert_grant(g);
    }

    /// Adds or replaces a role (its id interned here).
    pub fn insert_role(&mut self, id: &str, info: RoleInfo) {
        let id = self.intern(id);
        self.roles.insert(id, info);
    }

    /// Adds or replaces a grant whose principal, role and scope are interned already
    /// ([`Model::intern`]; one that is not only costs memory).
    /// Its id is not interned: ids are unique, and interned strings are kept for good,
    /// so interning them only grew the set by every grant ever held.
    pub fn insert_grant(&mut self, g: GrantEntry) {
        // One lookup of the id whether it is new (the load's every grant) or replaces one.
        if let Some(owner) = self.grant_owner.insert(g.id.clone(), g.principal.clone())
            && let Some(list) = self.grants.get_mut(&owner)
        {
            list.retain(|old| old.id != g.id);
            if list.is_empty() {
                self.grants.remove(&owner);
            }
        }
        match self.grants.get_mut(&g.principal) {
            Some(list) => list.push(g),
            None => {
                self.grants.insert(g.principal.clone(), vec![g]);
            }
        }
    }

    /// Removes a grant by id (no-op when absent).
    pub fn remove_grant(&mut self, id: &str) {
        if let Some(owner) = self.grant_owner.remove(id)
            && let Some(list) = self.grants.get_mut(&owner)
        {
            list.retain(|g| &*g.id != id);
            if list.is_empty() {
                self.grants.remove(&owner);
            }
        }
    }

    /// The grant with `id`.
    pub fn grant(&self, id: &str) -> Option<&GrantEntry> {
        let owner = self.grant_owner.get(id)?;
        self.grants.get(owner)?.iter().find(|g| &*g.id == id)
    }

    /// The number of grants held.
    pub fn grant_count(&self) -> usize {
        self.grant_owner.len()
    }

    /// The scope and its ancestors, nearest first, ending at the root. Stops on a cycle
    /// (which registration prevents) rather than looping.
    pub fn ancestors(&self, scope: &str) -> Vec<Id> {
        let mut out = Vec::with_capacity(6);
        let mut cur = self.scopes.get_key_value(scope).map(|(k, _)| k.clone());
        while let Some(id) = cur {
            if out.contains(&id) || out.len() > 64 {
                break;
            }
            cur = self.scopes.get(&id).and_then(|s| s.parent.clone());
            out.push(id);
        }
        out
    }

    /// Whether `descendant` is `ancestor` or lies below it.
    pub fn is_within(&self, descendant: &str, ancestor: &str) -> bool {
        self.ancestors(descendant).iter().any(|a| &**a == ancestor)
    }

    /// The principal itself and every group it belongs to, directly or through nested
    /// groups, each with the chain of groups leading to it (nearest first). Cycles in
    /// group nesting are cut. Disabled groups pass nothing on.
    pub fn subjects(&self, principal: &str) -> Vec<(Id, Vec<Id>)> {
        let Some((pid, _)) = self.principals.get_key_value(principal) else {
            return Vec::new();
        };
        let mut out = vec![(pid.clone(), Vec::new())];
        let mut seen: HashSet<Id> = HashSet::from([pid.clone()]);
        let mut queue: VecDeque<(Id, Vec<Id>)> = VecDeque::from([(pid.clone(), Vec::new())]);
        while let Some((member, chain)) = queue.pop_front() {
            let Some(groups) = self.groups_of.get(&member) else {
                continue;
            };
            for g in groups {
                if !seen.insert(g.clone()) {
                    continue;
                }
                if !self.principals.get(g).is_some_and(|p| p.enabled) {
                    continue;
                }
                let mut c = chain.clone();
                c.push(g.clone());
                out.push((g.clone(), c.clone()));
                queue.push_back((g.clone(), c));
            }
        }
        out
    }

    /// Every member of `group`, transitively (users and service principals and nested
    /// groups), cycles cut.
    pub fn transitive_members(&self, group: &str) -> Vec<Id> {
        let mut out = Vec::new();
        let mut seen: HashSet<Id> = HashSet::new();
        let mut queue: VecDeque<Id> = self
            .members_of
            .get(group)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        while let Some(m) = queue.pop_front() {
            if !seen.insert(m.clone()) || &*m == group {
                continue;
            }
            if let Some(inner) = self.members_of.get(&m) {
                queue.extend(inner.iter().cloned());
            }
            out.push(m);
        }
        out
    }

    /// Whether a role's permission patterns grant `permission`.
    pub fn role_grants_permission(&self, role: &str, permission: &str) -> Option<Arc<str>> {
        let r = self.roles.get(role)?;
        r.permissions
            .iter()
            .find(|p| permission_matches(p, permission))
            .cloned()
    }

    /// Evaluates a check at `t` (microseconds), for grants of `kind`. Unknown or
    /// disabled principals hold nothing.
    pub fn evaluate(
        &self,
        principal: &str,
        target: Target<'_>,
        scope: &str,
        t: i64,
        kind: AssignmentType,
    ) -> Vec<Match> {
        if !self.principals.get(principal).is_some_and(|p| p.enabled) {
            return Vec::new();
        }
        let ancestors = self.ancestors(scope);
        let mut out = Vec::new();
        for (subject, chain) in self.subjects(principal) {
            let Some(grants) = self.grants.get(&subject) else {
                continue;
            };
            for g in grants {
                if g.assignment_type != kind || !g.in_effect(t) {
                    continue;
                }
                if !ancestors.contains(&g.scope) {
                    continue;
                }
                let matched_permission = match target {
                    Target::Role(r) => {
                        if &*g.role != r {
                            continue;
                        }
                        None
                    }
                    Target::Permission(p) => match self.role_grants_permission(&g.role, p) {
                        Some(m) => Some(m),
                        None => continue,
                    },
                };
                let inherited_from = (&*g.scope != scope).then(|| g.scope.clone());
                let member_type = if !chain.is_empty() {
                    MemberType::Group
                } else if inherited_from.is_some() {
                    MemberType::Inherited
                } else {
                    MemberType::Direct
                };
                out.push(Match {
                    grant: g.clone(),
                    member_type,
                    via_groups: chain.clone(),
                    inherited_from,
                    matched_permission,
                });
            }
        }
        out
    }

    /// Every grant of `kind` a principal holds at `t` (at `scope` or anywhere when
    /// `scope` is None), through itself or its groups.
    pub fn effective(
        &self,
        principal: &str,
        scope: Option<&str>,
        t: i64,
        kind: Option<AssignmentType>,
    ) -> Vec<Match> {
        if !self.principals.get(principal).is_some_and(|p| p.enabled) {
            return Vec::new();
        }
        let ancestors = scope.map(|s| self.ancestors(s));
        let mut out = Vec::new();
        for (subject, chain) in self.subjects(principal) {
            let Some(grants) = self.grants.get(&subject) else {
                continue;
            };
            for g in grants {
                if kind.is_some_and(|k| g.assignment_type != k) || !g.in_effect(t) {
                    continue;
                }
                let inherited_from = match (&ancestors, scope) {
                    (Some(anc), Some(s)) => {
                        if !anc.contains(&g.scope) {
                            continue;
                        }
                        (&*g.scope != s).then(|| g.scope.clone())
                    }
                    _ => None,
                };
                let member_type = if !chain.is_empty() {
                    MemberType::Group
                } else if inherited_from.is_some() {
                    MemberType::Inherited
                } else {
                    MemberType::Direct
                };
                out.push(Match {
                    grant: g.clone(),
                    member_type,
                    via_groups: chain.clone(),
                    inherited_from,
                    matched_permission: None,
                });
            }
        }
        out
    }

    /// Grants of `role` whose scope is `scope` or above it (inherited) — the holders of
    /// a role at a scope, before group expansion.
    pub fn role_grants_at(
        &self,
        role: &str,
        scope: &str,
        t: i64,
        exclude_inherited: bool,
    ) -> Vec<GrantEntry> {
        let ancestors = self.ancestors(scope);
        let mut out: Vec<GrantEntry> = self
            .grants
            .values()
            .flatten()
            .filter(|g| &*g.role == role && g.in_effect(t))
            .filter(|g| {
                if exclude_inherited {
                    &*g.scope == scope
                } else {
                    ancestors.contains(&g.scope)
                }
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// How this model differs from `other` in what it holds (the interned strings
    /// aside, and group entries left empty by removals): one line per difference, empty
    /// when they hold the same. Grants are compared by id, whatever their order.
    pub fn differences(&self, other: &Model) -> Vec<String> {
        fn keyed<'a, V: PartialEq + std::fmt::Debug>(
            out: &mut Vec<String>,
            what: &str,
            a: impl Iterator<Item = (&'a Id, V)>,
            b: impl Iterator<Item = (&'a Id, V)>,
        ) {
            let a: std::collections::BTreeMap<&Id, V> = a.collect();
            let b: std::collections::BTreeMap<&Id, V> = b.collect();
            for (k, va) in &a {
                match b.get(k) {
                    None => out.push(format!("{what} {k}: {va:?} here, absent there")),
                    Some(vb) if vb != va => {
                        out.push(format!("{what} {k}: {va:?} here, {vb:?} there"));
                    }
                    Some(_) => {}
                }
            }
            for (k, vb) in &b {
                if !a.contains_key(k) {
                    out.push(format!("{what} {k}: absent here, {vb:?} there"));
                }
            }
        }
        fn sorted(set: &HashSet<Id>) -> Vec<&Id> {
            let mut v: Vec<&Id> = set.iter().collect();
            v.sort();
            v
        }
        let mut out = Vec::new();
        keyed(
            &mut out,
            "principal",
            self.principals.iter(),
            other.principals.iter(),
        );
        keyed(&mut out, "scope", self.scopes.iter(), other.scopes.iter());
        keyed(&mut out, "role", self.roles.iter(), other.roles.iter());
        for (what, a, b) in [
            ("groups of", &self.groups_of, &other.groups_of),
            ("members of", &self.members_of, &other.members_of),
        ] {
            keyed(
                &mut out,
                what,
                a.iter()
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(k, s)| (k, sorted(s))),
                b.iter()
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(k, s)| (k, sorted(s))),
            );
        }
        keyed(
            &mut out,
            "grant",
            self.grants.values().flatten().map(|g| (&g.id, g)),
            other.grants.values().flatten().map(|g| (&g.id, g)),
        );
        out
    }

    // ----- applying events --------------------------------------------------------------

    /// Applies one of this context's events.
    pub fn apply(&mut self, event: &pb::Event) {
        use pb::event::Payload as P;
        let Some(payload) = &event.payload else {
            return;
        };
        match payload {
            P::PrincipalSynced(e) => {
                if let Some(p) = &e.principal {
                    self.upsert_principal(&p.id, principal_info(p));
                }
            }
            P::PrincipalDisabled(e) => {
                if let Some(r) = &e.principal
                    && let Some(p) = self.principals.get_mut(r.id.as_str())
                {
                    p.enabled = false;
                }
                for id in &e.ended_instance_ids {
                    self.remove_grant(id);
                }
            }
            P::PrincipalDeleted(e) => {
                if let Some(r) = &e.principal {
                    self.remove_principal(&r.id);
                }
                for id in e.removed_assignment_ids.iter().chain(&e.ended_instance_ids) {
                    self.remove_grant(id);
                }
            }
            P::GroupMembersSet(e) => {
                let Some(g) = &e.group else { return };
                for m in &e.added_members {
                    self.add_member(&g.id, &m.id);
                }
                for m in &e.removed_members {
                    self.remove_member(&g.id, &m.id);
                }
            }
            P::RoleDefinitionCreated(e) => {
                if let Some(r) = &e.role_definition {
                    self.upsert_role(r);
                }
            }
            P::RoleDefinitionUpdated(e) => {
                if let Some(r) = &e.after {
                    self.upsert_role(r);
                }
            }
            P::RoleDefinitionDeleted(e) => {
                if let Some(r) = &e.role_definition {
                    self.roles.remove(r.id.as_str());
                }
            }
            P::ScopeRegistered(e) => {
                if let Some(s) = &e.scope {
                    let parent = (!s.parent_id.is_empty()).then_some(s.parent_id.as_str());
                    self.upsert_scope(&s.id, parent, s.r#type(), &s.display_name);
                }
            }
            P::ScopeRenamed(e) => {
                if let Some(r) = &e.scope
                    && let Some(s) = self.scopes.get_mut(r.id.as_str())
                {
                    s.display_name = Arc::from(r.display_name.as_str());
                }
            }
            P::ScopeMoved(e) => {
                if let (Some(r), Some(np)) = (&e.scope, &e.new_parent) {
                    let parent = self.intern(&np.id);
                    if let Some(s) = self.scopes.get_mut(r.id.as_str()) {
                        s.parent = Some(parent);
                    }
                }
            }
            P::ScopeRemoved(e) => {
                if let Some(s) = &e.scope {
                    self.scopes.remove(s.id.as_str());
                }
            }
            P::AssignmentCreated(e) => self.put_assignment(e.assignment.as_ref()),
            P::AssignmentUpdated(e) => self.put_assignment(e.after.as_ref()),
            P::AssignmentExtended(e) => self.put_assignment(e.assignment.as_ref()),
            P::AssignmentRenewed(e) => self.put_assignment(e.assignment.as_ref()),
            P::AssignmentRemoved(e) => {
                if let Some(a) = &e.assignment {
                    self.remove_grant(&a.id);
                }
                for id in &e.ended_instance_ids {
                    self.remove_grant(id);
                }
            }
            P::AssignmentExpired(e) => {
                if let Some(a) = &e.assignment {
                    self.remove_grant(&a.id);
                }
                for id in &e.ended_instance_ids {
                    self.remove_grant(id);
                }
            }
            P::InstanceActivated(e) => self.put_activation(e.instance.as_ref()),
            P::InstanceExtended(e) => self.put_activation(e.instance.as_ref()),
            P::InstanceDeactivated(e) => {
                if let Some(i) = &e.instance {
                    self.remove_grant(&i.id);
                }
            }
            P::InstanceExpired(e) => {
                if let Some(i) = &e.instance {
                    self.remove_grant(&i.id);
                }
            }
            P::RoleSettingsChanged(_) | P::DriftObserved(_) | P::DriftResolved(_) => {}
        }
    }

    fn put_assignment(&mut self, a: Option<&pb::Assignment>) {
        let Some(a) = a else { return };
        let status = a.status();
        if matches!(
            status,
            pb::AssignmentStatus::Removed | pb::AssignmentStatus::Expired
        ) {
            self.remove_grant(&a.id);
            return;
        }
        let principal = self.intern(a.principal.as_ref().map_or("", |p| p.id.as_str()));
        let role = self.intern(a.role.as_ref().map_or("", |r| r.id.as_str()));
        let scope = self.intern(a.scope.as_ref().map_or("", |s| s.id.as_str()));
        self.insert_grant(GrantEntry {
            id: Arc::from(a.id.as_str()),
            source: GrantSource::Assignment,
            assignment_type: a.assignment_type(),
            principal,
            role,
            scope,
            start: micros(a.start_time.as_ref()).unwrap_or(0),
            end: if a.permanent {
                None
            } else {
                micros(a.end_time.as_ref())
            },
            request_id: None,
            eligibility_id: None,
        });
    }

    fn put_activation(&mut self, i: Option<&pb::Instance>) {
        let Some(i) = i else { return };
        if i.status() == pb::InstanceStatus::Ended {
            self.remove_grant(&i.id);
            return;
        }
        let principal = self.intern(i.principal.as_ref().map_or("", |p| p.id.as_str()));
        let role = self.intern(i.role.as_ref().map_or("", |r| r.id.as_str()));
        let scope = self.intern(i.scope.as_ref().map_or("", |s| s.id.as_str()));
        self.insert_grant(GrantEntry {
            id: Arc::from(i.id.as_str()),
            source: GrantSource::Activation,
            assignment_type: AssignmentType::Active,
            principal,
            role,
            scope,
            start: micros(i.start_time.as_ref()).unwrap_or(0),
            end: micros(i.end_time.as_ref()),
            request_id: (!i.request_id.is_empty()).then(|| Arc::from(i.request_id.as_str())),
            eligibility_id: (!i.assignment_id.is_empty())
                .then(|| Arc::from(i.assignment_id.as_str())),
        });
    }
}

/// The model's view of a principal message.
pub fn principal_info(p: &pb::Principal) -> PrincipalInfo {
    PrincipalInfo {
        principal_type: p.r#type(),
        display_name: Arc::from(p.display_name.as_str()),
        user_principal_name: Arc::from(p.user_principal_name.as_str()),
        enabled: p.enabled.unwrap_or(true),
    }
}

/// Whether a role's permission `pattern` grants `permission`: equal, or the pattern ends
/// in `*` and the permission starts with what comes before it.
pub fn permission_matches(pattern: &str, permission: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => permission.starts_with(prefix),
        None => pattern == permission,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(m: &mut Model, id: &str) {
        m.upsert_principal(
            id,
            PrincipalInfo {
                principal_type: PrincipalType::User,
                display_name: Arc::from(id),
                user_principal_name: Arc::from(id),
                enabled: true,
            },
        );
    }

    fn group(m: &mut Model, id: &str) {
        m.upsert_principal(
            id,
            PrincipalInfo {
                principal_type: PrincipalType::Group,
                display_name: Arc::from(id),
                user_principal_name: Arc::from(""),
                enabled: true,
            },
        );
    }

    fn grant(
        m: &mut Model,
        id: &str,
        principal: &str,
        role: &str,
        scope: &str,
        start: i64,
        end: Option<i64>,
    ) {
        m.put_grant(GrantEntry {
            id: Arc::from(id),
            source: GrantSource::Assignment,
            assignment_type: AssignmentType::Active,
            principal: Arc::from(principal),
            role: Arc::from(role),
            scope: Arc::from(scope),
            start,
            end,
            request_id: None,
            eligibility_id: None,
        });
    }

    fn tree(m: &mut Model) {
        m.upsert_scope("/", None, ScopeType::Root, "Root");
        m.upsert_scope(
            "/managementGroups/mg",
            Some("/"),
            ScopeType::ManagementGroup,
            "mg",
        );
        m.upsert_scope(
            "/subscriptions/s1",
            Some("/managementGroups/mg"),
            ScopeType::Subscription,
            "s1",
        );
        m.upsert_scope(
            "/subscriptions/s1/resourceGroups/rg",
            Some("/subscriptions/s1"),
            ScopeType::ResourceGroup,
            "rg",
        );
    }

    #[test]
    fn grants_are_inherited_down_the_scope_tree_and_say_from_where() {
        let mut m = Model::default();
        tree(&mut m);
        user(&mut m, "ferry");
        grant(
            &mut m,
            "a1",
            "ferry",
            "contributor",
            "/managementGroups/mg",
            0,
            None,
        );
        let r = m.evaluate(
            "ferry",
            Target::Role("contributor"),
            "/subscriptions/s1/resourceGroups/rg",
            10,
            AssignmentType::Active,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].member_type, MemberType::Inherited);
        assert_eq!(r[0].inherited_from.as_deref(), Some("/managementGroups/mg"));
        // not above where it was assigned
        assert!(
            m.evaluate(
                "ferry",
                Target::Role("contributor"),
                "/",
                10,
                AssignmentType::Active
            )
            .is_empty()
        );
        // at the scope itself: direct
        let r = m.evaluate(
            "ferry",
            Target::Role("contributor"),
            "/managementGroups/mg",
            10,
            AssignmentType::Active,
        );
        assert_eq!(r[0].member_type, MemberType::Direct);
    }

    #[test]
    fn nested_groups_with_a_cycle_resolve_and_name_the_chain() {
        let mut m = Model::default();
        tree(&mut m);
        user(&mut m, "ferry");
        group(&mut m, "g1");
        group(&mut m, "g2");
        m.add_member("g1", "ferry");
        m.add_member("g2", "g1");
        m.add_member("g1", "g2"); // a loop
        grant(&mut m, "a1", "g2", "reader", "/", 0, None);
        let r = m.evaluate(
            "ferry",
            Target::Role("reader"),
            "/subscriptions/s1",
            5,
            AssignmentType::Active,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].member_type, MemberType::Group);
        let chain: Vec<&str> = r[0].via_groups.iter().map(|g| &**g).collect();
        assert_eq!(chain, vec!["g1", "g2"]);
        let members = m.transitive_members("g2");
        assert!(members.iter().any(|x| &**x == "ferry"));
    }

    #[test]
    fn nothing_is_allowed_at_or_after_the_end_nor_before_the_start() {
        let mut m = Model::default();
        tree(&mut m);
        user(&mut m, "ferry");
        grant(
            &mut m,
            "a1",
            "ferry",
            "billing-administrator",
            "/",
            100,
            Some(200),
        );
        let check = |t| {
            !m.evaluate(
                "ferry",
                Target::Role("billing-administrator"),
                "/",
                t,
                AssignmentType::Active,
            )
            .is_empty()
        };
        assert!(!check(99));
        assert!(check(100));
        assert!(check(199));
        assert!(!check(200), "allowed at the end instant");
        assert!(!check(201));
    }

    #[test]
    fn disabled_principals_and_disabled_groups_hold_nothing() {
        let mut m = Model::default();
        tree(&mut m);
        user(&mut m, "ferry");
        group(&mut m, "g");
        m.add_member("g", "ferry");
        grant(&mut m, "a1", "g", "reader", "/", 0, None);
        assert_eq!(
            m.evaluate(
                "ferry",
                Target::Role("reader"),
                "/",
                1,
                AssignmentType::Active
            )
            .len(),
            1
        );
        m.principals.get_mut("g").unwrap().enabled = false;
        assert!(
            m.evaluate(
                "ferry",
                Target::Role("reader"),
                "/",
                1,
                AssignmentType::Active
            )
            .is_empty()
        );
        m.principals.get_mut("g").unwrap().enabled = true;
        m.principals.get_mut("ferry").unwrap().enabled = false;
        assert!(
            m.evaluate(
                "ferry",
                Target::Role("reader"),
                "/",
                1,
                AssignmentType::Active
            )
            .is_empty()
        );
    }

    #[test]
    fn permissions_match_exactly_or_by_wildcard_prefix() {
        assert!(permission_matches(
            "microsoft.directory/users/update",
            "microsoft.directory/users/update"
        ));
        assert!(permission_matches(
            "microsoft.directory/*",
            "microsoft.directory/users/update"
        ));
        assert!(!permission_matches(
            "microsoft.directory/users/read",
            "microsoft.directory/users/update"
        ));
        assert!(!permission_matches(
            "microsoft.directory/users",
            "microsoft.directory/users/update"
        ));
        let mut m = Model::default();
        tree(&mut m);
        user(&mut m, "ferry");
        m.upsert_role(&pb::RoleDefinition {
            id: "user-administrator".into(),
            permissions: vec!["microsoft.directory/users/*".into()],
            ..Default::default()
        });
        grant(&mut m, "a1", "ferry", "user-administrator", "/", 0, None);
        let r = m.evaluate(
            "ferry",
            Target::Permission("microsoft.directory/users/update"),
            "/",
            1,
            AssignmentType::Active,
        );
        assert_eq!(
            r[0].matched_permission.as_deref(),
            Some("microsoft.directory/users/*")
        );
        assert!(
            m.evaluate(
                "ferry",
                Target::Permission("microsoft.directory/groups/update"),
                "/",
                1,
                AssignmentType::Active
            )
            .is_empty()
        );
    }

    #[test]
    fn removing_and_replacing_grants_keeps_the_index_consistent() {
        let mut m = Model::default();
        tree(&mut m);
        user(&mut m, "ferry");
        grant(&mut m, "a1", "ferry", "reader", "/", 0, None);
        grant(&mut m, "a1", "ferry", "reader", "/", 0, Some(5));
        assert_eq!(m.grant_count(), 1);
        assert_eq!(m.grant("a1").unwrap().end, Some(5));
        // Replaced under another principal: it leaves the first one's list.
        user(&mut m, "kenneth");
        grant(&mut m, "a1", "kenneth", "reader", "/", 0, Some(5));
        assert_eq!(m.grant_count(), 1);
        assert!(!m.grants.contains_key("ferry"));
        assert_eq!(&*m.grant("a1").unwrap().principal, "kenneth");
        m.remove_grant("a1");
        assert_eq!(m.grant_count(), 0);
        assert!(m.grants.is_empty());
    }

    #[test]
    fn differences_name_what_one_model_holds_and_the_other_does_not() {
        let build = |end: i64| {
            let mut m = Model::default();
            tree(&mut m);
            user(&mut m, "ferry");
            group(&mut m, "g");
            m.add_member("g", "ferry");
            grant(&mut m, "a1", "ferry", "reader", "/", 0, Some(end));
            m
        };
        assert!(build(10).differences(&build(10)).is_empty());

        // Another end, a membership gone (its empty entries do not count), a grant more.
        let (a, mut b) = (build(10), build(20));
        b.remove_member("g", "ferry");
        grant(&mut b, "a2", "ferry", "owner", "/", 0, None);
        let d = b.differences(&a);
        assert_eq!(d.len(), 4, "{d:#?}");
        assert!(d[0].starts_with("groups of ferry: absent here"), "{d:#?}");
        assert!(d[1].starts_with("members of g: absent here"), "{d:#?}");
        assert!(
            d[2].starts_with("grant a1: ") && d[2].contains("end: Some(20)"),
            "{d:#?}"
        );
        assert!(
            d[3].starts_with("grant a2: ") && d[3].ends_with("absent there"),
            "{d:#?}"
        );
    }
}
