//! Transforms: batch in, batches out.
pub mod features;
pub mod filter;
pub mod passthrough;
pub mod score;
pub mod select;
pub mod threshold;
pub mod train;
