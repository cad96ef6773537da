//! `type: filter` — keeps the rows whose field meets one condition.
//!
//! ```yaml
//! failures: { type: filter, inputs: [events], field: status, equals: failure }
//! risky:    { type: filter, inputs: [scored], field: mean_abs_z, above: 2.0 }
//! ```
//!
//! Exactly one of `equals`, `not_equals`, `above`, `below`, `one_of`, `is_null` is given. The value is
//! converted to the column's type (`above: 2` on a float column compares as 2.0; on a string column
//! `above` compares lexicographically, which suits ISO timestamps). A row whose field is null — or a batch
//! without the column — never passes a comparison; `is_null: true` keeps exactly those rows. A value that
//! cannot be converted to the column's type stops the pipeline with a message naming both.

use std::sync::Arc;

use arrow::array::Scalar;
use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::compute::kernels::cmp;
use arrow::compute::{cast, filter_record_batch, is_not_null, is_null, or};
use dfp_core::{
    register_stage, Batch, ConfigError, Emitter, StageConfig, StageContext, StageError, StageInstance, StageKind,
    Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// Configuration of `filter`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The column to test.
    pub field: String,
    /// Keep rows where the field equals this value.
    #[serde(default)]
    pub equals: Option<Value>,
    /// Keep rows where the field is not null and differs from this value.
    #[serde(default)]
    pub not_equals: Option<Value>,
    /// Keep rows where the field is greater than this value.
    #[serde(default)]
    pub above: Option<Value>,
    /// Keep rows where the field is less than this value.
    #[serde(default)]
    pub below: Option<Value>,
    /// Keep rows where the field equals one of these values.
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    /// `true`: keep rows where the field is null or missing; `false`: keep the others.
    #[serde(default)]
    pub is_null: Option<bool>,
}

#[derive(Debug, Clone)]
enum Condition {
    Cmp(Op, Value),
    OneOf(Vec<Value>),
    IsNull(bool),
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Eq,
    Neq,
    Gt,
    Lt,
}

impl FilterConfig {
    fn condition(&self) -> Result<Condition, ConfigError> {
        let mut found = Vec::new();
        if let Some(v) = &self.equals {
            found.push(("equals", Condition::Cmp(Op::Eq, v.clone())));
        }
        if let Some(v) = &self.not_equals {
            found.push(("not_equals", Condition::Cmp(Op::Neq, v.clone())));
        }
        if let Some(v) = &self.above {
            found.push(("above", Condition::Cmp(Op::Gt, v.clone())));
        }
        if let Some(v) = &self.below {
            found.push(("below", Condition::Cmp(Op::Lt, v.clone())));
        }
        if let Some(v) = &self.one_of {
            found.push(("one_of", Condition::OneOf(v.clone())));
        }
        if let Some(v) = self.is_null {
            found.push(("is_null", Condition::IsNull(v)));
        }
        match found.len() {
            1 => {
                let (name, cond) = found.remove(0);
                let values: Vec<&Value> = match &cond {
                    Condition::Cmp(_, v) => vec![v],
                    Condition::OneOf(vs) => vs.iter().collect(),
                    Condition::IsNull(_) => vec![],
                };
                if let Some(bad) = values.iter().find(|v| v.is_object() || v.is_array() || v.is_null()) {
                    return Err(ConfigError::field(name, format!("must be a string, number or boolean, not {bad}")));
                }
                Ok(cond)
            }
            0 => Err(ConfigError::new("give one condition: equals, not_equals, above, below, one_of or is_null")),
            _ => Err(ConfigError::new(format!(
                "give only one condition, found {}",
                found.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

impl StageConfig for FilterConfig {
    const TYPE: &'static str = "filter";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "keeps rows whose field equals / exceeds / is one of a value";

    fn validate(&self) -> Result<(), ConfigError> {
        self.condition().map(|_| ())
    }

    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let condition = self.condition().map_err(|e| StageError::Other(e.to_string()))?;
        Ok(StageInstance::Transform(Box::new(Filter {
            field: self.field.clone(),
            condition,
            stage: ctx.stage_id.clone(),
        })))
    }
}
register_stage!(FilterConfig);

struct Filter {
    field: String,
    condition: Condition,
    stage: String,
}

/// A JSON scalar as a one-element Arrow array.
fn scalar_array(v: &Value) -> ArrayRef {
    match v {
        Value::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
        Value::Number(n) if n.is_i64() => Arc::new(Int64Array::from(vec![n.as_i64().unwrap_or_default()])),
        Value::Number(n) => Arc::new(Float64Array::from(vec![n.as_f64().unwrap_or_default()])),
        Value::String(s) => Arc::new(StringArray::from(vec![s.as_str()])),
        other => Arc::new(StringArray::from(vec![other.to_string()])),
    }
}

impl Filter {
    fn compare(&self, col: &ArrayRef, op: Op, value: &Value) -> Result<BooleanArray, StageError> {
        // A fractional value against an integer column compares as floats (`below: 2.5` keeps 2).
        let widened;
        let col = if value.as_number().is_some_and(|n| !n.is_i64() && !n.is_u64()) && col.data_type().is_integer() {
            widened = cast(col, &arrow::datatypes::DataType::Float64)?;
            &widened
        } else {
            col
        };
        let converted =
            cast(&scalar_array(value), col.data_type()).ok().filter(|a| a.null_count() == 0).ok_or_else(|| {
                StageError::Data(format!(
                    "filter on \"{}\": the column holds {} values, which cannot be compared with {value}",
                    self.field,
                    col.data_type()
                ))
            })?;
        let rhs = Scalar::new(converted);
        Ok(match op {
            Op::Eq => cmp::eq(col, &rhs)?,
            Op::Neq => cmp::neq(col, &rhs)?,
            Op::Gt => cmp::gt(col, &rhs)?,
            Op::Lt => cmp::lt(col, &rhs)?,
        })
    }

    fn mask(&self, batch: &Batch) -> Result<Option<BooleanArray>, StageError> {
        let Some(col) = batch.data.column_by_name(&self.field) else {
            // A missing column is all nulls.
            return Ok(match self.condition {
                Condition::IsNull(true) => None,
                _ => Some(BooleanArray::from(vec![false; batch.num_rows()])),
            });
        };
        Ok(Some(match &self.condition {
            Condition::IsNull(true) => is_null(col)?,
            Condition::IsNull(false) => is_not_null(col)?,
            Condition::Cmp(op, v) => self.compare(col, *op, v)?,
            Condition::OneOf(values) => {
                let mut acc = BooleanArray::from(vec![false; batch.num_rows()]);
                for v in values {
                    acc = or(&acc, &self.compare(col, Op::Eq, v)?)?;
                }
                acc
            }
        }))
    }
}

impl Transform for Filter {
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        match self.mask(&batch) {
            Ok(None) => out.emit(batch),
            Ok(Some(mask)) => {
                let kept = filter_record_batch(&batch.data, &mask)?;
                out.emit(batch.with_data(kept));
            }
            Err(e) => {
                tracing::debug!(stage = %self.stage, "filter failed");
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfp_core::json::records_to_batch;
    use serde_json::json;

    fn run(config: Value, rows: Vec<Value>) -> Result<Vec<Value>, StageError> {
        let cfg: FilterConfig = serde_json::from_value(config).unwrap();
        cfg.validate().map_err(|e| StageError::Other(e.to_string()))?;
        let StageInstance::Transform(mut t) = StageConfig::build(&cfg, &StageContext::standalone("f", 0, 1))? else {
            panic!("not a transform")
        };
        let data = records_to_batch(&rows).unwrap().batch;
        let mut em = Emitter::new();
        t.process(Batch::new(data, "t"), &mut em)?;
        let mut out = Vec::new();
        for b in em.batches() {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            w.write(&b.data).unwrap();
            w.finish().unwrap();
            out.extend(serde_json::from_slice::<Vec<Value>>(&w.into_inner()).unwrap());
        }
        Ok(out)
    }

    fn rows() -> Vec<Value> {
        vec![
            json!({"u": "a", "n": 1, "s": "fail"}),
            json!({"u": "b", "n": 5, "s": "ok"}),
            json!({"u": "c", "n": 9}),
            json!({"u": "d", "n": 3, "s": "fail"}),
        ]
    }

    #[test]
    fn equals_and_not_equals_skip_nulls() {
        let eq = run(json!({"field": "s", "equals": "fail"}), rows()).unwrap();
        assert_eq!(eq.iter().map(|r| r["u"].clone()).collect::<Vec<_>>(), vec![json!("a"), json!("d")]);
        let ne = run(json!({"field": "s", "not_equals": "fail"}), rows()).unwrap();
        assert_eq!(ne.iter().map(|r| r["u"].clone()).collect::<Vec<_>>(), vec![json!("b")]);
    }

    #[test]
    fn numeric_comparisons_convert_the_value() {
        assert_eq!(run(json!({"field": "n", "above": 2.5}), rows()).unwrap().len(), 3);
        assert_eq!(run(json!({"field": "n", "below": 2.5}), rows()).unwrap().len(), 1);
        let above = run(json!({"field": "n", "above": 3}), rows()).unwrap();
        assert_eq!(above.len(), 2);
        let below = run(json!({"field": "n", "below": 3}), rows()).unwrap();
        assert_eq!(below.len(), 1);
        let one_of = run(json!({"field": "n", "one_of": [1, 9]}), rows()).unwrap();
        assert_eq!(one_of.len(), 2);
    }

    #[test]
    fn is_null_and_missing_column() {
        assert_eq!(run(json!({"field": "s", "is_null": true}), rows()).unwrap().len(), 1);
        assert_eq!(run(json!({"field": "s", "is_null": false}), rows()).unwrap().len(), 3);
        assert_eq!(run(json!({"field": "nope", "equals": 1}), rows()).unwrap().len(), 0);
        assert_eq!(run(json!({"field": "nope", "is_null": true}), rows()).unwrap().len(), 4);
    }

    #[test]
    fn incomparable_value_is_a_stage_error_naming_the_field() {
        let e = run(json!({"field": "n", "equals": "abc"}), rows()).unwrap_err().to_string();
        assert!(e.contains("\"n\"") && e.contains("abc"), "{e}");
    }

    #[test]
    fn exactly_one_condition() {
        assert!(run(json!({"field": "n"}), rows()).unwrap_err().to_string().contains("give one condition"));
        assert!(run(json!({"field": "n", "above": 1, "below": 3}), rows())
            .unwrap_err()
            .to_string()
            .contains("only one"));
    }
}
