//! `simulate`: realistic labelled traffic for demos, backtests and load — in
//! the same proto3 JSON as `ScreenRequest`, one labelled transfer a line.
//!
//! Ordinary life with what makes fraud detection hard — large first payments
//! (house deposits, cars, tuition, hospitals, new landlords, weddings),
//! businesses paying new suppliers, older customers paying a new care home,
//! bursts of small first payments, new accounts with no history, a festival
//! week of red packets, teller observations on some ordinary counter visits —
//! and the common scam types as they unfold: lead-in payments, the decisive
//! ones, repeat victims. Every line is labelled: `ordinary` with its `kind`,
//! or `scam` with its `scam_type` and `stage`. The same seed gives the same
//! output. A tool, not ground truth: docs/simulate.md cites the typology
//! descriptions each pattern follows and says what stays unrealistic. Must not
//! read the clock: time starts at a fixed date.

use crate::api::proto as pb;
use pbjson_types::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One line of simulated history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Labelled {
    pub request: pb::ScreenRequest,
    /// "ordinary" or "scam".
    pub label: String,
    /// The scam type, for scams.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scam_type: String,
    /// For scams: `lead-in` (the small payments that build trust) or
    /// `decisive` (the payments that take the money).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stage: String,
    /// For ordinary transfers: what kind of life event ([`ORDINARY_KINDS`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

impl Labelled {
    pub fn is_scam(&self) -> bool {
        self.label == "scam"
    }
}

/// The scam types simulated, with their share of victims.
pub const SCAM_TYPES: &[(&str, u32)] = &[
    ("刷单返利", 22),
    ("虚假投资理财", 15),
    ("虚假网络贷款", 11),
    ("冒充客服退款", 11),
    ("冒充公检法", 10),
    ("虚假征信", 8),
    ("网络婚恋", 8),
    ("养老诈骗", 7),
];

/// The victims of a mule ring (several customers paying one account within
/// hours) are simulated as events of their own, labelled with this type.
pub const MULE_FAN_IN: &str = "mule fan-in";

/// An ordinary kind of its own ([`deposits_then_balances`]).
const DEPOSIT_THEN_BALANCE: &str = "deposit then balance";

/// The kinds of ordinary transfer, the hard ones first.
pub const ORDINARY_KINDS: &[&str] = &[
    "large first payment",
    DEPOSIT_THEN_BALANCE,
    "new supplier",
    "new business",
    "care home or hospital",
    "small first payments",
    "new account",
    "red packets",
    "observed at the counter",
    "first payment",
    "utility bill",
    "usual",
];

/// 2026-03-01 00:00 +08:00: simulated time starts here (after the warm-up).
pub const START: i64 = 1_772_294_400;
/// Days before START in which each customer's usual life builds its history
/// (its usual payees are all paid in the first days of it: relationships of
/// long standing by START).
pub const WARMUP_DAYS: i64 = 100;
const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;
/// Simulated days of the festival week (red packets to family and friends).
const FESTIVAL_DAYS: std::ops::Range<i64> = 20..27;
const BRANCHES: &[&str] = &[
    "psbc-heshan-zhongshan",
    "icbc-heshan-zhongshan",
    "psbc-heshan-shaping",
    "boc-heshan-shaping",
    "ccb-jiangmen-pengjiang",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
    Adult,
    Elderly,
    Business,
    /// Opened just before the simulation: no history at all.
    NewAccount,
}

struct Customer {
    id: String,
    account: String,
    birth_date: String,
    opened_on: String,
    daily_limit: i64,
    branch: &'static str,
    payees: Vec<pb::Payee>,
    life: Life,
    /// Its usual spending scale, minor units.
    scale: i64,
}

fn payee(account: String, name: &str, bank: &str) -> pb::Payee {
    pb::Payee { account, name: name.into(), bank_code: bank.into() }
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn pick_ref<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A round-ish amount near `around` (minor units), from a third to three times it.
fn amount_near(rng: &mut StdRng, around: i64) -> i64 {
    let factor = rng.random_range(0.33f64..3.0);
    (((around as f64 * factor) / 100.0).round() as i64).max(1) * 100
}

fn birth_date(rng: &mut StdRng, years: std::ops::RangeInclusive<i32>) -> String {
    format!("{}-{:02}-{:02}", rng.random_range(years), rng.random_range(1..=12), rng.random_range(1..=28))
}

/// The town's institutions that many customers pay, shared as in life: a
/// hospital or a school is paid for the first time by several customers of
/// the bank in a week, sometimes two on one day. (name, how many).
const INSTITUTIONS: &[(&str, usize)] = &[
    ("某某置业", 12),
    ("某某汽车", 10),
    ("某某学校", 20),
    ("某某医院", 6),
    ("某某酒店", 15),
    ("某某装饰", 20),
    ("某某养老院", 5),
    ("某某护理中心", 4),
];

/// The institutions of [`INSTITUTIONS`], with their accounts.
struct Town {
    institutions: Vec<(&'static str, Vec<pb::Payee>)>,
}

impl Town {
    fn new(rng: &mut StdRng) -> Town {
        let institutions = INSTITUTIONS
            .iter()
            .enumerate()
            .map(|(i, &(name, count))| {
                let accounts = (0..count)
                    .map(|n| payee(format!("6240{i:02}{n:010}"), name, pick(rng, &["icbc", "ccb", "abc", "boc"])))
                    .collect();
                (name, accounts)
            })
            .collect();
        Town { institutions }
    }

    /// One of the town's institutions called `name`, or None if it has none.
    fn institution(&self, rng: &mut StdRng, name: &str) -> Option<pb::Payee> {
        let (_, accounts) = self.institutions.iter().find(|(n, _)| *n == name)?;
        Some(pick_ref(rng, accounts).clone())
    }
}

/// The power company's collection account for a customer's branch (its
/// city): one account that thousands of customers pay each month.
fn power_company(branch: &str) -> pb::Payee {
    let city = if branch.contains("jiangmen") { 2 } else { 1 };
    payee(format!("6200{city:012}"), "南方电网", "ccb")
}

fn customer(rng: &mut StdRng, i: usize) -> Customer {
    let roll = rng.random_range(0..100);
    let life = match roll {
        0..22 => Life::Elderly,
        22..27 => Life::Business,
        27..30 => Life::NewAccount,
        _ => Life::Adult,
    };
    let birth = match life {
        Life::Elderly => birth_date(rng, 1940..=1966),
        _ => birth_date(rng, 1967..=2004),
    };
    let opened_on = match life {
        Life::NewAccount => "2026-02-15".to_string(),
        _ => format!("{}-{:02}-01", rng.random_range(2005..=2024), rng.random_range(1..=12)),
    };
    let payees = match life {
        Life::NewAccount => Vec::new(),
        _ => (0..rng.random_range(if life == Life::Business { 6..=14 } else { 3..=8 }))
            .map(|j| {
                let bank = pick(rng, &["icbc", "ccb", "abc", "boc", "psbc", "cmb"]);
                let name = pick(rng, &["王芳", "李强", "张伟", "刘洋", "陈静", "物业公司", "南方电网", "某某商贸"]);
                payee(format!("6222{i:08}{j:02}{:02}", rng.random_range(0..100)), name, bank)
            })
            .collect(),
    };
    let scale = match life {
        Life::Business => pick(rng, &[500_000, 1_000_000, 3_000_000]),
        Life::Elderly => pick(rng, &[30_000, 80_000, 150_000]),
        _ => pick(rng, &[30_000, 100_000, 250_000, 600_000]),
    };
    let mut c = Customer {
        id: format!("sim-{i:07}"),
        account: format!("6210{i:012}"),
        birth_date: birth,
        opened_on,
        daily_limit: pick(rng, &[5_000_000, 10_000_000, 20_000_000, 50_000_000]),
        branch: pick(rng, BRANCHES),
        payees,
        life,
        scale,
    };
    // The electricity bill goes to the city's power company, as everyone's does.
    if let Some(bill) = c.payees.get_mut(1) {
        *bill = power_company(c.branch);
    }
    c
}

/// One transfer as a teller system would send it.
struct Send<'a> {
    at: i64,
    payee: &'a pb::Payee,
    amount: i64,
    memo: &'a str,
    counter: bool,
    observations: Vec<pb::Observation>,
    limit_change: Option<pb::LimitChanged>,
}

impl<'a> Send<'a> {
    fn new(at: i64, payee: &'a pb::Payee, amount: i64) -> Send<'a> {
        Send { at, payee, amount, memo: "", counter: false, observations: Vec::new(), limit_change: None }
    }
}

fn request(c: &Customer, k: &mut u64, t: Send) -> pb::ScreenRequest {
    *k += 1;
    let limit = t.limit_change.as_ref().map_or(c.daily_limit, |l| l.new_limit_minor);
    pb::ScreenRequest {
        request_id: format!("sim-{k:09}"),
        requested_at: Some(Timestamp { seconds: t.at, nanos: 0 }),
        bank_id: c.branch.split('-').next().unwrap_or("psbc").into(),
        branch_id: c.branch.into(),
        teller_id: if t.counter { "teller-01".into() } else { String::new() },
        channel: if t.counter { pb::Channel::Counter } else { pb::Channel::Mobile } as i32,
        customer: Some(pb::Customer {
            customer_id: c.id.clone(),
            account_id: c.account.clone(),
            birth_date: c.birth_date.clone(),
            account_opened_on: c.opened_on.clone(),
            daily_limit_minor: limit,
            last_limit_change: t.limit_change,
        }),
        payee: Some(t.payee.clone()),
        amount_minor: t.amount.min(limit),
        currency: "CNY".into(),
        memo: t.memo.into(),
        observations: t.observations.into_iter().map(|o| o as i32).collect(),
    }
}

/// Where generated lines go, with the counters that make ids unique.
struct Out {
    lines: Vec<Labelled>,
    k: u64,
    fresh: u64,
    end: i64,
}

impl Out {
    fn ordinary(&mut self, c: &Customer, kind: &'static str, t: Send) {
        if t.at < self.end {
            let request = request(c, &mut self.k, t);
            self.lines.push(Labelled {
                request,
                label: "ordinary".into(),
                scam_type: String::new(),
                stage: String::new(),
                kind: kind.into(),
            });
        }
    }

    fn scam(&mut self, c: &Customer, scam_type: &str, stage: &str, t: Send) {
        if t.at < self.end {
            let request = request(c, &mut self.k, t);
            self.lines.push(Labelled {
                request,
                label: "scam".into(),
                scam_type: scam_type.into(),
                stage: stage.into(),
                kind: String::new(),
            });
        }
    }

    /// An account nobody has paid before.
    fn new_payee(&mut self, rng: &mut StdRng, prefix: &str, name: &str) -> pb::Payee {
        self.fresh += 1;
        let bank = pick(rng, &["icbc", "ccb", "abc", "boc", "cmb", "pab", "cib", "ceb"]);
        payee(format!("{prefix}{:012}", self.fresh), name, bank)
    }
}

fn raise_limit(c: &Customer, at: i64, to_max: bool) -> pb::LimitChanged {
    pb::LimitChanged {
        customer_id: c.id.clone(),
        old_limit_minor: c.daily_limit,
        new_limit_minor: if to_max { 50_000_000 } else { (c.daily_limit * 2).min(50_000_000) },
        is_maximum: to_max,
        changed_at: Some(Timestamp { seconds: at, nanos: 0 }),
    }
}

/// Generates `days` days of traffic for `customers` customers, after a
/// warm-up of [`WARMUP_DAYS`] (measure from [`START`]).
pub fn generate(customers: usize, days: u32, seed: u64) -> Vec<Labelled> {
    generate_with(customers, days, seed, true)
}

/// [`generate`], with or without the deposits and balances (a test holds the
/// rest of the history the same either way).
fn generate_with(customers: usize, days: u32, seed: u64, deposits: bool) -> Vec<Labelled> {
    let mut rng = StdRng::seed_from_u64(seed);
    let people: Vec<Customer> = (0..customers).map(|i| customer(&mut rng, i)).collect();
    let mut out = Out { lines: Vec::new(), k: 0, fresh: 0, end: START + i64::from(days) * DAY };
    let town = Town::new(&mut rng);
    // A few mule accounts at a time collect from many victims.
    let mules: Vec<pb::Payee> = (0..(customers / 1500).max(3))
        .map(|m| payee(format!("6230{m:012}"), pick(&mut rng, &["刘某", "周某", "某某科技", "吴某"]), "pab"))
        .collect();
    let total_weight: u32 = SCAM_TYPES.iter().map(|(_, w)| w).sum();
    for day in -WARMUP_DAYS..i64::from(days) {
        let day_start = START + day * DAY;
        let measured = day >= 0;
        // Now and then a ring's collection account is paid by several of the
        // bank's customers, each told a different story, within hours.
        if measured && !people.is_empty() && rng.random_bool(0.4) {
            let mule = out.new_payee(&mut rng, "6231", "某某");
            let mut at = daytime(&mut rng, day_start);
            for _ in 0..rng.random_range(3..=8) {
                let c = pick_ref(&mut rng, &people);
                let amount = rng.random_range(2_000..50_000) * 100;
                let memo = pick(&mut rng, &["", "", "货款", "还款", "投资"]);
                out.scam(c, "mule fan-in", "decisive", Send { memo, ..Send::new(at, &mule, amount) });
                at += rng.random_range(600..3 * HOUR);
            }
        }
        // A business that just opened (a tutor, a gym, a shop taking
        // deposits) is paid by its first customers within a few days, each
        // paying it for the first time: from outside, a fresh collection account.
        if measured && !people.is_empty() && rng.random_bool(0.3) {
            let name = pick(&mut rng, &["某某培训", "某某健身", "某某母婴店", "张老师"]);
            let business = out.new_payee(&mut rng, "6232", name);
            let mut at = daytime(&mut rng, day_start);
            for _ in 0..rng.random_range(2..=6) {
                let c = pick_ref(&mut rng, &people);
                let memo = pick(&mut rng, &["学费", "会员费", "课时费", "订金", ""]);
                out.ordinary(
                    c,
                    "new business",
                    Send { memo, ..Send::new(at, &business, amount_near(&mut rng, 150_000)) },
                );
                at += rng.random_range(HOUR..2 * DAY);
            }
        }
        for c in &people {
            if c.life == Life::NewAccount && !measured {
                continue;
            }
            if day == -WARMUP_DAYS {
                for p in &c.payees {
                    let at = day_start + rng.random_range(0..3 * DAY);
                    out.ordinary(c, "usual", Send::new(at, p, amount_near(&mut rng, c.scale)));
                }
            }
            ordinary_day(&mut rng, c, &town, day, day_start, &mut out);
            // A victim: about 1 customer in 1,500 a day, during the measured days.
            if measured && rng.random_bool(1.0 / 1500.0) {
                let mut roll = rng.random_range(0..total_weight);
                let kind = SCAM_TYPES
                    .iter()
                    .find(|(_, w)| {
                        if roll < *w {
                            true
                        } else {
                            roll -= w;
                            false
                        }
                    })
                    .map_or("刷单返利", |(n, _)| *n);
                // Scammers of the elderly pick the elderly; an older victim is often theirs.
                let kind = match (kind, c.life) {
                    ("养老诈骗", life) if life != Life::Elderly => "冒充公检法",
                    (_, Life::Elderly) if rng.random_bool(0.3) => "养老诈骗",
                    (kind, _) => kind,
                };
                scam(&mut rng, c, kind, day_start, &mules, &mut out);
                // Some victims are taken again, by a "recovery" of the same kind, weeks later.
                if rng.random_bool(0.15) {
                    let later = day_start + rng.random_range(7..30) * DAY;
                    scam(&mut rng, c, kind, later, &mules, &mut out);
                }
            }
        }
    }
    let mut lines = std::mem::take(&mut out.lines);
    lines.sort_by_key(|l| l.request.requested_at.as_ref().map_or(0, |t| t.seconds));
    app_signals(&mut lines, seed);
    // Added last, from streams of their own: the rest of the history is the
    // same with or without them.
    if deposits {
        deposits_then_balances(&people, days, seed, &mut out);
    }
    lines.append(&mut out.lines);
    lines.sort_by_key(|l| l.request.requested_at.as_ref().map_or(0, |t| t.seconds));
    lines
}

/// A deposit, then the balance, to a private seller nobody at the bank has
/// paid before: a second-hand car or furniture from its owner, a private
/// landlord, a wedding photographer. About 1 customer in 80 over the measured
/// days; the deposit 500-10,000 CNY, the balance two to nine times it (at
/// most the daily limit) one to five days later. From outside it is what a
/// fake lender's "fee, then unfreezing money" or an investment's "trial, then
/// the real sum" looks like: the honest look-alike of both.
fn deposits_then_balances(people: &[Customer], days: u32, seed: u64, out: &mut Out) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6465_706f_7369_7473);
    for c in people {
        if days == 0 || !rng.random_bool(1.0 / 80.0) {
            continue;
        }
        let day_start = START + i64::from(rng.random_range(0..days)) * DAY;
        let name = pick(&mut rng, &["王先生", "李女士", "车主", "房东", "摄影师"]);
        let seller = out.new_payee(&mut rng, "6233", name);
        let deposit = rng.random_range(5..100) * 10_000;
        let at = daytime(&mut rng, day_start);
        let counter = rng.random_bool(if c.life == Life::Elderly { 0.6 } else { 0.15 });
        let memo = pick(&mut rng, &["订金", "定金", ""]);
        out.ordinary(c, DEPOSIT_THEN_BALANCE, Send { memo, counter, ..Send::new(at, &seller, deposit) });
        let balance = (deposit * rng.random_range(2..=9)).min(c.daily_limit);
        let later = at + rng.random_range(DAY..5 * DAY);
        let memo = pick(&mut rng, &["尾款", "余款", ""]);
        out.ordinary(c, DEPOSIT_THEN_BALANCE, Send { memo, counter, ..Send::new(later, &seller, balance) });
    }
}

/// Of the victims paying on their phone, the share whose screen the scammer
/// watches through a call or meeting app, and the share whose phone they take
/// over with a remote-control app, by scam type. Assumptions from the
/// typology descriptions (docs/simulate.md), not measurements.
fn app_signal_rates(scam_type: &str) -> (f64, f64) {
    match scam_type {
        "冒充客服退款" => (0.6, 0.1),
        "虚假征信" => (0.5, 0.05),
        "虚假网络贷款" => (0.4, 0.05),
        "冒充公检法" => (0.3, 0.1),
        MULE_FAN_IN => (0.2, 0.0),
        "刷单返利" => (0.15, 0.0),
        "虚假投资理财" => (0.0, 0.1),
        "网络婚恋" => (0.05, 0.0),
        _ => (0.0, 0.0),
    }
}

/// What the bank's app reports for mobile transfers: for a victim guided
/// through a scam, a shared screen or a remote-control app on each decisive
/// payment (decided once per victim and scam); in ordinary life, rarely (a
/// relative helping on a shared screen: 1 mobile transfer in 500; IT support
/// with a remote-control app: 1 in 3,000). Drawn from a stream of its own, so
/// the rest of the history is the same with or without it.
fn app_signals(lines: &mut [Labelled], seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6170_705f_7369_676e);
    let mut victims: std::collections::HashMap<(String, String), Vec<pb::Observation>> = Default::default();
    for line in lines.iter_mut() {
        if line.request.channel != pb::Channel::Mobile as i32 {
            continue;
        }
        let signals = if line.is_scam() {
            if line.stage != "decisive" {
                continue;
            }
            let customer = line.request.customer.as_ref().map(|c| c.customer_id.clone()).unwrap_or_default();
            victims
                .entry((customer, line.scam_type.clone()))
                .or_insert_with(|| {
                    let (shared, remote) = app_signal_rates(&line.scam_type);
                    let mut s = Vec::new();
                    if rng.random_bool(shared) {
                        s.push(pb::Observation::ScreenShared);
                    }
                    if rng.random_bool(remote) {
                        s.push(pb::Observation::RemoteControl);
                    }
                    s
                })
                .clone()
        } else {
            let mut s = Vec::new();
            if rng.random_bool(1.0 / 500.0) {
                s.push(pb::Observation::ScreenShared);
            }
            if rng.random_bool(1.0 / 3000.0) {
                s.push(pb::Observation::RemoteControl);
            }
            s
        };
        line.request.observations.extend(signals.into_iter().map(|o| o as i32));
    }
}

fn daytime(rng: &mut StdRng, day_start: i64) -> i64 {
    day_start + rng.random_range(8 * HOUR..21 * HOUR)
}

/// One customer's ordinary day.
fn ordinary_day(rng: &mut StdRng, c: &Customer, town: &Town, day: i64, day_start: i64, out: &mut Out) {
    let elderly = c.life == Life::Elderly;
    let counter_visit = |rng: &mut StdRng| rng.random_bool(if elderly { 0.6 } else { 0.15 });
    // Rent and bills to known payees.
    if !c.payees.is_empty() {
        if day.rem_euclid(30) == 0 {
            let t = Send {
                memo: "房租",
                ..Send::new(daytime(rng, day_start), &c.payees[0], amount_near(rng, c.scale * 3))
            };
            out.ordinary(c, "usual", t);
        }
        if day.rem_euclid(30) == 3 {
            let t = Send {
                memo: "电费",
                ..Send::new(daytime(rng, day_start), &c.payees[1 % c.payees.len()], amount_near(rng, 20_000))
            };
            out.ordinary(c, if c.payees.len() > 1 { "utility bill" } else { "usual" }, t);
        }
        // Family transfers and everyday payments to usual payees.
        if rng.random_bool(if elderly { 0.08 } else { 0.15 }) {
            let p = pick_ref(rng, &c.payees).clone();
            let counter = counter_visit(rng);
            // A small share of ordinary counter visits gets an observation.
            let observed = counter && rng.random_bool(0.03);
            let t = Send {
                memo: pick(rng, &["生活费", "给女儿", "家用", "", "还款", "借款"]),
                counter,
                observations: if observed {
                    vec![pick(rng, &[pb::Observation::Urgent, pb::Observation::Agitated])]
                } else {
                    vec![]
                },
                ..Send::new(daytime(rng, day_start), &p, amount_near(rng, c.scale))
            };
            out.ordinary(c, if observed { "observed at the counter" } else { "usual" }, t);
        }
        // Businesses pay staff and usual suppliers, and sometimes a new supplier.
        if c.life == Life::Business {
            if day.rem_euclid(30) == 24 {
                for p in &c.payees[3..] {
                    let t = Send { memo: "工资", ..Send::new(daytime(rng, day_start), p, amount_near(rng, 600_000)) };
                    out.ordinary(c, "usual", t);
                }
            }
            if rng.random_bool(0.3) {
                let p = pick_ref(rng, &c.payees).clone();
                let t = Send {
                    memo: pick(rng, &["货款", "采购", ""]),
                    ..Send::new(daytime(rng, day_start), &p, amount_near(rng, c.scale))
                };
                out.ordinary(c, "usual", t);
            }
            if rng.random_bool(1.0 / 40.0) {
                let p = out.new_payee(rng, "6228", "某某供应链");
                let t = Send {
                    memo: pick(rng, &["货款", "首批货款", "订金", ""]),
                    ..Send::new(daytime(rng, day_start), &p, amount_near(rng, c.scale * 2))
                };
                out.ordinary(c, "new supplier", t);
            }
        }
    }
    // Large first payments: a house deposit, a car, tuition, a hospital, a new landlord, a wedding.
    if rng.random_bool(1.0 / 400.0) {
        let (memo, around, name) = pick(
            rng,
            &[
                ("首付", 30_000_000, "某某置业"),
                ("购车款", 12_000_000, "某某汽车"),
                ("学费", 2_500_000, "某某学校"),
                ("住院押金", 3_000_000, "某某医院"),
                ("押金 房租", 800_000, "房东"),
                ("婚礼酒席", 5_000_000, "某某酒店"),
                ("装修款", 6_000_000, "某某装饰"),
            ],
        );
        // The town's institution, or a landlord or a firm from elsewhere.
        let p = match town.institution(rng, name) {
            Some(p) if rng.random_bool(0.8) => p,
            _ => out.new_payee(rng, "6225", name),
        };
        let at = daytime(rng, day_start);
        let raised = rng.random_bool(0.3);
        let t = Send {
            memo: if rng.random_bool(0.7) { memo } else { "" },
            counter: counter_visit(rng) || around >= 10_000_000,
            limit_change: raised.then(|| raise_limit(c, at - rng.random_range(600..20 * HOUR), rng.random_bool(0.5))),
            ..Send::new(at, &p, amount_near(rng, around))
        };
        out.ordinary(c, "large first payment", t);
    }
    // Older customers start paying a care home, or a hospital.
    if elderly && rng.random_bool(1.0 / 300.0) {
        let name = pick(rng, &["某某养老院", "某某医院", "某某护理中心"]);
        let p = match town.institution(rng, name) {
            Some(p) => p,
            None => out.new_payee(rng, "6226", name),
        };
        let t = Send {
            memo: pick(rng, &["养老院费用", "住院费", "护理费", ""]),
            counter: rng.random_bool(0.7),
            ..Send::new(daytime(rng, day_start), &p, amount_near(rng, 800_000))
        };
        out.ordinary(c, "care home or hospital", t);
    }
    // A burst of small first payments: a shared dinner, second-hand buys.
    if rng.random_bool(1.0 / 150.0) {
        let mut at = daytime(rng, day_start);
        for _ in 0..rng.random_range(2..=5) {
            let p = out.new_payee(rng, "6227", "个人");
            let t = Send {
                memo: pick(rng, &["AA", "闲鱼", "二手", ""]),
                ..Send::new(at, &p, amount_near(rng, 15_000))
            };
            out.ordinary(c, "small first payments", t);
            at += rng.random_range(60..1800);
        }
    }
    // A new account: its first weeks are all first payments.
    if c.life == Life::NewAccount && rng.random_bool(0.12) {
        let name = pick(rng, &["房东", "同事", "某某公司", "家人"]);

        let p = out.new_payee(rng, "6229", name);
        let t = Send {
            memo: pick(rng, &["房租", "生活费", "", "押金"]),
            ..Send::new(daytime(rng, day_start), &p, amount_near(rng, c.scale))
        };
        out.ordinary(c, "new account", t);
    }
    // The festival week: red packets to family, some of them new payees.
    if FESTIVAL_DAYS.contains(&day) && rng.random_bool(0.15) {
        let mut at = daytime(rng, day_start);
        for _ in 0..rng.random_range(1..=4) {
            let p = if c.payees.is_empty() || rng.random_bool(0.4) {
                out.new_payee(rng, "6224", "亲戚")
            } else {
                pick_ref(rng, &c.payees).clone()
            };
            let t = Send {
                memo: pick(rng, &["红包", "压岁钱", "新年快乐", ""]),
                ..Send::new(at, &p, pick(rng, &[20_000, 50_000, 66_600, 88_800, 100_000, 200_000]))
            };
            out.ordinary(c, "red packets", t);
            at += rng.random_range(60..3 * HOUR);
        }
    }
    // An occasional first payment to someone new.
    if rng.random_bool(0.01) {
        let p = out.new_payee(rng, "6223", "新收款人");
        let t = Send {
            memo: pick(rng, &["AA聚餐", "二手交易", "学费", "", "礼金"]),
            ..Send::new(daytime(rng, day_start), &p, amount_near(rng, c.scale))
        };
        out.ordinary(c, "first payment", t);
    }
}

/// Victims' memos: the scam's words only sometimes; otherwise nothing, or
/// something bland, as they are coached.
fn coached_memo(rng: &mut StdRng, options: &[&'static str]) -> &'static str {
    if rng.random_bool(0.35) {
        pick(rng, options)
    } else {
        pick(rng, &["", "", "还款", "借款", "生活费", "货款"])
    }
}

/// A stage of growing payments: `count` of them from `first`, each 2-3× the
/// one before and `gap`·`unit` seconds after it.
struct Run {
    stage: &'static str,
    at: i64,
    first: i64,
    count: u32,
    gap: std::ops::Range<i64>,
    unit: i64,
    memos: &'static [&'static str],
}

/// Pays out a [`Run`], each payment to the payee `to` picks; returns the
/// time after the last.
fn escalate(
    rng: &mut StdRng,
    out: &mut Out,
    c: &Customer,
    kind: &str,
    run: Run,
    mut to: impl FnMut(&mut StdRng, &mut Out) -> pb::Payee,
) -> i64 {
    let (mut at, mut amount) = (run.at, run.first);
    for _ in 0..run.count {
        let p = to(rng, out);
        let memo = coached_memo(rng, run.memos);
        out.scam(c, kind, run.stage, Send { memo, ..Send::new(at, &p, amount) });
        at += rng.random_range(run.gap.clone()) * run.unit;
        amount *= rng.random_range(2..=3);
    }
    at
}

/// One victim's scam as it unfolds from `day_start`: lead-in payments, then
/// the decisive ones. Words in the memo only sometimes: victims are coached
/// to write nothing, or something bland.
fn scam(rng: &mut StdRng, c: &Customer, kind: &str, day_start: i64, mules: &[pb::Payee], out: &mut Out) {
    let mut at = daytime(rng, day_start);
    let elderly = c.life == Life::Elderly;
    let counter = rng.random_bool(if elderly { 0.6 } else { 0.15 });
    let words = coached_memo;
    let observed = |rng: &mut StdRng, counter: bool, options: &[pb::Observation]| {
        if counter && rng.random_bool(0.6) {
            vec![pick(rng, options)]
        } else {
            vec![]
        }
    };
    // A collection account: often a mule many victims pay, otherwise a fresh one.
    let collector = |rng: &mut StdRng, out: &mut Out| {
        if rng.random_bool(0.3) {
            pick_ref(rng, mules).clone()
        } else {
            out.new_payee(rng, "6236", "陌生人")
        }
    };
    match kind {
        "刷单返利" => {
            // Small "tasks" to successive new accounts, each a little more, then the big ones.
            let (first, count) = (rng.random_range(50..300) * 100, rng.random_range(2..=3));
            let run =
                Run {
                    stage: "lead-in", at, first, count, gap: 300..2400, unit: 1, memos: &["刷单", "做任务", "点赞"]
                };
            at = escalate(rng, out, c, kind, run, collector);
            let (first, count) = (rng.random_range(2_000..10_000) * 100, rng.random_range(1..=3));
            let memos = &["刷单返利", "垫付", "任务佣金"];
            escalate(
                rng,
                out,
                c,
                kind,
                Run { stage: "decisive", at, first, count, gap: 600..3600, unit: 1, memos },
                collector,
            );
        }
        "虚假投资理财" => {
            // Trial deposits to the "platform" over weeks, then the limit raised and a large sum.
            let platform = collector(rng, out);
            let (first, count) = (rng.random_range(1_000..10_000) * 100, rng.random_range(1..=3));
            let run =
                Run {
                    stage: "lead-in", at, first, count, gap: 2..10, unit: DAY, memos: &["投资", "理财", "入金"]
                };
            at = escalate(rng, out, c, kind, run, |_: &mut StdRng, _: &mut Out| platform.clone());
            let to = if rng.random_bool(0.5) { platform } else { collector(rng, out) };
            let raised = rng.random_bool(0.7);
            let t = Send {
                memo: words(rng, &["投资理财", "导师带单", "数字货币", "高额回报"]),
                counter,
                observations: observed(rng, counter, &[pb::Observation::OnPhoneWithStranger, pb::Observation::Urgent]),
                limit_change: raised
                    .then(|| raise_limit(c, at - rng.random_range(300..4 * HOUR), rng.random_bool(0.8))),
                ..Send::new(at, &to, rng.random_range(50_000..500_000) * 100)
            };
            out.scam(c, kind, "decisive", t);
        }
        "虚假网络贷款" => {
            // A "fee" first, then "unfreezing" or "deposit" payments, each larger.
            let lender = collector(rng, out);
            out.scam(
                c,
                kind,
                "lead-in",
                Send {
                    memo: words(rng, &["手续费", "贷款"]),
                    ..Send::new(at, &lender, rng.random_range(200..2_000) * 100)
                },
            );
            let mut amount = rng.random_range(3_000..15_000) * 100;
            for _ in 0..rng.random_range(1..=2) {
                at += rng.random_range(HOUR..30 * HOUR);
                let to = if rng.random_bool(0.6) { lender.clone() } else { collector(rng, out) };
                out.scam(
                    c,
                    kind,
                    "decisive",
                    Send { memo: words(rng, &["解冻金", "保证金", "验资"]), ..Send::new(at, &to, amount) },
                );
                amount *= rng.random_range(2..=3);
            }
        }
        "冒充客服退款" => {
            // "Refund verification" with a shared screen: several payments within an hour.
            for _ in 0..rng.random_range(2..=4) {
                let p = collector(rng, out);
                out.scam(
                    c,
                    kind,
                    "decisive",
                    Send {
                        memo: words(rng, &["退款", "理赔", "取消会员"]),
                        ..Send::new(at, &p, rng.random_range(2_000..20_000) * 100)
                    },
                );
                at += rng.random_range(120..1200);
            }
        }
        "冒充公检法" => {
            // A "safe account" for a "case": the limit raised, a large sum, often at the counter.
            for _ in 0..rng.random_range(1..=2) {
                let p = collector(rng, out);
                let raised = rng.random_bool(0.6);
                let t = Send {
                    memo: words(rng, &["安全账户", "资金核查", "配合调查"]),
                    counter,
                    observations: observed(
                        rng,
                        counter,
                        &[
                            pb::Observation::Coached,
                            pb::Observation::OnPhoneWithStranger,
                            pb::Observation::RefusesToExplain,
                        ],
                    ),
                    limit_change: raised.then(|| raise_limit(c, at - rng.random_range(300..3 * HOUR), true)),
                    ..Send::new(at, &p, rng.random_range(50_000..500_000) * 100)
                };
                out.scam(c, kind, "decisive", t);
                at += rng.random_range(HOUR..DAY);
            }
        }
        "虚假征信" => {
            // Borrowed money moved on, in several payments, to "clear" a record.
            for _ in 0..rng.random_range(1..=3) {
                let p = collector(rng, out);
                out.scam(
                    c,
                    kind,
                    "decisive",
                    Send {
                        memo: words(rng, &["注销校园贷", "修复征信", "信用记录"]),
                        ..Send::new(at, &p, rng.random_range(5_000..50_000) * 100)
                    },
                );
                at += rng.random_range(600..4 * HOUR);
            }
        }
        "网络婚恋" => {
            // Weeks of growing help to an online partner, then the big one (or an "investment" they share).
            let name = pick(rng, &["男友", "女友", "陈先生", "李小姐"]);

            let partner = out.new_payee(rng, "6237", name);
            let (first, count) = (rng.random_range(500..3_000) * 100, rng.random_range(2..=4));
            let memos = &["见面路费", "生日礼物", "给男朋友"];
            let run = Run { stage: "lead-in", at, first, count, gap: 3..12, unit: DAY, memos };
            at = escalate(rng, out, c, kind, run, |_: &mut StdRng, _: &mut Out| partner.clone());
            let to = if rng.random_bool(0.6) { partner } else { collector(rng, out) };
            out.scam(
                c,
                kind,
                "decisive",
                Send {
                    memo: words(rng, &["彩礼", "一起投资", "急用"]),
                    ..Send::new(at, &to, rng.random_range(20_000..300_000) * 100)
                },
            );
        }
        "养老诈骗" => {
            // "Health products" first, then a "pension project": an older customer, often at the counter.
            let name = pick(rng, &["某某健康", "某某养老产业", "某某生物科技"]);

            let seller = out.new_payee(rng, "6238", name);
            for _ in 0..rng.random_range(1..=2) {
                out.scam(
                    c,
                    kind,
                    "lead-in",
                    Send {
                        memo: words(rng, &["保健品", "理疗仪"]),
                        counter,
                        ..Send::new(at, &seller, rng.random_range(500..3_000) * 100)
                    },
                );
                at += rng.random_range(2..10) * DAY;
            }
            let to = if rng.random_bool(0.6) { seller } else { collector(rng, out) };
            let t = Send {
                memo: words(rng, &["养老项目", "养老公寓", "投资分红"]),
                counter,
                observations: observed(
                    rng,
                    counter,
                    &[pb::Observation::AccompaniedByStranger, pb::Observation::Coached],
                ),
                ..Send::new(at, &to, rng.random_range(10_000..200_000) * 100)
            };
            out.scam(c, kind, "decisive", t);
        }
        _ => {
            // A mule account many victims pay the same day, nothing else to see.
            let mule = pick_ref(rng, mules).clone();
            out.scam(
                c,
                kind,
                "decisive",
                Send {
                    memo: words(rng, &["货款", "还款"]),
                    ..Send::new(at, &mule, rng.random_range(5_000..50_000) * 100)
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Transfer;

    #[test]
    fn the_same_seed_gives_the_same_history_and_every_request_is_valid() {
        let a = generate(500, 5, 1);
        let b = generate(500, 5, 1);
        assert_eq!(serde_json::to_string(&a[..50]).unwrap(), serde_json::to_string(&b[..50]).unwrap());
        assert_ne!(
            serde_json::to_string(&generate(500, 5, 2)[..50]).unwrap(),
            serde_json::to_string(&a[..50]).unwrap()
        );
        for l in &a {
            Transfer::try_from(&l.request).unwrap_or_else(|e| panic!("{e:?}"));
        }
        assert!(a
            .windows(2)
            .all(|w| w[0].request.requested_at.unwrap().seconds <= w[1].request.requested_at.unwrap().seconds));
    }

    #[test]
    fn deposits_and_balances_go_to_fresh_sellers_and_leave_the_rest_as_it_was() {
        let with = generate(3_000, 30, 4);
        let without = generate_with(3_000, 30, 4, false);
        let (pairs, rest): (Vec<&Labelled>, Vec<&Labelled>) = with.iter().partition(|l| l.kind == DEPOSIT_THEN_BALANCE);
        let json = |lines: &[&Labelled]| lines.iter().map(|l| serde_json::to_string(l).unwrap()).collect::<Vec<_>>();
        assert!(json(&rest) == json(&without.iter().collect::<Vec<_>>()), "the rest of the history is the same");
        assert!(pairs.len() >= 20, "{}", pairs.len());
        let mut by_seller: std::collections::BTreeMap<&str, Vec<&Labelled>> = Default::default();
        for l in &pairs {
            by_seller.entry(l.request.payee.as_ref().unwrap().account.as_str()).or_default().push(l);
        }
        for (seller, paid) in &by_seller {
            assert!(!without.iter().any(|l| l.request.payee.as_ref().unwrap().account == *seller), "{seller} is fresh");
            if let [deposit, balance] = paid.as_slice() {
                let (d, b) = (deposit.request.amount_minor, balance.request.amount_minor);
                let limit = balance.request.customer.as_ref().unwrap().daily_limit_minor;
                assert!(b == limit || (2 * d..=9 * d).contains(&b), "{d} then {b}");
                let gap = balance.request.requested_at.unwrap().seconds - deposit.request.requested_at.unwrap().seconds;
                assert!((DAY..5 * DAY).contains(&gap), "{gap}");
            } else {
                assert_eq!(paid.len(), 1, "a balance past the last day is not sent");
            }
        }
    }

    #[test]
    fn every_scam_type_appears_in_a_larger_history() {
        // Scams unfold over weeks: long enough for every type's decisive payment.
        let h = generate(5_000, 60, 1);
        for kind in SCAM_TYPES.iter().map(|(k, _)| *k).chain([MULE_FAN_IN]) {
            assert!(h.iter().any(|l| l.scam_type == kind && l.stage == "decisive"), "{kind}");
        }
        for kind in ORDINARY_KINDS {
            assert!(h.iter().any(|l| l.kind == *kind), "{kind}");
        }
        assert!(h.iter().filter(|l| l.is_scam()).all(|l| !l.scam_type.is_empty() && !l.stage.is_empty()));
        let scams = h.iter().filter(|l| l.is_scam()).count();
        assert!(scams > 0 && scams * 20 < h.len());
    }

    #[test]
    fn the_app_reports_a_shared_screen_for_guided_victims_and_rarely_otherwise() {
        let h = generate(5_000, 60, 1);
        fn shared(l: &Labelled) -> bool {
            l.request.observations.contains(&(pb::Observation::ScreenShared as i32))
        }
        let refund: Vec<&Labelled> = h
            .iter()
            .filter(|l| l.scam_type == "冒充客服退款" && l.request.channel == pb::Channel::Mobile as i32)
            .collect();
        let guided = refund.iter().filter(|l| shared(l)).count();
        assert!(guided * 4 > refund.len() && guided < refund.len(), "{guided} of {}", refund.len());
        let ordinary: Vec<&Labelled> = h.iter().filter(|l| !l.is_scam()).collect();
        let helped = ordinary.iter().filter(|l| shared(l)).count();
        assert!(helped > 0 && helped * 200 < ordinary.len(), "{helped} of {}", ordinary.len());
        // Only mobile transfers carry the app's signals.
        assert!(h.iter().filter(|l| shared(l)).all(|l| l.request.channel == pb::Channel::Mobile as i32));
    }
}
