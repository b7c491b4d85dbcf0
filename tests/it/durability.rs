//! Durability with a real process and a real crash: `transfer-guard serve`
//! is killed with SIGKILL at random moments under concurrent screens (HOLDs
//! included) and customer events, restarted on the same data dir, and what it
//! acknowledged before each crash must all be there after it. Also: a torn
//! journal tail is dropped and the service starts with everything before it.

use crate::harness::{ordinary, seed_case, unique_nats, NatsServer, ServeProcess};
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;
use transfer_guard::api::proto as pb;
use transfer_guard::auth::Caller;

const STATION: &str = "heshan-zhongshan-ps";
const CRASHES: usize = 5;

/// What the server acknowledged before a crash.
#[derive(Default)]
struct Acked {
    /// request → the answer it got.
    screens: Vec<(pb::ScreenRequest, pb::ScreenResponse)>,
    /// (customer, payee account) made known by an answered ALLOW/WARN or an acknowledged event.
    known_payees: Vec<(String, String)>,
    /// Acknowledged events, to retry.
    events: Vec<pb::RecordEventRequest>,
    /// Alerts whose claim was acknowledged.
    claimed: Vec<String>,
    /// Watchlist accounts whose upsert was acknowledged.
    watchlisted: Vec<String>,
}

impl Acked {
    fn extend(&mut self, other: Acked) {
        self.screens.extend(other.screens);
        self.known_payees.extend(other.known_payees);
        self.events.extend(other.events);
        self.claimed.extend(other.claimed);
        self.watchlisted.extend(other.watchlisted);
    }
}

fn payee_added(event_id: &str, customer: &str, account: &str) -> pb::RecordEventRequest {
    pb::RecordEventRequest {
        bank_id: String::new(),
        event_id: event_id.into(),
        event: Some(pb::record_event_request::Event::PayeeAdded(pb::PayeeAdded {
            customer_id: customer.into(),
            payee: Some(pb::Payee { account: account.into(), name: "李四".into(), bank_code: "icbc".into() }),
            added_at: Some(crate::harness::now()),
        })),
    }
}

/// One teller: screens and events until the server dies under it.
async fn teller(channel: Channel, round: usize, worker: usize, seed: u64, acked: Arc<Mutex<Acked>>) {
    let mut screening = pb::screening_client::ScreeningClient::new(channel.clone());
    let mut alerts = pb::alerts_client::AlertsClient::new(channel.clone());
    let mut watchlist = pb::watchlist_client::WatchlistClient::new(channel);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0.. {
        // Tellers pause between customers; the crash lands mid-request or between them.
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..15))).await;
        let tag = format!("r{round}-w{worker}-{i}");
        let customer = format!("crash-customer-{tag}");
        let account = format!("62220200{:08}", rng.random_range(0..100_000_000u64));
        let pick = rng.random_range(0..10);
        if pick < 3 {
            let request = seed_case(&format!("crash-hold-{tag}"));
            let r = match screening.screen(request.clone()).await {
                Ok(r) => r.into_inner(),
                Err(_) => return,
            };
            let alert_id = r.alert_id.clone();
            acked.lock().unwrap().screens.push((request, r));
            if rng.random_bool(0.5) {
                let claim = pb::ClaimAlertRequest { alert_id: alert_id.clone(), officer_id: "officer-li".into() };
                match alerts.claim_alert(claim).await {
                    Ok(_) => acked.lock().unwrap().claimed.push(alert_id),
                    Err(_) => return,
                }
            }
        } else if pick < 7 {
            let request = ordinary(&format!("crash-rent-{tag}"), &customer, &account);
            match screening.screen(request.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let mut a = acked.lock().unwrap();
                    if r.action == pb::Action::Allow as i32 || r.action == pb::Action::Warn as i32 {
                        a.known_payees.push((customer, account));
                    }
                    a.screens.push((request, r));
                }
                Err(_) => return,
            }
        } else if pick < 9 {
            let event = payee_added(&format!("crash-event-{tag}"), &customer, &account);
            match screening.record_event(event.clone()).await {
                Ok(_) => {
                    let mut a = acked.lock().unwrap();
                    a.known_payees.push((customer, account));
                    a.events.push(event);
                }
                Err(_) => return,
            }
        } else {
            let entry = pb::WatchlistEntry {
                account: format!("6230{:012}", rng.random_range(0..1_000_000_000_000u64)),
                issuer_station_id: STATION.into(),
                reason: "mule account".into(),
                ..Default::default()
            };
            match watchlist.upsert_entry(entry.clone()).await {
                Ok(_) => acked.lock().unwrap().watchlisted.push(entry.account),
                Err(_) => return,
            }
        }
    }
}

/// Every alert event a watcher gets from cursor 0, until the stream is quiet.
async fn watch_all(channel: Channel) -> Vec<pb::AlertEvent> {
    let mut alerts = pb::alerts_client::AlertsClient::new(channel);
    let mut stream = alerts
        .watch_alerts(pb::WatchAlertsRequest { station_ids: vec![STATION.into()], after_cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(700), stream.message()).await {
        got.push(e);
    }
    got
}

/// Whether `customer` paying `account` a large sum now still counts as a new payee.
async fn pays_new_payee(rules: &mut pb::rules_client::RulesClient<Channel>, c: &str, a: &str) -> bool {
    let mut probe = ordinary("probe", c, a);
    probe.amount_minor = 2_500_000;
    let r = rules.dry_run(probe).await.unwrap().into_inner();
    r.hits.iter().any(|h| h.rule_id == "new_payee_large")
}

async fn check_after_restart(server: &ServeProcess, acked: &Acked, round: usize) {
    let channel = server.channel().await;
    let mut screening = pb::screening_client::ScreeningClient::new(channel.clone());
    // Retried requests get the answers they got before the crash.
    for (request, before) in &acked.screens {
        let again = screening.screen(request.clone()).await.unwrap().into_inner();
        assert_eq!(
            (again.action, again.score, &again.alert_id, &again.station_id),
            (before.action, before.score, &before.alert_id, &before.station_id),
            "round {round}: retry of {} answered differently after the crash",
            request.request_id
        );
    }
    for event in &acked.events {
        let again = screening.record_event(event.clone()).await.unwrap().into_inner();
        assert!(again.duplicate, "round {round}: event {} was forgotten", event.event_id);
    }
    // Payees paid (or added) before the crash are not new after it.
    let mut rules = pb::rules_client::RulesClient::new(channel.clone());
    for (customer, account) in &acked.known_payees {
        assert!(
            !pays_new_payee(&mut rules, customer, account).await,
            "round {round}: {customer} paid {account} before the crash, yet it is new again"
        );
    }
    // A customer who never paid it still sees it as new: the probe can fail.
    assert!(pays_new_payee(&mut rules, "crash-nobody", "6222020099999999").await);

    // Every returned alert id is in the embedded queue exactly once.
    let returned: HashSet<&str> =
        acked.screens.iter().map(|(_, r)| r.alert_id.as_str()).filter(|id| !id.is_empty()).collect();
    let mut alerts = pb::alerts_client::AlertsClient::new(channel.clone());
    let listed = alerts
        .list_alerts(pb::ListAlertsRequest { station_ids: vec![STATION.into()], limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for a in &listed {
        *count.entry(a.alert_id.as_str()).or_default() += 1;
    }
    for id in &returned {
        assert_eq!(count.get(id), Some(&1), "round {round}: alert {id} listed {:?} times", count.get(id));
    }
    // Acknowledged claims and watchlist entries are still there.
    for a in listed.iter().filter(|a| acked.claimed.contains(&a.alert_id)) {
        assert_eq!(a.state, pb::AlertState::Claimed as i32, "round {round}: claim of {} lost", a.alert_id);
    }
    let entries = pb::watchlist_client::WatchlistClient::new(channel.clone())
        .list_entries(pb::ListEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries;
    let on_list: HashSet<&str> = entries.iter().map(|e| e.account.as_str()).collect();
    for account in &acked.watchlisted {
        assert!(on_list.contains(account.as_str()), "round {round}: watchlist entry {account} lost");
    }
    let raised = raised_counts(&watch_all(channel).await);
    for id in &returned {
        assert_eq!(
            raised.get(*id),
            Some(&1),
            "round {round}: alert {id} raised {:?} times on the watch stream",
            raised.get(*id)
        );
    }
    assert!(raised.values().all(|n| *n == 1), "round {round}: an alert was raised twice");
}

fn raised_counts(events: &[pb::AlertEvent]) -> HashMap<String, usize> {
    let mut raised = HashMap::new();
    for e in events.iter().filter(|e| e.kind == "raised") {
        *raised.entry(e.alert.as_ref().unwrap().alert_id.clone()).or_default() += 1;
    }
    raised
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_kill_9_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let nats_server = NatsServer::start_fresh();
    let nats = unique_nats(&nats_server.url());
    let flags = vec![
        "--durability".to_string(),
        "sync".into(),
        "--nats-url".into(),
        nats.url.clone(),
        "--nats-stream".into(),
        nats.stream.clone(),
        "--nats-subject-prefix".into(),
        nats.subject_prefix.clone(),
    ];
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut all = Acked::default();
    for round in 0..CRASHES {
        let mut server = ServeProcess::start(&data, &format!("serve-{round}.log"), &flags).await;
        let channel = server.channel().await;
        let acked = Arc::new(Mutex::new(Acked::default()));
        let tellers: Vec<_> =
            (0..6).map(|w| tokio::spawn(teller(channel.clone(), round, w, rng.random(), acked.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        // On a slow machine, crash only once something was acknowledged.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().screens.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill9();
        for t in tellers {
            tokio::time::timeout(Duration::from_secs(20), t).await.expect("tellers stop when the server dies").unwrap();
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(!acked.screens.is_empty(), "round {round}: nothing was screened before the crash");
        println!(
            "round {round}: {} screens, {} claims, {} events, {} watchlist entries acknowledged before SIGKILL",
            acked.screens.len(),
            acked.claimed.len(),
            acked.events.len(),
            acked.watchlisted.len()
        );
        all.extend(acked);

        let server = ServeProcess::start(&data, &format!("serve-{round}-after.log"), &flags).await;
        check_after_restart(&server, &all, round).await;
        drop(server);
    }
    // NATS got every returned alert exactly once, across all the crashes.
    let returned: HashSet<&str> =
        all.screens.iter().map(|(_, r)| r.alert_id.as_str()).filter(|id| !id.is_empty()).collect();
    let on_nats = crate::nats::read_as(&nats, STATION, "crash-check", returned.len()).await;
    let raised = raised_counts(&on_nats);
    for id in &returned {
        assert_eq!(raised.get(*id), Some(&1), "alert {id} arrived {:?} times on NATS", raised.get(*id));
    }
    assert!(raised.values().all(|n| *n == 1), "an alert arrived twice on NATS");
    println!(
        "{} screens, {} alerts, {} events acknowledged over {CRASHES} crashes",
        all.screens.len(),
        returned.len(),
        all.events.len()
    );
    if let Ok(client) = async_nats::connect(nats.url.as_str()).await {
        let _ = async_nats::jetstream::new(client).delete_stream(&nats.stream).await;
    }
}

/// The newest journal file and where its data ends (fjall preallocates the
/// file, so the tail is zeros).
fn journal_tail(store: &Path) -> (std::path::PathBuf, usize) {
    let journal = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max_by_key(|p| p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0))
        .expect("a journal file");
    let bytes = std::fs::read(&journal).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    (journal, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_is_dropped_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = vec!["--durability".to_string(), "sync".into()];
    let mut server = ServeProcess::start(&data, "torn-0.log", &flags).await;
    let mut screening = pb::screening_client::ScreeningClient::new(server.channel().await);
    let mut answers = Vec::new();
    for i in 0..20 {
        let request = if i % 4 == 0 {
            seed_case(&format!("torn-hold-{i}"))
        } else {
            ordinary(&format!("torn-rent-{i}"), &format!("torn-customer-{i}"), &format!("62220200000{i:05}"))
        };
        answers.push((request.clone(), screening.screen(request).await.unwrap().into_inner()));
    }
    server.kill9();

    // A write torn by the crash: part of a batch after the last complete one.
    let (journal, end) = journal_tail(&data.join("store"));
    let mut bytes = std::fs::read(&journal).unwrap();
    for (i, b) in bytes[end..end + 300].iter_mut().enumerate() {
        *b = (i * 37 % 251) as u8 | 1;
    }
    std::fs::write(&journal, &bytes).unwrap();

    let server = ServeProcess::start(&data, "torn-1.log", &flags).await;
    let mut screening = pb::screening_client::ScreeningClient::new(server.channel().await);
    for (request, before) in &answers {
        let again = screening.screen(request.clone()).await.unwrap().into_inner();
        assert_eq!((again.action, &again.alert_id), (before.action, &before.alert_id), "{}", request.request_id);
    }
    assert!(server.logs().contains("state recovered from the store"), "{}", server.logs());
    drop(server);

    // A tail cut short inside the last batch: that batch is lost (a disk that
    // lied about fsync), the ones before it stay, and the service starts.
    let (journal, end) = journal_tail(&data.join("store"));
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.truncate(end - 10);
    std::fs::write(&journal, &bytes).unwrap();
    let server = ServeProcess::start(&data, "torn-2.log", &flags).await;
    let mut screening = pb::screening_client::ScreeningClient::new(server.channel().await);
    for (request, before) in &answers[..answers.len() - 1] {
        let status = screening.get_transfer(pb::GetTransferRequest { request_id: request.request_id.clone() }).await;
        let status = status.unwrap_or_else(|e| panic!("{} lost: {e}", request.request_id)).into_inner();
        assert_eq!(status.alert_id, before.alert_id);
    }
}

/// In one process: a HOLD outlives a restart still held, is decided after it,
/// and the decision outlives the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_survives_a_restart_and_its_decision_the_next() {
    use transfer_guard::alerts::{HoldDecision, Outcome};
    use transfer_guard::model::Transfer;
    use transfer_guard::service::{TransferGuard, TransferState};
    use transfer_guard::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        TransferGuard::open(&crate::harness::rules_dir()).unwrap().with_store(store).unwrap()
    };
    let held = Transfer::try_from(&seed_case("restart-hold")).unwrap();
    let guard = open();
    let answer = guard.screen(&held, 7, &Caller::Open).unwrap();
    guard.committed().await.unwrap();
    let alert_id = answer.alert_id.clone().expect("a HOLD raises an alert");
    drop(guard);

    let guard = open();
    assert_eq!((guard.recovered().held, guard.recovered().alerts), (1, 1));
    assert_eq!(guard.transfer_status("restart-hold").unwrap().state, TransferState::Held);
    assert_eq!(guard.screen(&held, 7, &Caller::Open).unwrap(), answer, "the retry gets the first answer");
    guard
        .resolve_alert(
            &alert_id,
            "officer-li",
            Outcome::CustomerProceeded,
            Some(HoldDecision::Release),
            "",
            &Caller::Open,
        )
        .unwrap();
    guard.committed().await.unwrap();
    drop(guard);

    let guard = open();
    assert_eq!(guard.transfer_status("restart-hold").unwrap().state, TransferState::Released);
    let alert = guard.alerts().get(&alert_id).unwrap();
    assert_eq!((alert.outcome, alert.hold_decision), (Some(Outcome::CustomerProceeded), Some(HoldDecision::Release)));
    // Released, so counted: the payee is no longer new for this customer.
    let again = Transfer::try_from(&seed_case("restart-after")).unwrap();
    let hits = guard.dry_run(&again).unwrap().decision.hits;
    assert!(!hits.iter().any(|h| h.rule_id() == "new_payee_large"), "{hits:?}");
    let first = guard
        .dry_run(
            &Transfer::try_from(&seed_case("x"))
                .map(|mut t| {
                    t.customer.customer_id = "someone-else".into();
                    t
                })
                .unwrap(),
        )
        .unwrap();
    assert!(first.decision.hits.iter().any(|h| h.rule_id() == "new_payee_large"), "the probe can fail");
}

/// Under a steady stream of alerts, resolved ones (and old events) leave memory
/// and the store after their retention: the book, and what a restart reads,
/// stay the same size day after day. Open alerts stay whatever their age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_alerts_leave_memory_and_the_store_after_their_retention() {
    use transfer_guard::alerts::{HoldDecision, Outcome};
    use transfer_guard::app::{build, Setup};
    use transfer_guard::clock::AdjustableClock;
    use transfer_guard::model::Transfer;
    use transfer_guard::store::Durability;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AdjustableClock::new());
    let setup = Setup {
        alert_retention_secs: 3600,
        ..Setup::new(crate::harness::rules_dir(), dir.path(), Durability::Sync).with_clock(clock.clone())
    };
    let guard = build(&setup).unwrap().guard;
    let open = guard.screen(&Transfer::try_from(&seed_case("ret-open")).unwrap(), 1, &Caller::Open).unwrap();
    let open_id = open.alert_id.expect("a HOLD raises an alert");
    let mut sizes = Vec::new();
    for day in 0..5 {
        for i in 0..20 {
            let mut t = Transfer::try_from(&seed_case(&format!("ret-{day}-{i}"))).unwrap();
            t.requested_at = guard.now();
            let answer = guard.screen(&t, 2, &Caller::Open).unwrap();
            let id = answer.alert_id.expect("a HOLD raises an alert");
            guard
                .resolve_alert(&id, "officer-li", Outcome::Dissuaded, Some(HoldDecision::Block), "", &Caller::Open)
                .unwrap();
        }
        guard.committed().await.unwrap();
        assert_eq!(guard.alerts().len(), 21, "day {day}: resolved alerts stay within their retention");
        clock.advance(2 * 3600);
        guard.prune(guard.now());
        guard.committed().await.unwrap();
        sizes.push((guard.alerts().len(), guard.alerts().retained_events()));
    }
    assert!(sizes.iter().all(|s| *s == (1, 0)), "flat, day after day: {sizes:?}");
    assert!(guard.alerts().get(&open_id).is_some(), "an open alert stays whatever its age");
    drop(guard);

    let guard = build(&setup).unwrap().guard;
    let r = guard.recovered();
    assert_eq!((r.alerts, r.alert_events), (1, 0), "a restart reads only what is retained: {r:?}");
    assert!(guard.alerts().get(&open_id).is_some());
}

/// The store's encoding is pinned: `tests/golden/store-v1.json` holds one real
/// record of every kind, written by a real service; each must decode into
/// today's types and encode back byte for byte. Renaming a field of a stored
/// type fails here instead of silently orphaning what is on disk. To re-make
/// the file after a deliberate format change (and a FORMAT_VERSION bump):
/// `TRANSFER_GUARD_BLESS=1 cargo test --test it golden`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_records_of_every_kind_decode_and_encode_byte_for_byte() {
    use transfer_guard::store::{reencode, Store};
    let path = crate::harness::repo().join("tests/golden/store-v1.json");
    if std::env::var_os("TRANSFER_GUARD_BLESS").is_some() || !path.exists() {
        let dir = tempfile::tempdir().unwrap();
        write_every_kind_of_record(dir.path()).await;
        let store = Store::open(&dir.path().join("store")).unwrap();
        let records: Vec<serde_json::Value> = store
            .raw()
            .unwrap()
            .into_iter()
            .map(|(space, key, value)| {
                let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
                serde_json::json!({ "space": space, "key": key, "value": String::from_utf8(value).unwrap() })
            })
            .collect();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(&records).unwrap() + "\n").unwrap();
    }
    let golden: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for r in &golden {
        let space = r["space"].as_str().unwrap();
        let hex = r["key"].as_str().unwrap();
        let key: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let value = r["value"].as_str().unwrap();
        let again = reencode(space, &key, value.as_bytes()).unwrap_or_else(|e| panic!("{space}: {e}"));
        assert_eq!(String::from_utf8(again).unwrap(), value, "{space} record re-encodes differently");
        kinds.insert(space.to_string());
    }
    let all = ["alert_events", "alerts", "customers", "events", "meta", "transfers", "watchlist"];
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), all, "one record of every kind");
}

/// A real service writes one record of every kind into `data/store`.
async fn write_every_kind_of_record(data: &std::path::Path) {
    use transfer_guard::alerts::{HoldDecision, Outcome};
    use transfer_guard::app::{build, Setup};
    use transfer_guard::model::{LimitChange, Payee, Transfer};
    use transfer_guard::service::CustomerEvent;
    use transfer_guard::state::WatchEntry;
    use transfer_guard::store::Durability;
    let guard = build(&Setup::new(crate::harness::rules_dir(), data, Durability::Sync)).unwrap().guard;
    let held = guard.screen(&Transfer::try_from(&seed_case("golden-hold")).unwrap(), 1, &Caller::Open).unwrap();
    guard
        .screen(
            &Transfer::try_from(&ordinary("golden-rent", "customer-g", "6222020000008002")).unwrap(),
            2,
            &Caller::Open,
        )
        .unwrap();
    let payee = Payee { account: "6222020000008003".into(), name: "张三".into(), bank_code: "icbc".into() };
    let added = CustomerEvent::PayeeAdded { customer_id: "customer-g".into(), payee, added_at: guard.now() };
    guard.record_event("golden-event", 3, added).unwrap();
    let change =
        LimitChange { old_limit: 5_000_000, new_limit: 20_000_000, is_maximum: false, changed_at: guard.now() };
    guard
        .record_event("golden-limit", 4, CustomerEvent::LimitChanged { customer_id: "customer-g".into(), change })
        .unwrap();
    guard.watchlist_upsert(
        WatchEntry {
            account: "6222000055556666".into(),
            station_id: "heshan-zhongshan-ps".into(),
            reason: "涉诈收款账户".into(),
            added_at: 0,
            expires_at: None,
        },
        &Caller::Open,
    );
    let alert_id = held.alert_id.unwrap();
    guard.claim_alert(&alert_id, "officer-li", &Caller::Open).unwrap();
    guard
        .resolve_alert(
            &alert_id,
            "officer-li",
            Outcome::Dissuaded,
            Some(HoldDecision::Block),
            "劝阻成功",
            &Caller::Open,
        )
        .unwrap();
    guard.committed().await.unwrap();
}

/// A store written by a newer format version is refused, saying so, and left untouched.
#[test]
fn a_store_from_a_newer_format_is_refused() {
    use transfer_guard::store::{Space, Store, StoreError, FORMAT_VERSION};
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.put(Space::Meta, b"format", Some(&(FORMAT_VERSION + 1)));
        store.flush().unwrap();
    }
    match Store::open(dir.path()) {
        Err(e @ StoreError::NewerFormat { .. }) => {
            assert!(e.to_string().contains(&format!("format {}", FORMAT_VERSION + 1)), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a newer store was opened"),
    }
}

/// A format-1 store kept transfers under their request id: the service
/// re-keys them when it opens the store, and they answer as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_store_has_its_transfers_rekeyed_at_open() {
    use transfer_guard::app::{build, Setup};
    use transfer_guard::model::Transfer;
    use transfer_guard::service::TransferState;
    use transfer_guard::store::{Durability, Space, Store};
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(crate::harness::rules_dir(), dir.path(), Durability::Sync);
    let held_id = {
        let guard = build(&setup).unwrap().guard;
        let held = guard.screen(&Transfer::try_from(&seed_case("v1-hold")).unwrap(), 7, &Caller::Open).unwrap();
        guard.committed().await.unwrap();
        held.request_id
    };
    {
        // Write it back the way format 1 did.
        let store = Store::open(&dir.path().join("store")).unwrap();
        let (_, key, value) =
            store.raw().unwrap().into_iter().find(|(space, _, _)| *space == "transfers").expect("a stored transfer");
        assert_eq!(key.len(), 16, "format 2 keys a transfer by its hash");
        let value: serde_json::Value = serde_json::from_slice(&value).unwrap();
        store.put(Space::Transfers, &key, None::<&()>);
        store.put(Space::Transfers, held_id.as_bytes(), Some(&value));
        store.put(Space::Meta, b"format", Some(&1u32));
        store.flush().unwrap();
    }
    let guard = build(&setup).unwrap().guard;
    let status = guard.transfer_status(&held_id).unwrap();
    assert_eq!(status.state, TransferState::Held, "{status:?}");
    assert!(status.hold_expires_at.is_some());
    let again = guard.screen(&Transfer::try_from(&seed_case("v1-hold")).unwrap(), 7, &Caller::Open).unwrap();
    assert_eq!(again.alert_id, status.alert_id, "the retry gets the same answer");
    guard.committed().await.unwrap();
    drop(guard);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let keys: Vec<Vec<u8>> =
        store.raw().unwrap().into_iter().filter(|(space, _, _)| *space == "transfers").map(|(_, k, _)| k).collect();
    assert_eq!(keys.len(), 1, "one record, re-keyed: {keys:?}");
    assert_eq!(keys[0].len(), 16);
}
