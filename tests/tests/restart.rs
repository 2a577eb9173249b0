//! A restart in the middle of things: a pending approval and an active activation
//! survive it; the approval completes after it; what ended while the server was down is
//! processed at once when it comes back; nothing is lost or duplicated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::TimeDelta;
use tenure_e2e::harness::*;
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalRef, PrincipalType};

fn item(role: &str, hours: i64) -> act::ActivateRolesRequest {
    act::ActivateRolesRequest {
        items: vec![act::ActivationItem {
            role_id: role.into(),
            scope_id: "/".into(),
            justification: "work".into(),
            duration: Some(prost_types::Duration {
                seconds: hours * 3600,
                nanos: 0,
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_restart_loses_nothing_and_ends_what_ended_while_down() {
    let mut h = Harness::start().await;
    h.seed_users(&["ferry", "kenneth"]).await;
    h.assign(
        AssignmentType::Eligible,
        "ferry",
        "billing-administrator",
        "/",
    )
    .await;
    h.assign(
        AssignmentType::Eligible,
        "ferry",
        "exchange-administrator",
        "/",
    )
    .await;
    h.set_activation(
        "exchange-administrator",
        asg::ActivationSettings {
            require_mfa: Some(false),
            ..Default::default()
        },
    )
    .await;
    h.set_activation(
        "billing-administrator",
        asg::ActivationSettings {
            require_mfa: Some(false),
            require_approval: Some(true),
            approval: Some(asg::ApprovalSettings {
                stages: vec![asg::ApprovalStage {
                    approvers: vec![PrincipalRef {
                        id: "kenneth".into(),
                        r#type: PrincipalType::User.into(),
                        ..Default::default()
                    }],
                    required_approvals: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let active = h
        .activation()
        .activate_roles(h.req("ferry", item("exchange-administrator", 1)))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap();
    let pending = h
        .activation()
        .activate_roles(h.req("ferry", item("billing-administrator", 2)))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .request
        .clone()
        .unwrap();
    assert!(h.allowed("ferry", "exchange-administrator", "/").await);
    let asg_head = h.core().log.head();

    h.restart().await;
    // Both survive the restart.
    assert!(h.allowed("ferry", "exchange-administrator", "/").await);
    let p = h
        .activation()
        .get_request(h.req(
            "ferry",
            act::GetRequestRequest {
                id: pending.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(p.status(), act::RequestStatus::PendingApproval);
    assert_eq!(
        h.core().log.head(),
        asg_head,
        "the restart wrote nothing by itself"
    );
    // The approval completes after the restart.
    let ok = h
        .activation()
        .approve_request(h.req(
            "kenneth",
            act::ApproveRequestRequest {
                id: pending.id.clone(),
                justification: "ok".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(ok.status(), act::RequestStatus::Provisioned);

    // The server goes down; meanwhile the first activation's end passes.
    let stop_head = h.core().log.head();
    h.clock.advance(TimeDelta::minutes(61));
    h.restart().await;
    // Never allowed after its end, from the first call after the restart.
    assert!(!h.allowed("ferry", "exchange-administrator", "/").await);
    // And its expiry is processed at once: the event, and the request ends.
    let expired = h.wait_event(stop_head, "InstanceExpired").await;
    assert_eq!(expired.meta.unwrap().correlation_id, active.id);
    for _ in 0..500 {
        let r = h
            .activation()
            .get_request(h.req(
                "ferry",
                act::GetRequestRequest {
                    id: active.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap();
        if r.status() == act::RequestStatus::Ended {
            // Exactly one expiry event per instance, restarts or not.
            let all = h.events_after(0).await;
            let n = all
                .iter()
                .filter(|e| {
                    e.meta.as_ref().unwrap().r#type.ends_with("InstanceExpired")
                        && e.meta.as_ref().unwrap().correlation_id == active.id
                })
                .count();
            assert_eq!(n, 1);
            h.stop().await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the activation did not end after the restart");
}
