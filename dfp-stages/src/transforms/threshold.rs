//! `type: threshold` — keeps the rows whose score is strictly above a value (the alerts).
//!
//! ```yaml
//! alerts: { type: threshold, inputs: [scored], field: mean_abs_z, above: 2.0 }
//! ```
//!
//! `above: 0` keeps every scored row with a positive score; use a negative value to keep everything. A row
//! whose field is null never passes. A missing or non-numeric field stops the pipeline with its name.
//!
//! With metrics on, every row kept counts in `dfp_alerts_total` by `source` (from `model_name`,
//! `DFP-<source>-…`), `country`, `browser` (the family: `Chrome 119.0.0` → `Chrome`; from
//! `deviceDetailbrowser` or `accessdevicebrowser`) and `model_kind` (`user` or `generic`); a column that
//! is missing counts as `unknown`. `alert_metrics: false` turns that off (for thresholds that are not
//! alerts).

use std::collections::HashMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Float64Type};
use dfp_core::observe::{metrics, KeyValue, Metrics};
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
    /// Count the rows kept in the `dfp_alerts_total` metric (by source, country, browser, model kind).
    #[serde(default = "d_true")]
    pub alert_metrics: bool,
}

fn d_true() -> bool {
    true
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
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(Threshold { config: self.clone(), stage: ctx.stage_id.clone() })))
    }
}
register_stage!(ThresholdConfig);

struct Threshold {
    config: ThresholdConfig,
    stage: String,
}

/// The first of `names` that `data` has as a text column.
fn text_column<'a>(data: &'a RecordBatch, names: &[&str]) -> Option<&'a StringArray> {
    names.iter().find_map(|n| data.column_by_name(n)).and_then(|c| c.as_string_opt::<i32>())
}

/// Row `i` of a text column, if the column exists and the value is not null.
fn text_at(col: Option<&StringArray>, i: usize) -> Option<&str> {
    col.filter(|c| c.is_valid(i)).map(|c| c.value(i))
}

/// `Chrome 119.0.0` → `Chrome`, `Edge 120` → `Edge`, `Mobile Safari 17.1` → `Mobile Safari`: versions
/// would make the label unbounded.
fn browser_family(b: &str) -> &str {
    let cut = b.find(|c: char| c.is_ascii_digit()).unwrap_or(b.len());
    let family = b[..cut].trim_end_matches([' ', '.', '/', 'v']).trim();
    if family.is_empty() {
        "unknown"
    } else {
        family
    }
}

/// `DFP-azure-alice@x.com` → `azure`.
fn source_of(model: &str) -> Option<&str> {
    model.strip_prefix("DFP-")?.split('-').next().filter(|s| !s.is_empty())
}

impl Threshold {
    fn count_alerts(&self, m: &Metrics, alerts: &RecordBatch) {
        // Columns are looked up once per batch, not per row.
        let models = text_column(alerts, &["model_name"]);
        let countries = text_column(alerts, &["country"]);
        let browsers = text_column(alerts, &["deviceDetailbrowser", "accessdevicebrowser", "browser"]);
        let kinds = text_column(alerts, &["model_kind"]);
        let mut counts: HashMap<[&str; 4], u64> = HashMap::new();
        for i in 0..alerts.num_rows() {
            let source = text_at(models, i).and_then(source_of).unwrap_or("unknown");
            let country = text_at(countries, i).filter(|c| !c.is_empty()).unwrap_or("unknown");
            let browser = text_at(browsers, i).map_or("unknown", browser_family);
            let kind = text_at(kinds, i).unwrap_or("unknown");
            *counts.entry([source, country, browser, kind]).or_default() += 1;
        }
        for ([source, country, browser, kind], n) in counts {
            let labels = [
                KeyValue::new("stage", self.stage.clone()),
                KeyValue::new("source", m.bounded("source", source)),
                KeyValue::new("country", m.bounded("country", country)),
                KeyValue::new("browser", m.bounded("browser", browser)),
                KeyValue::new("model_kind", m.bounded("model_kind", kind)),
            ];
            m.alerts.add(n, &labels);
        }
    }
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
        let alerts = filter_record_batch(&batch.data, &keep)?;
        if self.config.alert_metrics {
            if let Some(m) = metrics() {
                self.count_alerts(m, &alerts);
            }
        }
        out.emit(batch.with_data(alerts));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_labels_are_bounded_families() {
        assert_eq!(browser_family("Chrome 119.0.0"), "Chrome");
        assert_eq!(browser_family("Mobile Safari 17.1"), "Mobile Safari");
        assert_eq!(browser_family("Firefox/121.0"), "Firefox");
        assert_eq!(browser_family("123"), "unknown");
        assert_eq!(source_of("DFP-azure-alice@x.com"), Some("azure"));
        assert_eq!(source_of("DFP-duo-=generic"), Some("duo"));
        assert_eq!(source_of("custom"), None);
    }
}
