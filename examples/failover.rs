//! Failover as a teller sees it: screens a fixed set of customers round-robin
//! through one node of a cluster, kills another node (`kill -9 PID`) after a
//! while, and reports, for the customers whose partitions were on the killed
//! node, how long from the kill until their screens were answered again.
//! docs/scaling.md has the commands that start the cluster around it.
//!
//! cargo run --release --example failover -- ADDR PID [CUSTOMERS] [SECONDS_BEFORE_KILL]

use std::time::{Duration, Instant};
use transfer_guard::api::forward::NODE_HEADER;
use transfer_guard::api::proto as pb;

fn request(id: &str, customer: &str) -> pb::ScreenRequest {
    pb::ScreenRequest {
        request_id: id.into(),
        requested_at: Some(pbjson_types::Timestamp { seconds: transfer_guard::clock::wall_clock(), nanos: 0 }),
        bank_id: "psbc".into(),
        branch_id: "psbc-heshan-zhongshan".into(),
        teller_id: "teller-07".into(),
        channel: pb::Channel::Counter as i32,
        customer: Some(pb::Customer {
            customer_id: customer.into(),
            account_id: "6210981234567890".into(),
            birth_date: "1981-06-15".into(),
            account_opened_on: "2015-04-01".into(),
            daily_limit_minor: 5_000_000,
            last_limit_change: None,
        }),
        payee: Some(pb::Payee {
            account: "6222020200112233".into(), name: "王房东".into(), bank_code: "icbc".into()
        }),
        amount_minor: 350_000,
        currency: "CNY".into(),
        memo: "房租".into(),
        observations: vec![],
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().expect("ADDR of a node that stays up (http://127.0.0.1:PORT)");
    let pid = args.next().expect("PID of the node to kill");
    let customers: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(64);
    let before = Duration::from_secs(args.next().and_then(|n| n.parse().ok()).unwrap_or(3));
    let mut teller = pb::screening_client::ScreeningClient::connect(addr).await.expect("connect");
    let started = Instant::now();
    // Per customer: the node that last answered before the kill, and when it answered after.
    let mut node_before = vec![String::new(); customers];
    let mut answered_after: Vec<Option<Duration>> = vec![None; customers];
    let mut killed_at = None;
    let mut n = 0u64;
    loop {
        for (c, slot) in answered_after.iter_mut().enumerate() {
            n += 1;
            let call = teller.screen(request(&format!("fo-{n}"), &format!("failover-customer-{c}")));
            let answered = match tokio::time::timeout(Duration::from_secs(2), call).await {
                Ok(Ok(r)) => r.metadata().get(NODE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string),
                _ => None,
            };
            match (killed_at, answered) {
                (None, Some(node)) => node_before[c] = node,
                (Some(at), Some(_)) if slot.is_none() => *slot = Some(Instant::now().duration_since(at)),
                _ => {}
            }
        }
        if killed_at.is_none() && started.elapsed() >= before {
            let victim = std::process::Command::new("kill").args(["-9", &pid]).status().expect("kill");
            assert!(victim.success(), "kill -9 {pid}");
            killed_at = Some(Instant::now());
            answered_after.iter_mut().for_each(|a| *a = None);
        }
        let all_back = killed_at.is_some() && answered_after.iter().all(Option::is_some);
        if all_back || started.elapsed() > before + Duration::from_secs(120) {
            break;
        }
    }
    // The killed node's name: the one answering before that a survivor is not.
    let mut names: Vec<&String> = node_before.iter().filter(|n| !n.is_empty()).collect();
    names.sort();
    names.dedup();
    let mut gaps: Vec<(String, Duration)> = node_before
        .iter()
        .zip(&answered_after)
        .map(|(node, after)| (node.clone(), after.unwrap_or(Duration::MAX)))
        .collect();
    gaps.sort_by_key(|(_, d)| *d);
    let ms = |d: Duration| if d == Duration::MAX { "never".to_string() } else { format!("{} ms", d.as_millis()) };
    for name in names {
        let mine: Vec<Duration> = gaps.iter().filter(|(n, _)| n == name).map(|(_, d)| *d).collect();
        println!(
            "customers last answered by {name}: {} — answered again after the kill in: min {}, median {}, max {}",
            mine.len(),
            ms(mine[0]),
            ms(mine[mine.len() / 2]),
            ms(mine[mine.len() - 1]),
        );
    }
}
