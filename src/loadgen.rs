//! The `bench` subcommand: a load generator for `Screen` with latency
//! percentiles from an HDR histogram, closed loop (C callers, each waiting for
//! its answer) or open loop (a fixed rate, latency measured from the intended
//! send time so coordinated omission cannot hide queueing), and an in-process
//! no-op server of the same service shape as the transport's baseline.
//!
//! Sends only to the address it is given (loopback in tests and docs), for a
//! bounded time, then stops.

use crate::api::proto as pb;
use hdrhistogram::Histogram;
use pbjson_types::Timestamp;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: String,
    /// Callers in flight (closed loop), or the most in flight (open loop).
    pub concurrency: usize,
    pub duration: Duration,
    /// Requests per second for an open loop; None for a closed loop.
    pub rate: Option<f64>,
    /// HTTP/2 connections the callers share.
    pub connections: usize,
    /// Closed loop: how long a caller turned away (RESOURCE_EXHAUSTED) waits
    /// before its next request, as a well-behaved client backs off.
    pub backoff: Duration,
}

#[derive(Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub errors: u64,
    /// Answers of RESOURCE_EXHAUSTED (turned away by admission control), and
    /// how long each took, in microseconds.
    pub shed: u64,
    pub shed_latency: Histogram<u64>,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    pub actions: [u64; 5],
    /// The first error, as "CODE: message" (none when there were none).
    pub first_error: Option<String>,
}

impl LoadReport {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_us(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        let shed = if self.shed == 0 {
            String::new()
        } else {
            format!(
                "; {} turned away (RESOURCE_EXHAUSTED) in µs p50 {} p99 {} max {}",
                self.shed,
                self.shed_latency.value_at_quantile(0.5),
                self.shed_latency.value_at_quantile(0.99),
                self.shed_latency.max()
            )
        };
        format!(
            "{:.0} req/s ({} ok, {} errors in {:.1} s); latency µs p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.throughput(),
            self.ok,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.percentile_us(0.50),
            self.percentile_us(0.90),
            self.percentile_us(0.99),
            self.percentile_us(0.999),
            self.latency.max()
        ) + &shed
            + &self.first_error.as_ref().map_or(String::new(), |e| format!("; first error {e}"))
    }
}

fn now() -> Timestamp {
    Timestamp { seconds: crate::service::wall_clock(), nanos: 0 }
}

/// A realistic request: mostly ordinary payments among 100,000 customers and
/// their usual payees, some first payments, about 1 in 100 like the seed case.
pub fn request(run: &str, k: u64) -> pb::ScreenRequest {
    let customer = k.wrapping_mul(2_654_435_761) % 100_000;
    let seed_like = k % 100 == 7;
    let payee = if seed_like { 900_000 + k % 1000 } else { customer * 4 + k % 4 };
    let amount = if seed_like { 40_000_000 } else { [35_000, 120_000, 350_000, 800_000, 2_500_000][(k % 5) as usize] };
    pb::ScreenRequest {
        request_id: format!("{run}-{k}"),
        requested_at: Some(now()),
        bank_id: "psbc".into(),
        branch_id: ["psbc-heshan-zhongshan", "psbc-heshan-shaping", "icbc-heshan-zhongshan"][(k % 3) as usize].into(),
        teller_id: "teller-01".into(),
        channel: if k.is_multiple_of(3) { pb::Channel::Counter } else { pb::Channel::Mobile } as i32,
        customer: Some(pb::Customer {
            customer_id: format!("cust-{customer:06}"),
            account_id: format!("621098{customer:010}"),
            birth_date: if customer.is_multiple_of(5) { "1952-03-08" } else { "1979-11-21" }.into(),
            account_opened_on: "2012-06-01".into(),
            daily_limit_minor: 50_000_000,
            last_limit_change: seed_like.then(|| pb::LimitChanged {
                customer_id: format!("cust-{customer:06}"),
                old_limit_minor: 5_000_000,
                new_limit_minor: 50_000_000,
                is_maximum: true,
                changed_at: Some(Timestamp { seconds: crate::service::wall_clock() - 600, nanos: 0 }),
            }),
        }),
        payee: Some(pb::Payee {
            account: format!("622202{payee:010}"),
            name: "收款人".into(),
            bank_code: "icbc".into(),
        }),
        amount_minor: amount,
        currency: "CNY".into(),
        memo: if seed_like {
            "投资理财 导师推荐"
        } else {
            ["房租", "生活费", "货款", ""][(k % 4) as usize]
        }
        .into(),
        observations: if seed_like { vec![pb::Observation::OnPhoneWithStranger as i32] } else { vec![] },
    }
}

async fn channels(addr: &str, n: usize) -> Result<Vec<Channel>, tonic::transport::Error> {
    let mut v = Vec::new();
    for _ in 0..n.max(1) {
        v.push(Endpoint::from_shared(addr.to_string())?.tcp_nodelay(true).connect().await?);
    }
    Ok(v)
}

struct Tally {
    latency: Mutex<Histogram<u64>>,
    shed_latency: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    shed: AtomicU64,
    actions: [AtomicU64; 5],
    first_error: std::sync::OnceLock<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn record_us(h: &Mutex<Histogram<u64>>, latency: Duration) {
    let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
    let _ = h.lock().unwrap_or_else(|e| e.into_inner()).record(us);
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: Mutex::new(histogram()),
            shed_latency: Mutex::new(histogram()),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            actions: Default::default(),
            first_error: std::sync::OnceLock::new(),
        }
    }

    fn record(&self, latency: Duration, result: Result<tonic::Response<pb::ScreenResponse>, tonic::Status>) {
        match result {
            Ok(r) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let a = r.into_inner().action.clamp(0, 4) as usize;
                self.actions[a].fetch_add(1, Ordering::Relaxed);
                record_us(&self.latency, latency);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                self.shed.fetch_add(1, Ordering::Relaxed);
                record_us(&self.shed_latency, latency);
            }
            Err(status) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let _ = self.first_error.set(format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
}

/// Runs the load and reports.
pub async fn run(config: &LoadConfig, run_id: &str) -> Result<LoadReport, tonic::transport::Error> {
    let channels = channels(&config.addr, config.connections).await?;
    let tally = Arc::new(Tally::new());
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + config.duration;
    match config.rate {
        None => {
            let mut tasks = Vec::new();
            for i in 0..config.concurrency.max(1) {
                let mut client = pb::screening_client::ScreeningClient::new(channels[i % channels.len()].clone());
                let (tally, counter, run_id) = (tally.clone(), counter.clone(), run_id.to_string());
                let backoff = config.backoff;
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let k = counter.fetch_add(1, Ordering::Relaxed);
                        let r = request(&run_id, k);
                        let sent = Instant::now();
                        let result = client.screen(r).await;
                        let turned_away = matches!(&result, Err(s) if s.code() == tonic::Code::ResourceExhausted);
                        tally.record(sent.elapsed(), result);
                        if turned_away && !backoff.is_zero() {
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        Some(rate) => {
            let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
            let limit = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            // The async timer has 1 ms grain: at 18,000 req/s it would release
            // 18 requests at once each millisecond and count the wait in their
            // latency. A thread of its own paces the sends to ~0.1 ms instead.
            let (pace, mut paced) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
            let pacer = std::thread::spawn(move || {
                for k in 0u64.. {
                    let intended = start + period.mul_f64(k as f64);
                    if intended >= deadline {
                        return;
                    }
                    let ahead = intended.saturating_duration_since(Instant::now());
                    if ahead > Duration::from_micros(100) {
                        std::thread::sleep(ahead);
                    }
                    if pace.send((k, intended)).is_err() {
                        return;
                    }
                }
            });
            while let Some((k, intended)) = paced.recv().await {
                let permit = limit.clone().acquire_owned().await.expect("never closed");
                let mut client =
                    pb::screening_client::ScreeningClient::new(channels[k as usize % channels.len()].clone());
                let (tally, r) = (tally.clone(), request(run_id, k));
                tasks.spawn(async move {
                    let result = client.screen(r).await;
                    // From the intended send time: waiting for a permit is queueing too.
                    tally.record(intended.elapsed(), result);
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            let _ = pacer.join();
            while tasks.join_next().await.is_some() {}
        }
    }
    let elapsed = start.elapsed();
    let tally = Arc::try_unwrap(tally).unwrap_or_else(|_| unreachable!("all tasks joined"));
    Ok(LoadReport {
        ok: tally.ok.into_inner(),
        errors: tally.errors.into_inner(),
        shed: tally.shed.into_inner(),
        shed_latency: tally.shed_latency.into_inner().unwrap_or_else(|e| e.into_inner()),
        elapsed,
        latency: tally.latency.into_inner().unwrap_or_else(|e| e.into_inner()),
        actions: tally.actions.map(AtomicU64::into_inner),
        first_error: tally.first_error.into_inner(),
    })
}

/// What officers and a load balancer saw while the load ran (`bench --flood`).
#[derive(Debug)]
pub struct ProbeReport {
    /// Health check latency, µs.
    pub health: Histogram<u64>,
    /// ResolveAlert latency, µs (each on a transfer the probe had held).
    pub resolve: Histogram<u64>,
    /// Calls of the probe that failed (health, hold, claim or resolve).
    pub failures: u64,
    /// The server's resident memory (KiB), sampled every second: first, lowest, highest, last.
    pub rss_kib: Option<(u64, u64, u64, u64)>,
}

impl ProbeReport {
    pub fn summary(&self) -> String {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mut s = format!(
            "health checks: {} answered, ms p50 {:.2} p99 {:.2} max {:.2}\nResolveAlert: {} answered, ms p50 {:.2} p99 {:.2} max {:.2}\nprobe failures: {}",
            self.health.len(),
            ms(&self.health, 0.5),
            ms(&self.health, 0.99),
            self.health.max() as f64 / 1000.0,
            self.resolve.len(),
            ms(&self.resolve, 0.5),
            ms(&self.resolve, 0.99),
            self.resolve.max() as f64 / 1000.0,
            self.failures
        );
        if let Some((first, low, high, last)) = self.rss_kib {
            s.push_str(&format!(
                "\nserver RSS MiB: first {:.1}, lowest {:.1}, highest {:.1}, last {:.1} (last/first {:.2})",
                first as f64 / 1024.0,
                low as f64 / 1024.0,
                high as f64 / 1024.0,
                last as f64 / 1024.0,
                last as f64 / first.max(1) as f64
            ));
        }
        s
    }
}

/// The seed case from the article (a HOLD with the shipped rules), as the
/// probe's transfer to hold and resolve.
fn held_request(run: &str, k: u64) -> pb::ScreenRequest {
    let mut r: pb::ScreenRequest =
        serde_json::from_str(include_str!("../examples/seed-case.json")).expect("the example is a ScreenRequest");
    r.request_id = format!("{run}-probe-{k}");
    r.requested_at = Some(now());
    if let Some(c) = r.customer.as_mut() {
        c.customer_id = format!("{run}-probe-customer-{k}");
        if let Some(change) = c.last_limit_change.as_mut() {
            change.customer_id.clone_from(&c.customer_id);
        }
    }
    r
}

/// Resident memory of a process in KiB, from /proc/PID/status.
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// For `duration`, on a connection of its own (to `officer_addr` when the
/// server serves officers apart): a health check every 100 ms,
/// and every 500 ms a transfer held (retried while the server turns screens
/// away), claimed and resolved, timing the ResolveAlert; and, with `pid`, the
/// server's memory every second.
pub async fn probe(
    addr: &str,
    officer_addr: Option<&str>,
    duration: Duration,
    run: &str,
    pid: Option<u32>,
) -> Result<ProbeReport, tonic::transport::Error> {
    let channel = Endpoint::from_shared(addr.to_string()).expect("a valid address").connect().await?;
    // Officers and health on their own listener when the server has one.
    let officer_channel = match officer_addr {
        Some(a) => Endpoint::from_shared(a.to_string()).expect("a valid address").connect().await?,
        None => channel.clone(),
    };
    let deadline = Instant::now() + duration;
    let health = {
        let mut client = tonic_health::pb::health_client::HealthClient::new(officer_channel.clone());
        tokio::spawn(async move {
            let (mut h, mut failures) = (histogram(), 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let asked = client.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
                match asked {
                    Ok(_) => {
                        let _ = h.record((sent.elapsed().as_micros() as u64).clamp(1, 60_000_000));
                    }
                    Err(_) => failures += 1,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (h, failures)
        })
    };
    let memory = pid.map(|pid| {
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                samples.extend(process_rss_kib(pid));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    });
    let (mut resolve, mut failures) = (histogram(), 0u64);
    let mut screening = pb::screening_client::ScreeningClient::new(channel);
    let mut alerts = pb::alerts_client::AlertsClient::new(officer_channel);
    for k in 0.. {
        if Instant::now() >= deadline {
            break;
        }
        let next = Instant::now() + Duration::from_millis(500);
        let mut held = None;
        while held.is_none() && Instant::now() < deadline {
            match screening.screen(held_request(run, k)).await {
                Ok(r) if !r.get_ref().alert_id.is_empty() => held = Some(r.into_inner().alert_id),
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => {
                    failures += 1;
                    break;
                }
            }
        }
        if let Some(alert_id) = held {
            let officer_id = "probe-officer".to_string();
            let claim = pb::ClaimAlertRequest { alert_id: alert_id.clone(), officer_id: officer_id.clone() };
            if alerts.claim_alert(claim).await.is_err() {
                failures += 1;
            } else {
                let sent = Instant::now();
                let resolved = alerts
                    .resolve_alert(pb::ResolveAlertRequest {
                        alert_id,
                        officer_id,
                        outcome: pb::Outcome::Dissuaded as i32,
                        hold_decision: pb::HoldDecision::Block as i32,
                        note: String::new(),
                    })
                    .await;
                match resolved {
                    Ok(_) => {
                        let _ = resolve.record((sent.elapsed().as_micros() as u64).clamp(1, 60_000_000));
                    }
                    Err(_) => failures += 1,
                }
            }
        }
        tokio::time::sleep_until(next.into()).await;
    }
    let (health, health_failures) = health.await.expect("the health probe does not panic");
    let rss_kib = match memory {
        Some(m) => {
            let samples = m.await.expect("the memory probe does not panic");
            match (samples.first(), samples.iter().min(), samples.iter().max(), samples.last()) {
                (Some(&f), Some(&lo), Some(&hi), Some(&l)) => Some((f, lo, hi, l)),
                _ => None,
            }
        }
        None => None,
    };
    Ok(ProbeReport { health, resolve, failures: failures + health_failures, rss_kib })
}

/// A Screening service that decodes the request and answers ALLOW at once:
/// what the transport alone costs.
#[derive(Clone, Default)]
pub struct NoopScreening;

#[tonic::async_trait]
impl pb::screening_server::Screening for NoopScreening {
    async fn screen(
        &self,
        request: tonic::Request<pb::ScreenRequest>,
    ) -> Result<tonic::Response<pb::ScreenResponse>, tonic::Status> {
        let r = request.into_inner();
        Ok(tonic::Response::new(pb::ScreenResponse {
            request_id: r.request_id,
            action: pb::Action::Allow as i32,
            ruleset_version: "noop".into(),
            ..Default::default()
        }))
    }

    async fn record_event(
        &self,
        _: tonic::Request<pb::RecordEventRequest>,
    ) -> Result<tonic::Response<pb::RecordEventResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no-op baseline"))
    }

    async fn get_transfer(
        &self,
        _: tonic::Request<pb::GetTransferRequest>,
    ) -> Result<tonic::Response<pb::TransferStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("no-op baseline"))
    }

    type WatchTransferStream = tokio_stream::Empty<Result<pb::TransferStatus, tonic::Status>>;

    async fn watch_transfer(
        &self,
        _: tonic::Request<pb::GetTransferRequest>,
    ) -> Result<tonic::Response<Self::WatchTransferStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("no-op baseline"))
    }
}

/// Starts the no-op server on an ephemeral loopback port; returns its address
/// and a sender that stops it.
pub async fn start_noop() -> std::io::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_noop(listener, async {
        let _ = stopped.await;
    }));
    Ok((addr, stop))
}

/// Serves the no-op baseline on `listener` until `shutdown` completes (as a
/// process of its own: `bench --noop-server`, to be pinned and driven like `serve`).
pub async fn serve_noop(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(pb::screening_server::ScreeningServer::new(NoopScreening))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// CPU time a process has used so far, summed over its threads, from Linux's
/// `/proc/PID/task/*/schedstat` (nanoseconds on the CPU); None where there is no /proc.
pub fn process_cpu(pid: u32) -> Option<std::time::Duration> {
    let mut total: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(std::time::Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Transfer;

    #[test]
    fn the_probe_transfer_is_valid() {
        Transfer::try_from(&held_request("t", 1)).unwrap();
    }

    #[test]
    fn generated_requests_are_valid() {
        for k in 0..500 {
            let r = request("t", k);
            Transfer::try_from(&r).unwrap_or_else(|e| panic!("{k}: {e:?}"));
        }
    }
}
