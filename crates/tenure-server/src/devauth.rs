//! The development issuer's token service and the development clock (see
//! `proto/tenure/devauth/v1`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, SubsecRound as _, TimeDelta, Utc};
use tenure_platform::ApiError;
use tenure_platform::auth::DevIssuer;
use tenure_platform::clock::{Clock as _, ManualClock, to_proto};
use tenure_platform::grpc::{Authenticator, status};
use tenure_proto::devauth::v1 as pb;
use tonic::{Request, Response, Status};

/// Mints development tokens.
#[derive(Debug, Clone)]
pub struct DevAuthApi {
    issuer: DevIssuer,
}

impl DevAuthApi {
    /// Serves `issuer`.
    pub fn new(issuer: DevIssuer) -> Self {
        Self { issuer }
    }
}

#[tonic::async_trait]
impl pb::dev_auth_service_server::DevAuthService for DevAuthApi {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let r = request.into_inner();
        let mut v = tenure_platform::Violations::new();
        v.check(
            r.subject.trim().is_empty(),
            "subject",
            "must name a principal",
        );
        v.check(
            r.subject.len() > 256,
            "subject",
            "must be at most 256 characters",
        );
        let ttl = match r.ttl {
            None => TimeDelta::hours(8),
            Some(d) => TimeDelta::new(d.seconds, u32::try_from(d.nanos).unwrap_or(0))
                .unwrap_or(TimeDelta::MAX),
        };
        v.check(
            ttl < TimeDelta::minutes(1) || ttl > TimeDelta::hours(24),
            "ttl",
            "must be between 1 minute and 24 hours",
        );
        v.finish().map_err(status)?;
        let token = self
            .issuer
            .mint(r.subject.trim(), r.mfa, ttl)
            .map_err(|e| status(ApiError::Internal(e)))?;
        Ok(Response::new(pb::IssueTokenResponse {
            token,
            expires_at: Some(to_proto(self.issuer.now() + ttl)),
        }))
    }
}

/// The development clock of `tenure serve --dev-clock`: a [`ManualClock`] that stands
/// still until [`DevClock::advance`] moves it, kept in `<data_dir>/dev-clock` so a
/// restart resumes where it stood (the database holds times from the moved clock; going
/// back to the wall clock would put them in the future).
#[derive(Debug, Clone)]
pub struct DevClock {
    clock: ManualClock,
    file: PathBuf,
    moving: Arc<tokio::sync::Mutex<()>>,
}

impl DevClock {
    /// Where the time is kept in a data directory.
    pub fn file_in(data_dir: &Path) -> PathBuf {
        data_dir.join("dev-clock")
    }

    /// Opens the clock kept in `data_dir`, or starts one at `start` when there is none.
    pub fn open(data_dir: &Path, start: DateTime<Utc>) -> anyhow::Result<Self> {
        let file = Self::file_in(data_dir);
        let now = match std::fs::read_to_string(&file) {
            Ok(text) => DateTime::parse_from_rfc3339(text.trim())
                .with_context(|| format!("{} does not hold a time", file.display()))?
                .with_timezone(&Utc),
            // Microseconds, as the database keeps times: a restart resumes exactly here.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => start.trunc_subsecs(6),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let this = Self {
            clock: ManualClock::new(now),
            file,
            moving: Arc::default(),
        };
        this.persist(now)?;
        Ok(this)
    }

    /// The clock, to hand to the server.
    pub fn clock(&self) -> ManualClock {
        self.clock.clone()
    }

    /// Moves the clock forward by `by` (positive), keeps the new time, and returns the
    /// time before and after. The file is written before the clock moves, so what the
    /// moved clock causes is never older than what a restart would resume from.
    pub async fn advance(&self, by: TimeDelta) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
        anyhow::ensure!(by > TimeDelta::zero(), "the clock only moves forward");
        let _one_at_a_time = self.moving.lock().await;
        let before = self.clock.now();
        let after = before + by;
        self.persist(after)?;
        self.clock.set(after);
        Ok((before, after))
    }

    fn persist(&self, at: DateTime<Utc>) -> anyhow::Result<()> {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, at.to_rfc3339_opts(SecondsFormat::Micros, true))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.file)
            .with_context(|| format!("writing {}", self.file.display()))?;
        Ok(())
    }
}

/// The development clock's service (see `proto/tenure/devauth/v1`).
#[derive(Clone)]
pub struct DevClockApi {
    clock: DevClock,
    auth: Authenticator,
    administrator: Option<String>,
}

impl DevClockApi {
    /// Serves `clock`; only `administrator` (the bootstrap administrator) may move it.
    pub fn new(clock: DevClock, auth: Authenticator, administrator: Option<String>) -> Self {
        Self {
            clock,
            auth,
            administrator,
        }
    }
}

/// The longest single move: beyond any schedule a person tries out.
const MAX_ADVANCE_DAYS: i64 = 400;

#[tonic::async_trait]
impl pb::dev_clock_service_server::DevClockService for DevClockApi {
    async fn get_time(
        &self,
        _request: Request<pb::GetTimeRequest>,
    ) -> Result<Response<pb::GetTimeResponse>, Status> {
        Ok(Response::new(pb::GetTimeResponse {
            now: Some(to_proto(self.clock.clock.now())),
        }))
    }

    async fn advance_clock(
        &self,
        request: Request<pb::AdvanceClockRequest>,
    ) -> Result<Response<pb::AdvanceClockResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        if self.administrator.as_deref() != Some(caller.principal_id.as_str()) {
            return Err(status(ApiError::PermissionDenied(
                "only the bootstrap administrator may move the development clock".into(),
            )));
        }
        let by = request.into_inner().by.map(|d| {
            TimeDelta::new(d.seconds, u32::try_from(d.nanos).unwrap_or(u32::MAX))
                .unwrap_or(TimeDelta::MAX)
        });
        let mut v = tenure_platform::Violations::new();
        match by {
            None => v.add("by", "is required"),
            Some(by) if by <= TimeDelta::zero() => v.add("by", "must be positive"),
            Some(by) if by > TimeDelta::days(MAX_ADVANCE_DAYS) => {
                v.add("by", format!("must be at most {MAX_ADVANCE_DAYS} days"));
            }
            Some(_) => {}
        }
        v.finish().map_err(status)?;
        let by = by.unwrap_or_default();
        let (before, after) = self
            .clock
            .advance(by)
            .await
            .map_err(|e| status(ApiError::Internal(e)))?;
        tracing::warn!(
            by = %humanize(by),
            now = %after.to_rfc3339_opts(SecondsFormat::Secs, true),
            actor = %caller.principal_id,
            "DEVELOPMENT CLOCK moved forward"
        );
        Ok(Response::new(pb::AdvanceClockResponse {
            now: Some(to_proto(after)),
            previous: Some(to_proto(before)),
        }))
    }
}

fn humanize(d: TimeDelta) -> String {
    let s = d.num_seconds();
    format!("{}h{:02}m{:02}s", s / 3600, (s % 3600) / 60, s % 60)
}
