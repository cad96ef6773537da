//! `type: threshold` — keeps the rows whose score is strictly above a value (the alerts).
//!
//! ```yaml
//! alerts: { type: threshold, inputs: [scored], field: mean_abs_z, above: 2.0 }
//! ```
//!
//! `above: 0` keeps every scored row with a positive score; use a negative value to keep everything. A row
//! whose field is null never passes; one whose score is NaN always does (it is a row whose scoring went
//! wrong, not a row to drop). A missing or non-numeric field stops the pipeline with its name.
//!
//! With metrics on, every row kept counts in `dfp_alerts_total` by `source` (the log family, the
//! pipeline's `family:`), `country` and `browser` (the columns of the family's `country` and `browser`
//! roles; the browser's family: `Chrome 119.0.0` → `Chrome`) and `model_kind` (`user` or `generic`); a
//! column that is missing counts as `unknown`. `alert_metrics: false` turns that off (for thresholds that
//! are not alerts).

use std::collections::HashMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Float64Type};
use dfp_core::observe::{metrics, KeyValue, Metrics};
use dfp_core::{
    register_stage, Batch, ConfigContext, ConfigError, Emitter, StageConfig, StageContext, StageError, StageInstance,
    StageKind, Transform,
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
    /// The log family whose roles name the country and browser columns of the alert labels; default: the
    /// pipeline's `family`, if it names one.
    #[serde(default)]
    pub family: Option<String>,
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
    fn check(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        match &self.family {
            Some(f) => ctx.family(f).map(|_| ()),
            None => Ok(()),
        }
    }
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let family = self.family.as_deref().map(|f| ctx.family(f)).transpose()?;
        let labels = AlertLabels {
            source: family.as_ref().map_or_else(|| "unknown".to_string(), |f| f.name.clone()),
            country: family.as_ref().and_then(|f| f.roles.country.clone()),
            browser: family.as_ref().and_then(|f| f.roles.browser.clone()),
        };
        Ok(StageInstance::Transform(Box::new(Threshold { config: self.clone(), stage: ctx.stage_id.clone(), labels })))
    }
}
register_stage!(ThresholdConfig);

/// Where the alert labels come from.
struct AlertLabels {
    source: String,
    country: Option<String>,
    browser: Option<String>,
}

struct Threshold {
    config: ThresholdConfig,
    stage: String,
    labels: AlertLabels,
}

/// `data`'s text column `name`, if it has one.
fn text_column<'a>(data: &'a RecordBatch, name: Option<&str>) -> Option<&'a StringArray> {
    name.and_then(|n| data.column_by_name(n)).and_then(|c| c.as_string_opt::<i32>())
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

impl Threshold {
    fn count_alerts(&self, m: &Metrics, alerts: &RecordBatch) {
        // Columns are looked up once per batch, not per row.
        let countries = text_column(alerts, self.labels.country.as_deref());
        let browsers = text_column(alerts, self.labels.browser.as_deref());
        let kinds = text_column(alerts, Some("model_kind"));
        let source = self.labels.source.as_str();
        let mut counts: HashMap<[&str; 4], u64> = HashMap::new();
        for i in 0..alerts.num_rows() {
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
        // A score that is not a number means something went wrong with this row's model: it is kept (an
        // alert to look at), never silently dropped.
        let keep: BooleanArray = (0..values.len())
            .map(|i| Some(!values.is_null(i) && (values.value(i) > self.config.above || values.value(i).is_nan())))
            .collect();
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
    fn a_nan_score_is_never_dropped() {
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "mean_abs_z",
            DataType::Float64,
            true,
        )]));
        let values = arrow::array::Float64Array::from(vec![Some(f64::NAN), Some(0.5), None, Some(3.0)]);
        let data = RecordBatch::try_new(schema, vec![std::sync::Arc::new(values)]).unwrap();
        for (above, kept) in [(-1.0, 3), (2.0, 2)] {
            let config: ThresholdConfig = serde_json::from_value(serde_json::json!({ "above": above })).unwrap();
            let ctx = StageContext::standalone("alerts", 0, 1);
            let StageInstance::Transform(mut t) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
            let mut out = Emitter::new();
            t.process(Batch::new(data.clone(), "scored"), &mut out).unwrap();
            let rows: usize = out.batches().iter().map(Batch::num_rows).sum();
            assert_eq!(rows, kept, "above {above}: NaN kept, null not");
        }
    }

    #[test]
    fn alert_labels_are_bounded_families() {
        assert_eq!(browser_family("Chrome 119.0.0"), "Chrome");
        assert_eq!(browser_family("Mobile Safari 17.1"), "Mobile Safari");
        assert_eq!(browser_family("Firefox/121.0"), "Firefox");
        assert_eq!(browser_family("123"), "unknown");
    }
}
