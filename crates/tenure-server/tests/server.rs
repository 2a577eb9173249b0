//! The real server in-process on 127.0.0.1:0, through real gRPC clients: health for every
//! service, reflection in both versions, authentication, each context's event stream
//! (replay, then live), and the ordered shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tenure_platform::clock::SystemClock;
use tenure_platform::config::Config;
use tenure_platform::events::NewEvent;
use tenure_platform::testing::TestDb;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::devauth::v1 as devauth;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Running {
    addr: std::net::SocketAddr,
    contexts: tenure_server::Contexts,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        database_url: Some(db.url.clone()),
        ..Config::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, contexts, task) = tenure_server::spawn(
        config,
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .unwrap();
    Running {
        addr,
        contexts,
        stop,
        task,
        _db: db,
        _dir: dir,
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn token(ch: &Channel, subject: &str) -> String {
    let mut c = devauth::dev_auth_service_client::DevAuthServiceClient::new(ch.clone());
    c.issue_token(devauth::IssueTokenRequest {
        subject: subject.into(),
        mfa: false,
        ttl: None,
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

const SERVICES: &[&str] = &[
    "",
    "tenure.assignments.v1.EventsService",
    "tenure.assignments.v1.AccessService",
    "tenure.assignments.v1.AssignmentsService",
    "tenure.assignments.v1.PrincipalsService",
    "tenure.assignments.v1.ProvisioningService",
    "tenure.assignments.v1.RoleSettingsService",
    "tenure.assignments.v1.RoleDefinitionsService",
    "tenure.assignments.v1.ScopesService",
    "tenure.assignments.v1.DriftService",
    "tenure.activation.v1.EventsService",
    "tenure.activation.v1.ActivationService",
    "tenure.reviews.v1.EventsService",
    "tenure.reviews.v1.ReviewsService",
    "tenure.notifications.v1.EventsService",
    "tenure.notifications.v1.NotificationsService",
    "tenure.notifications.v1.AlertsService",
    "tenure.notifications.v1.AuditService",
];

#[tokio::test]
async fn every_context_service_reports_serving() {
    let s = start().await;
    let mut health = HealthClient::new(channel(s.addr).await);
    for name in SERVICES {
        let r = health
            .check(HealthCheckRequest {
                service: (*name).into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.into_inner().status(), ServingStatus::Serving, "{name}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "tenure.nope.v1.X".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    s.stop.cancel();
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn reflection_lists_the_four_packages_in_v1_and_v1alpha() {
    let s = start().await;
    let ch = channel(s.addr).await;

    use tonic_reflection::pb::v1 as r1;
    let mut c = r1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut resp = c
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.next().await.unwrap().unwrap().message_response
    else {
        panic!("not a list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for pkg in [
        "tenure.assignments.v1.",
        "tenure.activation.v1.",
        "tenure.reviews.v1.",
        "tenure.notifications.v1.",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(pkg)),
            "{pkg} missing from {names:?}"
        );
    }

    use tonic_reflection::pb::v1alpha as ra;
    let mut c = ra::server_reflection_client::ServerReflectionClient::new(ch);
    let req = ra::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            ra::server_reflection_request::MessageRequest::FileContainingSymbol(
                "tenure.activation.v1.ActivationService".into(),
            ),
        ),
    };
    let mut resp = c
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    match resp.next().await.unwrap().unwrap().message_response {
        Some(ra::server_reflection_response::MessageResponse::FileDescriptorResponse(f)) => {
            assert!(!f.file_descriptor_proto.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
    s.stop.cancel();
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated_and_non_readers_are_denied() {
    let s = start().await;
    let ch = channel(s.addr).await;
    let mut access = asg::access_service_client::AccessServiceClient::new(ch.clone());
    let err = access
        .check_access(asg::CheckAccessRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = access
        .check_access(authed(asg::CheckAccessRequest::default(), "not.a.token"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let t = token(&ch, "ferry").await;
    // Security alerts are for readers only.
    let mut alerts =
        tenure_proto::notifications::v1::alerts_service_client::AlertsServiceClient::new(
            ch.clone(),
        );
    let err = alerts
        .list_alerts(authed(Default::default(), &t))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // the dev issuer validates its input
    let mut d = devauth::dev_auth_service_client::DevAuthServiceClient::new(ch);
    let err = d
        .issue_token(devauth::IssueTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("subject"));
    s.stop.cancel();
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_subscriber_gets_replayed_then_live_events_and_a_clear_end_on_shutdown() {
    let s = start().await;
    let ch = channel(s.addr).await;
    let nobody = token(&ch, "auditor").await;
    let t = token(&ch, "tenure-system").await;
    let log = s.contexts.assignments.as_ref().unwrap().log.clone();
    // The catalogue seeded at first start is already in the log.
    let base = log.head();
    assert!(
        base >= 20,
        "built-in roles and the root scope are seeded with events"
    );

    let principal = |id: &str| asg::PrincipalSynced {
        principal: Some(asg::Principal {
            id: id.into(),
            display_name: format!("P {id}"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut uow = log.begin().await.unwrap();
    uow.emit(NewEvent::new(principal("ferry"), "idp-sync", "ferry"));
    uow.emit(NewEvent::new(principal("kenneth"), "idp-sync", "kenneth"));
    uow.commit().await.unwrap();

    let mut events = asg::events_service_client::EventsServiceClient::new(ch.clone());
    // The stream carries justifications and who holds what: not for just anyone.
    let denied = events
        .subscribe_events(authed(asg::SubscribeEventsRequest::default(), &nobody))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let bad = events
        .subscribe_events(authed(
            asg::SubscribeEventsRequest {
                after_sequence: -1,
                event_types: vec![],
            },
            &t,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let mut stream = events
        .subscribe_events(authed(
            asg::SubscribeEventsRequest {
                after_sequence: base,
                event_types: vec![],
            },
            &t,
        ))
        .await
        .unwrap()
        .into_inner();
    let e1 = next_event(&mut stream).await;
    let m1 = e1.meta.clone().unwrap();
    assert_eq!(
        (m1.sequence, m1.context.as_str(), m1.r#type.as_str()),
        (
            base + 1,
            "assignments",
            "tenure.assignments.v1.PrincipalSynced"
        )
    );
    assert_eq!(
        next_event(&mut stream).await.meta.unwrap().subject,
        "kenneth"
    );

    let mut uow = log.begin().await.unwrap();
    uow.emit(NewEvent::new(principal("eve"), "idp-sync", "eve"));
    uow.commit().await.unwrap();
    let live = next_event(&mut stream).await;
    assert_eq!(live.meta.unwrap().sequence, base + 3);
    match live.payload.unwrap() {
        asg::event::Payload::PrincipalSynced(p) => assert_eq!(p.principal.unwrap().id, "eve"),
        other => panic!("unexpected {other:?}"),
    }

    // Shutdown ends the stream with UNAVAILABLE (so the client reconnects) and the
    // server drains and stops.
    s.stop.cancel();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap();
    match end {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

async fn next_event(s: &mut tonic::Streaming<asg::SubscribeEventsResponse>) -> asg::Event {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("no event within 10 s")
        .expect("stream ended")
        .expect("stream error")
        .event
        .expect("empty response")
}
