//! Reviews, alerts and audit commands.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Subcommand;
use futures::StreamExt as _;
use tenure_proto::notifications::v1 as ntf;
use tenure_proto::reviews::v1 as rev;

use crate::Ctx;
use crate::commands::authed;
use crate::output::{Format, json, read_json, table};
use crate::time::{parse_time, show, to_proto};

fn name(s: &str, prefix: &str) -> String {
    s.trim_start_matches(prefix)
        .to_ascii_lowercase()
        .replace('_', " ")
}

/// A reviewer's decision on one item.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Decision {
    /// Keep the access.
    Approve,
    /// Remove the access (when the results are applied).
    Deny,
    /// Leave it to the next stage or the default decision.
    DontKnow,
}

/// `tenurectl reviews …`.
#[derive(Subcommand)]
pub enum ReviewsCmd {
    /// Reviews waiting for my decisions.
    #[command(after_help = "Example:\n  tenurectl reviews list")]
    List,
    /// Create a review definition from a JSON file (a tenure.reviews.v1.ReviewDefinition).
    #[command(
        after_help = "Example:\n  tenurectl reviews create --file quarterly-global-admins.json"
    )]
    Create {
        /// The definition as JSON.
        #[arg(long)]
        file: PathBuf,
    },
    /// Review definitions.
    #[command(after_help = "Example:\n  tenurectl reviews definitions")]
    Definitions,
    /// Rounds of a definition, with progress.
    #[command(
        after_help = "Examples:\n  tenurectl reviews rounds\n  tenurectl reviews rounds --definition DEFINITION_ID"
    )]
    Rounds {
        /// The definition.
        #[arg(long, default_value = "")]
        definition: String,
    },
    /// The items of a round.
    #[command(after_help = "Example:\n  tenurectl reviews items ROUND_ID --mine")]
    Items {
        /// The round.
        round: String,
        /// Only the items I am to decide.
        #[arg(long)]
        mine: bool,
    },
    /// Decide one item: approve, deny or dont-know.
    #[command(
        after_help = "Example:\n  tenurectl reviews decide ITEM_ID deny -j \"left the billing team\""
    )]
    Decide {
        /// The item.
        item: String,
        /// The decision.
        #[arg(value_enum)]
        decision: Decision,
        /// Why.
        #[arg(long, short = 'j', default_value = "")]
        justification: String,
    },
    /// Accept the recommendations of a round (all my items, or the ones given).
    #[command(
        after_help = "Examples:\n  tenurectl reviews accept ROUND_ID\n  tenurectl reviews accept ROUND_ID --item ITEM_ID --item ITEM_ID"
    )]
    Accept {
        /// The round.
        round: String,
        /// Only these items (repeat).
        #[arg(long = "item")]
        items: Vec<String>,
        /// Why.
        #[arg(long, short = 'j', default_value = "accepted the recommendation")]
        justification: String,
    },
    /// Stop a round early (administrators).
    #[command(after_help = "Example:\n  tenurectl reviews stop ROUND_ID --reason \"all decided\"")]
    Stop {
        /// The round.
        round: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Apply a completed round's results (remove what was denied).
    #[command(after_help = "Example:\n  tenurectl reviews apply ROUND_ID")]
    Apply {
        /// The round.
        round: String,
    },
}

/// Review commands.
pub async fn reviews(ctx: &Ctx, cmd: ReviewsCmd) -> anyhow::Result<()> {
    let (ch, b) = authed(ctx).await?;
    let mut c = rev::reviews_service_client::ReviewsServiceClient::with_interceptor(ch, b);
    let round_rows = |rounds: &[rev::ReviewRound]| -> Vec<Vec<String>> {
        rounds
            .iter()
            .map(|r| {
                let p = r.progress.unwrap_or_default();
                vec![
                    r.id.clone(),
                    r.display_name.clone(),
                    r.round_number.to_string(),
                    name(r.status().as_str_name(), "ROUND_STATUS_"),
                    format!("{}/{}", p.decided, p.total),
                    show(r.end_time.as_ref()),
                ]
            })
            .collect()
    };
    const ROUND_HEADER: &[&str] = &["ROUND", "REVIEW", "#", "STATUS", "DECIDED", "ENDS"];
    match cmd {
        ReviewsCmd::List => {
            let r = c
                .list_my_pending_reviews(rev::ListMyPendingReviewsRequest {
                    page_size: 200,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            let rounds: Vec<rev::ReviewRound> =
                r.reviews.iter().filter_map(|p| p.round.clone()).collect();
            table(ROUND_HEADER, round_rows(&rounds));
            Ok(())
        }
        ReviewsCmd::Create { file } => {
            let def: rev::ReviewDefinition = read_json(&file)?;
            let r = c
                .create_review_definition(rev::CreateReviewDefinitionRequest {
                    review_definition: Some(def),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            let d = r.review_definition.unwrap_or_default();
            println!("created review {} ({})", d.display_name, d.id);
            Ok(())
        }
        ReviewsCmd::Definitions => {
            let r = c
                .list_review_definitions(rev::ListReviewDefinitionsRequest {
                    page_size: 500,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            let rows = r
                .review_definitions
                .iter()
                .map(|d| vec![d.id.clone(), d.display_name.clone()])
                .collect();
            table(&["ID", "NAME"], rows);
            Ok(())
        }
        ReviewsCmd::Rounds { definition } => {
            let r = c
                .list_review_rounds(rev::ListReviewRoundsRequest {
                    page_size: 500,
                    definition_id: definition,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            table(ROUND_HEADER, round_rows(&r.rounds));
            Ok(())
        }
        ReviewsCmd::Items { round, mine } => {
            let r = c
                .list_decision_items(rev::ListDecisionItemsRequest {
                    round_id: round,
                    page_size: 1000,
                    only_mine_to_decide: mine,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            let rows = r
                .items
                .iter()
                .map(|i| {
                    vec![
                        i.id.clone(),
                        i.principal
                            .as_ref()
                            .map(|p| p.id.clone())
                            .unwrap_or_default(),
                        i.role
                            .as_ref()
                            .map(|x| x.display_name.clone())
                            .unwrap_or_default(),
                        i.scope.as_ref().map(|x| x.id.clone()).unwrap_or_default(),
                        format!(
                            "{} ({})",
                            name(i.recommendation().as_str_name(), "RECOMMENDATION_"),
                            i.recommendation_reason
                        ),
                        name(i.decision().as_str_name(), "REVIEW_DECISION_"),
                    ]
                })
                .collect();
            table(
                &[
                    "ITEM",
                    "PRINCIPAL",
                    "ROLE",
                    "SCOPE",
                    "RECOMMENDATION",
                    "DECISION",
                ],
                rows,
            );
            Ok(())
        }
        ReviewsCmd::Decide {
            item,
            decision,
            justification,
        } => {
            let d = match decision {
                Decision::Approve => rev::ReviewDecision::Approve,
                Decision::Deny => rev::ReviewDecision::Deny,
                Decision::DontKnow => rev::ReviewDecision::DontKnow,
            };
            let r = c
                .record_decision(rev::RecordDecisionRequest {
                    item_id: item,
                    decision: d.into(),
                    justification,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            println!("recorded");
            Ok(())
        }
        ReviewsCmd::Accept {
            round,
            items,
            justification,
        } => {
            let r = c
                .accept_recommendations(rev::AcceptRecommendationsRequest {
                    round_id: round,
                    item_ids: items,
                    justification,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            json(&r)
        }
        ReviewsCmd::Stop { round, reason } => {
            let r = c
                .stop_review_round(rev::StopReviewRoundRequest {
                    id: round,
                    reason,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            json(&r)
        }
        ReviewsCmd::Apply { round } => {
            let r = c
                .apply_review_results(rev::ApplyReviewResultsRequest {
                    id: round,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            json(&r)
        }
    }
}

/// `tenurectl alerts …`.
#[derive(Subcommand)]
pub enum AlertsCmd {
    /// Active alerts (readers).
    #[command(after_help = "Examples:\n  tenurectl alerts list\n  tenurectl alerts list -o json")]
    List,
    /// One alert with its incidents.
    #[command(after_help = "Example:\n  tenurectl alerts show ALERT_ID")]
    Show {
        /// The alert id.
        id: String,
    },
    /// Dismiss an alert, with a reason.
    #[command(
        after_help = "Example:\n  tenurectl alerts dismiss ALERT_ID --reason \"break-glass test, ticket CHG-7\""
    )]
    Dismiss {
        /// The alert id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Change an alert kind's settings from a JSON file (a
    /// tenure.notifications.v1.AlertSettings): the fields it names change, the others stay.
    #[command(
        after_help = "Example:\n  tenurectl alerts configure --file deploy/examples/alert-activated-too-frequently.json\n\nwith the file:\n  {\"kind\": \"ALERT_KIND_ROLES_ACTIVATED_TOO_FREQUENTLY\",\n   \"activatedTooFrequently\": {\"activationCount\": 4, \"window\": \"3600s\"}}"
    )]
    Configure {
        /// The settings as JSON.
        #[arg(long)]
        file: PathBuf,
    },
    /// Follow the alert stream live (resume with --after). A raise shows the alert with
    /// its first incidents; an update shows the incidents added (+), changed (~) and
    /// removed (-), and `-o json` prints them.
    #[command(after_help = "Example:\n  tenurectl alerts watch")]
    Watch {
        /// Resume after this sequence.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

/// The fields an alert settings file changes: the ones it names (besides `kind`); each
/// threshold message counts as "thresholds".
fn alert_settings_mask(file: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))?;
    let mut paths: Vec<String> = Vec::new();
    for key in value.as_object().map(|o| o.keys()).into_iter().flatten() {
        let path = match key.as_str() {
            "kind" => continue,
            "enabled" => "enabled",
            "severity" => "severity",
            "excludedPrincipalIds" | "excluded_principal_ids" => "excluded_principal_ids",
            "etag" => continue,
            _ => "thresholds",
        };
        if !paths.iter().any(|p| p == path) {
            paths.push(path.to_owned());
        }
    }
    anyhow::ensure!(
        !paths.is_empty(),
        "{} changes nothing: give enabled, severity, excludedPrincipalIds or the kind's thresholds",
        file.display()
    );
    Ok(paths)
}

/// Alert commands.
pub async fn alerts(ctx: &Ctx, cmd: AlertsCmd) -> anyhow::Result<()> {
    let (ch, b) = authed(ctx).await?;
    let mut c = ntf::alerts_service_client::AlertsServiceClient::with_interceptor(ch, b);
    let row = |a: &ntf::Alert| {
        vec![
            a.id.clone(),
            name(a.severity().as_str_name(), "ALERT_SEVERITY_"),
            name(a.status().as_str_name(), "ALERT_STATUS_"),
            a.title.clone(),
            a.incident_count.to_string(),
            show(a.raise_time.as_ref()),
        ]
    };
    const HEADER: &[&str] = &[
        "ALERT",
        "SEVERITY",
        "STATUS",
        "TITLE",
        "INCIDENTS",
        "RAISED",
    ];
    match cmd {
        AlertsCmd::List => {
            let r = c
                .list_alerts(ntf::ListAlertsRequest {
                    page_size: 500,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            table(HEADER, r.alerts.iter().map(row).collect());
            Ok(())
        }
        AlertsCmd::Show { id } => {
            let r = c.get_alert(ntf::GetAlertRequest { id }).await?.into_inner();
            json(&r)
        }
        AlertsCmd::Dismiss { id, reason } => {
            let r = c
                .dismiss_alert(ntf::DismissAlertRequest {
                    id,
                    reason,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            table(HEADER, r.alert.iter().map(row).collect());
            Ok(())
        }
        AlertsCmd::Configure { file } => {
            let settings: ntf::AlertSettings = read_json(&file)?;
            let paths = alert_settings_mask(&file)?;
            let r = c
                .update_alert_settings(ntf::UpdateAlertSettingsRequest {
                    settings: Some(settings),
                    update_mask: Some(prost_types::FieldMask { paths }),
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            json(&r)
        }
        AlertsCmd::Watch { after } => {
            let mut s = c
                .subscribe_alerts(ntf::SubscribeAlertsRequest {
                    after_sequence: after,
                    ..Default::default()
                })
                .await?
                .into_inner();
            while let Some(item) = s.next().await {
                let e = item?;
                if ctx.format == Format::Json {
                    json(&e)?;
                    continue;
                }
                let a = e.alert.clone().unwrap_or_default();
                // An update carries its change, not the whole alert.
                let delta = if e.change() == ntf::AlertChange::Updated {
                    format!(
                        ": +{} ~{} -{}",
                        e.added_incidents.len(),
                        e.changed_incidents.len(),
                        e.removed_incident_ids.len()
                    )
                } else {
                    String::new()
                };
                println!(
                    "{:>6}  {}  {:<10} {:<8} {}  ({} incidents{delta}) {}",
                    e.sequence,
                    show(e.change_time.as_ref()),
                    name(e.change().as_str_name(), "ALERT_CHANGE_"),
                    name(a.severity().as_str_name(), "ALERT_SEVERITY_"),
                    a.title,
                    a.incident_count,
                    a.id
                );
            }
            Ok(())
        }
    }
}

/// `tenurectl audit …`.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Query the audit trail.
    #[command(
        after_help = "Examples:\n  tenurectl audit query --principal ferry --from 2026-11-01\n  tenurectl audit query --mine"
    )]
    Query(Filter),
    /// Export the audit trail as CSV (RFC 4180).
    #[command(
        after_help = "Example:\n  tenurectl audit export --csv audit.csv --from 2026-11-01 --role billing-administrator"
    )]
    Export {
        /// Where to write the CSV ("-" for stdout).
        #[arg(long)]
        csv: PathBuf,
        #[command(flatten)]
        filter: Filter,
    },
}

/// Audit filters.
#[derive(clap::Args)]
pub struct Filter {
    /// From this time.
    #[arg(long)]
    from: Option<String>,
    /// Until this time.
    #[arg(long)]
    to: Option<String>,
    /// By this actor.
    #[arg(long)]
    actor: Option<String>,
    /// About this principal.
    #[arg(long)]
    principal: Option<String>,
    /// This role.
    #[arg(long)]
    role: Option<String>,
    /// At this scope.
    #[arg(long)]
    scope: Option<String>,
    /// Only my own audit.
    #[arg(long)]
    mine: bool,
}

impl Filter {
    fn build(self) -> anyhow::Result<ntf::AuditFilter> {
        let now = crate::time::now();
        let t = |s: Option<String>| {
            s.map(|s| parse_time(&s, now).map(to_proto))
                .transpose()
                .map_err(anyhow::Error::msg)
        };
        Ok(ntf::AuditFilter {
            start_time: t(self.from)?,
            end_time: t(self.to)?,
            actor_ids: self.actor.into_iter().collect(),
            target_principal_id: self.principal.unwrap_or_default(),
            role_id: self.role.unwrap_or_default(),
            scope_id: self.scope.unwrap_or_default(),
            mine_only: self.mine,
            ..Default::default()
        })
    }
}

/// Audit commands.
pub async fn audit(ctx: &Ctx, cmd: AuditCmd) -> anyhow::Result<()> {
    let (ch, b) = authed(ctx).await?;
    let mut c = ntf::audit_service_client::AuditServiceClient::with_interceptor(ch, b);
    match cmd {
        AuditCmd::Query(f) => {
            let r = c
                .query_audit(ntf::QueryAuditRequest {
                    filter: Some(f.build()?),
                    newest_first: true,
                    page_size: 500,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            let rows = r
                .entries
                .iter()
                .map(|e| {
                    vec![
                        show(e.occurred_at.as_ref()),
                        e.actor.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
                        e.action.clone(),
                        e.target_principal
                            .as_ref()
                            .map(|p| p.id.clone())
                            .unwrap_or_default(),
                        e.role
                            .as_ref()
                            .map(|r| r.display_name.clone())
                            .unwrap_or_default(),
                        e.request_id.clone(),
                    ]
                })
                .collect();
            table(
                &["WHEN", "ACTOR", "ACTION", "TARGET", "ROLE", "REQUEST"],
                rows,
            );
            Ok(())
        }
        AuditCmd::Export { csv, filter } => {
            let mut s = c
                .export_audit(ntf::ExportAuditRequest {
                    filter: Some(filter.build()?),
                })
                .await?
                .into_inner();
            let mut out: Box<dyn std::io::Write> = if csv.as_os_str() == "-" {
                Box::new(std::io::stdout())
            } else {
                Box::new(std::io::BufWriter::new(std::fs::File::create(&csv)?))
            };
            let progress = if ctx.tty && csv.as_os_str() != "-" {
                let p = indicatif::ProgressBar::new_spinner();
                p.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {pos} rows exported {per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                Some(p)
            } else {
                None
            };
            let mut rows: u64 = 0;
            while let Some(chunk) = s.next().await {
                let chunk = chunk?;
                out.write_all(&chunk.csv_chunk)?;
                rows += u64::try_from(chunk.row_count).unwrap_or(0);
                if let Some(p) = &progress {
                    p.set_position(rows);
                }
            }
            out.flush()?;
            if let Some(p) = progress {
                p.finish_and_clear();
            }
            if csv.as_os_str() != "-" {
                eprintln!("exported {rows} rows to {}", csv.display());
            }
            Ok(())
        }
    }
}

/// `tenurectl admin webhooks …`.
#[derive(Subcommand)]
pub enum WebhooksCmd {
    /// Webhooks notifications are delivered to (signed with HMAC-SHA256).
    #[command(after_help = "Example:\n  tenurectl admin webhooks list")]
    List,
    /// Deliver notifications to a URL (https; http only on loopback). Prints the signing
    /// secret once.
    #[command(
        after_help = "Examples:\n  tenurectl admin webhooks add --name SOC --url https://soc.example/tenure --kind alert-raised\n  tenurectl admin webhooks add --name local --url http://127.0.0.1:8099/hook"
    )]
    Add {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// The endpoint.
        #[arg(long)]
        url: String,
        /// The signing secret (at least 32 bytes); generated when left out.
        #[arg(long)]
        secret: Option<String>,
        /// Only these kinds (repeat): eligible-assigned, active-assigned, activated,
        /// approval-needed, request-approved, request-denied, expiring-soon,
        /// review-started, review-reminder, review-completed, alert-raised. All when left
        /// out.
        #[arg(long = "kind")]
        kinds: Vec<String>,
    },
    /// Stop delivering to a webhook.
    #[command(after_help = "Example:\n  tenurectl admin webhooks remove WEBHOOK_ID")]
    Remove {
        /// The webhook id.
        id: String,
    },
}

fn event_kind(s: &str) -> anyhow::Result<i32> {
    let wanted = format!(
        "NOTIFICATION_EVENT_KIND_{}",
        s.trim().to_ascii_uppercase().replace('-', "_")
    );
    tenure_proto::common::v1::NotificationEventKind::from_str_name(&wanted)
        .filter(|k| *k != tenure_proto::common::v1::NotificationEventKind::Unspecified)
        .map(i32::from)
        .ok_or_else(|| anyhow::anyhow!("{s:?} is not a notification kind (e.g. alert-raised)"))
}

/// Webhook commands.
pub async fn webhooks(ctx: &Ctx, cmd: WebhooksCmd) -> anyhow::Result<()> {
    let (ch, b) = authed(ctx).await?;
    let mut c =
        ntf::notifications_service_client::NotificationsServiceClient::with_interceptor(ch, b);
    let row = |w: &ntf::Webhook| {
        vec![
            w.id.clone(),
            w.display_name.clone(),
            w.url.clone(),
            if w.enabled.unwrap_or(true) {
                "yes".to_owned()
            } else {
                "no".to_owned()
            },
            if w.event_kinds.is_empty() {
                "all".to_owned()
            } else {
                w.event_kinds()
                    .map(|k| name(k.as_str_name(), "NOTIFICATION_EVENT_KIND_").replace(' ', "-"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            format!("…{}", w.secret_hint),
        ]
    };
    const HEADER: &[&str] = &["WEBHOOK", "NAME", "URL", "ENABLED", "KINDS", "SECRET"];
    match cmd {
        WebhooksCmd::List => {
            let r = c
                .list_webhooks(ntf::ListWebhooksRequest {
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            table(HEADER, r.webhooks.iter().map(row).collect());
            Ok(())
        }
        WebhooksCmd::Add {
            name: display_name,
            url,
            secret,
            kinds,
        } => {
            let event_kinds = kinds
                .iter()
                .map(|k| event_kind(k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let r = c
                .create_webhook(ntf::CreateWebhookRequest {
                    webhook: Some(ntf::Webhook {
                        display_name,
                        url,
                        secret: secret.unwrap_or_default(),
                        event_kinds,
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            if ctx.format == Format::Json {
                return json(&r);
            }
            table(HEADER, r.webhook.iter().map(row).collect());
            println!("signing secret (shown only now): {}", r.secret);
            Ok(())
        }
        WebhooksCmd::Remove { id } => {
            c.delete_webhook(ntf::DeleteWebhookRequest {
                id: id.clone(),
                request_id: String::new(),
            })
            .await?;
            if ctx.format == Format::Json {
                println!("{{}}");
                return Ok(());
            }
            println!("removed webhook {id}");
            Ok(())
        }
    }
}
