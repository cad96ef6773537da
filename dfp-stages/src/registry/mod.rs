//! Model registries. `local` keeps artifacts in a directory or under an `s3://` prefix.
pub mod local;

pub use local::LocalRegistry;
