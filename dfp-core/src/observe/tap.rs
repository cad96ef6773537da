//! Taps: copies of the batches leaving a stage, for `dfp tap`.
//!
//! A stage with no tap attached costs one relaxed atomic load per batch. With one attached, each batch is
//! offered to the tap's bounded buffer (an `Arc` clone, no row copy); when the buffer is full the batch is
//! dropped for that tap and its rows counted, so a slow reader never slows the pipeline down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::batch::Batch;

/// Batches buffered per tap before new ones are dropped.
pub const TAP_BUFFER_BATCHES: usize = 64;

#[derive(Debug)]
struct Subscriber {
    tx: Sender<Batch>,
    dropped_rows: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Slot {
    active: AtomicBool,
    subscribers: Mutex<Vec<Subscriber>>,
}

/// The taps of every stage of a run.
#[derive(Debug)]
pub(crate) struct Taps {
    slots: Vec<Slot>,
}

/// One attached tap: batches arrive on `rx` until the run ends (then `rx` disconnects).
#[derive(Debug)]
pub(crate) struct TapHandle {
    pub(crate) rx: Receiver<Batch>,
    pub(crate) dropped_rows: Arc<AtomicU64>,
}

impl Taps {
    pub(crate) fn new(stages: usize) -> Self {
        Taps { slots: (0..stages).map(|_| Slot::default()).collect() }
    }

    /// Whether anyone taps stage `stage` (cheap: one atomic load).
    #[inline]
    pub(crate) fn active(&self, stage: usize) -> bool {
        self.slots.get(stage).is_some_and(|s| s.active.load(Ordering::Relaxed))
    }

    /// Offers a batch to every tap of `stage`; returns the rows dropped because a buffer was full.
    pub(crate) fn offer(&self, stage: usize, batch: &Batch) -> u64 {
        let Some(slot) = self.slots.get(stage) else { return 0 };
        let mut subs = slot.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let mut dropped = 0;
        subs.retain(|s| match s.tx.try_send(batch.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let rows = batch.num_rows() as u64;
                s.dropped_rows.fetch_add(rows, Ordering::Relaxed);
                dropped += rows;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        if subs.is_empty() {
            slot.active.store(false, Ordering::Relaxed);
        }
        dropped
    }

    /// Attaches a tap to `stage`.
    pub(crate) fn subscribe(&self, stage: usize) -> Option<TapHandle> {
        let slot = self.slots.get(stage)?;
        let (tx, rx) = crossbeam_channel::bounded(TAP_BUFFER_BATCHES);
        let dropped_rows = Arc::new(AtomicU64::new(0));
        let mut subs = slot.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.push(Subscriber { tx, dropped_rows: Arc::clone(&dropped_rows) });
        slot.active.store(true, Ordering::Relaxed);
        Some(TapHandle { rx, dropped_rows })
    }

    /// Detaches every tap (their receivers see the end): called when the run ends.
    pub(crate) fn close(&self) {
        for slot in &self.slots {
            slot.active.store(false, Ordering::Relaxed);
            slot.subscribers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(rows: i64) -> Batch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..rows))]).unwrap();
        Batch::new(data, "t")
    }

    #[test]
    fn full_buffers_drop_and_count_and_closed_taps_detach() {
        let taps = Taps::new(2);
        assert!(!taps.active(0));
        let tap = taps.subscribe(0).unwrap();
        assert!(taps.active(0) && !taps.active(1));
        for _ in 0..TAP_BUFFER_BATCHES {
            assert_eq!(taps.offer(0, &batch(3)), 0);
        }
        assert_eq!(taps.offer(0, &batch(5)), 5);
        assert_eq!(tap.dropped_rows.load(Ordering::Relaxed), 5);
        assert_eq!(tap.rx.len(), TAP_BUFFER_BATCHES);
        drop(tap);
        taps.offer(0, &batch(1));
        assert!(!taps.active(0), "a dropped receiver detaches on the next offer");
        let tap = taps.subscribe(1).unwrap();
        taps.close();
        assert!(tap.rx.recv().is_err(), "closing ends the tap");
    }
}
