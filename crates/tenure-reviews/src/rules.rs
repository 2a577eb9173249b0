//! The rules of access reviews as pure functions (no tonic, no sqlx): when rounds
//! happen, what a definition may say, what activity recommends, what undecided items
//! get, and when stages and reminders fall due. Each rule has a unit test below.

use chrono::{DateTime, Months, TimeDelta, Utc};
use tenure_platform::Violations;
use tenure_proto::common::v1 as common;
use tenure_proto::reviews::v1 as pb;

/// The look-back for recommendations when none is given, in days.
pub const DEFAULT_LOOK_BACK_DAYS: i32 = 30;
/// Most roles in one definition.
pub const MAX_ROLES: usize = 50;
/// Most stages.
pub const MAX_STAGES: usize = 3;
/// Longest round, in days.
pub const MAX_DURATION_DAYS: i32 = 180;
/// Longest text field (justifications, descriptions).
pub const MAX_TEXT: usize = 1000;

/// The field path of the definition inside a request.
const D: &str = "review_definition";

/// The longest round `recurrence` allows, in days (shorter than its period).
pub fn max_duration_days(r: pb::Recurrence) -> i32 {
    match r {
        pb::Recurrence::Weekly => 6,
        pb::Recurrence::Monthly => 27,
        pb::Recurrence::Quarterly => 89,
        _ => MAX_DURATION_DAYS,
    }
}

/// The round length used when none is given, in days.
pub fn default_duration_days(r: pb::Recurrence) -> i32 {
    if r == pb::Recurrence::Weekly { 6 } else { 14 }
}

/// When the `k`-th round (from 0) of a series starting at `start` starts. Months are
/// added to the start (not to the previous round), so a series starting on the 31st
/// runs on the last day of shorter months and returns to the 31st after them.
pub fn occurrence(start: DateTime<Utc>, r: pb::Recurrence, k: u32) -> Option<DateTime<Utc>> {
    let months = |m: u32| start.checked_add_months(Months::new(m.checked_mul(k)?));
    match r {
        pb::Recurrence::OneTime => (k == 0).then_some(start),
        pb::Recurrence::Weekly => start.checked_add_signed(TimeDelta::weeks(i64::from(k))),
        pb::Recurrence::Monthly => months(1),
        pb::Recurrence::Quarterly => months(3),
        pb::Recurrence::SemiAnnual => months(6),
        pb::Recurrence::Annual => months(12),
        pb::Recurrence::Unspecified => None,
    }
}

/// The index and instant of the next round after one started at `now` with index
/// `started_index` (`None` before the first round), given that `rounds_started` rounds
/// have started: the first occurrence after `now` (rounds missed while nothing ran are
/// not started late one by one), or `None` when the series has ended.
pub fn next_round(
    schedule: &pb::ReviewSchedule,
    started_index: Option<u32>,
    rounds_started: i32,
    now: DateTime<Utc>,
) -> Option<(u32, DateTime<Utc>)> {
    let start = schedule
        .start_time
        .as_ref()
        .and_then(tenure_platform::clock::from_proto)?;
    let r = schedule.recurrence();
    if schedule.end() == pb::SeriesEnd::AfterRounds && rounds_started >= schedule.round_count {
        return None;
    }
    let (k, at) = match started_index {
        None => (0, occurrence(start, r, 0)?),
        Some(i) => {
            let mut k = i.checked_add(1)?;
            loop {
                let at = occurrence(start, r, k)?;
                if at > now {
                    break (k, at);
                }
                k = k.checked_add(1)?;
            }
        }
    };
    if schedule.end() == pb::SeriesEnd::OnDate {
        let end = schedule
            .end_time
            .as_ref()
            .and_then(tenure_platform::clock::from_proto)?;
        if at >= end {
            return None;
        }
    }
    Some((k, at))
}

/// Whether a reviewer kind may resolve to nobody for some item.
fn may_resolve_to_nobody(kind: pb::ReviewerKind) -> bool {
    !matches!(kind, pb::ReviewerKind::Principal)
}

/// Checks and normalises a definition (defaults filled in, output-only fields left to
/// the caller). `now` is the default start. Every bad field is reported at once.
pub fn normalise(def: &mut pb::ReviewDefinition, now: DateTime<Utc>) -> Result<(), Violations> {
    let mut v = Violations::new();
    def.display_name = def.display_name.trim().to_owned();
    v.check(
        def.display_name.is_empty() || def.display_name.chars().count() > 256,
        format!("{D}.display_name"),
        "is required, at most 256 characters",
    );
    v.check(
        def.description.chars().count() > MAX_TEXT,
        format!("{D}.description"),
        "must be at most 1000 characters",
    );
    // What is reviewed.
    let scope = def.scope.get_or_insert_with(Default::default);
    scope
        .role_ids
        .iter_mut()
        .for_each(|r| *r = r.trim().to_owned());
    if scope.role_ids.is_empty() || scope.role_ids.len() > MAX_ROLES {
        v.add(format!("{D}.scope.role_ids"), "must name 1 to 50 roles");
    }
    for (i, r) in scope.role_ids.iter().enumerate() {
        if r.is_empty() {
            v.add(format!("{D}.scope.role_ids[{i}]"), "must not be empty");
        } else if scope.role_ids[..i].contains(r) {
            v.add(format!("{D}.scope.role_ids[{i}]"), "is named twice");
        }
    }
    if scope.scope_id.trim().is_empty() {
        scope.scope_id = "/".to_owned();
    }
    if !scope.scope_id.starts_with('/') {
        v.add(
            format!("{D}.scope.scope_id"),
            "must be a scope id starting with \"/\"",
        );
    }
    for (i, t) in scope.assignment_types.iter().enumerate() {
        if !matches!(
            common::AssignmentType::try_from(*t),
            Ok(common::AssignmentType::Eligible | common::AssignmentType::Active)
        ) {
            v.add(
                format!("{D}.scope.assignment_types[{i}]"),
                "must be ELIGIBLE or ACTIVE",
            );
        }
    }
    for (i, t) in scope.principal_types.iter().enumerate() {
        if matches!(
            common::PrincipalType::try_from(*t),
            Ok(common::PrincipalType::Unspecified) | Err(_)
        ) {
            v.add(
                format!("{D}.scope.principal_types[{i}]"),
                "must be USER, GROUP or SERVICE_PRINCIPAL",
            );
        }
    }
    v.check(
        !(0..=730).contains(&scope.inactive_days),
        format!("{D}.scope.inactive_days"),
        "must be 0 (every holder) or 1 to 730",
    );
    // When.
    let sched = def.schedule.get_or_insert_with(Default::default);
    let rec = pb::Recurrence::try_from(sched.recurrence).unwrap_or(pb::Recurrence::Unspecified);
    if rec == pb::Recurrence::Unspecified {
        v.add(format!("{D}.schedule.recurrence"), "is required");
    }
    if sched.duration_days == 0 {
        sched.duration_days = default_duration_days(rec);
    }
    let max = max_duration_days(rec);
    if sched.duration_days < 1 || sched.duration_days > max {
        v.add(
            format!("{D}.schedule.duration_days"),
            format!("must be 1 to {max} days: shorter than the recurrence period, at most 180"),
        );
    }
    if sched.start_time.is_none() {
        sched.start_time = Some(tenure_platform::clock::to_proto(now));
    }
    let start = sched
        .start_time
        .as_ref()
        .and_then(tenure_platform::clock::from_proto);
    if start.is_none() {
        v.add(format!("{D}.schedule.start_time"), "is not a valid time");
    }
    match pb::SeriesEnd::try_from(sched.end) {
        Ok(pb::SeriesEnd::Unspecified) => sched.end = pb::SeriesEnd::Never.into(),
        Ok(pb::SeriesEnd::OnDate) => {
            let end = sched
                .end_time
                .as_ref()
                .and_then(tenure_platform::clock::from_proto);
            match (end, start) {
                (Some(e), Some(s)) if e > s => {}
                _ => v.add(
                    format!("{D}.schedule.end_time"),
                    "must be after the start with ON_DATE",
                ),
            }
        }
        Ok(pb::SeriesEnd::AfterRounds) => {
            v.check(
                sched.round_count < 1,
                format!("{D}.schedule.round_count"),
                "must be at least 1 with AFTER_ROUNDS",
            );
        }
        Ok(pb::SeriesEnd::Never) => {}
        Err(_) => v.add(format!("{D}.schedule.end"), "is not a known series end"),
    }
    // How.
    let s = def.settings.get_or_insert_with(Default::default);
    if s.recommendation_look_back_days == 0 {
        s.recommendation_look_back_days = DEFAULT_LOOK_BACK_DAYS;
    }
    v.check(
        !(1..=730).contains(&s.recommendation_look_back_days),
        format!("{D}.settings.recommendation_look_back_days"),
        "must be 0 (30 days) or 1 to 730",
    );
    s.recommendations_enabled.get_or_insert(true);
    s.reminders_enabled.get_or_insert(true);
    match pb::DefaultDecision::try_from(s.default_decision) {
        Ok(pb::DefaultDecision::Unspecified) => {
            s.default_decision = pb::DefaultDecision::NoChange.into();
        }
        Ok(_) => {}
        Err(_) => v.add(
            format!("{D}.settings.default_decision"),
            "is not a known default",
        ),
    }
    // The default, 3 days before the end, is shortened for rounds (or stages) that
    // are not longer than that, rather than refused.
    let reminders_defaulted = s.reminder_days_before_end.is_empty();
    if reminders_defaulted {
        s.reminder_days_before_end = vec![3];
    }
    v.check(
        s.reviewer_message.chars().count() > MAX_TEXT,
        format!("{D}.settings.reviewer_message"),
        "must be at most 1000 characters",
    );
    // Who.
    let fallback = !def.fallback_reviewers.is_empty();
    for (i, f) in def.fallback_reviewers.iter().enumerate() {
        v.check(
            f.id.trim().is_empty(),
            format!("{D}.fallback_reviewers[{i}].id"),
            "is required",
        );
    }
    let n = def.stages.len();
    if n == 0 || n > MAX_STAGES {
        v.add(format!("{D}.stages"), "must hold 1 to 3 stages");
    }
    let mut stage_sum = 0;
    for (i, st) in def.stages.iter().enumerate() {
        let f = format!("{D}.stages[{i}]");
        if st.reviewers.is_empty() && !fallback {
            v.add(
                format!("{f}.reviewers"),
                "is empty and no fallback_reviewers are given",
            );
        }
        if !st.reviewers.is_empty()
            && !fallback
            && st.reviewers.iter().all(|r| may_resolve_to_nobody(r.kind()))
        {
            v.add(
                format!("{D}.fallback_reviewers"),
                format!("are required: stage {i}'s reviewers (self, group members, role holders) may resolve to nobody"),
            );
        }
        for (j, r) in st.reviewers.iter().enumerate() {
            let rf = format!("{f}.reviewers[{j}]");
            match pb::ReviewerKind::try_from(r.kind) {
                Ok(pb::ReviewerKind::Principal | pb::ReviewerKind::GroupMembers) => {
                    v.check(
                        r.principal.as_ref().is_none_or(|p| p.id.trim().is_empty()),
                        format!("{rf}.principal.id"),
                        "is required for PRINCIPAL and GROUP_MEMBERS",
                    );
                }
                Ok(pb::ReviewerKind::RoleHolders) => {
                    v.check(
                        r.role_id.trim().is_empty(),
                        format!("{rf}.role_id"),
                        "is required for ROLE_HOLDERS",
                    );
                }
                Ok(pb::ReviewerKind::Self_) => {}
                Ok(pb::ReviewerKind::Unspecified) | Err(_) => {
                    v.add(format!("{rf}.kind"), "is required");
                }
            }
        }
        if n > 1 {
            if st.duration_days < 1 {
                v.add(
                    format!("{f}.duration_days"),
                    "is required (at least 1) with several stages",
                );
            }
            stage_sum = st.duration_days.max(0).saturating_add(stage_sum);
        } else if st.duration_days < 0 {
            v.add(format!("{f}.duration_days"), "must not be negative");
        }
        if i + 1 == n && n > 1 {
            for (j, d) in st.decisions_that_move_on.iter().enumerate() {
                if matches!(
                    pb::ReviewDecision::try_from(*d),
                    Ok(pb::ReviewDecision::Approve | pb::ReviewDecision::Deny)
                ) {
                    v.add(
                        format!("{f}.decisions_that_move_on[{j}]"),
                        "APPROVE or DENY cannot move on from the last stage",
                    );
                }
            }
        }
        let stage_len = if n > 1 {
            st.duration_days
        } else {
            sched.duration_days
        };
        if reminders_defaulted && stage_len > 0 {
            let shortest = s.reminder_days_before_end[0].min(stage_len);
            s.reminder_days_before_end = vec![shortest];
        }
        for (j, d) in s.reminder_days_before_end.iter().enumerate() {
            if *d < 1 || (stage_len > 0 && *d > stage_len) {
                v.add(
                    format!("{D}.settings.reminder_days_before_end[{j}]"),
                    "must be 1 to the stage's length in days",
                );
            }
        }
    }
    if n > 1 && stage_sum > sched.duration_days {
        v.add(
            format!("{D}.stages"),
            "the stages' duration_days must not add up to more than schedule.duration_days",
        );
    }
    if def.enabled.is_none() {
        def.enabled = Some(true);
    }
    if v.is_empty() { Ok(()) } else { Err(v) }
}

/// The holder's activity in the look-back window, as the reviews context knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// The last sign-in the identity provider reported.
    pub last_sign_in: Option<DateTime<Utc>>,
    /// The last activation of the role (eligible holders).
    pub last_activation: Option<DateTime<Utc>>,
    /// Activations of the role within the look-back.
    pub activations: i32,
}

/// What the activity recommends and why. Eligible holders are judged by their
/// activations of the role, active holders (and groups holding a role) by their
/// sign-ins.
pub fn recommend(
    a: &Activity,
    eligible: bool,
    is_group: bool,
    look_back_days: i32,
    now: DateTime<Utc>,
) -> (pb::Recommendation, String) {
    let since = now - TimeDelta::days(i64::from(look_back_days));
    if eligible {
        if a.activations > 0 {
            let times = if a.activations == 1 { "time" } else { "times" };
            return (
                pb::Recommendation::Approve,
                format!(
                    "activated {} {times} in {look_back_days} days",
                    a.activations
                ),
            );
        }
        return (
            pb::Recommendation::Deny,
            format!("no activation in {look_back_days} days"),
        );
    }
    if is_group {
        return (
            pb::Recommendation::None,
            "a group holds the role: no sign-in data".to_owned(),
        );
    }
    match a.last_sign_in {
        Some(t) if t >= since => (
            pb::Recommendation::Approve,
            format!("signed in within {look_back_days} days"),
        ),
        _ => (
            pb::Recommendation::Deny,
            format!("no sign-in in {look_back_days} days"),
        ),
    }
}

/// Whether a holder counts as inactive for `days`: neither a sign-in nor an activation
/// of the role since then.
pub fn is_inactive(a: &Activity, days: i32, now: DateTime<Utc>) -> bool {
    let since = now - TimeDelta::days(i64::from(days));
    a.last_sign_in.is_none_or(|t| t < since) && a.last_activation.is_none_or(|t| t < since)
}

/// What an item nobody decided (NOT_REVIEWED or DONT_KNOW) gets at completion; `None`
/// leaves it as it is.
pub fn default_for(
    default: pb::DefaultDecision,
    recommendation: pb::Recommendation,
) -> Option<pb::ReviewDecision> {
    match default {
        pb::DefaultDecision::Remove => Some(pb::ReviewDecision::Deny),
        pb::DefaultDecision::Approve => Some(pb::ReviewDecision::Approve),
        pb::DefaultDecision::TakeRecommendation => match recommendation {
            pb::Recommendation::Approve => Some(pb::ReviewDecision::Approve),
            pb::Recommendation::Deny => Some(pb::ReviewDecision::Deny),
            _ => None,
        },
        pb::DefaultDecision::NoChange | pb::DefaultDecision::Unspecified => None,
    }
}

/// Whether a decision still counts as undecided at completion.
pub fn is_undecided(d: pb::ReviewDecision) -> bool {
    matches!(
        d,
        pb::ReviewDecision::NotReviewed
            | pb::ReviewDecision::DontKnow
            | pb::ReviewDecision::Unspecified
    )
}

/// When each stage ends: the stages' lengths in series from the round's start; the
/// last stage ends with the round.
pub fn stage_ends(
    start: DateTime<Utc>,
    round_end: DateTime<Utc>,
    stages: &[pb::ReviewStage],
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(stages.len());
    let mut at = start;
    for (i, s) in stages.iter().enumerate() {
        if i + 1 == stages.len() {
            out.push(round_end);
        } else {
            at += TimeDelta::days(i64::from(s.duration_days));
            out.push(at.min(round_end));
        }
    }
    out
}

/// The reminder instants of a stage ending at `end`, in order, not before `from`.
pub fn reminder_times(
    settings: &pb::ReviewSettings,
    from: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    if settings.reminders_enabled == Some(false) {
        return Vec::new();
    }
    let mut v: Vec<_> = settings
        .reminder_days_before_end
        .iter()
        .map(|d| end - TimeDelta::days(i64::from(*d)))
        .filter(|t| *t > from && *t < end)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Whether a decision in a stage sends the item on to the next stage.
pub fn moves_on(stage: &pb::ReviewStage, decision: pb::ReviewDecision) -> bool {
    stage.decisions_that_move_on.contains(&i32::from(decision))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tenure_platform::clock::to_proto;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn def() -> pb::ReviewDefinition {
        pb::ReviewDefinition {
            display_name: "Quarterly".into(),
            scope: Some(pb::ReviewScope {
                role_ids: vec!["global-administrator".into()],
                ..Default::default()
            }),
            stages: vec![pb::ReviewStage {
                reviewers: vec![pb::Reviewer {
                    kind: pb::ReviewerKind::Principal.into(),
                    principal: Some(common::PrincipalRef {
                        id: "kenneth".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            schedule: Some(pb::ReviewSchedule {
                recurrence: pb::Recurrence::Quarterly.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn fields(r: Result<(), Violations>) -> Vec<String> {
        match r.map_err(Violations::finish) {
            Err(Err(tenure_platform::ApiError::InvalidArgument(v))) => {
                v.into_iter().map(|f| f.field).collect()
            }
            _ => vec![],
        }
    }

    #[test]
    fn a_minimal_definition_gets_its_defaults() {
        let now = at("2030-01-01T00:00:00Z");
        let mut d = def();
        normalise(&mut d, now).unwrap();
        let s = d.schedule.unwrap();
        assert_eq!(s.duration_days, 14);
        assert_eq!(s.start_time, Some(to_proto(now)));
        assert_eq!(s.end(), pb::SeriesEnd::Never);
        let st = d.settings.unwrap();
        assert_eq!(st.recommendation_look_back_days, 30);
        assert_eq!(st.default_decision(), pb::DefaultDecision::NoChange);
        assert_eq!(st.recommendations_enabled, Some(true));
        assert_eq!(st.reminder_days_before_end, vec![3]);
        assert_eq!(d.scope.unwrap().scope_id, "/");
        assert_eq!(d.enabled, Some(true));
    }

    #[test]
    fn the_default_reminder_is_shortened_for_short_rounds_but_a_chosen_one_is_checked() {
        let now = at("2030-01-01T00:00:00Z");
        let mut d = def();
        let s = d.schedule.get_or_insert_with(Default::default);
        s.recurrence = pb::Recurrence::Weekly.into();
        s.duration_days = 2;
        normalise(&mut d, now).unwrap();
        assert_eq!(d.settings.unwrap().reminder_days_before_end, vec![2]);
        let mut d = def();
        d.schedule
            .get_or_insert_with(Default::default)
            .duration_days = 2;
        d.settings
            .get_or_insert_with(Default::default)
            .reminder_days_before_end = vec![3];
        assert_eq!(
            fields(normalise(&mut d, now)),
            vec!["review_definition.settings.reminder_days_before_end[0]"]
        );
    }

    #[test]
    fn the_duration_must_be_shorter_than_the_period() {
        for (rec, max) in [
            (pb::Recurrence::Weekly, 6),
            (pb::Recurrence::Monthly, 27),
            (pb::Recurrence::Quarterly, 89),
            (pb::Recurrence::SemiAnnual, 180),
            (pb::Recurrence::Annual, 180),
            (pb::Recurrence::OneTime, 180),
        ] {
            let mut d = def();
            let s = d.schedule.as_mut().unwrap();
            s.recurrence = rec.into();
            s.duration_days = max;
            assert!(
                normalise(&mut d, Utc::now_for_test()).is_ok(),
                "{rec:?} {max}"
            );
            let mut d = def();
            let s = d.schedule.as_mut().unwrap();
            s.recurrence = rec.into();
            s.duration_days = max + 1;
            assert_eq!(
                fields(normalise(&mut d, Utc::now_for_test())),
                vec!["review_definition.schedule.duration_days"]
            );
        }
    }

    trait NowForTest {
        fn now_for_test() -> DateTime<Utc>;
    }
    impl NowForTest for Utc {
        fn now_for_test() -> DateTime<Utc> {
            at("2030-01-01T00:00:00Z")
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut d = def();
        d.display_name = " ".into();
        d.scope.as_mut().unwrap().role_ids = vec![];
        d.scope.as_mut().unwrap().inactive_days = 731;
        d.schedule.as_mut().unwrap().recurrence = 0;
        d.settings = Some(pb::ReviewSettings {
            recommendation_look_back_days: 731,
            ..Default::default()
        });
        let f = fields(normalise(&mut d, Utc::now_for_test()));
        for want in [
            "review_definition.display_name",
            "review_definition.scope.role_ids",
            "review_definition.scope.inactive_days",
            "review_definition.schedule.recurrence",
            "review_definition.settings.recommendation_look_back_days",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} not in {f:?}");
        }
    }

    #[test]
    fn an_empty_reviewer_set_needs_a_fallback() {
        let mut d = def();
        d.stages[0].reviewers.clear();
        assert_eq!(
            fields(normalise(&mut d, Utc::now_for_test())),
            vec!["review_definition.stages[0].reviewers"]
        );
        let mut d = def();
        d.stages[0].reviewers = vec![pb::Reviewer {
            kind: pb::ReviewerKind::Self_.into(),
            ..Default::default()
        }];
        assert_eq!(
            fields(normalise(&mut d, Utc::now_for_test())),
            vec!["review_definition.fallback_reviewers"]
        );
        d.fallback_reviewers = vec![common::PrincipalRef {
            id: "kenneth".into(),
            ..Default::default()
        }];
        assert!(normalise(&mut d, Utc::now_for_test()).is_ok());
    }

    #[test]
    fn series_ends_and_stages_are_checked() {
        let mut d = def();
        let s = d.schedule.as_mut().unwrap();
        s.start_time = Some(to_proto(at("2030-02-01T00:00:00Z")));
        s.end = pb::SeriesEnd::OnDate.into();
        s.end_time = Some(to_proto(at("2030-01-01T00:00:00Z")));
        assert_eq!(
            fields(normalise(&mut d, Utc::now_for_test())),
            vec!["review_definition.schedule.end_time"]
        );
        let mut d = def();
        let s = d.schedule.as_mut().unwrap();
        s.end = pb::SeriesEnd::AfterRounds.into();
        assert_eq!(
            fields(normalise(&mut d, Utc::now_for_test())),
            vec!["review_definition.schedule.round_count"]
        );
        let mut d = def();
        let stage = d.stages[0].clone();
        d.stages = vec![stage.clone(), stage.clone(), stage.clone(), stage];
        assert!(
            fields(normalise(&mut d, Utc::now_for_test()))
                .contains(&"review_definition.stages".to_owned())
        );
        // Two stages: each needs a length, the sum fits the round, and the last stage
        // cannot move APPROVE on.
        let mut d = def();
        let mut s1 = d.stages[0].clone();
        s1.duration_days = 10;
        let mut s2 = s1.clone();
        s2.decisions_that_move_on = vec![pb::ReviewDecision::Approve.into()];
        d.stages = vec![s1, s2];
        let f = fields(normalise(&mut d, Utc::now_for_test()));
        assert!(f.contains(&"review_definition.stages".to_owned()), "{f:?}");
        assert!(
            f.contains(&"review_definition.stages[1].decisions_that_move_on[0]".to_owned()),
            "{f:?}"
        );
    }

    #[test]
    fn occurrences_add_months_to_the_start_and_clamp_to_month_ends() {
        let start = at("2030-01-31T09:00:00Z");
        let q = pb::Recurrence::Quarterly;
        assert_eq!(occurrence(start, q, 1), Some(at("2030-04-30T09:00:00Z")));
        assert_eq!(occurrence(start, q, 2), Some(at("2030-07-31T09:00:00Z")));
        let m = pb::Recurrence::Monthly;
        assert_eq!(occurrence(start, m, 1), Some(at("2030-02-28T09:00:00Z")));
        assert_eq!(occurrence(start, m, 2), Some(at("2030-03-31T09:00:00Z")));
        let w = pb::Recurrence::Weekly;
        assert_eq!(occurrence(start, w, 2), Some(at("2030-02-14T09:00:00Z")));
        assert_eq!(
            occurrence(start, pb::Recurrence::Annual, 1),
            Some(at("2031-01-31T09:00:00Z"))
        );
        assert_eq!(
            occurrence(start, pb::Recurrence::SemiAnnual, 1),
            Some(at("2030-07-31T09:00:00Z"))
        );
        assert_eq!(occurrence(start, pb::Recurrence::OneTime, 1), None);
    }

    #[test]
    fn the_next_round_skips_missed_occurrences_and_respects_the_series_end() {
        let start = at("2030-01-01T00:00:00Z");
        let mut s = pb::ReviewSchedule {
            recurrence: pb::Recurrence::Quarterly.into(),
            start_time: Some(to_proto(start)),
            ..Default::default()
        };
        assert_eq!(next_round(&s, None, 0, start), Some((0, start)));
        assert_eq!(
            next_round(&s, Some(0), 1, start),
            Some((1, at("2030-04-01T00:00:00Z")))
        );
        // Down for half a year: the next round is the first one after now.
        assert_eq!(
            next_round(&s, Some(0), 1, at("2030-08-01T00:00:00Z")),
            Some((3, at("2030-10-01T00:00:00Z")))
        );
        s.end = pb::SeriesEnd::AfterRounds.into();
        s.round_count = 2;
        assert!(next_round(&s, Some(0), 1, start).is_some());
        assert_eq!(next_round(&s, Some(1), 2, start), None);
        s.end = pb::SeriesEnd::OnDate.into();
        s.end_time = Some(to_proto(at("2030-04-01T00:00:00Z")));
        assert_eq!(next_round(&s, Some(0), 1, start), None);
        s.recurrence = pb::Recurrence::OneTime.into();
        s.end = pb::SeriesEnd::Never.into();
        assert_eq!(next_round(&s, Some(0), 1, start), None);
    }

    #[test]
    fn recommendations_follow_activity() {
        let now = at("2030-03-01T00:00:00Z");
        let mut a = Activity {
            activations: 4,
            last_activation: Some(now - TimeDelta::days(2)),
            ..Default::default()
        };
        assert_eq!(
            recommend(&a, true, false, 30, now),
            (
                pb::Recommendation::Approve,
                "activated 4 times in 30 days".into()
            )
        );
        a.activations = 0;
        assert_eq!(
            recommend(&a, true, false, 30, now),
            (pb::Recommendation::Deny, "no activation in 30 days".into())
        );
        assert_eq!(
            recommend(&a, false, false, 30, now),
            (pb::Recommendation::Deny, "no sign-in in 30 days".into())
        );
        a.last_sign_in = Some(now - TimeDelta::days(29));
        assert_eq!(
            recommend(&a, false, false, 30, now).0,
            pb::Recommendation::Approve
        );
        a.last_sign_in = Some(now - TimeDelta::days(31));
        assert_eq!(
            recommend(&a, false, false, 30, now).0,
            pb::Recommendation::Deny
        );
        assert_eq!(
            recommend(&a, false, true, 30, now).0,
            pb::Recommendation::None
        );
    }

    #[test]
    fn inactive_means_neither_sign_in_nor_activation() {
        let now = at("2030-03-01T00:00:00Z");
        let mut a = Activity::default();
        assert!(is_inactive(&a, 30, now));
        a.last_sign_in = Some(now - TimeDelta::days(10));
        assert!(!is_inactive(&a, 30, now));
        a.last_sign_in = Some(now - TimeDelta::days(40));
        a.last_activation = Some(now - TimeDelta::days(5));
        assert!(!is_inactive(&a, 30, now));
        a.last_activation = Some(now - TimeDelta::days(31));
        assert!(is_inactive(&a, 30, now));
    }

    #[test]
    fn undecided_items_get_the_default() {
        use pb::DefaultDecision as D;
        use pb::Recommendation as R;
        use pb::ReviewDecision as X;
        assert_eq!(default_for(D::NoChange, R::Deny), None);
        assert_eq!(default_for(D::Remove, R::Approve), Some(X::Deny));
        assert_eq!(default_for(D::Approve, R::Deny), Some(X::Approve));
        assert_eq!(default_for(D::TakeRecommendation, R::Deny), Some(X::Deny));
        assert_eq!(
            default_for(D::TakeRecommendation, R::Approve),
            Some(X::Approve)
        );
        assert_eq!(default_for(D::TakeRecommendation, R::None), None);
        assert!(is_undecided(X::DontKnow));
        assert!(is_undecided(X::NotReviewed));
        assert!(!is_undecided(X::Deny));
    }

    #[test]
    fn stages_run_in_series_and_reminders_fall_before_their_end() {
        let start = at("2030-01-01T00:00:00Z");
        let end = start + TimeDelta::days(14);
        let stage = |d| pb::ReviewStage {
            duration_days: d,
            ..Default::default()
        };
        assert_eq!(
            stage_ends(start, end, &[stage(5), stage(9)]),
            vec![start + TimeDelta::days(5), end]
        );
        assert_eq!(stage_ends(start, end, &[stage(0)]), vec![end]);
        let s = pb::ReviewSettings {
            reminder_days_before_end: vec![3, 1, 20],
            reminders_enabled: Some(true),
            ..Default::default()
        };
        assert_eq!(
            reminder_times(&s, start, end),
            vec![end - TimeDelta::days(3), end - TimeDelta::days(1)]
        );
        let off = pb::ReviewSettings {
            reminders_enabled: Some(false),
            ..s
        };
        assert!(reminder_times(&off, start, end).is_empty());
        let st = pb::ReviewStage {
            decisions_that_move_on: vec![pb::ReviewDecision::Approve.into()],
            ..Default::default()
        };
        assert!(moves_on(&st, pb::ReviewDecision::Approve));
        assert!(!moves_on(&st, pb::ReviewDecision::Deny));
    }
}
