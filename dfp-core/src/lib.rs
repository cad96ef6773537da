//! # dfp-core: the dfp runtime
//!
//! dfp runs *pipelines*: declarative graphs of *stages* written in YAML. Data moves between stages as
//! [`Batch`]es (an Arrow [`RecordBatch`](arrow::record_batch::RecordBatch) plus a small envelope). The
//! runtime compiles a validated [`Plan`] into a timely-dataflow computation: every worker thread builds the
//! same operators, sources split their input across workers, and the runtime inserts the exchange that a
//! stage's declared [`Partitioning`] asks for.
//!
//! This crate knows nothing about sign-in logs or models: those live in `dfp-stages`.
//!
//! The layers, each usable on its own:
//! - [`batch`]: the batch type and its Arrow-IPC encoding;
//! - [`stage`]: the source / transform / sink traits a stage implements;
//! - [`registry`]: the `inventory`-backed registry of stage types;
//! - [`spec`]: pipeline YAML → raw model → validated [`Plan`], with file:line diagnostics;
//! - [`executor`]: the timely executor (backpressure, dead letters, failure handling);
//! - [`pipeline`]: the embedding API ([`Pipeline`], [`PipelineBuilder`], [`RunningPipeline`]).
//!
//! ```
//! use dfp_core::Pipeline;
//! let yaml = r#"
//! version: 1
//! stages:
//!   rows: { type: embedded-input }
//!   out:  { type: embedded-output, inputs: [rows] }
//! "#;
//! let pipeline = Pipeline::from_yaml_str(yaml, "inline.yaml", &[]).unwrap();
//! let running = pipeline.spawn(Default::default()).unwrap();
//! running.input().push_json(&[serde_json::json!({"username": "alice"})]).unwrap();
//! let output = running.output().clone();
//! let report = running.finish().unwrap();
//! assert_eq!(output.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
//! assert_eq!(report.stage("out").unwrap().rows_in, 1);
//! ```
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod batch;
pub mod cluster;
mod commits;
pub mod embedded;
pub mod error;
pub mod executor;
pub mod family;
pub mod hash;
pub mod json;
pub mod models;
pub mod observe;
pub mod partition;
pub mod pipeline;
pub mod plugin;
pub mod registry;
pub mod spec;
pub mod stage;
pub mod suggest;

pub use batch::{Batch, Envelope};
pub use error::{panic_message, ConfigError, RunError, StageError};
pub use executor::{RunOptions, RunReport, StageReport, StopHandle};
pub use family::{Families, Family};
pub use pipeline::{Pipeline, PipelineBuilder, PipelineInput, RunningPipeline};
pub use registry::{ConfigContext, Registry, StageConfig, StageRegistration, StageType};
pub use spec::{Diagnostic, Plan, SpecError};
pub use stage::{
    BatchStream, DataflowEnv, DataflowOutputs, DataflowTransform, DeadLetter, Emitter, Partitioning, Resources, Sink,
    Source, SourceStatus, StageContext, StageInstance, StageKind, Transform,
};

/// Re-exported so that stage authors build against the exact versions dfp uses.
pub use arrow;
/// Re-exported so that stage authors build against the exact version dfp uses.
pub use differential_dataflow;
/// Re-exported for the [`register_stage!`] macro.
pub use inventory;
/// Re-exported for stage configuration schemas.
pub use schemars;
/// Re-exported so that stage authors build against the exact version dfp uses.
pub use timely;
