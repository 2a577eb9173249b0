//! The activation and approval context through the real server, across contexts: the
//! field report's story (Ferry, approved by Kenneth), several roles at once with an MFA
//! step-up, every check's failure, the approval rules, timeouts, and early ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::TimeDelta;
use tenure_e2e::harness::*;
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

fn activate(items: Vec<act::ActivationItem>) -> act::ActivateRolesRequest {
    act::ActivateRolesRequest {
        items,
        ..Default::default()
    }
}

async fn request_events(h: &Harness, request_id: &str) -> Vec<String> {
    let engine = h.contexts.activation.as_ref().unwrap().engine.clone();
    engine
        .log
        .read_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.meta.as_ref().unwrap().subject == request_id)
        .map(|e| {
            e.meta
                .unwrap()
                .r#type
                .rsplit('.')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_field_report_story_ferry_activates_kenneth_approves_it_ends_on_time() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth"]).await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.set_activation(BILLING, approval_by(&["kenneth"])).await;

    // Ferry asks, with a justification: pending Kenneth's approval.
    let resp = h
        .activation()
        .activate_roles(h.req_mfa("ferry", activate(vec![item(BILLING)])))
        .await
        .unwrap()
        .into_inner();
    let r = resp.results[0].request.clone().unwrap();
    assert_eq!(resp.results[0].outcome(), act::ItemOutcome::PendingApproval);
    assert_eq!(r.status(), act::RequestStatus::PendingApproval);
    assert!(!h.allowed("ferry", BILLING, "/").await);
    // Kenneth sees it waiting for him, and approves.
    let waiting = h
        .activation()
        .list_requests(h.req(
            "kenneth",
            act::ListRequestsRequest {
                relation: act::RequestRelation::AwaitingMyApproval.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].id, r.id);
    let approved = h
        .activation()
        .approve_request(h.req(
            "kenneth",
            act::ApproveRequestRequest {
                id: r.id.clone(),
                justification: "ok for month end".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(
        approved.status(),
        act::RequestStatus::Provisioned,
        "{}",
        approved.status_reason
    );
    // Ferry holds the role at once.
    assert!(h.allowed("ferry", BILLING, "/").await);
    // The four steps of the field report's audit are on the stream.
    let steps = request_events(&h, &r.id).await;
    for step in [
        "RequestCreated",
        "ApprovalRequested",
        "RequestApproved",
        "RequestProvisioned",
    ] {
        assert!(
            steps.contains(&step.to_owned()),
            "{step} missing from {steps:?}"
        );
    }
    // It ends exactly at its end (8 h by default).
    let end = tenure_platform::clock::from_proto(approved.end_time.as_ref().unwrap()).unwrap();
    assert_eq!(
        end - tenure_platform::clock::from_proto(approved.start_time.as_ref().unwrap()).unwrap(),
        TimeDelta::hours(8)
    );
    h.clock.set(end - TimeDelta::microseconds(1));
    assert!(h.allowed("ferry", BILLING, "/").await);
    h.clock.set(end);
    assert!(!h.allowed("ferry", BILLING, "/").await);
    // and the activation context hears of it from the assignments stream
    for _ in 0..500 {
        let s = h
            .activation()
            .get_request(h.req("ferry", act::GetRequestRequest { id: r.id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap();
        if s.status() == act::RequestStatus::Ended {
            assert_eq!(s.end_reason(), act::EndReason::Expired);
            h.stop().await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the request did not end");
}

#[tokio::test]
async fn three_roles_at_once_one_needing_mfa_all_or_nothing() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let roles = [
        "billing-administrator",
        "exchange-administrator",
        "user-administrator",
    ];
    for r in roles {
        h.assign(AssignmentType::Eligible, "ferry", r, "/").await;
    }
    for r in &roles[..2] {
        h.set_activation(
            r,
            asg::ActivationSettings {
                require_mfa: Some(false),
                ..Default::default()
            },
        )
        .await;
    }
    // user-administrator keeps the built-in "MFA required".
    let items = || roles.iter().map(|r| item(r)).collect::<Vec<_>>();
    let head = h.contexts.activation.as_ref().unwrap().log.head();
    let err = h
        .activation()
        .activate_roles(h.req("ferry", activate(items())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("MFA_STEP_UP_REQUIRED"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("items[2]"),
        "names the failing item: {}",
        err.message()
    );
    assert_eq!(
        h.contexts.activation.as_ref().unwrap().log.head(),
        head,
        "nothing written"
    );
    for r in roles {
        assert!(!h.allowed("ferry", r, "/").await);
    }
    // with MFA all three are active
    let resp = h
        .activation()
        .activate_roles(h.req_mfa("ferry", activate(items())))
        .await
        .unwrap()
        .into_inner();
    assert!(
        resp.results
            .iter()
            .all(|r| r.outcome() == act::ItemOutcome::Provisioned),
        "{resp:?}"
    );
    for r in roles {
        assert!(h.allowed("ferry", r, "/").await);
    }
    // and all end on time
    h.clock.advance(TimeDelta::hours(8));
    for r in roles {
        assert!(!h.allowed("ferry", r, "/").await);
    }
    h.stop().await;
}

#[tokio::test]
async fn each_check_fails_clearly_and_partial_and_dry_run_behave() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.set_activation(
        BILLING,
        asg::ActivationSettings {
            require_mfa: Some(false),
            require_ticket: Some(true),
            ..Default::default()
        },
    )
    .await;
    let a = || h.activation();
    // not eligible
    assert_status(
        a().activate_roles(h.req_mfa("ferry", activate(vec![item("global-administrator")])))
            .await,
        Code::PermissionDenied,
        "not eligible",
    );
    // unknown role
    assert_status(
        a().activate_roles(h.req_mfa("ferry", activate(vec![item("no-such-role")])))
            .await,
        Code::NotFound,
        "",
    );
    // missing justification and ticket: INVALID_ARGUMENT naming the item and field
    let mut i = item(BILLING);
    i.justification.clear();
    let s = assert_status(
        a().activate_roles(h.req_mfa("ferry", activate(vec![i])))
            .await,
        Code::InvalidArgument,
        "items[0].justification",
    );
    assert!(s.message().contains("items[0].ticket.ticket_number"));
    // over the maximum
    let mut i = item(BILLING);
    i.ticket = Some(tenure_proto::common::v1::TicketInfo {
        ticket_number: "CHG-1".into(),
        ticket_system: "sn".into(),
    });
    i.duration = Some(prost_types::Duration {
        seconds: 9 * 3600,
        nanos: 0,
    });
    assert_status(
        a().activate_roles(h.req_mfa("ferry", activate(vec![i.clone()])))
            .await,
        Code::InvalidArgument,
        "maximum activation duration of 480 minutes",
    );
    // empty and oversized requests
    assert_status(
        a().activate_roles(h.req_mfa("ferry", activate(vec![])))
            .await,
        Code::InvalidArgument,
        "items",
    );
    // dry run: answers, writes nothing
    i.duration = None;
    let head = h.contexts.activation.as_ref().unwrap().log.head();
    let mut dry = activate(vec![i.clone(), item("global-administrator")]);
    dry.validate_only = true;
    let d = a()
        .activate_roles(h.req_mfa("ferry", dry))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.results[0].outcome(), act::ItemOutcome::Provisioned);
    assert!(d.results[0].requirements.as_ref().unwrap().ticket_required);
    assert_eq!(d.results[1].outcome(), act::ItemOutcome::Failed);
    assert_eq!(
        d.results[1].violations[0].rule(),
        act::CheckRule::NotEligible
    );
    assert_eq!(h.contexts.activation.as_ref().unwrap().log.head(), head);
    // partial: the passing item is granted, the other reported
    let mut p = activate(vec![i.clone(), item("global-administrator")]);
    p.partial = true;
    let pr = a()
        .activate_roles(h.req_mfa("ferry", p))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pr.results[0].outcome(), act::ItemOutcome::Provisioned);
    assert_eq!(pr.results[1].outcome(), act::ItemOutcome::Failed);
    assert!(h.allowed("ferry", BILLING, "/").await);
    // overlapping: names the request to extend
    let s = assert_status(
        a().activate_roles(h.req_mfa("ferry", activate(vec![i])))
            .await,
        Code::FailedPrecondition,
        "extend it instead",
    );
    assert!(
        s.message()
            .contains(&pr.results[0].request.as_ref().unwrap().id)
    );
    h.stop().await;
}

#[tokio::test]
async fn approval_rules_self_non_approver_twice_closed_and_racing_approvers() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth", "lisa", "eve"]).await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    // Ferry is also named approver: he is left out of his own request's approvers.
    h.set_activation(BILLING, approval_by(&["kenneth", "lisa", "ferry"]))
        .await;
    let r = h
        .activation()
        .activate_roles(h.req("ferry", activate(vec![item(BILLING)])))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap();
    let approvers: Vec<&str> = r.stages[0]
        .approvers
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(approvers, vec!["kenneth", "lisa"]);
    let approve = |who: &str| {
        let h = &h;
        let id = r.id.clone();
        let who = who.to_owned();
        async move {
            h.activation()
                .approve_request(h.req(
                    &who,
                    act::ApproveRequestRequest {
                        id,
                        justification: "fine".into(),
                        request_id: String::new(),
                    },
                ))
                .await
        }
    };
    assert_status(
        approve("ferry").await,
        Code::PermissionDenied,
        "own request",
    );
    assert_status(
        approve("eve").await,
        Code::PermissionDenied,
        "not an approver",
    );
    assert_status(
        h.activation()
            .approve_request(h.req(
                "kenneth",
                act::ApproveRequestRequest {
                    id: r.id.clone(),
                    justification: String::new(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "justification",
    );
    // Kenneth and Lisa at once: one decision stands, the other is told clearly.
    let (a, b) = tokio::join!(approve("kenneth"), approve("lisa"));
    let oks = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
    assert_eq!(oks, 1, "exactly one approval stands: {a:?} / {b:?}");
    let loser = match (a, b) {
        (Err(e), _) | (_, Err(e)) => e,
        _ => unreachable!("one of them failed"),
    };
    assert_eq!(loser.code(), Code::FailedPrecondition);
    assert!(
        loser.message().contains("REQUEST_ALREADY_DECIDED"),
        "{}",
        loser.message()
    );
    // a closed request cannot be decided again
    assert_status(
        approve("kenneth").await,
        Code::FailedPrecondition,
        "REQUEST_ALREADY_DECIDED",
    );
    assert!(h.allowed("ferry", BILLING, "/").await);
    // unknown request
    assert_status(
        h.activation()
            .approve_request(h.req(
                "kenneth",
                act::ApproveRequestRequest {
                    id: "nope".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
        "nope",
    );
    // and Eve cannot read the request
    assert_status(
        h.activation()
            .get_request(h.req("eve", act::GetRequestRequest { id: r.id.clone() }))
            .await,
        Code::NotFound,
        "",
    );
    h.stop().await;
}

#[tokio::test]
async fn a_deny_ends_the_request_and_pending_requests_time_out_after_24_hours() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth"]).await;
    h.assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.assign(
        AssignmentType::Eligible,
        "ferry",
        "exchange-administrator",
        "/",
    )
    .await;
    h.set_activation(BILLING, approval_by(&["kenneth"])).await;
    h.set_activation("exchange-administrator", approval_by(&["kenneth"]))
        .await;
    let r1 = h
        .activation()
        .activate_roles(h.req("ferry", activate(vec![item(BILLING)])))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap();
    let denied = h
        .activation()
        .deny_request(h.req(
            "kenneth",
            act::DenyRequestRequest {
                id: r1.id.clone(),
                justification: "not this month".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(denied.status(), act::RequestStatus::Denied);
    let r2 = h
        .activation()
        .activate_roles(h.req("ferry", activate(vec![item("exchange-administrator")])))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap();
    h.clock.advance(TimeDelta::hours(24));
    for _ in 0..500 {
        let s = h
            .activation()
            .get_request(h.req("ferry", act::GetRequestRequest { id: r2.id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap();
        if s.status() == act::RequestStatus::TimedOut {
            assert!(s.status_reason.contains("timeout"));
            assert!(
                request_events(&h, &r2.id)
                    .await
                    .contains(&"RequestTimedOut".to_owned())
            );
            h.stop().await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the request did not time out");
}

#[tokio::test]
async fn deactivate_early_cancel_pending_and_extend() {
    let h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth"]).await;
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
    i.duration = Some(prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    });
    let r = h
        .activation()
        .activate_roles(h.req("ferry", activate(vec![i])))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap();
    assert!(h.allowed("ferry", BILLING, "/").await);
    let stored = h
        .activation()
        .get_request(h.req("ferry", act::GetRequestRequest { id: r.id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(
        stored.status(),
        act::RequestStatus::Provisioned,
        "{}",
        stored.status_reason
    );
    // extend by an hour (no approval needed)
    let ext = h
        .activation()
        .extend_activation(h.req(
            "ferry",
            act::ExtendActivationRequest {
                activation_request_id: r.id.clone(),
                expiration: Some(act::extend_activation_request::Expiration::ExtendBy(
                    prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    },
                )),
                justification: "longer close".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(ext.status(), act::RequestStatus::Provisioned);
    h.clock.advance(TimeDelta::minutes(90));
    assert!(
        h.allowed("ferry", BILLING, "/").await,
        "extended beyond the first hour"
    );
    // Kenneth may not deactivate Ferry's role; Ferry may.
    assert_status(
        h.activation()
            .deactivate_role(h.req(
                "kenneth",
                act::DeactivateRoleRequest {
                    activation_request_id: r.id.clone(),
                    request_id: String::new(),
                },
            ))
            .await,
        Code::PermissionDenied,
        "holder",
    );
    let d = h
        .activation()
        .deactivate_role(h.req(
            "ferry",
            act::DeactivateRoleRequest {
                activation_request_id: r.id.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(d.status(), act::RequestStatus::Ended);
    assert_eq!(d.end_reason(), act::EndReason::Deactivated);
    assert!(!h.allowed("ferry", BILLING, "/").await);
    // cancel a pending request; cancelling again is refused naming its status
    h.set_activation(BILLING, approval_by(&["kenneth"])).await;
    let p = h
        .activation()
        .activate_roles(h.req("ferry", activate(vec![item(BILLING)])))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap();
    assert_status(
        h.activation()
            .cancel_request(h.req(
                "kenneth",
                act::CancelRequestRequest {
                    id: p.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "requestor",
    );
    let c = h
        .activation()
        .cancel_request(h.req(
            "ferry",
            act::CancelRequestRequest {
                id: p.id.clone(),
                reason: "not needed".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(c.status(), act::RequestStatus::Canceled);
    assert_status(
        h.activation()
            .cancel_request(h.req(
                "ferry",
                act::CancelRequestRequest {
                    id: p.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
        "CANCELED",
    );
    h.stop().await;
}
