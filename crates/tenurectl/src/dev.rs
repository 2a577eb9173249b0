//! `tenurectl dev …`: the development clock of a server started with
//! `tenure serve --dev-clock`.

use clap::Subcommand;
use tenure_proto::devauth::v1 as pb;

use crate::Ctx;
use crate::commands::authed;
use crate::conn;
use crate::output::{Format, json};
use crate::time::{dur_proto, parse_duration, show_long};

/// `tenurectl dev …`.
#[derive(Subcommand)]
pub enum DevCmd {
    /// The server's time (its development clock, or its wall clock).
    #[command(after_help = "Example:\n  tenurectl dev time")]
    Time,
    /// Move the development clock forward: activations end, pending requests time out,
    /// review rounds start and close as if the time had passed (bootstrap administrator).
    #[command(
        after_help = "Examples:\n  tenurectl login --as admin && tenurectl dev advance 8h\n  tenurectl dev advance 14d\n\nThe server must run with `tenure serve --dev-clock`. Tokens age with the clock:\nafter moving it past a login's lifetime, log in again."
    )]
    Advance {
        /// How far: 90m, 2h, 14d.
        #[arg(value_parser = parse_duration)]
        by: chrono::TimeDelta,
    },
}

fn no_dev_clock(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unimplemented {
        anyhow::anyhow!(
            "this server runs on the wall clock; start it with `tenure serve --dev-clock` to move time"
        )
    } else {
        s.into()
    }
}

/// Development clock commands.
pub async fn dev(ctx: &Ctx, cmd: DevCmd) -> anyhow::Result<()> {
    match cmd {
        DevCmd::Time => {
            let mut c = pb::dev_clock_service_client::DevClockServiceClient::new(
                conn::connect(&ctx.server).await?,
            );
            let r = c
                .get_time(pb::GetTimeRequest {})
                .await
                .map_err(no_dev_clock)?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            println!("{}", show_long(r.now.as_ref()));
            Ok(())
        }
        DevCmd::Advance { by } => {
            let (ch, b) = authed(ctx).await?;
            let mut c =
                pb::dev_clock_service_client::DevClockServiceClient::with_interceptor(ch, b);
            let r = c
                .advance_clock(pb::AdvanceClockRequest {
                    by: Some(dur_proto(by)),
                })
                .await
                .map_err(no_dev_clock)?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            println!(
                "{} → {}",
                show_long(r.previous.as_ref()),
                show_long(r.now.as_ref())
            );
            Ok(())
        }
    }
}
