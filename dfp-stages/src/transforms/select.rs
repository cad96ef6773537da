//! `type: select` — keeps, drops or renames columns.
//!
//! ```yaml
//! slim: { type: select, inputs: [events], columns: [id, username, timestamp] }
//! lean: { type: select, inputs: [events], drop: [raw] }
//! ```
//!
//! With `columns`, the output has exactly those columns in that order; a column missing from a batch is
//! filled with nulls so every output batch has the same shape. With `drop`, the named columns are removed
//! where present. `rename` maps old names to new ones, applied last.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use dfp_core::{
    register_stage, Batch, ConfigError, Emitter, StageConfig, StageContext, StageError, StageInstance, StageKind,
    Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Configuration of `select`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    /// Keep exactly these columns, in this order (missing ones become null).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Remove these columns.
    #[serde(default)]
    pub drop: Option<Vec<String>>,
    /// Rename columns: `old: new`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

impl StageConfig for SelectConfig {
    const TYPE: &'static str = "select";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "keeps, drops or renames columns";

    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.columns, &self.drop) {
            (Some(_), Some(_)) => Err(ConfigError::new("give `columns` or `drop`, not both")),
            (None, None) if self.rename.is_empty() => Err(ConfigError::new("give `columns`, `drop` or `rename`")),
            (Some(c), _) if c.is_empty() => Err(ConfigError::field("columns", "must name at least one column")),
            _ => Ok(()),
        }
    }

    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(Select { config: self.clone() })))
    }
}
register_stage!(SelectConfig);

struct Select {
    config: SelectConfig,
}

impl Transform for Select {
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        let schema = batch.data.schema();
        let mut fields: Vec<Field> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        if let Some(keep) = &self.config.columns {
            for name in keep {
                match schema.index_of(name) {
                    Ok(i) => {
                        fields.push(schema.field(i).clone());
                        columns.push(Arc::clone(batch.data.column(i)));
                    }
                    Err(_) => {
                        fields.push(Field::new(name, DataType::Utf8, true));
                        columns.push(new_null_array(&DataType::Utf8, batch.num_rows()));
                    }
                }
            }
        } else {
            let drop = self.config.drop.as_deref().unwrap_or_default();
            for (i, f) in schema.fields().iter().enumerate() {
                if !drop.contains(f.name()) {
                    fields.push(f.as_ref().clone());
                    columns.push(Arc::clone(batch.data.column(i)));
                }
            }
        }
        let fields: Vec<Field> = fields
            .into_iter()
            .map(|f| match self.config.rename.get(f.name()) {
                Some(new) => f.with_name(new),
                None => f,
            })
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let data = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)?;
        out.emit(batch.with_data(data));
        Ok(())
    }
}
