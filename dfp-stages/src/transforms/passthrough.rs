//! `type: passthrough` — passes batches on unchanged: a named point in the graph to branch from, and the
//! built-in baseline of the plugin-boundary benchmark (`dfp bench --plugin`).
//!
//! ```yaml
//! tap: { type: passthrough, inputs: [events] }
//! ```

use dfp_core::{
    register_stage, Batch, Emitter, StageConfig, StageContext, StageError, StageInstance, StageKind, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Configuration of `passthrough` (no fields).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {}

impl StageConfig for PassthroughConfig {
    const TYPE: &'static str = "passthrough";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "passes batches on unchanged (a branch point; benchmark baseline)";
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(Passthrough)))
    }
}
register_stage!(PassthroughConfig);

struct Passthrough;

impl Transform for Passthrough {
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        out.emit(batch);
        Ok(())
    }
}
