//! The server's protective limits, each a test: a request over the decode limit is
//! refused whole (and writes nothing), and so is an unauthenticated flood of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tenure_e2e::harness::*;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::PrincipalType;

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
