//! The source operator: polls a [`Source`], gives each batch its logical time, and applies the
//! end-to-end backpressure (the source pauses while more than `runtime.max_in_flight` of its epochs have
//! not passed the probe behind every sink).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::Scope;

use super::state::{guard, Item, ItemBuilder, Items, OpEnv, Time};
use crate::commits::Mark;
use crate::observe::{SOURCE_ENDED, SOURCE_FREE};
use crate::stage::{Emitter, Source, SourceStatus};

/// The operator of one source stage (`None` when building it failed: the operator then just ends).
pub(super) fn source_op<'s>(
    scope: Scope<'s, Time>,
    env: OpEnv,
    mut src: Option<Box<dyn Source>>,
    probe: &ProbeHandle<Time>,
    max_in_flight: u64,
    live: Rc<Cell<usize>>,
) -> Items<'s> {
    let probe = probe.clone();
    // When this source ends: nothing of it is in flight any more, and this worker has one running
    // source fewer (the cluster control needs the count).
    let ended = move |env: &OpEnv| {
        env.counters().in_flight[env.local].store(0, Ordering::Relaxed);
        env.counters().held_back[env.local].store(SOURCE_ENDED, Ordering::Relaxed);
        live.set(live.get().saturating_sub(1));
        // An ended source has nothing more a restart could deliver again.
        env.shared.commits.record(Mark::Committed {
            stage: env.stage_index,
            worker: env.ctx.worker_index,
            frontier: u64::MAX,
        });
    };
    let name = format!("source:{}", env.id());
    source::<Time, ItemBuilder, _, _>(scope, &name, move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut epoch: Time = 0;
        let mut opened = false;
        let mut em = Emitter::new();
        let mut buf: Vec<Item> = Vec::new();
        // Logical times below `completed` have passed every sink (reported to the source once each).
        let mut completed: Time = 0;
        // Done producing; waiting for what is in flight to pass every sink before `finish`.
        let mut draining = false;
        // The latest logical time a batch was emitted at.
        let mut last_emitted: Option<Time> = None;
        // Whether the source was told to pause for backpressure.
        let mut paused = false;
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            let Some(s) = src.as_mut() else {
                cap = None;
                ended(&env);
                return;
            };
            if opened && !env.shared.aborted() {
                let done = probe.with_frontier(|f| f.iter().min().copied()).unwrap_or(*c.time());
                // Not past what every checkpointing stage holds durably (see `crate::commits`).
                let done = done.min(*c.time()).min(env.shared.commits.durable_frontier());
                if done > completed {
                    completed = done;
                    match guard(|| s.completed(completed)) {
                        Ok(()) => env.shared.commits.record(Mark::Committed {
                            stage: env.stage_index,
                            worker: env.ctx.worker_index,
                            frontier: completed,
                        }),
                        Err(e) => env.shared.fail(env.id(), e),
                    }
                }
            }
            if draining {
                if env.shared.aborted() || completed >= *c.time() {
                    if let Err(e) = guard(|| s.finish(&env.ctx)) {
                        env.shared.fail(env.id(), e);
                    }
                    src = None;
                    cap = None;
                    ended(&env);
                } else {
                    activator.activate_after(Duration::from_millis(1));
                }
                return;
            }
            let mut close = env.shared.aborted() || env.ctx.stop_requested();
            if !close && !opened {
                opened = true;
                match guard(|| s.open(&env.ctx)) {
                    Ok(()) => {
                        env.counters().opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        env.shared.fail(env.id(), e);
                        close = true;
                    }
                }
            }
            if !close {
                let done = probe.with_frontier(|f| f.iter().min().copied()).unwrap_or(epoch);
                env.counters().in_flight[env.local].store(epoch.saturating_sub(done), Ordering::Relaxed);
                if epoch >= max_in_flight && probe.less_than(&(epoch - max_in_flight)) {
                    if !paused {
                        paused = true;
                        env.counters().held_back[env.local].store(*c.time(), Ordering::Relaxed);
                        if let Err(e) = guard(|| s.backpressure(true)) {
                            env.shared.fail(env.id(), e);
                        }
                    }
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
                if paused {
                    paused = false;
                    env.counters().held_back[env.local].store(SOURCE_FREE, Ordering::Relaxed);
                    if let Err(e) = guard(|| s.backpressure(false)) {
                        env.shared.fail(env.id(), e);
                    }
                }
                // Sources that name times stay at or above the newest time seen anywhere (in a cluster,
                // another process's clock may run ahead; see `Emitter::time_floor`).
                // Past the newest time, so that what was emitted there is released once this source moves.
                em.floor = (*c.time()).max(env.shared.max_time.load(Ordering::Relaxed) + 1);
                match env.timed(|| guard(|| s.poll(&env.ctx, &mut em))) {
                    Ok(status) => {
                        env.flush(&mut em, &mut buf);
                        for item in buf.drain(..) {
                            match item {
                                Ok(mut batch) => match batch.envelope.time {
                                    // The source names the logical time: emit there, keep the capability.
                                    Some(hint) => {
                                        let t = hint.max(*c.time());
                                        env.shared.max_time.fetch_max(t, Ordering::Relaxed);
                                        c.downgrade(&t);
                                        last_emitted = Some(t);
                                        batch.envelope.time = Some(t);
                                        output.session(&*c).give(Ok(batch));
                                    }
                                    // Otherwise every batch gets the next time.
                                    None => {
                                        let t = *c.time();
                                        last_emitted = Some(t);
                                        batch.envelope.time = Some(t);
                                        output.session(&*c).give(Ok(batch));
                                        c.downgrade(&(t + 1));
                                    }
                                },
                                dead => output.session(&*c).give(dead),
                            }
                        }
                        if let Some(t) = em.advance.take() {
                            if t > *c.time() {
                                tracing::trace!(stage = %env.id(), worker = env.ctx.worker_index, from = *c.time(), to = t, "source time advanced");
                                c.downgrade(&t);
                            }
                        }
                        epoch = *c.time();
                        match status {
                            SourceStatus::Ready => activator.activate(),
                            SourceStatus::Idle => activator.activate_after(Duration::from_millis(5)),
                            SourceStatus::Exhausted => close = true,
                        }
                    }
                    Err(e) => {
                        env.shared.fail(env.id(), e);
                        close = true;
                    }
                }
            }
            if close {
                if env.ctx.stop_requested() && s.bounded() {
                    env.shared.cut_short.store(true, Ordering::Relaxed);
                }
                if opened && !env.shared.aborted() && s.wants_completion() {
                    // Keep the capability until every emitted batch has passed the sinks, so the source can
                    // be told (and, say, commit its offsets) before it finishes. Nothing more is emitted, so
                    // the capability moves past the last batch's time (a source-named time keeps it there).
                    let next = last_emitted.map_or(*c.time(), |t| t + 1).max(*c.time());
                    c.downgrade(&next);
                    draining = true;
                    // Nothing more comes from it: stages gathering rows should not wait for more.
                    env.counters().held_back[env.local].store(next, Ordering::Relaxed);
                    if env.shared.commits.gated() {
                        // Checkpointing stages: checkpoint now, so that this source can commit and finish.
                        env.shared.commits.set_wanted();
                    }
                    activator.activate();
                    return;
                }
                if opened {
                    if let Err(e) = guard(|| s.finish(&env.ctx)) {
                        env.shared.fail(env.id(), e);
                    }
                }
                src = None;
                cap = None;
                ended(&env);
            }
        }
    })
}
