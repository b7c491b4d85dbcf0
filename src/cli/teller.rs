//! The teller's and core banking's commands: screen a transfer, record a
//! customer event, look up or wait on a screened transfer.

use super::{connect, generated_id, now, rfc3339, rpc_error, show, yuan, Client};
use crate::api::proto as pb;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pb::screening_client::ScreeningClient;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ScreenArgs {
    #[command(flatten)]
    client: Client,
    /// A ScreenRequest in proto3 JSON (as grpcurl speaks it); `-` reads stdin.
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// With --file: move every time in the request by the same amount so that requestedAt
    /// is now (a saved request replayed live; the server refuses times far from its clock).
    #[arg(long, requires = "file")]
    now: bool,
    /// Evaluate without touching state or raising alerts.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    transfer: TransferFlags,
}

#[derive(Args)]
pub struct TransferFlags {
    /// Idempotency key (default: generated).
    #[arg(long)]
    request_id: Option<String>,
    #[arg(long, default_value = "psbc")]
    bank: String,
    #[arg(long, default_value = "psbc-heshan-zhongshan")]
    branch: String,
    #[arg(long, default_value = "teller-01")]
    teller: String,
    /// counter, atm, mobile or online.
    #[arg(long, default_value = "counter")]
    channel: String,
    #[arg(long, default_value = "customer-0001")]
    customer_id: String,
    #[arg(long, default_value = "6210980000000001")]
    account_id: String,
    #[arg(long, default_value = "1968-05-10")]
    birth_date: String,
    #[arg(long, default_value = "2008-01-01")]
    opened_on: String,
    /// Daily limit in yuan.
    #[arg(long, default_value = "50000")]
    daily_limit: String,
    #[arg(long, default_value = "6217000099998888777")]
    payee_account: String,
    #[arg(long, default_value = "陈某某")]
    payee_name: String,
    #[arg(long, default_value = "ccb")]
    payee_bank: String,
    /// Amount in major units of --currency (yuan for CNY), e.g. 400000 or 1234.50.
    #[arg(long, default_value = "1000")]
    amount: String,
    #[arg(long, default_value = "CNY")]
    currency: String,
    #[arg(long, default_value = "")]
    memo: String,
    /// A teller observation (repeatable): on_phone_with_stranger, agitated, refuses_to_explain,
    /// accompanied_by_stranger, coached, urgent; or what the app saw: screen_shared, remote_control.
    #[arg(long = "observe")]
    observations: Vec<String>,
}

#[derive(Subcommand)]
pub enum EventCommand {
    /// The customer's daily limit changed.
    LimitChanged {
        #[command(flatten)]
        client: Client,
        #[arg(long)]
        customer_id: String,
        /// Old limit in yuan.
        #[arg(long)]
        old: String,
        /// New limit in yuan.
        #[arg(long)]
        new: String,
        /// The new limit is the bank's maximum.
        #[arg(long)]
        maximum: bool,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// The bank executed a screened transfer.
    Executed {
        #[command(flatten)]
        client: Client,
        request_id: String,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// The bank cancelled a screened transfer: it leaves the customer's history.
    Cancelled {
        #[command(flatten)]
        client: Client,
        request_id: String,
        #[arg(long)]
        event_id: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TransferCommand {
    /// The current status.
    Get {
        #[command(flatten)]
        client: Client,
        request_id: String,
    },
    /// Wait for the officer's decision or the hold's expiry, printing each change.
    Watch {
        #[command(flatten)]
        client: Client,
        request_id: String,
    },
}

fn screen_request(args: &ScreenArgs) -> anyhow::Result<pb::ScreenRequest> {
    if let Some(path) = &args.file {
        let text = if path == Path::new("-") {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        } else {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
        };
        let mut r: pb::ScreenRequest = serde_json::from_str(&text).context("not a ScreenRequest in proto3 JSON")?;
        if args.now {
            if let Some(at) = r.requested_at {
                let shift = now().seconds - at.seconds;
                r.requested_at = Some(now());
                if let Some(change) = r.customer.as_mut().and_then(|c| c.last_limit_change.as_mut()) {
                    if let Some(t) = change.changed_at.as_mut() {
                        t.seconds = t.seconds.saturating_add(shift);
                    }
                }
            }
        }
        if r.requested_at.is_none() {
            r.requested_at = Some(now());
        }
        if r.request_id.is_empty() {
            r.request_id = generated_id("cli");
        }
        return Ok(r);
    }
    let t = &args.transfer;
    let channel = match t.channel.as_str() {
        "counter" => pb::Channel::Counter,
        "atm" => pb::Channel::Atm,
        "mobile" => pb::Channel::Mobile,
        "online" => pb::Channel::Online,
        other => bail!("--channel: unknown `{other}`; use counter, atm, mobile or online"),
    };
    let observations = t
        .observations
        .iter()
        .map(|o| {
            pb::Observation::from_str_name(&format!("OBSERVATION_{}", o.to_uppercase()))
                .map(|o| o as i32)
                .with_context(|| format!("--observe: unknown observation `{o}`"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(pb::ScreenRequest {
        request_id: t.request_id.clone().unwrap_or_else(|| generated_id("cli")),
        requested_at: Some(now()),
        bank_id: t.bank.clone(),
        branch_id: t.branch.clone(),
        teller_id: t.teller.clone(),
        channel: channel as i32,
        customer: Some(pb::Customer {
            customer_id: t.customer_id.clone(),
            account_id: t.account_id.clone(),
            birth_date: t.birth_date.clone(),
            account_opened_on: t.opened_on.clone(),
            daily_limit_minor: yuan("daily-limit", &t.daily_limit)?,
            last_limit_change: None,
        }),
        payee: Some(pb::Payee {
            account: t.payee_account.clone(),
            name: t.payee_name.clone(),
            bank_code: t.payee_bank.clone(),
        }),
        amount_minor: amount_in(&t.currency, &t.amount)?,
        currency: t.currency.clone(),
        memo: t.memo.clone(),
        observations,
    })
}

fn print_decision(r: &pb::ScreenResponse) {
    let action = pb::Action::try_from(r.action).map_or("?", |a| a.as_str_name().trim_start_matches("ACTION_"));
    outln!("{action}  score {}  request {}  ruleset {}", r.score, r.request_id, r.ruleset_version);
    if !r.alert_id.is_empty() {
        outln!("alert {} sent to station {}", r.alert_id, r.station_id);
    }
    if let Some(t) = &r.hold_expires_at {
        outln!("held until {} (watch with: transfer-guard transfer watch {})", rfc3339(t.seconds), r.request_id);
    }
    for h in &r.hits {
        let mark = if h.shadow { "shadow" } else { "+" };
        outln!("  {mark} {} ({})\n      {}\n      {}", h.rule_id, h.score, h.reason_zh, h.reason_en);
    }
    if !r.questions.is_empty() {
        outln!("ask the customer / 请询问客户:");
        for (i, q) in r.questions.iter().enumerate() {
            outln!("  {}. {}\n     {}", i + 1, q.zh, q.en);
        }
    }
}

fn print_status(s: &pb::TransferStatus) {
    let state =
        pb::TransferState::try_from(s.state).map_or("?", |x| x.as_str_name().trim_start_matches("TRANSFER_STATE_"));
    let mut line = format!("{}  {state}", s.request_id);
    if !s.outcome.is_empty() {
        line.push_str(&format!("  outcome {} by {}", s.outcome, s.officer_id));
    }
    if !s.note.is_empty() {
        line.push_str(&format!("  note: {}", s.note));
    }
    outln!("{line}");
}

pub(super) async fn screen(args: ScreenArgs, dry_run: bool) -> anyhow::Result<()> {
    let request = screen_request(&args)?;
    let channel = connect(&args.client).await?;
    let response = if dry_run {
        pb::rules_client::RulesClient::new(channel).dry_run(request).await
    } else {
        pb::screening_client::ScreeningClient::new(channel).screen(request).await
    }
    .map_err(rpc_error)?
    .into_inner();
    show(args.client.json, &response, print_decision)
}

/// `screen`: screens (or, with --dry-run, evaluates) one transfer.
pub async fn screen_command(args: ScreenArgs) -> anyhow::Result<i32> {
    let dry = args.dry_run;
    screen(args, dry).await?;
    Ok(0)
}

/// `event`: records a customer event (core banking).
pub async fn event(e: EventCommand) -> anyhow::Result<i32> {
    use pb::record_event_request::Event;
    let (client, event_id, event) = match e {
        EventCommand::LimitChanged { client, customer_id, old, new, maximum, event_id } => {
            let ev = Event::LimitChanged(pb::LimitChanged {
                customer_id,
                old_limit_minor: yuan("old", &old)?,
                new_limit_minor: yuan("new", &new)?,
                is_maximum: maximum,
                changed_at: Some(now()),
            });
            (client, event_id, ev)
        }
        EventCommand::Executed { client, request_id, event_id } => {
            (client, event_id, Event::TransferExecuted(pb::TransferExecuted { request_id }))
        }
        EventCommand::Cancelled { client, request_id, event_id } => {
            (client, event_id, Event::TransferCancelled(pb::TransferCancelled { request_id }))
        }
    };
    let request = pb::RecordEventRequest {
        event_id: event_id.unwrap_or_else(|| generated_id("ev")),
        event: Some(event),
        bank_id: String::new(),
    };
    let r = ScreeningClient::new(connect(&client).await?).record_event(request).await.map_err(rpc_error)?.into_inner();
    show(client.json, &r, |r| {
        outln!("recorded {}{}", r.event_id, if r.duplicate { " (already recorded)" } else { "" })
    })?;
    Ok(0)
}

/// `transfer`: a screened transfer's status, or waiting for its outcome.
pub async fn transfer(command: TransferCommand) -> anyhow::Result<i32> {
    match command {
        TransferCommand::Get { client, request_id } => {
            let s = ScreeningClient::new(connect(&client).await?)
                .get_transfer(pb::GetTransferRequest { request_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            show(client.json, &s, print_status)?;
        }
        TransferCommand::Watch { client, request_id } => {
            let mut stream = ScreeningClient::new(connect(&client).await?)
                .watch_transfer(pb::GetTransferRequest { request_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            while let Some(s) = stream.message().await.map_err(rpc_error)? {
                if client.json {
                    outln!("{}", serde_json::to_string(&s)?);
                } else {
                    print_status(&s);
                }
            }
        }
    }
    Ok(0)
}

/// `--amount` in major units of `--currency` (yuan, dollars, yen), exactly.
fn amount_in(currency: &str, amount: &str) -> anyhow::Result<i64> {
    let digits = crate::model::minor_digits(currency)
        .ok_or_else(|| anyhow::anyhow!("--currency: `{currency}` is not an ISO 4217 code this service knows"))?;
    crate::model::parse_amount(amount, digits).ok_or_else(|| {
        anyhow::anyhow!("--amount: `{amount}` is not an amount in {currency} (at most {digits} decimals, e.g. 1234.50)")
    })
}
