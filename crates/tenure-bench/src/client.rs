//! Connections to the server under test and the development issuer's tokens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::devauth::v1 as dev;
use tenure_proto::notifications::v1 as ntf;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// A bearer token, ready to attach.
pub type Bearer = MetadataValue<tonic::metadata::Ascii>;

/// Several HTTP/2 connections to one server, and tokens.
#[derive(Clone)]
pub struct Conns {
    /// One channel per TCP connection.
    pub channels: Arc<Vec<Channel>>,
    /// The bootstrap administrator's token (with MFA).
    pub admin: Bearer,
}

impl Conns {
    /// Opens `n` connections to `addr` (each `Endpoint::connect` is its own TCP
    /// connection) and gets the administrator's token.
    pub async fn open(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Self> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let ch = Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            channels.push(ch);
        }
        let channels = Arc::new(channels);
        let admin = token(&channels[0], crate::ADMIN, true).await?;
        Ok(Self { channels, admin })
    }

    /// The channel for call or worker `i` (round robin).
    pub fn ch(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    /// Tokens for many subjects (without MFA), fetched concurrently.
    pub async fn tokens(&self, subjects: &[String]) -> anyhow::Result<HashMap<String, Bearer>> {
        let mut out = HashMap::with_capacity(subjects.len());
        for chunk in subjects.chunks(64) {
            let futs = chunk.iter().enumerate().map(|(i, s)| {
                let ch = self.ch(i);
                async move { token(&ch, s, false).await.map(|t| (s.clone(), t)) }
            });
            for r in futures::future::join_all(futs).await {
                let (s, t) = r?;
                out.insert(s, t);
            }
        }
        Ok(out)
    }

    /// Access service client on connection `i`.
    pub fn access(&self, i: usize) -> asg::access_service_client::AccessServiceClient<Channel> {
        asg::access_service_client::AccessServiceClient::new(self.ch(i))
    }
    /// Assignments service client on connection `i`.
    pub fn assignments(
        &self,
        i: usize,
    ) -> asg::assignments_service_client::AssignmentsServiceClient<Channel> {
        asg::assignments_service_client::AssignmentsServiceClient::new(self.ch(i))
    }
    /// Principals service client on connection `i`.
    pub fn principals(
        &self,
        i: usize,
    ) -> asg::principals_service_client::PrincipalsServiceClient<Channel> {
        asg::principals_service_client::PrincipalsServiceClient::new(self.ch(i))
    }
    /// Scopes service client on connection `i`.
    pub fn scopes(&self, i: usize) -> asg::scopes_service_client::ScopesServiceClient<Channel> {
        asg::scopes_service_client::ScopesServiceClient::new(self.ch(i))
    }
    /// Role settings client on connection `i`.
    pub fn settings(
        &self,
        i: usize,
    ) -> asg::role_settings_service_client::RoleSettingsServiceClient<Channel> {
        asg::role_settings_service_client::RoleSettingsServiceClient::new(self.ch(i))
    }
    /// Assignments event stream client on connection `i`.
    pub fn events(&self, i: usize) -> asg::events_service_client::EventsServiceClient<Channel> {
        asg::events_service_client::EventsServiceClient::new(self.ch(i))
    }
    /// Activation service client on connection `i`.
    pub fn activation(
        &self,
        i: usize,
    ) -> act::activation_service_client::ActivationServiceClient<Channel> {
        act::activation_service_client::ActivationServiceClient::new(self.ch(i))
    }
    /// Alerts service client on connection `i`.
    pub fn alerts(&self, i: usize) -> ntf::alerts_service_client::AlertsServiceClient<Channel> {
        ntf::alerts_service_client::AlertsServiceClient::new(self.ch(i))
    }
    /// Audit service client on connection `i` (responses up to 64 MiB: CSV chunks).
    pub fn audit(&self, i: usize) -> ntf::audit_service_client::AuditServiceClient<Channel> {
        ntf::audit_service_client::AuditServiceClient::new(self.ch(i))
            .max_decoding_message_size(64 << 20)
    }
    /// Development clock client on connection `i` (servers started with `--dev-clock`).
    pub fn dev_clock(
        &self,
        i: usize,
    ) -> dev::dev_clock_service_client::DevClockServiceClient<Channel> {
        dev::dev_clock_service_client::DevClockServiceClient::new(self.ch(i))
    }
    /// Health client on connection `i`.
    pub fn health(&self, i: usize) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.ch(i))
    }
}

/// Mints a token through `tenure.devauth.v1.DevAuthService/IssueToken` (8 hours).
pub async fn token(ch: &Channel, subject: &str, mfa: bool) -> anyhow::Result<Bearer> {
    let resp = dev::dev_auth_service_client::DevAuthServiceClient::new(ch.clone())
        .issue_token(dev::IssueTokenRequest {
            subject: subject.to_owned(),
            mfa,
            ttl: Some(prost_types::Duration {
                seconds: 8 * 3600,
                nanos: 0,
            }),
        })
        .await
        .context("IssueToken (is the development issuer enabled?)")?
        .into_inner();
    Ok(format!("Bearer {}", resp.token).parse()?)
}

/// `msg` carrying `token`.
pub fn req<T>(msg: T, token: &Bearer) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", token.clone());
    r
}
