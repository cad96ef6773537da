//! What the executor's operators share: the stream types, the run state ([`Shared`]: first error, abort
//! flag, live figures, dead-letter file), the panic guard around stage calls, and the environment of one
//! stage operator ([`OpEnv`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use opentelemetry::KeyValue;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;

use crate::batch::Batch;
use crate::cluster::RunControl;
use crate::commits::{Commits, Mark};
use crate::error::{RunError, StageError};
use crate::observe::{self, RunStats, StageStats};
use crate::stage::{DeadLetter, Emitter, StageContext};

pub(super) type Time = u64;
pub(super) type Item = Result<Batch, DeadLetter>;
pub(super) type Batches<'s> = Stream<'s, Time, Vec<Batch>>;
pub(super) type Dead<'s> = Stream<'s, Time, Vec<DeadLetter>>;
pub(super) type Items<'s> = Stream<'s, Time, Vec<Item>>;
pub(super) type ItemBuilder = CapacityContainerBuilder<Vec<Item>>;

/// The state of one run, shared by every worker's operators.
pub(super) struct Shared {
    pub(super) error: Mutex<Option<RunError>>,
    pub(super) abort: AtomicBool,
    pub(super) stats: Arc<RunStats>,
    /// The newest logical time any source of the cluster emitted at, or any stage of this process
    /// received data at, as far as this process knows.
    pub(super) max_time: AtomicU64,
    pub(super) dead_written: AtomicU64,
    pub(super) dead_letter_path: String,
    pub(super) dead_letter_file: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
    /// A bounded source stopped because a stop was asked for, not because its input ended.
    pub(super) cut_short: AtomicBool,
    /// How far sources may commit, and how far they did (see [`crate::commits`]).
    pub(super) commits: Arc<Commits>,
    /// What each stage's workers of this process share ([`crate::StageContext::process_state`]).
    pub(super) states: crate::stage::StageStates,
}

impl Shared {
    /// Records a run-level error (the first one wins) and stops the pipeline.
    pub(super) fn set_error(&self, error: RunError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(error);
        }
        self.abort.store(true, Ordering::SeqCst);
        self.stats.failed.store(true, Ordering::SeqCst);
    }
    /// The recorded error, as text.
    pub(super) fn error_text(&self) -> String {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|e| e.to_string()).unwrap_or_default()
    }
    pub(super) fn fail(&self, stage: &str, source: StageError) {
        tracing::debug!(stage, error = %source, "stage failed; stopping the pipeline");
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(RunError::Stage { stage: stage.to_string(), error: source });
        }
        self.abort.store(true, Ordering::SeqCst);
        self.stats.failed.store(true, Ordering::SeqCst);
    }
    pub(super) fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

impl RunControl for Shared {
    fn process(&self) -> usize {
        self.stats.process
    }
    fn max_time(&self) -> u64 {
        self.max_time.load(Ordering::Relaxed)
    }
    fn raise_max_time(&self, time: u64) {
        self.max_time.fetch_max(time, Ordering::Relaxed);
    }
    fn aborted(&self) -> bool {
        Shared::aborted(self)
    }
    fn error_text(&self) -> String {
        Shared::error_text(self)
    }
    fn set_error(&self, error: RunError) {
        Shared::set_error(self, error)
    }
    fn take_marks(&self) -> Vec<Mark> {
        self.commits.take_outbox()
    }
    fn receive_mark(&self, mark: Mark) {
        self.commits.receive(mark)
    }
}

/// Runs one stage call, turning a panic into [`StageError::Panic`].
pub(super) fn guard<R>(f: impl FnOnce() -> Result<R, StageError>) -> Result<R, StageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            Err(StageError::Panic(crate::error::panic_message(&*payload).unwrap_or_else(|| "unknown panic".into())))
        }
    }
}

/// Everything one stage operator needs.
pub(super) struct OpEnv {
    pub(super) stage_index: usize,
    pub(super) ctx: StageContext,
    pub(super) shared: Arc<Shared>,
    /// Metric labels of this stage.
    pub(super) attrs: [KeyValue; 2],
    /// This worker's slot in the process's per-worker figures.
    pub(super) local: usize,
}

impl OpEnv {
    pub(super) fn counters(&self) -> &StageStats {
        &self.shared.stats.stages[self.stage_index]
    }
    pub(super) fn id(&self) -> &str {
        &self.ctx.stage_id
    }
    /// Runs one stage call, adding its time to the worker's and the stage's busy time and the stage's
    /// histogram.
    #[inline]
    pub(super) fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let started = Instant::now();
        let r = f();
        let took = started.elapsed();
        let ns = took.as_nanos() as u64;
        self.shared.stats.busy_ns[self.local].fetch_add(ns, Ordering::Relaxed);
        self.counters().busy_ns.fetch_add(ns, Ordering::Relaxed);
        if let Some(m) = observe::metrics() {
            m.stage_seconds.record(took.as_secs_f64(), &self.attrs);
        }
        r
    }
    /// Offers a batch to the stage's taps (`dfp tap`), when any are attached.
    #[inline]
    pub(super) fn tap(&self, batch: &Batch) {
        let taps = &self.shared.stats.taps;
        if taps.active(self.stage_index) {
            taps.offer(self.stage_index, batch);
        }
    }
    /// Moves what a stage emitted into the output, counting it.
    pub(super) fn flush(&self, em: &mut Emitter, out: &mut Vec<Item>) {
        let (batches, dead) = em.take();
        let c = self.counters();
        c.skipped.fetch_add(std::mem::take(&mut em.skipped), Ordering::Relaxed);
        if let Some(t) = em.event_time.take() {
            c.newest_event_us.fetch_max(t, Ordering::Relaxed);
        }
        for b in batches {
            c.rows_out.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            c.batches_out.fetch_add(1, Ordering::Relaxed);
            self.tap(&b);
            out.push(Ok(b));
        }
        for mut d in dead {
            d.stage = self.ctx.stage_id.clone();
            c.dead.fetch_add(1, Ordering::Relaxed);
            out.push(Err(d));
        }
    }
}
