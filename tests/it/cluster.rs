//! The clustered mode with real processes: nats-server(s) with JetStream and
//! transfer-guard nodes started by the test, killed with SIGKILL and paused
//! with SIGSTOP; the answers compared call by call.

use crate::harness::{free_port, ordinary, seed_case, NatsCluster, NatsServer, ServeProcess};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use transfer_guard::api::forward::NODE_HEADER;
use transfer_guard::api::proto as pb;
use transfer_guard::cluster::journal::{Journal, JournalError};
use transfer_guard::delivery::NatsConfig;
use transfer_guard::store::Space;

pub(crate) type Teller = pb::screening_client::ScreeningClient<Channel>;

/// The flags of a node of a test cluster: few partitions, a short lease.
/// Each test has a NATS server of its own, so its buckets and journal too.
pub(crate) fn node_flags(nats: &str, node: &str) -> Vec<String> {
    ["--cluster", nats, "--node-id", node, "--partitions", "16", "--lease", "2s", "--board-listen", "off"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Screens `request` on `teller`, retrying while the cluster says UNAVAILABLE
/// (a partition changing hands) or the connection dropped under the call (a
/// teller system retries the same request id; the channel reconnects), at
/// most `limit`: the answer and the node.
pub(crate) async fn screen_until_answered(
    teller: &mut Teller,
    request: &pb::ScreenRequest,
    limit: Duration,
) -> (pb::ScreenResponse, String) {
    let deadline = Instant::now() + limit;
    loop {
        // Each call bounded too: a test must end even if a node never answers.
        let answer = tokio::time::timeout(Duration::from_secs(10), teller.screen(request.clone())).await;
        match answer.unwrap_or_else(|_| Err(tonic::Status::unavailable("no answer within 10 s"))) {
            Ok(r) => {
                let node = r.metadata().get(NODE_HEADER).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                return (r.into_inner(), node);
            }
            Err(s)
                if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{}: {s:?}", request.request_id),
        }
    }
}

/// Waits until `nodes` different nodes answer for 32 customers: the
/// partitions are spread (a node that joins takes its share).
pub(crate) async fn wait_until_spread(teller: &mut Teller, nodes: usize) {
    // Probe ids never used before, however often a test waits.
    static ROUNDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let round = ROUNDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut seen = std::collections::HashSet::new();
        for i in 0..32 {
            let probe = ordinary(&format!("probe-{round}-{i}"), &format!("probe-customer-{i}"), "6222020200112233");
            seen.insert(screen_until_answered(teller, &probe, Duration::from_secs(30)).await.1);
        }
        if seen.len() == nodes {
            return;
        }
        assert!(Instant::now() < deadline, "the partitions never spread over {nodes} nodes: {seen:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn teller(node: &ServeProcess) -> Teller {
    Teller::new(node.channel().await)
}

/// The seed case (a transfer that is held) for another customer: customers
/// of several partitions.
fn held_case(request_id: &str, customer_id: &str) -> pb::ScreenRequest {
    let mut r = seed_case(request_id);
    let customer = r.customer.as_mut().unwrap();
    customer.customer_id = customer_id.into();
    if let Some(change) = customer.last_limit_change.as_mut() {
        change.customer_id = customer_id.into();
    }
    r
}

/// Starts a node of a test cluster on `nats` for each of `names`, in `dir`,
/// with its flags as `adjust` changes them.
async fn start_nodes(
    dir: &std::path::Path,
    nats: &str,
    names: [&str; 3],
    adjust: impl Fn(&str, &mut Vec<String>),
) -> Vec<ServeProcess> {
    let mut nodes = Vec::new();
    for name in names {
        let mut flags = node_flags(nats, name);
        adjust(name, &mut flags);
        nodes.push(ServeProcess::start(&dir.join(name), &format!("{name}.log"), &flags).await);
    }
    nodes
}

/// Every alert `node` lists (up to 1,000, one page).
async fn all_alerts(node: &ServeProcess) -> Vec<pb::Alert> {
    let mut officer = pb::alerts_client::AlertsClient::new(node.channel().await);
    officer.list_alerts(pb::ListAlertsRequest { limit: 1000, ..Default::default() }).await.unwrap().into_inner().alerts
}

/// What a retry must answer the same.
pub(crate) fn gist(r: &pb::ScreenResponse) -> (i32, i64, String, String) {
    (r.action, r.score, r.alert_id.clone(), r.station_id.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_answer_every_retry_the_same_after_one_is_killed() {
    let nats = NatsServer::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    // Alert events go to the stations' subjects on the same NATS.
    let mut nodes = start_nodes(dir.path(), &nats.url(), ["n1", "n2", "n3"], |_, flags| {
        flags.extend(["--nats-url".to_string(), nats.url()])
    })
    .await;
    let mut tellers = Vec::new();
    for n in &nodes {
        tellers.push(teller(n).await);
    }
    wait_until_spread(&mut tellers[0], 3).await;
    // Past the rounds that finish spreading the partitions (a lease): a
    // partition changing hands has its alerts on neither node for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Ordinary transfers of 40 customers, and seed cases that are held.
    let mut requests: Vec<pb::ScreenRequest> =
        (0..40).map(|i| ordinary(&format!("ord-{i}"), &format!("customer-{i}"), "6222020200112233")).collect();
    for i in 0..4 {
        requests.push(held_case(&format!("seed-{i}"), &format!("seed-customer-{i}")));
    }
    let mut first = HashMap::new();
    let mut answered_by: HashMap<String, usize> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        let (answer, node) = screen_until_answered(&mut tellers[i % 3], r, Duration::from_secs(60)).await;
        assert!(!node.is_empty(), "every answer names the node that gave it");
        // Counted by alerts raised first, then by answers.
        *answered_by.entry(node).or_default() += if answer.alert_id.is_empty() { 1 } else { 1000 };
        first.insert(r.request_id.clone(), gist(&answer));
    }
    assert!(answered_by.len() >= 2, "customers are spread over the nodes: {answered_by:?}");
    assert!(first.values().any(|g| g.0 == pb::Action::Hold as i32), "the seed cases are held");

    // An officer on any node sees every alert, whichever node raised it.
    let alert_ids = |alerts: &[pb::Alert]| {
        let mut ids: Vec<String> = alerts.iter().map(|a| a.alert_id.clone()).collect();
        ids.sort();
        ids
    };
    let mut raised: Vec<String> = first.values().filter(|g| !g.2.is_empty()).map(|g| g.2.clone()).collect();
    raised.sort();
    let mut lists = Vec::new();
    for n in &nodes {
        let listed = all_alerts(n).await;
        let ids = alert_ids(&listed);
        assert!(raised.iter().all(|id| ids.contains(id)), "a node lists every alert, whoever raised it");
        lists.push(ids);
    }
    assert!(lists.windows(2).all(|w| w[0] == w[1]), "every node lists the same alerts");
    // Read in pages of 7 from one node: every alert once.
    let (mut paged, mut token) = (Vec::new(), String::new());
    let mut officer = pb::alerts_client::AlertsClient::new(nodes[0].channel().await);
    loop {
        let page = officer
            .list_alerts(pb::ListAlertsRequest { limit: 7, page_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.alerts);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(alert_ids(&paged), lists[0], "the pages hold every alert once");
    // Kill the node that raised most alerts; the others take its partitions over.
    let busiest = answered_by.iter().max_by_key(|(_, n)| **n).map(|(node, _)| node.clone()).unwrap();
    let k = ["n1", "n2", "n3"].iter().position(|n| *n == busiest).unwrap();
    nodes[k].kill9();
    for (i, r) in requests.iter().enumerate() {
        let t = if i % 3 == k { (k + 1) % 3 } else { i % 3 };
        let (answer, node) = screen_until_answered(&mut tellers[t], r, Duration::from_secs(60)).await;
        assert_ne!(node, busiest, "{}: answered by the killed node", r.request_id);
        assert_eq!(gist(&answer), first[&r.request_id], "{}: the retry answers the same", r.request_id);
    }
    // The transfers are known wherever the teller asks; the held ones are
    // decided by an officer on any live node, whoever raised their alerts.
    let live = (k + 1) % 3;
    let mut officer = pb::alerts_client::AlertsClient::new(nodes[live].channel().await);
    // A teller on the other survivor watches every held transfer wherever it is now.
    let other = 3 - k - live;
    let mut watches = Vec::new();
    for (id, g) in &first {
        if g.0 == pb::Action::Hold as i32 {
            let request = pb::GetTransferRequest { request_id: id.clone() };
            let stream = tellers[other].watch_transfer(request).await.unwrap_or_else(|s| panic!("{id}: {s:?}"));
            watches.push((id.clone(), stream.into_inner()));
        }
    }
    let mut station = String::new();
    for (id, g) in &first {
        if g.0 != pb::Action::Hold as i32 {
            continue;
        }
        station = g.3.clone();
        let resolve = pb::ResolveAlertRequest {
            alert_id: g.2.clone(),
            officer_id: "officer-li".into(),
            outcome: pb::Outcome::FalseAlarm as i32,
            hold_decision: pb::HoldDecision::Release as i32,
            note: "called the customer's daughter".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match officer.resolve_alert(resolve.clone()).await {
                Ok(_) => break,
                Err(s)
                    if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled)
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(s) => panic!("{id}: {s:?}"),
            }
        }
    }
    assert!(!station.is_empty(), "some transfers were held");
    for (id, mut stream) in watches {
        let mut states = Vec::new();
        while let Some(status) = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap()
        {
            states.push(status.state);
        }
        assert_eq!(
            (states.first(), states.last()),
            (Some(&(pb::TransferState::Held as i32)), Some(&(pb::TransferState::Released as i32))),
            "{id}: the watcher saw the hold end"
        );
    }
    for r in &requests {
        let status = tellers[live]
            .get_transfer(pb::GetTransferRequest { request_id: r.request_id.clone() })
            .await
            .unwrap_or_else(|s| panic!("{}: {s:?}", r.request_id))
            .into_inner();
        assert_eq!(status.alert_id, first[&r.request_id].2, "{}", r.request_id);
        if first[&r.request_id].0 == pb::Action::Hold as i32 {
            assert_eq!(status.state, pb::TransferState::Released as i32, "{}", r.request_id);
        }
    }
    // Every alert event reached the station once: raised, then resolved,
    // whichever node sent it (a node taking a partition over sends the last
    // event again under its id, and JetStream drops the repeat).
    let alerts: Vec<&String> = first.values().filter(|g| g.0 >= pb::Action::Hold as i32).map(|g| &g.2).collect();
    let held = first.values().filter(|g| g.0 == pb::Action::Hold as i32).count();
    let events = crate::nats::read_station(&NatsConfig::new(nats.url()), &station, alerts.len() + held).await;
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        *by_id.entry(e.event_id.as_str()).or_default() += 1;
    }
    assert!(by_id.values().all(|n| *n == 1), "an event reached the station twice: {by_id:?}");
    for id in alerts {
        let kinds: Vec<&str> =
            events.iter().filter(|e| e.alert.as_ref().unwrap().alert_id == *id).map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds.first(), Some(&"raised"), "{id}: {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_never_answers_from_what_it_knew_before() {
    let nats = NatsServer::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    let a = ServeProcess::start(&dir.path().join("a"), "a.log", &node_flags(&nats.url(), "a")).await;
    let mut on_a = teller(&a).await;
    // With a alone, it owns every partition.
    let mut before = ordinary("before-pause", "zhongshan-customer-58", "6222020200112233");
    before.customer.as_mut().unwrap().birth_date = "1968-05-10".into();
    let (_, node) = screen_until_answered(&mut on_a, &before, Duration::from_secs(60)).await;
    assert_eq!(node, "a");
    let b = ServeProcess::start(&dir.path().join("b"), "b.log", &node_flags(&nats.url(), "b")).await;
    let mut on_b = teller(&b).await;
    a.signal("STOP");
    // Past a's lease (2 s), b takes every partition; the seed case is held there.
    let during = seed_case("while-paused");
    let (held, node) = screen_until_answered(&mut on_b, &during, Duration::from_secs(60)).await;
    assert_eq!(node, "b");
    assert!(!held.alert_id.is_empty(), "an alert was raised: {held:?}");
    a.signal("CONT");
    // Resumed, a must not answer from its memory of before the pause (it
    // would screen the transfer afresh, with an alert of its own): it refuses,
    // forwards to b, or — once it has taken partitions back — answers from
    // the journal b wrote.
    for _ in 0..40 {
        match on_a.screen(during.clone()).await {
            Ok(r) => assert_eq!(gist(r.get_ref()), gist(&held), "answered by {:?}", r.metadata().get(NODE_HEADER)),
            Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (again, _) = screen_until_answered(&mut on_a, &during, Duration::from_secs(30)).await;
    assert_eq!(gist(&again), gist(&held));
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_owners_late_write_is_refused_by_the_journal() {
    let nats = NatsServer::start_fresh();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let prefix = format!("fence{}", free_port());
    let journal = Journal::open(js, &prefix, 1).await.unwrap();
    // The old owner writes twice.
    let s1 = journal.append(3, 0, b"one".to_vec()).await.unwrap();
    let s2 = journal.append(3, s1, b"two".to_vec()).await.unwrap();
    // A new owner reads the partition and fences it.
    let (read, last) = journal.replay(3).await.unwrap();
    assert_eq!(read.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(last, s2);
    let fenced = journal.fence(3, last, "new-owner").await.unwrap();
    // The old owner's next write, from what it last saw, is refused.
    let late = journal.append(3, s2, b"late".to_vec()).await;
    assert!(matches!(late, Err(JournalError::Fenced(3))), "{late:?}");
    // The new owner goes on; another partition was never touched.
    journal.append(3, fenced, b"three".to_vec()).await.unwrap();
    assert_eq!(journal.replay(4).await.unwrap().1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_server_jetstream_cluster_losing_one_server_loses_nothing() {
    let mut nats = NatsCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(dir.path(), &nats.urls(), ["r1", "r2", "r3"], |_, flags| {
        flags.extend(["--cluster-replicas".to_string(), "3".to_string()])
    })
    .await;
    let mut tellers = Vec::new();
    for n in &nodes {
        tellers.push(teller(n).await);
    }
    wait_until_spread(&mut tellers[0], 3).await;
    let requests: Vec<pb::ScreenRequest> =
        (0..30).map(|i| ordinary(&format!("r-{i}"), &format!("customer-{i}"), "6222020200112233")).collect();
    let mut first = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        first.insert(
            r.request_id.clone(),
            screen_until_answered(&mut tellers[i % 3], r, Duration::from_secs(60)).await.0,
        );
    }
    // One NATS server of three goes: the buckets and journal keep a majority.
    nats.kill(0);
    let after: Vec<pb::ScreenRequest> =
        (0..30).map(|i| ordinary(&format!("r-after-{i}"), &format!("customer-{i}"), "6222020200112233")).collect();
    for (i, r) in after.iter().enumerate() {
        screen_until_answered(&mut tellers[i % 3], r, Duration::from_secs(60)).await;
    }
    // And a transfer-guard node goes too: its partitions are rebuilt from the replicated journal.
    nodes[1].kill9();
    for (i, r) in requests.iter().chain(&after).enumerate() {
        let t = if i % 3 == 1 { 2 } else { i % 3 };
        let (answer, node) = screen_until_answered(&mut tellers[t], r, Duration::from_secs(60)).await;
        assert_ne!(node, "r2");
        if let Some(before) = first.get(&r.request_id) {
            assert_eq!(gist(&answer), gist(before), "{}", r.request_id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchlist_entry_added_on_one_node_blocks_on_every_node() {
    let nats = NatsServer::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    let a = ServeProcess::start(&dir.path().join("a"), "a.log", &node_flags(&nats.url(), "a")).await;
    let b = ServeProcess::start(&dir.path().join("b"), "b.log", &node_flags(&nats.url(), "b")).await;
    let (mut on_a, mut on_b) = (teller(&a).await, teller(&b).await);
    wait_until_spread(&mut on_b, 2).await;
    let mut watchlist = pb::watchlist_client::WatchlistClient::new(a.channel().await);
    let entry = pb::WatchlistEntry {
        account: "6222-0000-5555-6666".into(),
        issuer_station_id: "heshan-zhongshan-ps".into(),
        reason: "涉诈收款账户".into(),
        expires_at: None,
        added_at: None,
    };
    watchlist.upsert_entry(entry).await.unwrap();
    // Customers of both nodes' partitions, asked on b: every owner blocks.
    let mut blocked_by = std::collections::HashSet::new();
    for i in 0..16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        for attempt in 0.. {
            let mut to_mule = ordinary(&format!("mule-{i}-{attempt}"), &format!("c-{i}"), "6222000055556666");
            to_mule.amount_minor = 10_000;
            let (answer, node) = screen_until_answered(&mut on_b, &to_mule, Duration::from_secs(30)).await;
            if answer.action == pb::Action::Block as i32 {
                blocked_by.insert(node);
                break;
            }
            assert!(Instant::now() < deadline, "c-{i}: the entry never reached {node}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(blocked_by.len(), 2, "both nodes read the shared entry: {blocked_by:?}");
    // Removed on b, it is gone on a too.
    let mut on_b_watchlist = pb::watchlist_client::WatchlistClient::new(b.channel().await);
    let removed = on_b_watchlist.remove_entry(pb::RemoveEntryRequest { account: "6222000055556666".into() }).await;
    assert!(removed.unwrap().into_inner().removed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = pb::watchlist_client::WatchlistClient::new(a.channel().await)
            .list_entries(pb::ListEntriesRequest {})
            .await
            .unwrap()
            .into_inner();
        if listed.entries.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the removal never reached a");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (after, _) =
        screen_until_answered(&mut on_a, &ordinary("after", "c-1", "6222000055556666"), Duration::from_secs(30)).await;
    assert_ne!(after.action, pb::Action::Block as i32, "no longer listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rules_go_live_only_once_every_node_has_loaded_them() {
    let nats = NatsServer::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    let (rules_a, rules_b) = (crate::harness::rules_copy(), crate::harness::rules_copy());
    let start = |name: &'static str, rules: &std::path::Path| {
        let mut flags = node_flags(&nats.url(), name);
        flags.extend(["--rules".to_string(), rules.display().to_string()]);
        let data = dir.path().join(name);
        async move { ServeProcess::start(&data, &format!("{name}.log"), &flags).await }
    };
    let a = start("a", rules_a.path()).await;
    let b = start("b", rules_b.path()).await;
    let (mut on_a, mut on_b) = (teller(&a).await, teller(&b).await);
    wait_until_spread(&mut on_a, 2).await;
    let versions = |answer: &pb::ScreenResponse| answer.ruleset_version.clone();
    let v1 = versions(
        &screen_until_answered(&mut on_a, &ordinary("v-0", "c-0", "6222020200112233"), Duration::from_secs(30)).await.0,
    );

    // A new ruleset on a only: it is loaded there, but nobody answers with it.
    let edit = |dir: &std::path::Path| crate::harness::edit(dir, "amounts.toml", "[[rule]]", "# reviewed\n[[rule]]");
    edit(rules_a.path());
    let mut analyst_a = pb::rules_client::RulesClient::new(a.channel().await);
    let staged = analyst_a.reload_rules(pb::ReloadRulesRequest {}).await.unwrap().into_inner();
    assert!(!staged.reloaded && staged.version == v1, "{staged:?}");
    assert!(staged.errors.iter().any(|e| e.contains("every node")), "{staged:?}");
    for i in 0..20 {
        for (t, teller) in [&mut on_a, &mut on_b].into_iter().enumerate() {
            let r = ordinary(&format!("staged-{i}-{t}"), &format!("c-{i}"), "6222020200112233");
            let (answer, _) = screen_until_answered(teller, &r, Duration::from_secs(30)).await;
            assert_eq!(versions(&answer), v1, "{}: the new rules are not on b yet", r.request_id);
        }
    }
    // b loads it too: both go live with it.
    edit(rules_b.path());
    pb::rules_client::RulesClient::new(b.channel().await).reload_rules(pb::ReloadRulesRequest {}).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0.. {
        let mut seen = Vec::new();
        for (t, teller) in [&mut on_a, &mut on_b].into_iter().enumerate() {
            let r = ordinary(&format!("live-{i}-{t}"), &format!("c-{}", i % 20), "6222020200112233");
            seen.push(versions(&screen_until_answered(teller, &r, Duration::from_secs(30)).await.0));
        }
        if seen.iter().all(|v| *v != v1) {
            break;
        }
        assert!(Instant::now() < deadline, "the new rules never went live on both: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payees_fan_in_counts_senders_of_every_nodes_partitions() {
    let nats = NatsServer::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    let a = ServeProcess::start(&dir.path().join("a"), "a.log", &node_flags(&nats.url(), "a")).await;
    let b = ServeProcess::start(&dir.path().join("b"), "b.log", &node_flags(&nats.url(), "b")).await;
    let mut teller = teller(&a).await;
    wait_until_spread(&mut teller, 2).await;
    // Past the rounds that finish spreading the partitions (a lease).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mule = "6222099988887777";
    // Five customers of a's partitions (found with a payment elsewhere) pay the same new payee.
    let mut senders = Vec::new();
    for i in 0.. {
        let sender = format!("sender-{i}");
        // Each probe pays an account of its own: a shared one would become a
        // fan-in itself, and a probe held there would stop its customer.
        let probe = ordinary(&format!("probe-a-{i}"), &sender, &format!("62220202001{i:05}"));
        if screen_until_answered(&mut teller, &probe, Duration::from_secs(30)).await.1 == "a" {
            // 1,000 CNY: under the fresh-account rule's floor, so each is allowed and counted.
            let paid = pb::ScreenRequest { amount_minor: 100_000, ..ordinary(&format!("fan-{i}"), &sender, mule) };
            let (_, node) = screen_until_answered(&mut teller, &paid, Duration::from_secs(30)).await;
            assert_eq!(node, "a");
            senders.push((paid, sender));
        }
        if senders.len() == 5 {
            break;
        }
        assert!(i < 200, "customers never reached a");
    }
    // A customer of b's: b counts a's senders from their facts, not only its own.
    let mut customer = None;
    for i in 0..200 {
        let probe = ordinary(&format!("probe-b-{i}"), &format!("b-customer-{i}"), &format!("62220202002{i:05}"));
        if screen_until_answered(&mut teller, &probe, Duration::from_secs(30)).await.1 == "b" {
            customer = Some(format!("b-customer-{i}"));
            break;
        }
    }
    let customer = customer.expect("a customer of b's partitions");
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        let r = ordinary(&format!("fan-final-{attempt}"), &customer, mule);
        let (answer, node) = screen_until_answered(&mut teller, &r, Duration::from_secs(30)).await;
        assert_eq!(node, "b");
        if answer.hits.iter().any(|h| h.rule_id == "payee_fan_in") {
            break;
        }
        assert!(Instant::now() < deadline, "b never counted a's senders: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The senders' partitions stayed a's all along: b counted their facts, not their state.
    // (The same requests again: a retry, answered by the owner.)
    for (paid, sender) in &senders {
        let (_, node) = screen_until_answered(&mut teller, paid, Duration::from_secs(30)).await;
        assert_eq!(node, "a", "{sender} moved to {node}: the partitions were still being spread");
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_compacts_the_journal_it_replayed() {
    let nats = NatsServer::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    let customer = "compacted-customer";
    let requests: Vec<pb::ScreenRequest> =
        (0..10).map(|i| ordinary(&format!("compact-{i}"), customer, &format!("62220202001122{i:02}"))).collect();
    let mut a = ServeProcess::start(&dir.path().join("a"), "a.log", &node_flags(&nats.url(), "a")).await;
    let mut first = Vec::new();
    let mut on_a = teller(&a).await;
    for r in &requests {
        first.push(gist(&screen_until_answered(&mut on_a, r, Duration::from_secs(60)).await.0));
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let subject = format!("transferguard.state.{}", transfer_guard::state::partition_of(customer, 16));
    let messages = |js: async_nats::jetstream::Context, subject: String| async move {
        let stream = js.get_stream("TRANSFERGUARD_STATE").await.unwrap();
        let mut subjects = stream.info_with_subjects(&subject).await.unwrap();
        let mut n = 0;
        while let Some(Ok((_, count))) = tokio_stream::StreamExt::next(&mut subjects).await {
            n += count;
        }
        n
    };
    let before = messages(js.clone(), subject.clone()).await;
    assert!(before > 10, "a's journal holds each screen's commit");
    // a dies; b, alone, takes every partition and compacts what it replayed.
    a.kill9();
    let b = ServeProcess::start(&dir.path().join("b"), "b.log", &node_flags(&nats.url(), "b")).await;
    let mut on_b = teller(&b).await;
    for (r, g) in requests.iter().zip(&first) {
        assert_eq!(&gist(&screen_until_answered(&mut on_b, r, Duration::from_secs(60)).await.0), g, "{}", r.request_id);
    }
    // The history is gone: the first message is the compacted images (the
    // customer, the ten transfers and their alerts), then what b wrote since
    // (the adopted alerts' events).
    let stream = js.get_stream("TRANSFERGUARD_STATE").await.unwrap();
    let head = stream.get_first_raw_message_by_subject(&subject, 1).await.unwrap();
    let images = transfer_guard::store::decode_batch(&head.payload).expect("a batch");
    let count = |space: Space| images.iter().filter(|(s, _, _)| *s == space).count();
    assert_eq!((count(Space::Customers), count(Space::Transfers)), (1, 10), "{} changes", images.len());
    assert!(messages(js.clone(), subject.clone()).await < before, "compacted");
    // And what b compacted is all a third owner needs.
    drop(b);
    let c = ServeProcess::start(&dir.path().join("c"), "c.log", &node_flags(&nats.url(), "c")).await;
    let mut on_c = teller(&c).await;
    for (r, g) in requests.iter().zip(&first) {
        assert_eq!(&gist(&screen_until_answered(&mut on_c, r, Duration::from_secs(60)).await.0), g, "{}", r.request_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serving_tls_forward_over_tls_with_the_callers_token_or_certificate() {
    use crate::trust::{Pki, Tokens, TRUST_DOMAIN};
    use transfer_guard::auth::Role;
    let nats = NatsServer::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    // Each node's certificate names the address it advertises (the listen
    // address) and the node: it presents it to the others when it forwards.
    for node in ["a", "b"] {
        let (cert, key) = pki.issue(&["127.0.0.1", "localhost"], Some(&format!("spiffe://{TRUST_DOMAIN}/node/{node}")));
        std::fs::write(pki.path(&format!("{node}.pem")), cert).unwrap();
        std::fs::write(pki.path(&format!("{node}.key")), key).unwrap();
    }
    let tokens = Tokens::new();
    std::fs::write(pki.path("tokens.pub"), &tokens.public).unwrap();
    let path = |name: &str| pki.path(name).display().to_string();
    let flags = |node: &str| {
        let mut f = node_flags(&nats.url(), node);
        for (flag, value) in [
            ("--tls-cert", path(&format!("{node}.pem"))),
            ("--tls-key", path(&format!("{node}.key"))),
            ("--client-ca", path("ca.pem")),
            ("--token-public-key", path("tokens.pub")),
            ("--trust-domain", TRUST_DOMAIN.to_string()),
        ] {
            f.extend([flag.to_string(), value]);
        }
        f
    };
    let a = ServeProcess::start(&dir.path().join("a"), "a.log", &flags("a")).await;
    let _b = ServeProcess::start(&dir.path().join("b"), "b.log", &flags("b")).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(pki.path("ca.pem")).unwrap()));
    let connect = |tls: tonic::transport::ClientTlsConfig| async move {
        let endpoint = Channel::from_shared(format!("https://127.0.0.1:{}", a.port)).unwrap();
        endpoint.tls_config(tls).unwrap().connect().await.unwrap()
    };
    let channel = connect(tls.clone()).await;
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", tokens.for_(Role::Teller, "psbc", "teller-7")).parse().unwrap();
    let mut teller =
        pb::screening_client::ScreeningClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
    // Customers of both nodes, all through a: b's are forwarded over TLS, with the teller's token.
    let mut answered_by = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        match teller.screen(ordinary(&format!("tls-{i}"), &format!("c-{}", i % 32), "6222020200112233")).await {
            Ok(r) => {
                answered_by.insert(r.metadata().get(NODE_HEADER).unwrap().to_str().unwrap().to_string());
            }
            Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        }
        if answered_by.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "b never answered through a: {answered_by:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A teller identified by its certificate alone, no token: b's customers
    // are answered through a, which speaks for the certificate it verified.
    let channel =
        connect(tls.clone().identity(pki.client(&format!("spiffe://{TRUST_DOMAIN}/teller/psbc/teller-9")))).await;
    let mut teller = pb::screening_client::ScreeningClient::new(channel);
    let mut answered_by = std::collections::HashSet::new();
    for i in 0..32 {
        let r = ordinary(&format!("tls-cert-{i}"), &format!("c-{i}"), "6222020200112233");
        let (_, node) = screen_until_answered(&mut teller, &r, Duration::from_secs(30)).await;
        answered_by.insert(node);
    }
    assert_eq!(answered_by.len(), 2, "both nodes answered the certificate's calls: {answered_by:?}");
    // A caller that is not a node cannot make another caller's claims: its
    // own certificate is who it is, whatever it says.
    let channel = connect(tls.identity(pki.client(&format!("spiffe://{TRUST_DOMAIN}/officer/some-station/o-1")))).await;
    let mut spoofing = pb::screening_client::ScreeningClient::new(channel);
    let mut r = tonic::Request::new(ordinary("tls-spoof", "c-1", "6222020200112233"));
    r.metadata_mut().insert("transfer-guard-caller", "teller/psbc/teller-9".parse().unwrap());
    let refused = spoofing.screen(r).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_two_nodes_of_three_die_one_after_the_other_and_nothing_is_lost() {
    // Three NATS servers in one JetStream cluster, the cluster's buckets and
    // journal on all three; alert events to the stations' subjects there too.
    let nats = NatsCluster::start();
    let station_nats = NatsConfig::new(nats.servers[0].as_ref().unwrap().url());
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(dir.path(), &nats.urls(), ["n1", "n2", "n3"], |_, flags| {
        flags.extend(["--cluster-replicas", "3", "--nats-url", &station_nats.url].map(String::from))
    })
    .await;
    let mut probe = teller(&nodes[0]).await;
    wait_until_spread(&mut probe, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Four tellers screen without pause through n1 (which stays up) while n2
    // and then n3 die; one in ten is a held transfer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tellers = Vec::new();
    for t in 0..4 {
        let (mut client, stop) = (teller(&nodes[0]).await, stop.clone());
        tellers.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = format!("load-{t}-{n}");
                let r = match n % 10 {
                    0 => held_case(&id, &format!("held-{t}-{n}")),
                    _ => ordinary(&id, &format!("c-{}", n % 50), "6222020200112233"),
                };
                if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(5), client.screen(r.clone())).await {
                    answered.push((r, gist(answer.get_ref())));
                }
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[1].kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    nodes[2].kill9();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = Vec::new();
    for t in tellers {
        answered.extend(t.await.unwrap());
    }
    assert!(answered.len() > 100, "the load ran: {} answers", answered.len());
    // n1 alone now: every answer given under the kills is given again.
    for (r, g) in &answered {
        let (again, node) = screen_until_answered(&mut probe, r, Duration::from_secs(60)).await;
        assert_eq!(node, "n1");
        assert_eq!(&gist(&again), g, "{}", r.request_id);
    }
    // Every held transfer is still decided, whichever node held it.
    let held: Vec<_> = answered.iter().filter(|(_, g)| g.0 == pb::Action::Hold as i32).collect();
    assert!(!held.is_empty(), "some transfers were held");
    let mut officer = pb::alerts_client::AlertsClient::new(nodes[0].channel().await);
    for (r, g) in &held {
        let resolve = pb::ResolveAlertRequest {
            alert_id: g.2.clone(),
            officer_id: "officer-li".into(),
            outcome: pb::Outcome::Dissuaded as i32,
            hold_decision: pb::HoldDecision::Block as i32,
            note: String::new(),
        };
        officer.resolve_alert(resolve).await.unwrap_or_else(|s| panic!("{}: {s:?}", r.request_id));
        let status = probe.get_transfer(pb::GetTransferRequest { request_id: r.request_id.clone() }).await.unwrap();
        assert_eq!(status.into_inner().state(), pb::TransferState::Blocked, "{}", r.request_id);
    }
    // Every alert reached its station exactly once: raised, then resolved.
    let station = held[0].1 .3.clone();
    let events = crate::nats::read_station(&station_nats, &station, 2 * held.len()).await;
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        *by_id.entry(e.event_id.as_str()).or_default() += 1;
    }
    assert!(by_id.values().all(|n| *n == 1), "an event reached the station twice: {by_id:?}");
    for (r, g) in &held {
        let kinds: Vec<&str> =
            events.iter().filter(|e| e.alert.as_ref().unwrap().alert_id == g.2).map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["raised", "resolved"], "{}: {kinds:?}", r.request_id);
    }
}

/// Keeps reading `watch` until it has had a `kind` event for every id in
/// `ids`; the cursor of the last event read.
async fn until_seen(watch: &mut tonic::Streaming<pb::AlertEvent>, kind: &str, ids: &[String], node: &str) -> u64 {
    let mut cursor = 0;
    let mut missing: std::collections::HashSet<&String> = ids.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, watch.message())
            .await
            .unwrap_or_else(|_| panic!("{node}: no `{kind}` event for {missing:?}"))
            .unwrap_or_else(|s| panic!("{node}: {s:?}"))
            .unwrap_or_else(|| panic!("{node}: the stream ended"));
        cursor = event.cursor;
        if event.kind == kind {
            missing.remove(&event.alert.unwrap().alert_id);
        }
    }
    cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_on_any_node_watches_and_acts_on_every_nodes_alerts() {
    let nats = NatsServer::start_fresh();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &nats.url(), ["n1", "n2", "n3"], |name, flags| {
        if name == "n3" {
            // n3 serves the board.
            flags.retain(|f| f != "--board-listen" && f != "off");
        }
    })
    .await;
    let mut teller = teller(&nodes[0]).await;
    wait_until_spread(&mut teller, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let station = screen_until_answered(&mut teller, &seed_case("which-station"), Duration::from_secs(30)).await.0;
    let station = station.station_id;
    // A watcher on every node, before the alerts are raised.
    let mut watches = Vec::new();
    for n in &nodes {
        let request = pb::WatchAlertsRequest { station_ids: vec![station.clone()], after_cursor: 0 };
        let mut officer = pb::alerts_client::AlertsClient::new(n.channel().await);
        watches.push(officer.watch_alerts(request).await.unwrap().into_inner());
    }
    // Held transfers of twelve customers, all through n1: their partitions are every node's.
    let mut raised = Vec::new();
    let mut raised_by = std::collections::HashSet::new();
    for i in 0..12 {
        let r = held_case(&format!("anywhere-{i}"), &format!("anywhere-customer-{i}"));
        let (answer, node) = screen_until_answered(&mut teller, &r, Duration::from_secs(30)).await;
        assert_eq!(answer.action(), pb::Action::Hold);
        raised_by.insert(node);
        raised.push(answer.alert_id);
    }
    assert!(raised_by.len() >= 2, "the alerts were raised on several nodes: {raised_by:?}");
    let mut cursors = Vec::new();
    for (watch, name) in watches.iter_mut().zip(["n1", "n2", "n3"]) {
        cursors.push(until_seen(watch, "raised", &raised, name).await);
    }
    // Cursors are each node's own: one node's, resumed on another, is refused, not misread.
    let mut officer = pb::alerts_client::AlertsClient::new(nodes[1].channel().await);
    let elsewhere = pb::WatchAlertsRequest { station_ids: vec![station.clone()], after_cursor: cursors[0] };
    let refused = match officer.watch_alerts(elsewhere).await {
        Err(s) => s,
        Ok(stream) => stream.into_inner().message().await.expect_err("n1's cursor on n2"),
    };
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");

    // On n3's board: an alert another node owns, opened and claimed there.
    let elsewhere = raised.iter().find(|id| !id.contains("-n3-")).expect("an alert of n1's or n2's").clone();
    let page = format!("/alerts/{elsewhere}");
    let (status, body) = crate::harness::http(nodes[2].board_port, &page, None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&elsewhere) && body.contains("id=\"claim\""),
        "the alert's page on a node that does not own it"
    );
    let (status, body) =
        crate::harness::http(nodes[2].board_port, &format!("{page}/claim"), Some("officer=officer-li"));
    assert_eq!(status, 303, "claimed through the owner: {body}");
    let (status, body) = crate::harness::http(nodes[2].board_port, &page, None);
    assert!(status == 200 && body.contains("officer-li") && !body.contains("id=\"claim\""), "{body}");
    // A second claim is the owner's conflict, shown on the page.
    let (status, body) =
        crate::harness::http(nodes[2].board_port, &format!("{page}/claim"), Some("officer=officer-wu"));
    assert_eq!(status, 409, "{body}");
    // Every node's watcher hears the claim; every node lists it claimed by her.
    for (watch, name) in watches.iter_mut().zip(["n1", "n2", "n3"]) {
        until_seen(watch, "claimed", std::slice::from_ref(&elsewhere), name).await;
    }
    for n in &nodes {
        let listed = all_alerts(n).await;
        let claimed = listed.iter().find(|a| a.alert_id == elsewhere).expect("listed everywhere");
        assert_eq!((claimed.state(), claimed.officer_id.as_str()), (pb::AlertState::Claimed, "officer-li"));
        assert_eq!(listed.iter().filter(|a| a.alert_id == elsewhere).count(), 1, "once");
    }
    // An alert id no node has — of a partition the cluster has (asked of its
    // owner), or of one it does not — is NOT_FOUND, not a retry for ever.
    let mut officer = pb::alerts_client::AlertsClient::new(nodes[0].channel().await);
    for id in (0..16).map(|p| format!("al-p{p}-n9-1-000001")).chain(["al-p999-n1-1-000001".to_string()]) {
        let claim = pb::ClaimAlertRequest { alert_id: id.clone(), officer_id: "officer-li".into() };
        let refused = officer.claim_alert(claim).await.expect_err("no such alert");
        assert_eq!(refused.code(), tonic::Code::NotFound, "{id}: {refused:?}");
    }
}
