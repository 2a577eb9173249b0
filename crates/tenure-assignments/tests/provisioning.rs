//! The internal provisioning API the activation context uses: idempotent by request id,
//! bounded by the eligibility, effective at once, extended, ended early, and ended
//! exactly at its end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/src/harness.rs"]
mod common;

use chrono::TimeDelta;
use common::*;
use tenure_platform::clock::{Clock as _, to_proto};
use tenure_proto::assignments::v1 as pb;
use tenure_proto::common::v1::{AssignmentType, PrincipalType};
use tonic::Code;

const SYSTEM: &str = "tenure-system";
const BILLING: &str = "billing-administrator";

fn provision(
    h: &Harness,
    request_id: &str,
    eligibility: &str,
    principal: &str,
    hours: i64,
) -> pb::ProvisionActivationRequest {
    let now = h.clock.now();
    pb::ProvisionActivationRequest {
        request_id: request_id.into(),
        eligibility_id: eligibility.into(),
        principal_id: principal.into(),
        role_id: BILLING.into(),
        scope_id: "/".into(),
        start_time: Some(to_proto(now)),
        end_time: Some(to_proto(now + TimeDelta::hours(hours))),
        justification: "month-end invoices".into(),
        ticket: None,
        actor_id: principal.into(),
    }
}

#[tokio::test]
async fn an_activation_takes_effect_at_once_once_per_request_id_and_ends_exactly() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let e = h
        .assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    let head = h.core().log.head();
    let r = provision(&h, "act-1", &e.id, "ferry", 2);
    let first = h
        .provisioning()
        .provision_activation(h.req(SYSTEM, r.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        h.allowed("ferry", BILLING, "/").await,
        "allowed right after the reply"
    );
    let again = h
        .provisioning()
        .provision_activation(h.req(SYSTEM, r.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.instance.as_ref().unwrap().id,
        again.instance.as_ref().unwrap().id
    );
    let activated: Vec<_> = h
        .events_after(head)
        .await
        .into_iter()
        .filter(|e| {
            e.meta
                .as_ref()
                .unwrap()
                .r#type
                .ends_with("InstanceActivated")
        })
        .collect();
    assert_eq!(activated.len(), 1, "provisioned once");
    assert_eq!(activated[0].meta.as_ref().unwrap().correlation_id, "act-1");
    assert_eq!(activated[0].meta.as_ref().unwrap().actor, "ferry");
    // exact end
    let end = tenure_platform::clock::from_proto(
        first.instance.as_ref().unwrap().end_time.as_ref().unwrap(),
    )
    .unwrap();
    h.clock.set(end - TimeDelta::microseconds(1));
    assert!(h.allowed("ferry", BILLING, "/").await);
    let head = h.core().log.head();
    h.clock.set(end);
    assert!(
        !h.allowed("ferry", BILLING, "/").await,
        "never allowed at or after the end"
    );
    let expired = h.wait_event(head, "InstanceExpired").await;
    assert_eq!(expired.meta.unwrap().correlation_id, "act-1");
    h.stop().await;
}

#[tokio::test]
async fn extend_and_end_early_with_idempotent_ending() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let e = h
        .assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    let p = h
        .provisioning()
        .provision_activation(h.req(SYSTEM, provision(&h, "act-1", &e.id, "ferry", 1)))
        .await
        .unwrap()
        .into_inner();
    let old_end = p.instance.unwrap().end_time.unwrap();
    let ext = h
        .provisioning()
        .extend_activation(h.req(
            SYSTEM,
            pb::ExtendActivationRequest {
                request_id: "ext-1".into(),
                activation_request_id: "act-1".into(),
                new_end_time: Some(prost_types::Timestamp {
                    seconds: old_end.seconds + 3600,
                    nanos: 0,
                }),
                justification: "more invoices".into(),
                actor_id: "ferry".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ext.instance.unwrap().end_time.unwrap().seconds,
        old_end.seconds + 3600
    );
    assert_status(
        h.provisioning()
            .extend_activation(h.req(
                SYSTEM,
                pb::ExtendActivationRequest {
                    request_id: "ext-2".into(),
                    activation_request_id: "act-1".into(),
                    new_end_time: Some(old_end),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
        "not after the current end",
    );
    let end = |id: &str| pb::EndActivationRequest {
        request_id: id.into(),
        reason: pb::InstanceEndReason::Deactivated.into(),
        justification: "done".into(),
        actor_id: "ferry".into(),
    };
    let ended = h
        .provisioning()
        .end_activation(h.req(SYSTEM, end("act-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.instance.unwrap().status(), pb::InstanceStatus::Ended);
    assert!(!h.allowed("ferry", BILLING, "/").await);
    let head = h.core().log.head();
    h.provisioning()
        .end_activation(h.req(SYSTEM, end("act-1")))
        .await
        .unwrap();
    assert!(
        h.events_after(head).await.is_empty(),
        "ending twice changes nothing"
    );
    assert_status(
        h.provisioning()
            .end_activation(h.req(SYSTEM, end("nope")))
            .await,
        Code::NotFound,
        "nope",
    );
    let mut bad = end("act-1");
    bad.reason = pb::InstanceEndReason::Expired.into();
    assert_status(
        h.provisioning().end_activation(h.req(SYSTEM, bad)).await,
        Code::InvalidArgument,
        "reason",
    );
    h.stop().await;
}

#[tokio::test]
async fn provisioning_is_bounded_by_the_eligibility_and_only_for_tenure_itself() {
    let h = Harness::start().await;
    h.seed_principals(&[
        ("ferry", PrincipalType::User),
        ("eve", PrincipalType::User),
        ("billing", PrincipalType::Group),
    ])
    .await;
    h.seed_membership("billing", "ferry").await;
    let e = h
        .assign(AssignmentType::Eligible, "billing", BILLING, "/")
        .await;
    // through the group works, and the event says so
    let head = h.core().log.head();
    h.provisioning()
        .provision_activation(h.req(SYSTEM, provision(&h, "act-g", &e.id, "ferry", 1)))
        .await
        .unwrap();
    match h
        .wait_event(head, "InstanceActivated")
        .await
        .payload
        .unwrap()
    {
        pb::event::Payload::InstanceActivated(x) => {
            assert_eq!(x.via_group.unwrap().id, "billing");
        }
        other => panic!("unexpected {other:?}"),
    }
    // a principal the eligibility does not cover
    assert_status(
        h.provisioning()
            .provision_activation(h.req(SYSTEM, provision(&h, "act-e", &e.id, "eve", 1)))
            .await,
        Code::PermissionDenied,
        "cover",
    );
    // longer than the eligibility
    let mut long = provision(&h, "act-l", &e.id, "ferry", 1);
    long.end_time = Some(to_proto(h.clock.now() + TimeDelta::days(400)));
    long.start_time = Some(to_proto(
        h.clock.now() + TimeDelta::days(400) - TimeDelta::hours(2),
    ));
    assert_status(
        h.provisioning()
            .provision_activation(h.req(SYSTEM, long))
            .await,
        Code::FailedPrecondition,
        "in effect only until",
    );
    // windows over 24 h and end before start
    let mut w = provision(&h, "act-w", &e.id, "ferry", 30);
    assert_status(
        h.provisioning()
            .provision_activation(h.req(SYSTEM, w.clone()))
            .await,
        Code::InvalidArgument,
        "24 hours",
    );
    w.end_time = w.start_time;
    assert_status(
        h.provisioning()
            .provision_activation(h.req(SYSTEM, w))
            .await,
        Code::InvalidArgument,
        "end_time",
    );
    // an overlapping second activation of the same role and scope
    assert_status(
        h.provisioning()
            .provision_activation(h.req(SYSTEM, provision(&h, "act-2", &e.id, "ferry", 1)))
            .await,
        Code::FailedPrecondition,
        "act-g",
    );
    // only Tenure's services (or holders of tenure/provisioning/write) may call
    assert_status(
        h.provisioning()
            .provision_activation(h.req("ferry", provision(&h, "act-x", &e.id, "ferry", 1)))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        h.provisioning()
            .provision_activation(h.req(SYSTEM, provision(&h, "act-n", "no-such", "ferry", 1)))
            .await,
        Code::NotFound,
        "no-such",
    );
    h.stop().await;
}

#[tokio::test]
async fn removing_an_eligibility_ends_its_activations() {
    let h = Harness::start().await;
    h.seed_users(&["ferry"]).await;
    let e = h
        .assign(AssignmentType::Eligible, "ferry", BILLING, "/")
        .await;
    h.provisioning()
        .provision_activation(h.req(SYSTEM, provision(&h, "act-1", &e.id, "ferry", 1)))
        .await
        .unwrap();
    let r = h
        .assignments()
        .remove_assignment(h.req(
            ADMIN,
            pb::RemoveAssignmentRequest {
                id: e.id.clone(),
                justification: "no longer needed".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ended_instance_ids.len(), 1);
    assert!(!h.allowed("ferry", BILLING, "/").await);
    h.stop().await;
}

#[tokio::test]
async fn a_burst_of_ends_expires_in_batches_each_exactly_once() {
    use tenure_assignments::expiry::{BATCH, Pass, process_due};
    let h = Harness::start().await;
    // Two and a half batches of activations ending at the same instant, and one later.
    let n = 2 * BATCH + BATCH / 2;
    let users: Vec<String> = (0..=n).map(|i| format!("u{i:04}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    h.seed_users(&refs).await;
    for (i, u) in users.iter().enumerate() {
        let e = h.assign(AssignmentType::Eligible, u, BILLING, "/").await;
        let hours = if i == n { 3 } else { 2 };
        h.provisioning()
            .provision_activation(h.req(
                SYSTEM,
                provision(&h, &format!("burst-{i}"), &e.id, u, hours),
            ))
            .await
            .unwrap();
    }
    let end = h.clock.now() + TimeDelta::hours(2);
    let head = h.core().log.head();
    // As of the common end, while the clock (and so the timer) is still before it.
    let pass = process_due(&h.core(), end).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            expired: n,
            units: n.div_ceil(BATCH)
        },
        "one unit of work per batch"
    );
    assert_eq!(
        process_due(&h.core(), end).await.unwrap(),
        Pass::default(),
        "nothing is expired twice"
    );
    let mut ids: Vec<String> = h
        .events_after(head)
        .await
        .into_iter()
        .filter(|e| e.meta.as_ref().unwrap().r#type.ends_with("InstanceExpired"))
        .map(|e| e.meta.unwrap().correlation_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "each ended activation has its event once");
    assert!(
        !ids.contains(&format!("burst-{n}")),
        "the one ending later is not expired"
    );
    h.stop().await;
}
