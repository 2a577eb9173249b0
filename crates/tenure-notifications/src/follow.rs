//! The consumers of the other contexts' streams (and of this context's own, for the
//! audit trail). Each event is handled in the unit of work that also stores the
//! consumer's cursor: its audit entry, the projections, the notifications it causes,
//! and the alerts it affects commit together, exactly once. An activation's alerts
//! are reconciled there for its principal and role; other events mark the alert kinds
//! they affect, and those are evaluated together right after
//! ([`crate::timers::evaluate_marked`]).

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::Row as _;
use tenure_platform::ApiError;
use tenure_platform::clock::from_proto;
use tenure_platform::consumer::EventHandler;
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1 as common;
use tenure_proto::notifications::v1 as pb;
use tenure_proto::reviews::v1 as rev;

use crate::domain::audit;
use crate::engine::{Draft, Engine, Uow};
use crate::project;

use common::NotificationEventKind as E;

tenure_platform::grpc_event_source!(AssignmentsStream, tenure_proto::assignments::v1);
tenure_platform::grpc_event_source!(ActivationStream, tenure_proto::activation::v1);
tenure_platform::grpc_event_source!(ReviewsStream, tenure_proto::reviews::v1);

/// Handles the assignments stream.
pub struct FromAssignments(pub Arc<Engine>);
/// Handles the activation stream.
pub struct FromActivation(pub Arc<Engine>);
/// Handles the reviews stream.
pub struct FromReviews(pub Arc<Engine>);
/// Handles this context's own stream (audit only).
pub struct FromSelf(pub Arc<Engine>);

async fn break_glass(
    engine: &Engine,
    uow: &mut Uow,
    meta: &common::EventMeta,
    what: &str,
) -> Result<bool, ApiError> {
    let watched = engine.watched(uow).await?;
    if !watched.contains(&meta.actor) {
        return Ok(false);
    }
    let at = meta
        .occurred_at
        .as_ref()
        .and_then(from_proto)
        .unwrap_or_else(|| engine.now());
    project::record_use(uow.tx(), &meta.actor, at, what).await?;
    Ok(true)
}

impl EventHandler<asg::Event, pb::Event> for FromAssignments {
    fn finish<'a>(&'a self, uow: &'a mut Uow) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.0.finish(uow))
    }

    fn handle<'a>(
        &'a self,
        uow: &'a mut Uow,
        event: &'a asg::Event,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let e = &self.0;
            let meta = event.meta.clone().unwrap_or_default();
            e.audit(uow, &meta, audit::assignments_facts(event)).await?;
            if matches!(
                event.payload,
                Some(
                    asg::event::Payload::RoleDefinitionCreated(_)
                        | asg::event::Payload::RoleDefinitionUpdated(_)
                        | asg::event::Payload::RoleDefinitionDeleted(_)
                )
            ) {
                uow.lock(crate::engine::ROLES_LOCK).await?;
            }
            let changed = project::apply(uow.tx(), event).await?;
            if matches!(
                event.payload,
                Some(
                    asg::event::Payload::PrincipalSynced(_)
                        | asg::event::Payload::PrincipalDisabled(_)
                        | asg::event::Payload::PrincipalDeleted(_)
                )
            ) {
                Engine::forget_names(uow);
            }
            for a in &changed.windows {
                e.plan_reminders(uow, a).await?;
            }
            for id in &changed.gone {
                sqlx::query("DELETE FROM notifications_reminders WHERE assignment_id = $1")
                    .bind(id)
                    .execute(&mut **uow.tx())
                    .await?;
            }
            let mut kinds = Engine::kinds_for_assignments(event);
            let short = meta
                .r#type
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            if break_glass(e, uow, &meta, &short).await? {
                kinds.push(pb::AlertKind::BreakGlassAccountUsed);
            }
            if let Some(asg::event::Payload::PrincipalSynced(x)) = &event.payload
                && x.changed_fields.iter().any(|f| f == "last_sign_in_time")
                && let Some(p) = &x.principal
                && e.watched(uow).await?.contains(&p.id)
            {
                let at = p
                    .last_sign_in_time
                    .as_ref()
                    .and_then(from_proto)
                    .unwrap_or_else(|| e.now());
                project::record_use(uow.tx(), &p.id, at, "signed in").await?;
            }
            // An activation concerns one principal and one role: those kinds are
            // evaluated for that pair only, not over the whole projection.
            if let Some(asg::event::Payload::InstanceActivated(x)) = &event.payload
                && let Some(i) = &x.instance
                && let (Some(p), Some(r)) = (&i.principal, &i.role)
            {
                kinds.retain(|k| !Engine::PAIR_KINDS.contains(k));
                Engine::mark_pair(uow, &p.id, &r.id);
            }
            if !kinds.is_empty() {
                kinds.sort_by_key(|k| *k as i32);
                kinds.dedup();
                Engine::mark(uow, &kinds);
            }
            if let Some(asg::event::Payload::AssignmentCreated(x)) = &event.payload
                && let Some(a) = &x.assignment
            {
                let eligible = a.assignment_type == common::AssignmentType::Eligible as i32;
                let (kind, what) = if eligible {
                    (E::EligibleAssigned, "eligible for")
                } else {
                    (E::ActiveAssigned, "assigned")
                };
                let who = a.principal.as_ref().map_or("", |p| p.display_name.as_str());
                let role = a.role.as_ref().map_or("", |r| r.display_name.as_str());
                let d = Draft {
                    kind: kind.into(),
                    critical: false,
                    title: format!("{who} is {what} {role}"),
                    summary: format!("{who} was made {what} {role} by {}.", meta.actor),
                    action_path: format!("/assignments/{}", a.id),
                    principal: a.principal.clone(),
                    role: a.role.clone(),
                    scope: a.scope.clone(),
                    reference_id: a.id.clone(),
                    justification: a.justification.clone(),
                    start: a.start_time,
                    end: a.end_time,
                    source: meta.clone(),
                    ..Draft::default()
                };
                e.notify(uow, d).await?;
            }
            Ok(())
        })
    }
}

fn request_draft(kind: E, r: &act::Request, meta: &common::EventMeta) -> Draft {
    Draft {
        kind: kind.into(),
        principal: r.requestor.clone(),
        role: r.role.clone(),
        scope: r.scope.clone(),
        reference_id: r.id.clone(),
        justification: r.justification.clone(),
        start: r.start_time,
        end: r.end_time,
        action_path: format!("/requests/{}", r.id),
        source: meta.clone(),
        ..Draft::default()
    }
}

fn names(r: &act::Request) -> (String, String) {
    (
        r.requestor.as_ref().map_or(String::new(), |p| {
            if p.display_name.is_empty() {
                p.id.clone()
            } else {
                p.display_name.clone()
            }
        }),
        r.role.as_ref().map_or(String::new(), |p| {
            if p.display_name.is_empty() {
                p.id.clone()
            } else {
                p.display_name.clone()
            }
        }),
    )
}

impl EventHandler<act::Event, pb::Event> for FromActivation {
    fn finish<'a>(&'a self, uow: &'a mut Uow) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.0.finish(uow))
    }

    fn handle<'a>(
        &'a self,
        uow: &'a mut Uow,
        event: &'a act::Event,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            use act::event::Payload as P;
            let e = &self.0;
            let meta = event.meta.clone().unwrap_or_default();
            e.audit(uow, &meta, audit::activation_facts(event)).await?;
            let short = meta
                .r#type
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            if break_glass(e, uow, &meta, &short).await? {
                e.evaluate(uow, &[pb::AlertKind::BreakGlassAccountUsed])
                    .await?;
            }
            let draft = match &event.payload {
                Some(P::ApprovalRequested(x)) => x.request.as_ref().map(|r| {
                    let (who, role) = names(r);
                    Draft {
                        critical: true,
                        title: format!("{who} requests approval for {role}"),
                        summary: format!(
                            "{who} asks to activate {role}. Approve or deny the request{}.",
                            x.deadline
                                .as_ref()
                                .and_then(from_proto)
                                .map(|d| format!(" before {}", d.format("%Y-%m-%d %H:%M UTC")))
                                .unwrap_or_default()
                        ),
                        approvers: x.approvers.clone(),
                        ..request_draft(E::ApprovalNeeded, r, &meta)
                    }
                }),
                Some(P::RequestApproved(x)) if x.request_approved => x.request.as_ref().map(|r| {
                    let (who, role) = names(r);
                    Draft {
                        title: format!("{who}'s request for {role} was approved"),
                        summary: format!(
                            "{} approved the request: {}",
                            x.approver.as_ref().map_or("", |a| a.display_name.as_str()),
                            x.justification
                        ),
                        ..request_draft(E::RequestApproved, r, &meta)
                    }
                }),
                Some(P::RequestDenied(x)) => x.request.as_ref().map(|r| {
                    let (who, role) = names(r);
                    Draft {
                        title: format!("{who}'s request for {role} was denied"),
                        summary: format!("The request was denied: {}", x.justification),
                        ..request_draft(E::RequestDenied, r, &meta)
                    }
                }),
                Some(P::RequestTimedOut(x)) => x.request.as_ref().map(|r| {
                    let (who, role) = names(r);
                    Draft {
                        title: format!("{who}'s request for {role} timed out"),
                        summary: "Nobody decided in time; the request is denied.".into(),
                        ..request_draft(E::RequestDenied, r, &meta)
                    }
                }),
                Some(P::RequestProvisioned(x)) => x
                    .request
                    .as_ref()
                    .filter(|r| r.action == act::RequestAction::Activate as i32)
                    .map(|r| {
                        let (who, role) = names(r);
                        let mut approvers: Vec<common::PrincipalRef> = Vec::new();
                        for s in &r.stages {
                            for a in &s.approvers {
                                if !approvers.iter().any(|x| x.id == a.id) {
                                    approvers.push(a.clone());
                                }
                            }
                        }
                        Draft {
                            title: format!("{who} activated {role}"),
                            summary: format!(
                                "{who} activated {role}; it is in effect until the end below."
                            ),
                            approvers,
                            ..request_draft(E::Activated, r, &meta)
                        }
                    }),
                _ => None,
            };
            if let Some(d) = draft {
                e.notify(uow, d).await?;
            }
            Ok(())
        })
    }
}

impl EventHandler<rev::Event, pb::Event> for FromReviews {
    fn finish<'a>(&'a self, uow: &'a mut Uow) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.0.finish(uow))
    }

    fn handle<'a>(
        &'a self,
        uow: &'a mut Uow,
        event: &'a rev::Event,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let e = &self.0;
            let meta = event.meta.clone().unwrap_or_default();
            e.audit(uow, &meta, audit::reviews_facts(event)).await?;
            if let Some(d) = review_draft(uow, event, &meta).await? {
                e.notify(uow, d).await?;
            }
            Ok(())
        })
    }
}

/// Remembers who reviews in a round (so its completion reaches them all).
async fn remember_reviewers(
    uow: &mut Uow,
    round_id: &str,
    reviewers: &[common::PrincipalRef],
) -> Result<(), ApiError> {
    for r in reviewers {
        sqlx::query(
            "INSERT INTO notifications_review_reviewers (round_id, principal_id, type, display_name, upn) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(round_id)
        .bind(&r.id)
        .bind(i64::from(r.r#type))
        .bind(&r.display_name)
        .bind(&r.user_principal_name)
        .execute(&mut **uow.tx())
        .await?;
    }
    Ok(())
}

fn end_text(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(from_proto)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// The notification a reviews event causes: a round (or a later stage) started, a
/// reminder to the reviewers with undecided items, a round completed. Each goes to the
/// reviewers (REVIEWERS) and the administrators, per the rules.
async fn review_draft(
    uow: &mut Uow,
    event: &rev::Event,
    meta: &common::EventMeta,
) -> Result<Option<Draft>, ApiError> {
    use rev::event::Payload as P;
    let base = |kind: E, round: &rev::ReviewRound, critical: bool| {
        let def = round.definition.clone().unwrap_or_default();
        let scope = def.scope.unwrap_or_default();
        let scope_id = if scope.scope_id.is_empty() {
            "/".to_owned()
        } else {
            scope.scope_id.clone()
        };
        Draft {
            kind: kind.into(),
            critical,
            action_path: format!("/reviews/rounds/{}", round.id),
            role: (scope.role_ids.len() == 1).then(|| common::RoleRef {
                id: scope.role_ids[0].clone(),
                display_name: scope.role_ids[0].clone(),
            }),
            scope: Some(common::ScopeRef {
                id: scope_id.clone(),
                display_name: scope_id,
                ..Default::default()
            }),
            reference_id: round.id.clone(),
            start: round.start_time,
            end: round.end_time,
            source: meta.clone(),
            ..Draft::default()
        }
    };
    let message = |round: &rev::ReviewRound| {
        round
            .definition
            .as_ref()
            .and_then(|d| d.settings.as_ref())
            .map(|s| s.reviewer_message.trim().to_owned())
            .filter(|m| !m.is_empty())
            .map(|m| format!(" {m}"))
            .unwrap_or_default()
    };
    Ok(match &event.payload {
        Some(P::RoundStarted(x)) => {
            let Some(round) = &x.round else {
                return Ok(None);
            };
            remember_reviewers(uow, &round.id, &x.reviewers).await?;
            let items = round.progress.as_ref().map_or(0, |p| p.total);
            let roles: Vec<&str> = x
                .roles
                .iter()
                .map(|r| {
                    if r.display_name.is_empty() {
                        r.id.as_str()
                    } else {
                        r.display_name.as_str()
                    }
                })
                .collect();
            let mut d = base(E::ReviewStarted, round, true);
            if let (Some(r), 1) = (x.roles.first(), x.roles.len()) {
                d.role = Some(r.clone());
            }
            d.title = format!("access review \"{}\" started", round.display_name);
            d.summary = format!(
                "Round {} of \"{}\" started: please review who holds {} ({items} item{}) before {}.{}",
                round.round_number,
                round.display_name,
                roles.join(", "),
                if items == 1 { "" } else { "s" },
                end_text(round.end_time.as_ref()),
                message(round)
            );
            d.reviewers = x.reviewers.clone();
            Some(d)
        }
        Some(P::StageStarted(x)) => {
            let Some(round) = &x.round else {
                return Ok(None);
            };
            remember_reviewers(uow, &round.id, &x.reviewers).await?;
            if x.reviewers.is_empty() {
                return Ok(None);
            }
            let mut d = base(E::ReviewStarted, round, true);
            d.end = round.stage_end_time;
            d.title = format!(
                "access review \"{}\": stage {} started",
                round.display_name,
                x.stage + 1
            );
            d.summary = format!(
                "Stage {} of \"{}\" started with {} item{} to review before {}.{}",
                x.stage + 1,
                round.display_name,
                x.item_count,
                if x.item_count == 1 { "" } else { "s" },
                end_text(round.stage_end_time.as_ref()),
                message(round)
            );
            d.reviewers = x.reviewers.clone();
            Some(d)
        }
        Some(P::ReminderDue(x)) => {
            let Some(round) = &x.round else {
                return Ok(None);
            };
            let reviewers: Vec<common::PrincipalRef> = x
                .reviewers
                .iter()
                .filter_map(|r| r.reviewer.clone())
                .collect();
            if reviewers.is_empty() {
                return Ok(None);
            }
            let pending: i32 = x.reviewers.iter().map(|r| r.pending_items).sum();
            let mut d = base(E::ReviewReminder, round, true);
            d.end = x.end_time;
            d.title = format!(
                "reminder: access review \"{}\" ends {}",
                round.display_name,
                end_text(x.end_time.as_ref())
            );
            d.summary = format!(
                "\"{}\" ends at {} and {pending} item{} still wait for a decision.{}",
                round.display_name,
                end_text(x.end_time.as_ref()),
                if pending == 1 { "" } else { "s" },
                message(round)
            );
            d.reviewers = reviewers;
            Some(d)
        }
        Some(P::RoundCompleted(x)) => {
            let Some(round) = &x.round else {
                return Ok(None);
            };
            let rows = sqlx::query(
                "SELECT principal_id, type, display_name, upn FROM notifications_review_reviewers \
                 WHERE round_id = $1 ORDER BY principal_id",
            )
            .bind(&round.id)
            .fetch_all(&mut **uow.tx())
            .await?;
            let mut reviewers = Vec::with_capacity(rows.len());
            for row in rows {
                let t: i64 = row.try_get("type")?;
                reviewers.push(common::PrincipalRef {
                    id: row.try_get("principal_id")?,
                    r#type: i32::try_from(t).unwrap_or(0),
                    display_name: row.try_get("display_name")?,
                    user_principal_name: row.try_get("upn")?,
                });
            }
            let p = round.progress.unwrap_or_default();
            let mut d = base(E::ReviewCompleted, round, false);
            d.title = format!("access review \"{}\" completed", round.display_name);
            d.summary = format!(
                "Round {} of \"{}\" completed{}: {} approved, {} denied, {} not reviewed of {} ({} by the default decision).",
                round.round_number,
                round.display_name,
                if x.stopped_early { " early" } else { "" },
                p.approved,
                p.denied,
                p.not_reviewed + p.dont_know,
                p.total,
                x.defaulted_count
            );
            d.reviewers = reviewers;
            Some(d)
        }
        _ => None,
    })
}

impl EventHandler<pb::Event, pb::Event> for FromSelf {
    fn finish<'a>(&'a self, uow: &'a mut Uow) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.0.finish(uow))
    }

    fn handle<'a>(
        &'a self,
        uow: &'a mut Uow,
        event: &'a pb::Event,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let meta = event.meta.clone().unwrap_or_default();
            self.0
                .audit(uow, &meta, audit::notifications_facts(event))
                .await
        })
    }
}
