//! Runtime guarantees, checked through the public API with stages defined here (which also shows that a
//! crate can add static stages with `register_stage!`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use dfp_core::schemars::JsonSchema;
use dfp_core::{
    register_stage, Batch, Emitter, Partitioning, Pipeline, RunError, RunOptions, Sink, Source, SourceStatus,
    StageConfig, StageContext, StageError, StageInstance, StageKind, StopHandle, Transform,
};
use serde::Deserialize;
use serde_json::json;

// ---- a keyed transform that tags every row with the worker that saw it -------------------------------

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TagWorkerConfig {
    by: String,
}

struct TagWorker {
    by: String,
    worker: u32,
}

impl Transform for TagWorker {
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::By(self.by.clone())
    }
    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        let mut fields: Vec<Field> = batch.data.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("worker", DataType::UInt32, false));
        let mut cols = batch.data.columns().to_vec();
        cols.push(Arc::new(UInt32Array::from(vec![self.worker; batch.num_rows()])));
        let data = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        out.emit(batch.with_data(data));
        Ok(())
    }
}

impl StageConfig for TagWorkerConfig {
    const TYPE: &'static str = "test-tag-worker";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "test: adds a `worker` column";
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(TagWorker { by: self.by.clone(), worker: ctx.worker_index as u32 })))
    }
}
register_stage!(TagWorkerConfig);

fn run_tagged(workers: usize, rows: &[serde_json::Value]) -> Vec<(String, i64, u32)> {
    let pipeline = Pipeline::builder("keyed")
        .workers(workers)
        .stage("in", "embedded-input", &[], json!({}))
        .stage("tag", "test-tag-worker", &["in"], json!({"by": "username"}))
        .stage("out", "embedded-output", &["tag"], json!({}))
        .build()
        .unwrap();
    let running = pipeline.spawn(RunOptions::default()).unwrap();
    for chunk in rows.chunks(37) {
        assert!(running.input().push_json(chunk).unwrap().is_empty());
    }
    let output = running.output().clone();
    let report = running.finish().unwrap();
    assert_eq!(report.workers, workers);
    let mut seen = Vec::new();
    for b in output.try_iter() {
        let users = b.data.column_by_name("username").unwrap().as_string::<i32>().clone();
        let n = b.data.column_by_name("n").unwrap().as_primitive::<arrow::datatypes::Int64Type>().clone();
        let w = b.data.column_by_name("worker").unwrap().as_primitive::<arrow::datatypes::UInt32Type>().clone();
        for i in 0..b.num_rows() {
            seen.push((users.value(i).to_string(), n.value(i), w.value(i)));
        }
    }
    seen.sort();
    seen
}

#[test]
fn rows_with_one_key_all_reach_one_worker() {
    let rows: Vec<_> = (0..2000).map(|i| json!({"username": format!("user{}", i % 53), "n": i})).collect();
    for workers in [2, 4] {
        let seen = run_tagged(workers, &rows);
        assert_eq!(seen.len(), rows.len(), "every row arrives exactly once");
        let mut worker_of: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
        for (u, _, w) in &seen {
            worker_of.entry(u).or_default().insert(*w);
        }
        assert_eq!(worker_of.len(), 53);
        for (u, ws) in &worker_of {
            assert_eq!(ws.len(), 1, "user {u} was seen on workers {ws:?}");
        }
        let used: BTreeSet<u32> = worker_of.values().flatten().copied().collect();
        assert_eq!(used.len(), workers, "keys spread over all {workers} workers");
    }
}

#[test]
fn output_multiset_does_not_depend_on_worker_count() {
    let rows: Vec<_> = (0..1500).map(|i| json!({"username": format!("u{}", i % 17), "n": i})).collect();
    let strip = |v: Vec<(String, i64, u32)>| v.into_iter().map(|(u, n, _)| (u, n)).collect::<Vec<_>>();
    let one = strip(run_tagged(1, &rows));
    assert_eq!(one.len(), 1500);
    assert_eq!(one, strip(run_tagged(2, &rows)));
    assert_eq!(one, strip(run_tagged(4, &rows)));
}

// ---- backpressure: a fast source may not run ahead of a slow sink --------------------------------------

static EMITTED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static MAX_AHEAD: AtomicU64 = AtomicU64::new(0);
/// Backpressure notifications the counting sources received: pauses and resumes.
static PAUSES: AtomicU64 = AtomicU64::new(0);
static RESUMES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CountingSourceConfig {
    batches: u64,
    /// Also reject one record every this many batches.
    #[serde(default)]
    dead_every: Option<u64>,
}

struct CountingSource {
    left: u64,
    dead_every: Option<u64>,
}

impl Source for CountingSource {
    fn poll(&mut self, ctx: &StageContext, out: &mut Emitter) -> Result<SourceStatus, StageError> {
        if self.left == 0 || ctx.stop_requested() {
            return Ok(SourceStatus::Exhausted);
        }
        self.left -= 1;
        if self.dead_every.is_some_and(|k| self.left.is_multiple_of(k)) {
            out.dead_letter(dfp_core::DeadLetter::new("test rejection", format!("record {}", self.left), "test:1"));
        }
        let ahead = (EMITTED.fetch_add(1, Ordering::SeqCst) + 1).saturating_sub(WRITTEN.load(Ordering::SeqCst));
        MAX_AHEAD.fetch_max(ahead, Ordering::SeqCst);
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![self.left as i64]))])?;
        out.emit(Batch::new(data, ctx.stage_id.clone()));
        Ok(SourceStatus::Ready)
    }
    fn backpressure(&mut self, paused: bool) -> Result<(), StageError> {
        if paused { &PAUSES } else { &RESUMES }.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl StageConfig for CountingSourceConfig {
    const TYPE: &'static str = "test-counting-source";
    const KIND: StageKind = StageKind::Source;
    const DESCRIPTION: &'static str = "test: one-row batches, counted";
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Source(Box::new(CountingSource { left: self.batches, dead_every: self.dead_every })))
    }
}
register_stage!(CountingSourceConfig);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SlowSinkConfig {
    /// Fail on this batch (1-based), to test failure handling.
    #[serde(default)]
    fail_at: Option<u64>,
    /// Panic instead of returning an error.
    #[serde(default)]
    panic: bool,
    /// Route every batch to worker 0.
    #[serde(default)]
    single: bool,
    /// Make batches durable only in `advance` (as a sink writing one transaction per logical time does).
    #[serde(default)]
    grouped: bool,
    /// Hold commits: make batches durable only at every `held`-th `advance` (or when a source waits for
    /// it), and report that with `StageContext::durable` (as a sink committing many epochs at once does).
    #[serde(default)]
    held: Option<u64>,
}

struct SlowSink {
    single: bool,
    grouped: bool,
    held: Option<u64>,
    advances: u64,
    ctx: StageContext,
    /// Batches taken in but not yet made durable (with `grouped`).
    pending: u64,
    seen: u64,
    fail_at: Option<u64>,
    panic: bool,
}

impl Sink for SlowSink {
    fn input_partitioning(&self) -> Partitioning {
        if self.single {
            Partitioning::Single
        } else {
            Partitioning::Any
        }
    }
    fn write(&mut self, _batch: Batch) -> Result<(), StageError> {
        self.seen += 1;
        if self.fail_at == Some(self.seen) {
            if self.panic {
                panic!("slow sink blew up at batch {}", self.seen);
            }
            return Err(StageError::Data(format!("refusing batch {}", self.seen)));
        }
        std::thread::sleep(Duration::from_millis(1));
        if self.grouped || self.held.is_some() {
            self.pending += 1;
        } else {
            WRITTEN.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn holds_commits(&self) -> bool {
        self.held.is_some()
    }
    fn advance(&mut self, frontier: u64) -> Result<(), StageError> {
        if let Some(every) = self.held {
            self.advances += 1;
            if !self.advances.is_multiple_of(every) && !self.ctx.checkpoint_wanted() {
                return Ok(());
            }
        }
        WRITTEN.fetch_add(std::mem::take(&mut self.pending), Ordering::SeqCst);
        if self.held.is_some() {
            self.ctx.durable(frontier);
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<(), StageError> {
        self.advance(u64::MAX)
    }
}

impl StageConfig for SlowSinkConfig {
    const TYPE: &'static str = "test-slow-sink";
    const KIND: StageKind = StageKind::Sink;
    const DESCRIPTION: &'static str = "test: 1 ms per batch";
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Sink(Box::new(SlowSink {
            single: self.single,
            grouped: self.grouped,
            held: self.held,
            advances: 0,
            ctx: ctx.clone(),
            pending: 0,
            seen: 0,
            fail_at: self.fail_at,
            panic: self.panic,
        })))
    }
}
register_stage!(SlowSinkConfig);

/// Tests sharing the counters above must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_source_pauses_while_too_much_is_in_flight() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    EMITTED.store(0, Ordering::SeqCst);
    WRITTEN.store(0, Ordering::SeqCst);
    MAX_AHEAD.store(0, Ordering::SeqCst);
    PAUSES.store(0, Ordering::SeqCst);
    RESUMES.store(0, Ordering::SeqCst);
    // Two workers, each with a source; the sink runs on worker 0 only, so worker 1's source is free to run
    // ahead unless the probe holds it back.
    let pipeline = Pipeline::builder("bp")
        .workers(2)
        .runtime("max_in_flight", json!(8))
        .stage("src", "test-counting-source", &[], json!({"batches": 200}))
        .stage("sink", "test-slow-sink", &["src"], json!({"single": true}))
        .build()
        .unwrap();
    let report = pipeline.run(RunOptions::default()).unwrap();
    assert_eq!(report.stage("sink").unwrap().rows_in, 400);
    let ahead = MAX_AHEAD.load(Ordering::SeqCst);
    // Per source: 8 epochs in flight, plus the one being polled and one the sink holds.
    assert!(ahead <= 2 * 10, "sources ran {ahead} batches ahead of the sink with max_in_flight 8");
    assert!(ahead >= 4, "sources should be allowed to run ahead a little (saw {ahead})");
    // The sources were told when they were held back and when they could go on.
    let (pauses, resumes) = (PAUSES.load(Ordering::SeqCst), RESUMES.load(Ordering::SeqCst));
    assert!(pauses > 0 && resumes > 0, "pauses {pauses}, resumes {resumes}");
    assert!(pauses - resumes <= 2, "every pause but the last ones is followed by a resume: {pauses} vs {resumes}");
}

#[test]
fn a_failing_stage_stops_the_run_and_is_named() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for panic in [false, true] {
        let pipeline = Pipeline::builder("fail")
            .workers(2)
            .stage("src", "test-counting-source", &[], json!({"batches": 100_000}))
            .stage("writer", "test-slow-sink", &["src"], json!({"fail_at": 5, "panic": panic}))
            .build()
            .unwrap();
        let err = pipeline.run(RunOptions::default()).unwrap_err();
        match &err {
            RunError::Stage { stage, .. } => assert_eq!(stage, "writer"),
            other => panic!("unexpected error {other}"),
        }
        let text = err.to_string();
        if panic {
            assert!(text.contains("panicked: slow sink blew up at batch 5"), "{text}");
        } else {
            assert!(text.contains("refusing batch 5"), "{text}");
        }
    }
}

#[test]
fn stop_drains_and_finishes_early() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let pipeline = Pipeline::builder("stop")
        .stage("src", "test-counting-source", &[], json!({"batches": 1_000_000}))
        .stage("sink", "test-slow-sink", &["src"], json!({}))
        .build()
        .unwrap();
    let stop = StopHandle::new();
    let mut options = RunOptions::default();
    options.stop = Some(stop.clone());
    let t = std::thread::spawn(move || pipeline.run(options));
    std::thread::sleep(Duration::from_millis(200));
    stop.stop();
    let report = t.join().unwrap().unwrap();
    let src = report.stage("src").unwrap().rows_out;
    let sink = report.stage("sink").unwrap().rows_in;
    assert!(src > 0 && src < 1_000_000, "stopped early: {src}");
    assert_eq!(src, sink, "everything emitted before the stop reached the sink");
}

#[test]
fn dead_letters_go_to_the_stage_that_reads_them() {
    let pipeline = Pipeline::from_yaml_str(
        r#"
version: 1
runtime: { workers: 2 }
stages:
  src:    { type: test-counting-source, batches: 50, dead_every: 10 }
  sink:   { type: test-slow-sink, inputs: [src] }
  errors: { type: embedded-output, inputs: [dead-letters] }
"#,
        "dl.yaml",
        &[],
    )
    .unwrap();
    assert!(pipeline.plan().routes_dead_letters());
    let running = pipeline.spawn(RunOptions::default()).unwrap();
    let out = running.output().clone();
    let report = running.finish().unwrap();
    // 2 workers × 50 batches, one rejection every 10 → 10 dead letters
    assert_eq!(report.dead_letters, 10);
    assert_eq!(report.stage("sink").unwrap().rows_in, 100);
    assert!(report.dead_letter_file.is_none(), "routed dead letters do not go to the file");
    let mut rows = 0;
    for b in out.try_iter() {
        let names: Vec<String> = b.data.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["stage", "reason", "record", "origin"]);
        let stage = b.data.column(0).as_string::<i32>();
        let reason = b.data.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            assert_eq!(stage.value(i), "src");
            assert_eq!(reason.value(i), "test rejection");
        }
        rows += b.num_rows();
    }
    assert_eq!(rows, 10);
}

#[test]
fn unrouted_dead_letters_go_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dl.jsonl");
    let pipeline = Pipeline::builder("dl-file")
        .runtime("dead_letter", json!(path.to_str().unwrap()))
        .stage("src", "test-counting-source", &[], json!({"batches": 30, "dead_every": 10}))
        .stage("sink", "test-slow-sink", &["src"], json!({}))
        .build()
        .unwrap();
    let report = pipeline.run(RunOptions::default()).unwrap();
    assert_eq!(report.dead_letter_file.as_deref(), path.to_str());
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["stage"] == "src" && l["reason"] == "test rejection" && l["origin"] == "test:1"));
}

#[test]
fn embedded_stages_refuse_to_run_outside_an_embedding_program() {
    let pipeline = Pipeline::builder("x")
        .stage("in", "embedded-input", &[], json!({}))
        .stage("out", "test-slow-sink", &["in"], json!({}))
        .build()
        .unwrap();
    let err = pipeline.run(RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("stage \"in\"") && err.contains("Pipeline::spawn"), "{err}");
}

// ---- a source told what has passed the sinks (at-least-once commits) ---------------------------------

/// (frontier, batches written by the sink when the source was told) per `completed` call.
static COMPLETIONS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
/// Whether `finish` ran after the last `completed`.
static FINISHED_AFTER: Mutex<Option<u64>> = Mutex::new(None);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CommittingSourceConfig {
    batches: u64,
}

struct CommittingSource {
    left: u64,
    last: u64,
}

impl Source for CommittingSource {
    fn poll(&mut self, ctx: &StageContext, out: &mut Emitter) -> Result<SourceStatus, StageError> {
        if self.left == 0 {
            return Ok(SourceStatus::Exhausted);
        }
        self.left -= 1;
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![self.left as i64]))])?;
        out.emit(Batch::new(data, ctx.stage_id.clone()));
        Ok(SourceStatus::Ready)
    }
    fn completed(&mut self, frontier: u64) -> Result<(), StageError> {
        assert!(frontier > self.last, "frontiers increase: {} then {frontier}", self.last);
        self.last = frontier;
        COMPLETIONS.lock().unwrap().push((frontier, WRITTEN.load(Ordering::SeqCst)));
        Ok(())
    }
    fn wants_completion(&self) -> bool {
        true
    }
    fn finish(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        *FINISHED_AFTER.lock().unwrap() = Some(self.last);
        Ok(())
    }
}

impl StageConfig for CommittingSourceConfig {
    const TYPE: &'static str = "test-committing-source";
    const KIND: StageKind = StageKind::Source;
    const DESCRIPTION: &'static str = "test: records what passed the sinks";
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Source(Box::new(CommittingSource { left: self.batches, last: 0 })))
    }
}
register_stage!(CommittingSourceConfig);

/// Runs `batches` from the committing source through `middle` (a stage type and its config, if any) into
/// the slow sink; checks that at every completion the source heard everything below it was written, and
/// that the last covers every batch.
fn run_committing(name: &str, batches: u64, in_flight: u64, middle: Option<(&str, serde_json::Value)>) {
    run_committing_into(name, batches, in_flight, middle, json!({}));
}

/// [`run_committing`] into a slow sink configured with `sink`.
fn run_committing_into(
    name: &str,
    batches: u64,
    in_flight: u64,
    middle: Option<(&str, serde_json::Value)>,
    sink: serde_json::Value,
) {
    WRITTEN.store(0, Ordering::SeqCst);
    COMPLETIONS.lock().unwrap().clear();
    let mut builder = Pipeline::builder(name).workers(1).runtime("max_in_flight", json!(in_flight)).stage(
        "src",
        "test-committing-source",
        &[],
        json!({ "batches": batches }),
    );
    let last = match middle {
        Some((kind, config)) => {
            builder = builder.stage("mid", kind, &["src"], config);
            "mid"
        }
        None => "src",
    };
    builder.stage("sink", "test-slow-sink", &[last], sink).build().unwrap().run(RunOptions::default()).unwrap();
    let calls = COMPLETIONS.lock().unwrap().clone();
    assert!(calls.len() > 1, "told along the way, not only at the end: {calls:?}");
    for (frontier, written) in &calls {
        // One batch per logical time: everything below the frontier was written when the source was told
        // (while batches wait in a gathering stage too: a Kafka source would commit offsets no sink has).
        assert!(*written >= *frontier, "told {frontier} had passed when only {written} batches were written");
    }
    assert_eq!(calls.last().unwrap().0, batches, "the last call covers every batch");
    WRITTEN.store(0, Ordering::SeqCst);
}

#[test]
fn a_sink_that_makes_batches_durable_in_advance_counts_them_written_only_then() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    run_committing_into("grouped", 50, 4, None, json!({ "grouped": true }));
}

#[test]
fn a_sink_that_holds_commits_counts_batches_written_only_once_it_reports_them_durable() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Durable at every 5th frontier only: the source must not hear of the frontiers in between, and at
    // the end (its source waiting for it) the sink makes the rest durable at once.
    run_committing_into("held", 50, 4, None, json!({ "held": 5 }));
    assert_eq!(*FINISHED_AFTER.lock().unwrap(), Some(50), "finish comes after the last completion");
}

#[test]
fn a_source_learns_what_passed_every_sink_before_it_finishes() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    run_committing("commit", 50, 4, None);
    assert_eq!(*FINISHED_AFTER.lock().unwrap(), Some(50), "finish comes after the last completion");
}

// ---- a stage that gathers rows for a while (as `score` does) ------------------------------------------

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GatherConfig {
    ms: u64,
    /// Also let the batches go as soon as the sources are held back and everything they sent has come
    /// (as `score` does); each such gather's size goes to [`HELD_GATHERS`].
    #[serde(default)]
    until_held: bool,
}

/// Batches per gather that a `test-gather` with `until_held` let go because the sources were held back.
static HELD_GATHERS: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Such gathers let go before a `test-idle-source` had ended.
static HELD_BEFORE_IDLE_ENDED: AtomicU64 = AtomicU64::new(0);
/// Set when a `test-idle-source` ends.
static IDLE_ENDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct IdleSourceConfig {
    ms: u64,
}

/// Sends nothing for `ms`, then ends: a source that may still send all that time.
struct IdleSource {
    wait: Duration,
    since: Option<std::time::Instant>,
}

impl Source for IdleSource {
    fn poll(&mut self, _ctx: &StageContext, _out: &mut Emitter) -> Result<SourceStatus, StageError> {
        if self.since.get_or_insert_with(std::time::Instant::now).elapsed() < self.wait {
            return Ok(SourceStatus::Idle);
        }
        IDLE_ENDED.store(true, Ordering::SeqCst);
        Ok(SourceStatus::Exhausted)
    }
}

impl StageConfig for IdleSourceConfig {
    const TYPE: &'static str = "test-idle-source";
    const KIND: StageKind = StageKind::Source;
    const DESCRIPTION: &'static str = "test: sends nothing for a while, then ends";
    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Source(Box::new(IdleSource { wait: Duration::from_millis(self.ms), since: None })))
    }
}
register_stage!(IdleSourceConfig);

/// Keeps every batch until the oldest has waited `ms`, then lets them all go (one per logical time).
struct Gather {
    wait: Duration,
    until_held: bool,
    ctx: StageContext,
    frontier: u64,
    pending: Vec<Batch>,
    since: Option<std::time::Instant>,
}

impl Transform for Gather {
    fn process(&mut self, batch: Batch, _out: &mut Emitter) -> Result<(), StageError> {
        self.since.get_or_insert_with(std::time::Instant::now);
        self.pending.push(batch);
        Ok(())
    }
    fn advance(&mut self, frontier: u64, _out: &mut Emitter) -> Result<(), StageError> {
        self.frontier = frontier;
        Ok(())
    }
    fn poll_timer(&mut self, out: &mut Emitter) -> Result<Option<Duration>, StageError> {
        let Some(since) = self.since else { return Ok(None) };
        let held = self.until_held && self.ctx.sources_held_back().is_some_and(|t| self.frontier >= t);
        if held {
            HELD_GATHERS.lock().unwrap().push(self.pending.len());
            if !IDLE_ENDED.load(Ordering::SeqCst) {
                HELD_BEFORE_IDLE_ENDED.fetch_add(1, Ordering::SeqCst);
            }
        } else if since.elapsed() < self.wait {
            let next = self.wait - since.elapsed();
            return Ok(Some(if self.until_held { next.min(Duration::from_millis(1)) } else { next }));
        }
        for b in self.pending.drain(..) {
            out.emit(b);
        }
        self.since = None;
        Ok(None)
    }
    fn holding(&self) -> Option<u64> {
        self.pending.iter().filter_map(|b| b.envelope.time).min()
    }
    fn finish(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        for b in self.pending.drain(..) {
            out.emit(b);
        }
        Ok(())
    }
}

impl StageConfig for GatherConfig {
    const TYPE: &'static str = "test-gather";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "test: holds rows for a while";
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(Gather {
            wait: Duration::from_millis(self.ms),
            until_held: self.until_held,
            ctx: ctx.clone(),
            frontier: 0,
            pending: Vec::new(),
            since: None,
        })))
    }
}
register_stage!(GatherConfig);

#[test]
fn rows_a_stage_holds_do_not_count_as_done_until_a_sink_wrote_them() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    run_committing("gathered-commit", 60, 8, Some(("test-gather", json!({"ms": 25}))));
}

#[test]
fn a_gathering_stage_learns_that_the_sources_wait_for_it_and_has_all_they_sent() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    HELD_GATHERS.lock().unwrap().clear();
    // The stage would hold its batches for 20 s: only the held-back signal lets them go sooner, and it
    // must come once every batch in flight has arrived, not before. The last gather goes when the source
    // has read everything and waits for it.
    run_committing("held-back-gather", 60, 8, Some(("test-gather", json!({"ms": 20_000, "until_held": true}))));
    let gathers = HELD_GATHERS.lock().unwrap().clone();
    assert!(gathers.len() >= 5, "the sources were held back again and again: {gathers:?}");
    // With 8 batches allowed in flight, the source pauses with 9 out (one per logical time); all of them have
    // come when the stage lets go. The last gather holds the rest.
    assert_eq!(gathers.iter().sum::<usize>(), 60, "{gathers:?}");
    let (last, full) = gathers.split_last().unwrap();
    assert!(full.iter().all(|&n| n == 9) && *last <= 9, "every gather holds all the batches in flight: {gathers:?}");
}

#[test]
fn a_source_that_may_still_send_keeps_gathering_stages_waiting() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    HELD_GATHERS.lock().unwrap().clear();
    HELD_BEFORE_IDLE_ENDED.store(0, Ordering::SeqCst);
    IDLE_ENDED.store(false, Ordering::SeqCst);
    // `src` is held back at once; `idle` feeds another branch and may send for 300 ms: until it ends, more
    // input may come, so the gathering stage is not told that the sources wait for it.
    Pipeline::builder("held-back-two-sources")
        .workers(1)
        .runtime("max_in_flight", json!(8))
        .stage("src", "test-committing-source", &[], json!({ "batches": 60 }))
        .stage("idle", "test-idle-source", &[], json!({ "ms": 300 }))
        .stage("mid", "test-gather", &["src"], json!({"ms": 20_000, "until_held": true}))
        .stage("sink", "test-slow-sink", &["mid"], json!({}))
        .stage("idle_sink", "test-slow-sink", &["idle"], json!({}))
        .build()
        .unwrap()
        .run(RunOptions::default())
        .unwrap();
    WRITTEN.store(0, Ordering::SeqCst);
    COMPLETIONS.lock().unwrap().clear();
    assert!(IDLE_ENDED.load(Ordering::SeqCst));
    assert_eq!(HELD_BEFORE_IDLE_ENDED.load(Ordering::SeqCst), 0, "nothing went while `idle` could still send");
    let gathers = HELD_GATHERS.lock().unwrap().clone();
    assert_eq!(gathers.iter().sum::<usize>(), 60, "then every gather went as the sources waited: {gathers:?}");
}

// ---- stages that work on after `finish` (training on other threads) ----------------------------------

/// Which `test-after-finish` stages have had `finish` called, per test (the stages name theirs).
static FINISH_CALLED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
/// `test-after-finish` stages dropped while their thread was still working.
static DROPPED_WORKING: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AfterFinishConfig {
    /// The stages of one test: each waits, on its thread, until every one of them has been finished.
    group: Vec<String>,
    /// Fail in `poll_timer` instead of reporting.
    #[serde(default)]
    fail: bool,
}

/// Counts its rows; at `finish`, hands the report to a thread that first waits until every stage of its
/// group was finished (so a runtime that runs one such stage's work before calling the next `finish` never
/// sees them all), then emits it from `poll_timer`.
struct AfterFinish {
    me: String,
    config: AfterFinishConfig,
    rows: usize,
    done: Option<std::sync::mpsc::Receiver<String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Transform for AfterFinish {
    fn input_partitioning(&self) -> Partitioning {
        Partitioning::Single
    }
    fn process(&mut self, batch: Batch, _out: &mut Emitter) -> Result<(), StageError> {
        self.rows += batch.num_rows();
        Ok(())
    }
    fn finish(&mut self, _out: &mut Emitter) -> Result<(), StageError> {
        if self.rows == 0 {
            return Ok(()); // the instances on other workers: nothing to report
        }
        FINISH_CALLED.lock().unwrap().insert(self.me.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let (me, rows, group, stop) = (self.me.clone(), self.rows, self.config.group.clone(), self.stop.clone());
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let all = || group.iter().all(|g| FINISH_CALLED.lock().unwrap().contains(g));
            while !all() && start.elapsed() < Duration::from_secs(20) && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = tx.send(format!("{me}: {rows} rows, all finished: {}", all()));
        });
        self.done = Some(rx);
        Ok(())
    }
    fn poll_timer(&mut self, out: &mut Emitter) -> Result<Option<Duration>, StageError> {
        let Some(rx) = &self.done else { return Ok(None) };
        let Ok(line) = rx.try_recv() else { return Ok(Some(Duration::from_millis(10))) };
        if self.config.fail {
            return Err(StageError::Other(format!("failed after finish ({line})")));
        }
        let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(arrow::array::StringArray::from(vec![line]))])?;
        out.emit(Batch::new(data, self.me.clone()));
        self.done = None;
        Ok(None)
    }
    fn holding(&self) -> Option<u64> {
        self.done.as_ref().map(|_| 0)
    }
}

impl Drop for AfterFinish {
    fn drop(&mut self) {
        if self.done.is_some() {
            DROPPED_WORKING.fetch_add(1, Ordering::Relaxed);
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

impl StageConfig for AfterFinishConfig {
    const TYPE: &'static str = "test-after-finish";
    const KIND: StageKind = StageKind::Transform;
    const DESCRIPTION: &'static str = "test: reports its row count from a thread after finish";
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        Ok(StageInstance::Transform(Box::new(AfterFinish {
            me: ctx.stage_id.clone(),
            config: self.clone(),
            rows: 0,
            done: None,
            stop: Arc::default(),
        })))
    }
}
register_stage!(AfterFinishConfig);

fn after_finish_pipeline(workers: usize, a: serde_json::Value, b: serde_json::Value) -> dfp_core::RunningPipeline {
    let pipeline = Pipeline::builder("after-finish")
        .workers(workers)
        .stage("in", "embedded-input", &[], json!({}))
        .stage("a", "test-after-finish", &["in"], a)
        .stage("b", "test-after-finish", &["in"], b)
        .stage("out", "embedded-output", &["a", "b"], json!({}))
        .build()
        .unwrap();
    let running = pipeline.spawn(RunOptions::default()).unwrap();
    let rows: Vec<_> = (0..300).map(|i| json!({"username": format!("u{}", i % 7), "n": i})).collect();
    for chunk in rows.chunks(50) {
        assert!(running.input().push_json(chunk).unwrap().is_empty());
    }
    running
}

#[test]
fn stages_working_after_finish_run_at_once_and_their_output_is_delivered() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for workers in [1, 2] {
        let group = json!({"group": ["a", "b"]});
        let running = after_finish_pipeline(workers, group.clone(), group);
        let output = running.output().clone();
        running.finish().unwrap();
        let mut lines: Vec<String> = Vec::new();
        for b in output.try_iter() {
            let col = b.data.column_by_name("line").unwrap().as_string::<i32>().clone();
            lines.extend(col.iter().flatten().map(str::to_string));
        }
        lines.sort();
        // Both stages sit on worker 0: each one's work waits for the other's `finish`, which only a runtime
        // that goes on while a stage works can call.
        assert_eq!(
            lines,
            ["a: 300 rows, all finished: true", "b: 300 rows, all finished: true"],
            "{workers} worker(s)"
        );
        FINISH_CALLED.lock().unwrap().clear();
    }
}

#[test]
fn a_stage_failing_after_finish_fails_the_run_and_the_other_is_dropped_while_working() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // `b` waits for a stage that never finishes (`c`), so it is still working when `a` fails.
    let running = after_finish_pipeline(2, json!({"group": ["a"], "fail": true}), json!({"group": ["c"]}));
    let dropped = DROPPED_WORKING.load(Ordering::Relaxed);
    let err = running.finish().unwrap_err();
    FINISH_CALLED.lock().unwrap().clear();
    assert!(err.to_string().contains("failed after finish (a: 300 rows"), "{err}");
    assert!(DROPPED_WORKING.load(Ordering::Relaxed) > dropped, "the working stage was dropped (and told to stop)");
}
