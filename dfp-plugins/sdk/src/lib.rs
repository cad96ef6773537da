//! # dfp-plugin-sdk: writing dfp stages outside the dfp repository
//!
//! Today a stage written in another crate is a *static* plugin: implement [`Source`], [`Transform`] or
//! [`Sink`], describe its configuration with a [`StageConfig`] type, call [`register_stage!`], and link the
//! crate into a program that runs pipelines (see `dfp-core/tests/runtime.rs` for complete examples).
//! Loading stages from a `.so` at run time (a stable C ABI over the Arrow C Data Interface) is the next
//! step for this crate; until then [`ABI_VERSION`] is `0` and the `plugins:` key of a pipeline is refused.
//!
//! The [`prelude`] gathers what a stage author needs, at the exact versions dfp uses.
#![deny(missing_docs)]

/// Version of the dynamic plugin ABI this SDK speaks; `0` means dynamic loading is not available yet.
pub const ABI_VERSION: u32 = 0;

/// Everything a stage author needs.
pub mod prelude {
    pub use dfp_core::arrow;
    pub use dfp_core::schemars;
    pub use dfp_core::{
        register_stage, Batch, ConfigError, DeadLetter, Emitter, Partitioning, Sink, Source, SourceStatus, StageConfig,
        StageContext, StageError, StageInstance, StageKind, Transform,
    };
}

pub use prelude::*;
