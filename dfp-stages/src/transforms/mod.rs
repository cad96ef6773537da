//! Transforms: batch in, batches out.
pub mod features;
pub mod filter;
pub mod passthrough;
pub mod promote;
pub mod score;
pub mod select;
pub mod suppress;
pub mod threshold;
pub mod train;
pub mod user_data;

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use dfp_core::StageError;

/// The `username` column of a batch, or an error naming the stage.
pub(crate) fn users<'a>(batch: &'a RecordBatch, stage: &str) -> Result<&'a StringArray, StageError> {
    batch
        .column_by_name("username")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| StageError::Data(format!("{stage}: input needs a text `username` column")))
}

/// The row indexes of each user, users in name order; rows without a user are grouped under `None`, first.
pub(crate) fn rows_by_user(users: &StringArray) -> Vec<(Option<&str>, Vec<u32>)> {
    let mut groups: HashMap<Option<&str>, Vec<u32>> = HashMap::new();
    for i in 0..users.len() {
        groups.entry(users.is_valid(i).then(|| users.value(i))).or_default().push(i as u32);
    }
    let mut groups: Vec<(Option<&str>, Vec<u32>)> = groups.into_iter().collect();
    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    groups
}
