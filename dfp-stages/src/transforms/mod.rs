//! Transforms: batch in, batches out.
pub mod filter;
pub mod select;
