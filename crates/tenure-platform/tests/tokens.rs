//! Every way a bearer token can be wrong is refused, each as its own case; the valid
//! token is accepted. Time is a manual clock, so the leeway boundaries are exact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta};
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tenure_platform::auth::{AuthError, DevIssuer, Verifier};
use tenure_platform::clock::ManualClock;

const ISS: &str = "https://idp.test";
const AUD: &str = "tenure";
const KID: &str = "key-1";
const LEEWAY: i64 = 30;
const NOW: i64 = 1_900_000_000;

struct Fixture {
    clock: ManualClock,
    verifier: Verifier,
    signing: EncodingKey,
    public_x: Vec<u8>,
}

fn fixture() -> Fixture {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let pem = key.to_pkcs8_pem(Default::default()).unwrap();
    let public_x = key.verifying_key().to_bytes().to_vec();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&public_x);
    let jwks: JwkSet = serde_json::from_value(json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": KID, "alg": "EdDSA"},
        // A symmetric key in the set must never be used.
        {"kty": "oct", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"secret"), "kid": "hmac", "alg": "HS256"}
    ]}))
    .unwrap();
    let clock = ManualClock::new(DateTime::from_timestamp(NOW, 0).unwrap());
    let verifier = Verifier::new(
        &jwks,
        ISS,
        AUD,
        LEEWAY as u64,
        tenure_platform::auth::DEFAULT_ALGORITHMS,
        Arc::new(clock.clone()),
    )
    .unwrap();
    Fixture {
        clock,
        verifier,
        signing: EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        public_x,
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "ferry", "exp": NOW + 3600, "nbf": NOW - 10, "iat": NOW - 10,
           "amr": ["pwd", "mfa"], "auth_time": NOW - 60})
}

fn header() -> Header {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(KID.into());
    h.typ = Some("JWT".into());
    h
}

fn sign(f: &Fixture, h: &Header, c: &Value) -> String {
    jsonwebtoken::encode(h, c, &f.signing).unwrap()
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[test]
fn a_valid_token_names_the_principal_and_its_mfa() {
    let f = fixture();
    let caller = f.verifier.verify(&sign(&f, &header(), &claims())).unwrap();
    assert_eq!(caller.principal_id, "ferry");
    assert!(caller.mfa);
    assert_eq!(caller.auth_time.unwrap().timestamp(), NOW - 60);
    // `at+jwt` (RFC 9068) and a missing typ are fine too.
    let mut h = header();
    h.typ = Some("at+jwt".into());
    assert!(f.verifier.verify(&sign(&f, &h, &claims())).is_ok());
    h.typ = None;
    assert!(f.verifier.verify(&sign(&f, &h, &claims())).is_ok());
}

#[test]
fn alg_none_is_refused() {
    let f = fixture();
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": KID, "typ": "JWT"})),
        b64(&claims())
    );
    assert_eq!(
        f.verifier.verify(&token),
        Err(AuthError::AlgorithmNotAllowed)
    );
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "None", "kid": KID})),
        b64(&claims())
    );
    assert_eq!(
        f.verifier.verify(&token),
        Err(AuthError::AlgorithmNotAllowed)
    );
}

#[test]
fn hmac_with_the_public_key_as_secret_is_refused() {
    let f = fixture();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let mut h = Header::new(alg);
        h.kid = Some(KID.into());
        let token =
            jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&f.public_x)).unwrap();
        assert_eq!(
            f.verifier.verify(&token),
            Err(AuthError::AlgorithmNotAllowed),
            "{alg:?}"
        );
    }
    // Nor can a symmetric key that sits in the key set be chosen by kid.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("hmac".into());
    let token = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"secret")).unwrap();
    assert!(f.verifier.verify(&token).is_err());
}

#[test]
fn unknown_missing_or_malicious_kid_is_refused() {
    let f = fixture();
    for kid in [
        Some("key-2"),
        Some("../../../../etc/passwd"),
        Some("' OR 1=1 --"),
        Some("http://evil/jwks"),
        None,
    ] {
        let mut h = header();
        h.kid = kid.map(Into::into);
        assert_eq!(
            f.verifier.verify(&sign(&f, &h, &claims())),
            Err(AuthError::UnknownKey),
            "{kid:?}"
        );
    }
}

#[test]
fn jku_x5u_and_embedded_jwk_headers_are_refused_not_followed() {
    let f = fixture();
    let mut h = header();
    h.jku = Some("http://127.0.0.1:1/jwks.json".into());
    assert_eq!(
        f.verifier.verify(&sign(&f, &h, &claims())),
        Err(AuthError::KeySourceHeader)
    );
    let mut h = header();
    h.x5u = Some("http://127.0.0.1:1/cert.pem".into());
    assert_eq!(
        f.verifier.verify(&sign(&f, &h, &claims())),
        Err(AuthError::KeySourceHeader)
    );
    let mut h = header();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&f.public_x);
    h.jwk = Some(serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "x": x})).unwrap());
    assert_eq!(
        f.verifier.verify(&sign(&f, &h, &claims())),
        Err(AuthError::KeySourceHeader)
    );
}

#[test]
fn expiry_is_enforced_at_the_leeway_boundary() {
    let f = fixture();
    let mut c = claims();
    c["exp"] = json!(NOW);
    let token = sign(&f, &header(), &c);
    f.clock
        .set(DateTime::from_timestamp(NOW + LEEWAY - 1, 0).unwrap());
    assert!(f.verifier.verify(&token).is_ok(), "1 s inside the leeway");
    f.clock.advance(TimeDelta::seconds(1));
    assert_eq!(
        f.verifier.verify(&token),
        Err(AuthError::Expired),
        "at exp + leeway"
    );
    f.clock.advance(TimeDelta::seconds(1));
    assert_eq!(
        f.verifier.verify(&token),
        Err(AuthError::Expired),
        "1 s past"
    );
    // no exp at all
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        f.verifier.verify(&sign(&f, &header(), &c)),
        Err(AuthError::Expired)
    );
}

#[test]
fn not_before_is_enforced_at_the_leeway_boundary() {
    let f = fixture();
    let mut c = claims();
    c["nbf"] = json!(NOW + 100);
    let token = sign(&f, &header(), &c);
    f.clock
        .set(DateTime::from_timestamp(NOW + 100 - LEEWAY - 1, 0).unwrap());
    assert_eq!(
        f.verifier.verify(&token),
        Err(AuthError::NotYetValid),
        "1 s before the leeway"
    );
    f.clock.advance(TimeDelta::seconds(1));
    assert!(f.verifier.verify(&token).is_ok(), "at nbf - leeway");
}

#[test]
fn wrong_issuer_audience_type_or_missing_subject_is_refused() {
    let f = fixture();
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert_eq!(
        f.verifier.verify(&sign(&f, &header(), &c)),
        Err(AuthError::WrongIssuer)
    );
    let mut c = claims();
    c["aud"] = json!(["other-api"]);
    assert_eq!(
        f.verifier.verify(&sign(&f, &header(), &c)),
        Err(AuthError::WrongAudience)
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        f.verifier.verify(&sign(&f, &header(), &c)),
        Err(AuthError::WrongAudience)
    );
    let mut h = header();
    h.typ = Some("id_token+jwt".into());
    assert_eq!(
        f.verifier.verify(&sign(&f, &h, &claims())),
        Err(AuthError::WrongType)
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        f.verifier.verify(&sign(&f, &header(), &c)),
        Err(AuthError::NoSubject)
    );
    c["sub"] = json!("");
    assert_eq!(
        f.verifier.verify(&sign(&f, &header(), &c)),
        Err(AuthError::NoSubject)
    );
}

#[test]
fn a_tampered_payload_or_signature_is_refused() {
    let f = fixture();
    let token = sign(&f, &header(), &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c["sub"] = json!("admin");
    let forged = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    assert_eq!(f.verifier.verify(&forged), Err(AuthError::BadSignature));
    let mut sig = parts[2].to_owned();
    let last = sig.pop().unwrap();
    sig.push(if last == 'A' { 'B' } else { 'A' });
    let forged = format!("{}.{}.{}", parts[0], parts[1], sig);
    assert!(matches!(
        f.verifier.verify(&forged),
        Err(AuthError::BadSignature | AuthError::Malformed)
    ));
    for garbage in ["", "a.b", "a.b.c.d", "!!!.???.###", &"x".repeat(20_000)] {
        assert!(f.verifier.verify(garbage).is_err(), "{garbage:.20}");
    }
}

#[test]
fn leeway_over_thirty_seconds_cannot_be_configured() {
    let f = fixture();
    let jwks: JwkSet = serde_json::from_value(json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&f.public_x), "kid": KID}
    ]})).unwrap();
    let err =
        Verifier::new(&jwks, ISS, AUD, 31, &[Algorithm::EdDSA], Arc::new(f.clock)).unwrap_err();
    assert!(err.to_string().contains("leeway"));
}

#[test]
fn the_dev_issuer_mints_tokens_its_verifier_accepts_and_keeps_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(DateTime::from_timestamp(NOW, 0).unwrap()));
    let issuer = DevIssuer::load_or_create(dir.path(), clock.clone()).unwrap();
    let token = issuer.mint("kenneth", false, TimeDelta::hours(1)).unwrap();
    let caller = issuer.verifier(30).unwrap().verify(&token).unwrap();
    assert_eq!(caller.principal_id, "kenneth");
    assert!(!caller.mfa);
    // Reloading from the same folder verifies the same tokens.
    let again = DevIssuer::load_or_create(dir.path(), clock).unwrap();
    assert!(again.verifier(30).unwrap().verify(&token).is_ok());
}

#[test]
fn a_remembered_token_still_expires_at_the_leeway_boundary() {
    let f = fixture();
    let mut c = claims();
    c["exp"] = json!(NOW + 60);
    let token = sign(&f, &header(), &c);
    // verified once (and remembered), then again from memory
    assert!(f.verifier.verify(&token).is_ok());
    assert!(f.verifier.verify(&token).is_ok());
    f.clock
        .set(DateTime::from_timestamp(NOW + 60 + LEEWAY - 1, 0).unwrap());
    assert!(f.verifier.verify(&token).is_ok());
    f.clock.advance(TimeDelta::seconds(1));
    assert_eq!(
        f.verifier.verify(&token),
        Err(AuthError::Expired),
        "memory never outlives exp + leeway"
    );
    // and a tampered copy of a remembered token is still refused
    f.clock.set(DateTime::from_timestamp(NOW, 0).unwrap());
    let good = sign(&f, &header(), &claims());
    assert!(f.verifier.verify(&good).is_ok());
    let mut bad = good;
    bad.pop();
    assert!(f.verifier.verify(&bad).is_err());
}

mod random {
    //! The token parser never panics and never accepts on random input: random strings,
    //! and tokens with a random header JSON (algorithms, `kid`, `jku`, `crit`, wrong
    //! types), random claims and a random signature. PROPTEST_CASES runs it longer.
    use super::*;
    use proptest::prelude::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,20}".prop_map(Value::from),
            prop_oneof![
                Just("none"),
                Just("HS256"),
                Just("RS256"),
                Just("EdDSA"),
                Just("ES256"),
                Just(KID),
                Just(ISS),
                Just(AUD),
                Just("JWT"),
                Just("at+jwt"),
                Just("http://evil.test/jwks"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("alg".to_owned()),
                        Just("kid".to_owned()),
                        Just("typ".to_owned()),
                        Just("jku".to_owned()),
                        Just("jwk".to_owned()),
                        Just("x5u".to_owned()),
                        Just("crit".to_owned()),
                        Just("sub".to_owned()),
                        Just("exp".to_owned()),
                        Just("nbf".to_owned()),
                        Just("iss".to_owned()),
                        Just("aud".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn random_strings_are_refused_without_panic(s in "\\PC{0,300}") {
            let f = fixture();
            prop_assert!(f.verifier.verify(&s).is_err());
        }

        #[test]
        fn random_dotted_parts_are_refused_without_panic(
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..5),
        ) {
            let f = fixture();
            let token = parts.iter().map(|p| b64(p)).collect::<Vec<_>>().join(".");
            prop_assert!(f.verifier.verify(&token).is_err());
        }

        #[test]
        fn random_headers_and_claims_are_refused_without_panic(
            header in json_value(),
            claims in json_value(),
            sig in prop::collection::vec(any::<u8>(), 0..96),
        ) {
            let f = fixture();
            let token = format!(
                "{}.{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes()),
                b64(&sig),
            );
            prop_assert!(f.verifier.verify(&token).is_err());
        }
    }
}
