//! The data set, loaded through the public gRPC API only: principals (users, nested
//! groups) by `UpsertPrincipals`, group members by `SetGroupMembers`, the scope tree
//! (management groups → subscriptions → resource groups) by `ImportScopes`, and the
//! assignments by `CreateAssignments` (hundreds per call, a few calls in flight over
//! every connection).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalType, ScopeType};

use crate::client::{Conns, req};

/// The resource roles (assignable at any scope).
pub const RESOURCE_ROLES: [&str; 4] = [
    "owner",
    "contributor",
    "reader",
    "user-access-administrator",
];

/// The most assignments one CreateAssignments call takes (the server's limit).
pub const MAX_PER_CALL: usize = 1000;

/// The role the activation workloads activate (approval-free, no MFA, no justification).
pub const ACTIVATION_ROLE: &str = "contributor";

/// Sizes of the data set.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    /// Principals of the access data set (users and groups).
    pub principals: usize,
    /// One in this many principals is a group.
    pub group_every: usize,
    /// Assignments of the access data set.
    pub assignments: usize,
    /// Management groups under "/".
    pub management_groups: usize,
    /// Subscriptions per management group.
    pub subscriptions_per_mg: usize,
    /// Resource groups per subscription.
    pub resource_groups_per_subscription: usize,
    /// Principals that activate (each eligible for the activation role at "/").
    pub activators: usize,
    /// Principals whose re-sync makes the stream workload's events.
    pub stream_principals: usize,
}

/// The loaded data set: ids the workloads ask about.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The shape.
    pub shape: Shape,
    /// User ids of the access data set.
    pub users: Arc<Vec<String>>,
    /// Every scope below the root (management groups, subscriptions, resource groups).
    pub scopes: Arc<Vec<String>>,
    /// Resource group ids (the deepest scopes: the longest inheritance chain).
    pub resource_groups: Arc<Vec<String>>,
    /// The activating principals.
    pub activators: Arc<Vec<String>>,
    /// The stream workload's principals.
    pub stream_principals: Arc<Vec<String>>,
}

/// What loading took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// UpsertPrincipals (all batches), seconds.
    pub principals_s: f64,
    /// SetGroupMembers (all groups), seconds.
    pub groups_s: f64,
    /// ImportScopes, seconds.
    pub scopes_s: f64,
    /// The access data set's CreateAssignments calls, seconds.
    pub assignments_s: f64,
    /// Assignments created per second (not calls).
    pub assignments_per_s: f64,
    /// Assignments per CreateAssignments call.
    pub assignments_per_call: usize,
    /// CreateAssignments calls in flight while loading.
    pub calls_in_flight: usize,
    /// CreateAssignments calls made.
    pub calls: u64,
    /// CreateAssignments calls that failed (each creates nothing).
    pub failed_calls: u64,
    /// Assignments in the failed calls, so not created.
    pub failed_assignments: u64,
    /// The activators' eligible assignments and the role settings, seconds.
    pub activation_setup_s: f64,
    /// Server CPU time per assignment created, microseconds.
    pub server_cpu_us_per_assignment: Option<f64>,
}

fn principal(id: &str, t: PrincipalType) -> asg::Principal {
    asg::Principal {
        id: id.to_owned(),
        r#type: t.into(),
        display_name: format!("Bench {id}"),
        user_principal_name: if t == PrincipalType::User {
            format!("{id}@bench.test")
        } else {
            String::new()
        },
        source: "tenure-bench".into(),
        ..Default::default()
    }
}

impl Shape {
    fn ids(&self) -> (Vec<String>, Vec<String>) {
        let mut users = Vec::new();
        let mut groups = Vec::new();
        for i in 0..self.principals {
            if self.group_every > 0 && i % self.group_every == 0 {
                groups.push(format!("g{i:07}"));
            } else {
                users.push(format!("u{i:07}"));
            }
        }
        (users, groups)
    }

    fn scope_tree(&self) -> (Vec<asg::Scope>, Vec<String>) {
        let mut scopes = Vec::new();
        let mut rgs = Vec::new();
        for m in 0..self.management_groups {
            let mg = format!("/managementGroups/mg{m:03}");
            scopes.push(asg::Scope {
                id: mg.clone(),
                parent_id: "/".into(),
                r#type: ScopeType::ManagementGroup.into(),
                ..Default::default()
            });
            for s in 0..self.subscriptions_per_mg {
                let sub = format!("/subscriptions/sub-{m:03}-{s:03}");
                scopes.push(asg::Scope {
                    id: sub.clone(),
                    parent_id: mg.clone(),
                    r#type: ScopeType::Subscription.into(),
                    ..Default::default()
                });
                for r in 0..self.resource_groups_per_subscription {
                    let rg = format!("{sub}/resourceGroups/rg{r:03}");
                    scopes.push(asg::Scope {
                        id: rg.clone(),
                        parent_id: sub.clone(),
                        r#type: ScopeType::ResourceGroup.into(),
                        ..Default::default()
                    });
                    rgs.push(rg);
                }
            }
        }
        (scopes, rgs)
    }
}

/// Loads the data set; returns it with the time each step took.
pub async fn load(
    c: &Conns,
    shape: &Shape,
    in_flight: usize,
    per_call: usize,
    server: Option<&crate::server::Proc>,
) -> anyhow::Result<(Dataset, LoadReport)> {
    let mut rep = LoadReport::default();
    let (users, groups) = shape.ids();
    let activators: Vec<String> = (0..shape.activators)
        .map(|i| format!("act{i:05}"))
        .collect();
    let streamers: Vec<String> = (0..shape.stream_principals)
        .map(|i| format!("str{i:05}"))
        .collect();

    // Principals, 5,000 per call.
    let t = Instant::now();
    let mut all: Vec<asg::Principal> = Vec::new();
    all.extend(users.iter().map(|u| principal(u, PrincipalType::User)));
    all.extend(groups.iter().map(|g| principal(g, PrincipalType::Group)));
    all.extend(activators.iter().map(|u| principal(u, PrincipalType::User)));
    all.extend(streamers.iter().map(|u| principal(u, PrincipalType::User)));
    for chunk in all.chunks(5_000) {
        c.principals(0)
            .upsert_principals(req(
                asg::UpsertPrincipalsRequest {
                    principals: chunk.to_vec(),
                    request_id: String::new(),
                },
                &c.admin,
            ))
            .await
            .context("UpsertPrincipals")?;
    }
    rep.principals_s = t.elapsed().as_secs_f64();

    // Groups: group k holds the users after it up to the next group, and (nested) the
    // group at index k/10, so members of a deep group inherit a shallower group's grants.
    let t = Instant::now();
    let mut sets = Vec::new();
    for (k, g) in groups.iter().enumerate() {
        let gi: usize = g[1..].parse().unwrap_or(0);
        let mut members: Vec<String> = (gi + 1..(gi + shape.group_every).min(shape.principals))
            .map(|i| format!("u{i:07}"))
            .collect();
        if k >= 10 {
            members.push(groups[k / 10].clone());
        }
        sets.push((g.clone(), members));
    }
    for chunk in sets.chunks(32) {
        let futs = chunk.iter().enumerate().map(|(i, (g, m))| {
            let mut client = c.principals(i);
            let r = req(
                asg::SetGroupMembersRequest {
                    group_id: g.clone(),
                    member_ids: m.clone(),
                    request_id: String::new(),
                },
                &c.admin,
            );
            async move { client.set_group_members(r).await }
        });
        for r in futures::future::join_all(futs).await {
            r.context("SetGroupMembers")?;
        }
    }
    rep.groups_s = t.elapsed().as_secs_f64();

    // Scopes, one import.
    let t = Instant::now();
    let (tree, rgs) = shape.scope_tree();
    let scope_ids: Vec<String> = tree.iter().map(|s| s.id.clone()).collect();
    for chunk in tree.chunks(10_000) {
        c.scopes(0)
            .import_scopes(req(
                asg::ImportScopesRequest {
                    root_id: "/".into(),
                    scopes: chunk.to_vec(),
                    prune: false,
                    request_id: String::new(),
                },
                &c.admin,
            ))
            .await
            .context("ImportScopes")?;
    }
    rep.scopes_s = t.elapsed().as_secs_f64();

    // Assignments: principal p's k-th assignment is at a distinct scope, a resource
    // role, active or eligible in turn. Batch b holds assignments b·per_call.. of that
    // order; workers take the next batch until none is left.
    let principals: Arc<Vec<String>> = Arc::new(
        (0..shape.principals)
            .map(|i| {
                if shape.group_every > 0 && i % shape.group_every == 0 {
                    format!("g{i:07}")
                } else {
                    format!("u{i:07}")
                }
            })
            .collect(),
    );
    let scopes_arc = Arc::new(scope_ids.clone());
    let per_principal = shape.assignments.div_ceil(shape.principals.max(1)).max(1);
    let stride = (scope_ids.len() / per_principal).max(1);
    let per_call = per_call.clamp(1, MAX_PER_CALL);
    let t = Instant::now();
    let cpu0 = server.and_then(crate::server::Proc::cpu_seconds);
    let failed_calls = Arc::new(AtomicU64::new(0));
    let failed_assignments = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let total = shape.assignments;
    let batches = total.div_ceil(per_call) as u64;
    let mut workers = Vec::new();
    for w in 0..in_flight.max(1) {
        let (c, principals, scopes) = (c.clone(), principals.clone(), scopes_arc.clone());
        let (failed_calls, failed_assignments, first_error) = (
            failed_calls.clone(),
            failed_assignments.clone(),
            first_error.clone(),
        );
        let (next, done) = (next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut client = c.assignments(w);
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    break;
                }
                let from = b as usize * per_call;
                let items: Vec<asg::CreateAssignmentsItem> = (from..(from + per_call).min(total))
                    .map(|i| {
                        let p = i % principals.len();
                        let k = i / principals.len();
                        let scope = &scopes[(p * 7 + k * stride) % scopes.len()];
                        let active = (p + k).is_multiple_of(2);
                        asg::CreateAssignmentsItem {
                            assignment_type: if active {
                                AssignmentType::Active
                            } else {
                                AssignmentType::Eligible
                            }
                            .into(),
                            principal_id: principals[p].clone(),
                            role_id: RESOURCE_ROLES[(p + k) % RESOURCE_ROLES.len()].into(),
                            scope_id: scope.clone(),
                            justification: "benchmark data".into(),
                            ..Default::default()
                        }
                    })
                    .collect();
                let n = items.len() as u64;
                let r = client
                    .create_assignments(req(
                        asg::CreateAssignmentsRequest {
                            items,
                            ..Default::default()
                        },
                        &c.admin,
                    ))
                    .await;
                match r {
                    Ok(_) => {
                        done.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed_calls.fetch_add(1, Ordering::Relaxed);
                        failed_assignments.fetch_add(n, Ordering::Relaxed);
                        let mut f = first_error
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if f.is_none() {
                            *f = Some(format!("{:?}: {}", e.code(), e.message()));
                        }
                    }
                }
            }
        }));
    }
    let mut last_print = Instant::now();
    for wk in workers {
        while !wk.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if last_print.elapsed() > Duration::from_secs(10) {
                last_print = Instant::now();
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "  loading assignments: {n}/{total} created ({:.0}/s)",
                    n as f64 / t.elapsed().as_secs_f64()
                );
            }
        }
        let _ = wk.await;
    }
    rep.assignments_s = t.elapsed().as_secs_f64();
    rep.assignments_per_s = done.load(Ordering::Relaxed) as f64 / rep.assignments_s.max(1e-9);
    rep.assignments_per_call = per_call;
    rep.calls_in_flight = in_flight;
    rep.calls = batches;
    rep.failed_calls = failed_calls.load(Ordering::Relaxed);
    rep.failed_assignments = failed_assignments.load(Ordering::Relaxed);
    if let (Some(a), Some(b)) = (cpu0, server.and_then(crate::server::Proc::cpu_seconds)) {
        rep.server_cpu_us_per_assignment =
            Some((b - a) * 1e6 / done.load(Ordering::Relaxed).max(1) as f64);
    }
    if let Some(e) = first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
    {
        eprintln!(
            "  {} CreateAssignments calls failed ({} assignments not created); first: {e}",
            rep.failed_calls, rep.failed_assignments
        );
    }

    // Activation: approval-free, no MFA, no justification; each activator eligible at "/".
    let t = Instant::now();
    approval_free_activation(c).await?;
    for chunk in activators.chunks(MAX_PER_CALL) {
        let items = chunk
            .iter()
            .map(|a| asg::CreateAssignmentsItem {
                assignment_type: AssignmentType::Eligible.into(),
                principal_id: a.clone(),
                role_id: ACTIVATION_ROLE.into(),
                scope_id: "/".into(),
                justification: "benchmark activator".into(),
                ..Default::default()
            })
            .collect();
        c.assignments(0)
            .create_assignments(req(
                asg::CreateAssignmentsRequest {
                    items,
                    ..Default::default()
                },
                &c.admin,
            ))
            .await
            .context("CreateAssignments (activator eligibilities)")?;
    }
    rep.activation_setup_s = t.elapsed().as_secs_f64();

    Ok((
        Dataset {
            shape: shape.clone(),
            users: Arc::new(users),
            scopes: Arc::new(scope_ids),
            resource_groups: Arc::new(rgs),
            activators: Arc::new(activators),
            stream_principals: Arc::new(streamers),
        },
        rep,
    ))
}

/// Role settings for [`ACTIVATION_ROLE`]: activation without MFA, approval, justification
/// or ticket (the activation and expiry workloads time the system, not a person).
pub async fn approval_free_activation(c: &Conns) -> anyhow::Result<()> {
    c.settings(0)
        .update_role_settings(req(
            asg::UpdateRoleSettingsRequest {
                role_settings: Some(asg::RoleSettings {
                    role_id: ACTIVATION_ROLE.into(),
                    activation: Some(asg::ActivationSettings {
                        require_mfa: Some(false),
                        require_approval: Some(false),
                        require_justification: Some(false),
                        require_ticket: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["activation".into()],
                }),
                request_id: String::new(),
            },
            &c.admin,
        ))
        .await
        .context("UpdateRoleSettings")?;
    Ok(())
}
