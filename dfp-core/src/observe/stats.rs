//! Live figures of one run, shared by the executor (which writes them) and the admin endpoint, the
//! metrics callbacks and the final [`RunReport`](crate::RunReport) (which read them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::tap::Taps;
use crate::stage::StageKind;

/// Per-stage figures of a run, summed over this process's workers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageReport {
    /// Stage id.
    pub id: String,
    /// Stage type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Source, transform or sink.
    pub kind: StageKind,
    /// Rows received.
    pub rows_in: u64,
    /// Rows emitted downstream.
    pub rows_out: u64,
    /// Batches emitted downstream.
    pub batches_out: u64,
    /// Records rejected to the dead-letter output.
    pub dead_letters: u64,
    /// Records dropped on purpose by the stage (see [`Emitter::skip`](crate::stage::Emitter::skip)).
    pub skipped: u64,
    /// The stage's own named counts ([`StageContext::count`](crate::StageContext::count)), such as
    /// duplicate event ids; empty for most stages.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, u64>,
    /// Microseconds the stage's own calls took (reading, processing, writing, releasing, finishing), summed
    /// over this process's workers: where the run's time goes.
    pub busy_us: u64,
}

/// [`StageStats::held_back`] of a source that may send more.
pub(crate) const SOURCE_FREE: u64 = u64::MAX;
/// [`StageStats::held_back`] of a source that has ended.
pub(crate) const SOURCE_ENDED: u64 = u64::MAX - 1;

/// Live counters of one stage, summed over workers.
#[derive(Debug)]
pub struct StageStats {
    /// Stage id.
    pub id: String,
    /// Stage type.
    pub type_name: String,
    /// Source, transform or sink.
    pub kind: StageKind,
    pub(crate) rows_in: AtomicU64,
    pub(crate) rows_out: AtomicU64,
    pub(crate) batches_out: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) skipped: AtomicU64,
    /// Per worker: batches emitted by this source and not yet through every sink.
    pub(crate) in_flight: Vec<AtomicU64>,
    /// Per worker (sources): the logical time this source waits at while it sends nothing until what is in
    /// flight passes the sinks (paused at `runtime.max_in_flight`, or everything read);
    /// [`SOURCE_FREE`] while it may send more, [`SOURCE_ENDED`] once it has ended.
    pub(crate) held_back: Vec<AtomicU64>,
    /// Event time (µs since the Unix epoch) of the newest event seen; `i64::MIN` when none.
    pub(crate) newest_event_us: AtomicI64,
    /// Instances opened successfully (sources: connected).
    pub(crate) opened: AtomicUsize,
    /// Named counts the stage adds (few names, rarely: a lock is fine).
    pub(crate) counters: Mutex<BTreeMap<String, u64>>,
    /// Nanoseconds in the stage's calls, all workers.
    pub(crate) busy_ns: AtomicU64,
}

impl StageStats {
    /// The figures so far.
    pub fn report(&self) -> StageReport {
        StageReport {
            id: self.id.clone(),
            type_name: self.type_name.clone(),
            kind: self.kind,
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            batches_out: self.batches_out.load(Ordering::Relaxed),
            dead_letters: self.dead.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            counters: self.counters.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            busy_us: self.busy_ns.load(Ordering::Relaxed) / 1000,
        }
    }
}

/// Most warnings kept per stage (the first ones; they name what to fix, and the log has every one).
pub const MAX_WARNINGS: usize = 20;

/// Live state of one run: per-stage counters, per-worker busy time, readiness, and the taps.
#[derive(Debug)]
pub struct RunStats {
    /// The pipeline file.
    pub pipeline: String,
    /// Worker threads in this process.
    pub workers: usize,
    /// This process's index in its cluster (0 alone).
    pub process: usize,
    /// Processes in the cluster (1 alone).
    pub processes: usize,
    /// Global index of this process's first worker.
    pub(crate) first_worker: usize,
    pub(crate) cluster_connected: AtomicBool,
    pub(crate) started: Instant,
    pub(crate) stages: Vec<StageStats>,
    pub(crate) busy_ns: Vec<AtomicU64>,
    pub(crate) workers_built: AtomicUsize,
    pub(crate) not_ready: Mutex<BTreeMap<String, String>>,
    /// Problems stages met that do not stop the run (a model that cannot be used, say), by stage.
    pub(crate) warnings: Mutex<BTreeMap<String, Vec<String>>>,
    pub(crate) finished: AtomicBool,
    /// Set once a stage (or the cluster) failed: the run ends with an error.
    pub(crate) failed: AtomicBool,
    pub(crate) taps: Taps,
}

/// One stage in a [`StatsSnapshot`]: its figures so far, plus what only a running stage has.
#[derive(Debug, Clone, Serialize)]
pub struct StageSnapshot {
    /// Id, type, kind and counts (as in the final [`StageReport`]).
    #[serde(flatten)]
    pub stage: StageReport,
    /// Sources: batches in flight (all workers).
    pub in_flight: u64,
    /// Now minus the newest event time seen, when the stage reports event times.
    pub lag_seconds: Option<f64>,
}

/// What `/stats` returns (and `dfp top` shows).
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// The pipeline file.
    pub pipeline: String,
    /// Worker threads in this process.
    pub workers: usize,
    /// This process's index in its cluster.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Seconds since the run started.
    pub uptime_seconds: f64,
    /// Whether the run is ready (see [`RunStats::readiness`]).
    pub ready: bool,
    /// Why not, when not ready.
    pub not_ready: Vec<String>,
    /// Problems that do not stop the run (see [`RunStats::warnings`]).
    pub warnings: Vec<String>,
    /// True once the run ended.
    pub finished: bool,
    /// Per-worker seconds spent in dfp operators.
    pub busy_seconds: Vec<f64>,
    /// One entry per stage, in dependency order.
    pub stages: Vec<StageSnapshot>,
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

impl RunStats {
    /// Fresh state for a run of `stages` (id, type, kind) on `workers` workers in a single process.
    pub fn new(pipeline: &str, workers: usize, stages: impl IntoIterator<Item = (String, String, StageKind)>) -> Self {
        Self::in_cluster(pipeline, workers, 0, 1, stages)
    }

    /// Fresh state for process `process` of `processes`, with `workers` workers each.
    pub fn in_cluster(
        pipeline: &str,
        workers: usize,
        process: usize,
        processes: usize,
        stages: impl IntoIterator<Item = (String, String, StageKind)>,
    ) -> Self {
        let stages: Vec<StageStats> = stages
            .into_iter()
            .map(|(id, type_name, kind)| StageStats {
                id,
                type_name,
                kind,
                rows_in: AtomicU64::new(0),
                rows_out: AtomicU64::new(0),
                batches_out: AtomicU64::new(0),
                dead: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                in_flight: (0..workers).map(|_| AtomicU64::new(0)).collect(),
                held_back: (0..workers).map(|_| AtomicU64::new(SOURCE_FREE)).collect(),
                newest_event_us: AtomicI64::new(i64::MIN),
                opened: AtomicUsize::new(0),
                counters: Mutex::new(BTreeMap::new()),
                busy_ns: AtomicU64::new(0),
            })
            .collect();
        let taps = Taps::new(stages.len());
        RunStats {
            pipeline: pipeline.to_string(),
            workers,
            process,
            processes,
            first_worker: process * workers,
            cluster_connected: AtomicBool::new(processes <= 1),
            started: Instant::now(),
            stages,
            busy_ns: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            workers_built: AtomicUsize::new(0),
            not_ready: Mutex::new(BTreeMap::new()),
            warnings: Mutex::new(BTreeMap::new()),
            finished: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            taps,
        }
    }

    /// This process's slot for global worker index `worker`.
    #[inline]
    pub(crate) fn local(&self, worker: usize) -> usize {
        worker - self.first_worker
    }

    /// The index of a stage by id.
    pub fn stage_index(&self, id: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.id == id)
    }

    /// Stage ids in dependency order.
    pub fn stage_ids(&self) -> Vec<&str> {
        self.stages.iter().map(|s| s.id.as_str()).collect()
    }

    /// `Ok` when the run is ready: every worker built the graph, every stage instance opened (sources:
    /// connected; the scorer: its registry checked), and no stage reported a problem (such as an
    /// unreachable model registry); else the reasons.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if self.finished.load(Ordering::Relaxed) {
            why.push("the pipeline has finished".to_string());
            return Err(why);
        }
        if !self.cluster_connected.load(Ordering::Relaxed) {
            why.push(format!("cluster: connecting process {} to its {} peers", self.process, self.processes - 1));
        }
        let built = self.workers_built.load(Ordering::Relaxed);
        if built < self.workers {
            why.push(format!("graph: {built} of {} workers built it", self.workers));
        }
        for s in &self.stages {
            let open = s.opened.load(Ordering::Relaxed);
            if open < self.workers {
                let what = if s.kind == StageKind::Source { "source" } else { "stage" };
                why.push(format!("{what} \"{}\": {open} of {} instances open", s.id, self.workers));
            }
        }
        for (stage, reason) in self.not_ready.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            why.push(format!("stage \"{stage}\": {reason}"));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    /// Problems stages (or the runtime, without a stage) reported that do not stop the run, as
    /// `stage "id": message` (at most
    /// [`MAX_WARNINGS`] per stage, the first ones).
    pub fn warnings(&self) -> Vec<String> {
        let map = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .flat_map(|(stage, list)| {
                list.iter().map(move |w| if stage.is_empty() { w.clone() } else { format!("stage \"{stage}\": {w}") })
            })
            .collect()
    }

    pub(crate) fn warn(&self, stage: &str, message: String) {
        let mut map = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(stage.to_string()).or_default();
        if list.len() < MAX_WARNINGS && !list.contains(&message) {
            list.push(message);
        }
    }

    pub(crate) fn count(&self, stage: &str, counter: &str, n: u64) {
        if let Some(s) = self.stages.iter().find(|s| s.id == stage) {
            *s.counters.lock().unwrap_or_else(|p| p.into_inner()).entry(counter.to_string()).or_default() += n;
        }
    }

    pub(crate) fn add_busy(&self, stage: &str, took: std::time::Duration) {
        if let Some(s) = self.stages.iter().find(|s| s.id == stage) {
            s.busy_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_readiness(&self, stage: &str, ready: Result<(), String>) {
        let mut map = self.not_ready.lock().unwrap_or_else(|p| p.into_inner());
        match ready {
            Ok(()) => {
                map.remove(stage);
            }
            Err(reason) => {
                map.insert(stage.to_string(), reason);
            }
        }
    }

    /// Seconds between now and the newest event time the stage saw.
    pub(crate) fn lag_seconds(&self, stage: usize) -> Option<f64> {
        let newest = self.stages.get(stage)?.newest_event_us.load(Ordering::Relaxed);
        (newest != i64::MIN).then(|| (now_us() - newest) as f64 / 1e6)
    }

    /// A consistent-enough copy of the figures (each counter read once).
    pub fn snapshot(&self) -> StatsSnapshot {
        let readiness = self.readiness();
        StatsSnapshot {
            pipeline: self.pipeline.clone(),
            workers: self.workers,
            process: self.process,
            processes: self.processes,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            ready: readiness.is_ok(),
            not_ready: readiness.err().unwrap_or_default(),
            warnings: self.warnings(),
            finished: self.finished.load(Ordering::Relaxed),
            busy_seconds: self.busy_ns.iter().map(|b| b.load(Ordering::Relaxed) as f64 / 1e9).collect(),
            stages: self
                .stages
                .iter()
                .enumerate()
                .map(|(i, s)| StageSnapshot {
                    stage: s.report(),
                    in_flight: s.in_flight.iter().map(|a| a.load(Ordering::Relaxed)).sum(),
                    lag_seconds: self.lag_seconds(i),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_missing() {
        let stats = RunStats::new(
            "p.yaml",
            2,
            [
                ("logs".to_string(), "file-source".to_string(), StageKind::Source),
                ("score".into(), "score".into(), StageKind::Transform),
            ],
        );
        let why = stats.readiness().unwrap_err();
        assert!(why.contains(&"graph: 0 of 2 workers built it".to_string()), "{why:?}");
        assert!(why.contains(&"source \"logs\": 0 of 2 instances open".to_string()), "{why:?}");
        stats.workers_built.store(2, Ordering::Relaxed);
        for s in &stats.stages {
            s.opened.store(2, Ordering::Relaxed);
        }
        assert_eq!(stats.readiness(), Ok(()));
        stats.set_readiness("score", Err("model registry down".into()));
        assert_eq!(stats.readiness(), Err(vec!["stage \"score\": model registry down".to_string()]));
        stats.set_readiness("score", Ok(()));
        assert_eq!(stats.readiness(), Ok(()));
        stats.finished.store(true, Ordering::Relaxed);
        assert_eq!(stats.readiness(), Err(vec!["the pipeline has finished".to_string()]));
        assert!(stats.snapshot().finished);
    }
}
