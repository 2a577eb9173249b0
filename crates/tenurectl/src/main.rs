//! `tenurectl`: Tenure's command line for people — requesters, approvers, reviewers and
//! administrators. Every command is a call of Tenure's public gRPC API.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, Parser, Subcommand};

mod commands;
mod conn;
mod dev;
mod more;
mod output;
mod time;

use output::Format;

const EXAMPLES: &str = "\
Examples:
  tenurectl login --as ferry --mfa              # development issuer of a local `tenure serve`
  tenurectl roles                               # my eligible and active roles
  tenurectl activate --role billing-administrator --role user-administrator \\
      --duration 2h --justification \"month-end invoices\"
  tenurectl approvals list                      # requests waiting for my decision
  tenurectl approvals approve REQUEST_ID --justification \"ok\"
  tenurectl check --principal ferry --role billing-administrator
";

#[derive(Parser)]
#[command(name = "tenurectl", version, about = "Tenure's command line: just-in-time privileged roles, approvals, assignments, settings.", after_help = EXAMPLES)]
struct Cli {
    /// The Tenure server.
    #[arg(
        long,
        global = true,
        env = "TENURE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// A bearer token (instead of the saved login).
    #[arg(long, global = true, env = "TENURE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Run this command and use what it prints as the bearer token (for a real OIDC
    /// provider's CLI).
    #[arg(long, global = true)]
    token_command: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Get a token and remember it: from the development issuer of a local server
    /// (`--as NAME`), or a given token.
    #[command(
        after_help = "Examples:\n  tenurectl login --as ferry\n  tenurectl login --as ferry --mfa --ttl 1h\n  tenurectl login --token-file ~/token.jwt"
    )]
    Login(commands::LoginArgs),
    /// Show who the saved login is for.
    #[command(after_help = "Example:\n  tenurectl whoami")]
    Whoami,
    /// My eligible and active roles, and what I can do next.
    #[command(
        after_help = "Examples:\n  tenurectl roles\n  tenurectl roles --eligible --scope /subscriptions/s1"
    )]
    Roles(commands::RolesArgs),
    /// Activate one or several eligible roles, all or none (unless --partial).
    #[command(
        after_help = "Examples:\n  tenurectl activate --role billing-administrator --justification \"invoices\"\n  tenurectl activate --role exchange-administrator --role user-administrator --duration 90m \\\n      --justification \"migration\" --ticket CHG-1234\n  tenurectl activate --role contributor --scope /subscriptions/s1 --start \"tomorrow 09:00\" --dry-run"
    )]
    Activate(commands::ActivateArgs),
    /// End one of my activations now: by its request id, or by its role (and scope).
    #[command(
        after_help = "Examples:\n  tenurectl deactivate REQUEST_ID\n  tenurectl deactivate --role billing-administrator\n  tenurectl deactivate --role contributor --scope /subscriptions/prod"
    )]
    Deactivate(commands::DeactivateArgs),
    /// Extend one of my activations.
    #[command(
        after_help = "Examples:\n  tenurectl extend REQUEST_ID --by 1h --justification \"still migrating\"\n  tenurectl extend REQUEST_ID --until 18:00"
    )]
    Extend(commands::ExtendArgs),
    /// Renew one of my assignments that expired in the last 30 days.
    #[command(
        after_help = "Example:\n  tenurectl renew ASSIGNMENT_ID --duration 90d --justification \"still the billing owner\""
    )]
    Renew(commands::RenewArgs),
    /// My requests: list, show, cancel.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl requests list\n  tenurectl requests show REQUEST_ID\n  tenurectl requests cancel REQUEST_ID --reason \"not needed\""
    )]
    Requests(commands::RequestsCmd),
    /// Requests waiting for my approval: list, show, approve, deny.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl approvals list\n  tenurectl approvals approve REQUEST_ID -j \"ok for month end\""
    )]
    Approvals(commands::ApprovalsCmd),
    /// Does a principal hold a role (or permission) at a scope right now (or then)?
    #[command(
        after_help = "Examples:\n  tenurectl check --principal ferry --role billing-administrator\n  tenurectl check --principal ferry --permission microsoft.resources/read --scope /subscriptions/s1\n  tenurectl check --principal ferry --role billing-administrator --at 2026-11-01T09:00"
    )]
    Check(commands::CheckArgs),
    /// Administration: principals, groups, roles, scopes, assignments, settings.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl admin principals import deploy/examples/people.csv\n  tenurectl admin assign --eligible --principal ferry --role billing-administrator -j \"billing owner\"\n  tenurectl admin settings show --role billing-administrator"
    )]
    Admin(commands::AdminCmd),
    /// Access reviews: what waits for me, decide, accept recommendations, stop, apply.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl reviews create --file deploy/examples/contributor-review.json\n  tenurectl reviews list\n  tenurectl reviews decide ITEM_ID deny -j \"left the team\""
    )]
    Reviews(more::ReviewsCmd),
    /// Security alerts: list, show, dismiss, configure, watch.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  tenurectl alerts list\n  tenurectl alerts watch")]
    Alerts(more::AlertsCmd),
    /// The audit trail: query, export as CSV.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl audit query --principal ferry\n  tenurectl audit export --csv audit.csv"
    )]
    Audit(more::AuditCmd),
    /// Event streams.
    #[command(subcommand)]
    #[command(after_help = "Example:\n  tenurectl events watch --context activation")]
    Events(commands::EventsCmd),
    /// Development only: the server's clock (`tenure serve --dev-clock`).
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  tenurectl dev time\n  tenurectl dev advance 8h")]
    Dev(dev::DevCmd),
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  tenurectl completions bash > /etc/bash_completion.d/tenurectl"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// What every command gets.
pub struct Ctx {
    /// The server address.
    pub server: String,
    /// How to authenticate.
    pub tokens: conn::TokenSource,
    /// How to print.
    pub format: Format,
    /// Whether stdout is a terminal (progress bars only then).
    pub tty: bool,
}

#[derive(Args)]
struct Unused;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Ctx {
        server: cli.server.clone(),
        tokens: conn::TokenSource {
            token: cli.token.clone(),
            file: cli.token_file.clone(),
            command: cli.token_command.clone(),
        },
        format: cli.output,
        tty: std::io::stdout().is_terminal(),
    };
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "tenurectl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Login(a) => commands::login(&ctx, a).await,
            Command::Whoami => commands::whoami(&ctx),
            Command::Roles(a) => commands::roles(&ctx, a).await,
            Command::Activate(a) => commands::activate(&ctx, a).await,
            Command::Deactivate(a) => commands::deactivate(&ctx, a).await,
            Command::Extend(a) => commands::extend(&ctx, a).await,
            Command::Renew(a) => commands::renew(&ctx, a).await,
            Command::Requests(c) => commands::requests(&ctx, c).await,
            Command::Approvals(c) => commands::approvals(&ctx, c).await,
            Command::Check(a) => commands::check(&ctx, a).await,
            Command::Admin(c) => commands::admin(&ctx, c).await,
            Command::Reviews(c) => more::reviews(&ctx, c).await,
            Command::Alerts(c) => more::alerts(&ctx, c).await,
            Command::Audit(c) => more::audit(&ctx, c).await,
            Command::Events(c) => commands::events(&ctx, c).await,
            Command::Dev(c) => dev::dev(&ctx, c).await,
            Command::Completions { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::print_error(&e);
            ExitCode::from(output::exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and group has `--help` with examples (the bar).
    #[test]
    fn every_subcommand_has_help_with_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let here = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                if sub.get_name() != "help" && !help.contains("Example") {
                    missing.push(here.clone());
                }
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "tenurectl", &mut missing);
        assert!(missing.is_empty(), "no examples in --help of: {missing:#?}");
        Cli::command().debug_assert();
    }
}
