//! Stages that connect a pipeline to the Rust program embedding it: `embedded-input` (a source fed by
//! [`PipelineInput`](crate::PipelineInput)) and `embedded-output` (a sink whose batches arrive on
//! [`RunningPipeline::output`](crate::RunningPipeline::output)).
//!
//! ```yaml
//! stages:
//!   events: { type: embedded-input }
//!   out:    { type: embedded-output, inputs: [events] }
//! ```

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::batch::Batch;
use crate::error::StageError;
use crate::register_stage;
use crate::registry::StageConfig;
use crate::stage::{Emitter, Sink, Source, SourceStatus, StageContext, StageInstance, StageKind};

/// The channels between a spawned pipeline and its host program. [`Pipeline::spawn`](crate::Pipeline::spawn)
/// hands them to the run as a resource (see [`StageContext::resource`]); the embedded stages take them from
/// there.
#[derive(Default, Debug)]
pub struct EmbeddedIo {
    pub(crate) input: Option<Receiver<Batch>>,
    pub(crate) output: Option<Sender<Batch>>,
}

impl EmbeddedIo {
    /// The receiving end of the host's input, when the pipeline was spawned with one.
    pub fn input(&self) -> Option<&Receiver<Batch>> {
        self.input.as_ref()
    }
    /// The sending end of the host's output, when the pipeline was spawned with one.
    pub fn output(&self) -> Option<&Sender<Batch>> {
        self.output.as_ref()
    }
}

/// Reads batches that the host program pushes with `PipelineInput`. Each batch goes to one worker.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedInputConfig {
    /// Most batches taken from the channel per poll.
    #[serde(default = "default_max_batches")]
    pub max_batches_per_poll: usize,
}

fn default_max_batches() -> usize {
    4
}

struct EmbeddedInput {
    rx: Option<Receiver<Batch>>,
    max: usize,
}

impl Source for EmbeddedInput {
    /// The host program pushes for as long as it likes: a stream.
    fn bounded(&self) -> bool {
        false
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.rx = ctx.resource::<EmbeddedIo>().and_then(|io| io.input().cloned());
        if self.rx.is_none() {
            return Err(StageError::Unsupported(
                "embedded-input only works in a pipeline spawned from Rust with Pipeline::spawn".into(),
            ));
        }
        Ok(())
    }

    fn poll(&mut self, ctx: &StageContext, out: &mut Emitter) -> Result<SourceStatus, StageError> {
        let Some(rx) = &self.rx else { return Ok(SourceStatus::Exhausted) };
        if ctx.stop_requested() {
            return Ok(SourceStatus::Exhausted);
        }
        for _ in 0..self.max {
            match rx.try_recv() {
                Ok(mut batch) => {
                    if batch.envelope.source.is_empty() {
                        batch.envelope.source = ctx.stage_id.clone();
                    }
                    out.emit(batch);
                }
                Err(TryRecvError::Empty) => {
                    return Ok(if out.batches().is_empty() { SourceStatus::Idle } else { SourceStatus::Ready });
                }
                Err(TryRecvError::Disconnected) => return Ok(SourceStatus::Exhausted),
            }
        }
        Ok(SourceStatus::Ready)
    }
}

impl StageConfig for EmbeddedInputConfig {
    const TYPE: &'static str = "embedded-input";
    const KIND: StageKind = StageKind::Source;
    const DESCRIPTION: &'static str = "batches pushed by the Rust program that spawned the pipeline";
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Source(Box::new(EmbeddedInput { rx: None, max: self.max_batches_per_poll.max(1) })))
    }
}
register_stage!(EmbeddedInputConfig);

/// Hands every batch to the Rust program that spawned the pipeline.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedOutputConfig {}

struct EmbeddedOutput {
    tx: Option<Sender<Batch>>,
}

impl Sink for EmbeddedOutput {
    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.tx = ctx.resource::<EmbeddedIo>().and_then(|io| io.output().cloned());
        if self.tx.is_none() {
            return Err(StageError::Unsupported(
                "embedded-output only works in a pipeline spawned from Rust with Pipeline::spawn".into(),
            ));
        }
        Ok(())
    }

    fn write(&mut self, batch: Batch) -> Result<(), StageError> {
        if let Some(tx) = &self.tx {
            if tx.send(batch).is_err() {
                // The host dropped its receiver: it no longer wants output.
                tracing::debug!("embedded output receiver dropped; discarding batch");
                self.tx = None;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StageError> {
        self.tx = None;
        Ok(())
    }
}

impl StageConfig for EmbeddedOutputConfig {
    const TYPE: &'static str = "embedded-output";
    const KIND: StageKind = StageKind::Sink;
    const DESCRIPTION: &'static str = "batches handed to the Rust program that spawned the pipeline";
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Sink(Box::new(EmbeddedOutput { tx: None })))
    }
}
register_stage!(EmbeddedOutputConfig);
