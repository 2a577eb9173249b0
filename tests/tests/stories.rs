//! The end-to-end stories as people tell them, through the real binaries: a
//! `tenure serve --dev-clock` child process (port 0, a fresh data directory, SQLite or
//! PostgreSQL), every step a `tenurectl` command typed by the person it belongs to,
//! time moved with `tenurectl dev advance` where the story waits, and each outcome read
//! from `tenurectl -o json` and its exit codes. The README's tour tells the same stories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use tenure_e2e::binaries::{Person, RealServer, binaries};
use tenure_e2e::sinks::WebhookSink;

/// The repository's example files (the ones the README's tour uses).
fn example(name: &str) -> String {
    format!("{}/../deploy/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// The server's time, as `tenurectl dev time` reports it.
async fn server_now(p: &Person) -> DateTime<Utc> {
    time(&p.json(&["dev", "time"]).await["now"])
}

/// Whether `tenurectl check` says `who` holds `role` at `scope` now.
async fn allowed(p: &Person, who: &str, role: &str, scope: &str) -> bool {
    let v = p
        .json(&[
            "check",
            "--principal",
            who,
            "--role",
            role,
            "--scope",
            scope,
        ])
        .await;
    v["allowed"] == Value::Bool(true)
}

/// The administrator imports the example people and scopes.
async fn import_examples(admin: &Person) {
    let out = admin
        .ok(&["admin", "principals", "import", &example("people.csv")])
        .await;
    assert!(out.contains("created"), "{out}");
    admin
        .ok(&["admin", "scopes", "import", &example("scopes.csv")])
        .await;
}

async fn eligible(admin: &Person, who: &str, role: &str) {
    admin
        .ok(&[
            "admin",
            "assign",
            "--eligible",
            "--principal",
            who,
            "--role",
            role,
            "--justification",
            "story",
        ])
        .await;
}

/// Activates `roles` (one command) and returns each item's (outcome, request id).
async fn activate(p: &Person, roles: &[&str], extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["activate"];
    for r in roles {
        args.extend_from_slice(&["--role", r]);
    }
    args.extend_from_slice(&["--justification", "story"]);
    args.extend_from_slice(extra);
    let v = p.json(&args).await;
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_owned(),
                r["request"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn request(p: &Person, id: &str) -> Value {
    p.json(&["requests", "show", id]).await
}

/// Story 2: three roles at once, one of which needs MFA. Without MFA nothing is granted
/// and the reply says why; with MFA all three are active; all end on time.
#[tokio::test]
async fn story_1_the_field_report_ferry_activates_kenneth_approves() {
    let server = RealServer::start().await;
    let admin = server.person("admin", true).await;
    import_examples(&admin).await;
    eligible(&admin, "ferry", "billing-administrator").await;
    admin
        .ok(&[
            "admin",
            "settings",
            "set",
            "--role",
            "billing-administrator",
            "--require-approval",
            "true",
            "--approver",
            "kenneth",
            "--require-mfa",
            "false",
        ])
        .await;

    // Ferry asks, with a justification: pending Kenneth's approval, not yet held.
    let ferry = server.person("ferry", false).await;
    let asked = ferry
        .json(&[
            "activate",
            "--role",
            "billing-administrator",
            "--justification",
            "month-end invoices",
        ])
        .await;
    assert_eq!(
        asked["results"][0]["outcome"], "ITEM_OUTCOME_PENDING_APPROVAL",
        "{asked}"
    );
    let id = asked["results"][0]["request"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!allowed(&admin, "ferry", "billing-administrator", "/").await);

    // Kenneth finds it waiting for him and approves; Ferry holds the role at once.
    let kenneth = server.person("kenneth", false).await;
    let waiting = kenneth.ok(&["approvals", "list"]).await;
    assert!(waiting.contains(&id), "{waiting}");
    let approved = kenneth
        .json(&[
            "approvals",
            "approve",
            &id,
            "--justification",
            "ok for month end",
        ])
        .await;
    assert_eq!(
        approved["status"], "REQUEST_STATUS_PROVISIONED",
        "{approved}"
    );
    assert!(allowed(&admin, "ferry", "billing-administrator", "/").await);

    // The audit shows requested, approval requested, approved, completed...
    let steps = [
        "RequestCreated",
        "ApprovalRequested",
        "RequestApproved",
        "RequestProvisioned",
    ];
    let audit = admin
        .json_until(
            &[
                "audit",
                "query",
                "--principal",
                "ferry",
                "--role",
                "billing-administrator",
            ],
            |v| {
                let actions: Vec<&str> = v["entries"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
                    .unwrap_or_default();
                steps.iter().all(|s| actions.contains(s))
            },
        )
        .await;
    for e in audit["entries"].as_array().unwrap() {
        if steps.contains(&e["action"].as_str().unwrap_or_default()) {
            assert_eq!(e["requestId"], id.as_str(), "{e}");
        }
    }
    // ...and the CSV export has those rows.
    let csv = admin
        .ok(&[
            "audit",
            "export",
            "--csv",
            "-",
            "--principal",
            "ferry",
            "--role",
            "billing-administrator",
        ])
        .await;
    let header = csv.lines().next().unwrap_or_default();
    assert!(header.contains("action"), "a header row: {header}");
    for step in steps {
        assert!(
            csv.lines().any(|l| l.contains(step) && l.contains(&id)),
            "{step} of {id} missing from the CSV:\n{csv}"
        );
    }
}

#[tokio::test]
async fn story_2_three_roles_at_once_one_needs_mfa() {
    let server = RealServer::start().await;
    let admin = server.person("admin", true).await;
    import_examples(&admin).await;
    let roles = [
        "billing-administrator",
        "exchange-administrator",
        "user-administrator",
    ];
    for r in roles {
        eligible(&admin, "ferry", r).await;
    }
    for r in &roles[..2] {
        admin
            .ok(&[
                "admin",
                "settings",
                "set",
                "--role",
                r,
                "--require-mfa",
                "false",
            ])
            .await;
    }
    // user-administrator keeps the built-in "MFA required".
    let shown = admin
        .json(&["admin", "settings", "show", "--role", "user-administrator"])
        .await;
    assert!(shown.to_string().contains("requireMfa"), "{shown}");

    // Without MFA: refused as a whole (3, denied), naming the item and what to do.
    let ferry = server.person("ferry", false).await;
    let mut args = vec![
        "activate",
        "--justification",
        "migration",
        "--duration",
        "2h",
    ];
    for r in roles {
        args.extend_from_slice(&["--role", r]);
    }
    let err = ferry.fails(3, &args).await;
    assert!(err.contains("MFA_STEP_UP_REQUIRED"), "{err}");
    assert!(
        err.contains("items[2]"),
        "names the item needing MFA: {err}"
    );
    assert!(err.contains("--mfa"), "a hint: {err}");
    for r in roles {
        assert!(!allowed(&admin, "ferry", r, "/").await, "{r} granted");
    }
    let mine = ferry.json(&["requests", "list"]).await;
    assert!(
        mine.get("requests").is_none(),
        "nothing was written: {mine}"
    );

    // A dry run with MFA checks all three and grants nothing; "tomorrow 09:00" is read
    // in the person's time zone and sent in UTC.
    let ferry = server.person("ferry", true).await;
    let mut args = vec!["-o", "json", "activate", "-j", "migration", "--dry-run"];
    for r in roles {
        args.extend_from_slice(&["--role", r]);
    }
    args.extend_from_slice(&["--start", "tomorrow 09:00"]);
    let dry: Value = serde_json::from_str(&ferry.ok_in("Asia/Kolkata", &args).await).unwrap();
    let ist = chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
    let tomorrow_9 = (server_now(&admin).await.with_timezone(&ist).date_naive()
        + TimeDelta::days(1))
    .and_hms_opt(9, 0, 0)
    .unwrap()
    .and_local_timezone(ist)
    .unwrap()
    .with_timezone(&Utc);
    let items = dry["results"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for i in items {
        assert_eq!(time(&i["request"]["startTime"]), tomorrow_9, "{i}");
    }
    for r in roles {
        assert!(!allowed(&admin, "ferry", r, "/").await);
    }
    // With MFA all three are active, at once.
    let t = server_now(&admin).await;
    let done = activate(&ferry, &roles, &["--duration", "2h"]).await;
    assert!(
        done.iter().all(|(o, _)| o == "ITEM_OUTCOME_PROVISIONED"),
        "{done:?}"
    );
    for r in roles {
        assert!(allowed(&admin, "ferry", r, "/").await, "{r} not granted");
    }
    for (_, id) in &done {
        let r = request(&ferry, id).await;
        assert_eq!(time(&r["endTime"]), t + TimeDelta::hours(2), "{r}");
    }
    // People see times in their own zone: the same end, in Kolkata and in UTC.
    let end = time(&request(&ferry, &done[0].1).await["endTime"]);
    let local = ferry
        .ok_in("Asia/Kolkata", &["requests", "show", &done[0].1])
        .await;
    let shown = end.with_timezone(&ist).format("%Y-%m-%d %H:%M").to_string();
    assert!(local.contains(&format!("→ {shown}")), "{shown} in {local}");
    let utc = ferry.ok(&["requests", "show", &done[0].1]).await;
    assert!(
        utc.contains(&format!("→ {}", end.format("%Y-%m-%d %H:%M"))),
        "{utc}"
    );
    let listed = ferry.json(&["roles", "--active"]).await;
    assert!(
        listed.to_string().contains("user-administrator"),
        "{listed}"
    );

    // All end on time: held a minute before the end, gone at the end.
    admin.ok(&["dev", "advance", "119m"]).await;
    for r in roles {
        assert!(allowed(&admin, "ferry", r, "/").await, "{r} ended early");
    }
    admin.ok(&["dev", "advance", "1m"]).await;
    for r in roles {
        assert!(!allowed(&admin, "ferry", r, "/").await, "{r} did not end");
    }
    for (_, id) in &done {
        let r = ferry
            .json_until(&["requests", "show", id], |r| {
                r["status"] == "REQUEST_STATUS_ENDED"
            })
            .await;
        assert_eq!(r["endReason"], "END_REASON_EXPIRED", "{r}");
    }
}

/// Story 3: an access review of Contributor on a subscription denies one holder; the
/// assignment is removed.
#[tokio::test]
async fn story_3_a_review_of_contributor_on_a_subscription_removes_a_denied_holder() {
    let server = RealServer::start().await;
    let admin = server.person("admin", true).await;
    import_examples(&admin).await;
    const SUB: &str = "/subscriptions/prod";
    for (who, kind) in [("carol", "--active"), ("dave", "--active")] {
        admin
            .ok(&[
                "admin",
                "assign",
                kind,
                "--principal",
                who,
                "--role",
                "contributor",
                "--scope",
                SUB,
                "--justification",
                "deployments",
            ])
            .await;
    }
    assert!(allowed(&admin, "dave", "contributor", SUB).await);

    // The administrator starts the review (the example file: Kenneth reviews, 14 days).
    let created = admin
        .json(&[
            "reviews",
            "create",
            "--file",
            &example("contributor-review.json"),
        ])
        .await;
    let definition = created["reviewDefinition"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rounds = admin
        .json_until(&["reviews", "rounds", "--definition", &definition], |v| {
            v["rounds"][0]["status"] == "ROUND_STATUS_IN_PROGRESS"
        })
        .await;
    let round = rounds["rounds"][0]["id"].as_str().unwrap().to_owned();
    let started = time(&rounds["rounds"][0]["startTime"]);
    assert_eq!(
        time(&rounds["rounds"][0]["endTime"]),
        started + TimeDelta::days(14)
    );

    // Kenneth sees it waiting, and decides: Carol stays, Dave goes.
    let kenneth = server.person("kenneth", false).await;
    let waiting = kenneth.ok(&["reviews", "list"]).await;
    assert!(waiting.contains("Contributor on Production"), "{waiting}");
    let items = kenneth.json(&["reviews", "items", &round, "--mine"]).await;
    let item_of = |who: &str| {
        items["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["principal"]["id"] == who)
            .unwrap_or_else(|| panic!("no item about {who}: {items}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (carol, dave) = (item_of("carol"), item_of("dave"));
    kenneth
        .ok(&[
            "reviews",
            "decide",
            &carol,
            "approve",
            "-j",
            "runs the deployments",
        ])
        .await;
    // A decision that is not one is a usage error (2).
    kenneth
        .fails(2, &["reviews", "decide", &dave, "maybe"])
        .await;
    kenneth
        .ok(&["reviews", "decide", &dave, "deny", "-j", "left the team"])
        .await;
    // The administrator may not decide an item (only the reviewer): denied, 3.
    admin
        .fails(3, &["reviews", "decide", &carol, "deny", "-j", "x"])
        .await;

    // The round ends on its day: fourteen days later, on the moved clock.
    admin.ok(&["dev", "advance", "13d"]).await;
    admin.login().await; // tokens age with the clock
    let r = admin
        .json(&["reviews", "rounds", "--definition", &definition])
        .await;
    assert_eq!(r["rounds"][0]["status"], "ROUND_STATUS_IN_PROGRESS", "{r}");
    admin.ok(&["dev", "advance", "1d"]).await;
    admin.login().await;
    admin
        .json_until(&["reviews", "rounds", "--definition", &definition], |v| {
            v["rounds"][0]["status"] == "ROUND_STATUS_COMPLETED"
        })
        .await;
    // Still held until the results are applied.
    assert!(allowed(&admin, "dave", "contributor", SUB).await);
    let dave_before = admin
        .json(&["admin", "assignments", "list", "--principal", "dave"])
        .await;
    assert_eq!(dave_before["assignments"].as_array().unwrap().len(), 1);
    let applied = admin.json(&["reviews", "apply", &round]).await;
    assert!(
        applied.to_string().contains("ROUND_STATUS_APPLIED"),
        "{applied}"
    );
    assert!(!allowed(&admin, "dave", "contributor", SUB).await);
    assert!(allowed(&admin, "carol", "contributor", SUB).await);
    let dave_now = admin
        .json(&["admin", "assignments", "list", "--principal", "dave"])
        .await;
    assert!(dave_now.get("assignments").is_none(), "{dave_now}");
    let carol_now = admin
        .json(&["admin", "assignments", "list", "--principal", "carol"])
        .await;
    assert_eq!(carol_now["assignments"].as_array().unwrap().len(), 1);
    // Applying again changes nothing.
    let again = admin.json(&["reviews", "apply", &round]).await;
    assert_eq!(again["round"]["progress"], applied["round"]["progress"]);
    assert!(!allowed(&admin, "dave", "contributor", SUB).await);
}

/// Story 4: activating too often raises the alert, which reaches a webhook receiver and
/// the alert stream.
#[tokio::test]
async fn story_4_activating_too_often_raises_an_alert_by_webhook_and_stream() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef-story";
    let hooks = WebhookSink::start(SECRET).await;
    let server = RealServer::start().await;
    let admin = server.person("admin", true).await;
    import_examples(&admin).await;
    eligible(&admin, "ferry", "billing-administrator").await;
    admin
        .ok(&[
            "admin",
            "settings",
            "set",
            "--role",
            "billing-administrator",
            "--require-mfa",
            "false",
        ])
        .await;
    let hook = admin
        .json(&[
            "admin",
            "webhooks",
            "add",
            "--name",
            "SOC",
            "--url",
            &hooks.url(),
            "--secret",
            SECRET,
            "--kind",
            "alert-raised",
        ])
        .await;
    let hook_id = hook["webhook"]["id"].as_str().unwrap().to_owned();
    let listed = admin.ok(&["admin", "webhooks", "list"]).await;
    assert!(
        listed.contains("SOC") && listed.contains("alert-raised"),
        "{listed}"
    );
    admin
        .ok(&[
            "alerts",
            "configure",
            "--file",
            &example("alert-activated-too-frequently.json"),
        ])
        .await;

    // The administrator follows the alert stream in another terminal.
    let mut watch = Command::new(&binaries().tenurectl)
        .args(["-o", "json", "alerts", "watch"])
        .env("TENURE_SERVER", &server.url)
        .env("TENURE_HOME", admin.home())
        .env_remove("TENURE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // The watch prints one pretty JSON document per change.
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut docs = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            let mut used = 0;
            while let Some(Ok(v)) = docs.next() {
                used = docs.byte_offset();
                let _ = tx.send(v);
            }
            buf.drain(..used);
        }
    });

    // Ferry activates four times within the hour, ten minutes apart.
    let ferry = server.person("ferry", false).await;
    let mut ids: Vec<String> = Vec::new();
    for i in 0..4 {
        if let Some(last) = ids.last() {
            admin.ok(&["dev", "advance", "10m"]).await;
            ferry.ok(&["deactivate", last]).await;
        }
        let done = activate(&ferry, &["billing-administrator"], &[]).await;
        assert_eq!(done[0].0, "ITEM_OUTCOME_PROVISIONED", "activation {i}");
        ids.push(done[0].1.clone());
    }

    // The alert arrives on the stream...
    let raised = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let v = seen.recv().await.expect("the watch ended");
            if v["change"] == "ALERT_CHANGE_RAISED"
                && v["alert"]["kind"] == "ALERT_KIND_ROLES_ACTIVATED_TOO_FREQUENTLY"
            {
                return v;
            }
        }
    })
    .await
    .expect("the alert on the stream");
    let alert = &raised["alert"];
    assert_eq!(alert["kind"], "ALERT_KIND_ROLES_ACTIVATED_TOO_FREQUENTLY");
    assert_eq!(alert["incidents"][0]["principal"]["id"], "ferry", "{alert}");
    assert_eq!(
        alert["incidents"][0]["requestIds"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "{alert}"
    );
    let alert_id = alert["id"].as_str().unwrap().to_owned();
    let _ = watch.kill();
    let _ = watch.wait();
    // ...and at the webhook receiver, signed.
    let call = hooks
        .wait_for("NOTIFICATION_EVENT_KIND_ALERT_RAISED", &alert_id)
        .await;
    assert!(call.signature_ok);
    assert_eq!(call.webhook_id, hook_id);
    // It is listed; Ferry (no reading role) may not read alerts.
    let alerts = admin.json(&["alerts", "list"]).await;
    assert!(alerts.to_string().contains(&alert_id), "{alerts}");
    ferry.fails(3, &["alerts", "list"]).await;
    // Dismissing needs a reason (5), then it is dismissed.
    admin.fails(5, &["alerts", "dismiss", &alert_id]).await;
    let dismissed = admin
        .json(&[
            "alerts",
            "dismiss",
            &alert_id,
            "--reason",
            "Ferry closes the month",
        ])
        .await;
    assert_eq!(dismissed["alert"]["status"], "ALERT_STATUS_DISMISSED");
}

/// Story 5: a restart of the server in the middle of a pending approval and an active
/// activation: nothing is lost, the activation still ends on time.
#[tokio::test]
async fn story_5_a_restart_loses_nothing_and_the_activation_still_ends_on_time() {
    let mut server = RealServer::start().await;
    let mut admin = server.person("admin", true).await;
    import_examples(&admin).await;
    eligible(&admin, "ferry", "exchange-administrator").await;
    eligible(&admin, "ferry", "billing-administrator").await;
    admin
        .ok(&[
            "admin",
            "settings",
            "set",
            "--role",
            "exchange-administrator",
            "--require-mfa",
            "false",
        ])
        .await;
    admin
        .ok(&[
            "admin",
            "settings",
            "set",
            "--role",
            "billing-administrator",
            "--require-mfa",
            "false",
            "--require-approval",
            "true",
            "--approver",
            "kenneth",
        ])
        .await;
    let mut ferry = server.person("ferry", false).await;
    let started = server_now(&admin).await;
    let active = activate(&ferry, &["exchange-administrator"], &["--duration", "1h"]).await;
    assert_eq!(active[0].0, "ITEM_OUTCOME_PROVISIONED");
    let pending = activate(&ferry, &["billing-administrator"], &["--duration", "2h"]).await;
    assert_eq!(pending[0].0, "ITEM_OUTCOME_PENDING_APPROVAL");
    let (active, pending) = (active[0].1.clone(), pending[0].1.clone());
    // The audit trail follows the streams: wait until it has the pending request.
    let before = admin
        .json_until(&["audit", "query", "--principal", "ferry"], |v| {
            v["entries"]
                .as_array()
                .is_some_and(|es| es.iter().any(|e| e.to_string().contains(&pending)))
        })
        .await;

    // The server stops (SIGTERM) and starts again on the same data and database.
    server.restart().await;
    admin.use_server(&server);
    ferry.use_server(&server);
    let kenneth = server.person("kenneth", false).await;
    assert_eq!(
        server_now(&admin).await,
        started,
        "the development clock resumes where it stood"
    );

    // Both survive: the activation holds, the request still waits for Kenneth.
    assert!(allowed(&admin, "ferry", "exchange-administrator", "/").await);
    let r = request(&ferry, &pending).await;
    assert_eq!(r["status"], "REQUEST_STATUS_PENDING_APPROVAL", "{r}");
    let waiting = kenneth.ok(&["approvals", "list"]).await;
    assert!(waiting.contains(&pending), "{waiting}");
    // And nothing of the audit is lost.
    let after = admin
        .json(&["audit", "query", "--principal", "ferry"])
        .await;
    let n = |v: &Value| v["entries"].as_array().map_or(0, Vec::len);
    assert!(
        n(&after) >= n(&before) && n(&before) > 0,
        "{before} {after}"
    );
    for e in before["entries"].as_array().unwrap() {
        assert!(after["entries"].as_array().unwrap().contains(e), "lost {e}");
    }

    // Kenneth approves after the restart; Ferry holds Billing Administrator.
    let approved = kenneth
        .json(&["approvals", "approve", &pending, "-j", "ok for month end"])
        .await;
    assert_eq!(
        approved["status"], "REQUEST_STATUS_PROVISIONED",
        "{approved}"
    );
    assert!(allowed(&admin, "ferry", "billing-administrator", "/").await);

    // The first activation still ends on time: held at 59 minutes, gone at 60.
    admin.ok(&["dev", "advance", "59m"]).await;
    assert!(allowed(&admin, "ferry", "exchange-administrator", "/").await);
    admin.ok(&["dev", "advance", "1m"]).await;
    assert!(!allowed(&admin, "ferry", "exchange-administrator", "/").await);
    let ended = ferry
        .json_until(&["requests", "show", &active], |r| {
            r["status"] == "REQUEST_STATUS_ENDED"
        })
        .await;
    assert_eq!(time(&ended["endTime"]), started + TimeDelta::hours(1));
    assert!(allowed(&admin, "ferry", "billing-administrator", "/").await);
    server.stop().await;
}
