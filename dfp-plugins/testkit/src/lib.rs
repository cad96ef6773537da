//! Stages for dfp's own tests and benchmarks of the plugin boundary: a passthrough transform (the
//! overhead benchmark), a transform that fails or panics on demand, a row source and a counting sink.

use std::sync::Arc;

use dfp_plugin_sdk::arrow::array::{BooleanArray, Float64Array, StringArray};
use dfp_plugin_sdk::arrow::compute::filter_record_batch;
use dfp_plugin_sdk::prelude::*;

/// Passes batches through unchanged; rows whose `username` equals `reject_user` go to the dead letters.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Passthrough {
    /// Send the rows of this user to the dead letters instead of passing them on.
    #[serde(default)]
    reject_user: Option<String>,
}

impl Stage for Passthrough {
    const TYPE: &'static str = "plugin-passthrough";
    const KIND: Kind = Kind::Transform;
    const DESCRIPTION: &'static str = "passes batches through (test plugin)";
    fn build(&self, _ctx: &Context) -> Result<Instance, Error> {
        Ok(Instance::transform(Pass { reject: self.reject_user.clone() }))
    }
}
stage!(Passthrough);

struct Pass {
    reject: Option<String>,
}

impl Transform for Pass {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), Error> {
        let Some(reject) = &self.reject else {
            out.emit(batch);
            return Ok(());
        };
        let users =
            batch.column_by_name("username").and_then(|c| c.as_string_opt::<i32>()).ok_or("no username column")?;
        let keep: BooleanArray = users.iter().map(|u| Some(u != Some(reject.as_str()))).collect();
        for (i, k) in keep.iter().enumerate() {
            if k == Some(false) {
                out.dead_letter("rejected user", &format!("row {i} of user {reject}"));
            }
        }
        out.emit(filter_record_batch(&batch, &keep)?);
        Ok(())
    }
}

/// Fails (or panics) once it has seen `after_rows` rows.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Fail {
    /// Rows to pass before failing.
    #[serde(default)]
    after_rows: u64,
    /// Panic instead of returning an error.
    #[serde(default)]
    panic: bool,
}

impl Stage for Fail {
    const TYPE: &'static str = "plugin-fail";
    const KIND: Kind = Kind::Transform;
    const DESCRIPTION: &'static str = "fails or panics after some rows (test plugin)";
    fn build(&self, _ctx: &Context) -> Result<Instance, Error> {
        Ok(Instance::transform(Failing { after: self.after_rows, panic: self.panic, seen: 0 }))
    }
}
stage!(Fail);

struct Failing {
    after: u64,
    panic: bool,
    seen: u64,
}

impl Transform for Failing {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), Error> {
        self.seen += batch.num_rows() as u64;
        if self.seen > self.after {
            if self.panic {
                panic!("testkit panics on purpose after {} rows", self.after);
            }
            return Err(Error(format!("testkit fails on purpose after {} rows", self.after)));
        }
        out.emit(batch);
        Ok(())
    }
}

/// Emits `rows` rows (`id`, `username`, `value`) in batches of `batch_size`, spread over the workers.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Rows {
    /// Rows in all (over all workers).
    rows: u64,
    /// Rows per batch.
    #[serde(default = "default_batch")]
    batch_size: u64,
    /// Distinct users.
    #[serde(default = "default_users")]
    users: u64,
}

fn default_batch() -> u64 {
    4096
}

fn default_users() -> u64 {
    100
}

impl Stage for Rows {
    const TYPE: &'static str = "plugin-rows";
    const KIND: Kind = Kind::Source;
    const DESCRIPTION: &'static str = "emits numbered rows (test plugin)";
    fn validate(&self) -> Result<(), Error> {
        if self.batch_size == 0 || self.users == 0 {
            return Err("batch_size and users must be at least 1".into());
        }
        Ok(())
    }
    fn build(&self, ctx: &Context) -> Result<Instance, Error> {
        let w = ctx.workers().max(1) as u64;
        let i = ctx.worker_index() as u64;
        // Worker i emits rows i, i + w, i + 2w, …
        Ok(Instance::source(RowSource {
            next: i,
            step: w,
            end: self.rows,
            batch: self.batch_size,
            users: self.users,
            ctx: ctx.clone(),
        }))
    }
}
stage!(Rows);

struct RowSource {
    next: u64,
    step: u64,
    end: u64,
    batch: u64,
    users: u64,
    ctx: Context,
}

impl Source for RowSource {
    fn poll(&mut self, out: &mut Emitter) -> Result<SourceStatus, Error> {
        if self.next >= self.end {
            return Ok(SourceStatus::Exhausted);
        }
        let ids: Vec<u64> = (0..self.batch).map(|k| self.next + k * self.step).take_while(|v| *v < self.end).collect();
        self.next += ids.len() as u64 * self.step;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("username", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(ids.iter().map(|v| format!("row-{v}")))),
                Arc::new(StringArray::from_iter_values(ids.iter().map(|v| format!("user{}", v % self.users)))),
                Arc::new(Float64Array::from_iter_values(ids.iter().map(|v| *v as f64))),
            ],
        )?;
        self.ctx.counter_add("rows", ids.len() as u64);
        out.emit(batch);
        Ok(if self.next >= self.end { SourceStatus::Exhausted } else { SourceStatus::Ready })
    }
}

/// Counts rows; at the end appends `<worker> <rows>` to `path` and logs the count.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CountSink {
    /// The file the count is appended to.
    path: String,
}

impl Stage for CountSink {
    const TYPE: &'static str = "plugin-count-sink";
    const KIND: Kind = Kind::Sink;
    const DESCRIPTION: &'static str = "counts rows into a file (test plugin)";
    fn build(&self, ctx: &Context) -> Result<Instance, Error> {
        Ok(Instance::sink(Counter { path: self.path.clone(), rows: 0, ctx: ctx.clone() }))
    }
}
stage!(CountSink);

struct Counter {
    path: String,
    rows: u64,
    ctx: Context,
}

impl Sink for Counter {
    fn write(&mut self, batch: RecordBatch) -> Result<(), Error> {
        self.rows += batch.num_rows() as u64;
        Ok(())
    }
    fn finish(&mut self) -> Result<(), Error> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error(format!("{}: {e}", self.path)))?;
        // One write per line, so that workers appending at the same time do not interleave.
        let line = format!("{} {}\n", self.ctx.worker_index(), self.rows);
        f.write_all(line.as_bytes()).map_err(|e| Error(format!("{}: {e}", self.path)))?;
        self.ctx.log(Level::Info, &format!("counted {} rows", self.rows));
        Ok(())
    }
}

export_plugin!(name: "testkit", version: env!("CARGO_PKG_VERSION"));
