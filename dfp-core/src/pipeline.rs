//! The embedding API: build a pipeline from YAML or a builder, run it to completion, or spawn it and
//! exchange data with it from another Rust program.
//!
//! ```
//! use dfp_core::{Pipeline, RunOptions};
//! use serde_json::json;
//!
//! let pipeline = Pipeline::builder("embedded")
//!     .stage("in", "embedded-input", &[], json!({}))
//!     .stage("out", "embedded-output", &["in"], json!({}))
//!     .build()
//!     .unwrap();
//! let running = pipeline.spawn(RunOptions::default()).unwrap();
//! let rejected = running.input().push_json(&[json!({"username": "bob"}), json!(42)]).unwrap();
//! assert_eq!(rejected.len(), 1); // 42 is not an object
//! let output = running.output().clone();
//! running.finish().unwrap();
//! assert_eq!(output.try_iter().map(|b| b.num_rows()).sum::<usize>(), 1);
//! ```

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Map, Value};

use crate::batch::Batch;
use crate::embedded::EmbeddedIo;
use crate::error::RunError;
use crate::executor::{self, RunOptions, RunReport, StopHandle};
use crate::json::records_to_batch;
use crate::registry::Registry;
use crate::spec::{Plan, SpecError};

/// A validated pipeline, ready to run any number of times.
#[derive(Debug, Clone)]
pub struct Pipeline {
    plan: Arc<Plan>,
}

impl Pipeline {
    /// Parses and validates YAML text; `name` stands for the file in diagnostics; `vars` are `NAME=VALUE`
    /// overrides.
    pub fn from_yaml_str(yaml: &str, name: &str, vars: &[String]) -> Result<Self, SpecError> {
        Ok(Self::from_plan(Plan::from_yaml(yaml, name, vars, Registry::global())?))
    }

    /// Reads and validates a pipeline file.
    pub fn from_file(path: impl AsRef<Path>, vars: &[String]) -> Result<Self, SpecError> {
        Ok(Self::from_plan(Plan::from_file(path.as_ref(), vars, Registry::global())?))
    }

    /// Wraps an already validated plan.
    pub fn from_plan(plan: Plan) -> Self {
        Pipeline { plan: Arc::new(plan) }
    }

    /// Starts a pipeline in code.
    pub fn builder(name: impl Into<String>) -> PipelineBuilder {
        PipelineBuilder { name: name.into(), family: None, runtime: Map::new(), stages: Map::new() }
    }

    /// The validated plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs to completion on the calling thread (workers are extra threads).
    pub fn run(&self, options: RunOptions) -> Result<RunReport, RunError> {
        executor::run(Arc::clone(&self.plan), options)
    }

    /// Runs on a background thread, connected to this program: batches pushed into
    /// [`RunningPipeline::input`] feed the `embedded-input` stages, and what reaches `embedded-output`
    /// stages arrives on [`RunningPipeline::output`]. The input channel is bounded (a full pipeline
    /// blocks the pusher); the output channel is not, so finishing never waits on a reader.
    pub fn spawn(&self, mut options: RunOptions) -> Result<RunningPipeline, RunError> {
        let (in_tx, in_rx) = crossbeam_channel::bounded::<Batch>(64);
        let (out_tx, out_rx) = crossbeam_channel::unbounded::<Batch>();
        let stop = options.stop.clone().unwrap_or_default();
        options.stop = Some(stop.clone());
        options.resources.insert(Arc::new(EmbeddedIo { input: Some(in_rx), output: Some(out_tx) }));
        let plan = Arc::clone(&self.plan);
        let handle = std::thread::Builder::new()
            .name("dfp-pipeline".into())
            .spawn(move || executor::run(plan, options))
            .map_err(|e| RunError::Runtime(format!("cannot start the pipeline thread: {e}")))?;
        Ok(RunningPipeline { input: PipelineInput { tx: Some(in_tx) }, output: out_rx, handle, stop })
    }
}

/// Builds a pipeline in code; validation is the same as for YAML.
#[derive(Debug, Clone)]
pub struct PipelineBuilder {
    name: String,
    family: Option<String>,
    runtime: Map<String, Value>,
    stages: Map<String, Value>,
}

impl PipelineBuilder {
    /// Adds a stage: id, type, input ids, and its configuration fields as a JSON object.
    pub fn stage(mut self, id: &str, type_name: &str, inputs: &[&str], config: Value) -> Self {
        let mut body = match config {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                let mut m = Map::new();
                m.insert("config".into(), other);
                m
            }
        };
        body.insert("type".into(), json!(type_name));
        if !inputs.is_empty() {
            body.insert("inputs".into(), json!(inputs));
        }
        self.stages.insert(id.to_string(), Value::Object(body));
        self
    }

    /// Sets the pipeline's log family (the `family` of every stage that reads one).
    pub fn family(mut self, name: &str) -> Self {
        self.family = Some(name.to_string());
        self
    }

    /// Sets the number of worker threads.
    pub fn workers(mut self, workers: usize) -> Self {
        self.runtime.insert("workers".into(), json!(workers));
        self
    }

    /// Sets a `runtime:` field (`max_in_flight`, `dead_letter`, …).
    pub fn runtime(mut self, key: &str, value: Value) -> Self {
        self.runtime.insert(key.into(), value);
        self
    }

    /// Validates and returns the pipeline.
    pub fn build(self) -> Result<Pipeline, SpecError> {
        let mut doc = json!({ "version": 1, "runtime": self.runtime, "stages": self.stages });
        if let Some(f) = self.family {
            doc["family"] = json!(f);
        }
        // JSON is YAML: the builder goes through exactly the same validation as a file.
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        Pipeline::from_yaml_str(&text, &self.name, &[])
    }
}

/// Why a push into a spawned pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The pipeline has stopped (finished, failed or was stopped) or the input was closed.
    #[error("the pipeline no longer accepts input")]
    Closed,
    /// The records could not be converted to Arrow.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The host's end of a spawned pipeline's `embedded-input`.
#[derive(Debug)]
pub struct PipelineInput {
    tx: Option<Sender<Batch>>,
}

impl PipelineInput {
    /// Pushes one record batch (blocks while the pipeline is full).
    pub fn push_batch(&self, data: RecordBatch) -> Result<(), PushError> {
        let tx = self.tx.as_ref().ok_or(PushError::Closed)?;
        let mut batch = Batch::new(data, "");
        batch.envelope.origin = "embedded".into();
        tx.send(batch).map_err(|_| PushError::Closed)
    }

    /// Pushes JSON objects as one batch. Returns the records that were not accepted (index and reason):
    /// nothing is dropped silently.
    pub fn push_json(&self, records: &[Value]) -> Result<Vec<(usize, String)>, PushError> {
        let converted = records_to_batch(records)?;
        if converted.batch.num_rows() > 0 {
            self.push_batch(converted.batch)?;
        }
        Ok(converted.rejected)
    }

    /// Closes the input: `embedded-input` stages finish once they have read what was pushed.
    pub fn close(&mut self) {
        self.tx = None;
    }
}

/// A pipeline running on a background thread.
pub struct RunningPipeline {
    input: PipelineInput,
    output: Receiver<Batch>,
    handle: JoinHandle<Result<RunReport, RunError>>,
    stop: StopHandle,
}

impl RunningPipeline {
    /// Where to push input.
    pub fn input(&self) -> &PipelineInput {
        &self.input
    }

    /// Closes the input (see [`PipelineInput::close`]).
    pub fn close_input(&mut self) {
        self.input.close();
    }

    /// Batches that reached `embedded-output` stages.
    pub fn output(&self) -> &Receiver<Batch> {
        &self.output
    }

    /// Asks the pipeline to stop gracefully.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// True once the pipeline thread has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Closes the input and waits for the pipeline to drain and end.
    pub fn finish(mut self) -> Result<RunReport, RunError> {
        self.input.close();
        self.handle.join().map_err(|_| RunError::Runtime("the pipeline thread panicked".into()))?
    }
}
