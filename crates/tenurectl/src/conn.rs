//! Where the server is and who we are: the token comes from `--token`, `TENURE_TOKEN`,
//! a token file, a command (for a real OIDC provider's CLI), or the credentials saved by
//! `tenurectl login` (in `$TENURE_HOME`, default `~/.config/tenure`).

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// Saved by `tenurectl login`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Credentials {
    /// The server the token is for.
    pub server: String,
    /// The bearer token.
    pub token: String,
    /// Who it names (for display).
    pub subject: String,
}

/// The folder holding saved credentials.
pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("TENURE_HOME") {
        return Ok(PathBuf::from(h));
    }
    let base = std::env::var_os("HOME").context("HOME is not set; set TENURE_HOME")?;
    Ok(PathBuf::from(base).join(".config").join("tenure"))
}

/// Reads the saved credentials, if any.
pub fn saved() -> Option<Credentials> {
    let path = home().ok()?.join("credentials.json");
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Saves credentials (file mode 0600).
pub fn save(c: &Credentials) -> anyhow::Result<PathBuf> {
    let dir = home()?;
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("credentials.json");
    let text = serde_json::to_string_pretty(c)?;
    #[cfg(unix)]
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(text.as_bytes())?;
    }
    #[cfg(not(unix))]
    std::fs::write(&path, text)?;
    Ok(path)
}

/// How to get a token, from the global flags.
#[derive(Debug, Clone, Default)]
pub struct TokenSource {
    /// `--token`.
    pub token: Option<String>,
    /// `--token-file`.
    pub file: Option<PathBuf>,
    /// `--token-command`.
    pub command: Option<String>,
}

impl TokenSource {
    /// The token to present, in order: flag or TENURE_TOKEN, file, command, saved login.
    pub fn resolve(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.trim().to_owned());
        }
        if let Some(f) = &self.file {
            return Ok(std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_owned());
        }
        if let Some(cmd) = &self.command {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .output()
                .with_context(|| format!("running {cmd:?}"))?;
            anyhow::ensure!(
                out.status.success(),
                "token command {cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(String::from_utf8(out.stdout)?.trim().to_owned());
        }
        if let Some(c) = saved() {
            return Ok(c.token);
        }
        anyhow::bail!(
            "not logged in: run `tenurectl login --as NAME` (development issuer) or pass --token / --token-file / --token-command"
        )
    }
}

/// A connection to the server.
pub async fn connect(server: &str) -> anyhow::Result<Channel> {
    let url = if server.starts_with("http://") || server.starts_with("https://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .with_context(|| format!("{server:?} is not a server address"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(tls_from_env()?)
            .context("TLS settings")?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach Tenure at {url}; is `tenure serve` running?"))
}

/// TLS for an `https://` server: the CA that signed the server's certificate from
/// `TENURE_CA_FILE` (PEM; unset: the system's usual public roots), and for servers that
/// require mutual TLS a client certificate and key from `TENURE_CLIENT_CERT_FILE` and
/// `TENURE_CLIENT_KEY_FILE`.
fn tls_from_env() -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |var: &str, path: std::ffi::OsString| {
        std::fs::read(&path).with_context(|| format!("{var}: cannot read {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    match std::env::var_os("TENURE_CA_FILE") {
        Some(p) => tls = tls.ca_certificate(Certificate::from_pem(read("TENURE_CA_FILE", p)?)),
        None => tls = tls.with_webpki_roots(),
    }
    match (
        std::env::var_os("TENURE_CLIENT_CERT_FILE"),
        std::env::var_os("TENURE_CLIENT_KEY_FILE"),
    ) {
        (Some(c), Some(k)) => {
            tls = tls.identity(Identity::from_pem(
                read("TENURE_CLIENT_CERT_FILE", c)?,
                read("TENURE_CLIENT_KEY_FILE", k)?,
            ));
        }
        (None, None) => {}
        _ => anyhow::bail!(
            "set both TENURE_CLIENT_CERT_FILE and TENURE_CLIENT_KEY_FILE for a client certificate, or neither"
        ),
    }
    Ok(tls)
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(pub MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    /// For `token`.
    pub fn new(token: &str) -> anyhow::Result<Self> {
        Ok(Self(
            format!("Bearer {token}")
                .parse()
                .context("the token is not valid in a header")?,
        ))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}
