//! The `tenure` binary itself: started on port 0 with a fresh data directory, it prints
//! the address it bound, serves health, accepts a token minted by `tenure token` from the
//! same data directory, and exits cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tenure_platform::testing::TestDb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const BIN: &str = env!("CARGO_BIN_EXE_tenure");

#[tokio::test]
async fn the_binary_serves_on_port_zero_and_stops_on_sigterm() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TENURE_DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("tenure listening on ")
        .expect(&line)
        .to_owned();

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap();
    let mut health = None;
    for _ in 0..100 {
        if let Ok(ch) = channel.connect().await {
            health = Some(HealthClient::new(ch));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut health = health.expect("server did not accept connections");
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);

    // A token from `tenure token` (same data directory, same key) is accepted.
    let out = Command::new(BIN)
        .args(["token", "--subject", "tenure-system", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut events = tenure_proto::activation::v1::events_service_client::EventsServiceClient::new(
        channel.connect().await.unwrap(),
    );
    let mut req =
        tonic::Request::new(tenure_proto::activation::v1::SubscribeEventsRequest::default());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    events
        .subscribe_events(req)
        .await
        .expect("token from `tenure token` accepted");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--contexts",
            "billing",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown context \"billing\""), "{err}");

    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "listen = \"0.0.0.0:0\"\n[auth]\ndev_issuer = \"on\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dev_issuer_allow_non_loopback"));
}

#[test]
fn the_development_clock_is_refused_off_loopback_and_without_the_development_issuer() {
    let dir = tempfile::tempdir().unwrap();
    // On a public address, even with the issuer forced on there: refused.
    let cfg = dir.path().join("lab.toml");
    std::fs::write(
        &cfg,
        "listen = \"0.0.0.0:0\"\n[auth]\ndev_issuer = \"on\"\ndev_issuer_allow_non_loopback = true\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--dev-clock", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dev-clock is refused on 0.0.0.0:0"), "{err}");
    // Without the development issuer: refused.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--dev-clock",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("TENURE_AUTH__DEV_ISSUER", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dev-clock needs the development issuer"),
        "{err}"
    );
    assert!(
        !dir.path().join("dev-clock").exists(),
        "nothing kept when refused"
    );
    // Nested keys from the environment are read (and validated) like the file's.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TENURE_AUTH__LEEWAY_SECS", "999")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.leeway_secs must be at most 30"), "{err}");
}
