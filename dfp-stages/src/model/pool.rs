//! The training threads: one pool per process that every `train` stage hands its models to.
//!
//! A timely worker trains nothing itself. Each `train` stage, once its input ends, submits one job per model
//! (the `users` stage a job per user, the `generic` stage one job for the shared models) and returns; the
//! pool runs the heaviest job first, on as many threads as the process has workers. So the generic model,
//! the longest job, starts at once and the per-user models of every worker fill the other threads around
//! it, instead of each worker training its own users and the generic model's worker training it after them.
//!
//! Each job trains with one libtorch thread, as a worker did, so a model is bit-for-bit the same whichever
//! thread trains it and however many there are.

use std::collections::BinaryHeap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::{Condvar, Mutex, OnceLock};

/// A job: its weight (the rows it trains on) orders the queue, heaviest first, then the order of submission.
struct Job {
    weight: u64,
    seq: u64,
    run: Box<dyn FnOnce() + Send>,
}

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        (self.weight, self.seq) == (other.weight, other.seq)
    }
}
impl Eq for Job {}
impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Job {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // The max-heap pops the heaviest job, and among equal weights the one submitted first.
        self.weight.cmp(&other.weight).then(other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct Queue {
    jobs: BinaryHeap<Job>,
    threads: usize,
    seq: u64,
}

/// The process's training pool.
#[derive(Default)]
struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// A submitted job's result, once it is done.
pub(crate) struct Ticket<T> {
    rx: Receiver<std::thread::Result<T>>,
}

/// What [`Ticket::poll`] found.
pub(crate) enum Polled<T> {
    /// Not done yet.
    Pending,
    /// Done: what the job returned.
    Done(T),
    /// The job panicked (the message, when it had one).
    Panicked(String),
}

impl<T> Ticket<T> {
    /// The job's result if it is done, without waiting.
    pub(crate) fn poll(&self) -> Polled<T> {
        match self.rx.try_recv() {
            Ok(Ok(v)) => Polled::Done(v),
            Ok(Err(panic)) => Polled::Panicked(dfp_core::panic_message(&*panic).unwrap_or_else(|| "no message".into())),
            Err(TryRecvError::Empty) => Polled::Pending,
            Err(TryRecvError::Disconnected) => Polled::Panicked("the training thread went away".into()),
        }
    }
}

/// Runs `job` on the pool, which grows to at least `threads` threads (the process's workers). Heavier jobs
/// (`weight`: the rows they train on) start first. A panic in the job is caught and reported by the ticket.
pub(crate) fn submit<T: Send + 'static>(
    threads: usize,
    weight: u64,
    job: impl FnOnce() -> T + Send + 'static,
) -> Ticket<T> {
    let (tx, rx) = channel();
    let run = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(job)));
    });
    let pool = pool();
    let mut q = pool.queue.lock().unwrap_or_else(|p| p.into_inner());
    while q.threads < threads.max(1) {
        q.threads += 1;
        let name = format!("dfp-train-{}", q.threads);
        // Threads live as long as the process, waiting for jobs; one that cannot start leaves the others.
        if std::thread::Builder::new().name(name).spawn(work).is_err() {
            q.threads -= 1;
            break;
        }
    }
    q.seq += 1;
    let seq = q.seq;
    q.jobs.push(Job { weight, seq, run });
    drop(q);
    pool.ready.notify_one();
    Ticket { rx }
}

/// A pool thread: one libtorch thread (see the module docs), then jobs until the process ends.
fn work() {
    tch::set_num_threads(1);
    let pool = pool();
    loop {
        let job = {
            let mut q = pool.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(job) = q.jobs.pop() {
                    break job;
                }
                q = pool.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        (job.run)();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, Instant};

    fn wait<T>(t: &Ticket<T>) -> Polled<T> {
        let start = Instant::now();
        loop {
            match t.poll() {
                Polled::Pending if start.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                other => return other,
            }
        }
    }

    #[test]
    fn the_heaviest_job_comes_first_then_the_first_submitted() {
        let mut heap = BinaryHeap::new();
        for (seq, weight) in [(1, 10), (2, 1000), (3, 100), (4, 100), (5, 0)] {
            heap.push(Job { weight, seq, run: Box::new(|| {}) });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|j| j.seq)).collect();
        assert_eq!(order, [2, 3, 4, 1, 5]);
    }

    #[test]
    fn results_and_panics_come_back_through_the_ticket() {
        assert!(matches!(wait(&submit(1, 5, || 6 * 7)), Polled::Done(42)));
        match wait(&submit(1, 5, || -> u32 { panic!("boom in a job") })) {
            Polled::Panicked(m) => assert!(m.contains("boom in a job"), "{m}"),
            _ => panic!("the panic was not reported"),
        }
    }

    #[test]
    fn the_pool_grows_to_the_threads_asked_for() {
        // Two jobs that can only both finish when they run at the same time.
        let both = Arc::new(Barrier::new(2));
        let tickets: Vec<_> = (0..2)
            .map(|_| {
                let b = both.clone();
                submit(2, u64::MAX - 1, move || b.wait().is_leader())
            })
            .collect();
        let leaders: Vec<bool> = tickets
            .iter()
            .map(|t| match wait(t) {
                Polled::Done(l) => l,
                _ => panic!("a job did not finish: the two did not run at once"),
            })
            .collect();
        assert_eq!(leaders.iter().filter(|l| **l).count(), 1);
    }
}
