//! Property tests of every RPC of every service with random and malformed requests,
//! through a real gRPC client against a running server: messages built from the
//! service's own descriptors with hostile values (empty and huge strings, ids of the
//! wrong shape, invalid timestamps and durations, out-of-range enum numbers, unknown
//! fields), and random bytes sent as the message. Whatever comes in, the answer is a
//! clear status, never INTERNAL or UNKNOWN; a refused mutation writes nothing (the
//! context's event log head does not move); and the server stays healthy.
//!
//! Each service runs `PROPTEST_CASES` cases (default 200, a few seconds). Run longer
//! with, for example, `PROPTEST_CASES=20000 cargo test -p tenure-e2e --test malformed_input`.
//! A failure prints the method and the seed; the same seed rebuilds the same request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr as _;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message as _;
use prost::bytes::{Buf as _, BufMut as _};
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, MethodDescriptor, Value,
};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tenure_e2e::harness::*;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;

/// Sends and receives raw message bytes, so any bytes can be sent to any method.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Strings a hostile or careless client sends.
fn nasty_string(rng: &mut StdRng, field: &str) -> String {
    let huge = rng.gen_range(300..120_000);
    match rng.gen_range(0..14) {
        0 => String::new(),
        1 => " ".into(),
        2 => "x".repeat(huge),
        3 => "/".into(),
        4 => ADMIN.into(),
        5 => "global-administrator".into(),
        6 => "../../../etc/passwd".into(),
        7 => "\u{0}\u{7f}\u{202e}ünï€ødé\u{fffd}".into(),
        8 => "'; DROP TABLE assignments_principals; --".into(),
        9 => format!("/subscriptions/{}", "a".repeat(rng.gen_range(0..600))),
        10 => "2030-01-01T00:00:00Z".into(),
        11 => format!("{field}-{}", rng.r#gen::<u32>()),
        12 => "%00%ff{{}}$1$2".into(),
        _ => (0..rng.gen_range(1..40))
            .map(|_| char::from_u32(rng.gen_range(0..0x2_0000)).unwrap_or('?'))
            .collect(),
    }
}

fn nasty_i64(rng: &mut StdRng) -> i64 {
    match rng.gen_range(0..8) {
        0 => 0,
        1 => -1,
        2 => 1,
        3 => i64::MAX,
        4 => i64::MIN,
        5 => i64::from(i32::MAX) + 1,
        6 => rng.gen_range(-1000..100_000),
        _ => rng.r#gen(),
    }
}

/// A value for a timestamp or duration, valid or not (nanos out of range, seconds far
/// outside what a calendar holds, negative lengths).
fn time_like(rng: &mut StdRng, desc: &MessageDescriptor) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    let seconds = match rng.gen_range(0..6) {
        0 => 1_893_456_000 + rng.gen_range(-86_400 * 30..86_400 * 400),
        1 => rng.gen_range(-3600..86_400 * 365),
        _ => nasty_i64(rng),
    };
    let nanos = match rng.gen_range(0..4) {
        0 => 0,
        1 => rng.gen_range(0..1_000_000_000),
        _ => rng.r#gen::<i32>(),
    };
    m.set_field_by_name("seconds", Value::I64(seconds));
    m.set_field_by_name("nanos", Value::I32(nanos));
    m
}

fn value(rng: &mut StdRng, kind: &Kind, name: &str, depth: u32) -> Value {
    match kind {
        Kind::String => Value::String(nasty_string(rng, name)),
        Kind::Bytes => Value::Bytes(
            (0..rng.gen_range(0..64))
                .map(|_| rng.r#gen::<u8>())
                .collect(),
        ),
        Kind::Bool => Value::Bool(rng.r#gen()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(nasty_i64(rng).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(nasty_i64(rng)),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.r#gen()),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(rng.r#gen()),
        Kind::Float => Value::F32(rng.r#gen()),
        Kind::Double => Value::F64(rng.r#gen()),
        Kind::Enum(e) => {
            let known: Vec<i32> = e.values().map(|v| v.number()).collect();
            Value::EnumNumber(match rng.gen_range(0..3) {
                0 => rng.gen_range(-3..200),
                _ => known[rng.gen_range(0..known.len())],
            })
        }
        Kind::Message(m) => Value::Message(message(rng, m, depth + 1)),
    }
}

/// A random message of type `desc`: each field set or not, with hostile values.
fn message(rng: &mut StdRng, desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
    let name = desc.full_name();
    if name == "google.protobuf.Timestamp" || name == "google.protobuf.Duration" {
        return time_like(rng, desc);
    }
    let mut m = DynamicMessage::new(desc.clone());
    if depth > 3 {
        return m;
    }
    for field in desc.fields() {
        if !rng.gen_bool(0.6) {
            continue;
        }
        let v = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let k = entry.map_entry_key_field();
            let vf = entry.map_entry_value_field();
            let mut map = std::collections::HashMap::new();
            for _ in 0..rng.gen_range(0..3) {
                let key = match value(rng, &k.kind(), k.name(), depth) {
                    Value::String(s) => MapKey::String(s),
                    Value::I32(i) => MapKey::I32(i),
                    Value::I64(i) => MapKey::I64(i),
                    Value::Bool(b) => MapKey::Bool(b),
                    _ => continue,
                };
                map.insert(key, value(rng, &vf.kind(), vf.name(), depth));
            }
            Value::Map(map)
        } else if field.is_list() {
            Value::List(
                (0..rng.gen_range(0..4))
                    .map(|_| value(rng, &field.kind(), field.name(), depth))
                    .collect(),
            )
        } else {
            value(rng, &field.kind(), field.name(), depth)
        };
        m.set_field(&field, v);
    }
    m
}

/// The bytes sent for `method` in case `seed` (`mode` 0: random bytes; otherwise a
/// random message, sometimes with an unknown field appended).
fn request_bytes(method: &MethodDescriptor, seed: u64, mode: u8) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    if mode == 0 {
        return (0..rng.gen_range(0..512))
            .map(|_| rng.r#gen::<u8>())
            .collect();
    }
    let mut bytes = message(&mut rng, &method.input(), 0).encode_to_vec();
    if mode == 1 {
        // Field 4242, length-delimited: unknown to every message.
        prost::encoding::encode_key(4242, prost::encoding::WireType::LengthDelimited, &mut bytes);
        prost::encoding::encode_varint(3, &mut bytes);
        bytes.extend_from_slice(b"???");
    }
    bytes
}

fn is_read(method: &MethodDescriptor) -> bool {
    tenure_platform::limits::is_read_method(method.name())
}

/// The head of the event log of the context serving `package`.
fn head(h: &Harness, package: &str) -> i64 {
    let c = &h.contexts;
    match package {
        "tenure.assignments.v1" => c.assignments.as_ref().unwrap().log.head(),
        "tenure.activation.v1" => c.activation.as_ref().unwrap().log.head(),
        "tenure.reviews.v1" => c.reviews.as_ref().unwrap().log.head(),
        _ => c.notifications.as_ref().unwrap().log.head(),
    }
}

fn metas<E: tenure_proto::EventEnvelope>(events: &[E]) -> Vec<(i64, String, String)> {
    events
        .iter()
        .filter_map(|e| {
            e.meta()
                .map(|m| (m.sequence, m.r#type.clone(), m.actor.clone()))
        })
        .collect()
}

/// The last sequence committed to the log of the context serving `package` (read from
/// the database: the in-memory head follows commits a moment later).
async fn committed(h: &Harness, package: &str) -> i64 {
    let head = head(h, package);
    events_after(h, package, head)
        .await
        .last()
        .map_or(head, |e| e.0)
}

/// The (sequence, type, actor) of the events the context serving `package` logged after
/// `after`.
async fn events_after(h: &Harness, package: &str, after: i64) -> Vec<(i64, String, String)> {
    let c = &h.contexts;
    match package {
        "tenure.assignments.v1" => metas(
            &c.assignments
                .as_ref()
                .unwrap()
                .log
                .read_after(after, 1000)
                .await
                .unwrap(),
        ),
        "tenure.activation.v1" => metas(
            &c.activation
                .as_ref()
                .unwrap()
                .log
                .read_after(after, 1000)
                .await
                .unwrap(),
        ),
        "tenure.reviews.v1" => metas(
            &c.reviews
                .as_ref()
                .unwrap()
                .log
                .read_after(after, 1000)
                .await
                .unwrap(),
        ),
        _ => metas(
            &c.notifications
                .as_ref()
                .unwrap()
                .log
                .read_after(after, 1000)
                .await
                .unwrap(),
        ),
    }
}

/// Panics in the server's tasks (it runs in this process), counted by a panic hook.
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The server's tasks run on the runtimes' worker threads (the tests' own
            // failures panic on the test threads and are not counted).
            if std::thread::current().name() == Some("tokio-rt-worker") {
                PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Calls `method` with `bytes` as the admin (with MFA, so requests get past
/// authorization into the input checks). A stream's first answer counts; a stream that
/// is quietly waiting for live events is fine.
async fn call(h: &Harness, method: &MethodDescriptor, bytes: Vec<u8>) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(h.channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_str(&format!(
        "/{}/{}",
        method.parent_service().full_name(),
        method.name()
    ))
    .unwrap();
    let req = h.req_mfa(ADMIN, bytes);
    if method.is_server_streaming() {
        let mut stream = grpc.server_streaming(req, path, Raw).await?.into_inner();
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Ok(()),
        }
    } else {
        grpc.unary(req, path, Raw).await.map(|_| ())
    }
}

/// Runs the property for every method of the services in `package`.
fn every_method_of(package: &str) {
    let pool = DescriptorPool::decode(tenure_proto::FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<MethodDescriptor> = pool
        .services()
        .filter(|s| s.package_name() == package)
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect();
    assert!(!methods.is_empty(), "no methods in {package}");
    count_panics();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(async {
        let h = Harness::start().await;
        // Something to aim at: a few principals, a group, a scope, an assignment.
        h.seed_users(&["ferry", "kenneth"]).await;
        h.seed_principals(&[("ops", tenure_proto::common::v1::PrincipalType::Group)])
            .await;
        h.assign(
            tenure_proto::common::v1::AssignmentType::Eligible,
            "ferry",
            "billing-administrator",
            "/",
        )
        .await;
        h
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let result = runner.run(
        &(0..methods.len(), any::<u64>(), 0u8..4),
        |(i, seed, mode)| {
            let method = &methods[i];
            let bytes = request_bytes(method, seed, mode);
            let panics = PANICS.load(std::sync::atomic::Ordering::SeqCst);
            let (outcome, written) = rt.block_on(async {
                let before = committed(&h, package).await;
                let outcome = call(&h, method, bytes).await;
                // What this caller wrote: events by the admin (the contexts' own
                // background work, such as notifications following the other logs, is
                // logged under the service's name).
                let written: Vec<(i64, String, String)> = events_after(&h, package, before)
                    .await
                    .into_iter()
                    .filter(|(_, _, actor)| actor == ADMIN)
                    .collect();
                (outcome, written)
            });
            let name = format!("{}/{}", method.parent_service().name(), method.name());
            *seen.lock().unwrap().entry(name.clone()).or_default() += 1;
            if let Err(s) = &outcome {
                prop_assert!(
                    !matches!(s.code(), Code::Internal | Code::Unknown | Code::Unimplemented),
                    "{name} (seed {seed}, mode {mode}) answered {:?}: {}",
                    s.code(),
                    s.message()
                );
                if !is_read(method) {
                    prop_assert!(
                        written.is_empty(),
                        "{name} (seed {seed}, mode {mode}) was refused ({:?}) but wrote {written:?}",
                        s.code()
                    );
                }
            }
            prop_assert_eq!(
                PANICS.load(std::sync::atomic::Ordering::SeqCst),
                panics,
                "{} (seed {}, mode {}) made the server panic",
                name,
                seed,
                mode
            );
            Ok::<(), TestCaseError>(())
        },
    );
    // The server is healthy and serves after all of it.
    rt.block_on(async {
        let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        h.principals()
            .get_principal(h.req(
                ADMIN,
                tenure_proto::assignments::v1::GetPrincipalRequest { id: ADMIN.into() },
            ))
            .await
            .unwrap();
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let seen = seen.into_inner().unwrap();
    eprintln!(
        "{package}: {cases} cases over {} methods: {seen:?}",
        methods.len()
    );
    rt.block_on(h.stop());
}

#[test]
fn assignments_answers_any_input_with_a_clear_status_and_no_partial_write() {
    every_method_of("tenure.assignments.v1");
}

#[test]
fn activation_answers_any_input_with_a_clear_status_and_no_partial_write() {
    every_method_of("tenure.activation.v1");
}

#[test]
fn reviews_answers_any_input_with_a_clear_status_and_no_partial_write() {
    every_method_of("tenure.reviews.v1");
}

#[test]
fn notifications_answers_any_input_with_a_clear_status_and_no_partial_write() {
    every_method_of("tenure.notifications.v1");
}
