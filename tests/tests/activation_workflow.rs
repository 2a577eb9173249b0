//! The approval workflow's harder parts: stages in series with N approvals each,
//! escalation to escalation approvers, scheduled starts, revocation by an
//! administrator, renewal of an expired assignment, and a provisioning failure that ends
//! in FAILED with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::TimeDelta;
use tenure_e2e::harness::*;
use tenure_platform::clock::{Clock as _, to_proto};
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::AssignmentType;
use tonic::Code;

const BILLING: &str = "billing-administrator";

fn item(role: &str) -> act::ActivationItem {
    act::ActivationItem {
        role_id: role.into(),
        scope_id: "/".into(),
        justification: "month-end invoices".into(),
        ..Default::default()
    }
}

async fn ask(h: &Harness, who: &str, i: act::ActivationItem) -> act::Request {
    h.activation()
        .activate_roles(h.req(
            who,
            act::ActivateRolesRequest {
                items: vec![i],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap()
}

async fn get(h: &Harness, who: &str, id: &str) -> act::Request {
    h.activation()
        .get_request(h.req(who, act::GetRequestRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap()
}

async fn approve(h: &Harness, who: &str, id: &str) -> Result<act::Request, tonic::Status> {
    h.activation()
        .approve_request(h.req(
            who,
            act::ApproveRequestRequest {
                id: id.into(),
                justification: "ok".into(),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().request.unwrap())
}

async fn wait_status(h: &Harness, who: &str, id: &str, status: act::RequestStatus) -> act::Request {
    for _ in 0..500 {
        let r = get(h, who, id).await;
        if r.status() == status {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "request {id} never became {status:?}: {:?}",
        get(h, who, id).await
    );
}

#[tokio::test]
async fn two_stages_in_series_each_with_its_required_approvals() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth", "lisa", "mark"]).await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.set_activation(
        BILLING,
        asg::ActivationSettings {
            require_mfa: Some(false),
            require_approval: Some(true),
            approval: Some(asg::ApprovalSettings {
                stages: vec![
                    asg::ApprovalStage {
                        approvers: vec![user_ref("kenneth"), user_ref("lisa")],
                        required_approvals: 2,
                        ..Default::default()
                    },
                    asg::ApprovalStage {
                        approvers: vec![user_ref("mark")],
                        required_approvals: 1,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let r = ask(&h, "ferry", item(BILLING)).await;
    assert_eq!(r.stages.len(), 2);
    // Mark cannot decide stage 1.
    assert_status(
        approve(&h, "mark", &r.id).await,
        Code::PermissionDenied,
        "not an approver of stage 1",
    );
    let after_one = approve(&h, "kenneth", &r.id).await.unwrap();
    assert_eq!(
        after_one.status(),
        act::RequestStatus::PendingApproval,
        "stage 1 needs two approvals"
    );
    assert_eq!(after_one.current_stage, 0);
    let after_two = approve(&h, "lisa", &r.id).await.unwrap();
    assert_eq!(after_two.current_stage, 1, "stage 2 opens");
    assert_eq!(after_two.stages[0].status(), act::StageStatus::Approved);
    assert!(!h.allowed("ferry", BILLING, "/").await);
    assert_status(
        approve(&h, "kenneth", &r.id).await,
        Code::PermissionDenied,
        "stage 2",
    );
    let done = approve(&h, "mark", &r.id).await.unwrap();
    assert_eq!(done.status(), act::RequestStatus::Provisioned);
    assert!(h.allowed("ferry", BILLING, "/").await);
    h.stop().await;
}

#[tokio::test]
async fn an_unanswered_stage_escalates_to_its_escalation_approvers() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth", "erin"]).await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.set_activation(
        BILLING,
        asg::ActivationSettings {
            require_mfa: Some(false),
            require_approval: Some(true),
            approval: Some(asg::ApprovalSettings {
                stages: vec![asg::ApprovalStage {
                    approvers: vec![user_ref("kenneth")],
                    required_approvals: 1,
                    escalation_approvers: vec![user_ref("erin")],
                    escalation_after: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let r = ask(&h, "ferry", item(BILLING)).await;
    assert_status(approve(&h, "erin", &r.id).await, Code::PermissionDenied, "");
    h.clock.advance(TimeDelta::hours(1));
    for _ in 0..500 {
        if get(&h, "ferry", &r.id).await.stages[0].escalated {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let done = approve(&h, "erin", &r.id).await.unwrap();
    assert_eq!(done.status(), act::RequestStatus::Provisioned);
    assert!(done.stages[0].decisions[0].as_escalation_approver);
    h.stop().await;
}

#[tokio::test]
async fn a_future_start_is_granted_then_provisioned_exactly_at_its_start() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.set_activation(
        BILLING,
        asg::ActivationSettings {
            require_mfa: Some(false),
            ..Default::default()
        },
    )
    .await;
    let mut i = item(BILLING);
    let start = h.clock.now() + TimeDelta::hours(3);
    i.start_time = Some(to_proto(start));
    let r = ask(&h, "ferry", i).await;
    assert_eq!(r.status(), act::RequestStatus::Granted);
    assert!(!h.allowed("ferry", BILLING, "/").await);
    h.clock.set(start);
    wait_status(&h, "ferry", &r.id, act::RequestStatus::Provisioned).await;
    assert!(h.allowed("ferry", BILLING, "/").await);
    h.stop().await;
}

#[tokio::test]
async fn an_administrator_revokes_and_nobody_revokes_their_own() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "eve"]).await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.set_activation(
        BILLING,
        asg::ActivationSettings {
            require_mfa: Some(false),
            ..Default::default()
        },
    )
    .await;
    let r = ask(&h, "ferry", item(BILLING)).await;
    let revoke = |who: &str, j: &str| {
        let (h, id, who, j) = (&h, r.id.clone(), who.to_owned(), j.to_owned());
        async move {
            h.activation()
                .revoke_activation(h.req(
                    &who,
                    act::RevokeActivationRequest {
                        activation_request_id: id,
                        justification: j,
                        request_id: String::new(),
                    },
                ))
                .await
        }
    };
    assert_status(
        revoke("eve", "x").await,
        Code::PermissionDenied,
        "Privileged Role Administrator",
    );
    assert_status(revoke("ferry", "x").await, Code::PermissionDenied, "");
    assert_status(
        revoke(ADMIN, "").await,
        Code::InvalidArgument,
        "justification",
    );
    let done = revoke(ADMIN, "suspicious sign-in")
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(done.status(), act::RequestStatus::Revoked);
    assert!(!h.allowed("ferry", BILLING, "/").await);
    h.stop().await;
}

#[tokio::test]
async fn an_expired_assignment_is_renewed_by_its_holder_within_thirty_days() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let mut r = asg::CreateAssignmentRequest {
        assignment_type: AssignmentType::Eligible.into(),
        principal_id: "ferry".into(),
        role_id: BILLING.into(),
        scope_id: "/".into(),
        justification: "x".into(),
        ..Default::default()
    };
    r.schedule = Some(asg::ScheduleInput {
        start_time: None,
        expiration: Some(asg::schedule_input::Expiration::Duration(
            prost_types::Duration {
                seconds: 86400,
                nanos: 0,
            },
        )),
    });
    let a = h
        .assignments()
        .create_assignment(h.req(ADMIN, r))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap();
    h.set_activation(
        BILLING,
        asg::ActivationSettings {
            require_mfa: Some(false),
            ..Default::default()
        },
    )
    .await;
    let renew = |who: &str| {
        let (h, id, who) = (&h, a.id.clone(), who.to_owned());
        async move {
            h.activation()
                .renew_assignment(h.req(
                    &who,
                    act::RenewAssignmentRequest {
                        assignment_id: id,
                        expiration: Some(act::renew_assignment_request::Expiration::Duration(
                            prost_types::Duration {
                                seconds: 30 * 86400,
                                nanos: 0,
                            },
                        )),
                        justification: "still the billing owner".into(),
                        ..Default::default()
                    },
                ))
                .await
        }
    };
    assert_status(
        renew("ferry").await,
        Code::FailedPrecondition,
        "not expired",
    );
    h.clock.advance(TimeDelta::days(2));
    let done = renew("ferry").await.unwrap().into_inner().request.unwrap();
    assert_eq!(
        done.status(),
        act::RequestStatus::Provisioned,
        "{}",
        done.status_reason
    );
    let again = h
        .assignments()
        .get_assignment(h.req(ADMIN, asg::GetAssignmentRequest { id: a.id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap();
    assert_eq!(again.status(), asg::AssignmentStatus::InEffect);
    // more than 30 days after the end: refused
    h.clock.advance(TimeDelta::days(61));
    assert_status(renew("ferry").await, Code::FailedPrecondition, "30 days");
    h.stop().await;
}

#[tokio::test]
async fn a_provisioning_refused_by_the_assignments_context_ends_failed_with_its_reason() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth"]).await;
    let e = h
        .assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.set_activation(
        BILLING,
        asg::ActivationSettings {
            require_mfa: Some(false),
            require_approval: Some(true),
            approval: Some(asg::ApprovalSettings {
                stages: vec![asg::ApprovalStage {
                    approvers: vec![user_ref("kenneth")],
                    required_approvals: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let r = ask(&h, "ferry", item(BILLING)).await;
    // The eligibility is removed while the request waits: approval cannot provision.
    h.assignments()
        .remove_assignment(h.req(
            ADMIN,
            asg::RemoveAssignmentRequest {
                id: e.id.clone(),
                justification: "left".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let after = approve(&h, "kenneth", &r.id).await.unwrap();
    assert_eq!(after.status(), act::RequestStatus::Failed);
    assert!(
        after.status_reason.contains("eligibility was removed"),
        "{}",
        after.status_reason
    );
    assert!(!h.allowed("ferry", BILLING, "/").await);
    h.stop().await;
}

/// The RequestProvisioned events of the activation log, by request id.
async fn provisioned_events(h: &Harness) -> std::collections::HashMap<String, Vec<act::Event>> {
    let engine = h.contexts.activation.as_ref().unwrap().engine.clone();
    let mut by_request: std::collections::HashMap<String, Vec<act::Event>> =
        std::collections::HashMap::new();
    let mut after = 0;
    loop {
        let page = engine.log.read_after(after, 10_000).await.unwrap();
        let Some(last) = page.last() else {
            return by_request;
        };
        after = last.meta.as_ref().unwrap().sequence;
        for e in page {
            if let Some(act::event::Payload::RequestProvisioned(p)) = &e.payload {
                let id = p.request.as_ref().unwrap().id.clone();
                by_request.entry(id).or_default().push(e);
            }
        }
    }
}

/// Waits (bounded by real time, polling) until `ids` are all PROVISIONED; returns how
/// long it took.
async fn wait_all_provisioned(h: &Harness, ids: &[String]) -> std::time::Duration {
    let engine = h.contexts.activation.as_ref().unwrap().engine.clone();
    let began = std::time::Instant::now();
    let mut done = 0;
    while began.elapsed() < std::time::Duration::from_secs(120) {
        done = 0;
        for id in ids {
            let s = tenure_activation::store::get(&engine.db, id)
                .await
                .unwrap()
                .unwrap();
            if s.request.status() == act::RequestStatus::Provisioned {
                done += 1;
            }
        }
        if done == ids.len() {
            return began.elapsed();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "only {done} of {} requests were provisioned within 120 s",
        ids.len()
    );
}

#[tokio::test]
async fn two_hundred_scheduled_starts_at_one_instant_are_each_provisioned_once_at_their_start() {
    use futures::StreamExt as _;
    const FIRST: usize = 200;
    const SECOND: usize = 50;
    // Many principals each activate once; the per-principal rate limit is not the
    // subject here (the administrator makes 250 assignments).
    let h = Harness::start_with(|c| c.limits.mutations_per_principal_per_sec = 0).await;
    let people: Vec<String> = (0..FIRST + SECOND).map(|i| format!("p{i:03}")).collect();
    let refs: Vec<&str> = people.iter().map(String::as_str).collect();
    h.seed_users(&refs).await;
    futures::stream::iter(&people)
        .for_each_concurrent(8, |p| {
            let h = &h;
            async move {
                h.assign(AssignmentType::Eligible, p, BILLING, "/").await;
            }
        })
        .await;
    h.set_activation(
        BILLING,
        asg::ActivationSettings {
            require_mfa: Some(false),
            ..Default::default()
        },
    )
    .await;
    let start = h.clock.now() + TimeDelta::hours(1);
    let later = start + TimeDelta::seconds(1);
    let requests: Vec<(String, act::Request)> = futures::stream::iter(people.iter().enumerate())
        .map(|(n, p)| {
            let h = &h;
            async move {
                let mut i = item(BILLING);
                i.start_time = Some(to_proto(if n < FIRST { start } else { later }));
                (p.clone(), ask(h, p, i).await)
            }
        })
        .buffered(8)
        .collect()
        .await;
    for (p, r) in &requests {
        assert_eq!(r.status(), act::RequestStatus::Granted, "{p}: {r:?}");
    }
    let (first, second) = requests.split_at(FIRST);
    let first_ids: Vec<String> = first.iter().map(|(_, r)| r.id.clone()).collect();
    let second_ids: Vec<String> = second.iter().map(|(_, r)| r.id.clone()).collect();

    // The first group's start comes: all 200 are provisioned.
    h.clock.set(start);
    let took = wait_all_provisioned(&h, &first_ids).await;
    eprintln!(
        "{FIRST} scheduled starts provisioned in {took:?} of real time (backend: {})",
        if std::env::var("TENURE_TEST_DATABASE_URL").is_ok() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    for (p, _) in first {
        assert!(h.allowed(p, BILLING, "/").await, "{p} holds the role");
    }
    // The second group, a second later, not yet.
    let engine = h.contexts.activation.as_ref().unwrap().engine.clone();
    for (p, r) in second {
        let s = tenure_activation::store::get(&engine.db, &r.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.request.status(), act::RequestStatus::Granted, "{p}");
        assert!(!h.allowed(p, BILLING, "/").await, "{p} before its start");
    }
    h.clock.set(later);
    wait_all_provisioned(&h, &second_ids).await;
    for (p, _) in second {
        assert!(h.allowed(p, BILLING, "/").await, "{p} holds the role");
    }

    // Each request was provisioned exactly once, at (not before) its start.
    let events = provisioned_events(&h).await;
    assert_eq!(events.len(), FIRST + SECOND);
    for (n, (p, r)) in requests.iter().enumerate() {
        let due = if n < FIRST { start } else { later };
        let evs = events.get(&r.id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(evs.len(), 1, "{p}: one RequestProvisioned, got {evs:?}");
        let at = evs[0].meta.as_ref().unwrap().occurred_at.as_ref().unwrap();
        assert!(
            tenure_platform::clock::from_proto(at).unwrap() >= due,
            "{p} provisioned at {at:?}, before its start {due}"
        );
    }
    // and the assignments context made one instance each, starting at the start.
    let mut instances: std::collections::HashMap<String, Vec<asg::Instance>> =
        std::collections::HashMap::new();
    for e in h.events_after(0).await {
        if let Some(asg::event::Payload::InstanceActivated(a)) = e.payload {
            let i = a.instance.unwrap();
            instances.entry(i.request_id.clone()).or_default().push(i);
        }
    }
    assert_eq!(instances.len(), FIRST + SECOND);
    for (n, (p, r)) in requests.iter().enumerate() {
        let due = if n < FIRST { start } else { later };
        let is = instances.get(&r.id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(is.len(), 1, "{p}: one instance, got {is:?}");
        assert_eq!(
            is[0]
                .start_time
                .as_ref()
                .and_then(tenure_platform::clock::from_proto),
            Some(due),
            "{p}"
        );
    }
    h.stop().await;
}
