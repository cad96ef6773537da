//! Commit gating: at-least-once sources commit their read positions only up to where every stage that
//! checkpoints its own state has made that state durable, and every sink that commits on its own schedule
//! has made what it wrote durable.
//!
//! A stage with state that a restart restores from its own checkpoints (`features` with `checkpoint:`)
//! says so with [`Transform::holds_commits`](crate::Transform::holds_commits) and, after each checkpoint,
//! reports the logical time below which its checkpoint holds everything
//! ([`StageContext::durable`](crate::StageContext::durable)). A sink that commits many epochs in one
//! transaction (`alert-store`) does the same with [`Sink::holds_commits`](crate::Sink::holds_commits). A source is then told
//! ([`Source::completed`](crate::Source::completed)) the lower of the sinks' progress and every such
//! stage's durable frontier, on every worker of every process. Once a source's commit succeeds, the
//! runtime records it, so that a stage knows which events a restart can deliver again
//! ([`StageContext::committed`](crate::StageContext::committed)).
//!
//! In a cluster the figures of other processes' workers arrive over the control stream; a figure not yet
//! known counts as 0 (nothing durable, nothing committed), which only ever holds commits back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One figure of the commit gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Mark {
    /// A checkpointing stage's state holds everything below `frontier` durably.
    Durable {
        /// The stage's index in the plan.
        stage: usize,
        /// The global worker index.
        worker: usize,
        /// The durable frontier.
        frontier: u64,
    },
    /// A source committed its positions up to `frontier` (u64::MAX once it finished).
    Committed {
        /// The source's index in the plan.
        stage: usize,
        /// The global worker index.
        worker: usize,
        /// The committed frontier.
        frontier: u64,
    },
}

#[derive(Default)]
struct Figures {
    gates: BTreeSet<usize>,
    sources: BTreeSet<usize>,
    durable: BTreeMap<(usize, usize), u64>,
    committed: BTreeMap<(usize, usize), u64>,
    /// Marks of this process's workers not yet sent to the other processes.
    outbox: Vec<Mark>,
}

/// The commit gate of one process (shared by its workers).
pub(crate) struct Commits {
    peers: usize,
    /// Other processes take part: marks are queued for them.
    clustered: bool,
    figures: Mutex<Figures>,
    /// A source is waiting for the gate before it finishes: checkpointing stages should checkpoint now.
    wanted: AtomicBool,
}

impl Commits {
    /// A gate for a computation of `peers` workers (over several processes when `clustered`).
    pub(crate) fn new(peers: usize, clustered: bool) -> Self {
        Commits {
            peers: peers.max(1),
            clustered,
            figures: Mutex::new(Figures::default()),
            wanted: AtomicBool::new(false),
        }
    }

    fn figures(&self) -> std::sync::MutexGuard<'_, Figures> {
        self.figures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stage `stage` checkpoints its state: commits wait for it.
    pub(crate) fn add_gate(&self, stage: usize) {
        self.figures().gates.insert(stage);
    }

    /// Stage `stage` is a source (its commits are tracked).
    pub(crate) fn add_source(&self, stage: usize) {
        self.figures().sources.insert(stage);
    }

    /// Whether any stage gates commits.
    pub(crate) fn gated(&self) -> bool {
        !self.figures().gates.is_empty()
    }

    /// The frontier sources may commit up to as far as the gate is concerned (u64::MAX without gates).
    pub(crate) fn durable_frontier(&self) -> u64 {
        let f = self.figures();
        let mut min = u64::MAX;
        for stage in &f.gates {
            for worker in 0..self.peers {
                min = min.min(f.durable.get(&(*stage, worker)).copied().unwrap_or(0));
            }
        }
        min
    }

    /// The lowest position any source of the computation has committed (0 before the first commit):
    /// a restart delivers again what came at or after it.
    pub(crate) fn committed_frontier(&self) -> u64 {
        let f = self.figures();
        let mut min = u64::MAX;
        for stage in &f.sources {
            for worker in 0..self.peers {
                min = min.min(f.committed.get(&(*stage, worker)).copied().unwrap_or(0));
            }
        }
        if f.sources.is_empty() {
            0
        } else {
            min
        }
    }

    /// Records a mark of this process (also queued for the other processes).
    pub(crate) fn record(&self, mark: Mark) {
        let mut f = self.figures();
        if apply(&mut f, mark) && self.clustered {
            f.outbox.push(mark);
        }
    }

    /// Records a mark another process sent.
    pub(crate) fn receive(&self, mark: Mark) {
        apply(&mut self.figures(), mark);
    }

    /// The marks to send to the other processes since the last call.
    pub(crate) fn take_outbox(&self) -> Vec<Mark> {
        std::mem::take(&mut self.figures().outbox)
    }

    /// A source waits for the gate (`true`) before finishing.
    pub(crate) fn set_wanted(&self) {
        self.wanted.store(true, Ordering::Relaxed);
    }

    /// Whether a source waits for the gate.
    pub(crate) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }
}

/// Raises one figure; false when it did not move.
fn apply(f: &mut Figures, mark: Mark) -> bool {
    let (map, key, frontier) = match mark {
        Mark::Durable { stage, worker, frontier } => (&mut f.durable, (stage, worker), frontier),
        Mark::Committed { stage, worker, frontier } => (&mut f.committed, (stage, worker), frontier),
    };
    let slot = map.entry(key).or_insert(0);
    if frontier > *slot {
        *slot = frontier;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_wait_for_every_worker_of_every_gate() {
        let c = Commits::new(2, true);
        assert!(!c.gated());
        assert_eq!(c.durable_frontier(), u64::MAX, "no gate: nothing to wait for");
        c.add_gate(3);
        c.add_source(0);
        assert_eq!(c.durable_frontier(), 0);
        c.record(Mark::Durable { stage: 3, worker: 0, frontier: 10 });
        assert_eq!(c.durable_frontier(), 0, "worker 1 has not checkpointed");
        c.receive(Mark::Durable { stage: 3, worker: 1, frontier: 7 });
        assert_eq!(c.durable_frontier(), 7);
        c.record(Mark::Durable { stage: 3, worker: 0, frontier: 5 });
        assert_eq!(c.durable_frontier(), 7, "figures only rise");
        assert_eq!(c.take_outbox(), vec![Mark::Durable { stage: 3, worker: 0, frontier: 10 }]);
        assert!(c.take_outbox().is_empty());
        assert_eq!(c.committed_frontier(), 0);
        c.record(Mark::Committed { stage: 0, worker: 0, frontier: 4 });
        c.record(Mark::Committed { stage: 0, worker: 1, frontier: u64::MAX });
        assert_eq!(c.committed_frontier(), 4);
    }
}
