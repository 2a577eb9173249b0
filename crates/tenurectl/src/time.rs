//! Durations and times in the forms people type, shown in the local time zone, sent in
//! UTC.

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc};

/// The person's clock: relative times ("+2h", "tomorrow 09:00") are read against it.
/// (The server never trusts it: it has its own clock.)
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Parses "90m", "2h", "1h30m", "2d", "45s".
pub fn parse_duration(s: &str) -> Result<TimeDelta, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 90m or 2h ({e})"))?;
    TimeDelta::from_std(d).map_err(|_| format!("{s:?} is too long"))
}

/// Parses a time: RFC 3339 ("2026-12-01T09:00:00Z"), a local date-time
/// ("2026-12-01T09:00", "2026-12-01 09:00"), a local date ("2026-12-01", midnight),
/// "now", "tomorrow 09:00", "today 17:30", or a relative "+2h".
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(rel) = s.strip_prefix('+') {
        return now
            .checked_add_signed(parse_duration(rel)?)
            .ok_or_else(|| format!("{s:?} is too far in the future"));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = |naive: NaiveDateTime| -> Result<DateTime<Utc>, String> {
        Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("{s:?} does not exist in the local time zone"))
    };
    for f in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return local(n);
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return local(d.and_time(NaiveTime::MIN));
    }
    let lower = s.to_ascii_lowercase();
    for (word, days) in [("today", 0), ("tomorrow", 1)] {
        if let Some(rest) = lower.strip_prefix(word) {
            let today = now
                .with_timezone(&Local)
                .date_naive()
                .checked_add_signed(TimeDelta::days(days))
                .ok_or_else(|| format!("{s:?} is out of the calendar's range"))?;
            let time = match rest.trim() {
                "" => NaiveTime::MIN,
                t => NaiveTime::parse_from_str(t, "%H:%M")
                    .map_err(|_| format!("{s:?}: expected a time like 09:00"))?,
            };
            return local(today.and_time(time));
        }
    }
    Err(format!(
        "{s:?} is not a time (try 2026-12-01T09:00, \"tomorrow 09:00\" or +2h)"
    ))
}

/// A protobuf timestamp in the local time zone, for people.
pub fn show(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else { return "-".to_owned() };
    match DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0)) {
        Some(t) => t.with_timezone(&Local).format("%Y-%m-%d %H:%M").to_string(),
        None => "-".to_owned(),
    }
}

/// A protobuf timestamp in the local time zone with seconds and the zone's offset.
pub fn show_long(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else { return "-".to_owned() };
    match DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0)) {
        Some(t) => t
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        None => "-".to_owned(),
    }
}

/// A protobuf duration for people ("2h 30m").
pub fn show_duration(d: Option<&prost_types::Duration>) -> String {
    match d {
        Some(d) if d.seconds > 0 => humantime::format_duration(std::time::Duration::from_secs(
            u64::try_from(d.seconds).unwrap_or(0),
        ))
        .to_string(),
        _ => "-".to_owned(),
    }
}

/// UTC time to a protobuf timestamp.
pub fn to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A duration to protobuf.
pub fn dur_proto(d: TimeDelta) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.num_seconds(),
        nanos: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Anything typed is a duration or a readable refusal, never a panic.
        // (PROPTEST_CASES=100000 runs longer.)
        #[test]
        fn any_text_is_a_duration_or_a_refusal(s in "\\PC{0,40}") {
            if let Err(e) = parse_duration(&s) {
                prop_assert!(e.contains("duration") || e.contains("too long"), "{e}");
            }
        }

        #[test]
        fn duration_like_text_never_panics(n in any::<u64>(), unit in "(ns|us|ms|s|m|h|d|w|M|y|x)", sign in "[+-]?") {
            let _ = parse_duration(&format!("{sign}{n}{unit}"));
            let _ = parse_time(&format!("+{n}{unit}"), DateTime::<Utc>::MAX_UTC - TimeDelta::days(1));
        }

        #[test]
        fn any_text_is_a_time_or_a_refusal(s in "\\PC{0,40}", secs in -100_000_000_000i64..100_000_000_000i64) {
            let now = DateTime::from_timestamp(secs, 0).unwrap_or_default();
            if let Err(e) = parse_time(&s, now) {
                prop_assert!(!e.is_empty());
            }
        }

        #[test]
        fn time_like_text_never_panics(
            y in -300_000i32..300_000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..62,
            word in "(today|tomorrow|now|\\+)?",
        ) {
            let now = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
            let _ = parse_time(&format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}"), now);
            let _ = parse_time(&format!("{y}-{mo}-{d} {h}:{mi}:00"), now);
            let _ = parse_time(&format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:00Z"), now);
            let _ = parse_time(&format!("{word} {h:02}:{mi:02}"), DateTime::<Utc>::MAX_UTC);
        }
    }

    #[test]
    fn durations_people_type() {
        assert_eq!(parse_duration("90m").unwrap(), TimeDelta::minutes(90));
        assert_eq!(parse_duration("2h").unwrap(), TimeDelta::hours(2));
        assert_eq!(parse_duration("1h 30m").unwrap(), TimeDelta::minutes(90));
        assert!(parse_duration("two hours").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn times_people_type() {
        let now = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("2026-12-01T09:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-12-01T09:00:00+00:00"
        );
        assert_eq!(parse_time("+2h", now).unwrap(), now + TimeDelta::hours(2));
        assert_eq!(parse_time("now", now).unwrap(), now);
        let local = parse_time("2026-12-01T09:00", now)
            .unwrap()
            .with_timezone(&Local);
        assert_eq!(
            local.format("%Y-%m-%d %H:%M").to_string(),
            "2026-12-01 09:00"
        );
        let tomorrow = parse_time("tomorrow 09:00", now)
            .unwrap()
            .with_timezone(&Local);
        assert_eq!(tomorrow.format("%H:%M").to_string(), "09:00");
        assert!(tomorrow > now);
        assert!(parse_time("next blue moon", now).is_err());
        assert!(parse_time("tomorrow 25:00", now).is_err());
    }
}
