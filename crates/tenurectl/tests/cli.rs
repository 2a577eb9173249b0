//! `tenurectl` driving a real server: the field report's story as a person types it,
//! JSON output for scripts, exit codes, and the server's reasons printed clearly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use tenure_e2e::harness::{ADMIN, Harness};

const CTL: &str = env!("CARGO_BIN_EXE_tenurectl");

struct Cli<'a> {
    h: &'a Harness,
    home: tempfile::TempDir,
}

impl Cli<'_> {
    /// Runs tenurectl as `who` (a token in TENURE_TOKEN), off the async runtime.
    async fn run(&self, who: &str, mfa: bool, args: &[&str]) -> Output {
        let token = if mfa {
            self.h.token_mfa(who)
        } else {
            self.h.token(who)
        };
        let server = format!("http://{}", self.h.addr);
        let home = self.home.path().to_path_buf();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new(CTL)
                .args(&args)
                .env("TENURE_SERVER", server)
                .env("TENURE_TOKEN", token)
                .env("TENURE_HOME", home)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    async fn ok(&self, who: &str, mfa: bool, args: &[&str]) -> String {
        let out = self.run(who, mfa, args).await;
        assert!(
            out.status.success(),
            "tenurectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[tokio::test]
async fn the_field_report_story_typed_by_people() {
    let h = Harness::start().await;
    let cli = Cli {
        h: &h,
        home: tempfile::tempdir().unwrap(),
    };
    let people = cli.home.path().join("people.csv");
    std::fs::write(&people, "id,type,display_name,user_principal_name,email\nferry,user,Ferry Kuhlman,ferry@insight24.test,ferry@insight24.test\nkenneth,user,Kenneth van Surksum,kenneth@insight24.test,kenneth@insight24.test\n").unwrap();
    let out = cli
        .ok(
            ADMIN,
            false,
            &["admin", "principals", "import", people.to_str().unwrap()],
        )
        .await;
    assert!(out.contains("created 2"), "{out}");
    cli.ok(
        ADMIN,
        true,
        &[
            "admin",
            "assign",
            "--eligible",
            "--principal",
            "ferry",
            "--role",
            "billing-administrator",
            "--justification",
            "billing owner",
        ],
    )
    .await;
    cli.ok(
        ADMIN,
        false,
        &[
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
        ],
    )
    .await;
    let shown = cli
        .ok(
            ADMIN,
            false,
            &[
                "admin",
                "settings",
                "show",
                "--role",
                "billing-administrator",
            ],
        )
        .await;
    assert!(
        shown.contains("activation.require_approval") && shown.contains("kenneth"),
        "{shown}"
    );

    // Ferry sees his eligible role and asks for it.
    let roles = cli.ok("ferry", false, &["roles"]).await;
    assert!(
        roles.contains("Billing Administrator") && roles.contains("eligible"),
        "{roles}"
    );
    let asked = cli
        .ok(
            "ferry",
            false,
            &[
                "-o",
                "json",
                "activate",
                "--role",
                "billing-administrator",
                "--justification",
                "month-end invoices",
            ],
        )
        .await;
    let v: serde_json::Value = serde_json::from_str(&asked).unwrap();
    let id = v["results"][0]["request"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(v["results"][0]["outcome"], "ITEM_OUTCOME_PENDING_APPROVAL");

    // Kenneth approves.
    let waiting = cli.ok("kenneth", false, &["approvals", "list"]).await;
    assert!(waiting.contains(&id), "{waiting}");
    let approved = cli
        .ok(
            "kenneth",
            false,
            &[
                "approvals",
                "approve",
                &id,
                "--justification",
                "ok for month end",
            ],
        )
        .await;
    assert!(approved.contains("provisioned"), "{approved}");
    let check = cli
        .ok(
            ADMIN,
            false,
            &[
                "check",
                "--principal",
                "ferry",
                "--role",
                "billing-administrator",
            ],
        )
        .await;
    assert!(check.starts_with("ALLOWED"), "{check}");
    let req = cli.ok("ferry", false, &["requests", "show", &id]).await;
    assert!(
        req.contains("approve") && req.contains("ok for month end"),
        "{req}"
    );
    h.stop().await;
}

#[tokio::test]
async fn exit_codes_and_reasons_tell_people_what_went_wrong() {
    let h = Harness::start().await;
    let cli = Cli {
        h: &h,
        home: tempfile::tempdir().unwrap(),
    };
    h.seed_users(&["ferry"]).await;
    // not found: 4
    let out = cli
        .run(
            ADMIN,
            false,
            &[
                "check",
                "--principal",
                "ghost",
                "--role",
                "billing-administrator",
            ],
        )
        .await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // denied (not eligible): 3, with the reason
    let out = cli
        .run(
            "ferry",
            true,
            &[
                "activate",
                "--role",
                "global-administrator",
                "--justification",
                "x",
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not eligible"));
    // invalid argument: 5, with the field violation printed
    h.assign(
        tenure_proto::common::v1::AssignmentType::Eligible,
        "ferry",
        "billing-administrator",
        "/",
    )
    .await;
    let out = cli
        .run(
            "ferry",
            true,
            &["activate", "--role", "billing-administrator"],
        )
        .await;
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("items[0].justification"), "{err}");
    // MFA step-up: 3, with a hint
    let out = cli
        .run(
            "ferry",
            false,
            &["activate", "--role", "billing-administrator", "-j", "x"],
        )
        .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mfa"));
    // usage error: 2 (clap)
    let out = cli.run("ferry", false, &["activate"]).await;
    assert_eq!(out.status.code(), Some(2));
    // a bad duration is a usage error too
    let out = cli
        .run(
            "ferry",
            false,
            &["activate", "--role", "x", "--duration", "soon"],
        )
        .await;
    assert_eq!(out.status.code(), Some(2));
    h.stop().await;
}

#[tokio::test]
async fn login_with_the_development_issuer_is_remembered() {
    let h = Harness::start().await;
    let home = tempfile::tempdir().unwrap();
    let server = format!("http://{}", h.addr);
    let run = |args: Vec<&str>| {
        let (server, home) = (server.clone(), home.path().to_path_buf());
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        tokio::task::spawn_blocking(move || {
            Command::new(CTL)
                .args(&args)
                .env("TENURE_SERVER", server)
                .env("TENURE_HOME", home)
                .env_remove("TENURE_TOKEN")
                .output()
                .unwrap()
        })
    };
    let out = run(vec!["login", "--as", "ferry", "--mfa"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who = run(vec!["whoami"]).await.unwrap();
    assert!(String::from_utf8_lossy(&who.stdout).contains("ferry"));
    // the saved token works
    let roles = run(vec!["roles"]).await.unwrap();
    assert!(
        roles.status.success(),
        "{}",
        String::from_utf8_lossy(&roles.stderr)
    );
    h.stop().await;
}

#[test]
fn every_subcommand_has_help_and_completions_print() {
    for args in [
        vec!["--help"],
        vec!["activate", "--help"],
        vec!["admin", "assign", "--help"],
        vec!["approvals", "approve", "--help"],
        vec!["check", "--help"],
    ] {
        let out = Command::new(CTL).args(&args).output().unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Example"),
            "{args:?} has no examples"
        );
    }
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = Command::new(CTL)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        // The completions know the subcommands, down to the development clock's.
        assert!(
            text.contains("tenurectl") && text.contains("webhooks") && text.contains("advance"),
            "{shell}: {text}"
        );
    }
    // An unknown shell is a usage error.
    let out = Command::new(CTL)
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn an_administrator_queries_and_exports_the_audit_and_lists_alerts_and_reviews() {
    let h = Harness::start().await;
    let cli = Cli {
        h: &h,
        home: tempfile::tempdir().unwrap(),
    };
    h.seed_users(&["ferry"]).await;
    h.assign(
        tenure_proto::common::v1::AssignmentType::Eligible,
        "ferry",
        "billing-administrator",
        "/",
    )
    .await;
    cli.ok(
        "ferry",
        true,
        &[
            "activate",
            "--role",
            "billing-administrator",
            "-j",
            "month-end invoices",
        ],
    )
    .await;
    // The audit trail follows the streams: wait until Ferry's activation is in it.
    let mut found = String::new();
    for _ in 0..300 {
        found = cli
            .ok(ADMIN, false, &["audit", "query", "--principal", "ferry"])
            .await;
        if found.contains("RequestProvisioned") || found.contains("provisioned") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(found.contains("ferry"), "{found}");
    let csv = cli.home.path().join("audit.csv");
    cli.ok(
        ADMIN,
        false,
        &[
            "audit",
            "export",
            "--csv",
            csv.to_str().unwrap(),
            "--principal",
            "ferry",
        ],
    )
    .await;
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().contains("action"),
        "a header row: {text}"
    );
    assert!(lines.count() >= 2, "rows for Ferry's activation: {text}");
    // Ferry may read his own audit, but not the alerts.
    cli.ok("ferry", false, &["audit", "query", "--mine"]).await;
    let denied = cli.run("ferry", false, &["alerts", "list"]).await;
    assert_eq!(denied.status.code(), Some(3));
    cli.ok(ADMIN, false, &["alerts", "list"]).await;
    let defs = cli.ok(ADMIN, false, &["reviews", "definitions"]).await;
    assert!(defs.contains("(none)") || defs.contains("NAME"), "{defs}");
    h.stop().await;
}
