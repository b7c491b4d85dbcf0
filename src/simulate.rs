//! `simulate`: realistic labelled traffic for demos, backtests and load — in
//! the same proto3 JSON as `ScreenRequest`, one labelled transfer a line.
//!
//! Ordinary life (rent, bills, salaries paid by small employers, family
//! transfers, occasional first payments, older customers paying their usual
//! payees) and the common scam types, each with its typical pattern. The same
//! seed gives the same output. A tool, not ground truth: its assumptions are in
//! docs/simulate.md. Must not read the clock: time starts at a fixed date.

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
}

impl Labelled {
    pub fn is_scam(&self) -> bool {
        self.label == "scam"
    }
}

/// The scam types simulated, with their share of victims.
pub const SCAM_TYPES: &[(&str, u32)] = &[
    ("刷单返利", 30),
    ("虚假投资理财", 20),
    ("虚假网络贷款", 15),
    ("冒充客服退款", 12),
    ("冒充公检法", 10),
    ("虚假征信", 7),
    ("婚恋交友", 6),
];

/// 2026-03-01 00:00 +08:00: simulated time starts here (after the warm-up).
pub const START: i64 = 1_772_294_400;
/// Days before START in which each customer first pays each usual payee.
pub const WARMUP_DAYS: i64 = 30;
const DAY: i64 = 86_400;
const BRANCHES: &[&str] = &[
    "psbc-heshan-zhongshan",
    "icbc-heshan-zhongshan",
    "psbc-heshan-shaping",
    "boc-heshan-shaping",
    "ccb-jiangmen-pengjiang",
];

struct Customer {
    id: String,
    account: String,
    birth_date: String,
    opened_on: String,
    daily_limit: i64,
    branch: &'static str,
    payees: Vec<pb::Payee>,
    elderly: bool,
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

fn customer(rng: &mut StdRng, i: usize) -> Customer {
    let elderly = rng.random_bool(0.22);
    let year = if elderly { rng.random_range(1940..=1966) } else { rng.random_range(1967..=2004) };
    let payees = (0..rng.random_range(3..=8))
        .map(|j| {
            let bank = pick(rng, &["icbc", "ccb", "abc", "boc", "psbc", "cmb"]);
            payee(
                format!("6222{i:08}{j:02}{:02}", rng.random_range(0..100)),
                pick(rng, &["王芳", "李强", "张伟", "刘洋", "陈静", "物业公司", "南方电网"]),
                bank,
            )
        })
        .collect();
    Customer {
        id: format!("sim-{i:07}"),
        account: format!("6210{i:012}"),
        birth_date: format!("{year}-{:02}-{:02}", rng.random_range(1..=12), rng.random_range(1..=28)),
        opened_on: format!("{}-{:02}-01", rng.random_range(2005..=2025), rng.random_range(1..=12)),
        daily_limit: pick(rng, &[5_000_000, 10_000_000, 20_000_000, 50_000_000]),
        branch: pick(rng, BRANCHES),
        payees,
        elderly,
    }
}

#[allow(clippy::too_many_arguments)]
fn request(
    c: &Customer,
    k: &mut u64,
    at: i64,
    payee: &pb::Payee,
    amount: i64,
    memo: &str,
    counter: bool,
    observations: Vec<pb::Observation>,
    limit_change: Option<pb::LimitChanged>,
) -> pb::ScreenRequest {
    *k += 1;
    pb::ScreenRequest {
        request_id: format!("sim-{k:09}"),
        requested_at: Some(Timestamp { seconds: at, nanos: 0 }),
        bank_id: c.branch.split('-').next().unwrap_or("psbc").into(),
        branch_id: c.branch.into(),
        teller_id: if counter { "teller-01".into() } else { String::new() },
        channel: if counter { pb::Channel::Counter } else { pb::Channel::Mobile } as i32,
        customer: Some(pb::Customer {
            customer_id: c.id.clone(),
            account_id: c.account.clone(),
            birth_date: c.birth_date.clone(),
            account_opened_on: c.opened_on.clone(),
            daily_limit_minor: c.daily_limit,
            last_limit_change: limit_change,
        }),
        payee: Some(payee.clone()),
        amount_minor: amount,
        currency: "CNY".into(),
        memo: memo.into(),
        observations: observations.into_iter().map(|o| o as i32).collect(),
    }
}

/// Generates `days` days of traffic for `customers` customers.
pub fn generate(customers: usize, days: u32, seed: u64) -> Vec<Labelled> {
    let mut rng = StdRng::seed_from_u64(seed);
    let people: Vec<Customer> = (0..customers).map(|i| customer(&mut rng, i)).collect();
    // A few mule accounts per day receive from many victims.
    let mules: Vec<pb::Payee> = (0..(customers / 2000).max(3))
        .map(|m| payee(format!("6230{m:012}"), pick(&mut rng, &["刘某", "周某", "某某科技", "吴某"]), "pab"))
        .collect();
    let mut out = Vec::new();
    let mut k = 0u64;
    let mut first_payee_counter = 0u64;
    let total_weight: u32 = SCAM_TYPES.iter().map(|(_, w)| w).sum();
    // A warm-up month before START in which each customer pays each usual
    // payee once, so a replay knows them; measure with `backtest --from` START.
    for c in &people {
        for p in &c.payees {
            let at = START - WARMUP_DAYS * DAY + rng.random_range(0..WARMUP_DAYS * DAY);
            let amount = pick(&mut rng, &[20_000, 50_000, 100_000, 300_000]);
            out.push(Labelled {
                request: request(c, &mut k, at, p, amount, "", false, vec![], None),
                label: "ordinary".into(),
                scam_type: String::new(),
            });
        }
    }
    for day in 0..i64::from(days) {
        let day_start = START + day * DAY;
        for c in &people {
            let ordinary = |out: &mut Vec<Labelled>,
                            k: &mut u64,
                            at: i64,
                            p: &pb::Payee,
                            amount: i64,
                            memo: &str,
                            counter: bool| {
                out.push(Labelled {
                    request: request(c, k, at, p, amount, memo, counter, vec![], None),
                    label: "ordinary".into(),
                    scam_type: String::new(),
                });
            };
            let daytime = |rng: &mut StdRng| day_start + rng.random_range(8 * 3600..21 * 3600);
            // Rent and bills early in the month, to known payees.
            if day % 30 == 0 {
                let at = daytime(&mut rng);
                let amount = pick(&mut rng, &[150_000, 280_000, 350_000, 520_000]);
                ordinary(&mut out, &mut k, at, &c.payees[0], amount, "房租", false);
            }
            if day % 30 == 3 {
                let at = daytime(&mut rng);
                let amount = rng.random_range(8_000..60_000);
                ordinary(&mut out, &mut k, at, &c.payees[1], amount, "电费", false);
            }
            // Family transfers and everyday payments to usual payees.
            if rng.random_bool(if c.elderly { 0.08 } else { 0.15 }) {
                let at = daytime(&mut rng);
                let p = pick_ref(&mut rng, &c.payees).clone();
                let amount = pick(&mut rng, &[20_000, 50_000, 100_000, 200_000, 500_000, 2_000_000]);
                let counter = c.elderly && rng.random_bool(0.6);
                let memo = pick(&mut rng, &["生活费", "给女儿", "家用", "", "还款"]);
                ordinary(&mut out, &mut k, at, &p, amount, memo, counter);
            }
            // Small employers pay salaries to their usual staff.
            if day % 30 == 24 && c.payees.len() > 5 {
                for p in &c.payees[3..] {
                    let at = daytime(&mut rng);
                    let amount = rng.random_range(400_000..1_200_000);
                    ordinary(&mut out, &mut k, at, p, amount, "工资", false);
                }
            }
            // An occasional first payment to someone new.
            if rng.random_bool(0.01) {
                first_payee_counter += 1;
                let p = payee(format!("6225{first_payee_counter:012}"), "新收款人", "cmb");
                let at = daytime(&mut rng);
                let amount = pick(&mut rng, &[5_000, 20_000, 80_000, 300_000]);
                let memo = pick(&mut rng, &["AA聚餐", "二手交易", "学费", ""]);
                ordinary(&mut out, &mut k, at, &p, amount, memo, false);
            }
            // A victim: about 1 customer in 1,500 a day.
            if rng.random_bool(1.0 / 1500.0) {
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
                scam(&mut rng, c, kind, day_start, &mules, &mut k, &mut out);
            }
        }
    }
    out.sort_by_key(|l| l.request.requested_at.as_ref().map_or(0, |t| t.seconds));
    out
}

fn scam(
    rng: &mut StdRng,
    c: &Customer,
    kind: &str,
    day_start: i64,
    mules: &[pb::Payee],
    k: &mut u64,
    out: &mut Vec<Labelled>,
) {
    let mut at = day_start + rng.random_range(9 * 3600..20 * 3600);
    let counter = c.elderly && rng.random_bool(0.5);
    let fresh = |rng: &mut StdRng| {
        if rng.random_bool(0.5) {
            pick_ref(rng, mules).clone()
        } else {
            payee(
                format!("6236{:012}", rng.random_range(0..1_000_000_000u64)),
                "陌生人",
                pick(rng, &["pab", "cib", "ceb"]),
            )
        }
    };
    let words =
        |rng: &mut StdRng, p: f64, options: &[&'static str]| if rng.random_bool(p) { pick(rng, options) } else { "" };
    let push = |out: &mut Vec<Labelled>, r: pb::ScreenRequest| {
        out.push(Labelled { request: r, label: "scam".into(), scam_type: kind.into() });
    };
    let observe = |rng: &mut StdRng, options: &[pb::Observation]| -> Vec<pb::Observation> {
        if counter && rng.random_bool(0.7) {
            vec![pick(rng, options)]
        } else {
            vec![]
        }
    };
    match kind {
        "刷单返利" => {
            let mut amount = rng.random_range(10_000..50_000);
            for _ in 0..rng.random_range(3..=5) {
                let p = fresh(rng);
                let memo = words(rng, 0.4, &["刷单返利", "做任务", "垫付", "点赞佣金"]);
                push(out, request(c, k, at, &p, amount, memo, false, vec![], None));
                at += rng.random_range(600..5400);
                amount = (amount * rng.random_range(2..=4)).min(c.daily_limit);
            }
        }
        "虚假投资理财" => {
            let raise = pb::LimitChanged {
                customer_id: c.id.clone(),
                old_limit_minor: c.daily_limit,
                new_limit_minor: c.daily_limit.max(50_000_000),
                is_maximum: true,
                changed_at: Some(Timestamp { seconds: at - rng.random_range(300..3600), nanos: 0 }),
            };
            let p = fresh(rng);
            let memo = words(rng, 0.5, &["投资理财", "导师带单", "数字货币", "高额回报"]);
            let obs = observe(rng, &[pb::Observation::OnPhoneWithStranger, pb::Observation::Urgent]);
            let amount = rng.random_range(50_000..500_000) * 100;
            push(out, request(c, k, at, &p, amount, memo, counter, obs, Some(raise)));
        }
        "虚假网络贷款" => {
            let p = fresh(rng);
            for _ in 0..rng.random_range(1..=3) {
                let memo = words(rng, 0.5, &["贷款保证金", "解冻金", "手续费", "验资"]);
                push(out, request(c, k, at, &p, rng.random_range(500..5_000) * 100, memo, false, vec![], None));
                at += rng.random_range(1800..7200);
            }
        }
        "冒充客服退款" => {
            let p = fresh(rng);
            let memo = words(rng, 0.4, &["客服退款", "快递丢失理赔", "取消会员"]);
            push(out, request(c, k, at, &p, rng.random_range(1_000..20_000) * 100, memo, false, vec![], None));
        }
        "冒充公检法" => {
            let p = fresh(rng);
            let memo = words(rng, 0.3, &["安全账户", "资金核查", "配合调查"]);
            let obs = observe(
                rng,
                &[pb::Observation::Coached, pb::Observation::OnPhoneWithStranger, pb::Observation::RefusesToExplain],
            );
            push(out, request(c, k, at, &p, rng.random_range(50_000..300_000) * 100, memo, counter, obs, None));
        }
        "虚假征信" => {
            let p = fresh(rng);
            let memo = words(rng, 0.5, &["注销校园贷", "修复征信", "信用记录"]);
            push(out, request(c, k, at, &p, rng.random_range(5_000..50_000) * 100, memo, false, vec![], None));
        }
        _ => {
            // 婚恋交友: growing payments to one new "partner" over days.
            let p = fresh(rng);
            let mut amount = rng.random_range(2_000..10_000) * 100;
            for _ in 0..rng.random_range(2..=4) {
                let memo = words(rng, 0.4, &["给男朋友", "见面路费", "彩礼"]);
                push(out, request(c, k, at, &p, amount, memo, false, vec![], None));
                at += rng.random_range(DAY / 2..2 * DAY);
                amount *= 2;
            }
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
    fn every_scam_type_appears_in_a_larger_history() {
        let h = generate(20_000, 10, 1);
        for (kind, _) in SCAM_TYPES {
            assert!(h.iter().any(|l| l.scam_type == *kind), "{kind}");
        }
        let scams = h.iter().filter(|l| l.is_scam()).count();
        assert!(scams > 0 && scams * 20 < h.len());
    }
}
