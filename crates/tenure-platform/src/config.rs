//! Configuration, layered: built-in defaults, then a TOML file, then `TENURE_*`
//! environment variables (nested keys with `__`, e.g. `TENURE_AUTH__ISSUER`), then
//! command-line flags; then [`Config::validate`]. `deploy/tenure.example.toml` lists
//! every key with its default, and a test parses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::MAX_LEEWAY_SECS;

/// The four contexts a server can run.
pub const CONTEXTS: [&str; 4] = ["assignments", "activation", "reviews", "notifications"];

/// Everything a `tenure serve` process is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Where the embedded database, the development issuer's key and other local state
    /// live.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`. Unset: a SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Which contexts this process serves: "all", or a comma-separated list.
    pub contexts: String,
    /// Where the contexts this process does not serve are reached.
    pub peers: Peers,
    /// This server's own TLS, for deployments without a service mesh.
    pub tls: TlsConfig,
    /// TLS of the calls this process makes to other contexts at `https://` addresses
    /// (and to itself when `tls` is on).
    pub peers_tls: PeersTlsConfig,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// Who may call, and how tokens are checked.
    pub auth: AuthConfig,
    /// Limits that protect the server.
    pub limits: Limits,
    /// The notifications context: e-mail, links, alert rescans.
    pub notifications: NotificationsConfig,
}

/// How the notifications context sends e-mail, links to Tenure and rescans alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// The base URL of links to act in e-mails (approve, review), for example
    /// "https://tenure.contoso.example"; empty leaves links out. The API's
    /// `EmailSettings.link_base_url` overrides it once set.
    pub link_base_url: String,
    /// How often every alert kind is re-evaluated, seconds (besides evaluation as
    /// events arrive). At least 60.
    pub alert_rescan_interval_secs: u64,
    /// The SMTP server; e-mail is off while `smtp.host` is unset.
    pub smtp: SmtpConfig,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            link_base_url: String::new(),
            alert_rescan_interval_secs: 3600,
            smtp: SmtpConfig::default(),
        }
    }
}

/// The SMTP server e-mails are sent through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// The server's host name; unset turns e-mail off.
    pub host: Option<String>,
    /// The port (587 for STARTTLS, 465 for implicit TLS, 25 without TLS).
    pub port: u16,
    /// "starttls" (default), "tls" (implicit TLS) or "none" (plain, for local relays
    /// and tests only).
    pub tls: String,
    /// The user name to authenticate with; unset sends without authentication.
    pub username: Option<String>,
    /// A file holding the password (read at start).
    pub password_file: Option<PathBuf>,
    /// The From address of e-mails (the API's `EmailSettings.from_address` overrides
    /// it once set).
    pub from_address: String,
    /// How long one SMTP conversation may take, seconds.
    pub timeout_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: 587,
            tls: "starttls".into(),
            username: None,
            password_file: None,
            from_address: "tenure@localhost.localdomain".into(),
            timeout_secs: 10,
        }
    }
}

/// Addresses of other contexts (`http://host:port`) for a split deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Peers {
    /// The assignments context.
    pub assignments: Option<String>,
    /// The activation context.
    pub activation: Option<String>,
    /// The reviews context.
    pub reviews: Option<String>,
    /// The notifications context.
    pub notifications: Option<String>,
}

/// The server's own TLS (rustls). Off while `cert_file` is unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM), leaf first. Turns TLS on.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to. When set, every
    /// connection must present a client certificate (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the server speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// TLS of outgoing calls to other contexts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeersTlsConfig {
    /// CA certificates (PEM) that peers' server certificates must chain to. Required
    /// when a peer is an `https://` address or `tls` is on (a process calls the
    /// contexts it serves itself through its own listener).
    pub ca_file: Option<PathBuf>,
    /// The client certificate chain (PEM) presented to peers that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM).
    pub key_file: Option<PathBuf>,
}

/// Log format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for deployments.
    Json,
}

/// Logging and tracing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Text or JSON logs. The level comes from `RUST_LOG` (default `info`).
    pub log_format: LogFormat,
    /// An OTLP/gRPC collector endpoint (`http://collector:4317`); traces are exported
    /// only when set.
    pub otlp_endpoint: Option<String>,
    /// The service name reported to the collector.
    pub service_name: Option<String>,
}

/// Whether the local development issuer runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevIssuerMode {
    /// On when no identity provider is configured (no `jwks_file`/`jwks_url`) and the
    /// server listens on loopback; off otherwise.
    #[default]
    Auto,
    /// Always on (still refused on a non-loopback address without
    /// `dev_issuer_allow_non_loopback`).
    On,
    /// Never on.
    Off,
}

/// Token checking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The expected `iss` of tokens from the identity provider.
    pub issuer: Option<String>,
    /// The expected `aud`.
    pub audience: String,
    /// A JWKS document on disk with the provider's signing keys.
    pub jwks_file: Option<PathBuf>,
    /// Allowed signing algorithms (asymmetric only).
    pub algorithms: Vec<String>,
    /// Leeway for `exp`/`nbf`, seconds, at most 30.
    pub leeway_secs: u64,
    /// How recent an MFA must be to count for activation, seconds.
    pub mfa_freshness_secs: u64,
    /// The local development issuer.
    pub dev_issuer: DevIssuerMode,
    /// Serve the development issuer on a non-loopback address. Dangerous: anyone who can
    /// reach the port can mint tokens. Named loudly on purpose.
    pub dev_issuer_allow_non_loopback: bool,
    /// Made a permanent active Privileged Role Administrator at first start.
    pub bootstrap_principal: Option<String>,
    /// Principal ids of Tenure's own services (used for calls between contexts, for
    /// example provisioning an approved activation).
    pub service_principals: Vec<String>,
    /// A file holding the bearer token this process presents when it calls another
    /// context on its own behalf (kept fresh by a token agent). Unset: with the
    /// development issuer, a token for the first service principal is minted locally.
    pub service_token_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: crate::auth::DEFAULT_AUDIENCE.to_owned(),
            jwks_file: None,
            algorithms: vec![
                "RS256".into(),
                "ES256".into(),
                "EdDSA".into(),
                "PS256".into(),
            ],
            leeway_secs: 30,
            mfa_freshness_secs: 15 * 60,
            dev_issuer: DevIssuerMode::Auto,
            dev_issuer_allow_non_loopback: false,
            bootstrap_principal: None,
            service_principals: vec!["tenure-system".into()],
            service_token_file: None,
        }
    }
}

/// Server limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest decoded request message, bytes.
    pub max_decoding_message_size: usize,
    /// Largest encoded response message, bytes.
    pub max_encoding_message_size: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Requests in flight per connection (streams included) before new ones are refused
    /// with RESOURCE_EXHAUSTED. Keep it below `max_concurrent_streams`: otherwise a
    /// client's excess calls wait in its own HTTP/2 stream queue, the server never sees
    /// them to refuse, and overload becomes latency (BENCHMARKS.md, workload 10).
    pub concurrency_per_connection: usize,
    /// Deadline of every unary RPC, milliseconds.
    pub request_timeout_ms: u64,
    /// Mutations a principal may make per second on average (0: no limit). Reads and
    /// Tenure's own service principals (`auth.service_principals`) are exempt. Over the
    /// limit a call gets RESOURCE_EXHAUSTED with a retry hint.
    pub mutations_per_principal_per_sec: u32,
    /// Mutations a principal may make at once before the per-second rate applies.
    pub mutations_burst: u32,
    /// Messages a server stream (events, alerts, notifications, audit export) buffers
    /// ahead of its consumer.
    pub stream_buffer_messages: usize,
    /// A stream whose buffer stays full this long (its consumer reads nothing) is ended
    /// with RESOURCE_EXHAUSTED; the consumer resumes from its cursor. Milliseconds.
    pub slow_consumer_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_decoding_message_size: 1024 * 1024,
            max_encoding_message_size: 4 * 1024 * 1024,
            max_concurrent_streams: 128,
            concurrency_per_connection: 64,
            request_timeout_ms: 10_000,
            mutations_per_principal_per_sec: 50,
            mutations_burst: 500,
            stream_buffer_messages: 1024,
            slow_consumer_timeout_ms: 30_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("tenure-data"),
            database_url: None,
            contexts: "all".into(),
            peers: Peers::default(),
            tls: TlsConfig::default(),
            peers_tls: PeersTlsConfig::default(),
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            notifications: NotificationsConfig::default(),
        }
    }
}

/// The top-level keys of the server's configuration (the only `TENURE_*` variables it
/// reads).
const SERVER_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "contexts",
    "peers",
    "tls",
    "peers_tls",
    "telemetry",
    "auth",
    "limits",
    "notifications",
];

/// `TENURE_*` variables that belong to other tools (tenurectl, the test suite, the
/// `--config` flag) and are expected in the same shell.
const OTHER_TENURE_VARIABLES: &[&str] = &[
    "TENURE_CONFIG",
    "TENURE_SERVER",
    "TENURE_TOKEN",
    "TENURE_HOME",
    "TENURE_CA_FILE",
    "TENURE_CLIENT_CERT_FILE",
    "TENURE_CLIENT_KEY_FILE",
    "TENURE_TEST_DATABASE_URL",
];

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--database-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// `--contexts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contexts: Option<String>,
}

impl Config {
    /// Builds the configuration from the layers and validates it.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(path.exists(), "config file {} not found", path.display());
            fig = fig.merge(Toml::file(path));
        }
        for (name, _) in std::env::vars() {
            let Some(key) = name.strip_prefix("TENURE_") else {
                continue;
            };
            let top = key
                .split("__")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !SERVER_KEYS.contains(&top.as_str())
                && !OTHER_TENURE_VARIABLES.contains(&name.as_str())
            {
                eprintln!(
                    "tenure: ignoring {name}: not a server setting (see deploy/tenure.example.toml)"
                );
            }
        }
        let fig = fig
            .merge(Env::prefixed("TENURE_").split("__").filter(|k| {
                // The filter sees the key as written, before `split` maps "__" to "."
                // and before lowercasing: the top-level key of TENURE_AUTH__ISSUER is
                // "AUTH".
                let top = k
                    .as_str()
                    .split("__")
                    .next()
                    .and_then(|k| k.split('.').next())
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                SERVER_KEYS.contains(&top.as_str())
            }))
            .merge(Serialized::defaults(overrides));
        let config: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document on top of the defaults (no environment), and validates.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        let contexts = self.context_list()?;
        anyhow::ensure!(
            self.auth.leeway_secs <= MAX_LEEWAY_SECS,
            "auth.leeway_secs must be at most {MAX_LEEWAY_SECS}"
        );
        anyhow::ensure!(
            self.auth.mfa_freshness_secs >= 60 && self.auth.mfa_freshness_secs <= 24 * 3600,
            "auth.mfa_freshness_secs must be between 60 and 86400"
        );
        for a in &self.auth.algorithms {
            crate::auth::parse_algorithm(a)?;
        }
        anyhow::ensure!(
            !self.auth.audience.is_empty(),
            "auth.audience must not be empty"
        );
        if self.auth.jwks_file.is_some() {
            anyhow::ensure!(
                self.auth.issuer.as_deref().is_some_and(|i| !i.is_empty()),
                "auth.issuer is required with auth.jwks_file"
            );
        }
        if self.dev_issuer_enabled() && !self.listen.ip().is_loopback() {
            anyhow::ensure!(
                self.auth.dev_issuer_allow_non_loopback,
                "the development issuer would be reachable on {} (not loopback): anyone could \
                 mint tokens. Configure an identity provider (auth.jwks_file), set \
                 auth.dev_issuer = \"off\", or, for a throwaway lab only, set \
                 auth.dev_issuer_allow_non_loopback = true",
                self.listen
            );
        }
        if let Some(url) = &self.database_url {
            crate::db::Backend::of_url(url)?;
        }
        for (name, peer) in [
            ("assignments", &self.peers.assignments),
            ("activation", &self.peers.activation),
            ("reviews", &self.peers.reviews),
            ("notifications", &self.peers.notifications),
        ] {
            if let Some(p) = peer {
                anyhow::ensure!(
                    p.starts_with("http://") || p.starts_with("https://"),
                    "peers.{name} must be an http:// or https:// address"
                );
            } else {
                anyhow::ensure!(
                    contexts.contains(&name),
                    "peers.{name} is required when this process does not serve {name}"
                );
            }
        }
        self.validate_tls(&contexts)?;
        let l = &self.limits;
        anyhow::ensure!(
            l.max_decoding_message_size >= 1024 && l.max_encoding_message_size >= 1024,
            "limits: message sizes must be at least 1024 bytes"
        );
        anyhow::ensure!(
            l.max_concurrent_streams >= 1,
            "limits.max_concurrent_streams must be at least 1"
        );
        anyhow::ensure!(
            l.concurrency_per_connection >= 1,
            "limits.concurrency_per_connection must be at least 1"
        );
        anyhow::ensure!(
            l.request_timeout_ms >= 100,
            "limits.request_timeout_ms must be at least 100"
        );
        anyhow::ensure!(
            l.mutations_per_principal_per_sec == 0 || l.mutations_burst >= 1,
            "limits.mutations_burst must be at least 1"
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&l.stream_buffer_messages),
            "limits.stream_buffer_messages must be 1 to 1000000"
        );
        anyhow::ensure!(
            l.slow_consumer_timeout_ms >= 100,
            "limits.slow_consumer_timeout_ms must be at least 100"
        );
        let n = &self.notifications;
        anyhow::ensure!(
            n.alert_rescan_interval_secs >= 60,
            "notifications.alert_rescan_interval_secs must be at least 60"
        );
        anyhow::ensure!(
            n.link_base_url.is_empty()
                || n.link_base_url.starts_with("http://")
                || n.link_base_url.starts_with("https://"),
            "notifications.link_base_url must be an http:// or https:// address"
        );
        anyhow::ensure!(
            matches!(n.smtp.tls.as_str(), "starttls" | "tls" | "none"),
            "notifications.smtp.tls must be \"starttls\", \"tls\" or \"none\""
        );
        anyhow::ensure!(
            n.smtp.from_address.contains('@'),
            "notifications.smtp.from_address must be an e-mail address"
        );
        anyhow::ensure!(
            (1..=300).contains(&n.smtp.timeout_secs),
            "notifications.smtp.timeout_secs must be 1 to 300"
        );
        Ok(())
    }

    fn validate_tls(&self, served: &[&str]) -> anyhow::Result<()> {
        let (tls, client) = (&self.tls, &self.peers_tls);
        anyhow::ensure!(
            tls.cert_file.is_some() == tls.key_file.is_some(),
            "tls.cert_file and tls.key_file must be set together"
        );
        anyhow::ensure!(
            tls.client_ca_file.is_none() || tls.enabled(),
            "tls.client_ca_file needs tls.cert_file and tls.key_file"
        );
        anyhow::ensure!(
            client.cert_file.is_some() == client.key_file.is_some(),
            "peers_tls.cert_file and peers_tls.key_file must be set together"
        );
        let https_peers: Vec<&str> = [
            ("assignments", &self.peers.assignments),
            ("activation", &self.peers.activation),
            ("reviews", &self.peers.reviews),
            ("notifications", &self.peers.notifications),
        ]
        .into_iter()
        .filter(|(name, url)| {
            !served.contains(name) && url.as_deref().is_some_and(|u| u.starts_with("https://"))
        })
        .map(|(name, _)| name)
        .collect();
        if let Some(name) = https_peers.first() {
            anyhow::ensure!(
                client.ca_file.is_some(),
                "peers.{name} is an https:// address: set peers_tls.ca_file to the CA that signs the peers' certificates"
            );
        }
        if tls.enabled() && !self.self_called_contexts(served).is_empty() {
            anyhow::ensure!(
                client.ca_file.is_some(),
                "with tls on, this process calls the contexts it serves through its own TLS listener: set peers_tls.ca_file to the CA that signs tls.cert_file"
            );
            anyhow::ensure!(
                tls.client_ca_file.is_none() || client.cert_file.is_some(),
                "with tls.client_ca_file set, this process needs a client certificate to call the contexts it serves: set peers_tls.cert_file and peers_tls.key_file"
            );
        }
        Ok(())
    }

    /// The contexts served here that other contexts served here call (through this
    /// process's own listener).
    pub fn self_called_contexts(&self, served: &[&str]) -> Vec<&'static str> {
        let mut called: Vec<&'static str> = Vec::new();
        if served.contains(&"activation") || served.contains(&"reviews") {
            called.push("assignments");
        }
        if served.contains(&"notifications") {
            called.extend(["assignments", "activation", "reviews"]);
        }
        called.sort_unstable();
        called.dedup();
        called.retain(|c| served.contains(c));
        called
    }

    /// The contexts this process serves, validated.
    pub fn context_list(&self) -> anyhow::Result<Vec<&'static str>> {
        if self.contexts.trim() == "all" {
            return Ok(CONTEXTS.to_vec());
        }
        let mut out = Vec::new();
        for name in self
            .contexts
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let known = CONTEXTS.iter().find(|c| **c == name).ok_or_else(|| {
                anyhow::anyhow!("unknown context {name:?} (known: {})", CONTEXTS.join(", "))
            })?;
            if !out.contains(known) {
                out.push(*known);
            }
        }
        anyhow::ensure!(!out.is_empty(), "contexts must name at least one context");
        Ok(out)
    }

    /// Whether the development issuer runs under this configuration.
    pub fn dev_issuer_enabled(&self) -> bool {
        match self.auth.dev_issuer {
            DevIssuerMode::On => true,
            DevIssuerMode::Off => false,
            DevIssuerMode::Auto => self.auth.jwks_file.is_none() && self.listen.ip().is_loopback(),
        }
    }

    /// The database URL in effect.
    pub fn effective_database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("tenure.db").display()))
    }

    /// The database URL of one context. PostgreSQL: the configured database, shared by
    /// the contexts (each keeps to its own tables). SQLite: a file of the context's own
    /// next to the configured one (`tenure.db` → `tenure-assignments.db`, …), so the
    /// contexts of one process never queue on each other's writer (SQLite has one
    /// writer per file), as they would not when split over processes.
    pub fn database_url_for(&self, context: &str) -> String {
        crate::db::context_url(&self.effective_database_url(), context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_example_parses_and_equals_the_defaults() {
        let text = include_str!("../../../deploy/tenure.example.toml");
        let parsed = Config::from_toml(text).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn dev_issuer_on_a_public_address_is_refused_without_the_loud_flag() {
        let c = Config::from_toml("listen = \"0.0.0.0:50051\"\n[auth]\ndev_issuer = \"on\"\n");
        let err = c.unwrap_err().to_string();
        assert!(err.contains("dev_issuer_allow_non_loopback"), "{err}");
        let ok = Config::from_toml(
            "listen = \"0.0.0.0:50051\"\n[auth]\ndev_issuer = \"on\"\ndev_issuer_allow_non_loopback = true\n",
        );
        assert!(ok.is_ok());
        // "auto" turns itself off on a public address instead of failing.
        let auto = Config::from_toml("listen = \"0.0.0.0:50051\"\n").unwrap();
        assert!(!auto.dev_issuer_enabled());
    }

    #[test]
    fn leeway_over_thirty_seconds_is_refused() {
        let err = Config::from_toml("[auth]\nleeway_secs = 31\n").unwrap_err();
        assert!(err.to_string().contains("leeway"));
    }

    #[test]
    fn unknown_keys_and_contexts_are_refused() {
        assert!(Config::from_toml("lisen = \"127.0.0.1:1\"\n").is_err());
        assert!(Config::from_toml("contexts = \"assignments,billing\"\n").is_err());
        let split = Config::from_toml(
            "contexts = \"activation\"\n[peers]\nassignments = \"http://a:1\"\nreviews = \"http://r:1\"\nnotifications = \"http://n:1\"\n",
        )
        .unwrap();
        assert_eq!(split.context_list().unwrap(), vec!["activation"]);
        assert!(
            Config::from_toml("contexts = \"activation\"\n").is_err(),
            "peers missing"
        );
    }

    #[test]
    fn notification_settings_are_checked() {
        assert!(Config::from_toml("[notifications]\nalert_rescan_interval_secs = 5\n").is_err());
        assert!(Config::from_toml("[notifications.smtp]\ntls = \"ssl\"\n").is_err());
        assert!(Config::from_toml("[notifications]\nlink_base_url = \"ftp://x\"\n").is_err());
        let c = Config::from_toml(
            "[notifications.smtp]\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\n",
        )
        .unwrap();
        assert_eq!(c.notifications.smtp.port, 2525);
    }

    #[test]
    fn tls_settings_are_checked_together() {
        let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
        assert!(err("[tls]\ncert_file = \"c.pem\"\n").contains("tls.key_file"));
        assert!(err("[tls]\nclient_ca_file = \"ca.pem\"\n").contains("tls.client_ca_file"));
        assert!(err("[peers_tls]\nkey_file = \"k.pem\"\n").contains("peers_tls.cert_file"));
        // An https:// peer needs the CA to check it by.
        let split = "contexts = \"activation\"\n[peers]\nassignments = \"https://a:1\"\nreviews = \"http://r:1\"\nnotifications = \"http://n:1\"\n";
        assert!(err(split).contains("peers_tls.ca_file"));
        assert!(Config::from_toml(&format!("{split}[peers_tls]\nca_file = \"ca.pem\"\n")).is_ok());
        // With TLS on, the embedded process calls itself over TLS, so it needs the CA,
        // and a client certificate when client certificates are required.
        let embedded =
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\n";
        assert!(err(embedded).contains("peers_tls.ca_file"));
        let with_ca = format!("{embedded}[peers_tls]\nca_file = \"ca.pem\"\n");
        assert!(err(&with_ca).contains("peers_tls.cert_file"));
        assert!(
            Config::from_toml(&format!(
                "{with_ca}cert_file = \"cc.pem\"\nkey_file = \"ck.pem\"\n"
            ))
            .is_ok()
        );
        // Assignments alone calls nobody.
        assert!(
            Config::from_toml(&format!("contexts = \"assignments\"\n[peers]\nactivation = \"http://a:1\"\nreviews = \"http://r:1\"\nnotifications = \"http://n:1\"\n{embedded}"))
                .is_ok()
        );
    }

    #[test]
    fn hmac_algorithms_are_refused() {
        let err = Config::from_toml("[auth]\nalgorithms = [\"HS256\"]\n").unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
    }
}
