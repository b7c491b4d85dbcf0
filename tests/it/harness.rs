//! What every integration test needs: the real server on 127.0.0.1:0 with a
//! temp data dir, real tonic clients, the built binary, rules folders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use transfer_guard::api::proto as pb;
use transfer_guard::app::Setup;
use transfer_guard::clock::AdjustableClock;
use transfer_guard::delivery::NatsConfig;
use transfer_guard::server::Extras;
use transfer_guard::service::{wall_clock, Approval, TransferGuard};
use transfer_guard::store::Durability;
use transfer_guard::store::Store;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn rules_dir() -> PathBuf {
    repo().join("rules")
}

/// Runs the real `transfer-guard` binary.
pub fn transfer_guard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_transfer-guard"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run transfer-guard")
}

/// A temp copy of the shipped rules folder, to change on purpose.
pub fn rules_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&rules_dir(), dir.path());
    dir
}

/// Replaces `from` with `to` in a file of a rules folder.
pub fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no `{from}`");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The real server, in-process on an ephemeral loopback port.
pub struct TestServer {
    pub addr: String,
    /// The server's clock: real time, advanced by tests of expiry and escalation.
    pub clock: Arc<AdjustableClock>,
    pub metrics_addr: String,
    /// The web board's address (`http://127.0.0.1:PORT`), when started with one.
    pub board_addr: Option<String>,
    pub guard: Arc<TransferGuard>,
    pub rules: tempfile::TempDir,
    /// The data dir; the audit trail is `audit.jsonl` in it.
    pub data: tempfile::TempDir,
    /// The durable store, when started durable (its commits can be stalled).
    pub store: Option<Arc<Store>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts on a copy of the shipped rules, after `prepare` edits the copy.
    pub async fn start_with(prepare: impl FnOnce(&Path)) -> TestServer {
        TestServer::start_full(prepare, None, false).await
    }

    /// Also publishing alert events to NATS when `nats` is set, and serving
    /// `/metrics` (its address in `metrics_addr`).
    pub async fn start_full(prepare: impl FnOnce(&Path), nats: Option<NatsConfig>, watch_rules: bool) -> TestServer {
        TestServer::start_opts(prepare, Extras { nats, watch_rules, ..Extras::default() }, false).await
    }

    /// The shipped rules, with a durable store (`--durability sync`) in the data dir.
    pub async fn start_durable() -> TestServer {
        TestServer::start_opts(|_| {}, Extras::default(), true).await
    }

    /// The shipped rules, holding live requests' times to `max_clock_skew`.
    pub async fn start_with_clock_skew(max_clock_skew: std::time::Duration) -> TestServer {
        TestServer::start_opts(|_| {}, Extras { max_clock_skew, ..Extras::default() }, false).await
    }

    /// The shipped rules with `extras` (sinks, clock skew), durable or not.
    pub async fn start_with_extras(extras: Extras, durable: bool) -> TestServer {
        TestServer::start_opts(|_| {}, extras, durable).await
    }

    /// `extras` (trust, TLS, limits) with rules going live per `approval`.
    pub async fn start_trusted(extras: Extras, durable: bool, approval: Approval) -> TestServer {
        TestServer::start_setup(|_| {}, extras, durable, approval).await
    }

    /// `extras` as given, but for the metrics listener, which is always bound here.
    async fn start_opts(prepare: impl FnOnce(&Path), extras: Extras, durable: bool) -> TestServer {
        TestServer::start_setup(prepare, extras, durable, Approval::Automatic).await
    }

    async fn start_setup(prepare: impl FnOnce(&Path), extras: Extras, durable: bool, approval: Approval) -> TestServer {
        let rules = rules_copy();
        prepare(rules.path());
        TestServer::start_in(rules, tempfile::tempdir().unwrap(), extras, durable, approval).await
    }

    /// With the web board on a free port too (`board_addr`).
    pub async fn start_with_board(extras: Extras, durable: bool) -> TestServer {
        let board = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let extras = Extras { board: Some(board), ..extras };
        TestServer::start_setup(|_| {}, extras, durable, Approval::Automatic).await
    }

    /// Stops the server and starts it again on the same rules, data dir and
    /// board port (a page open on the board reconnects to the new one).
    pub async fn restart(mut self, extras: Extras) -> TestServer {
        let board_port = self.board_addr.as_deref().and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok());
        let durable = self.store.is_some();
        self.halt().await;
        let board = match board_port {
            Some(port) => {
                Some(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the board's port again"))
            }
            None => None,
        };
        // The old service must let go of the store before the new one opens it.
        let TestServer { rules, data, guard, store, .. } = self;
        drop((guard, store));
        TestServer::start_in(rules, data, Extras { board, ..extras }, durable, Approval::Automatic).await
    }

    async fn start_in(
        rules: tempfile::TempDir,
        data: tempfile::TempDir,
        extras: Extras,
        durable: bool,
        approval: Approval,
    ) -> TestServer {
        let clock = Arc::new(AdjustableClock::new());
        let durability = if durable { Durability::Sync } else { Durability::None };
        let setup = Setup { approval, ..Setup::new(rules.path(), data.path(), durability).with_clock(clock.clone()) };
        let app = transfer_guard::app::build(&setup).unwrap_or_else(|e| panic!("{e}"));
        let (guard, store) = (app.guard, app.store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // TLS clients check the server's name: its test certificate is for localhost.
        let addr = match extras.tls {
            Some(_) => format!("https://localhost:{}", listener.local_addr().unwrap().port()),
            None => format!("http://{}", listener.local_addr().unwrap()),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap().to_string();
        let board_addr = extras.board.as_ref().map(|b| format!("http://{}", b.local_addr().unwrap()));
        let extras = Extras { metrics: Some(metrics), ..extras };
        let task = tokio::spawn(transfer_guard::server::run_with(listener, guard.clone(), extras, async {
            let _ = stopped.await;
        }));
        let task = tokio::spawn(async move {
            task.await.unwrap().unwrap();
        });
        TestServer {
            addr,
            clock,
            metrics_addr,
            board_addr,
            guard,
            rules,
            data,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr.clone()).unwrap().connect().await.expect("connect")
    }

    pub async fn screening(&self) -> pb::screening_client::ScreeningClient<Channel> {
        pb::screening_client::ScreeningClient::new(self.channel().await)
    }

    pub async fn alerts(&self) -> pb::alerts_client::AlertsClient<Channel> {
        pb::alerts_client::AlertsClient::new(self.channel().await)
    }

    /// Officer Li claims `alert_id` and resolves it with `outcome` (and,
    /// while the transfer is held, `decision`).
    pub async fn claim_and_resolve(
        officer: &mut pb::alerts_client::AlertsClient<Channel>,
        alert_id: &str,
        outcome: pb::Outcome,
        decision: pb::HoldDecision,
    ) -> pb::Alert {
        let officer_id = "officer-li".to_string();
        let claim = pb::ClaimAlertRequest { alert_id: alert_id.into(), officer_id: officer_id.clone() };
        officer.claim_alert(claim).await.unwrap();
        let resolve = pb::ResolveAlertRequest {
            alert_id: alert_id.into(),
            officer_id,
            outcome: outcome as i32,
            hold_decision: decision as i32,
            note: String::new(),
        };
        officer.resolve_alert(resolve).await.unwrap().into_inner()
    }

    pub async fn rules(&self) -> pb::rules_client::RulesClient<Channel> {
        pb::rules_client::RulesClient::new(self.channel().await)
    }

    pub async fn watchlist(&self) -> pb::watchlist_client::WatchlistClient<Channel> {
        pb::watchlist_client::WatchlistClient::new(self.channel().await)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    async fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(std::time::Duration::from_secs(10), task).await.expect("graceful stop").unwrap();
        }
    }
}

pub fn now() -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds: wall_clock(), nanos: 0 }
}

/// An ordinary transfer: a salary-sized payment at the counter.
pub fn ordinary(request_id: &str, customer_id: &str, payee_account: &str) -> pb::ScreenRequest {
    pb::ScreenRequest {
        request_id: request_id.into(),
        requested_at: Some(now()),
        bank_id: "psbc".into(),
        branch_id: "psbc-heshan-zhongshan".into(),
        teller_id: "teller-07".into(),
        channel: pb::Channel::Counter as i32,
        customer: Some(pb::Customer {
            customer_id: customer_id.into(),
            account_id: "6210981234567890".into(),
            birth_date: "1981-06-15".into(),
            account_opened_on: "2015-04-01".into(),
            daily_limit_minor: 5_000_000,
            last_limit_change: None,
        }),
        payee: Some(pb::Payee { account: payee_account.into(), name: "王房东".into(), bank_code: "icbc".into() }),
        amount_minor: 350_000,
        currency: "CNY".into(),
        memo: "房租".into(),
        observations: vec![],
    }
}

/// The seed case: 58, limit raised to the maximum minutes ago, 400,000 CNY to a
/// new payee for "investment", on the phone with a stranger.
pub fn seed_case(request_id: &str) -> pb::ScreenRequest {
    let mut r = ordinary(request_id, "zhongshan-customer-58", "6217000099998888777");
    let customer = r.customer.as_mut().unwrap();
    customer.birth_date = "1968-05-10".into();
    customer.daily_limit_minor = 50_000_000;
    customer.last_limit_change = Some(pb::LimitChanged {
        customer_id: "zhongshan-customer-58".into(),
        old_limit_minor: 5_000_000,
        new_limit_minor: 50_000_000,
        is_maximum: true,
        changed_at: Some(pbjson_types::Timestamp { seconds: wall_clock() - 900, nanos: 0 }),
    });
    r.payee =
        Some(pb::Payee { account: "6217000099998888777".into(), name: "陈某某".into(), bank_code: "ccb".into() });
    r.amount_minor = 40_000_000;
    r.memo = "投资理财 导师推荐".into();
    r.observations = vec![pb::Observation::OnPhoneWithStranger as i32];
    r
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `nats-server -js` process of the test's own, on loopback with a temp store.
pub struct NatsServer {
    pub port: u16,
    child: std::process::Child,
    /// The store, when the server made its own.
    _store: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// On a free port with a store of its own, removed when it is dropped;
    /// on other ports again when one was taken meanwhile.
    pub fn start_fresh() -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        for attempt in 0.. {
            match NatsServer::try_start(free_port(), store.path(), &[]) {
                Ok(mut server) => {
                    server._store = Some(store);
                    return server;
                }
                Err(e) if attempt < 5 => eprintln!("{e}; again on another port"),
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    pub fn start(port: u16, store: &Path) -> NatsServer {
        NatsServer::try_start(port, store, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `nats-server -js` on `port`; waits until it listens, or says
    /// why not (it exited: the port was taken).
    fn try_start(port: u16, store: &Path, extra: &[String]) -> Result<NatsServer, String> {
        let mut server = NatsServer::spawn(port, store, extra);
        server.wait_listening()?;
        Ok(server)
    }

    /// `nats-server -js` on `port` with `extra` arguments, not waited for.
    fn spawn(port: u16, store: &Path, extra: &[String]) -> NatsServer {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", store.to_str().unwrap()])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH: run scripts/test, which installs it (Debian package nats-server)");
        NatsServer { port, child, _store: None }
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("nats-server on port {} exited with {status}", self.port));
            }
            assert!(std::time::Instant::now() < deadline, "nats-server on port {} did not start", self.port);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three `nats-server -js` processes routed into one JetStream cluster on
/// loopback, each with its own ports and store.
pub struct NatsCluster {
    pub servers: Vec<Option<NatsServer>>,
    _stores: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let stores = tempfile::tempdir().unwrap();
        for attempt in 0.. {
            // Six distinct ports: each server's clients' and its route's.
            let mut ports = Vec::new();
            while ports.len() < 6 {
                let p = free_port();
                if !ports.contains(&p) {
                    ports.push(p);
                }
            }
            let routes = (0..3).map(|i| format!("nats://127.0.0.1:{}", ports[3 + i])).collect::<Vec<_>>().join(",");
            let mut servers = Vec::new();
            let mut failed = None;
            for i in 0..3 {
                let store = stores.path().join(format!("a{attempt}-n{i}"));
                let extra = [
                    "-n".to_string(),
                    format!("nats-{i}"),
                    "--cluster_name".into(),
                    "tg-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", ports[3 + i]),
                    "--routes".into(),
                    routes.clone(),
                ];
                // Spawned all before waiting: each waits for its routes to the others.
                servers.push(Some(NatsServer::spawn(ports[i], &store, &extra)));
            }
            for s in servers.iter_mut().flatten() {
                if let Err(e) = s.wait_listening() {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                None => return NatsCluster { servers, _stores: stores },
                Some(e) if attempt < 5 => eprintln!("{e}; the cluster again on other ports"),
                Some(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    /// Every live server's URL, comma-separated (as a client lists them).
    pub fn urls(&self) -> String {
        self.servers.iter().flatten().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// Kills server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(s) = self.servers[i].take() {
            s.kill();
        }
    }
}

/// A stream name and subject prefix no other test run uses.
pub fn unique_nats(url: &str) -> NatsConfig {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let tag = format!("{}_{}", std::process::id(), t.as_nanos());
    NatsConfig { url: url.into(), stream: format!("TGTEST_{tag}"), subject_prefix: format!("tgtest.{tag}.alerts") }
}

/// The real `transfer-guard serve` process on loopback, its logs in a file.
pub struct ServeProcess {
    pub port: u16,
    /// The board's port (unless the flags set `--board-listen` themselves).
    pub board_port: u16,
    pub log: PathBuf,
    child: std::process::Child,
}

impl ServeProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `serve` on `data` with the shipped rules and `extra` flags; waits until it listens.
    pub async fn start(data: &Path, log_name: &str, extra: &[String]) -> ServeProcess {
        ServeProcess::start_with_env(data, log_name, extra, &[]).await
    }

    /// The same, with environment variables set for the process.
    pub async fn start_with_env(data: &Path, log_name: &str, extra: &[String], env: &[(&str, &str)]) -> ServeProcess {
        // A port picked free may be taken by the time the server binds it
        // (another test's process): start again on other ports.
        for attempt in 0.. {
            match ServeProcess::try_start(data, log_name, extra, env).await {
                Ok(served) => return served,
                Err(logs) if logs.contains("Address already in use") && attempt < 5 => continue,
                Err(logs) => panic!("serve did not start:\n{logs}"),
            }
        }
        unreachable!()
    }

    async fn try_start(
        data: &Path,
        log_name: &str,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> Result<ServeProcess, String> {
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let (port, metrics_port, board_port) = (ports[0], ports[1], ports[2]);
        let log = data.parent().unwrap_or(data).join(log_name);
        let child = Command::new(env!("CARGO_BIN_EXE_transfer-guard"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(if extra.iter().any(|a| a == "--board-listen") {
                Vec::new()
            } else {
                vec!["--board-listen".to_string(), format!("127.0.0.1:{board_port}")]
            })
            .args(["--data-dir", data.to_str().unwrap()])
            .args(extra)
            .envs(env.iter().copied())
            .current_dir(repo())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start transfer-guard serve");
        let mut served = ServeProcess { port, board_port, log, child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = served.child.try_wait() {
                return Err(format!("serve exited with {status}:\n{}", served.logs()));
            }
            assert!(std::time::Instant::now() < deadline, "serve did not start:\n{}", served.logs());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(served)
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr()).unwrap().connect().await.expect("connect")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (at most `limit`) for the process to exit.
    pub async fn terminate(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "did not stop on SIGTERM:\n{}", self.logs());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

/// One HTTP/1.1 exchange with a server on loopback: the status and the whole
/// response (headers and body). `form` makes it a POST of that urlencoded form.
pub fn http(port: u16, path: &str, form: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let request = match form {
        None => format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
        Some(body) => format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    };
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("an HTTP response");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
