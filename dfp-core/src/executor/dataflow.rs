//! Builds one worker's dataflow from the plan: a source operator per source, a routing step and a stage
//! operator per transform or sink, the probe behind every sink that drives backpressure, the dead-letter
//! stream (routed to the `dead-letters` stage or to the dead-letter file), and, in a cluster, the control
//! stream.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use opentelemetry::KeyValue;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{Concatenate, OkErr};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::Scope;

use super::dead_letters::{dead_letter_file_op, dead_letters_to_batches};
use super::source_op::source_op;
use super::stage_op::{route, stage_op, Op};
use super::state::{guard, Batches, Dead, Items, OpEnv, Shared, Time};
use crate::batch::Batch;
use crate::cluster::cluster_control;
use crate::error::StageError;
use crate::spec::{Plan, PlannedStage, DEAD_LETTERS};
use crate::stage::{
    DataflowEnv, DataflowOutputs, DataflowTransform, DeadLetter, Partitioning, Resources, StageContext, StageInstance,
    StageKind, StopFlag,
};

/// Builds the operators of every stage of `plan` on worker `index` of `peers`.
pub(super) fn build_dataflow<'s>(
    scope: Scope<'s, Time>,
    plan: &Plan,
    shared: &Arc<Shared>,
    stop: &StopFlag,
    resources: &Resources,
    index: usize,
    peers: usize,
) {
    let probe: ProbeHandle<Time> = ProbeHandle::new();
    let live_sources = Rc::new(Cell::new(plan.stages.iter().filter(|s| s.kind == StageKind::Source).count()));
    if shared.stats.processes > 1 {
        cluster_control(scope, shared, stop, Rc::clone(&live_sources), index, peers);
    }
    // Stages fed (directly or not) by the dead-letter stream are built after it exists.
    let mut after_dead: HashSet<&str> = HashSet::new();
    for s in &plan.stages {
        if s.inputs.iter().any(|i| i == DEAD_LETTERS || after_dead.contains(i.as_str())) {
            after_dead.insert(&s.id);
        }
    }
    let consumers: HashSet<&str> = plan.stages.iter().flat_map(|s| s.inputs.iter().map(String::as_str)).collect();
    let mut outputs: HashMap<String, Batches<'s>> = HashMap::new();
    let mut dead_streams: Vec<Dead<'s>> = Vec::new();
    let mut late_dead: Vec<Dead<'s>> = Vec::new();

    let build = |stage_index: usize, stage: &PlannedStage, outputs: &mut HashMap<String, Batches<'s>>| -> Dead<'s> {
        let env = OpEnv {
            stage_index,
            ctx: StageContext {
                stage_id: stage.id.clone(),
                worker_index: index,
                workers: peers,
                process: shared.stats.process,
                processes: shared.stats.processes,
                resources: resources.clone(),
                stop: stop.clone(),
                stats: Some(Arc::clone(&shared.stats)),
                families: Arc::clone(&plan.families),
                stage_index,
                commits: Some(Arc::clone(&shared.commits)),
                states: shared.states.clone(),
            },
            shared: Arc::clone(shared),
            attrs: [KeyValue::new("pipeline", plan.file.clone()), KeyValue::new("stage", stage.id.clone())],
            local: shared.stats.local(index),
        };
        let instance = match guard(|| stage.factory.build(&env.ctx)) {
            Ok(inst) if inst.kind() == stage.kind => Some(inst),
            Ok(inst) => {
                env.shared.fail(
                    &stage.id,
                    StageError::Other(format!("built a {} but is registered as a {}", inst.kind(), stage.kind)),
                );
                None
            }
            Err(e) => {
                env.shared.fail(&stage.id, e);
                None
            }
        };
        match &instance {
            Some(StageInstance::Transform(t)) if t.holds_commits() => shared.commits.add_gate(stage_index),
            Some(StageInstance::Sink(s)) if s.holds_commits() => shared.commits.add_gate(stage_index),
            _ if stage.kind == StageKind::Source => shared.commits.add_source(stage_index),
            _ => {}
        }
        let items: Items<'s> = match stage.kind {
            StageKind::Source => {
                let src = match instance {
                    Some(StageInstance::Source(s)) => Some(s),
                    _ => None,
                };
                source_op(scope, env, src, &probe, plan.runtime.max_in_flight, Rc::clone(&live_sources))
            }
            StageKind::Transform if matches!(instance, Some(StageInstance::Dataflow(_))) => {
                let Some(StageInstance::Dataflow(t)) = instance else { unreachable!("matched above") };
                let inputs: Vec<Batches<'s>> = stage.inputs.iter().filter_map(|i| outputs.get(i).cloned()).collect();
                let built = dataflow_stage(scope.concatenate(inputs), env, t);
                for (port, stream) in built.ports {
                    if consumers.contains(format!("{}.{port}", stage.id).as_str()) {
                        outputs.insert(format!("{}.{port}", stage.id), stream);
                    } else {
                        let _ = stream.probe_with(&probe);
                    }
                }
                built.main.map(Ok)
            }
            StageKind::Transform | StageKind::Sink => {
                let inputs: Vec<Batches<'s>> = stage.inputs.iter().filter_map(|i| outputs.get(i).cloned()).collect();
                let input = scope.concatenate(inputs);
                let partitioning = match &instance {
                    Some(StageInstance::Transform(t)) => t.input_partitioning(),
                    Some(StageInstance::Sink(s)) => s.input_partitioning(),
                    _ => Partitioning::Any,
                };
                let op = match instance {
                    Some(StageInstance::Transform(t)) => Op::Transform(t),
                    Some(StageInstance::Sink(s)) => Op::Sink(s),
                    _ => Op::Failed,
                };
                let routed = route(input, partitioning.clone(), peers, Arc::clone(shared), stage.id.clone());
                match partitioning {
                    Partitioning::Any => stage_op(routed, Pipeline, env, op),
                    Partitioning::By(_) | Partitioning::Single => {
                        stage_op(routed, Exchange::new(|x: &(u64, Batch)| x.0), env, op)
                    }
                }
            }
        };
        let (batches, dead) = items.ok_err::<Vec<Batch>, Batch, Vec<DeadLetter>, DeadLetter, _>(|x| x);
        if stage.kind == StageKind::Sink || !consumers.contains(stage.id.as_str()) {
            let _ = batches.clone().probe_with(&probe);
        }
        outputs.insert(stage.id.clone(), batches);
        dead
    };

    for (i, stage) in plan.stages.iter().enumerate() {
        if !after_dead.contains(stage.id.as_str()) {
            dead_streams.push(build(i, stage, &mut outputs));
        }
    }
    let all_dead = scope.concatenate(dead_streams);
    if plan.routes_dead_letters() {
        outputs.insert(DEAD_LETTERS.to_string(), dead_letters_to_batches(all_dead));
        for (i, stage) in plan.stages.iter().enumerate() {
            if after_dead.contains(stage.id.as_str()) {
                late_dead.push(build(i, stage, &mut outputs));
            }
        }
        // Dead letters of the dead-letter branch itself are logged (routing them would loop).
        let _ = scope.concatenate(late_dead).inspect(|d: &DeadLetter| {
            tracing::warn!(stage = %d.stage, reason = %d.reason, origin = %d.origin, "dead letter in the dead-letter branch")
        });
    } else {
        let sink = dead_letter_file_op(all_dead, Arc::clone(shared));
        let _ = sink.probe_with(&probe);
    }
}

/// Builds a [`DataflowTransform`]'s operators, counting the rows in and out around them as the stage operator
/// does for a [`Transform`](crate::Transform).
fn dataflow_stage<'s>(input: Batches<'s>, env: OpEnv, stage: Box<dyn DataflowTransform>) -> DataflowOutputs<'s> {
    let env = Arc::new(env);
    let (fail_env, abort_env) = (Arc::clone(&env), Arc::clone(&env));
    let denv = DataflowEnv {
        ctx: env.ctx.clone(),
        fail: Arc::new(move |e| fail_env.shared.fail(fail_env.id(), e)),
        aborted: Arc::new(move || abort_env.shared.aborted()),
    };
    let in_env = Arc::clone(&env);
    let input = input.inspect(move |b: &Batch| {
        in_env.counters().rows_in.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
    });
    let mut built = stage.build(input, denv);
    let out_env = Arc::clone(&env);
    built.main = built.main.inspect(move |b: &Batch| {
        let c = out_env.counters();
        c.rows_out.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
        c.batches_out.fetch_add(1, Ordering::Relaxed);
        out_env.tap(b);
    });
    env.counters().opened.fetch_add(1, Ordering::Relaxed);
    built
}
