//! Observability: OpenTelemetry metrics exported for Prometheus, health and readiness, live per-stage
//! figures, and taps on the rows leaving a stage — all served by one admin endpoint
//! ([`AdminServer`], address from `runtime.metrics` or `dfp run --metrics-addr`).
//!
//! Stages record model and alert metrics through [`metrics()`] (a no-op `None` while metrics are off);
//! the executor keeps the per-stage counters. Metric names live in [`names`].

pub mod names;

mod metrics;
mod server;
mod stats;
mod tap;

pub use metrics::{enable_metrics, metrics, Metrics, MAX_LABEL_VALUES};
pub(crate) use metrics::{register_run, unregister_run};
pub use server::{check_addr, AdminOptions, AdminServer, AdminTls, DEFAULT_MAX_CONNECTIONS};
pub use stats::{RunStats, StageReport, StageSnapshot, StageStats, StatsSnapshot, MAX_WARNINGS};
pub(crate) use stats::{SOURCE_ENDED, SOURCE_FREE};
pub use tap::TAP_BUFFER_BATCHES;

/// Metric attributes (re-exported so that stages need no OpenTelemetry dependency of their own).
pub use opentelemetry::KeyValue;

/// Errors of the admin endpoint and metrics set-up.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The address cannot be bound.
    #[error("cannot serve the admin endpoint on {addr}: {message}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        message: String,
    },
    /// The metrics pipeline could not be built.
    #[error("metrics: {0}")]
    Metrics(String),
}
