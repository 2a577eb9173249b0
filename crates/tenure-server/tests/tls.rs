//! Tenure's own TLS, without a mesh, for real: certificates made here (a CA, a server
//! certificate, client certificates from this CA and from another), servers with
//! mutual TLS, and clients with and without certificates. The embedded server calls
//! its own contexts over mutual TLS, and a split pair (activation calling assignments
//! at an https:// address) provisions an activation across the two.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tenure_platform::auth::DevIssuer;
use tenure_platform::clock::SystemClock;
use tenure_platform::config::Config;
use tenure_platform::testing::TestDb;
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalType};
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BILLING: &str = "billing-administrator";

/// A certificate authority that issues server and client certificates into a folder.
struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        Self {
            dir,
            ca: Issuer::new(params, key),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Issues a certificate for `names`, writes `<file>.crt` and `<file>.key`.
    fn issue(
        &self,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let crt = self.dir.path().join(format!("{file}.crt"));
        let pem_key = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem_key, key.serialize_pem()).unwrap();
        (crt, pem_key)
    }

    fn pem(&self, file: &Path) -> String {
        std::fs::read_to_string(file).unwrap()
    }
}

/// The server certificate names `tenure.test` first (what a self-call checks it for),
/// and `localhost` (what the split pair's peer address uses).
fn server_cert(pki: &Pki) -> (PathBuf, PathBuf) {
    pki.issue(
        "server",
        &["tenure.test", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )
}

/// A configuration with mutual TLS on the server and the client side set up from `pki`.
fn mtls_config(pki: &Pki, data_dir: &Path, database_url: &str) -> Config {
    let (cert, key) = server_cert(pki);
    let (client_cert, client_key) = pki.issue(
        "tenure-system",
        &["tenure-system"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        database_url: Some(database_url.to_owned()),
        ..Config::default()
    };
    config.tls.cert_file = Some(cert);
    config.tls.key_file = Some(key);
    config.tls.client_ca_file = Some(pki.ca_file());
    config.peers_tls.ca_file = Some(pki.ca_file());
    config.peers_tls.cert_file = Some(client_cert);
    config.peers_tls.key_file = Some(client_key);
    config
}

struct Running {
    addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(config: Config) -> anyhow::Result<Self> {
        let stop = tokio_util::sync::CancellationToken::new();
        let (addr, _, task) = tenure_server::spawn(
            config,
            Arc::new(SystemClock),
            stop.clone().cancelled_owned(),
        )
        .await?;
        Ok(Self { addr, stop, task })
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// A TLS client that trusts `ca` and checks the server for `tenure.test`, presenting
/// `identity` when given.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("tenure.test");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)?
        .connect()
        .await
}

/// Whether a health check succeeds over `channel` (a refused handshake fails either at
/// connect or at the first call, depending on the TLS version's timing).
async fn health_ok(channel: Result<Channel, tonic::transport::Error>) -> Result<(), String> {
    let channel = channel.map_err(|e| format!("connect: {e:?}"))?;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|s| format!("call: {s:?}"))?;
    assert_eq!(resp.into_inner().status(), ServingStatus::Serving);
    Ok(())
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn token(data_dir: &Path, subject: &str, mfa: bool) -> String {
    DevIssuer::load_or_create(&data_dir.join("dev-issuer"), Arc::new(SystemClock))
        .unwrap()
        .mint(subject, mfa, chrono::TimeDelta::hours(1))
        .unwrap()
}

/// As the bootstrap administrator, through `assignments`: Ferry exists and is eligible
/// for Billing Administrator.
async fn make_ferry_eligible(assignments: Channel, data_dir: &Path) {
    let admin = token(data_dir, "admin", true);
    asg::principals_service_client::PrincipalsServiceClient::new(assignments.clone())
        .upsert_principals(authed(
            asg::UpsertPrincipalsRequest {
                principals: vec![asg::Principal {
                    id: "ferry".into(),
                    r#type: PrincipalType::User.into(),
                    display_name: "Ferry Kuhlman".into(),
                    user_principal_name: "ferry@example.test".into(),
                    ..Default::default()
                }],
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();
    asg::assignments_service_client::AssignmentsServiceClient::new(assignments)
        .create_assignment(authed(
            asg::CreateAssignmentRequest {
                assignment_type: AssignmentType::Eligible.into(),
                principal_id: "ferry".into(),
                role_id: BILLING.into(),
                scope_id: "/".into(),
                justification: "billing owner".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap();
}

/// Ferry activates through `activation`; the role is provisioned in assignments (an
/// inter-context call) and `assignments` answers that Ferry holds it.
async fn ferry_activates(activation: Channel, assignments: Channel, data_dir: &Path) {
    let resp = act::activation_service_client::ActivationServiceClient::new(activation)
        .activate_roles(authed(
            act::ActivateRolesRequest {
                items: vec![act::ActivationItem {
                    role_id: BILLING.into(),
                    scope_id: "/".into(),
                    justification: "month-end invoices".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &token(data_dir, "ferry", true),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.results[0].outcome(),
        act::ItemOutcome::Provisioned,
        "{resp:?}"
    );
    let check = asg::access_service_client::AccessServiceClient::new(assignments)
        .check_access(authed(
            asg::CheckAccessRequest {
                principal_id: "ferry".into(),
                target: Some(asg::check_access_request::Target::RoleId(BILLING.into())),
                scope_id: "/".into(),
                ..Default::default()
            },
            &token(data_dir, "admin", false),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(check.allowed, "{check:?}");
}

#[tokio::test]
async fn mutual_tls_serves_clients_with_a_certificate_and_refuses_the_rest() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("tenure");
    let config = mtls_config(&pki, dir.path(), &db.url);
    let server = Running::start(config).await.unwrap();
    let ca = pki.pem(&pki.ca_file());
    let (cert, key) = pki.issue("ferry", &["ferry"], ExtendedKeyUsagePurpose::ClientAuth);
    let good = || Some((pki.pem(&cert), pki.pem(&key)));

    // A client with a certificate from the CA is served, across contexts: activation
    // provisions through the assignments context over this process's own mutual-TLS
    // listener.
    health_ok(tls_channel(server.addr, &ca, good()).await)
        .await
        .unwrap();
    let channel = tls_channel(server.addr, &ca, good()).await.unwrap();
    make_ferry_eligible(channel.clone(), dir.path()).await;
    ferry_activates(channel.clone(), channel, dir.path()).await;

    // Without a client certificate: refused.
    let err = health_ok(tls_channel(server.addr, &ca, None).await).await;
    assert!(err.is_err(), "a client without a certificate was served");
    // With a certificate from another CA: refused.
    let other = Pki::new("other");
    let (ocert, okey) = other.issue("mallory", &["mallory"], ExtendedKeyUsagePurpose::ClientAuth);
    let err = health_ok(
        tls_channel(
            server.addr,
            &ca,
            Some((other.pem(&ocert), other.pem(&okey))),
        )
        .await,
    )
    .await;
    assert!(
        err.is_err(),
        "a client certificate from another CA was accepted"
    );
    // Plaintext: refused.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    let err = health_ok(plain).await;
    assert!(err.is_err(), "a plaintext client was served");
    // A client that does not trust the server's CA refuses the server.
    let err = health_ok(tls_channel(server.addr, &other.pem(&other.ca_file()), good()).await).await;
    assert!(
        err.is_err(),
        "the client accepted a server certificate from an unknown CA"
    );

    // The refusals did not disturb the server.
    health_ok(tls_channel(server.addr, &ca, good()).await)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_split_pair_provisions_over_https_with_mutual_tls() {
    // Each process its own database: the contexts share no tables, and one SQLite file
    // is for one process only.
    let db = TestDb::new().await.unwrap();
    let db_b = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("tenure");
    // Assignments alone, with mutual TLS. It calls nobody; the peers it does not serve
    // are named because a split process must know them.
    let mut a = mtls_config(&pki, dir.path(), &db.url);
    a.contexts = "assignments".into();
    a.peers.activation = Some("https://localhost:1".into());
    a.peers.reviews = Some("https://localhost:1".into());
    a.peers.notifications = Some("https://localhost:1".into());
    let assignments = Running::start(a).await.unwrap();
    // Activation alone, plaintext itself, calling assignments at its https:// address
    // with a client certificate. Both share the development issuer's key (data_dir), so
    // the service token activation mints is one assignments accepts.
    let mut b = mtls_config(&pki, dir.path(), &db_b.url);
    b.contexts = "activation".into();
    b.tls = Default::default();
    b.peers.assignments = Some(format!("https://localhost:{}", assignments.addr.port()));
    b.peers.reviews = Some("http://localhost:1".into());
    b.peers.notifications = Some("http://localhost:1".into());
    let activation = Running::start(b).await.unwrap();

    let ca = pki.pem(&pki.ca_file());
    let (cert, key) = pki.issue("admin", &["admin"], ExtendedKeyUsagePurpose::ClientAuth);
    let to_assignments = tls_channel(assignments.addr, &ca, Some((pki.pem(&cert), pki.pem(&key))))
        .await
        .unwrap();
    let to_activation = Channel::from_shared(format!("http://{}", activation.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    make_ferry_eligible(to_assignments.clone(), dir.path()).await;
    ferry_activates(to_activation, to_assignments, dir.path()).await;

    activation.stop().await;
    assignments.stop().await;
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_naming_the_setting() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("tenure");
    let start = |config: Config| async move {
        match Running::start(config).await {
            Ok(r) => {
                r.stop().await;
                panic!("started with unusable TLS files");
            }
            Err(e) => format!("{e:#}"),
        }
    };

    let mut missing = mtls_config(&pki, dir.path(), &db.url);
    missing.tls.key_file = Some(dir.path().join("nowhere.key"));
    let err = start(missing).await;
    assert!(
        err.contains("tls.key_file") && err.contains("nowhere.key"),
        "{err}"
    );

    let mut not_pem = mtls_config(&pki, dir.path(), &db.url);
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate").unwrap();
    not_pem.tls.client_ca_file = Some(junk);
    let err = start(not_pem).await;
    assert!(err.contains("tls.client_ca_file"), "{err}");

    // A key that is not the certificate's.
    let mut mismatched = mtls_config(&pki, dir.path(), &db.url);
    let (_, other_key) = pki.issue(
        "other",
        &["other.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    mismatched.tls.key_file = Some(other_key);
    let err = start(mismatched).await;
    assert!(err.contains("tls"), "{err}");

    let mut no_client_key = mtls_config(&pki, dir.path(), &db.url);
    no_client_key.peers_tls.key_file = Some(dir.path().join("gone.key"));
    let err = start(no_client_key).await;
    assert!(err.contains("peers_tls.key_file"), "{err}");
}
