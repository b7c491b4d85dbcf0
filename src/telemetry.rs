//! Prometheus metrics (one registry, no globals) and the HTTP endpoint that
//! serves them at `/metrics` on its own listener.
//!
//! Must not hold labels that carry personal data: stations, actions, rule ids
//! and outcomes only, never accounts or customers.

use crate::model::Action;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::future::Future;
use std::sync::Arc;

/// Every metric the service exports.
pub struct Metrics {
    pub registry: Registry,
    /// Screening latency in seconds, by action; buckets from 10 µs.
    pub screen_seconds: HistogramVec,
    pub decisions: IntCounterVec,
    pub rule_hits: IntCounterVec,
    /// Hits of rules that point to a scam type, by the type and mode.
    pub typology_hits: IntCounterVec,
    pub alerts: IntCounterVec,
    /// Alerts held now, by station and state.
    pub alerts_by_state: IntGaugeVec,
    pub unrouted_branches: IntCounter,
    pub hold_outcomes: IntCounterVec,
    /// Alert events not yet delivered, by sink (nats, webhook).
    pub outbox_depth: IntGaugeVec,
    /// Failed delivery attempts, by sink.
    pub publish_failures: IntCounterVec,
    pub ruleset_info: IntGaugeVec,
    pub reload_failures: IntCounter,
    pub state_size: IntGaugeVec,
    pub reload_seconds: Histogram,
    /// gRPC calls by method and code (streams: the code of opening them).
    pub grpc_requests: IntCounterVec,
    /// Group commits of the durable store: time to write and fsync one batch.
    pub store_commit_seconds: Histogram,
    /// Changes written to the durable store.
    pub store_changes: IntCounter,
    /// Calls refused by the trust layer, by method and reason
    /// (unauthenticated, role, scope, not_self).
    pub denied: IntCounterVec,
    /// Calls turned away at once by admission control, by method and why
    /// (busy: no slot in time; deadline: the caller's deadline had passed).
    pub shed: IntCounterVec,
    /// 1 while the store cannot commit within its bound and screens are
    /// answered by the fail mode.
    pub degraded: prometheus::IntGauge,
    /// Screens answered by the fail mode, by the answer given (hold, warn, unavailable).
    pub fail_mode_answers: IntCounterVec,
    /// The clustered mode: partitions this node serves now.
    pub cluster_partitions: prometheus::IntGauge,
    /// The clustered mode: time for JetStream to acknowledge one commit's
    /// journal appends (the replication cost, in place of the local fsync).
    pub cluster_append_seconds: Histogram,
    /// The clustered mode: time from leasing a partition to serving it (replay and fence).
    pub cluster_takeover_seconds: Histogram,
    /// The clustered mode: partitions lost (lease aged out, fenced, refused).
    pub cluster_partitions_lost: IntCounter,
    /// The clustered mode: from a payee-paid fact's publication to this node counting it.
    pub cluster_fact_lag_seconds: Histogram,
    pub cluster_alert_copy_lag_seconds: Histogram,
    /// Children of `screen_seconds` and `decisions` per action, resolved once:
    /// a label lookup per request costs a hash and a lock.
    screen_by_action: [Histogram; 4],
    decisions_by_action: [prometheus::IntCounter; 4],
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("transfer_guard".into()), None).expect("valid prefix");
        let buckets = vec![
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0,
        ];
        let screen_seconds = HistogramVec::new(
            HistogramOpts::new("screen_duration_seconds", "Time to screen one transfer, by action").buckets(buckets),
            &["action"],
        )
        .expect("valid metric");
        let decisions = IntCounterVec::new(Opts::new("decisions_total", "Screening decisions by action"), &["action"])
            .expect("valid metric");
        let grpc_requests = IntCounterVec::new(
            Opts::new("grpc_requests_total", "gRPC calls by method and status code"),
            &["method", "code"],
        )
        .expect("valid metric");
        let m = Metrics {
            screen_by_action: Action::ALL.map(|a| screen_seconds.with_label_values(&[a.as_str()])),
            decisions_by_action: Action::ALL.map(|a| decisions.with_label_values(&[a.as_str()])),
            screen_seconds,
            decisions,
            rule_hits: IntCounterVec::new(
                Opts::new("rule_hits_total", "Rule hits by rule id and mode"),
                &["rule", "mode"],
            )
            .expect("valid metric"),
            typology_hits: IntCounterVec::new(
                Opts::new("typology_hits_total", "Hits of rules that point to a scam type, by type and mode"),
                &["typology", "mode"],
            )
            .expect("valid metric"),
            alerts: IntCounterVec::new(
                Opts::new("alerts_total", "Alert events by station and kind"),
                &["station", "kind"],
            )
            .expect("valid metric"),
            alerts_by_state: IntGaugeVec::new(
                Opts::new("alerts", "Alerts held now, by station and state"),
                &["station", "state"],
            )
            .expect("valid metric"),
            unrouted_branches: IntCounter::new(
                "unrouted_branch_alerts_total",
                "Alerts from branches with no station mapping, sent to the default station",
            )
            .expect("valid metric"),
            hold_outcomes: IntCounterVec::new(
                Opts::new("hold_outcomes_total", "How holds ended: release, block, expired_block, expired_release"),
                &["outcome"],
            )
            .expect("valid metric"),
            outbox_depth: IntGaugeVec::new(
                Opts::new("alert_sink_outbox_depth", "Alert events not yet delivered, by sink"),
                &["sink"],
            )
            .expect("valid metric"),
            publish_failures: IntCounterVec::new(
                Opts::new("alert_sink_failures_total", "Failed attempts to deliver alert events, by sink"),
                &["sink"],
            )
            .expect("valid metric"),
            ruleset_info: IntGaugeVec::new(Opts::new("ruleset_info", "The ruleset in force (value 1)"), &["version"])
                .expect("valid metric"),
            reload_failures: IntCounter::new("ruleset_reload_failures_total", "Rule reloads refused")
                .expect("valid metric"),
            state_size: IntGaugeVec::new(Opts::new("state_entries", "Entries held in memory, by kind"), &["kind"])
                .expect("valid metric"),
            reload_seconds: Histogram::with_opts(HistogramOpts::new(
                "ruleset_reload_duration_seconds",
                "Time to compile and test a ruleset",
            ))
            .expect("valid metric"),
            grpc_requests,
            store_commit_seconds: Histogram::with_opts(
                HistogramOpts::new("store_commit_duration_seconds", "Time to write and fsync one group commit")
                    .buckets(vec![0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0]),
            )
            .expect("valid metric"),
            store_changes: IntCounter::new("store_changes_total", "Changes written to the durable store")
                .expect("valid metric"),
            denied: IntCounterVec::new(
                Opts::new("denied_total", "Calls refused by the trust layer, by method and reason"),
                &["method", "reason"],
            )
            .expect("valid metric"),
            shed: IntCounterVec::new(
                Opts::new("shed_total", "Calls turned away at once by admission control, by method and why"),
                &["method", "why"],
            )
            .expect("valid metric"),
            degraded: prometheus::IntGauge::new(
                "degraded",
                "1 while the store cannot commit in time and screens get the fail mode",
            )
            .expect("valid metric"),
            fail_mode_answers: IntCounterVec::new(
                Opts::new("fail_mode_answers_total", "Screens answered by the fail mode, by the answer"),
                &["answer"],
            )
            .expect("valid metric"),
            cluster_partitions: prometheus::IntGauge::new(
                "cluster_partitions_owned",
                "Partitions of the customers this node serves now (clustered mode)",
            )
            .expect("valid metric"),
            cluster_append_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "cluster_journal_append_duration_seconds",
                    "Time for JetStream to acknowledge one commit's journal appends (clustered mode)",
                )
                .buckets(vec![0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0]),
            )
            .expect("valid metric"),
            cluster_takeover_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "cluster_takeover_duration_seconds",
                    "Time from leasing a partition to serving it: replay and fence (clustered mode)",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            )
            .expect("valid metric"),
            cluster_fact_lag_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "cluster_payee_fact_lag_seconds",
                    "From a payee-paid fact's publication to this node counting it (clustered mode)",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 60.0]),
            )
            .expect("valid metric"),
            cluster_alert_copy_lag_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "cluster_alert_copy_lag_seconds",
                    "From another node's alert event reaching the alert book's stream to this node's copy (clustered mode)",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 60.0]),
            )
            .expect("valid metric"),
            cluster_partitions_lost: IntCounter::new(
                "cluster_partitions_lost_total",
                "Partitions lost: lease aged out, journal fenced, renewal refused (clustered mode)",
            )
            .expect("valid metric"),
            registry,
        };
        for c in [
            Box::new(m.screen_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.decisions.clone()),
            Box::new(m.rule_hits.clone()),
            Box::new(m.typology_hits.clone()),
            Box::new(m.alerts.clone()),
            Box::new(m.alerts_by_state.clone()),
            Box::new(m.unrouted_branches.clone()),
            Box::new(m.hold_outcomes.clone()),
            Box::new(m.outbox_depth.clone()),
            Box::new(m.publish_failures.clone()),
            Box::new(m.ruleset_info.clone()),
            Box::new(m.reload_failures.clone()),
            Box::new(m.state_size.clone()),
            Box::new(m.reload_seconds.clone()),
            Box::new(m.grpc_requests.clone()),
            Box::new(m.denied.clone()),
            Box::new(m.shed.clone()),
            Box::new(m.degraded.clone()),
            Box::new(m.fail_mode_answers.clone()),
            Box::new(m.store_commit_seconds.clone()),
            Box::new(m.store_changes.clone()),
            Box::new(m.cluster_partitions.clone()),
            Box::new(m.cluster_append_seconds.clone()),
            Box::new(m.cluster_takeover_seconds.clone()),
            Box::new(m.cluster_partitions_lost.clone()),
            Box::new(m.cluster_fact_lag_seconds.clone()),
            Box::new(m.cluster_alert_copy_lag_seconds.clone()),
        ] {
            m.registry.register(c).expect("each metric is registered once");
        }
        m
    }

    /// Counts one screening decision and its latency.
    pub fn observe_screen(&self, action: Action, seconds: f64) {
        self.screen_by_action[action as usize].observe(seconds);
        self.decisions_by_action[action as usize].inc();
    }

    pub fn observe_rpc(&self, method: &'static str, code: &'static str) {
        self.grpc_requests.with_label_values(&[method, code]).inc();
    }

    /// Marks `version` as the ruleset in force.
    pub fn set_ruleset(&self, version: &str) {
        self.ruleset_info.reset();
        self.ruleset_info.with_label_values(&[version]).set(1);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encoding to memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`; `refresh` runs before
/// each scrape (gauges read from state).
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: impl Fn() + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let refresh = Arc::new(refresh);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let refresh = refresh.clone();
            async move {
                refresh();
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
