//! Writing batches as JSON lines or CSV, shared by the file and stdout sinks.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use dfp_core::StageError;
use schemars::JsonSchema;
use serde::Deserialize;

/// Output encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// From the file extension: `.csv` → CSV, anything else → JSON lines.
    #[default]
    Auto,
    /// One JSON object per line; null fields are left out.
    Jsonl,
    /// Comma-separated values with a header line; the first batch fixes the columns.
    Csv,
    /// Apache Parquet (`file-sink` only); the first batch fixes the columns.
    Parquet,
}

impl OutputFormat {
    /// Resolves `auto` for a path.
    pub fn resolve(self, path: &str) -> OutputFormat {
        match self {
            OutputFormat::Auto if path.to_ascii_lowercase().ends_with(".csv") => OutputFormat::Csv,
            OutputFormat::Auto if path.to_ascii_lowercase().ends_with(".parquet") => OutputFormat::Parquet,
            OutputFormat::Auto => OutputFormat::Jsonl,
            other => other,
        }
    }
}

/// Encodes batches into a writer.
pub struct Encoder {
    format: OutputFormat,
    csv_schema: Option<SchemaRef>,
    warned_extra: bool,
}

impl Encoder {
    /// An encoder for a resolved format.
    pub fn new(format: OutputFormat) -> Self {
        Encoder { format, csv_schema: None, warned_extra: false }
    }

    /// The (resolved) output format.
    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// Writes one batch.
    pub fn write(&mut self, out: &mut dyn Write, batch: &RecordBatch) -> Result<(), StageError> {
        match self.format {
            OutputFormat::Csv => self.write_csv(out, batch),
            OutputFormat::Parquet => Err(StageError::Unsupported("Parquet is written by file-sink only".into())),
            _ => {
                let mut w = arrow::json::LineDelimitedWriter::new(out);
                w.write(batch)?;
                w.finish()?;
                Ok(())
            }
        }
    }

    /// Projects `batch` onto the first batch's columns (by name; missing columns become nulls).
    pub fn project(&mut self, batch: &RecordBatch) -> Result<RecordBatch, StageError> {
        let schema = Arc::clone(self.csv_schema.get_or_insert_with(|| {
            let fields: Vec<Field> =
                batch.schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
            Arc::new(Schema::new(fields))
        }));
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => columns.push(Arc::clone(c)),
                Some(c) => columns.push(arrow::compute::cast(c, f.data_type())?),
                None => columns.push(new_null_array(f.data_type(), batch.num_rows())),
            }
        }
        if !self.warned_extra && batch.schema().fields().iter().any(|f| schema.field_with_name(f.name()).is_err()) {
            self.warned_extra = true;
            tracing::warn!("the output keeps the first batch's columns; later columns are left out");
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    fn write_csv(&mut self, out: &mut dyn Write, batch: &RecordBatch) -> Result<(), StageError> {
        let first = self.csv_schema.is_none();
        if first {
            if let Some(f) = batch.schema().fields().iter().find(|f| nested(f.data_type())) {
                return Err(StageError::Data(format!(
                    "CSV cannot hold the nested column \"{}\" ({}); use format: jsonl or a select stage",
                    f.name(),
                    f.data_type()
                )));
            }
        }
        let projected = self.project(batch)?;
        let mut w = arrow::csv::WriterBuilder::new().with_header(first).build(out);
        w.write(&projected)?;
        Ok(())
    }
}

fn nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Struct(_)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::Map(_, _)
            | DataType::FixedSizeList(_, _)
    )
}
