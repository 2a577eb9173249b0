//! The commands. Each one calls Tenure's gRPC API and prints the result as a table or as
//! JSON.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1 as common;
use tonic::transport::Channel;

use crate::Ctx;
use crate::conn::{self, Bearer};
use crate::output::{Format, json, table};
use crate::time::{dur_proto, parse_duration, parse_time, show, show_duration, to_proto};

pub async fn authed(ctx: &Ctx) -> anyhow::Result<(Channel, Bearer)> {
    let token = ctx.tokens.resolve()?;
    Ok((conn::connect(&ctx.server).await?, Bearer::new(&token)?))
}

macro_rules! client {
    ($ctx:expr, $($p:ident)::+) => {{
        let (ch, b) = authed($ctx).await?;
        $($p)::+::with_interceptor(ch, b)
    }};
}

fn reference(p: Option<&common::PrincipalRef>) -> String {
    p.map(|p| {
        if p.display_name.is_empty() {
            p.id.clone()
        } else {
            format!("{} ({})", p.display_name, p.id)
        }
    })
    .unwrap_or_default()
}

fn role_name(r: Option<&common::RoleRef>) -> String {
    r.map(|r| {
        if r.display_name.is_empty() {
            r.id.clone()
        } else {
            r.display_name.clone()
        }
    })
    .unwrap_or_default()
}

fn scope_id(s: Option<&common::ScopeRef>) -> String {
    s.map(|s| s.id.clone()).unwrap_or_default()
}

fn status_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix)
        .to_ascii_lowercase()
        .replace('_', " ")
}

// ----- login -------------------------------------------------------------------------------

/// `tenurectl login`.
#[derive(Args)]
pub struct LoginArgs {
    /// Ask the server's development issuer for a token naming this principal.
    #[arg(long = "as", value_name = "PRINCIPAL")]
    subject: Option<String>,
    /// Mark the development token as MFA-authenticated.
    #[arg(long)]
    mfa: bool,
    /// Lifetime of the development token.
    #[arg(long, default_value = "8h", value_parser = parse_duration)]
    ttl: chrono::TimeDelta,
}

/// Gets and saves a token.
pub async fn login(ctx: &Ctx, a: LoginArgs) -> anyhow::Result<()> {
    let (token, subject) = match a.subject {
        Some(subject) => {
            let mut c =
                tenure_proto::devauth::v1::dev_auth_service_client::DevAuthServiceClient::new(
                    conn::connect(&ctx.server).await?,
                );
            let r = c
                .issue_token(tenure_proto::devauth::v1::IssueTokenRequest { subject: subject.clone(), mfa: a.mfa, ttl: Some(dur_proto(a.ttl)) })
                .await
                .map_err(|s| {
                    if s.code() == tonic::Code::Unimplemented {
                        anyhow::anyhow!("this server has no development issuer; use --token, --token-file or --token-command with your identity provider")
                    } else {
                        s.into()
                    }
                })?;
            (r.into_inner().token, subject)
        }
        None => (
            ctx.tokens.resolve().context(
                "give --as NAME, or a token with --token / --token-file / --token-command",
            )?,
            String::new(),
        ),
    };
    let path = conn::save(&conn::Credentials {
        server: ctx.server.clone(),
        token,
        subject: subject.clone(),
    })?;
    println!(
        "logged in{} — saved to {}",
        if subject.is_empty() {
            String::new()
        } else {
            format!(" as {subject}")
        },
        path.display()
    );
    Ok(())
}

/// `tenurectl whoami`.
pub fn whoami(_ctx: &Ctx) -> anyhow::Result<()> {
    match conn::saved() {
        Some(c) => println!(
            "{} at {}",
            if c.subject.is_empty() {
                "(token)"
            } else {
                &c.subject
            },
            c.server
        ),
        None => println!("not logged in"),
    }
    Ok(())
}

// ----- my roles ----------------------------------------------------------------------------

/// `tenurectl roles`.
#[derive(Args)]
pub struct RolesArgs {
    /// Only eligible roles.
    #[arg(long, conflicts_with = "active")]
    eligible: bool,
    /// Only active roles.
    #[arg(long)]
    active: bool,
    /// At this scope (and inherited from above).
    #[arg(long)]
    scope: Option<String>,
}

/// Lists the caller's roles.
pub async fn roles(ctx: &Ctx, a: RolesArgs) -> anyhow::Result<()> {
    let mut c = client!(ctx, asg::access_service_client::AccessServiceClient);
    let t = if a.eligible {
        common::AssignmentType::Eligible
    } else if a.active {
        common::AssignmentType::Active
    } else {
        common::AssignmentType::Unspecified
    };
    let r = c
        .list_my_roles(asg::ListMyRolesRequest {
            assignment_type: t.into(),
            scope_id: a.scope.unwrap_or_default(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    if ctx.format == Format::Json {
        return json(&r);
    }
    let rows = r
        .roles
        .iter()
        .map(|m| {
            let i = m
                .grant
                .as_ref()
                .and_then(|g| g.instance.as_ref())
                .cloned()
                .unwrap_or_default();
            let via = m
                .grant
                .as_ref()
                .map(|g| status_name(g.member_type().as_str_name(), "MEMBER_TYPE_"))
                .unwrap_or_default();
            let state = if m.can_renew {
                "expired (renewable)".to_owned()
            } else if i.assignment_type() == common::AssignmentType::Eligible {
                match &m.activation {
                    Some(x) => format!("active until {}", show(x.end_time.as_ref())),
                    None => "eligible".to_owned(),
                }
            } else {
                "active".to_owned()
            };
            vec![
                role_name(i.role.as_ref()),
                scope_id(i.scope.as_ref()),
                state,
                via,
                show(i.end_time.as_ref()),
                i.id,
            ]
        })
        .collect();
    table(&["ROLE", "SCOPE", "STATE", "VIA", "UNTIL", "ID"], rows);
    Ok(())
}

/// `tenurectl activate`.
#[derive(Args)]
pub struct ActivateArgs {
    /// A role to activate (repeat for several; all are checked before any is granted).
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// The scope (default "/").
    #[arg(long, default_value = "/")]
    scope: String,
    /// How long (default: the role's maximum).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<chrono::TimeDelta>,
    /// Why.
    #[arg(long, short = 'j')]
    justification: Option<String>,
    /// A change ticket number.
    #[arg(long)]
    ticket: Option<String>,
    /// The ticketing system of --ticket.
    #[arg(long, default_value = "")]
    ticket_system: String,
    /// Start later (e.g. "tomorrow 09:00", 2026-12-01T09:00, +2h).
    #[arg(long)]
    start: Option<String>,
    /// Only check: say what would happen, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Grant the roles that pass even when others fail.
    #[arg(long)]
    partial: bool,
}

/// Activates roles.
pub async fn activate(ctx: &Ctx, a: ActivateArgs) -> anyhow::Result<()> {
    let start = a
        .start
        .as_deref()
        .map(|s| parse_time(s, crate::time::now()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let ticket = a.ticket.map(|t| common::TicketInfo {
        ticket_number: t,
        ticket_system: a.ticket_system.clone(),
    });
    let items = a
        .roles
        .iter()
        .map(|r| act::ActivationItem {
            role_id: r.clone(),
            scope_id: a.scope.clone(),
            eligibility_id: String::new(),
            duration: a.duration.map(dur_proto),
            start_time: start.map(to_proto),
            justification: String::new(),
            ticket: None,
        })
        .collect();
    let mut c = client!(ctx, act::activation_service_client::ActivationServiceClient);
    let r = c
        .activate_roles(act::ActivateRolesRequest {
            items,
            justification: a.justification.unwrap_or_default(),
            ticket,
            validate_only: a.dry_run,
            partial: a.partial,
            request_id: String::new(),
        })
        .await?
        .into_inner();
    if ctx.format == Format::Json {
        return json(&r);
    }
    let rows = r
        .results
        .iter()
        .map(|x| {
            let req = x.request.clone().unwrap_or_default();
            let why = if x.violations.is_empty() {
                match x.outcome() {
                    act::ItemOutcome::PendingApproval => format!(
                        "waiting for {}",
                        req.stages
                            .first()
                            .map(|s| s
                                .approvers
                                .iter()
                                .map(|p| p.id.clone())
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default()
                    ),
                    _ => String::new(),
                }
            } else {
                x.violations
                    .iter()
                    .map(|v| v.description.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            vec![
                a.roles
                    .get(usize::try_from(x.index).unwrap_or(0))
                    .cloned()
                    .unwrap_or_default(),
                status_name(x.outcome().as_str_name(), "ITEM_OUTCOME_"),
                show(x.start_time.as_ref()),
                show(x.end_time.as_ref()),
                why,
                req.id,
            ]
        })
        .collect();
    table(
        &["ROLE", "OUTCOME", "FROM", "UNTIL", "NOTE", "REQUEST"],
        rows,
    );
    Ok(())
}

/// `tenurectl deactivate`.
#[derive(Args)]
pub struct DeactivateArgs {
    /// The activation request id.
    #[arg(required_unless_present = "role", conflicts_with = "role")]
    request_id: Option<String>,
    /// Or the role of my activation to end.
    #[arg(long)]
    role: Option<String>,
    /// With --role: at this scope.
    #[arg(long, default_value = "/", requires = "role")]
    scope: String,
}

/// Ends an activation.
pub async fn deactivate(ctx: &Ctx, a: DeactivateArgs) -> anyhow::Result<()> {
    let mut c = client!(ctx, act::activation_service_client::ActivationServiceClient);
    let request_id = match (a.request_id, a.role) {
        (Some(id), _) => id,
        (None, Some(role)) => {
            // My activation of that role at that scope that holds now.
            let mine = c
                .list_requests(act::ListRequestsRequest {
                    relation: act::RequestRelation::Mine.into(),
                    statuses: vec![act::RequestStatus::Provisioned.into()],
                    action: act::RequestAction::Activate.into(),
                    role_id: role.clone(),
                    scope_id: a.scope.clone(),
                    page_size: 10,
                    ..Default::default()
                })
                .await?
                .into_inner();
            match mine.requests.as_slice() {
                [one] => one.id.clone(),
                [] => {
                    return Err(tonic::Status::not_found(format!(
                        "you have no active activation of {role} at {}",
                        a.scope
                    ))
                    .into());
                }
                _ => {
                    return Err(tonic::Status::invalid_argument(format!(
                        "several activations of {role} at {}: give the request id (`tenurectl requests list`)",
                        a.scope
                    ))
                    .into());
                }
            }
        }
        (None, None) => anyhow::bail!("give a request id or --role"),
    };
    let r = c
        .deactivate_role(act::DeactivateRoleRequest {
            activation_request_id: request_id,
            request_id: String::new(),
        })
        .await?
        .into_inner();
    print_request(ctx, &r.request.unwrap_or_default())
}

/// `tenurectl extend`.
#[derive(Args)]
pub struct ExtendArgs {
    /// The activation request id.
    request_id: String,
    /// Extend by this long.
    #[arg(long, value_parser = parse_duration, conflicts_with = "until")]
    by: Option<chrono::TimeDelta>,
    /// Extend until then.
    #[arg(long)]
    until: Option<String>,
    /// Why.
    #[arg(long, short = 'j', default_value = "")]
    justification: String,
}

/// Extends an activation.
pub async fn extend(ctx: &Ctx, a: ExtendArgs) -> anyhow::Result<()> {
    let expiration = match (a.by, a.until) {
        (Some(d), _) => act::extend_activation_request::Expiration::ExtendBy(dur_proto(d)),
        (None, Some(t)) => act::extend_activation_request::Expiration::NewEndTime(to_proto(
            parse_time(&t, crate::time::now()).map_err(anyhow::Error::msg)?,
        )),
        (None, None) => anyhow::bail!("give --by or --until"),
    };
    let mut c = client!(ctx, act::activation_service_client::ActivationServiceClient);
    let r = c
        .extend_activation(act::ExtendActivationRequest {
            activation_request_id: a.request_id,
            expiration: Some(expiration),
            justification: a.justification,
            ..Default::default()
        })
        .await?
        .into_inner();
    print_request(ctx, &r.request.unwrap_or_default())
}

/// `tenurectl renew`.
#[derive(Args)]
pub struct RenewArgs {
    /// The expired assignment's id.
    assignment_id: String,
    /// For how long.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<chrono::TimeDelta>,
    /// Why.
    #[arg(long, short = 'j', default_value = "")]
    justification: String,
}

/// Renews an expired assignment.
pub async fn renew(ctx: &Ctx, a: RenewArgs) -> anyhow::Result<()> {
    let mut c = client!(ctx, act::activation_service_client::ActivationServiceClient);
    let r = c
        .renew_assignment(act::RenewAssignmentRequest {
            assignment_id: a.assignment_id,
            expiration: a
                .duration
                .map(|d| act::renew_assignment_request::Expiration::Duration(dur_proto(d))),
            justification: a.justification,
            ..Default::default()
        })
        .await?
        .into_inner();
    print_request(ctx, &r.request.unwrap_or_default())
}

fn print_request(ctx: &Ctx, r: &act::Request) -> anyhow::Result<()> {
    if ctx.format == Format::Json {
        return json(r);
    }
    println!("request    {}", r.id);
    println!(
        "action     {}",
        status_name(r.action().as_str_name(), "REQUEST_ACTION_")
    );
    println!(
        "status     {}{}",
        status_name(r.status().as_str_name(), "REQUEST_STATUS_"),
        if r.status_reason.is_empty() {
            String::new()
        } else {
            format!(" — {}", r.status_reason)
        }
    );
    println!("requestor  {}", reference(r.requestor.as_ref()));
    println!(
        "role       {} at {}",
        role_name(r.role.as_ref()),
        scope_id(r.scope.as_ref())
    );
    println!(
        "window     {} → {} ({})",
        show(r.start_time.as_ref()),
        show(r.end_time.as_ref()),
        show_duration(r.duration.as_ref())
    );
    if !r.justification.is_empty() {
        println!("why        {}", r.justification);
    }
    if let Some(t) = &r.ticket {
        println!("ticket     {} {}", t.ticket_system, t.ticket_number);
    }
    for s in &r.stages {
        println!(
            "stage {}    {} — approvers: {}",
            s.index + 1,
            status_name(s.status().as_str_name(), "STAGE_STATUS_"),
            s.approvers
                .iter()
                .map(|p| p.id.clone())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for d in &s.decisions {
            println!(
                "             {} {} at {}: {}",
                reference(d.approver.as_ref()),
                status_name(d.decision().as_str_name(), "DECISION_"),
                show(d.decide_time.as_ref()),
                d.justification
            );
        }
    }
    Ok(())
}

fn request_rows(rs: &[act::Request]) -> Vec<Vec<String>> {
    rs.iter()
        .map(|r| {
            vec![
                r.id.clone(),
                status_name(r.action().as_str_name(), "REQUEST_ACTION_"),
                reference(r.requestor.as_ref()),
                role_name(r.role.as_ref()),
                scope_id(r.scope.as_ref()),
                status_name(r.status().as_str_name(), "REQUEST_STATUS_"),
                show(r.create_time.as_ref()),
            ]
        })
        .collect()
}

const REQUEST_HEADER: &[&str] = &[
    "REQUEST",
    "ACTION",
    "REQUESTOR",
    "ROLE",
    "SCOPE",
    "STATUS",
    "CREATED",
];

/// `tenurectl requests …`.
#[derive(Subcommand)]
pub enum RequestsCmd {
    /// My requests, newest first (`--all` for everyone's, with a reading role).
    #[command(
        after_help = "Examples:\n  tenurectl requests list\n  tenurectl requests list --all -o json"
    )]
    List {
        /// Everyone's requests.
        #[arg(long)]
        all: bool,
    },
    /// One request with its stages and decisions.
    #[command(after_help = "Example:\n  tenurectl requests show REQUEST_ID")]
    Show {
        /// The request id.
        id: String,
    },
    /// Cancel one of my pending or scheduled requests.
    #[command(
        after_help = "Example:\n  tenurectl requests cancel REQUEST_ID --reason \"done without it\""
    )]
    Cancel {
        /// The request id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Request commands.
pub async fn requests(ctx: &Ctx, cmd: RequestsCmd) -> anyhow::Result<()> {
    let mut c = client!(ctx, act::activation_service_client::ActivationServiceClient);
    match cmd {
        RequestsCmd::List { all } => {
            let relation = if all {
                act::RequestRelation::All
            } else {
                act::RequestRelation::Mine
            };
            let r = c
                .list_requests(act::ListRequestsRequest {
                    relation: relation.into(),
                    page_size: 200,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            table(REQUEST_HEADER, request_rows(&r.requests));
            Ok(())
        }
        RequestsCmd::Show { id } => {
            let r = c
                .get_request(act::GetRequestRequest { id })
                .await?
                .into_inner();
            print_request(ctx, &r.request.unwrap_or_default())
        }
        RequestsCmd::Cancel { id, reason } => {
            let r = c
                .cancel_request(act::CancelRequestRequest {
                    id,
                    reason,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            print_request(ctx, &r.request.unwrap_or_default())
        }
    }
}

/// `tenurectl approvals …`.
#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Requests waiting for my decision.
    #[command(after_help = "Example:\n  tenurectl approvals list")]
    List,
    /// One request.
    #[command(after_help = "Example:\n  tenurectl approvals show REQUEST_ID")]
    Show {
        /// The request id.
        id: String,
    },
    /// Approve the current stage of a request.
    #[command(
        after_help = "Example:\n  tenurectl approvals approve REQUEST_ID --justification \"ok for month end\""
    )]
    Approve {
        /// The request id.
        id: String,
        /// Why.
        #[arg(long, short = 'j', default_value = "")]
        justification: String,
    },
    /// Deny a request.
    #[command(
        after_help = "Example:\n  tenurectl approvals deny REQUEST_ID --justification \"not during the freeze\""
    )]
    Deny {
        /// The request id.
        id: String,
        /// Why.
        #[arg(long, short = 'j', default_value = "")]
        justification: String,
    },
}

/// Approval commands.
pub async fn approvals(ctx: &Ctx, cmd: ApprovalsCmd) -> anyhow::Result<()> {
    let mut c = client!(ctx, act::activation_service_client::ActivationServiceClient);
    match cmd {
        ApprovalsCmd::List => {
            let r = c
                .list_requests(act::ListRequestsRequest {
                    relation: act::RequestRelation::AwaitingMyApproval.into(),
                    page_size: 200,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            table(REQUEST_HEADER, request_rows(&r.requests));
            Ok(())
        }
        ApprovalsCmd::Show { id } => {
            let r = c
                .get_request(act::GetRequestRequest { id })
                .await?
                .into_inner();
            print_request(ctx, &r.request.unwrap_or_default())
        }
        ApprovalsCmd::Approve { id, justification } => {
            let r = c
                .approve_request(act::ApproveRequestRequest {
                    id,
                    justification,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            print_request(ctx, &r.request.unwrap_or_default())
        }
        ApprovalsCmd::Deny { id, justification } => {
            let r = c
                .deny_request(act::DenyRequestRequest {
                    id,
                    justification,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            print_request(ctx, &r.request.unwrap_or_default())
        }
    }
}

// ----- access ------------------------------------------------------------------------------

/// `tenurectl check`.
#[derive(Args)]
pub struct CheckArgs {
    /// Who.
    #[arg(long)]
    principal: String,
    /// Which role.
    #[arg(
        long,
        conflicts_with = "permission",
        required_unless_present = "permission"
    )]
    role: Option<String>,
    /// Or which permission.
    #[arg(long)]
    permission: Option<String>,
    /// Where (default "/").
    #[arg(long, default_value = "/")]
    scope: String,
    /// When (default now): a past time answers from history.
    #[arg(long)]
    at: Option<String>,
}

/// Checks access.
pub async fn check(ctx: &Ctx, a: CheckArgs) -> anyhow::Result<()> {
    let target = match (a.role, a.permission) {
        (Some(r), _) => asg::check_access_request::Target::RoleId(r),
        (None, Some(p)) => asg::check_access_request::Target::Permission(p),
        (None, None) => anyhow::bail!("give --role or --permission"),
    };
    let at =
        a.at.as_deref()
            .map(|s| parse_time(s, crate::time::now()))
            .transpose()
            .map_err(anyhow::Error::msg)?;
    let mut c = client!(ctx, asg::access_service_client::AccessServiceClient);
    let r = c
        .check_access(asg::CheckAccessRequest {
            principal_id: a.principal,
            target: Some(target),
            scope_id: a.scope,
            at_time: at.map(to_proto),
            min_sequence: 0,
            // a person asking wants the answer of record, whichever replica answers
            consistency: asg::Consistency::Full.into(),
        })
        .await?
        .into_inner();
    if ctx.format == Format::Json {
        return json(&r);
    }
    println!("{}", if r.allowed { "ALLOWED" } else { "DENIED" });
    let rows = r
        .grants
        .iter()
        .map(|g| {
            let i = g.instance.clone().unwrap_or_default();
            let mut how = status_name(g.member_type().as_str_name(), "MEMBER_TYPE_");
            if !g.via_groups.is_empty() {
                how.push_str(&format!(
                    " via {}",
                    g.via_groups
                        .iter()
                        .map(|p| p.id.clone())
                        .collect::<Vec<_>>()
                        .join(" → ")
                ));
            }
            if let Some(s) = &g.inherited_from {
                how.push_str(&format!(" inherited from {}", s.id));
            }
            vec![
                role_name(i.role.as_ref()),
                scope_id(i.scope.as_ref()),
                status_name(i.origin().as_str_name(), "INSTANCE_ORIGIN_"),
                how,
                show(i.end_time.as_ref()),
                i.id,
            ]
        })
        .collect();
    table(&["ROLE", "SCOPE", "ORIGIN", "HOW", "UNTIL", "ID"], rows);
    Ok(())
}

// ----- administration -----------------------------------------------------------------------

/// `tenurectl admin …`.
#[derive(Subcommand)]
pub enum AdminCmd {
    /// Principals: list, import from JSON or CSV.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl admin principals list --search fer\n  tenurectl admin principals import deploy/examples/people.csv"
    )]
    Principals(PrincipalsCmd),
    /// Set a group's members.
    #[command(
        after_help = "Example:\n  tenurectl admin group-members billing-team --member ferry --member kenneth"
    )]
    GroupMembers {
        /// The group.
        group: String,
        /// A member (repeat).
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Role definitions.
    #[command(after_help = "Examples:\n  tenurectl admin roles\n  tenurectl admin roles --custom")]
    Roles {
        /// Only custom roles.
        #[arg(long)]
        custom: bool,
    },
    /// Scopes: list, import a subtree from JSON or CSV.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl admin scopes list\n  tenurectl admin scopes import deploy/examples/scopes.csv"
    )]
    Scopes(ScopesCmd),
    /// Make a principal eligible for (or give it) a role.
    #[command(
        after_help = "Examples:\n  tenurectl admin assign --eligible --principal ferry --role billing-administrator \\\n      --justification \"billing owner\"\n  tenurectl admin assign --active --principal kenneth --role contributor --scope /subscriptions/s1 \\\n      --duration 30d --justification \"migration\""
    )]
    Assign(AssignArgs),
    /// Assignments: list, remove, extend, renew.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl admin assignments list --principal ferry\n  tenurectl admin assignments remove ASSIGNMENT_ID -j \"left the team\""
    )]
    Assignments(AssignmentsCmd),
    /// Role settings: show effective (with origin), set organisation defaults, set per role.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl admin settings show --role billing-administrator\n  tenurectl admin settings set --role billing-administrator --require-approval true --approver kenneth"
    )]
    Settings(SettingsCmd),
    /// Webhooks that notifications and alerts are delivered to: list, add, remove.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  tenurectl admin webhooks add --name SOC --url https://soc.example/tenure --kind alert-raised\n  tenurectl admin webhooks list"
    )]
    Webhooks(crate::more::WebhooksCmd),
}

/// Principal commands.
#[derive(Subcommand)]
pub enum PrincipalsCmd {
    /// List principals.
    #[command(
        after_help = "Examples:\n  tenurectl admin principals list\n  tenurectl admin principals list --search fer -o json"
    )]
    List {
        /// Filter by name prefix.
        #[arg(long, default_value = "")]
        search: String,
    },
    /// Import (upsert) principals from a JSON array or a CSV file with the header
    /// id,type,display_name,user_principal_name,email (type: user, group, service).
    #[command(
        after_help = "Examples:\n  tenurectl admin principals import deploy/examples/people.csv\n  tenurectl admin principals import principals.json"
    )]
    Import {
        /// The file.
        file: PathBuf,
    },
}

/// Scope commands.
#[derive(Subcommand)]
pub enum ScopesCmd {
    /// List scopes.
    #[command(
        after_help = "Examples:\n  tenurectl admin scopes list\n  tenurectl admin scopes list --parent /subscriptions/prod"
    )]
    List {
        /// Under this parent (default: everything).
        #[arg(long, default_value = "/")]
        parent: String,
    },
    /// Import a subtree from a CSV file with the header id,parent_id,type,display_name
    /// (type: management-group, subscription, resource-group, resource).
    #[command(after_help = "Example:\n  tenurectl admin scopes import deploy/examples/scopes.csv")]
    Import {
        /// The file.
        file: PathBuf,
        /// The root of the imported subtree.
        #[arg(long, default_value = "/")]
        root: String,
    },
}

/// `tenurectl admin assign`.
#[derive(Args)]
pub struct AssignArgs {
    /// Eligible (may activate).
    #[arg(long, conflicts_with = "active", required_unless_present = "active")]
    eligible: bool,
    /// Active (holds the role).
    #[arg(long)]
    active: bool,
    /// Who.
    #[arg(long)]
    principal: String,
    /// Which role.
    #[arg(long)]
    role: String,
    /// Where (default "/").
    #[arg(long, default_value = "/")]
    scope: String,
    /// How long (default: the role's "expire after").
    #[arg(long, value_parser = parse_duration)]
    duration: Option<chrono::TimeDelta>,
    /// No end (when the role's settings allow it).
    #[arg(long, conflicts_with = "duration")]
    permanent: bool,
    /// Start later.
    #[arg(long)]
    start: Option<String>,
    /// Why.
    #[arg(long, short = 'j', default_value = "")]
    justification: String,
}

/// Assignment commands.
#[derive(Subcommand)]
pub enum AssignmentsCmd {
    /// List assignments in effect or pending.
    #[command(
        after_help = "Examples:\n  tenurectl admin assignments list --principal ferry\n  tenurectl admin assignments list --role contributor -o json"
    )]
    List {
        /// Of this principal.
        #[arg(long, default_value = "")]
        principal: String,
        /// Of this role.
        #[arg(long, default_value = "")]
        role: String,
    },
    /// Remove an assignment now.
    #[command(
        after_help = "Example:\n  tenurectl admin assignments remove ASSIGNMENT_ID -j \"left the team\""
    )]
    Remove {
        /// The assignment id.
        id: String,
        /// Why.
        #[arg(long, short = 'j', default_value = "")]
        justification: String,
    },
    /// Extend an assignment that has not expired.
    #[command(
        after_help = "Example:\n  tenurectl admin assignments extend ASSIGNMENT_ID --duration 90d -j \"project extended\""
    )]
    Extend {
        /// The assignment id.
        id: String,
        /// By how long.
        #[arg(long, value_parser = parse_duration)]
        by: chrono::TimeDelta,
        /// Why.
        #[arg(long, short = 'j', default_value = "")]
        justification: String,
    },
    /// Renew an expired assignment.
    #[command(
        after_help = "Example:\n  tenurectl admin assignments renew ASSIGNMENT_ID --duration 180d -j \"still the billing owner\""
    )]
    Renew {
        /// The assignment id.
        id: String,
        /// For how long.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<chrono::TimeDelta>,
        /// Why.
        #[arg(long, short = 'j', default_value = "")]
        justification: String,
    },
}

/// Settings commands.
#[derive(Subcommand)]
pub enum SettingsCmd {
    /// The effective settings of a role at a scope, with where each value comes from.
    #[command(
        after_help = "Examples:\n  tenurectl admin settings show --role billing-administrator\n  tenurectl admin settings show --role contributor --scope /subscriptions/prod -o json"
    )]
    Show {
        /// The role.
        #[arg(long)]
        role: String,
        /// The scope.
        #[arg(long, default_value = "/")]
        scope: String,
    },
    /// Change the organisation-wide defaults (all roles at once).
    #[command(
        after_help = "Example:\n  tenurectl admin settings set-default --max-duration 4h --require-ticket true"
    )]
    SetDefault(SettingsChange),
    /// Change one role's settings.
    #[command(
        after_help = "Example:\n  tenurectl admin settings set --role billing-administrator --require-approval true --approver kenneth"
    )]
    Set {
        /// The role.
        #[arg(long)]
        role: String,
        /// For a resource role: only at this scope.
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        change: SettingsChange,
    },
}

/// The settings a command changes (only those given).
#[derive(Args)]
pub struct SettingsChange {
    /// Activation maximum duration.
    #[arg(long, value_parser = parse_duration)]
    max_duration: Option<chrono::TimeDelta>,
    /// Require MFA to activate.
    #[arg(long)]
    require_mfa: Option<bool>,
    /// Require a justification to activate.
    #[arg(long)]
    require_justification: Option<bool>,
    /// Require ticket information to activate.
    #[arg(long)]
    require_ticket: Option<bool>,
    /// Require approval to activate.
    #[arg(long)]
    require_approval: Option<bool>,
    /// An approver (user id; repeat). Sets a single stage needing one approval.
    #[arg(long = "approver")]
    approvers: Vec<String>,
}

impl SettingsChange {
    fn into_settings(
        self,
        role: &str,
        scope: &str,
    ) -> anyhow::Result<(asg::RoleSettings, Vec<String>)> {
        let mut paths = Vec::new();
        let mut a = asg::ActivationSettings::default();
        if let Some(d) = self.max_duration {
            a.maximum_duration = Some(dur_proto(d));
            paths.push("activation.maximum_duration".to_owned());
        }
        for (v, slot, path) in [
            (
                self.require_mfa,
                &mut a.require_mfa,
                "activation.require_mfa",
            ),
            (
                self.require_justification,
                &mut a.require_justification,
                "activation.require_justification",
            ),
            (
                self.require_ticket,
                &mut a.require_ticket,
                "activation.require_ticket",
            ),
            (
                self.require_approval,
                &mut a.require_approval,
                "activation.require_approval",
            ),
        ] {
            if let Some(v) = v {
                *slot = Some(v);
                paths.push(path.to_owned());
            }
        }
        if !self.approvers.is_empty() {
            a.approval = Some(asg::ApprovalSettings {
                stages: vec![asg::ApprovalStage {
                    approvers: self
                        .approvers
                        .iter()
                        .map(|id| common::PrincipalRef {
                            id: id.clone(),
                            r#type: common::PrincipalType::User.into(),
                            ..Default::default()
                        })
                        .collect(),
                    required_approvals: 1,
                    ..Default::default()
                }],
                ..Default::default()
            });
            paths.push("activation.approval".to_owned());
        }
        anyhow::ensure!(!paths.is_empty(), "give at least one setting to change");
        Ok((
            asg::RoleSettings {
                role_id: role.to_owned(),
                scope_id: scope.to_owned(),
                activation: Some(a),
                ..Default::default()
            },
            paths,
        ))
    }
}

fn principal_type(s: &str) -> anyhow::Result<common::PrincipalType> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "user" | "" => common::PrincipalType::User,
        "group" => common::PrincipalType::Group,
        "service" | "service-principal" | "service_principal" => {
            common::PrincipalType::ServicePrincipal
        }
        other => anyhow::bail!("unknown principal type {other:?} (user, group, service)"),
    })
}

fn scope_type(s: &str) -> anyhow::Result<common::ScopeType> {
    Ok(
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "management-group" | "managementgroup" => common::ScopeType::ManagementGroup,
            "subscription" => common::ScopeType::Subscription,
            "resource-group" | "resourcegroup" => common::ScopeType::ResourceGroup,
            "resource" => common::ScopeType::Resource,
            other => anyhow::bail!("unknown scope type {other:?}"),
        },
    )
}

/// A principal as read from an import file.
#[derive(serde::Deserialize)]
struct PrincipalRow {
    id: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    user_principal_name: String,
    #[serde(default)]
    email: String,
}

/// A scope as read from an import file.
#[derive(serde::Deserialize)]
struct ScopeRow {
    id: String,
    #[serde(default)]
    parent_id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    display_name: String,
}

fn read_rows<T: serde::de::DeserializeOwned>(file: &PathBuf) -> anyhow::Result<Vec<T>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    if file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        r.deserialize()
            .collect::<Result<Vec<T>, _>>()
            .with_context(|| format!("reading {}", file.display()))
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON array of rows", file.display()))
    }
}

/// Administration.
pub async fn admin(ctx: &Ctx, cmd: AdminCmd) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::Principals(PrincipalsCmd::List { search }) => {
            let mut c = client!(ctx, asg::principals_service_client::PrincipalsServiceClient);
            let r = c
                .list_principals(asg::ListPrincipalsRequest {
                    page_size: 1000,
                    search,
                    include_disabled: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            let rows = r
                .principals
                .iter()
                .map(|p| {
                    vec![
                        p.id.clone(),
                        status_name(p.r#type().as_str_name(), "PRINCIPAL_TYPE_"),
                        p.display_name.clone(),
                        p.user_principal_name.clone(),
                        if p.enabled.unwrap_or(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        show(p.last_sign_in_time.as_ref()),
                    ]
                })
                .collect();
            table(
                &["ID", "TYPE", "NAME", "UPN", "ENABLED", "LAST SIGN-IN"],
                rows,
            );
            Ok(())
        }
        AdminCmd::Principals(PrincipalsCmd::Import { file }) => {
            let rows: Vec<PrincipalRow> = read_rows(&file)?;
            let principals = rows
                .into_iter()
                .map(|r| {
                    Ok(asg::Principal {
                        r#type: principal_type(&r.kind)?.into(),
                        display_name: if r.display_name.is_empty() {
                            r.id.clone()
                        } else {
                            r.display_name
                        },
                        id: r.id,
                        user_principal_name: r.user_principal_name,
                        email: r.email,
                        ..Default::default()
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut c = client!(ctx, asg::principals_service_client::PrincipalsServiceClient);
            let r = c
                .upsert_principals(asg::UpsertPrincipalsRequest {
                    principals,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            println!(
                "created {}, updated {}, unchanged {}",
                r.created_count, r.updated_count, r.unchanged_count
            );
            Ok(())
        }
        AdminCmd::GroupMembers { group, members } => {
            let mut c = client!(ctx, asg::principals_service_client::PrincipalsServiceClient);
            let r = c
                .set_group_members(asg::SetGroupMembersRequest {
                    group_id: group,
                    member_ids: members,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            println!(
                "added {:?}, removed {:?}",
                r.added_member_ids, r.removed_member_ids
            );
            Ok(())
        }
        AdminCmd::Roles { custom } => {
            let mut c = client!(
                ctx,
                asg::role_definitions_service_client::RoleDefinitionsServiceClient
            );
            let filter = if custom {
                asg::BuiltInFilter::Custom
            } else {
                asg::BuiltInFilter::Unspecified
            };
            let r = c
                .list_role_definitions(asg::ListRoleDefinitionsRequest {
                    page_size: 1000,
                    built_in: filter.into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            let rows = r
                .role_definitions
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.display_name.clone(),
                        status_name(d.kind().as_str_name(), "ROLE_KIND_"),
                        if d.built_in {
                            "built-in".into()
                        } else {
                            "custom".into()
                        },
                        if d.highly_privileged {
                            "yes".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect();
            table(&["ID", "NAME", "KIND", "ORIGIN", "HIGHLY PRIVILEGED"], rows);
            Ok(())
        }
        AdminCmd::Scopes(ScopesCmd::List { parent }) => {
            let mut c = client!(ctx, asg::scopes_service_client::ScopesServiceClient);
            let r = c
                .list_scopes(asg::ListScopesRequest {
                    page_size: 1000,
                    parent_id: parent,
                    recursive: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            let rows = r
                .scopes
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        status_name(s.r#type().as_str_name(), "SCOPE_TYPE_"),
                        s.display_name.clone(),
                        s.parent_id.clone(),
                    ]
                })
                .collect();
            table(&["ID", "TYPE", "NAME", "PARENT"], rows);
            Ok(())
        }
        AdminCmd::Scopes(ScopesCmd::Import { file, root }) => {
            let rows: Vec<ScopeRow> = read_rows(&file)?;
            let scopes = rows
                .into_iter()
                .map(|r| {
                    Ok(asg::Scope {
                        r#type: scope_type(&r.kind)?.into(),
                        id: r.id,
                        parent_id: r.parent_id,
                        display_name: r.display_name,
                        ..Default::default()
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut c = client!(ctx, asg::scopes_service_client::ScopesServiceClient);
            let r = c
                .import_scopes(asg::ImportScopesRequest {
                    root_id: root,
                    scopes,
                    prune: false,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            println!(
                "registered {}, updated {}, unchanged {}",
                r.registered_count, r.updated_count, r.unchanged_count
            );
            Ok(())
        }
        AdminCmd::Assign(a) => {
            let start = a
                .start
                .as_deref()
                .map(|s| parse_time(s, crate::time::now()))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let expiration = if a.permanent {
                Some(asg::schedule_input::Expiration::Permanent(true))
            } else {
                a.duration
                    .map(|d| asg::schedule_input::Expiration::Duration(dur_proto(d)))
            };
            let t = if a.eligible {
                common::AssignmentType::Eligible
            } else {
                common::AssignmentType::Active
            };
            let mut c = client!(
                ctx,
                asg::assignments_service_client::AssignmentsServiceClient
            );
            let r = c
                .create_assignment(asg::CreateAssignmentRequest {
                    assignment_type: t.into(),
                    principal_id: a.principal,
                    role_id: a.role,
                    scope_id: a.scope,
                    schedule: Some(asg::ScheduleInput {
                        start_time: start.map(to_proto),
                        expiration,
                    }),
                    justification: a.justification,
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_assignments(ctx, &r.assignment.into_iter().collect::<Vec<_>>())
        }
        AdminCmd::Assignments(cmd) => {
            let mut c = client!(
                ctx,
                asg::assignments_service_client::AssignmentsServiceClient
            );
            match cmd {
                AssignmentsCmd::List { principal, role } => {
                    let r = c
                        .list_assignments(asg::ListAssignmentsRequest {
                            page_size: 1000,
                            principal_id: principal,
                            role_id: role,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    if ctx.format == Format::Json {
                        return json(&r);
                    }
                    print_assignments(ctx, &r.assignments)
                }
                AssignmentsCmd::Remove { id, justification } => {
                    let r = c
                        .remove_assignment(asg::RemoveAssignmentRequest {
                            id,
                            justification,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    print_assignments(ctx, &r.assignment.into_iter().collect::<Vec<_>>())
                }
                AssignmentsCmd::Extend {
                    id,
                    by,
                    justification,
                } => {
                    let r = c
                        .extend_assignment(asg::ExtendAssignmentRequest {
                            id,
                            expiration: Some(asg::extend_assignment_request::Expiration::ExtendBy(
                                dur_proto(by),
                            )),
                            justification,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    print_assignments(ctx, &r.assignment.into_iter().collect::<Vec<_>>())
                }
                AssignmentsCmd::Renew {
                    id,
                    duration,
                    justification,
                } => {
                    let schedule = duration.map(|d| asg::ScheduleInput {
                        start_time: None,
                        expiration: Some(asg::schedule_input::Expiration::Duration(dur_proto(d))),
                    });
                    let r = c
                        .renew_assignment(asg::RenewAssignmentRequest {
                            id,
                            schedule,
                            justification,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    print_assignments(ctx, &r.assignment.into_iter().collect::<Vec<_>>())
                }
            }
        }
        AdminCmd::Webhooks(cmd) => crate::more::webhooks(ctx, cmd).await,
        AdminCmd::Settings(cmd) => {
            let mut c = client!(
                ctx,
                asg::role_settings_service_client::RoleSettingsServiceClient
            );
            match cmd {
                SettingsCmd::Show { role, scope } => {
                    let r = c
                        .get_effective_role_settings(asg::GetEffectiveRoleSettingsRequest {
                            role_id: role,
                            scope_id: scope,
                        })
                        .await?
                        .into_inner();
                    if ctx.format == Format::Json {
                        return json(&r);
                    }
                    let s = r.role_settings.clone().unwrap_or_default();
                    let a = s.activation.unwrap_or_default();
                    let g = s.assignment.unwrap_or_default();
                    let origin = |k: &str| {
                        r.origins
                            .get(k)
                            .map(|o| {
                                status_name(
                                    common::SettingOrigin::try_from(*o)
                                        .unwrap_or_default()
                                        .as_str_name(),
                                    "SETTING_ORIGIN_",
                                )
                            })
                            .unwrap_or_default()
                    };
                    let b = |v: Option<bool>| {
                        v.map_or(
                            "-".to_owned(),
                            |v| if v { "yes".into() } else { "no".into() },
                        )
                    };
                    let rows = vec![
                        vec![
                            "activation.maximum_duration".into(),
                            show_duration(a.maximum_duration.as_ref()),
                            origin("activation.maximum_duration"),
                        ],
                        vec![
                            "activation.require_mfa".into(),
                            b(a.require_mfa),
                            origin("activation.require_mfa"),
                        ],
                        vec![
                            "activation.require_justification".into(),
                            b(a.require_justification),
                            origin("activation.require_justification"),
                        ],
                        vec![
                            "activation.require_ticket".into(),
                            b(a.require_ticket),
                            origin("activation.require_ticket"),
                        ],
                        vec![
                            "activation.require_approval".into(),
                            b(a.require_approval),
                            origin("activation.require_approval"),
                        ],
                        vec![
                            "activation.approval".into(),
                            a.approval
                                .as_ref()
                                .map(|p| {
                                    p.stages
                                        .iter()
                                        .map(|st| {
                                            st.approvers
                                                .iter()
                                                .map(|x| x.id.clone())
                                                .collect::<Vec<_>>()
                                                .join("+")
                                        })
                                        .collect::<Vec<_>>()
                                        .join(" then ")
                                })
                                .unwrap_or_default(),
                            origin("activation.approval"),
                        ],
                        vec![
                            "assignment.allow_permanent_eligible".into(),
                            b(g.allow_permanent_eligible),
                            origin("assignment.allow_permanent_eligible"),
                        ],
                        vec![
                            "assignment.eligible_expire_after".into(),
                            show_duration(g.eligible_expire_after.as_ref()),
                            origin("assignment.eligible_expire_after"),
                        ],
                        vec![
                            "assignment.allow_permanent_active".into(),
                            b(g.allow_permanent_active),
                            origin("assignment.allow_permanent_active"),
                        ],
                        vec![
                            "assignment.active_expire_after".into(),
                            show_duration(g.active_expire_after.as_ref()),
                            origin("assignment.active_expire_after"),
                        ],
                    ];
                    table(&["SETTING", "VALUE", "FROM"], rows);
                    Ok(())
                }
                SettingsCmd::SetDefault(change) => {
                    let (s, paths) = change.into_settings("", "")?;
                    let r = c
                        .update_default_role_settings(asg::UpdateDefaultRoleSettingsRequest {
                            role_settings: Some(s),
                            update_mask: Some(prost_types::FieldMask { paths }),
                            request_id: String::new(),
                        })
                        .await?
                        .into_inner();
                    if ctx.format == Format::Json {
                        return json(&r);
                    }
                    println!("organisation defaults updated");
                    Ok(())
                }
                SettingsCmd::Set {
                    role,
                    scope,
                    change,
                } => {
                    let (s, paths) = change.into_settings(&role, scope.as_deref().unwrap_or(""))?;
                    let r = c
                        .update_role_settings(asg::UpdateRoleSettingsRequest {
                            role_settings: Some(s),
                            update_mask: Some(prost_types::FieldMask { paths }),
                            request_id: String::new(),
                        })
                        .await?
                        .into_inner();
                    if ctx.format == Format::Json {
                        return json(&r);
                    }
                    println!("settings of {role} updated");
                    Ok(())
                }
            }
        }
    }
}

fn print_assignments(ctx: &Ctx, list: &[asg::Assignment]) -> anyhow::Result<()> {
    if ctx.format == Format::Json {
        for a in list {
            json(a)?;
        }
        return Ok(());
    }
    let rows = list
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                status_name(a.assignment_type().as_str_name(), "ASSIGNMENT_TYPE_"),
                reference(a.principal.as_ref()),
                role_name(a.role.as_ref()),
                scope_id(a.scope.as_ref()),
                status_name(a.status().as_str_name(), "ASSIGNMENT_STATUS_"),
                show(a.start_time.as_ref()),
                if a.permanent {
                    "permanent".into()
                } else {
                    show(a.end_time.as_ref())
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "TYPE",
            "PRINCIPAL",
            "ROLE",
            "SCOPE",
            "STATUS",
            "FROM",
            "UNTIL",
        ],
        rows,
    );
    Ok(())
}

// ----- events ------------------------------------------------------------------------------

/// `tenurectl events …`.
#[derive(Subcommand)]
pub enum EventsCmd {
    /// Follow a context's event stream (replay after --after, then live).
    #[command(
        after_help = "Example:\n  tenurectl events watch --context activation --type RequestProvisioned"
    )]
    Watch {
        /// assignments, activation, reviews or notifications.
        #[arg(long)]
        context: String,
        /// Start after this sequence (0 replays everything).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Only these event types (repeat).
        #[arg(long = "type")]
        types: Vec<String>,
    },
}

fn print_event(
    ctx: &Ctx,
    meta: Option<&common::EventMeta>,
    as_json: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if ctx.format == Format::Json {
        return as_json();
    }
    if let Some(m) = meta {
        println!(
            "{:>6}  {}  {:<28} actor={} subject={}",
            m.sequence,
            show(m.occurred_at.as_ref()),
            m.r#type.rsplit('.').next().unwrap_or_default(),
            m.actor,
            m.subject
        );
    }
    Ok(())
}

/// Follows an event stream until interrupted.
pub async fn events(ctx: &Ctx, cmd: EventsCmd) -> anyhow::Result<()> {
    let EventsCmd::Watch {
        context,
        after,
        types,
    } = cmd;
    macro_rules! follow {
        ($pkg:ident) => {{
            use tenure_proto::$pkg::v1 as p;
            let mut c = client!(ctx, p::events_service_client::EventsServiceClient);
            let mut s = c
                .subscribe_events(p::SubscribeEventsRequest {
                    after_sequence: after,
                    event_types: types,
                })
                .await?
                .into_inner();
            while let Some(item) = s.next().await {
                let e = item?.event.unwrap_or_default();
                print_event(ctx, e.meta.as_ref(), || json(&e))?;
            }
            Ok(())
        }};
    }
    match context.as_str() {
        "assignments" => follow!(assignments),
        "activation" => follow!(activation),
        "reviews" => follow!(reviews),
        "notifications" => follow!(notifications),
        other => anyhow::bail!(
            "unknown context {other:?} (assignments, activation, reviews, notifications)"
        ),
    }
}
