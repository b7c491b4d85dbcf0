//! One integration-test binary (faster to link than one per file), with a small
//! shared harness.

mod api;
mod backtest;
mod board;
mod browser;
mod cluster;
mod durability;
mod harness;
mod holds;
mod live_time;
mod metrics;
mod nats;
mod netns;
mod ops;
mod rules;
mod trust;
mod webhook;
