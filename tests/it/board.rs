//! The board in a real browser (headless Debian chromium over chromedriver):
//! live alerts from gRPC screens, claim and resolve from the page reaching
//! the teller's WatchTransfer and the audit, station scope on pages and the
//! event stream, surviving a restart, an accessibility check (axe-core), and
//! the screenshots in docs/board/.

use crate::browser::{arrivals, element, follow, gone, js, present, Browser};
use crate::harness::{ordinary, repo, seed_case, TestServer};
use crate::trust::{alerts, audited, screening, with_token, Tokens};
use fantoccini::{Client, Locator};
use std::time::{Duration, Instant};
use transfer_guard::api::proto as pb;
use transfer_guard::auth::Role;
use transfer_guard::server::Extras;

const WAIT: Duration = Duration::from_secs(10);
const ZHONGSHAN: &str = "heshan-zhongshan-ps";
const SHAPING: &str = "heshan-shaping-ps";

fn board(server: &TestServer) -> String {
    server.board_addr.clone().expect("started with a board")
}

/// Screens the seed case (a HOLD for Zhongshan) and returns its alert id.
async fn raise(server: &TestServer, request_id: &str) -> String {
    let answer = server.screening().await.screen(seed_case(request_id)).await.unwrap().into_inner();
    assert_eq!(answer.action(), pb::Action::Hold);
    answer.alert_id
}

/// Signs in on the board's page with a signed token.
async fn sign_in(c: &Client, server: &TestServer, token: &str) {
    c.goto(&format!("{}/login", board(server))).await.unwrap();
    element(c, "#token", WAIT).await.send_keys(token).await.unwrap();
    c.find(Locator::Css("form[action='/login'] button")).await.unwrap().click().await.unwrap();
}

/// Marks the page so a test can tell it was never reloaded.
async fn mark(c: &Client) {
    js(c, "window.notReloaded = true; return true;").await;
}

async fn still_marked(c: &Client) -> bool {
    js(c, "return window.notReloaded === true;").await == serde_json::json!(true)
}

/// Waits until the row of `alert_id` is on the page; how long it took.
async fn row_appears(c: &Client, alert_id: &str) -> Duration {
    let started = Instant::now();
    element(c, &format!("#alert-{alert_id}"), WAIT).await;
    started.elapsed()
}

async fn live(c: &Client) {
    // The stream is open once the page says so.
    for _ in 0..200 {
        if js(c, "return document.getElementById('live').classList.contains('down');").await == serde_json::json!(false)
            && js(c, "return performance.now() > 300;").await == serde_json::json!(true)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screened_transfer_appears_live_on_every_open_page() {
    let server = TestServer::start_with_board(Extras::default(), false).await;
    let browser = Browser::start(2).await;
    for c in &browser.clients {
        c.goto(&board(&server)).await.unwrap();
        element(c, "#queue", WAIT).await;
        live(c).await;
        mark(c).await;
    }
    let alert_id = raise(&server, "board-live-1").await;
    for c in &browser.clients {
        let took = row_appears(c, &alert_id).await;
        println!("alert on the page {} ms after the screen's answer", took.as_millis());
        assert!(still_marked(c).await, "the row came over the live stream, not a reload");
        let row = c.find(Locator::Css(&format!("#alert-{alert_id}"))).await.unwrap().text().await.unwrap();
        assert!(row.contains("400,000.00 CNY") && row.contains(ZHONGSHAN), "{row}");
        // A held transfer counts down to its expiry.
        let left = element(c, &format!("#alert-{alert_id} .countdown"), WAIT).await.text().await.unwrap();
        assert!(left.starts_with("29:") || left.starts_with("30:"), "{left}");
        assert_eq!(arrivals(c).await.len(), 1);
    }
    // The alert's page: masked transfer, reasons, observations, history.
    let c = browser.window(0);
    c.goto(&format!("{}/alerts/{alert_id}", board(&server))).await.unwrap();
    let text = element(c, "main", WAIT).await.text().await.unwrap();
    assert!(text.contains("6217***********8777") && !text.contains("6217000099998888777"), "{text}");
    assert!(text.contains("转账用途涉及投资理财"), "{text}");
    assert!(text.contains("与陌生人通话中"), "{text}");
    assert!(text.contains("预警生成"), "{text}");
    assert!(text.contains("对方是否自称投资导师"), "the teller's questions for the typology: {text}");
    // Search finds it by the bank's request id, in English.
    c.goto(&format!("{}/lang/en?back=%2F%3Fq%3Dboard-live-1", board(&server))).await.unwrap();
    element(c, &format!("#alert-{alert_id}"), WAIT).await;
    assert!(element(c, "h1", WAIT).await.text().await.unwrap().contains("Alert queue"));
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_claims_and_blocks_from_the_page_and_the_teller_sees_it() {
    let tokens = Tokens::new();
    let server = TestServer::start_with_board(Extras { trust: tokens.trust(), ..Extras::default() }, true).await;
    let teller = with_token(&server, None, Some(tokens.for_(Role::Teller, "psbc", "t-07"))).await;
    let answer = screening(&teller).screen(seed_case("board-block")).await.unwrap().into_inner();
    assert_eq!(answer.action(), pb::Action::Hold);
    let mut watch = screening(&teller)
        .watch_transfer(pb::GetTransferRequest { request_id: "board-block".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().state(), pb::TransferState::Held);

    let browser = Browser::start(1).await;
    let c = browser.window(0);
    // Without a token the board asks for one.
    c.goto(&board(&server)).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    sign_in(c, &server, &tokens.for_(Role::Officer, ZHONGSHAN, "officer-li")).await;
    element(c, &format!("#alert-{}", answer.alert_id), WAIT).await;
    c.find(Locator::Css(&format!("#alert-{} a", answer.alert_id))).await.unwrap().click().await.unwrap();
    element(c, "#claim", WAIT).await.click().await.unwrap();
    // Claimed: the page comes back with the officer named and the resolve form
    // (the unclaimed page has a resolve form too, so wait for the claim button to go).
    gone(c, "#claim", WAIT).await;
    element(c, "#resolve", WAIT).await;
    assert!(c.source().await.unwrap().contains("officer-li"));
    c.find(Locator::Css("input[name=outcome][value=fraud_confirmed]")).await.unwrap().click().await.unwrap();
    c.find(Locator::Css("#decision-block")).await.unwrap().click().await.unwrap();
    c.find(Locator::Css("textarea[name=note]")).await.unwrap().send_keys("骗子账户，已止付").await.unwrap();
    c.find(Locator::Css("#resolve")).await.unwrap().click().await.unwrap();

    let status = tokio::time::timeout(WAIT, async {
        loop {
            let s = watch.message().await.unwrap().unwrap();
            if s.state() != pb::TransferState::Held {
                return s;
            }
        }
    })
    .await
    .expect("the teller hears the decision");
    assert_eq!((status.state(), status.officer_id.as_str()), (pb::TransferState::Blocked, "officer-li"));
    assert_eq!(status.outcome, "fraud_confirmed");
    let resolved = audited(&server, |l| l["kind"] == "alert" && l["event"] == "resolved").await;
    assert_eq!(resolved["by"], format!("officer/{ZHONGSHAN}/officer-li"));
    let claimed = audited(&server, |l| l["kind"] == "alert" && l["event"] == "claimed").await;
    assert_eq!(claimed["by"], format!("officer/{ZHONGSHAN}/officer-li"));
    // The page shows the outcome; the alert is no longer open.
    gone(c, "#resolve", WAIT).await;
    let text = element(c, "main", WAIT).await.text().await.unwrap();
    assert!(text.contains("确认诈骗") && text.contains("拦截"), "{text}");
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_never_sees_another_stations_alerts() {
    let tokens = Tokens::new();
    let server = TestServer::start_with_board(Extras { trust: tokens.trust(), ..Extras::default() }, false).await;
    let teller = with_token(&server, None, Some(tokens.for_(Role::Teller, "psbc", "t-07"))).await;
    let shaping_officer = tokens.for_(Role::Officer, SHAPING, "officer-wu");
    let browser = Browser::start(1).await;
    let c = browser.window(0);
    sign_in(c, &server, &shaping_officer).await;
    element(c, "#queue", WAIT).await;
    live(c).await;

    // Zhongshan's alert first, then Shaping's: the stream is in order, so
    // Zhongshan's would have arrived before Shaping's.
    let zhongshan = screening(&teller).screen(seed_case("scope-zhongshan")).await.unwrap().into_inner().alert_id;
    let mut shaping_case = seed_case("scope-shaping");
    shaping_case.branch_id = "psbc-heshan-shaping".into();
    let customer = shaping_case.customer.as_mut().unwrap();
    customer.customer_id = "shaping-customer".into();
    customer.last_limit_change.as_mut().unwrap().customer_id = "shaping-customer".into();
    let shaping = screening(&teller).screen(shaping_case).await.unwrap().into_inner().alert_id;
    row_appears(c, &shaping).await;
    assert!(!present(c, &format!("#alert-{zhongshan}")).await);
    assert_eq!(arrivals(c).await.len(), 1, "only Shaping's event came over the stream");
    // Nor by its page, search, the station filter, or the stream from the start.
    c.goto(&format!("{}/alerts/{zhongshan}", board(&server))).await.unwrap();
    assert!(!c.source().await.unwrap().contains("陈**"), "another station's alert page is not shown");
    c.goto(&format!("{}/?q={zhongshan}&state=any", board(&server))).await.unwrap();
    assert!(!present(c, &format!("#alert-{zhongshan}")).await);
    c.goto(&format!("{}/?station={ZHONGSHAN}&state=any", board(&server))).await.unwrap();
    element(c, &format!("#alert-{shaping}"), WAIT).await;
    assert!(!present(c, &format!("#alert-{zhongshan}")).await);
    let events = js(
        c,
        "return (async () => { const r = await fetch('/events?cursor=0'); const reader = r.body.getReader(); let text = '';
         const stop = Date.now() + 1500;
         while (Date.now() < stop) {
           const next = await Promise.race([reader.read(), new Promise(ok => setTimeout(() => ok({}), 300))]);
           if (next.value) text += new TextDecoder().decode(next.value);
           if (next.done) break;
         }
         reader.cancel(); return text; })();",
    )
    .await;
    let events = events.as_str().unwrap();
    assert!(events.contains(&shaping) && !events.contains(&zhongshan), "{events}");
    // Acting on it is refused and audited.
    let officer_channel = with_token(&server, None, Some(shaping_officer.clone())).await;
    let denied = alerts(&officer_channel)
        .claim_alert(pb::ClaimAlertRequest { alert_id: zhongshan.clone(), officer_id: "officer-wu".into() })
        .await;
    assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);
    // An analyst is not an officer: the queue refuses them, the rules page opens.
    let analyst = tokens.for_(Role::Analyst, "", "zhang");
    c.find(Locator::Css("form[action='/logout'] button")).await.unwrap().click().await.unwrap();
    sign_in(c, &server, &analyst).await;
    element(c, "#version", WAIT).await;
    c.goto(&board(&server)).await.unwrap();
    assert!(element(c, "main", WAIT).await.text().await.unwrap().contains("board:queue needs the role officer"));
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_survives_a_restart_and_misses_nothing() {
    let server = TestServer::start_with_board(Extras::default(), true).await;
    let browser = Browser::start(1).await;
    let c = browser.window(0);
    c.goto(&board(&server)).await.unwrap();
    element(c, "#queue", WAIT).await;
    live(c).await;
    mark(c).await;
    let first = raise(&server, "restart-1").await;
    row_appears(c, &first).await;

    let server = server.restart(Extras::default()).await;
    // Before the page reconnects (it retries after a second), a new alert and
    // a claim: it must get both from the log when it does.
    let second = raise(&server, "restart-2").await;
    server.guard.claim_alert(&first, "officer-li", &transfer_guard::auth::Caller::Open).unwrap();
    row_appears(c, &second).await;
    let claimed = tokio::time::timeout(WAIT, async {
        loop {
            let state = js(c, &format!("return document.getElementById('alert-{first}').dataset.state;")).await;
            if state == serde_json::json!("claimed") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(claimed.is_ok(), "the claim made while the page was away reached it");
    assert!(still_marked(c).await, "the page was not reloaded");
    let got = arrivals(c).await;
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(got, unique, "no event came twice");
    assert_eq!(got.len(), 3, "raised, raised, claimed: {got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    browser.close().await;
    server.stop().await;
}

/// axe-core, the accessibility engine: no serious or critical violations of
/// WCAG 2 A/AA on the queue, an alert's page and the rules page, in both languages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_pass_an_accessibility_check() {
    let axe_path = std::env::var("TRANSFER_GUARD_AXE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/browser/node_modules/axe-core/axe.min.js"));
    let axe = std::fs::read_to_string(&axe_path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/test installs axe-core)", axe_path.display()));
    let server = TestServer::start_with_board(Extras::default(), false).await;
    // A queue with an escalated alert, a claimed one and a new one.
    let escalated = raise(&server, "a11y-1").await;
    let claimed = raise(&server, "a11y-2").await;
    server.clock.advance(11 * 60);
    let deadline = Instant::now() + WAIT;
    while server.guard.alerts().get(&escalated).unwrap().escalation_station_id.is_none() {
        assert!(Instant::now() < deadline, "the tick escalates an alert nobody claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.guard.claim_alert(&claimed, "officer-li", &transfer_guard::auth::Caller::Open).unwrap();
    // The server's clock is ahead now: so are the new requests' times.
    let now = Some(pbjson_types::Timestamp { seconds: server.guard.now(), nanos: 0 });
    let fresh = pb::ScreenRequest { requested_at: now, ..seed_case("a11y-3") };
    let alert_id = server.screening().await.screen(fresh).await.unwrap().into_inner().alert_id;
    let plain = pb::ScreenRequest { requested_at: now, ..ordinary("a11y-4", "c-2", "6222000011112222") };
    server.screening().await.screen(plain).await.unwrap();
    let browser = Browser::start(1).await;
    let c = browser.window(0);
    let shots = std::env::var("TRANSFER_GUARD_SCREENSHOTS").ok();
    for lang in ["zh", "en"] {
        for (name, path) in
            [("queue", "/".to_string()), ("alert", format!("/alerts/{alert_id}")), ("rules", "/rules".into())]
        {
            c.goto(&format!("{}/lang/{lang}?back={}", board(&server), path.replace('/', "%2F"))).await.unwrap();
            element(c, "main", WAIT).await;
            let script = format!(
                "{axe}\nreturn axe.run(document, {{ runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] }})
                   .then(r => r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                   .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).join(', ')));"
            );
            let violations = js(c, &script).await;
            assert_eq!(violations, serde_json::json!([]), "{name} in {lang}");
            if let Some(dir) = &shots {
                let png = c.screenshot().await.unwrap();
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(format!("{dir}/{name}-{lang}.png"), png).unwrap();
                if name == "alert" {
                    // Below the fold: the reasons, their typology and the teller's questions.
                    js(c, "document.getElementById('h-reasons').scrollIntoView(); return true;").await;
                    let png = c.screenshot().await.unwrap();
                    std::fs::write(format!("{dir}/alert-reasons-{lang}.png"), png).unwrap();
                }
            }
        }
    }
    // Usable by keyboard: Tab from the top reaches the skip link first, which lands on main.
    c.goto(&board(&server)).await.unwrap();
    element(c, "#queue", WAIT).await;
    let first = js(c, "document.activeElement.blur(); return true;").await;
    assert_eq!(first, serde_json::json!(true));
    c.active_element().await.unwrap().send_keys("\u{E004}").await.unwrap();
    let focused = js(c, "return document.activeElement.className;").await;
    assert_eq!(focused, serde_json::json!("skip"));
    browser.close().await;
    server.stop().await;
}

/// Filters by state, station and day, search by alert or request id, and
/// paging through the older alerts, as an officer of the whole centre would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_filters_searches_and_pages() {
    let server = TestServer::start_with_board(Extras::default(), false).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(raise(&server, &format!("page-{i}")).await);
    }
    let mut shaping_case = seed_case("page-shaping");
    shaping_case.branch_id = "psbc-heshan-shaping".into();
    let shaping = server.screening().await.screen(shaping_case).await.unwrap().into_inner().alert_id;
    server.guard.claim_alert(&ids[0], "officer-li", &transfer_guard::auth::Caller::Open).unwrap();
    let browser = Browser::start(1).await;
    let c = browser.window(0);
    let rows = |c: &Client| {
        let c = c.clone();
        async move {
            let v = js(&c, "return [...document.querySelectorAll('#queue tbody tr')].map(r => r.dataset.alert);").await;
            v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    // Station filter from the form.
    c.goto(&board(&server)).await.unwrap();
    element(c, "select[name=station] option[value=heshan-shaping-ps]", WAIT).await.click().await.unwrap();
    follow(c, "form.filters button", WAIT).await;
    element(c, &format!("#alert-{shaping}"), WAIT).await;
    assert_eq!(rows(c).await, vec![shaping.clone()]);
    // State: only the claimed one.
    c.goto(&format!("{}/?state=claimed", board(&server))).await.unwrap();
    element(c, "#queue", WAIT).await;
    assert_eq!(rows(c).await, vec![ids[0].clone()]);
    // Day: today (the branches' time) has all four; a day long past has none.
    let today = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+8)).date();
    c.goto(&format!("{}/?state=any&from={today}&to={today}", board(&server))).await.unwrap();
    element(c, "#queue", WAIT).await;
    assert_eq!(rows(c).await.len(), 4);
    c.goto(&format!("{}/?state=any&to=2020-01-01", board(&server))).await.unwrap();
    assert!(element(c, "#empty", WAIT).await.is_displayed().await.unwrap());
    // A bad filter is named, not a crash.
    c.goto(&format!("{}/?from=yesterday", board(&server))).await.unwrap();
    assert!(element(c, ".error", WAIT).await.text().await.unwrap().contains("from: `yesterday` is not YYYY-MM-DD"));
    // Search by the bank's request id, whatever the state filter.
    c.goto(&format!("{}/?q=page-1&state=resolved", board(&server))).await.unwrap();
    element(c, "#queue", WAIT).await;
    assert_eq!(rows(c).await, vec![ids[1].clone()]);
    // Paging: two a page, newest first, then the rest; back to the newest.
    c.goto(&format!("{}/?state=any&limit=2", board(&server))).await.unwrap();
    element(c, "#queue", WAIT).await;
    let mut seen = rows(c).await;
    assert_eq!(seen.len(), 2);
    follow(c, "a[rel=next]", WAIT).await;
    element(c, "#queue", WAIT).await;
    seen.extend(rows(c).await);
    assert!(!present(c, "a[rel=next]").await, "two pages hold four alerts");
    let mut all = ids.clone();
    all.push(shaping);
    all.sort();
    seen.sort();
    assert_eq!(seen, all, "every alert once across the pages");
    browser.close().await;
    server.stop().await;
}

/// The board is for people: when its port is taken, `serve` still screens, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_board_port_does_not_stop_screening() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let extra = ["--board-listen".to_string(), format!("127.0.0.1:{port}"), "--durability".into(), "none".into()];
    let server = crate::harness::ServeProcess::start(&data.path().join("data"), "serve.log", &extra).await;
    let mut teller = pb::screening_client::ScreeningClient::new(server.channel().await);
    let answer = teller.screen(seed_case("taken-board")).await.unwrap().into_inner();
    assert_eq!(answer.action(), pb::Action::Hold);
    assert!(server.logs().contains("no board"), "{}", server.logs());
    drop(taken);
}
