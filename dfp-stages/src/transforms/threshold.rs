//! `type: threshold` — keeps the rows whose score is strictly above a value (the alerts).
//!
//! ```yaml
//! alerts: { type: threshold, inputs: [scored], field: mean_abs_z, above: 2.0 }
//! ```
//!
//! `above: 0` keeps every scored row with a positive score; use a negative value to keep everything. A row
//! whose field is null never passes. A missing or non-numeric field stops the pipeline with its name.

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Float64Type};
use dfp_core::{
    register_stage, Batch, ConfigError, Emitter, StageConfig, StageContext, StageError, StageInstance, StageKind,
    Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Configuration of `threshold`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// The numeric column to compare (default `mean_abs_z`).
    #[serde(default = "d_field")]
    pub field: String,
    /// Keep rows whose field is strictly greater than this.
    pub above: f64,
}

fn d_field() -> String {
    "mean_abs_z".into()
}

impl StageConfig for ThresholdConfig {
    const TYPE: &'static str = "threshold";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "keeps rows whose score is strictly above a value";
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.above.is_finite() {
            return Err(ConfigError::field("above", "must be a finite number"));
        }
        Ok(())
    }
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(Threshold { config: self.clone() })))
    }
}
register_stage!(ThresholdConfig);

struct Threshold {
    config: ThresholdConfig,
}

impl Transform for Threshold {
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        let col = batch.data.column_by_name(&self.config.field).ok_or_else(|| {
            StageError::Data(format!("threshold: no column \"{}\" (is a score stage upstream?)", self.config.field))
        })?;
        let values = cast(col, &DataType::Float64).map_err(|e| {
            StageError::Data(format!("threshold: column \"{}\" is not numeric: {e}", self.config.field))
        })?;
        let values = values.as_primitive::<Float64Type>();
        let keep: BooleanArray =
            (0..values.len()).map(|i| Some(!values.is_null(i) && values.value(i) > self.config.above)).collect();
        out.emit(batch.with_data(filter_record_batch(&batch.data, &keep)?));
        Ok(())
    }
}
