//! The audit trail's rules, free of transport and storage: what an event of each
//! context says for the trail (target principal, role, scope, request, justification,
//! ticket, result), the SHA-256 hash chain, and the CSV form of an entry.

use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1 as common;
use tenure_proto::notifications::v1 as pb;
use tenure_proto::reviews::v1 as rev;

/// The `previous_hash` of the first entry: 64 hex zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an event says for the audit trail, beyond its metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The principal the action is about.
    pub target: Option<common::PrincipalRef>,
    /// The role concerned.
    pub role: Option<common::RoleRef>,
    /// The scope concerned.
    pub scope: Option<common::ScopeRef>,
    /// The activation request, when the action belongs to one.
    pub request_id: String,
    /// The justification given.
    pub justification: String,
    /// The ticket given.
    pub ticket: Option<common::TicketInfo>,
    /// Whether the action failed (denied, timed out, failed).
    pub failure: bool,
    /// Further detail or the failure's reason.
    pub reason: String,
}

fn from_assignment(a: Option<&asg::Assignment>) -> Facts {
    let Some(a) = a else {
        return Facts::default();
    };
    Facts {
        target: a.principal.clone(),
        role: a.role.clone(),
        scope: a.scope.clone(),
        justification: a.justification.clone(),
        ticket: a.ticket.clone().filter(|t| !t.ticket_number.is_empty()),
        ..Facts::default()
    }
}

fn from_instance(i: Option<&asg::Instance>) -> Facts {
    let Some(i) = i else {
        return Facts::default();
    };
    Facts {
        target: i.principal.clone(),
        role: i.role.clone(),
        scope: i.scope.clone(),
        request_id: i.request_id.clone(),
        justification: i.justification.clone(),
        ticket: i.ticket.clone().filter(|t| !t.ticket_number.is_empty()),
        ..Facts::default()
    }
}

fn from_request(r: Option<&act::Request>) -> Facts {
    let Some(r) = r else {
        return Facts::default();
    };
    Facts {
        target: r.requestor.clone(),
        role: r.role.clone(),
        scope: r.scope.clone(),
        request_id: r.id.clone(),
        justification: r.justification.clone(),
        ticket: r.ticket.clone().filter(|t| !t.ticket_number.is_empty()),
        ..Facts::default()
    }
}

fn principal(p: Option<&common::PrincipalRef>) -> Facts {
    Facts {
        target: p.cloned(),
        ..Facts::default()
    }
}

/// The facts of an assignments event.
pub fn assignments_facts(e: &asg::Event) -> Facts {
    use asg::event::Payload as P;
    let Some(p) = &e.payload else {
        return Facts::default();
    };
    match p {
        P::PrincipalSynced(x) => Facts {
            target: x.principal.as_ref().map(|p| common::PrincipalRef {
                id: p.id.clone(),
                r#type: p.r#type,
                display_name: p.display_name.clone(),
                user_principal_name: p.user_principal_name.clone(),
            }),
            reason: if x.created {
                "created".into()
            } else {
                format!("changed: {}", x.changed_fields.join(", "))
            },
            ..Facts::default()
        },
        P::PrincipalDisabled(x) => Facts {
            reason: x.reason.clone(),
            ..principal(x.principal.as_ref())
        },
        P::PrincipalDeleted(x) => Facts {
            reason: x.reason.clone(),
            ..principal(x.principal.as_ref())
        },
        P::GroupMembersSet(x) => Facts {
            reason: format!(
                "{} added, {} removed",
                x.added_members.len(),
                x.removed_members.len()
            ),
            ..principal(x.group.as_ref())
        },
        P::RoleDefinitionCreated(x) => role_def(x.role_definition.as_ref()),
        P::RoleDefinitionUpdated(x) => role_def(x.after.as_ref()),
        P::RoleDefinitionDeleted(x) => role_def(x.role_definition.as_ref()),
        P::ScopeRegistered(x) => scope_of(x.scope.as_ref()),
        P::ScopeRemoved(x) => scope_of(x.scope.as_ref()),
        P::ScopeRenamed(x) => Facts {
            scope: x.scope.clone(),
            reason: format!("before: {}", x.previous_display_name),
            ..Facts::default()
        },
        P::ScopeMoved(x) => Facts {
            scope: x.scope.clone(),
            ..Facts::default()
        },
        P::AssignmentCreated(x) => from_assignment(x.assignment.as_ref()),
        P::AssignmentUpdated(x) => from_assignment(x.after.as_ref()),
        P::AssignmentRemoved(x) => Facts {
            justification: x.justification.clone(),
            ticket: x.ticket.clone().filter(|t| !t.ticket_number.is_empty()),
            reason: x.source_reference.clone(),
            ..from_assignment(x.assignment.as_ref())
        },
        P::AssignmentExtended(x) => Facts {
            justification: x.justification.clone(),
            request_id: x.activation_request_id.clone(),
            ..from_assignment(x.assignment.as_ref())
        },
        P::AssignmentRenewed(x) => Facts {
            justification: x.justification.clone(),
            request_id: x.activation_request_id.clone(),
            ..from_assignment(x.assignment.as_ref())
        },
        P::AssignmentExpired(x) => from_assignment(x.assignment.as_ref()),
        P::InstanceActivated(x) => from_instance(x.instance.as_ref()),
        P::InstanceExtended(x) => Facts {
            request_id: x.extension_request_id.clone(),
            justification: x.justification.clone(),
            ..from_instance(x.instance.as_ref())
        },
        P::InstanceDeactivated(x) => Facts {
            reason: format!("{:?}", x.reason()),
            ..from_instance(x.instance.as_ref())
        },
        P::InstanceExpired(x) => from_instance(x.instance.as_ref()),
        P::RoleSettingsChanged(x) => Facts {
            role: x.role.clone(),
            scope: x.scope.clone(),
            ..Facts::default()
        },
        P::DriftObserved(x) => drift(x.drift_item.as_ref()),
        P::DriftResolved(x) => drift(x.drift_item.as_ref()),
    }
}

fn drift(d: Option<&asg::DriftItem>) -> Facts {
    d.map(|d| Facts {
        target: d.principal.clone(),
        role: d.role.clone(),
        scope: d.scope.clone(),
        reason: format!("source {}", d.source),
        ..Facts::default()
    })
    .unwrap_or_default()
}

fn role_def(r: Option<&asg::RoleDefinition>) -> Facts {
    Facts {
        role: r.map(|r| common::RoleRef {
            id: r.id.clone(),
            display_name: r.display_name.clone(),
        }),
        ..Facts::default()
    }
}

fn scope_of(s: Option<&asg::Scope>) -> Facts {
    Facts {
        scope: s.map(|s| common::ScopeRef {
            id: s.id.clone(),
            display_name: s.display_name.clone(),
            r#type: s.r#type,
        }),
        ..Facts::default()
    }
}

/// The facts of an activation event.
pub fn activation_facts(e: &act::Event) -> Facts {
    use act::event::Payload as P;
    let Some(p) = &e.payload else {
        return Facts::default();
    };
    match p {
        P::RequestCreated(x) => from_request(x.request.as_ref()),
        P::ApprovalRequested(x) => Facts {
            reason: format!(
                "stage {} asks {}",
                x.stage_index + 1,
                x.approvers
                    .iter()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ..from_request(x.request.as_ref())
        },
        P::RequestApproved(x) => Facts {
            justification: x.justification.clone(),
            reason: format!(
                "approved at stage {} by {}",
                x.stage_index + 1,
                x.approver.as_ref().map_or("", |a| a.id.as_str())
            ),
            ..from_request(x.request.as_ref())
        },
        P::RequestDenied(x) => Facts {
            justification: x.justification.clone(),
            failure: true,
            reason: format!("denied at stage {}", x.stage_index + 1),
            ..from_request(x.request.as_ref())
        },
        P::RequestCanceled(x) => Facts {
            reason: x.reason.clone(),
            ..from_request(x.request.as_ref())
        },
        P::RequestTimedOut(x) => Facts {
            failure: true,
            reason: format!("stage {} timed out", x.stage_index + 1),
            ..from_request(x.request.as_ref())
        },
        P::RequestGranted(x) => from_request(x.request.as_ref()),
        P::RequestProvisioned(x) => from_request(x.request.as_ref()),
        P::RequestExtended(x) => from_request(x.extension.as_ref()),
        P::RequestRenewed(x) => from_request(x.request.as_ref()),
        P::RoleDeactivated(x) => from_request(x.request.as_ref()),
        P::RequestRevoked(x) => Facts {
            justification: x.justification.clone(),
            ..from_request(x.request.as_ref())
        },
        P::RequestFailed(x) => Facts {
            failure: true,
            reason: x.reason.clone(),
            ..from_request(x.request.as_ref())
        },
        P::RequestEnded(x) => Facts {
            reason: format!("{:?}", x.reason()),
            ..from_request(x.request.as_ref())
        },
    }
}

/// The facts of a reviews event: reviews name no single principal or role in most of
/// their events, so the trail keeps the action, actor and subject.
pub fn reviews_facts(_e: &rev::Event) -> Facts {
    Facts::default()
}

/// The facts of this context's own events.
pub fn notifications_facts(e: &pb::Event) -> Facts {
    use pb::event::Payload as P;
    let Some(p) = &e.payload else {
        return Facts::default();
    };
    match p {
        P::AlertDismissed(x) => Facts {
            justification: x.reason.clone(),
            ..Facts::default()
        },
        P::NotificationFailed(x) => Facts {
            failure: true,
            reason: x
                .delivery
                .as_ref()
                .map(|d| d.last_error.clone())
                .unwrap_or_default(),
            ..Facts::default()
        },
        P::NotificationQueued(x) => x
            .notification
            .as_ref()
            .map(|n| Facts {
                target: n.principal.clone(),
                role: n.role.clone(),
                scope: n.scope.clone(),
                ..Facts::default()
            })
            .unwrap_or_default(),
        _ => Facts::default(),
    }
}

/// An audit entry made from its source event but not yet chained: its sequence,
/// previous hash and hash are set when its unit of work writes it.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    /// The entry, without its place in the chain.
    pub entry: pb::AuditEntry,
    /// The source event's full type name (a column of its own).
    pub full_action: String,
    /// The actor's id as the event names it.
    pub actor_id: String,
}

/// Builds an entry (without sequence, previous hash and hash) from an event's metadata
/// and facts.
pub fn entry(meta: &common::EventMeta, facts: Facts, actor_name: String) -> pb::AuditEntry {
    let action = meta
        .r#type
        .rsplit('.')
        .next()
        .unwrap_or(&meta.r#type)
        .to_owned();
    pb::AuditEntry {
        sequence: 0,
        occurred_at: meta.occurred_at,
        recorded_at: None,
        actor: Some(common::PrincipalRef {
            id: meta.actor.clone(),
            display_name: actor_name,
            ..Default::default()
        }),
        action,
        target_principal: facts.target,
        role: facts.role,
        scope: facts.scope,
        request_id: facts.request_id,
        justification: facts.justification,
        ticket: facts.ticket,
        result: if facts.failure {
            pb::AuditResult::Failure.into()
        } else {
            pb::AuditResult::Success.into()
        },
        result_reason: facts.reason,
        source_context: meta.context.clone(),
        source_sequence: meta.sequence,
        source_event_id: meta.id.clone(),
        correlation_id: meta.correlation_id.clone(),
        previous_hash: String::new(),
        hash: String::new(),
    }
}

/// The hash of `entry` (its `hash` ignored) chained to `previous_hash`: lowercase hex
/// SHA-256 of the 32 bytes of the previous hash followed by the entry's protobuf
/// encoding with `hash` cleared.
pub fn hash(previous_hash: &str, entry: &pb::AuditEntry) -> String {
    let prev = hex::decode(previous_hash).unwrap_or_else(|_| vec![0xff; 32]);
    let mut e = entry.clone();
    e.hash.clear();
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(e.encode_to_vec());
    hex::encode(h.finalize())
}

/// The first break in a run of entries, in sequence order, given the hash the first
/// one must link to: `(sequence, reason)`.
pub fn first_break(anchor: &str, entries: &[pb::AuditEntry]) -> Option<(i64, String)> {
    let mut prev = anchor.to_owned();
    let mut prev_seq: Option<i64> = None;
    for e in entries {
        if let Some(p) = prev_seq
            && e.sequence != p + 1
        {
            return Some((e.sequence, format!("sequence gap after {p}")));
        }
        if e.previous_hash != prev {
            return Some((
                e.sequence,
                "previous_hash does not match the previous entry's hash".into(),
            ));
        }
        if hash(&e.previous_hash, e) != e.hash {
            return Some((e.sequence, "hash does not match the entry's content".into()));
        }
        prev.clone_from(&e.hash);
        prev_seq = Some(e.sequence);
    }
    None
}

/// The CSV header row.
pub const CSV_HEADER: [&str; 24] = [
    "sequence",
    "occurred_at",
    "recorded_at",
    "actor_id",
    "actor_name",
    "action",
    "target_principal_id",
    "target_principal_name",
    "role_id",
    "role_name",
    "scope_id",
    "scope_name",
    "request_id",
    "justification",
    "ticket_system",
    "ticket_number",
    "result",
    "result_reason",
    "source_context",
    "source_sequence",
    "source_event_id",
    "correlation_id",
    "previous_hash",
    "hash",
];

fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(tenure_platform::clock::from_proto)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// The CSV fields of an entry, in header order: the definition of a row.
/// [`write_csv_row`] writes the same without the strings.
pub fn csv_record(e: &pb::AuditEntry) -> [String; 24] {
    let (actor_id, actor_name) = e
        .actor
        .as_ref()
        .map(|a| (a.id.clone(), a.display_name.clone()))
        .unwrap_or_default();
    let (tp_id, tp_name) = e
        .target_principal
        .as_ref()
        .map(|a| (a.id.clone(), a.display_name.clone()))
        .unwrap_or_default();
    let (role_id, role_name) = e
        .role
        .as_ref()
        .map(|a| (a.id.clone(), a.display_name.clone()))
        .unwrap_or_default();
    let (scope_id, scope_name) = e
        .scope
        .as_ref()
        .map(|a| (a.id.clone(), a.display_name.clone()))
        .unwrap_or_default();
    let (ts, tn) = e
        .ticket
        .as_ref()
        .map(|t| (t.ticket_system.clone(), t.ticket_number.clone()))
        .unwrap_or_default();
    let result = match e.result() {
        pb::AuditResult::Success => "success",
        pb::AuditResult::Failure => "failure",
        pb::AuditResult::Unspecified => "",
    };
    [
        e.sequence.to_string(),
        rfc3339(e.occurred_at.as_ref()),
        rfc3339(e.recorded_at.as_ref()),
        actor_id,
        actor_name,
        e.action.clone(),
        tp_id,
        tp_name,
        role_id,
        role_name,
        scope_id,
        scope_name,
        e.request_id.clone(),
        e.justification.clone(),
        ts,
        tn,
        result.to_owned(),
        e.result_reason.clone(),
        e.source_context.clone(),
        e.source_sequence.to_string(),
        e.source_event_id.clone(),
        e.correlation_id.clone(),
        e.previous_hash.clone(),
        e.hash.clone(),
    ]
}

/// Appends one CSV field (after a comma unless it is the first), quoted as RFC 4180
/// requires: when it holds a comma, a quote, CR or LF, with quotes doubled. The same
/// rule as the `csv` crate's `QuoteStyle::Necessary`.
fn csv_field(out: &mut Vec<u8>, first: bool, v: &[u8]) {
    if !first {
        out.push(b',');
    }
    if !v.iter().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')) {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    for part in v.split_inclusive(|b| *b == b'"') {
        out.extend_from_slice(part);
        if part.last() == Some(&b'"') {
            out.push(b'"');
        }
    }
    out.push(b'"');
}

/// Appends a number (never quoted).
fn csv_number(out: &mut Vec<u8>, n: i64) {
    use std::io::Write as _;
    out.push(b',');
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n}");
}

/// Appends a time as [`rfc3339`] writes it (UTC, microseconds, `Z`), without building
/// a string; the rare time it cannot write that way (a year outside 0..=9999, a leap
/// second) goes through [`rfc3339`].
fn csv_time(out: &mut Vec<u8>, t: Option<&prost_types::Timestamp>) {
    use chrono::{Datelike as _, Timelike as _};
    use std::io::Write as _;
    out.push(b',');
    let Some(t) = t.and_then(tenure_platform::clock::from_proto) else {
        return;
    };
    if (0..=9999).contains(&t.year()) && t.nanosecond() < 1_000_000_000 {
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 1000
        );
    } else {
        out.extend_from_slice(rfc3339(Some(&tenure_platform::clock::to_proto(t))).as_bytes());
    }
}

/// Appends the header row (CRLF-terminated).
pub fn write_csv_header(out: &mut Vec<u8>) {
    for (i, h) in CSV_HEADER.iter().enumerate() {
        csv_field(out, i == 0, h.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an entry as one CSV row (CRLF-terminated), the fields of [`csv_record`] in
/// [`CSV_HEADER`] order, written straight into `out`: no string per field, no flush
/// per row. The export's hot path; a test holds it byte for byte equal to writing
/// [`csv_record`] with the `csv` crate.
pub fn write_csv_row(out: &mut Vec<u8>, e: &pb::AuditEntry) {
    fn id_name<'a>(p: Option<(&'a str, &'a str)>) -> (&'a str, &'a str) {
        p.unwrap_or(("", ""))
    }
    let (actor_id, actor_name) = id_name(
        e.actor
            .as_ref()
            .map(|a| (a.id.as_str(), a.display_name.as_str())),
    );
    let (tp_id, tp_name) = id_name(
        e.target_principal
            .as_ref()
            .map(|a| (a.id.as_str(), a.display_name.as_str())),
    );
    let (role_id, role_name) = id_name(
        e.role
            .as_ref()
            .map(|a| (a.id.as_str(), a.display_name.as_str())),
    );
    let (scope_id, scope_name) = id_name(
        e.scope
            .as_ref()
            .map(|a| (a.id.as_str(), a.display_name.as_str())),
    );
    let (ts, tn) = id_name(
        e.ticket
            .as_ref()
            .map(|t| (t.ticket_system.as_str(), t.ticket_number.as_str())),
    );
    let result: &[u8] = match e.result() {
        pb::AuditResult::Success => b"success",
        pb::AuditResult::Failure => b"failure",
        pb::AuditResult::Unspecified => b"",
    };
    {
        use std::io::Write as _;
        let _ = write!(out, "{}", e.sequence);
    }
    csv_time(out, e.occurred_at.as_ref());
    csv_time(out, e.recorded_at.as_ref());
    for v in [
        actor_id,
        actor_name,
        &e.action,
        tp_id,
        tp_name,
        role_id,
        role_name,
        scope_id,
        scope_name,
        &e.request_id,
        &e.justification,
        ts,
        tn,
    ] {
        csv_field(out, false, v.as_bytes());
    }
    csv_field(out, false, result);
    csv_field(out, false, e.result_reason.as_bytes());
    csv_field(out, false, e.source_context.as_bytes());
    csv_number(out, e.source_sequence);
    for v in [
        &e.source_event_id,
        &e.correlation_id,
        &e.previous_hash,
        &e.hash,
    ] {
        csv_field(out, false, v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chained(n: i64) -> Vec<pb::AuditEntry> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|i| {
                let mut e = pb::AuditEntry {
                    sequence: i,
                    action: format!("Action{i}"),
                    justification: "needs, \"quotes\"\nand lines".into(),
                    previous_hash: prev.clone(),
                    ..Default::default()
                };
                e.hash = hash(&prev, &e);
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    #[test]
    fn a_chain_verifies_and_any_change_shows() {
        let mut v = chained(5);
        assert_eq!(first_break(GENESIS_HASH, &v), None);
        v[2].justification = "tampered".into();
        assert_eq!(first_break(GENESIS_HASH, &v).unwrap().0, 3);
        let mut w = chained(5);
        w.remove(1);
        assert_eq!(first_break(GENESIS_HASH, &w).unwrap().0, 3, "gap shows");
    }

    #[test]
    fn the_hash_is_sha256_of_previous_bytes_and_the_encoding_without_hash() {
        let e = pb::AuditEntry {
            sequence: 1,
            action: "X".into(),
            hash: "ignored".into(),
            ..Default::default()
        };
        let mut cleared = e.clone();
        cleared.hash.clear();
        let mut bytes = vec![0u8; 32];
        bytes.extend(cleared.encode_to_vec());
        assert_eq!(hash(GENESIS_HASH, &e), hex::encode(Sha256::digest(&bytes)));
        assert_eq!(hash(GENESIS_HASH, &e).len(), 64);
    }

    #[test]
    fn csv_quotes_what_rfc_4180_requires() {
        let v = chained(1);
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(vec![]);
        w.write_record(CSV_HEADER).unwrap();
        w.write_record(csv_record(&v[0])).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert!(text.starts_with("sequence,occurred_at,"));
        assert!(text.contains("\"needs, \"\"quotes\"\"\nand lines\""));
        assert!(text.ends_with("\r\n"));
    }

    /// Entries with what CSV must quote (commas, quotes, CR, LF, both at once, at the
    /// ends), empty and missing fields, non-ASCII text, negative numbers, times with
    /// and without microseconds, and none.
    fn tricky() -> Vec<pb::AuditEntry> {
        let mut v = chained(3);
        let texts = [
            "",
            "plain",
            "a,b",
            "\"",
            "say \"hi\"",
            "line\r\nbreak",
            "\n",
            ",\",\r\n",
            "Zoë 名前 🚀",
            " spaced ",
        ];
        for (i, t) in texts.iter().enumerate() {
            let n = i64::try_from(i).unwrap();
            v.push(pb::AuditEntry {
                sequence: 100 + n,
                occurred_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000 + n * 86_399,
                    nanos: i32::try_from(i).unwrap() * 123_456_789 % 1_000_000_000,
                }),
                recorded_at: (i % 3 != 0).then_some(prost_types::Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 0,
                }),
                actor: (i % 2 == 0).then(|| common::PrincipalRef {
                    id: (*t).into(),
                    display_name: format!("{t}{t}"),
                    ..Default::default()
                }),
                action: (*t).into(),
                target_principal: Some(common::PrincipalRef {
                    id: "ferry".into(),
                    display_name: (*t).into(),
                    ..Default::default()
                }),
                role: (i % 2 == 1).then(|| common::RoleRef {
                    id: "r".into(),
                    display_name: (*t).into(),
                }),
                scope: Some(common::ScopeRef {
                    id: (*t).into(),
                    ..Default::default()
                }),
                request_id: (*t).into(),
                justification: format!("{t} because {t}"),
                ticket: (i % 4 == 0).then(|| common::TicketInfo {
                    ticket_system: (*t).into(),
                    ticket_number: "INC-1".into(),
                }),
                result: i32::try_from(i % 3).unwrap(),
                result_reason: (*t).into(),
                source_context: "activation".into(),
                source_sequence: if i == 1 { -5 } else { n },
                source_event_id: (*t).into(),
                correlation_id: (*t).into(),
                previous_hash: "00ff".into(),
                hash: (*t).into(),
            });
        }
        v.push(pb::AuditEntry::default());
        v
    }

    fn with_csv_crate(entries: &[pb::AuditEntry]) -> Vec<u8> {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(vec![]);
        w.write_record(CSV_HEADER).unwrap();
        for e in entries {
            w.write_record(csv_record(e)).unwrap();
        }
        w.into_inner().unwrap()
    }

    #[test]
    fn the_fast_csv_writer_writes_what_the_csv_crate_writes() {
        let entries = tricky();
        let mut out = Vec::new();
        write_csv_header(&mut out);
        for e in &entries {
            write_csv_row(&mut out, e);
        }
        let want = with_csv_crate(&entries);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }

    /// Rows per second of the export's encoding alone (decoding the stored protobuf,
    /// writing CSV), before and after, on 200,000 synthetic entries. A debug build is
    /// far slower than release; compare the two lines, not the figures with the goal.
    /// `cargo test -p tenure-notifications csv_encoding_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn csv_encoding_speed() {
        let n = 200_000;
        let bodies: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let mut e = tricky()[usize::try_from(i % 14).unwrap()].clone();
                e.sequence = i;
                e.hash = format!("{:064x}", i);
                e.previous_hash = format!("{:064x}", i - 1);
                e.source_event_id = format!("0190c0de-0000-7000-8000-{i:012}");
                e.encode_to_vec()
            })
            .collect();
        let decode = |b: &Vec<u8>| pb::AuditEntry::decode(b.as_slice()).unwrap();
        let rate = |rows: i64, d: std::time::Duration| rows as f64 / d.as_secs_f64();
        // Before: a record of 24 strings per row, and a flush per row.
        let t = std::time::Instant::now();
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::with_capacity(64 * 1024 + 4096));
        let mut before = 0usize;
        for b in &bodies {
            w.write_record(csv_record(&decode(b))).unwrap();
            w.flush().unwrap();
            if w.get_ref().len() >= 60 * 1024 {
                let full = std::mem::replace(
                    &mut w,
                    csv::WriterBuilder::new()
                        .terminator(csv::Terminator::CRLF)
                        .from_writer(Vec::with_capacity(64 * 1024 + 4096)),
                );
                before += full.into_inner().unwrap().len();
            }
        }
        before += w.into_inner().unwrap().len();
        let old = t.elapsed();
        // After: straight into the chunk's buffer.
        let t = std::time::Instant::now();
        let mut out = Vec::with_capacity(64 * 1024 + 4096);
        let mut after = 0usize;
        for b in &bodies {
            write_csv_row(&mut out, &decode(b));
            if out.len() >= 60 * 1024 {
                after += out.len();
                out = Vec::with_capacity(64 * 1024 + 4096);
            }
        }
        after += out.len();
        let new = t.elapsed();
        // The decode alone, for scale.
        let t = std::time::Instant::now();
        let mut sink = 0usize;
        for b in &bodies {
            sink += decode(b).hash.len();
        }
        let dec = t.elapsed();
        assert_eq!(before, after, "the same bytes");
        assert!(sink > 0);
        eprintln!(
            "{n} entries, {after} bytes of CSV ({}): before {:.0} rows/s, after {:.0} rows/s; decoding alone {:.0} rows/s",
            if cfg!(debug_assertions) {
                "debug build"
            } else {
                "release build"
            },
            rate(n, old),
            rate(n, new),
            rate(n, dec)
        );
    }

    #[test]
    fn a_denied_request_is_a_failure_with_its_reason() {
        let e = act::Event {
            payload: Some(act::event::Payload::RequestDenied(act::RequestDenied {
                request: Some(act::Request {
                    id: "r1".into(),
                    justification: "asked".into(),
                    ..Default::default()
                }),
                stage_index: 0,
                approver: None,
                justification: "not now".into(),
            })),
            ..Default::default()
        };
        let f = activation_facts(&e);
        assert!(f.failure);
        assert_eq!(f.request_id, "r1");
        assert_eq!(f.justification, "not now");
        assert!(f.reason.contains("stage 1"));
    }
}
