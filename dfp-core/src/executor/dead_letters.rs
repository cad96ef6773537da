//! Dead letters: their batch form (for the stage that reads `dead-letters`) and the operators that turn the
//! dead-letter stream into batches or write it to the JSON-lines file `runtime.dead_letter`.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::state::{Batches, Dead, Shared, Time};
use crate::batch::Batch;
use crate::error::StageError;
use crate::spec::DEAD_LETTERS;
use crate::stage::DeadLetter;

/// The schema of dead-letter batches.
pub fn dead_letter_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("stage", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
        Field::new("origin", DataType::Utf8, false),
    ]))
}

/// Dead letters as one record batch (columns `stage`, `reason`, `record`, `origin`).
pub fn dead_letters_batch(dead: &[DeadLetter]) -> RecordBatch {
    let col = |f: fn(&DeadLetter) -> &str| Arc::new(StringArray::from_iter_values(dead.iter().map(f))) as _;
    RecordBatch::try_new(
        dead_letter_schema(),
        vec![col(|d| &d.stage), col(|d| &d.reason), col(|d| &d.record), col(|d| &d.origin)],
    )
    .expect("dead-letter columns match their schema")
}

/// Turns dead letters into batches of [`dead_letter_schema`], for the stage that reads `dead-letters`.
pub(super) fn dead_letters_to_batches(dead: Dead<'_>) -> Batches<'_> {
    dead.unary::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(Pipeline, "dead-letters", |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let batch = Batch::new(dead_letters_batch(data), DEAD_LETTERS);
                data.clear();
                output.session(&cap).give(batch);
            });
        }
    })
}

/// Writes unrouted dead letters as JSON lines on worker 0; the file is created on the first letter.
pub(super) fn dead_letter_file_op(dead: Dead<'_>, shared: Arc<Shared>) -> Stream<'_, Time, Vec<()>> {
    dead.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &DeadLetter| 0u64),
        "dead-letter-file",
        move |_, _| {
            move |input, _output| {
                input.for_each(|_cap, data| {
                    if data.is_empty() {
                        return;
                    }
                    let mut slot = shared.dead_letter_file.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.is_none() {
                        let path = std::path::Path::new(&shared.dead_letter_path);
                        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        match std::fs::File::create(path) {
                            Ok(f) => *slot = Some(std::io::BufWriter::new(f)),
                            Err(e) => {
                                drop(slot);
                                shared.fail("dead-letters", StageError::io(path, e));
                                data.clear();
                                return;
                            }
                        }
                    }
                    if let Some(w) = slot.as_mut() {
                        for d in data.drain(..) {
                            let line = serde_json::to_string(&d).unwrap_or_default();
                            if let Err(e) = writeln!(w, "{line}") {
                                let path = shared.dead_letter_path.clone();
                                drop(slot);
                                shared.fail("dead-letters", StageError::io(path, e));
                                return;
                            }
                            shared.dead_written.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        },
    )
}
