//! Transforms: batch in, batches out.
pub mod features;
pub mod filter;
pub mod select;
