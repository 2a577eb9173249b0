//! `tenurectl` against a server with Tenure's own mutual TLS (no mesh): with the CA and
//! a client certificate from the environment it works; without the client certificate,
//! or in plaintext, it fails clearly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tenure_platform::clock::SystemClock;
use tenure_platform::config::Config;
use tenure_platform::testing::TestDb;

const CTL: &str = env!("CARGO_BIN_EXE_tenurectl");

/// Writes a CA and a certificate signed by it for `names` into `dir`.
fn issue(
    dir: &Path,
    ca: &Issuer<'_, KeyPair>,
    file: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let (c, k) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

async fn ctl(env: Vec<(&'static str, String)>, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(CTL);
        cmd.args(&args).env_remove("TENURE_CA_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn tenurectl_speaks_mutual_tls_from_its_environment() {
    let pki = tempfile::tempdir().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_file = pki.path().join("ca.crt");
    std::fs::write(&ca_file, params.self_signed(&ca_key).unwrap().pem()).unwrap();
    let ca = Issuer::new(params, ca_key);
    let (server_crt, server_key) = issue(
        pki.path(),
        &ca,
        "server",
        &["tenure.test", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_crt, client_key) = issue(
        pki.path(),
        &ca,
        "client",
        &["operator"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    let db = TestDb::new().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        database_url: Some(db.url.clone()),
        ..Config::default()
    };
    config.tls.cert_file = Some(server_crt);
    config.tls.key_file = Some(server_key);
    config.tls.client_ca_file = Some(ca_file.clone());
    config.peers_tls.ca_file = Some(ca_file.clone());
    config.peers_tls.cert_file = Some(client_crt.clone());
    config.peers_tls.key_file = Some(client_key.clone());
    let server = tenure_e2e::TestServer::start(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let token = tenure_e2e::dev_token(data.path(), "admin", false)
        .unwrap()
        .to_string();
    let home = tempfile::tempdir().unwrap();
    let base = |server: String| {
        vec![
            ("TENURE_SERVER", server),
            ("TENURE_TOKEN", token.clone()),
            ("TENURE_HOME", home.path().display().to_string()),
        ]
    };
    let https = format!("https://localhost:{}", server.addr.port());
    let args = ["-o", "json", "roles"];

    // CA and client certificate: served.
    let mut env = base(https.clone());
    env.push(("TENURE_CA_FILE", ca_file.display().to_string()));
    env.push(("TENURE_CLIENT_CERT_FILE", client_crt.display().to_string()));
    env.push(("TENURE_CLIENT_KEY_FILE", client_key.display().to_string()));
    let out = ctl(env, &args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("privileged-role-administrator"));

    // No client certificate: the server refuses the handshake.
    let mut env = base(https.clone());
    env.push(("TENURE_CA_FILE", ca_file.display().to_string()));
    let out = ctl(env, &args).await;
    assert!(!out.status.success(), "served without a client certificate");

    // Half a client identity is a usage error, named.
    let mut env = base(https);
    env.push(("TENURE_CA_FILE", ca_file.display().to_string()));
    env.push(("TENURE_CLIENT_CERT_FILE", client_crt.display().to_string()));
    let out = ctl(env, &args).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TENURE_CLIENT_KEY_FILE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Plaintext to a TLS server fails.
    let out = ctl(
        base(format!("http://127.0.0.1:{}", server.addr.port())),
        &args,
    )
    .await;
    assert!(!out.status.success(), "plaintext accepted by a TLS server");
    server.stop().await.unwrap();
}
