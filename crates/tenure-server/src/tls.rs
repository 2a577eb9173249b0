//! Tenure's own TLS (rustls, through tonic), for deployments without a service mesh:
//! the server's certificate and key, client certificates required when a client CA is
//! configured, and the client side of calls to other contexts at `https://` addresses.
//!
//! Everything is read and checked once, at start: a missing file, a file without a PEM
//! certificate or key, or a key that does not fit is an error naming the setting, not a
//! failed handshake later.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tenure_platform::config::Config;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS material of one process, loaded and checked.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    /// The server side; `None` serves plaintext.
    pub server: Option<ServerTlsConfig>,
    /// The client side of calls to `https://` peers (and to this process itself when
    /// `server` is set); `None` when `peers_tls.ca_file` is unset.
    pub client: Option<ClientTlsConfig>,
    /// The name this process's own certificate is checked for when it calls itself (it
    /// connects to its listen address, which the certificate rarely names). `None`: the
    /// address itself (an IP address in the certificate).
    pub self_name: Option<String>,
}

impl Tls {
    /// Reads and checks `tls` and `peers_tls`.
    pub(crate) fn load(config: &Config) -> anyhow::Result<Self> {
        let mut out = Tls::default();
        if let (Some(cert_file), Some(key_file)) = (&config.tls.cert_file, &config.tls.key_file) {
            let cert_pem = read(cert_file, "tls.cert_file")?;
            let chain = certificates(&cert_pem, cert_file, "tls.cert_file")?;
            let key_pem = read(key_file, "tls.key_file")?;
            private_key(&key_pem, key_file, "tls.key_file")?;
            let mut server = ServerTlsConfig::new()
                .identity(Identity::from_pem(cert_pem, key_pem))
                .timeout(HANDSHAKE_TIMEOUT);
            if let Some(ca_file) = &config.tls.client_ca_file {
                let ca_pem = read(ca_file, "tls.client_ca_file")?;
                certificates(&ca_pem, ca_file, "tls.client_ca_file")?;
                server = server
                    .client_ca_root(Certificate::from_pem(ca_pem))
                    .client_auth_optional(false);
            }
            // Building the acceptor checks that the key belongs to the certificate and
            // that the client CA parses.
            tonic::transport::Server::builder()
                .tls_config(server.clone())
                .context("tls: the certificate, key or client CA is not usable")?;
            out.self_name = chain.first().and_then(own_dns_name);
            out.server = Some(server);
        }
        let peers = &config.peers_tls;
        if let Some(ca_file) = &peers.ca_file {
            let ca_pem = read(ca_file, "peers_tls.ca_file")?;
            certificates(&ca_pem, ca_file, "peers_tls.ca_file")?;
            let mut client = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .timeout(HANDSHAKE_TIMEOUT);
            if let (Some(cert_file), Some(key_file)) = (&peers.cert_file, &peers.key_file) {
                let cert_pem = read(cert_file, "peers_tls.cert_file")?;
                certificates(&cert_pem, cert_file, "peers_tls.cert_file")?;
                let key_pem = read(key_file, "peers_tls.key_file")?;
                private_key(&key_pem, key_file, "peers_tls.key_file")?;
                client = client.identity(Identity::from_pem(cert_pem, key_pem));
            }
            Endpoint::from_static("https://tenure.invalid")
                .tls_config(client.clone())
                .context("peers_tls: the CA, certificate or key is not usable")?;
            out.client = Some(client);
        } else {
            anyhow::ensure!(
                peers.cert_file.is_none(),
                "peers_tls.cert_file needs peers_tls.ca_file"
            );
        }
        Ok(out)
    }

    /// The client TLS settings for a call to `url`: `None` for `http://`. `local` says
    /// that the call goes to this process's own listener.
    pub(crate) fn for_peer(
        &self,
        url: &str,
        local: bool,
    ) -> anyhow::Result<Option<ClientTlsConfig>> {
        if !url.starts_with("https://") {
            return Ok(None);
        }
        let client = self
            .client
            .clone()
            .with_context(|| format!("{url} is an https:// address: set peers_tls.ca_file"))?;
        Ok(Some(match (&self.self_name, local) {
            (Some(name), true) => client.domain_name(name.clone()),
            _ => client,
        }))
    }
}

fn read(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{setting}: cannot read {}", path.display()))
}

fn certificates(
    pem: &[u8],
    path: &Path,
    setting: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{setting}: {} is not valid PEM", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{setting}: {} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

fn private_key(pem: &[u8], path: &Path, setting: &str) -> anyhow::Result<()> {
    PrivateKeyDer::from_pem_slice(pem)
        .map(|_| ())
        .with_context(|| format!("{setting}: {} holds no PEM private key", path.display()))
}

/// The first DNS name the certificate is valid for; a wildcard `*.example` becomes
/// `tenure.example`, which it covers.
fn own_dns_name(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = cert.valid_dns_names().next()?;
    Some(match name.strip_prefix("*.") {
        Some(rest) => format!("tenure.{rest}"),
        None => name.to_owned(),
    })
}
