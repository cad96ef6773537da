//! `type: blackhole` — discards its input (benchmarks, dry runs). Rows are still counted in the run report.
//!
//! ```yaml
//! sink: { type: blackhole, inputs: [features], partition_by: username }
//! ```

use dfp_core::{
    register_stage, Batch, Partitioning, Sink, StageConfig, StageContext, StageError, StageInstance, StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Configuration of `blackhole`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {
    /// Route rows by this column before discarding them (to measure the exchange).
    #[serde(default)]
    pub partition_by: Option<String>,
}

impl StageConfig for BlackholeConfig {
    const TYPE: &'static str = "blackhole";
    const KIND: StageKind = StageKind::Sink;
    const DESCRIPTION: &'static str = "discards its input (benchmarks, dry runs)";
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Sink(Box::new(Blackhole {
            partitioning: self.partition_by.clone().map_or(Partitioning::Any, Partitioning::By),
        })))
    }
}
register_stage!(BlackholeConfig);

struct Blackhole {
    partitioning: Partitioning,
}

impl Sink for Blackhole {
    fn input_partitioning(&self) -> Partitioning {
        self.partitioning.clone()
    }
    fn write(&mut self, _batch: Batch) -> Result<(), StageError> {
        Ok(())
    }
}
