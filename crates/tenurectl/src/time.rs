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
        return Ok(now + parse_duration(rel)?);
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
            let today = now.with_timezone(&Local).date_naive() + TimeDelta::days(days);
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
