//! PrincipalsService through the real gRPC client: sync upserts (bulk, idempotent),
//! disable and delete with their effects on access, group membership with nesting and
//! cycles, listings, and who may call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/src/harness.rs"]
mod common;
mod directory;

use common::*;
use directory::*;
use sqlx::Row as _;
use tenure_proto::assignments::v1 as pb;
use tenure_proto::assignments::v1::event::Payload;
use tenure_proto::common::v1 as c;
use tonic::Code;

fn upsert_req(principals: Vec<pb::Principal>, request_id: &str) -> pb::UpsertPrincipalsRequest {
    pb::UpsertPrincipalsRequest {
        principals,
        request_id: request_id.to_owned(),
    }
}

fn set_req(group: &str, members: &[&str], request_id: &str) -> pb::SetGroupMembersRequest {
    pb::SetGroupMembersRequest {
        group_id: group.to_owned(),
        member_ids: members.iter().map(|m| (*m).to_owned()).collect(),
        request_id: request_id.to_owned(),
    }
}

fn ids(refs: &[c::PrincipalRef]) -> Vec<&str> {
    refs.iter().map(|r| r.id.as_str()).collect()
}

#[tokio::test]
async fn upsert_creates_updates_and_leaves_unchanged_with_one_event_per_change() {
    let h = Harness::start().await;
    let seq = head(&h);
    let mut ferry = user("ferry");
    ferry.last_sign_in_time = Some(prost_types::Timestamp {
        seconds: 1_800_000_000,
        nanos: 0,
    });
    let r = upsert(&h, vec![ferry.clone(), user("dana"), group("ops")]).await;
    assert_eq!(
        (r.created_count, r.updated_count, r.unchanged_count),
        (3, 0, 0)
    );
    let ev = payloads(&h, seq).await;
    assert_eq!(ev.len(), 3);
    for e in &ev {
        let Payload::PrincipalSynced(s) = e else {
            panic!("{e:?}")
        };
        assert!(s.created && s.changed_fields.is_empty());
        assert_eq!(s.principal.as_ref().unwrap().enabled, Some(true));
    }

    // Again: dana renamed, ferry with an older sign-in (ignored) and enabled unset
    // (unchanged), ops as it was.
    let seq = head(&h);
    let mut dana = user("dana");
    dana.display_name = "Dana Scully".into();
    let mut older = user("ferry");
    older.last_sign_in_time = Some(prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    });
    let r = upsert(&h, vec![dana, older, group("ops")]).await;
    assert_eq!(
        (r.created_count, r.updated_count, r.unchanged_count),
        (0, 1, 2)
    );
    let ev = payloads(&h, seq).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    let Payload::PrincipalSynced(s) = &ev[0] else {
        panic!()
    };
    assert!(!s.created);
    assert_eq!(s.changed_fields, vec!["display_name".to_owned()]);

    let got = h
        .principals()
        .get_principal(h.req("ferry", pb::GetPrincipalRequest { id: "ferry".into() }))
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(
        got.last_sign_in_time.unwrap().seconds,
        1_800_000_000,
        "sign-in moved back"
    );
    assert_eq!(got.enabled, Some(true));
    assert_eq!(got.user_principal_name, "ferry@contoso.example");
    assert!(got.create_time.is_some() && got.update_time.is_some());

    // A newer sign-in is a change of that field only.
    let seq = head(&h);
    let mut newer = user("ferry");
    newer.last_sign_in_time = Some(prost_types::Timestamp {
        seconds: 1_900_000_000,
        nanos: 0,
    });
    let r = upsert(&h, vec![newer]).await;
    assert_eq!(r.updated_count, 1);
    let ev = payloads(&h, seq).await;
    let Payload::PrincipalSynced(s) = &ev[0] else {
        panic!()
    };
    assert_eq!(s.changed_fields, vec!["last_sign_in_time".to_owned()]);
    h.stop().await;
}

#[tokio::test]
async fn bulk_upsert_of_2000_principals_is_one_call_and_one_transaction() {
    let h = Harness::start().await;
    let seq = head(&h);
    let batch: Vec<pb::Principal> = (0..2000).map(|i| user(&format!("u{i:05}"))).collect();
    let r = upsert(&h, batch.clone()).await;
    assert_eq!(r.created_count, 2000);
    let events = h.events_after(seq).await;
    assert_eq!(events.len(), 2000);
    // one transaction: the events are contiguous and carry one commit's sequences
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e.meta.as_ref().unwrap().sequence)
        .collect();
    assert_eq!(seqs.first(), Some(&(seq + 1)));
    assert_eq!(seqs.last(), Some(&(seq + 2000)));
    assert_eq!(h.core().model().principals.len(), 2001);

    // All of them page through ListPrincipals, in display-name order.
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = h
            .principals()
            .list_principals(h.req(
                ADMIN,
                pb::ListPrincipalsRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                    types: vec![c::PrincipalType::User.into()],
                    search: "name u".into(),
                    include_disabled: false,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.principals.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 2000);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);

    // The same batch again changes nothing and emits nothing.
    let seq = head(&h);
    let r = upsert(&h, batch).await;
    assert_eq!((r.created_count, r.unchanged_count), (0, 2000));
    assert!(h.events_after(seq).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn upsert_refuses_bad_items_and_writes_nothing() {
    let h = Harness::start().await;
    upsert(&h, vec![group("ops")]).await;
    let seq = head(&h);
    let mut unspecified = user("x1");
    unspecified.r#type = 0;
    let mut control = user("x2");
    control.display_name = "bad\u{7}".into();
    let mut bad_time = user("x3");
    bad_time.last_sign_in_time = Some(prost_types::Timestamp {
        seconds: 0,
        nanos: -5,
    });
    let r = h
        .principals()
        .upsert_principals(h.req(
            ADMIN,
            upsert_req(
                vec![
                    user("ok"),
                    user(""),
                    user("dup"),
                    user("dup"),
                    unspecified,
                    control,
                    bad_time,
                ],
                "",
            ),
        ))
        .await;
    let s = assert_status(r, Code::InvalidArgument, "principals[1].id");
    for field in [
        "principals[3].id",
        "principals[4].type",
        "principals[5].display_name",
        "principals[6].last_sign_in_time",
    ] {
        assert!(
            s.message().contains(field),
            "{field} not in {}",
            s.message()
        );
    }
    // a principal's type never changes (found inside the transaction, rolled back)
    let r = h
        .principals()
        .upsert_principals(h.req(ADMIN, upsert_req(vec![user("fresh"), user("ops")], "")))
        .await;
    assert_status(r, Code::InvalidArgument, "principals[1].type");
    // empty and too many
    let r = h
        .principals()
        .upsert_principals(h.req(ADMIN, upsert_req(vec![], "")))
        .await;
    assert_status(r, Code::InvalidArgument, "principals");
    let many: Vec<pb::Principal> = (0..5001).map(|i| user(&format!("m{i}"))).collect();
    let r = h
        .principals()
        .upsert_principals(h.req(ADMIN, upsert_req(many, "")))
        .await;
    assert_status(r, Code::InvalidArgument, "5,000");
    assert_eq!(head(&h), seq, "nothing written");
    assert!(!h.core().model().principals.contains_key("ok"));
    assert!(!h.core().model().principals.contains_key("fresh"));
    h.stop().await;
}

#[tokio::test]
async fn upsert_is_idempotent_by_request_id() {
    let h = Harness::start().await;
    let seq = head(&h);
    let call = |p: Vec<pb::Principal>| {
        let mut c = h.principals();
        let req = h.req(ADMIN, upsert_req(p, "sync-run-1"));
        async move { c.upsert_principals(req).await.unwrap().into_inner() }
    };
    let a = call(vec![user("ferry")]).await;
    let b = call(vec![user("ferry"), user("other")]).await;
    assert_eq!(a, b, "the retry returns the first result");
    assert_eq!(h.events_after(seq).await.len(), 1);
    // another caller may not reuse the id
    let r = h
        .principals()
        .upsert_principals(h.req("ferry", upsert_req(vec![user("x")], "sync-run-1")))
        .await;
    assert!(r.is_err());
    h.stop().await;
}

#[tokio::test]
async fn get_and_list_filter_by_type_search_and_enabled_and_page() {
    let h = Harness::start().await;
    let mut sp = principal("app1", c::PrincipalType::ServicePrincipal);
    sp.display_name = "Billing Robot".into();
    sp.app_id = "1111".into();
    let mut carol = user("carol");
    carol.display_name = "Carol Danvers".into();
    carol.email = "captain@Marvel.example".into();
    let mut off = user("zed");
    off.enabled = Some(false);
    upsert(&h, vec![sp, carol, off, user("bob"), group("admins")]).await;
    h.principals()
        .set_group_members(h.req(ADMIN, set_req("admins", &["bob", "carol"], "")))
        .await
        .unwrap();
    let list = |req: pb::ListPrincipalsRequest| {
        let mut c = h.principals();
        let req = h.req("bob", req);
        async move { c.list_principals(req).await }
    };
    let names = |r: pb::ListPrincipalsResponse| -> Vec<String> {
        r.principals.into_iter().map(|p| p.id).collect()
    };

    let q = |search: &str, include_disabled: bool| pb::ListPrincipalsRequest {
        search: search.to_owned(),
        include_disabled,
        ..Default::default()
    };
    assert_eq!(
        names(list(q("name", false)).await.unwrap().into_inner()),
        vec!["admins", "bob"]
    );
    assert_eq!(
        names(list(q("name", true)).await.unwrap().into_inner()),
        vec!["admins", "bob", "zed"]
    );
    assert_eq!(
        names(list(q("CAPTAIN", false)).await.unwrap().into_inner()),
        vec!["carol"]
    );
    assert_eq!(
        names(list(q("bob@", false)).await.unwrap().into_inner()),
        vec!["bob"]
    );
    assert_eq!(
        names(list(q("billing r", false)).await.unwrap().into_inner()),
        vec!["app1"]
    );
    assert!(
        names(list(q("%", false)).await.unwrap().into_inner()).is_empty(),
        "LIKE wildcards are escaped"
    );
    let sps = list(pb::ListPrincipalsRequest {
        types: vec![c::PrincipalType::ServicePrincipal.into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(names(sps), vec!["app1"]);
    let all = list(pb::ListPrincipalsRequest {
        include_disabled: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(all.principals.len(), 6);
    let admins = all.principals.iter().find(|p| p.id == "admins").unwrap();
    assert_eq!(admins.direct_member_count, 2);

    // pages of one
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let r = list(pb::ListPrincipalsRequest {
            page_size: 1,
            page_token: token.clone(),
            search: "name".into(),
            include_disabled: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
        assert!(r.principals.len() <= 1);
        seen.extend(names(r.clone()));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen, vec!["admins", "bob", "zed"]);

    // bad input
    assert_status(
        list(pb::ListPrincipalsRequest {
            page_token: "!!".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        list(pb::ListPrincipalsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_status(
        list(pb::ListPrincipalsRequest {
            types: vec![0],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "types[0]",
    );

    // get: any authenticated caller; deleted or unknown ids are not found
    let g = h
        .principals()
        .get_principal(h.req(
            "carol",
            pb::GetPrincipalRequest {
                id: "admins".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(g.direct_member_count, 2);
    assert_eq!(g.r#type, i32::from(c::PrincipalType::Group));
    assert_status(
        h.principals()
            .get_principal(h.req(
                "carol",
                pb::GetPrincipalRequest {
                    id: "nobody".into(),
                },
            ))
            .await,
        Code::NotFound,
        "nobody",
    );
    assert_status(
        h.principals()
            .get_principal(h.req("carol", pb::GetPrincipalRequest { id: String::new() }))
            .await,
        Code::InvalidArgument,
        "id",
    );
    // no token
    assert_status(
        h.principals()
            .get_principal(pb::GetPrincipalRequest {
                id: "admins".into(),
            })
            .await,
        Code::Unauthenticated,
        "",
    );
    h.stop().await;
}

#[tokio::test]
async fn disabling_ends_activations_at_once_and_the_model_refuses_every_check() {
    let h = Harness::start().await;
    upsert(&h, vec![user("ferry")]).await;
    let active = assign(&h, "ferry", "reader", "/", c::AssignmentType::Active, None).await;
    let eligible = assign(
        &h,
        "ferry",
        "billing-administrator",
        "/",
        c::AssignmentType::Eligible,
        None,
    )
    .await;
    let instance = activate(&h, "ferry", "billing-administrator", "/", &eligible).await;
    assert!(holds(&h, "ferry", "reader", "/"));
    assert!(holds(&h, "ferry", "billing-administrator", "/"));

    let seq = head(&h);
    let r = h
        .principals()
        .disable_principal(h.req(
            ADMIN,
            pb::DisablePrincipalRequest {
                id: "ferry".into(),
                reason: "left the company".into(),
                request_id: "d1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ended_instance_ids, vec![instance.clone()]);
    assert_eq!(r.principal.as_ref().unwrap().enabled, Some(false));
    assert!(
        !holds(&h, "ferry", "reader", "/"),
        "the active assignment still grants"
    );
    assert!(
        !holds(&h, "ferry", "billing-administrator", "/"),
        "the activation still grants"
    );
    assert!(
        !h.core()
            .has_permission("ferry", "microsoft.commerce/billing/read", "/")
    );

    let ev = payloads(&h, seq).await;
    assert_eq!(ev.len(), 2, "{ev:?}");
    let Payload::InstanceDeactivated(d) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        d.reason,
        i32::from(pb::InstanceEndReason::PrincipalDisabled)
    );
    assert_eq!(d.instance.as_ref().unwrap().id, instance);
    assert_eq!(
        d.instance.as_ref().unwrap().status,
        i32::from(pb::InstanceStatus::Ended)
    );
    let Payload::PrincipalDisabled(p) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert_eq!(p.reason, "left the company");
    assert_eq!(p.ended_instance_ids, vec![instance.clone()]);
    assert_eq!(p.principal.as_ref().unwrap().id, "ferry");

    // stored: the activation ended with its reason, the principal disabled
    let row = sqlx::query("SELECT ended_at, end_reason FROM assignments_activations WHERE id = $1")
        .bind(&instance)
        .fetch_one(h.core().db.reader())
        .await
        .unwrap();
    assert!(row.try_get::<Option<i64>, _>("ended_at").unwrap().is_some());
    assert_eq!(row.try_get::<i64, _>("end_reason").unwrap(), 6);
    let row = sqlx::query("SELECT enabled, disabled_at FROM assignments_principals WHERE id = $1")
        .bind("ferry")
        .fetch_one(h.core().db.reader())
        .await
        .unwrap();
    assert_eq!(row.try_get::<i64, _>("enabled").unwrap(), 0);
    assert!(
        row.try_get::<Option<i64>, _>("disabled_at")
            .unwrap()
            .is_some()
    );

    // the retry returns the first answer; disabling again is a no-op
    let seq = head(&h);
    let again = h
        .principals()
        .disable_principal(h.req(
            ADMIN,
            pb::DisablePrincipalRequest {
                id: "ferry".into(),
                reason: String::new(),
                request_id: "d1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, r);
    let noop = h
        .principals()
        .disable_principal(h.req(
            ADMIN,
            pb::DisablePrincipalRequest {
                id: "ferry".into(),
                reason: String::new(),
                request_id: "d2".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(noop.ended_instance_ids.is_empty());
    assert_eq!(head(&h), seq);

    // enabled again by the sync: the schedule grants again, the ended activation not
    let mut back = user("ferry");
    back.enabled = Some(true);
    let seq = head(&h);
    let r = upsert(&h, vec![back]).await;
    assert_eq!(r.updated_count, 1);
    let ev = payloads(&h, seq).await;
    let Payload::PrincipalSynced(s) = &ev[0] else {
        panic!()
    };
    assert_eq!(s.changed_fields, vec!["enabled".to_owned()]);
    assert!(holds(&h, "ferry", "reader", "/"));
    assert!(!holds(&h, "ferry", "billing-administrator", "/"));
    assert_eq!(active.len(), 36);

    // unknown, malformed
    assert_status(
        h.principals()
            .disable_principal(h.req(
                ADMIN,
                pb::DisablePrincipalRequest {
                    id: "ghost".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
        "ghost",
    );
    assert_status(
        h.principals()
            .disable_principal(h.req(
                ADMIN,
                pb::DisablePrincipalRequest {
                    id: String::new(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "id",
    );
    h.stop().await;
}

#[tokio::test]
async fn upsert_with_enabled_false_disables_with_the_effects_of_disable() {
    let h = Harness::start().await;
    upsert(&h, vec![user("ferry")]).await;
    let eligible = assign(
        &h,
        "ferry",
        "reader",
        "/",
        c::AssignmentType::Eligible,
        None,
    )
    .await;
    let instance = activate(&h, "ferry", "reader", "/", &eligible).await;
    let seq = head(&h);
    let mut off = user("ferry");
    off.enabled = Some(false);
    let r = upsert(&h, vec![off]).await;
    assert_eq!(r.updated_count, 1);
    assert!(!holds(&h, "ferry", "reader", "/"));
    let ev = payloads(&h, seq).await;
    let kinds: Vec<&str> = ev
        .iter()
        .map(|e| match e {
            Payload::PrincipalSynced(_) => "synced",
            Payload::InstanceDeactivated(_) => "deactivated",
            Payload::PrincipalDisabled(_) => "disabled",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["synced", "deactivated", "disabled"]);
    let Payload::PrincipalDisabled(d) = &ev[2] else {
        panic!()
    };
    assert_eq!(d.ended_instance_ids, vec![instance]);
    // nobody disables themselves through the sync either
    let mut me = user(ADMIN);
    me.enabled = Some(false);
    assert_status(
        h.principals()
            .upsert_principals(h.req(ADMIN, upsert_req(vec![me], "")))
            .await,
        Code::PermissionDenied,
        "themselves",
    );
    h.stop().await;
}

#[tokio::test]
async fn deleting_removes_assignments_activations_memberships_and_the_principal() {
    let h = Harness::start().await;
    upsert(&h, vec![user("ferry"), group("ops"), group("sec")]).await;
    for g in ["ops", "sec"] {
        h.principals()
            .set_group_members(h.req(ADMIN, set_req(g, &["ferry"], "")))
            .await
            .unwrap();
    }
    let a1 = assign(&h, "ferry", "reader", "/", c::AssignmentType::Active, None).await;
    let eligible = assign(
        &h,
        "ferry",
        "billing-administrator",
        "/",
        c::AssignmentType::Eligible,
        None,
    )
    .await;
    let instance = activate(&h, "ferry", "billing-administrator", "/", &eligible).await;
    let seq = head(&h);
    let req = pb::DeletePrincipalRequest {
        id: "ferry".into(),
        reason: "account deleted in the directory".into(),
        request_id: "del-1".into(),
    };
    let r = h
        .principals()
        .delete_principal(h.req(ADMIN, req.clone()))
        .await
        .unwrap()
        .into_inner();
    let mut removed = r.removed_assignment_ids.clone();
    removed.sort();
    let mut expected = vec![a1.clone(), eligible.clone()];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(r.ended_instance_ids, vec![instance.clone()]);

    let ev = payloads(&h, seq).await;
    let removed_events: Vec<&pb::AssignmentRemoved> = ev
        .iter()
        .filter_map(|e| match e {
            Payload::AssignmentRemoved(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(removed_events.len(), 2);
    for a in &removed_events {
        assert_eq!(a.reason, i32::from(pb::RemovalReason::PrincipalDeleted));
        assert_eq!(
            a.assignment.as_ref().unwrap().status,
            i32::from(pb::AssignmentStatus::Removed)
        );
    }
    let elig_event = removed_events
        .iter()
        .find(|a| a.assignment.as_ref().unwrap().id == eligible)
        .unwrap();
    assert_eq!(elig_event.ended_instance_ids, vec![instance.clone()]);
    assert!(ev.iter().any(|e| matches!(e, Payload::InstanceDeactivated(d) if d.reason == i32::from(pb::InstanceEndReason::PrincipalDeleted))));
    let left: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            Payload::GroupMembersSet(g) => {
                assert_eq!(ids(&g.removed_members), vec!["ferry"]);
                assert_eq!(g.member_count, 0);
                Some(g.group.as_ref().unwrap().id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(left, vec!["ops", "sec"]);
    let Some(Payload::PrincipalDeleted(d)) = ev.last() else {
        panic!("{ev:?}")
    };
    assert_eq!(d.principal.as_ref().unwrap().id, "ferry");
    assert_eq!(d.reason, "account deleted in the directory");
    assert_eq!(d.ended_instance_ids, vec![instance]);
    assert_eq!(d.removed_assignment_ids.len(), 2);

    // gone: not found, not a member, holds nothing; history kept in the tables
    assert_status(
        h.principals()
            .get_principal(h.req(ADMIN, pb::GetPrincipalRequest { id: "ferry".into() }))
            .await,
        Code::NotFound,
        "ferry",
    );
    let members = h
        .principals()
        .list_group_members(h.req(
            ADMIN,
            pb::ListGroupMembersRequest {
                group_id: "ops".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(members.members.is_empty());
    assert!(!holds(&h, "ferry", "reader", "/"));
    let row =
        sqlx::query("SELECT removed_at, removal_reason FROM assignments_assignments WHERE id = $1")
            .bind(&a1)
            .fetch_one(h.core().db.reader())
            .await
            .unwrap();
    assert!(
        row.try_get::<Option<i64>, _>("removed_at")
            .unwrap()
            .is_some()
    );
    assert_eq!(row.try_get::<i64, _>("removal_reason").unwrap(), 3);
    let history: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM assignments_group_members WHERE member_id = $1 AND removed_at IS NOT NULL",
    )
    .bind("ferry")
    .fetch_one(h.core().db.reader())
    .await
    .unwrap();
    assert_eq!(history, 2);

    // the retry answers the same; another request id finds nothing
    let again = h
        .principals()
        .delete_principal(h.req(ADMIN, req))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, r);
    assert_status(
        h.principals()
            .delete_principal(h.req(
                ADMIN,
                pb::DeletePrincipalRequest {
                    id: "ferry".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
        "ferry",
    );
    h.stop().await;
}

#[tokio::test]
async fn nobody_disables_or_deletes_themselves() {
    let h = Harness::start().await;
    let seq = head(&h);
    assert_status(
        h.principals()
            .disable_principal(h.req(
                ADMIN,
                pb::DisablePrincipalRequest {
                    id: ADMIN.into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "themselves",
    );
    assert_status(
        h.principals()
            .delete_principal(h.req(
                ADMIN,
                pb::DeletePrincipalRequest {
                    id: ADMIN.into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "themselves",
    );
    assert_eq!(head(&h), seq);
    assert!(holds(&h, ADMIN, "privileged-role-administrator", "/"));
    h.stop().await;
}

#[tokio::test]
async fn set_group_members_replaces_direct_members_with_history_and_events() {
    let h = Harness::start().await;
    upsert(&h, vec![group("ops"), user("a"), user("b"), user("c")]).await;
    let grp = assign(&h, "ops", "reader", "/", c::AssignmentType::Active, None).await;
    assert!(!grp.is_empty());
    let r = h
        .principals()
        .set_group_members(h.req(ADMIN, set_req("ops", &["a", "b", "a"], "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.added_member_ids, vec!["a", "b"]);
    assert!(
        holds(&h, "a", "reader", "/"),
        "members gain the group's grants at once"
    );

    let seq = head(&h);
    let r = h
        .principals()
        .set_group_members(h.req(ADMIN, set_req("ops", &["b", "c"], "s2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.added_member_ids, vec!["c"]);
    assert_eq!(r.removed_member_ids, vec!["a"]);
    assert!(
        !holds(&h, "a", "reader", "/"),
        "a member that left still holds the group's role"
    );
    assert!(holds(&h, "c", "reader", "/"));
    let ev = payloads(&h, seq).await;
    assert_eq!(ev.len(), 1);
    let Payload::GroupMembersSet(g) = &ev[0] else {
        panic!()
    };
    assert_eq!(g.group.as_ref().unwrap().id, "ops");
    assert_eq!(ids(&g.added_members), vec!["c"]);
    assert_eq!(ids(&g.removed_members), vec!["a"]);
    assert_eq!(g.added_members[0].display_name, "Name c");
    assert_eq!(g.member_count, 2);

    // retry: same answer, no event; the same set again: nothing changes
    let seq = head(&h);
    let again = h
        .principals()
        .set_group_members(h.req(ADMIN, set_req("ops", &["b", "c"], "s2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, r);
    let same = h
        .principals()
        .set_group_members(h.req(ADMIN, set_req("ops", &["c", "b"], "")))
        .await
        .unwrap()
        .into_inner();
    assert!(same.added_member_ids.is_empty() && same.removed_member_ids.is_empty());
    assert_eq!(head(&h), seq);

    // history rows: a was added and removed
    let rows = sqlx::query("SELECT added_at, removed_at FROM assignments_group_members WHERE group_id = $1 AND member_id = $2")
        .bind("ops")
        .bind("a")
        .fetch_all(h.core().db.reader())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0]
            .try_get::<Option<i64>, _>("removed_at")
            .unwrap()
            .is_some()
    );

    // bad input, nothing written
    let set = |g: &str, m: &[&str]| {
        let mut cl = h.principals();
        let req = h.req(ADMIN, set_req(g, m, ""));
        async move { cl.set_group_members(req).await }
    };
    assert_status(
        set("ops", &["b", "ghost", "c", "phantom"]).await,
        Code::NotFound,
        "member_ids[1]",
    );
    let s = assert_status(
        set("ops", &["b", "ghost", "c", "phantom"]).await,
        Code::NotFound,
        "member_ids[3]",
    );
    assert!(s.message().contains("ghost"));
    assert_status(set("nogroup", &["b"]).await, Code::NotFound, "nogroup");
    assert_status(set("a", &["b"]).await, Code::InvalidArgument, "group_id");
    assert_status(
        set("ops", &["ops"]).await,
        Code::InvalidArgument,
        "member_ids[0]",
    );
    assert_status(
        set("ops", &[""]).await,
        Code::InvalidArgument,
        "member_ids[0]",
    );
    assert_eq!(head(&h), seq);
    // empty removes everyone
    let r = set("ops", &[]).await.unwrap().into_inner();
    assert_eq!(r.removed_member_ids, vec!["b", "c"]);
    h.stop().await;
}

#[tokio::test]
async fn nested_groups_with_a_cycle_resolve_without_loops() {
    let h = Harness::start().await;
    upsert(
        &h,
        vec![
            user("ferry"),
            user("dana"),
            group("g1"),
            group("g2"),
            group("g3"),
        ],
    )
    .await;
    let set = |g: &str, m: &[&str]| {
        let mut cl = h.principals();
        let req = h.req(ADMIN, set_req(g, m, ""));
        async move { cl.set_group_members(req).await.unwrap() }
    };
    // g1 ∋ ferry, g2 ∋ g1 + dana, g3 ∋ g2, and g1 ∋ g3: a cycle g1 → g3 → g2 → g1
    set("g1", &["ferry", "g3"]).await;
    set("g2", &["g1", "dana"]).await;
    set("g3", &["g2"]).await;
    assign(&h, "g3", "reader", "/", c::AssignmentType::Active, None).await;
    assert!(holds(&h, "ferry", "reader", "/"), "nested group grant");

    let groups = |p: &str, transitive: bool| {
        let mut cl = h.principals();
        let req = h.req(
            "ferry",
            pb::ListPrincipalGroupsRequest {
                principal_id: p.to_owned(),
                transitive,
                ..Default::default()
            },
        );
        async move { cl.list_principal_groups(req).await }
    };
    let direct = groups("ferry", false).await.unwrap().into_inner();
    assert_eq!(ids(&direct.groups), vec!["g1"]);
    let all = groups("ferry", true).await.unwrap().into_inner();
    assert_eq!(ids(&all.groups), vec!["g1", "g2", "g3"]);
    // a group in the cycle: every other group of the cycle, never itself
    let all = groups("g1", true).await.unwrap().into_inner();
    assert_eq!(ids(&all.groups), vec!["g2", "g3"]);
    assert_status(groups("ghost", true).await, Code::NotFound, "ghost");

    let members = |g: &str, transitive: bool, page_size: i32, token: String| {
        let mut cl = h.principals();
        let req = h.req(
            "dana",
            pb::ListGroupMembersRequest {
                group_id: g.to_owned(),
                transitive,
                page_size,
                page_token: token,
            },
        );
        async move { cl.list_group_members(req).await }
    };
    let d = members("g2", false, 0, String::new())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&d.members), vec!["dana", "g1"]);
    let t = members("g2", true, 0, String::new())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&t.members), vec!["dana", "ferry", "g1", "g3"]);
    // paged
    let p1 = members("g2", true, 3, String::new())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&p1.members), vec!["dana", "ferry", "g1"]);
    let p2 = members("g2", true, 3, p1.next_page_token)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&p2.members), vec!["g3"]);
    assert!(p2.next_page_token.is_empty());
    assert_status(
        members("ferry", false, 0, String::new()).await,
        Code::InvalidArgument,
        "group_id",
    );
    assert_status(
        members("nope", false, 0, String::new()).await,
        Code::NotFound,
        "nope",
    );

    // breaking the cycle and the chain: ferry loses the grant at once
    set("g2", &["dana"]).await;
    assert!(!holds(&h, "ferry", "reader", "/"));
    assert!(holds(&h, "dana", "reader", "/"));
    h.stop().await;
}

#[tokio::test]
async fn a_non_admin_gets_permission_denied_on_every_write_and_reads_freely() {
    let h = Harness::start().await;
    upsert(&h, vec![user("mallory"), user("ferry"), group("ops")]).await;
    let seq = head(&h);
    let m = "mallory";
    let p = h.principals();
    assert_status(
        p.clone()
            .upsert_principals(h.req(m, upsert_req(vec![user("x")], "")))
            .await,
        Code::PermissionDenied,
        "tenure/principals/sync",
    );
    assert_status(
        p.clone()
            .disable_principal(h.req(
                m,
                pb::DisablePrincipalRequest {
                    id: "ferry".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        p.clone()
            .delete_principal(h.req(
                m,
                pb::DeletePrincipalRequest {
                    id: "ferry".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        p.clone()
            .set_group_members(h.req(m, set_req("ops", &["mallory"], "")))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_eq!(head(&h), seq, "nothing written");
    // reads are open to any authenticated caller
    p.clone()
        .get_principal(h.req(m, pb::GetPrincipalRequest { id: "ferry".into() }))
        .await
        .unwrap();
    p.clone()
        .list_principals(h.req(m, pb::ListPrincipalsRequest::default()))
        .await
        .unwrap();
    p.clone()
        .list_group_members(h.req(
            m,
            pb::ListGroupMembersRequest {
                group_id: "ops".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    p.clone()
        .list_principal_groups(h.req(
            m,
            pb::ListPrincipalGroupsRequest {
                principal_id: "ferry".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    // a sync agent with a custom role holding only tenure/principals/sync may write
    let role = h
        .roles()
        .create_role_definition(h.req(
            ADMIN,
            pb::CreateRoleDefinitionRequest {
                role_definition: Some(pb::RoleDefinition {
                    display_name: "Directory Sync".into(),
                    kind: pb::RoleKind::Directory.into(),
                    permissions: vec!["tenure/principals/sync".into()],
                    ..Default::default()
                }),
                role_definition_id: "directory-sync".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role_definition
        .unwrap();
    upsert(
        &h,
        vec![principal("sync-agent", c::PrincipalType::ServicePrincipal)],
    )
    .await;
    assign(
        &h,
        "sync-agent",
        &role.id,
        "/",
        c::AssignmentType::Active,
        None,
    )
    .await;
    let r = p
        .clone()
        .upsert_principals(h.req("sync-agent", upsert_req(vec![user("newbie")], "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.created_count, 1);
    h.stop().await;
}
