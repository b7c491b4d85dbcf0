//! transfer-guard: screens outgoing bank transfers for fraud before they leave,
//! and hands suspicious ones to the police station that covers the branch.
//!
//! Layout (pure core first, thin edges last):
//! - [`model`]: domain types — transfer, customer, payee, decision. No I/O.
//! - [`rules`]: rule files — lexer, parser, type checker and compiler of the
//!   condition language; named lists; versioned [`rules::Ruleset`].
//! - [`engine`]: evaluates a ruleset on a transfer and a state snapshot; pure.
//! - [`state`]: in-memory customer, payee and watchlist state (dashmap).
//! - [`ruletest`]: the analysts' rule test cases in `rules/tests/`.
//! - [`alerts`]: routing (branch → police station), alert lifecycle, event log.
//! - [`store`]: the durable store in the data dir (fjall), group commit.
//! - [`service`]: the application — idempotency, history, the hold loop.
//! - [`api`]: proto ↔ domain conversion and validation; the tonic services.
//! - [`server`]: configuration, serving, health, reflection, shutdown.
//! - [`board`]: the officers' and analysts' live web page (axum, SSE).
//! - [`audit`]: the append-only JSON-lines audit trail.
//! - [`delivery`]: alert events to NATS JetStream.
//! - [`cluster`]: the clustered mode — partitions leased on JetStream, their
//!   journals, routing to the owner.
//! - [`telemetry`]: Prometheus metrics and `/metrics`.
//! - [`loadgen`]: the `bench` load generator and its no-op baseline server.
//! - [`simulate`]: labelled synthetic traffic for demos, backtests and load.
//! - [`backtest`]: replays a history through a ruleset and reports.
//! - [`cli`]: subcommands of the one binary.
//!
//! The core modules never import tokio or tonic; see ARCHITECTURE.md.

pub mod alerts;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backtest;
pub mod board;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod lifecycle;
pub mod loadgen;
pub mod model;
pub mod rules;
pub mod ruletest;
pub mod server;
pub mod service;
pub mod simulate;
pub mod state;
pub mod store;
pub mod telemetry;
