//! JSON records → Arrow, with per-record rejection.
//!
//! Used by the file source and by [`PipelineInput::push_json`](crate::PipelineInput::push_json). The schema
//! is inferred from the records themselves; a record that does not fit (not an object, or a field whose
//! type conflicts with the rest) is rejected with a reason instead of failing the whole set.

use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::error::ArrowError;
use arrow::json::reader::{infer_json_schema_from_iterator, ReaderBuilder};
use arrow::record_batch::RecordBatch;
use serde_json::Value;

/// The outcome of converting records: the batch of accepted rows and the rejected records' indices with
/// reasons. Accepted rows keep their input order.
#[derive(Debug)]
pub struct Converted {
    /// Accepted rows (possibly empty).
    pub batch: RecordBatch,
    /// `(index in the input, reason)` for each rejected record.
    pub rejected: Vec<(usize, String)>,
}

/// Converts JSON objects into one record batch.
pub fn records_to_batch(values: &[Value]) -> Result<Converted, ArrowError> {
    let mut rejected = Vec::new();
    let mut objects: Vec<(usize, &Value)> = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        if v.is_object() {
            objects.push((i, v));
        } else {
            rejected.push((i, format!("expected a JSON object, found {}", kind_of(v))));
        }
    }
    let schema = match infer_json_schema_from_iterator(objects.iter().map(|(_, v)| Ok(*v))) {
        Ok(schema) => schema,
        Err(_) => {
            // Conflicting types: keep records in order while they merge with what came before.
            let mut merged = Schema::empty();
            let mut kept = Vec::with_capacity(objects.len());
            for (i, v) in objects.drain(..) {
                let one = infer_json_schema_from_iterator(std::iter::once(Ok(v)))?;
                match Schema::try_merge([merged.clone(), one]) {
                    Ok(m) => {
                        merged = m;
                        kept.push((i, v));
                    }
                    Err(e) => rejected.push((i, format!("field types conflict with earlier records: {e}"))),
                }
            }
            objects = kept;
            merged
        }
    };
    let schema = Arc::new(schema);
    let rows: Vec<&Value> = objects.iter().map(|(_, v)| *v).collect();
    match decode(&schema, &rows) {
        Ok(batch) => {
            rejected.sort_by_key(|(i, _)| *i);
            Ok(Converted { batch, rejected })
        }
        Err(_) => {
            // Find the records the decoder refuses, one by one (error path only).
            let mut good = Vec::with_capacity(rows.len());
            for (i, v) in &objects {
                match decode(&schema, &[*v]) {
                    Ok(_) => good.push(*v),
                    Err(e) => rejected.push((*i, e.to_string())),
                }
            }
            let batch = decode(&schema, &good)?;
            rejected.sort_by_key(|(i, _)| *i);
            Ok(Converted { batch, rejected })
        }
    }
}

fn decode(schema: &Arc<Schema>, rows: &[&Value]) -> Result<RecordBatch, ArrowError> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(rows.len().max(1))
        .with_coerce_primitive(true)
        .build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema))))
}

/// A word for the JSON type of a value.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_objects_and_rejects_the_rest_in_order() {
        let values = vec![json!({"a": 1, "b": "x"}), json!(3), json!({"a": 2}), json!("s")];
        let c = records_to_batch(&values).unwrap();
        assert_eq!(c.batch.num_rows(), 2);
        assert_eq!(c.rejected.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 3]);
        assert!(c.rejected[0].1.contains("a number"));
    }

    #[test]
    fn conflicting_nested_types_reject_only_the_odd_record() {
        let values = vec![json!({"a": {"x": 1}}), json!({"a": [1, 2]}), json!({"a": {"x": 2}})];
        let c = records_to_batch(&values).unwrap();
        assert_eq!(c.batch.num_rows(), 2);
        assert_eq!(c.rejected.len(), 1);
        assert_eq!(c.rejected[0].0, 1);
    }
}
