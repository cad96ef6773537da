//! Splitting a batch by key so that all rows with one key reach one worker.

use std::sync::Arc;

use arrow::array::{Array, AsArray, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::DataType;

use crate::batch::Batch;
use crate::error::StageError;
use crate::hash::worker_for;

/// Splits `batch` into per-worker parts by the stable hash of `column` (nulls hash like the empty
/// string). Rows keep their relative order inside each part. Returns `(worker, part)` pairs.
pub fn split_by_key(batch: Batch, column: &str, workers: usize) -> Result<Vec<(u64, Batch)>, StageError> {
    if workers <= 1 {
        return Ok(vec![(0, batch)]);
    }
    let Some(col) = batch.data.column_by_name(column) else {
        let names: Vec<String> = batch.data.schema().fields().iter().map(|f| f.name().clone()).collect();
        return Err(StageError::Data(format!(
            "input is partitioned by column \"{column}\", but a batch from \"{}\" has no such column (columns: {})",
            batch.envelope.source,
            names.join(", ")
        )));
    };
    let strings = match col.data_type() {
        DataType::Utf8 => Arc::clone(col),
        _ => cast(col, &DataType::Utf8)?,
    };
    let strings = strings.as_string::<i32>();
    let mut parts: Vec<Vec<u32>> = vec![Vec::new(); workers];
    for row in 0..strings.len() {
        let key = if strings.is_null(row) { "" } else { strings.value(row) };
        parts[worker_for(key.as_bytes(), workers)].push(row as u32);
    }
    let non_empty = parts.iter().filter(|p| !p.is_empty()).count();
    if non_empty == 1 {
        let w = parts.iter().position(|p| !p.is_empty()).unwrap_or(0);
        return Ok(vec![(w as u64, batch)]);
    }
    let mut out = Vec::with_capacity(non_empty);
    for (w, rows) in parts.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let data = take_record_batch(&batch.data, &UInt32Array::from(rows))?;
        out.push((w as u64, batch.with_data(data)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::worker_for;
    use arrow::array::StringArray;
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;

    #[test]
    fn every_row_lands_on_its_keys_worker() {
        let users: Vec<Option<&str>> =
            (0..50).map(|i| if i % 7 == 0 { None } else { Some(["a", "b", "c", "d", "e"][i % 5]) }).collect();
        let schema = Arc::new(Schema::new(vec![Field::new("username", DataType::Utf8, true)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(users))]).unwrap();
        let parts = split_by_key(Batch::new(data, "s"), "username", 3).unwrap();
        assert_eq!(parts.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), 50);
        for (w, b) in parts {
            let col = b.data.column(0).as_string::<i32>();
            for i in 0..col.len() {
                let key = if col.is_null(i) { "" } else { col.value(i) };
                assert_eq!(worker_for(key.as_bytes(), 3) as u64, w);
            }
        }
    }

    #[test]
    fn missing_column_names_the_column() {
        let schema = Arc::new(Schema::new(vec![Field::new("user", DataType::Utf8, true)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["a"]))]).unwrap();
        let e = split_by_key(Batch::new(data, "logs"), "username", 2).unwrap_err().to_string();
        assert!(e.contains("\"username\"") && e.contains("logs") && e.contains("user"), "{e}");
    }
}
