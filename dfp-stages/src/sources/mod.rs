//! Sources: stages that produce batches.
pub mod file;
pub mod generator;
pub mod kafka;
