//! Sinks: stages that consume batches.
pub mod alert_store;
pub mod blackhole;
pub mod elasticsearch;
pub mod file;
pub mod kafka;
pub mod stdout;
