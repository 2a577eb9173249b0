//! Output: aligned tables for people, JSON (the canonical protobuf JSON mapping) for
//! scripts; errors with the server's reason and field violations; exit codes.

use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage as _};
use tonic::Code;
use tonic_types::StatusExt as _;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables for people.
    Table,
    /// JSON for scripts (one document per result).
    Json,
}

/// Exit codes: 0 success, 2 usage error (clap), 3 denied (unauthenticated or permission
/// denied), 4 not found, 5 invalid argument, 6 failed precondition / conflict, 1 any
/// other failure.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<tonic::Status>().map(tonic::Status::code) {
        Some(Code::Unauthenticated | Code::PermissionDenied) => 3,
        Some(Code::NotFound) => 4,
        Some(Code::InvalidArgument | Code::OutOfRange) => 5,
        Some(Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted) => 6,
        _ => 1,
    }
}

/// Prints an error for people: the server's code, reason, and each field violation.
pub fn print_error(e: &anyhow::Error) {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        eprintln!("error: {} ({:?})", s.message(), s.code());
        if let Some(br) = s.get_error_details().bad_request() {
            for v in &br.field_violations {
                eprintln!("  - {}: {}", v.field, v.description);
            }
        }
        if s.code() == Code::Unauthenticated && s.message().contains("MFA_STEP_UP_REQUIRED") {
            eprintln!("hint: sign in again with MFA, e.g. `tenurectl login --as NAME --mfa`");
        }
    } else {
        eprintln!("error: {e:#}");
    }
}

fn pool() -> &'static DescriptorPool {
    static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(tenure_proto::FILE_DESCRIPTOR_SET).unwrap_or_default()
    })
}

/// Prints a protobuf message as canonical JSON.
pub fn json<M: prost::Message + prost::Name>(m: &M) -> anyhow::Result<()> {
    let desc = pool()
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| anyhow::anyhow!("no descriptor for {}", M::full_name()))?;
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice())?;
    let mut out = serde_json::Serializer::pretty(std::io::stdout());
    let _ = dynamic.descriptor();
    dynamic.serialize_with_options(
        &mut out,
        &prost_reflect::SerializeOptions::new().skip_default_fields(true),
    )?;
    println!();
    Ok(())
}

/// Prints rows as an aligned table.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    println!("{t}");
}

/// Reads a protobuf message from a JSON file (the canonical protobuf JSON mapping).
pub fn read_json<M: prost::Message + prost::Name + Default>(
    path: &std::path::Path,
) -> anyhow::Result<M> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let desc = pool()
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| anyhow::anyhow!("no descriptor for {}", M::full_name()))?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let dynamic = DynamicMessage::deserialize(desc, &mut de).map_err(|e| {
        anyhow::anyhow!("{} is not a valid {}: {e}", path.display(), M::full_name())
    })?;
    Ok(M::decode(
        prost::Message::encode_to_vec(&dynamic).as_slice(),
    )?)
}
