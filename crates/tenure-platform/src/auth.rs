//! Identity: who is calling, from an OpenID Connect JWT bearer token.
//!
//! [`Verifier`] checks, in this order, and answers every failure with one
//! [`AuthError`] (UNAUTHENTICATED on the wire):
//! 1. the header: `alg` is in the allow-list of asymmetric algorithms (never `none`,
//!    never HMAC, so a public key can never be used as an HMAC secret); `typ`, when
//!    present, is `JWT` or `at+jwt`; `jku`, `x5u` and `jwk` are refused outright (a token
//!    never chooses the key that verifies it); `kid` is present and names a key of the
//!    pinned key set (a map lookup, never a path or URL);
//! 2. the signature, with that key, whose algorithm must equal the header's;
//! 3. the claims: `iss` is the configured issuer, `aud` contains the configured audience,
//!    `sub` is present, `exp` is in the future and `nbf` (when present) in the past, both
//!    with a leeway of at most 30 s, against the injected [`Clock`].
//!
//! The principal is `sub`; MFA is `amr` containing `mfa`; `auth_time` says how fresh.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;

/// The most leeway a deployment may configure for `exp`/`nbf`.
pub const MAX_LEEWAY_SECS: u64 = 30;
/// The longest token accepted, in bytes (a bound on work done for garbage).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused. Sent to the client as UNAUTHENTICATED with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer …` metadata.
    #[error("missing bearer token")]
    Missing,
    /// Not a well-formed JWT.
    #[error("malformed token")]
    Malformed,
    /// `alg` not in the allow-list (includes `none` and every HMAC algorithm).
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `typ` is neither `JWT` nor `at+jwt`.
    #[error("token type not accepted")]
    WrongType,
    /// The header carries `jku`, `x5u` or `jwk`.
    #[error("token names its own key source (jku, x5u or jwk); refused")]
    KeySourceHeader,
    /// No `kid`, or a `kid` not in the key set.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// No `sub`.
    #[error("token has no subject")]
    NoSubject,
    /// `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
}

/// The authenticated caller of an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal id (`sub`).
    pub principal_id: String,
    /// Whether the token says MFA was performed (`amr` contains `mfa`).
    pub mfa: bool,
    /// When the user authenticated (`auth_time`), when the token says.
    pub auth_time: Option<DateTime<Utc>>,
    /// The raw token, forwarded to other contexts so they decide on the originating
    /// subject's rights.
    pub token: Arc<str>,
}

impl Caller {
    /// Whether the caller performed MFA no longer than `max_age` ago at `now`.
    pub fn has_fresh_mfa(&self, now: DateTime<Utc>, max_age: chrono::TimeDelta) -> bool {
        self.mfa
            && self.auth_time.is_some_and(|t| {
                now - t <= max_age && t <= now + chrono::TimeDelta::seconds(MAX_LEEWAY_SECS as i64)
            })
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    iss: Option<String>,
    #[serde(default)]
    aud: Audience,
    exp: Option<i64>,
    nbf: Option<i64>,
    #[serde(default)]
    amr: Vec<String>,
    auth_time: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, want: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(a) => a == want,
            Audience::Many(v) => v.iter().any(|a| a == want),
        }
    }
}

/// The asymmetric algorithms Tenure accepts by default.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A verification key of the pinned key set.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

/// How many verified tokens a verifier remembers.
const VERIFIED_CACHE_SIZE: usize = 4096;

/// A verified token and the window (seconds, leeway applied) in which it stays valid.
#[derive(Clone)]
struct Verified {
    caller: Caller,
    valid_from: i64,
    valid_until: i64,
}

/// Validates bearer tokens against a pinned key set. Verified tokens are remembered
/// (keyed by the exact token) with their validity window, so a client reusing its token
/// costs a map lookup instead of a signature check; every lookup still checks `exp` and
/// `nbf` against the clock. Only successes are remembered.
#[derive(Clone)]
pub struct Verifier {
    verified: Arc<std::sync::RwLock<HashMap<Arc<str>, Verified>>>,
    keys: Arc<HashMap<String, Key>>,
    issuer: String,
    audience: String,
    leeway: i64,
    algorithms: Vec<Algorithm>,
    clock: SharedClock,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// Parses an algorithm name of the configuration; HMAC names and `none` are refused.
pub fn parse_algorithm(name: &str) -> anyhow::Result<Algorithm> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown JWT algorithm {name:?}"))?;
    anyhow::ensure!(
        DEFAULT_ALGORITHMS.contains(&alg),
        "JWT algorithm {name} is not allowed (only asymmetric algorithms)"
    );
    Ok(alg)
}

impl Verifier {
    /// A verifier for tokens of `issuer` for `audience`, with keys from a JWKS document.
    /// Keys without a `kid`, symmetric keys, and keys whose algorithm is not allowed are
    /// left out.
    pub fn new(
        jwks: &JwkSet,
        issuer: &str,
        audience: &str,
        leeway_secs: u64,
        algorithms: &[Algorithm],
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            leeway_secs <= MAX_LEEWAY_SECS,
            "leeway of {leeway_secs} s is over the maximum of {MAX_LEEWAY_SECS} s"
        );
        anyhow::ensure!(!issuer.is_empty(), "the token issuer must be configured");
        anyhow::ensure!(
            !audience.is_empty(),
            "the token audience must be configured"
        );
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            if let Some((kid, key)) = Self::usable_key(jwk, algorithms) {
                keys.insert(kid, key);
            }
        }
        anyhow::ensure!(!keys.is_empty(), "the key set holds no usable signing key");
        Ok(Self {
            verified: Arc::new(std::sync::RwLock::new(HashMap::new())),
            keys: Arc::new(keys),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: i64::try_from(leeway_secs)?,
            algorithms: algorithms.to_vec(),
            clock,
        })
    }

    fn usable_key(jwk: &Jwk, algorithms: &[Algorithm]) -> Option<(String, Key)> {
        let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty())?;
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::OctetKey(_), _) => return None,
            (AlgorithmParameters::OctetKeyPair(_), _) => Algorithm::EdDSA,
            (_, Some(ka)) => ka.to_string().parse().ok()?,
            (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None) => match ec.curve {
                jsonwebtoken::jwk::EllipticCurve::P384 => Algorithm::ES384,
                _ => Algorithm::ES256,
            },
        };
        if !algorithms.contains(&alg) || !DEFAULT_ALGORITHMS.contains(&alg) {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some((kid, Key { key, alg }))
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Verifies `token` and returns the caller it authenticates.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let now = self.clock.now().timestamp();
        if let Ok(cache) = self.verified.read()
            && let Some(v) = cache.get(token)
            && now >= v.valid_from
            && now < v.valid_until
        {
            return Ok(v.caller.clone());
        }
        let (caller, valid_from, valid_until) = self.verify_uncached(token)?;
        if let Ok(mut cache) = self.verified.write() {
            if cache.len() >= VERIFIED_CACHE_SIZE {
                // Forget expired entries first; if that frees nothing, start over.
                cache.retain(|_, v| v.valid_until > now);
                if cache.len() >= VERIFIED_CACHE_SIZE {
                    cache.clear();
                }
            }
            cache.insert(
                caller.token.clone(),
                Verified {
                    caller: caller.clone(),
                    valid_from,
                    valid_until,
                },
            );
        }
        Ok(caller)
    }

    /// The full check, and the window (seconds) in which its answer holds.
    fn verify_uncached(&self, token: &str) -> Result<(Caller, i64, i64), AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let header = decode_header_strict(token)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        if let Some(typ) = &header.typ
            && !typ.eq_ignore_ascii_case("JWT")
            && !typ.eq_ignore_ascii_case("at+jwt")
        {
            return Err(AuthError::WrongType);
        }
        if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() {
            return Err(AuthError::KeySourceHeader);
        }
        let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        let key = self.keys.get(kid).ok_or(AuthError::UnknownKey)?;
        if key.alg != header.alg {
            return Err(AuthError::AlgorithmNotAllowed);
        }

        // Signature only: the claims are checked below against the injected clock.
        let mut validation = Validation::new(key.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::AlgorithmNotAllowed
                }
                _ => AuthError::Malformed,
            }
        })?;
        let c = data.claims;

        if c.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
        if !c.aud.contains(&self.audience) {
            return Err(AuthError::WrongAudience);
        }
        let sub = c
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::NoSubject)?;
        let now = self.clock.now().timestamp();
        let exp = c.exp.ok_or(AuthError::Expired)?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = c.nbf
            && now < nbf.saturating_sub(self.leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        let valid_from = c.nbf.map_or(i64::MIN, |n| n.saturating_sub(self.leeway));
        let valid_until = exp.saturating_add(self.leeway);
        Ok((
            Caller {
                principal_id: sub,
                mfa: c.amr.iter().any(|m| m == "mfa"),
                auth_time: c.auth_time.and_then(|t| DateTime::from_timestamp(t, 0)),
                token: Arc::from(token),
            },
            valid_from,
            valid_until,
        ))
    }
}

/// Decodes the JOSE header, mapping an unknown `alg` (including `none`) to
/// [`AuthError::AlgorithmNotAllowed`] rather than "malformed", so the log says why.
fn decode_header_strict(token: &str) -> Result<Header, AuthError> {
    use base64::Engine as _;
    let first = token.split('.').next().ok_or(AuthError::Malformed)?;
    if token.split('.').count() != 3 {
        return Err(AuthError::Malformed);
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first)
        .map_err(|_| AuthError::Malformed)?;
    let value: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| AuthError::Malformed)?;
    let alg = value
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(AuthError::Malformed)?;
    if alg.parse::<Algorithm>().is_err() {
        return Err(AuthError::AlgorithmNotAllowed);
    }
    jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)
}

/// Loads a JWKS document from a file.
pub fn load_jwks_file(path: &Path) -> anyhow::Result<JwkSet> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the key set {}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

// ---------------------------------------------------------------------------------------
// The local development issuer.

/// The issuer name of the development issuer's tokens.
pub const DEV_ISSUER: &str = "tenure-dev-issuer";
/// The audience Tenure expects by default.
pub const DEFAULT_AUDIENCE: &str = "tenure";
const DEV_KID: &str = "tenure-dev-1";

/// A local token issuer for the embedded default and for tests: an Ed25519 key kept in
/// the data directory, tokens minted on request. It exists so a newcomer can run Tenure
/// without an identity provider; it is only ever served on loopback unless explicitly and
/// loudly forced (see the configuration).
#[derive(Clone)]
pub struct DevIssuer {
    encoding: EncodingKey,
    jwks: JwkSet,
    clock: SharedClock,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer").finish_non_exhaustive()
    }
}

/// Claims the development issuer writes.
#[derive(Debug, Serialize)]
struct DevClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    auth_time: i64,
    amr: Vec<&'a str>,
}

impl DevIssuer {
    /// Loads the key from `dir`, creating it on first use (file mode 0600).
    pub fn load_or_create(dir: &Path, clock: SharedClock) -> anyhow::Result<Self> {
        use ed25519_dalek::pkcs8::{
            DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding,
        };
        let path = dir.join("dev-issuer-ed25519.pem");
        let signing = if path.exists() {
            let pem = std::fs::read_to_string(&path)?;
            ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
        } else {
            std::fs::create_dir_all(dir)?;
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("encoding the dev issuer key: {e}"))?;
            write_private(&path, pem.as_bytes())?;
            key
        };
        let pem = signing
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the dev issuer key: {e}"))?;
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes())?;
        use base64::Engine as _;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(signing.verifying_key().to_bytes());
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({
            "keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": DEV_KID, "alg": "EdDSA", "use": "sig"}]
        }))?;
        Ok(Self {
            encoding,
            jwks,
            clock,
        })
    }

    /// The issuer's current time (its clock's).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The public key set that verifies this issuer's tokens.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// Mints a token for `subject`, valid for `ttl`, with `amr` containing `mfa` when
    /// `mfa` holds.
    pub fn mint(&self, subject: &str, mfa: bool, ttl: chrono::TimeDelta) -> anyhow::Result<String> {
        anyhow::ensure!(!subject.is_empty(), "subject must not be empty");
        let now = self.clock.now().timestamp();
        let mut amr = vec!["pwd"];
        if mfa {
            amr.push("mfa");
        }
        let claims = DevClaims {
            iss: DEV_ISSUER,
            sub: subject,
            aud: DEFAULT_AUDIENCE,
            iat: now,
            nbf: now,
            exp: now + ttl.num_seconds(),
            auth_time: now,
            amr,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(DEV_KID.to_owned());
        header.typ = Some("JWT".to_owned());
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }

    /// A verifier for this issuer's tokens.
    pub fn verifier(&self, leeway_secs: u64) -> anyhow::Result<Verifier> {
        Verifier::new(
            &self.jwks,
            DEV_ISSUER,
            DEFAULT_AUDIENCE,
            leeway_secs,
            &[Algorithm::EdDSA],
            self.clock.clone(),
        )
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tenure's own identity for calls between contexts.

/// The last minted service token and when it was minted.
pub type TokenCache = Arc<std::sync::Mutex<Option<(DateTime<Utc>, Arc<str>)>>>;

/// Where a context gets the bearer token it presents when it calls another context on
/// its own behalf (provisioning an approved request, reading for a timer): minted by
/// the development issuer in the embedded default, or read from a file that a token
/// agent keeps fresh in a real deployment.
#[derive(Clone)]
pub enum ServiceToken {
    /// Minted locally for `principal` (cached for a few minutes).
    Dev {
        /// The local issuer.
        issuer: DevIssuer,
        /// The service principal id.
        principal: String,
        /// The last token and when it was minted.
        cache: TokenCache,
    },
    /// Read from a file on every use (the file is rotated by something else).
    File(std::path::PathBuf),
    /// No token configured: calls on the service's own behalf fail clearly.
    None,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dev { principal, .. } => write!(f, "ServiceToken::Dev({principal})"),
            Self::File(p) => write!(f, "ServiceToken::File({})", p.display()),
            Self::None => write!(f, "ServiceToken::None"),
        }
    }
}

impl ServiceToken {
    /// A token minted by `issuer` for `principal`.
    pub fn dev(issuer: DevIssuer, principal: &str) -> Self {
        Self::Dev {
            issuer,
            principal: principal.to_owned(),
            cache: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// The current token.
    pub fn get(&self) -> anyhow::Result<Arc<str>> {
        match self {
            Self::Dev {
                issuer,
                principal,
                cache,
            } => {
                let now = issuer.now();
                let mut c = cache
                    .lock()
                    .map_err(|_| anyhow::anyhow!("service token cache poisoned"))?;
                if let Some((at, t)) = c.as_ref()
                    && now - *at < chrono::TimeDelta::minutes(5)
                    && now >= *at
                {
                    return Ok(t.clone());
                }
                let t: Arc<str> =
                    Arc::from(issuer.mint(principal, false, chrono::TimeDelta::minutes(30))?);
                *c = Some((now, t.clone()));
                Ok(t)
            }
            Self::File(path) => {
                let t = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("reading the service token {}: {e}", path.display())
                })?;
                Ok(Arc::from(t.trim()))
            }
            Self::None => anyhow::bail!(
                "no service token: configure auth.service_token_file (or run the development issuer)"
            ),
        }
    }
}
