//! The police officer's commands: watch, list, claim and resolve alerts; keep
//! the watchlist of mule accounts.

use super::{connect, now, print_json, rpc_error, show, Client};
use crate::api::proto as pb;
use crate::model::money;
use crate::rules::parse_duration;
use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use pb::alerts_client::AlertsClient;
use pb::watchlist_client::WatchlistClient;
use pbjson_types::Timestamp;

#[derive(Clone, Copy, ValueEnum)]
pub enum OutcomeArg {
    Dissuaded,
    FraudConfirmed,
    FalseAlarm,
    CustomerProceeded,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DecisionArg {
    Release,
    Block,
}

#[derive(Subcommand)]
pub enum AlertsCommand {
    /// Stream a station's alerts; resume with --after CURSOR.
    Watch {
        #[command(flatten)]
        client: Client,
        /// Station id (repeatable).
        #[arg(long = "station", required = true)]
        stations: Vec<String>,
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// List alerts, newest first, reading on page by page.
    List {
        #[command(flatten)]
        client: Client,
        #[arg(long = "station")]
        stations: Vec<String>,
        /// At most this many alerts in all (0: every one).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Alerts asked for per call.
        #[arg(long, default_value_t = 200)]
        page_size: u32,
    },
    /// Claim an alert for an officer.
    Claim {
        #[command(flatten)]
        client: Client,
        alert_id: String,
        #[arg(long)]
        officer: String,
    },
    /// Resolve an alert; a held transfer needs --decision.
    Resolve {
        #[command(flatten)]
        client: Client,
        alert_id: String,
        #[arg(long)]
        officer: String,
        #[arg(long, value_enum)]
        outcome: OutcomeArg,
        #[arg(long, value_enum)]
        decision: Option<DecisionArg>,
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Subcommand)]
pub enum WatchlistCommand {
    /// Add or update an account.
    Add {
        #[command(flatten)]
        client: Client,
        account: String,
        #[arg(long)]
        station: String,
        #[arg(long)]
        reason: String,
        /// e.g. 30d; none = until removed.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Remove an account.
    Rm {
        #[command(flatten)]
        client: Client,
        account: String,
    },
    /// List every entry.
    Ls {
        #[command(flatten)]
        client: Client,
    },
}

fn print_alert(a: &pb::Alert) {
    let state = pb::AlertState::try_from(a.state).map_or("?", |x| x.as_str_name().trim_start_matches("ALERT_STATE_"));
    let t = a.transfer.clone().unwrap_or_default();
    outln!(
        "{}  {state}  station {}  score {}  {} from {} (age {}) to {} at {}",
        a.alert_id,
        a.station_id,
        a.score,
        money(t.amount_minor, &t.currency),
        t.customer_account_masked,
        t.customer_age_band,
        t.payee_account_masked,
        t.branch_id
    );
    for h in &a.hits {
        outln!("    {} ({}): {}", h.rule_id, h.score, h.reason_zh);
    }
}

/// `alerts`: a station's queue.
pub async fn alerts(command: AlertsCommand) -> anyhow::Result<i32> {
    match command {
        AlertsCommand::Watch { client, stations, after } => {
            let mut stream = AlertsClient::new(connect(&client).await?)
                .watch_alerts(pb::WatchAlertsRequest { station_ids: stations, after_cursor: after })
                .await
                .map_err(rpc_error)?
                .into_inner();
            while let Some(e) = stream.message().await.map_err(rpc_error)? {
                if client.json {
                    outln!("{}", serde_json::to_string(&e)?);
                } else {
                    outln!("[cursor {}] {}", e.cursor, e.kind);
                    if let Some(a) = &e.alert {
                        print_alert(a);
                    }
                }
            }
        }
        AlertsCommand::List { client, stations, limit, page_size } => {
            let mut alerts = AlertsClient::new(connect(&client).await?);
            let mut all = pb::ListAlertsResponse::default();
            loop {
                let wanted = if limit == 0 { page_size } else { page_size.min(limit - all.alerts.len() as u32) };
                let page = alerts
                    .list_alerts(pb::ListAlertsRequest {
                        station_ids: stations.clone(),
                        limit: wanted,
                        page_token: std::mem::take(&mut all.next_page_token),
                        ..Default::default()
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                all.alerts.extend(page.alerts);
                all.next_page_token = page.next_page_token;
                if all.next_page_token.is_empty() || (limit != 0 && all.alerts.len() as u32 >= limit) {
                    break;
                }
            }
            show(client.json, &all, |r| r.alerts.iter().for_each(print_alert))?;
        }
        AlertsCommand::Claim { client, alert_id, officer } => {
            let a = AlertsClient::new(connect(&client).await?)
                .claim_alert(pb::ClaimAlertRequest { alert_id, officer_id: officer })
                .await
                .map_err(rpc_error)?
                .into_inner();
            show(client.json, &a, print_alert)?;
        }
        AlertsCommand::Resolve { client, alert_id, officer, outcome, decision, note } => {
            let outcome = match outcome {
                OutcomeArg::Dissuaded => pb::Outcome::Dissuaded,
                OutcomeArg::FraudConfirmed => pb::Outcome::FraudConfirmed,
                OutcomeArg::FalseAlarm => pb::Outcome::FalseAlarm,
                OutcomeArg::CustomerProceeded => pb::Outcome::CustomerProceeded,
            };
            let decision = match decision {
                None => pb::HoldDecision::Unspecified,
                Some(DecisionArg::Release) => pb::HoldDecision::Release,
                Some(DecisionArg::Block) => pb::HoldDecision::Block,
            };
            let a = AlertsClient::new(connect(&client).await?)
                .resolve_alert(pb::ResolveAlertRequest {
                    alert_id,
                    officer_id: officer,
                    outcome: outcome as i32,
                    hold_decision: decision as i32,
                    note,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            show(client.json, &a, print_alert)?;
        }
    }
    Ok(0)
}

/// `watchlist`: the police watchlist.
pub async fn watchlist(command: WatchlistCommand) -> anyhow::Result<i32> {
    match command {
        WatchlistCommand::Add { client, account, station, reason, expires_in } => {
            let expires_at = match expires_in {
                None => None,
                Some(d) => Some(Timestamp {
                    seconds: now().seconds
                        + parse_duration(&d).with_context(|| format!("--expires-in: `{d}` is not e.g. 30d"))?,
                    nanos: 0,
                }),
            };
            let e = WatchlistClient::new(connect(&client).await?)
                .upsert_entry(pb::WatchlistEntry {
                    account,
                    issuer_station_id: station,
                    reason,
                    expires_at,
                    added_at: None,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_json(&e)?;
        }
        WatchlistCommand::Rm { client, account } => {
            let r = WatchlistClient::new(connect(&client).await?)
                .remove_entry(pb::RemoveEntryRequest { account })
                .await
                .map_err(rpc_error)?
                .into_inner();
            outln!("{}", if r.removed { "removed" } else { "no such entry" });
        }
        WatchlistCommand::Ls { client } => {
            let r = WatchlistClient::new(connect(&client).await?)
                .list_entries(pb::ListEntriesRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_json(&r)?;
        }
    }
    Ok(0)
}
