//! One integration-test binary (faster to link than one per file), with a small
//! shared harness.

mod harness;
mod rules;
