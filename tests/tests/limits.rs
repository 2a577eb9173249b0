//! The server's protective limits, each a test: a request over the decode limit is
//! refused whole (and writes nothing); a response over the encode limit gets a clear
//! status; requests beyond the concurrency limit are refused at once instead of
//! queueing; mutations are rate limited per principal; streams per connection are
//! bounded; every unary call has a deadline; and a stream consumer that stops reading is
//! ended with a clear status instead of being buffered for without bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt as _;
use tenure_e2e::harness::*;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::PrincipalType;
use tonic::Code;
use tonic_types::StatusExt as _;

/// `n` users named `{prefix}{i}` with long display names (about 300 bytes each encoded).
fn users(prefix: &str, n: usize) -> Vec<asg::Principal> {
    (0..n)
        .map(|i| asg::Principal {
            id: format!("{prefix}{i}"),
            r#type: PrincipalType::User.into(),
            display_name: format!("{prefix}{i} {}", "x".repeat(200)),
            ..Default::default()
        })
        .collect()
}

fn upsert(principals: Vec<asg::Principal>) -> asg::UpsertPrincipalsRequest {
    asg::UpsertPrincipalsRequest {
        principals,
        request_id: String::new(),
    }
}

/// Holds the assignments context's write lock (a transaction that has touched the event
/// head), so every mutation blocks until it is dropped: a slow call on demand, on SQLite
/// (one writer) and on PostgreSQL (the row lock) alike.
async fn hold_write_lock(h: &Harness) -> tenure_platform::events::UnitOfWork<asg::Event> {
    let mut uow = h.core().begin().await.unwrap();
    sqlx::query("UPDATE assignments_event_head SET last_sequence = last_sequence WHERE id = 1")
        .execute(&mut **uow.tx())
        .await
        .unwrap();
    uow
}

#[tokio::test]
async fn a_request_over_one_mebibyte_is_refused_and_writes_nothing() {
    let h = Harness::start().await;
    let head = h.core().log.head();
    // ~1.2 MiB of valid principals in one message.
    let principals: Vec<asg::Principal> = (0..6000)
        .map(|i| asg::Principal {
            id: format!("p{i}"),
            r#type: PrincipalType::User.into(),
            display_name: "x".repeat(200),
            ..Default::default()
        })
        .collect();
    let err = h
        .principals()
        .upsert_principals(h.req(
            ADMIN,
            asg::UpsertPrincipalsRequest {
                principals: principals.clone(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        ),
        "{err:?}"
    );
    assert_eq!(h.core().log.head(), head, "nothing written");
    // The same principals in messages under the limit go through.
    for chunk in principals.chunks(1000) {
        h.principals()
            .upsert_principals(h.req(
                ADMIN,
                asg::UpsertPrincipalsRequest {
                    principals: chunk.to_vec(),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap();
    }
    assert_eq!(h.core().model().principals.len(), 6001);
    h.stop().await;
}

#[tokio::test]
async fn a_bulk_call_with_thousands_of_bad_items_gets_a_readable_refusal() {
    let h = Harness::start().await;
    let bad: Vec<asg::Principal> = (0..2000)
        .map(|i| asg::Principal {
            id: format!("p{i}"),
            r#type: PrincipalType::User.into(),
            display_name: "x".repeat(300),
            ..Default::default()
        })
        .collect();
    let err = h
        .principals()
        .upsert_principals(h.req(
            ADMIN,
            asg::UpsertPrincipalsRequest {
                principals: bad,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("more"), "{}", err.message());
    // and the connection is still good
    h.principals()
        .get_principal(h.req(ADMIN, asg::GetPrincipalRequest { id: ADMIN.into() }))
        .await
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn beyond_the_concurrency_limit_calls_are_refused_at_once_instead_of_queueing() {
    let h = Harness::start_with(|c| c.limits.concurrency_per_connection = 2).await;
    let head = h.core().log.head();
    let lock = hold_write_lock(&h).await;
    // Three mutations on one connection while writes are blocked: two take the
    // connection's two slots and wait for the lock; the third is refused.
    let mut calls: Vec<_> = (0..3)
        .map(|i| {
            let mut client = h.principals();
            let r = h.req(ADMIN, upsert(users(&format!("b{i}-"), 1)));
            tokio::spawn(async move { client.upsert_principals(r).await })
        })
        .collect();
    let (first_done, at, rest) = tokio::time::timeout(
        Duration::from_secs(5),
        futures::future::select_all(calls.drain(..)),
    )
    .await
    .expect("one call is answered while the others wait: refused, not queued");
    let refused = first_done.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(rest.iter().all(|t| !t.is_finished()), "the other two wait");
    assert_eq!(h.core().log.head(), head);
    drop(lock);
    for t in rest {
        t.await.unwrap().unwrap();
    }
    assert_eq!(h.core().log.head(), head + 2);
    // The refused one wrote nothing; the slots are free again.
    assert_status(
        h.principals()
            .get_principal(h.req(
                ADMIN,
                asg::GetPrincipalRequest {
                    id: format!("b{at}-0"),
                },
            ))
            .await,
        Code::NotFound,
        "",
    );
    h.stop().await;
}

#[tokio::test]
async fn mutations_are_rate_limited_per_principal_with_a_retry_hint_and_reads_are_not() {
    let h = Harness::start_with(|c| {
        c.limits.mutations_per_principal_per_sec = 1;
        c.limits.mutations_burst = 3;
    })
    .await;
    // The burst goes through.
    for i in 0..3 {
        h.principals()
            .upsert_principals(h.req(ADMIN, upsert(users(&format!("r{i}-"), 1))))
            .await
            .unwrap();
    }
    let head = h.core().log.head();
    let refused = h
        .principals()
        .upsert_principals(h.req(ADMIN, upsert(users("over-", 1))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("retry in"),
        "{}",
        refused.message()
    );
    let retry = refused
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a google.rpc.RetryInfo");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    assert_eq!(h.core().log.head(), head, "the refused call wrote nothing");
    // Reads are not limited.
    for _ in 0..20 {
        h.principals()
            .get_principal(h.req(ADMIN, asg::GetPrincipalRequest { id: "r0-0".into() }))
            .await
            .unwrap();
    }
    // Another principal has a bucket of its own: its call reaches the handler (and is
    // refused there, for want of the role).
    assert_status(
        h.principals()
            .upsert_principals(h.req("kenneth", upsert(users("k-", 1))))
            .await,
        Code::PermissionDenied,
        "",
    );
    // Tenure's own service principal is exempt: never RESOURCE_EXHAUSTED.
    for _ in 0..10 {
        let r = h
            .principals()
            .upsert_principals(h.req("tenure-system", upsert(users("svc-", 1))))
            .await;
        if let Err(s) = r {
            assert_ne!(s.code(), Code::ResourceExhausted, "{s:?}");
        }
    }
    // Once the hinted time has passed (on the injected clock), the admin is admitted.
    h.clock.advance(chrono::TimeDelta::from_std(retry).unwrap());
    h.principals()
        .upsert_principals(h.req(ADMIN, upsert(users("later-", 1))))
        .await
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn a_response_over_the_encode_limit_gets_a_clear_status_and_the_connection_survives() {
    let h = Harness::start_with(|c| c.limits.max_encoding_message_size = 16 * 1024).await;
    h.principals()
        .upsert_principals(h.req(ADMIN, upsert(users("big-", 200))))
        .await
        .unwrap();
    // 100 principals of ~300 bytes: about 30 KiB, over the 16 KiB limit.
    let err = h
        .principals()
        .list_principals(h.req(
            ADMIN,
            asg::ListPrincipalsRequest {
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    assert!(err.message().contains("too large"), "{}", err.message());
    // A smaller page fits, on the same connection.
    let page = h
        .principals()
        .list_principals(h.req(
            ADMIN,
            asg::ListPrincipalsRequest {
                page_size: 10,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.principals.len(), 10);
    h.stop().await;
}

#[tokio::test]
async fn concurrent_streams_per_connection_are_bounded() {
    let h = Harness::start_with(|c| c.limits.max_concurrent_streams = 2).await;
    let subscribe = || {
        let mut events = h.events();
        let r = h.req(
            ADMIN,
            asg::SubscribeEventsRequest {
                after_sequence: 0,
                event_types: vec![],
            },
        );
        async move { events.subscribe_events(r).await.unwrap().into_inner() }
    };
    let first = subscribe().await;
    let second = subscribe().await;
    // A third stream on this connection is not served while two are open.
    let third = {
        let mut c = h.principals();
        let r = h.req(ADMIN, asg::GetPrincipalRequest { id: ADMIN.into() });
        tokio::spawn(async move { c.get_principal(r).await })
    };
    let waited = tokio::time::timeout(Duration::from_millis(500), async {
        while !third.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_err(),
        "a third stream was served while two were open"
    );
    // When one closes, it is.
    drop(first);
    let got = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a stream closed")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(got.principal.unwrap().id, ADMIN);
    drop(second);
    h.stop().await;
}

#[tokio::test]
async fn a_slow_unary_call_ends_at_the_deadline_and_writes_nothing() {
    let h = Harness::start_with(|c| c.limits.request_timeout_ms = 300).await;
    let head = h.core().log.head();
    let lock = hold_write_lock(&h).await;
    let err = h
        .principals()
        .upsert_principals(h.req(ADMIN, upsert(users("slow-", 1))))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
    assert!(err.message().contains("Timeout"), "{}", err.message());
    lock.rollback().await.unwrap();
    // The abandoned call left no write behind, and the server serves on.
    assert_eq!(h.core().log.head(), head);
    assert_status(
        h.principals()
            .get_principal(h.req(
                ADMIN,
                asg::GetPrincipalRequest {
                    id: "slow-0".into(),
                },
            ))
            .await,
        Code::NotFound,
        "",
    );
    h.principals()
        .upsert_principals(h.req(ADMIN, upsert(users("fast-", 1))))
        .await
        .unwrap();
    assert_eq!(h.core().log.head(), head + 1);
    h.stop().await;
}

#[tokio::test]
async fn a_stream_consumer_that_stops_reading_is_ended_with_a_clear_status() {
    let h = Harness::start_with(|c| {
        c.limits.stream_buffer_messages = 8;
        c.limits.slow_consumer_timeout_ms = 200;
    })
    .await;
    // A consumer with small HTTP/2 windows, so the server feels it stop reading soon.
    let slow = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let start = h.core().log.head();
    let dropped_before = tenure_platform::limits::slow_consumers_dropped();
    let mut stream = asg::events_service_client::EventsServiceClient::new(slow)
        .subscribe_events(h.req(
            ADMIN,
            asg::SubscribeEventsRequest {
                after_sequence: start,
                event_types: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // 4,000 events (about 1.2 MB) are written while it reads nothing.
    let total = 4000;
    for batch in 0..8 {
        h.principals()
            .upsert_principals(h.req(ADMIN, upsert(users(&format!("s{batch}-"), total / 8))))
            .await
            .unwrap();
    }
    let end = h.core().log.head();
    assert_eq!(end - start, total as i64);
    // Wait (bounded) until the server gives up on it.
    for _ in 0..1000 {
        if tenure_platform::limits::slow_consumers_dropped() > dropped_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        tenure_platform::limits::slow_consumers_dropped() > dropped_before,
        "the stalled stream was not ended"
    );
    // It reads what was already on its way, gapless, then the clear status.
    let mut last = start;
    let status = loop {
        match stream.next().await {
            Some(Ok(r)) => {
                let seq = r.event.unwrap().meta.unwrap().sequence;
                assert_eq!(seq, last + 1, "gapless");
                last = seq;
            }
            Some(Err(s)) => break s,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("stopped reading"),
        "{}",
        status.message()
    );
    assert!(
        last < end,
        "the server held back the rest instead of buffering it all ({last} of {end})"
    );
    // It resumes from its cursor and misses nothing.
    let mut again = h
        .events()
        .subscribe_events(h.req(
            ADMIN,
            asg::SubscribeEventsRequest {
                after_sequence: last,
                event_types: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    while last < end {
        let seq = again
            .next()
            .await
            .unwrap()
            .unwrap()
            .event
            .unwrap()
            .meta
            .unwrap()
            .sequence;
        assert_eq!(seq, last + 1);
        last = seq;
    }
    h.stop().await;
}
