//! The operator of a transform or sink: a routing step tags each batch with its destination worker
//! (splitting it by key for [`Partitioning::By`]), then the stage operator feeds the batches to the
//! stage, advances it with the input frontier and finishes it when the input ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::state::{guard, Batches, Item, ItemBuilder, Items, OpEnv, Shared, Time};
use crate::batch::Batch;
use crate::partition::split_by_key;
use crate::stage::{Emitter, Partitioning, Sink, Transform};

/// The stage a stage operator drives; `Failed` once it failed or finished.
pub(super) enum Op {
    Transform(Box<dyn Transform>),
    Sink(Box<dyn Sink>),
    Failed,
}

/// Tags each batch with its destination worker (splitting by key when asked).
pub(super) fn route<'s>(
    input: Batches<'s>,
    partitioning: Partitioning,
    peers: usize,
    shared: Arc<Shared>,
    stage_id: String,
) -> Stream<'s, Time, Vec<(u64, Batch)>> {
    input.unary::<CapacityContainerBuilder<Vec<(u64, Batch)>>, _, _, _>(Pipeline, "route", move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for batch in data.drain(..) {
                    if shared.aborted() {
                        continue;
                    }
                    match &partitioning {
                        Partitioning::Any | Partitioning::Single => session.give((0, batch)),
                        Partitioning::By(column) => match split_by_key(batch, column, peers) {
                            Ok(parts) => session.give_iterator(parts.into_iter()),
                            Err(e) => shared.fail(&stage_id, e),
                        },
                    }
                }
            });
        }
    })
}

/// The operator of one transform or sink, reading what [`route`] tagged.
pub(super) fn stage_op<'s, P>(input: Stream<'s, Time, Vec<(u64, Batch)>>, pact: P, env: OpEnv, op: Op) -> Items<'s>
where
    P: ParallelizationContract<Time, Vec<(u64, Batch)>>,
{
    let name = format!("stage:{}", env.id());
    let mut op = op;
    let mut opened = false;
    let scope = input.scope();
    input.unary_frontier::<ItemBuilder, _, _, P>(pact, &name, move |default_cap, info| {
        let activator = scope.activator_for(info.address);
        let mut held = Some(default_cap);
        // `finish` was called and the stage is still working (see below).
        let mut finishing = false;
        let mut em = Emitter::new();
        let mut buf: Vec<Item> = Vec::new();
        let shared = env.shared.clone();
        let still_working =
            move |op: &Op| matches!(op, Op::Transform(t) if !shared.aborted() && t.holding().is_some());
        move |(input, frontier), output| {
            if !opened {
                opened = true;
                let r = match &mut op {
                    Op::Transform(t) => guard(|| t.open(&env.ctx)),
                    Op::Sink(s) => guard(|| s.open(&env.ctx)),
                    Op::Failed => Ok(()),
                };
                match r {
                    Ok(()) => {
                        env.counters().opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        env.shared.fail(env.id(), e);
                        op = Op::Failed;
                    }
                }
            }
            input.for_each(|cap, data| {
                if env.shared.aborted() {
                    data.clear();
                    return;
                }
                if let Some(t) = cap.least() {
                    env.shared.max_time.fetch_max(*t, Ordering::Relaxed);
                }
                for (_, mut batch) in data.drain(..) {
                    batch.envelope.time = cap.least().copied();
                    env.counters().rows_in.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    let r = match &mut op {
                        Op::Transform(t) => env.timed(|| guard(|| t.process(batch, &mut em))),
                        Op::Sink(s) => {
                            env.tap(&batch);
                            let r = env.timed(|| guard(|| s.write(batch)));
                            em.dead.extend(s.take_dead_letters());
                            r
                        }
                        Op::Failed => Ok(()),
                    };
                    if let Err(e) = r {
                        env.shared.fail(env.id(), e);
                        op = Op::Failed;
                    }
                    env.flush(&mut em, &mut buf);
                }
                // Each batch leaves at its own time (a gathering stage may emit rows that came earlier
                // than this input), never below what the operator still holds.
                if let Some(c) = held.as_ref() {
                    for (t, items) in by_time(*c.time(), &mut buf) {
                        output.session(&c.delayed(&t)).give_iterator(items.into_iter());
                    }
                } else if !buf.is_empty() {
                    output.session(&cap).give_iterator(buf.drain(..));
                }
            });
            let lowest = frontier.frontier().iter().min().copied();
            if let Some(c) = held.as_mut() {
                match lowest {
                    None if !finishing => {
                        let r = match &mut op {
                            Op::Transform(t) if !env.shared.aborted() => env.timed(|| guard(|| t.finish(&mut em))),
                            Op::Sink(s) => {
                                let r = env.timed(|| guard(|| s.finish()));
                                em.dead.extend(s.take_dead_letters());
                                r
                            }
                            _ => Ok(()),
                        };
                        if let Err(e) = r {
                            env.shared.fail(env.id(), e);
                        }
                        // A transform that still holds something after `finish` goes on working (training on
                        // a thread pool): its output stays open, and its timer is polled until it holds nothing.
                        finishing = still_working(&op);
                        env.flush(&mut em, &mut buf);
                        for (t, items) in by_time(*c.time(), &mut buf) {
                            output.session(&c.delayed(&t)).give_iterator(items.into_iter());
                        }
                        if !finishing {
                            op = Op::Failed;
                            held = None;
                        }
                    }
                    None => {}
                    Some(t) if *c.time() < t => {
                        // Release what the stage held for earlier times; a sink makes what it took in durable.
                        if !env.shared.aborted() {
                            let r = match &mut op {
                                Op::Transform(tr) => env.timed(|| guard(|| tr.advance(t, &mut em))),
                                Op::Sink(s) => {
                                    let r = env.timed(|| guard(|| s.advance(t)));
                                    em.dead.extend(s.take_dead_letters());
                                    r
                                }
                                Op::Failed => Ok(()),
                            };
                            if let Err(e) = r {
                                env.shared.fail(env.id(), e);
                                op = Op::Failed;
                            }
                        }
                        env.flush(&mut em, &mut buf);
                        for (at, items) in by_time(*c.time(), &mut buf) {
                            output.session(&c.delayed(&at)).give_iterator(items.into_iter());
                        }
                        tracing::trace!(stage = %env.id(), worker = env.ctx.worker_index, frontier = t, "input frontier");
                    }
                    Some(_) => {}
                }
            }
            // Timers after `advance`: what it just did may be what a timer waits on (a checkpoint due once the
            // frontier moved), and nothing else wakes this operator if no more input comes.
            if let (Some(c), Op::Transform(tr)) = (held.as_ref(), &mut op) {
                if !env.shared.aborted() {
                    match env.timed(|| guard(|| tr.poll_timer(&mut em))) {
                        Ok(Some(delay)) => activator.activate_after(delay),
                        // Still working after `finish` without asking for a time: look again shortly.
                        Ok(None) if finishing => activator.activate_after(std::time::Duration::from_millis(50)),
                        Ok(None) => {}
                        Err(e) => env.shared.fail(env.id(), e),
                    }
                    env.flush(&mut em, &mut buf);
                    for (t, items) in by_time(*c.time(), &mut buf) {
                        output.session(&c.delayed(&t)).give_iterator(items.into_iter());
                    }
                }
            }
            // A stage working on after `finish` is done once it holds nothing (or the run was aborted).
            if finishing && !still_working(&op) {
                finishing = false;
                op = Op::Failed;
                held = None;
            }
            // Last, the output moves up to the input frontier, or to the oldest rows the stage still keeps.
            if let (Some(c), Some(t)) = (held.as_mut(), lowest) {
                let kept = match &op {
                    Op::Transform(tr) if !env.shared.aborted() => tr.holding(),
                    _ => None,
                };
                let to = kept.map_or(t, |k| k.min(t));
                if *c.time() < to {
                    c.downgrade(&to);
                }
            }
        }
    })
}

/// Drains `buf` into runs of consecutive items that leave at the same time: a batch at its envelope time,
/// raised to `floor` (what the operator holds); dead letters at `floor`.
fn by_time(floor: Time, buf: &mut Vec<Item>) -> Vec<(Time, Vec<Item>)> {
    let mut runs: Vec<(Time, Vec<Item>)> = Vec::new();
    for item in buf.drain(..) {
        let t = match &item {
            Ok(b) => b.envelope.time.map_or(floor, |t| t.max(floor)),
            Err(_) => floor,
        };
        match runs.last_mut() {
            Some((last, items)) if *last == t => items.push(item),
            _ => runs.push((t, vec![item])),
        }
    }
    runs
}
