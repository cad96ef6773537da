//! Raw model → validated [`Plan`]: variables, stage configurations, graph checks. Every problem found
//! is reported, not just the first.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::raw::{line_of, RawPipeline, SpannedMap};
use super::vars::{self, EnvLookup};
use super::{Diagnostic, Plan, PlannedStage, RuntimeConfig, SpecError, DEAD_LETTERS};
use crate::registry::{closest, parse_config, Registry};
use crate::stage::StageKind;

struct Collector<'a> {
    file: &'a str,
    out: Vec<Diagnostic>,
}

impl Collector<'_> {
    fn push(&mut self, line: Option<usize>, stage: Option<&str>, message: impl Into<String>) {
        self.out.push(Diagnostic {
            file: self.file.to_string(),
            line,
            stage: stage.map(str::to_string),
            message: message.into(),
        });
    }
}

/// True for ids usable as stage ids.
pub fn valid_stage_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Validates a raw pipeline.
pub fn validate(
    raw: &RawPipeline,
    file: &str,
    overrides: &[String],
    registry: &Registry,
    env: EnvLookup<'_>,
) -> Result<Plan, SpecError> {
    let mut diag = Collector { file, out: Vec::new() };

    if let Some(version) = &raw.version {
        if version.value != 1 {
            diag.push(
                Some(line_of(version)),
                None,
                format!("unsupported version {}; this dfp reads version 1", version.value),
            );
        }
    }

    // Variables: defaults (which may use ${env:…} only), then --var overrides.
    let mut vars: BTreeMap<String, Value> = BTreeMap::new();
    for (name, value) in &raw.vars.0 {
        if !vars::valid_name(&name.value) {
            diag.push(Some(line_of(name)), None, format!("\"{}\" is not a valid variable name", name.value));
            continue;
        }
        match vars::interpolate(&value.value, &BTreeMap::new(), env) {
            Ok(v) => {
                vars.insert(name.value.clone(), v);
            }
            Err(e) => diag.push(Some(line_of(value)), None, format!("variable \"{}\": {e}", name.value)),
        }
    }
    for arg in overrides {
        match vars::parse_override(arg) {
            Ok((name, value)) => {
                if let Some(slot) = vars.get_mut(&name) {
                    *slot = value;
                } else {
                    let mut msg = format!("--var {name}: the pipeline declares no variable \"{name}\"");
                    if let Some(s) = closest(&name, vars.keys().map(String::as_str)) {
                        msg.push_str(&format!("; did you mean \"{s}\"?"));
                    } else if vars.is_empty() {
                        msg.push_str(" (it has no `vars:` section)");
                    } else {
                        let names: Vec<&str> = vars.keys().map(String::as_str).collect();
                        msg.push_str(&format!(" (declared: {})", names.join(", ")));
                    }
                    diag.push(None, None, msg);
                }
            }
            Err(e) => diag.push(None, None, e),
        }
    }

    // Runtime settings.
    let mut runtime_json = serde_json::Map::new();
    for (key, value) in &raw.runtime.0 {
        match vars::interpolate(&value.value, &vars, env) {
            Ok(v) => {
                runtime_json.insert(key.value.clone(), v);
            }
            Err(e) => diag.push(Some(line_of(value)), None, format!("runtime.{}: {e}", key.value)),
        }
    }
    let runtime = match parse_config::<RuntimeConfig>(Value::Object(runtime_json)) {
        Ok(r) => {
            if r.workers == 0 {
                diag.push(line_for(&raw.runtime, "workers"), None, "runtime.workers must be at least 1");
            }
            if r.max_in_flight == 0 {
                diag.push(line_for(&raw.runtime, "max_in_flight"), None, "runtime.max_in_flight must be at least 1");
            }
            if r.processes == 0 {
                diag.push(line_for(&raw.runtime, "processes"), None, "runtime.processes must be at least 1");
            }
            if r.process.is_some_and(|i| i >= r.processes.max(1)) {
                diag.push(
                    line_for(&raw.runtime, "process"),
                    None,
                    format!("runtime.process must be below runtime.processes ({})", r.processes),
                );
            }
            if !(r.connect_timeout_secs.is_finite() && r.connect_timeout_secs > 0.0) {
                diag.push(
                    line_for(&raw.runtime, "connect_timeout_secs"),
                    None,
                    "runtime.connect_timeout_secs must be a positive number",
                );
            }
            if let Some(addr) = &r.metrics {
                if let Err(e) = crate::observe::check_addr(addr) {
                    diag.push(line_for(&raw.runtime, "metrics"), None, format!("runtime.metrics: {e}"));
                }
            }
            r
        }
        Err(e) => {
            let (line, msg) = locate(
                &raw.runtime,
                &e.field,
                &e.message,
                &[
                    "workers",
                    "max_in_flight",
                    "dead_letter",
                    "metrics",
                    "processes",
                    "process",
                    "hostfile",
                    "connect_timeout_secs",
                ],
            );
            diag.push(line.or_else(|| raw.runtime.0.first().map(|(k, _)| line_of(k))), None, format!("runtime: {msg}"));
            RuntimeConfig::default()
        }
    };

    // Plugins: loaded before the stages are checked, so their stage types count like built-ins.
    let mut extended: Option<Registry> = None;
    let mut loaded_plugins = Vec::new();
    for p in &raw.plugins {
        let entry = match vars::interpolate(&Value::String(p.value.clone()), &vars, env) {
            Ok(Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(e) => {
                diag.push(Some(line_of(p)), None, format!("plugin \"{}\": {e}", p.value));
                continue;
            }
        };
        let added = crate::plugin::load_entry(&entry).map_err(|e| e.to_string()).and_then(|plugin| {
            loaded_plugins.push(format!("{} {}", plugin.name, plugin.version));
            crate::plugin::add_to(extended.get_or_insert_with(|| registry.clone()), &plugin)
        });
        if let Err(e) = added {
            diag.push(Some(line_of(p)), None, e);
        }
    }
    let registry = extended.as_ref().unwrap_or(registry);

    // Stages.
    let mut stages: Vec<PlannedStage> = Vec::new();
    let mut kinds: HashMap<&str, (StageKind, usize)> = HashMap::new();
    if raw.stages.value.0.is_empty() {
        diag.push(Some(line_of(&raw.stages)), None, "`stages` is empty: a pipeline needs at least a source and a sink");
    }
    for (id_s, body) in &raw.stages.value.0 {
        let id = id_s.value.as_str();
        let line = line_of(id_s);
        if !valid_stage_id(id) || id == DEAD_LETTERS {
            diag.push(
                Some(line),
                Some(id),
                if id == DEAD_LETTERS {
                    format!("\"{DEAD_LETTERS}\" is reserved for the dead-letter input; choose another id")
                } else {
                    "a stage id may hold only letters, digits, '_', '-' and '.'".to_string()
                },
            );
        }
        let body = &body.value;
        // `type`
        let type_name = match body.get("type") {
            None => {
                diag.push(Some(line), Some(id), "missing field `type`");
                None
            }
            Some((_, v)) => match &v.value {
                Value::String(t) => match registry.get(t) {
                    Some(reg) => Some((reg, line_of(v))),
                    None => {
                        let mut msg = format!("unknown type \"{t}\"");
                        if let Some(s) = registry.suggest(t) {
                            msg.push_str(&format!("; did you mean \"{s}\"?"));
                        } else {
                            msg.push_str("; `dfp stages` lists the available types");
                        }
                        diag.push(Some(line_of(v)), Some(id), msg);
                        None
                    }
                },
                other => {
                    diag.push(
                        Some(line_of(v)),
                        Some(id),
                        format!("`type` must be a string, found {}", crate::json::kind_of(other)),
                    );
                    None
                }
            },
        };
        // `inputs`
        let mut inputs = Vec::new();
        let inputs_line = body.get("inputs").map(|(k, _)| line_of(k));
        if let Some((_, v)) = body.get("inputs") {
            match &v.value {
                Value::Array(items) => {
                    for item in items {
                        match item {
                            Value::String(s) => inputs.push(s.clone()),
                            other => diag.push(
                                Some(line_of(v)),
                                Some(id),
                                format!("`inputs` must list stage ids, found {}", crate::json::kind_of(other)),
                            ),
                        }
                    }
                }
                Value::String(s) => inputs.push(s.clone()),
                other => diag.push(
                    Some(line_of(v)),
                    Some(id),
                    format!("`inputs` must be a list of stage ids, found {}", crate::json::kind_of(other)),
                ),
            }
        }
        // The configuration: every other field, after variables.
        let mut config = serde_json::Map::new();
        let mut config_ok = true;
        for (k, v) in &body.0 {
            if k.value == "type" || k.value == "inputs" {
                continue;
            }
            match vars::interpolate(&v.value, &vars, env) {
                Ok(val) => {
                    config.insert(k.value.clone(), val);
                }
                Err(e) => {
                    config_ok = false;
                    diag.push(Some(line_of(v)), Some(id), format!("field `{}`: {e}", k.value));
                }
            }
        }
        let Some((reg, _type_line)) = type_name else { continue };
        kinds.insert(id, (reg.kind, line));
        if !config_ok {
            continue;
        }
        match (reg.factory)(Value::Object(config)) {
            Ok(factory) => stages.push(PlannedStage {
                id: id.to_string(),
                type_name: reg.type_name.to_string(),
                kind: reg.kind,
                inputs: inputs.clone(),
                line,
                factory,
            }),
            Err(e) => {
                let schema = (reg.schema)();
                let fields: Vec<String> = schema
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default();
                let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
                let (fline, msg) = locate(body, &e.field, &e.message, &fields);
                diag.push(fline.or(Some(line)), Some(id), msg);
            }
        }
        // Graph checks that need only this stage.
        match reg.kind {
            StageKind::Source if !inputs.is_empty() => diag.push(
                inputs_line,
                Some(id),
                format!("a source (\"{}\") takes no inputs; remove `inputs`", reg.type_name),
            ),
            StageKind::Transform | StageKind::Sink if inputs.is_empty() => diag.push(
                Some(line),
                Some(id),
                format!("a {} needs `inputs`: the ids of the stages it reads from", reg.kind),
            ),
            _ => {}
        }
    }

    // Graph checks across stages.
    for (id_s, body) in &raw.stages.value.0 {
        let id = id_s.value.as_str();
        let Some((_, v)) = body.value.get("inputs") else { continue };
        let names: Vec<&str> = match &v.value {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            Value::String(s) => vec![s.as_str()],
            _ => continue,
        };
        for (i, input) in names.iter().copied().enumerate() {
            if names[..i].contains(&input) {
                diag.push(Some(line_of(v)), Some(id), format!("input \"{input}\" is listed twice"));
                continue;
            }
            if input == DEAD_LETTERS {
                continue;
            }
            if input == id {
                diag.push(Some(line_of(v)), Some(id), "a stage cannot read its own output");
                continue;
            }
            let known = raw.stages.value.0.iter().any(|(k, _)| k.value == input);
            if !known {
                let mut msg = format!("input \"{input}\" is not a stage in this pipeline");
                if let Some(s) =
                    closest(input, raw.stages.value.0.iter().map(|(k, _)| k.value.as_str()).chain([DEAD_LETTERS]))
                {
                    msg.push_str(&format!("; did you mean \"{s}\"?"));
                }
                diag.push(Some(line_of(v)), Some(id), msg);
            } else if let Some((StageKind::Sink, _)) = kinds.get(input) {
                diag.push(
                    Some(line_of(v)),
                    Some(id),
                    format!("input \"{input}\" is a sink; a sink's output cannot be read"),
                );
            }
        }
    }

    let order = match topological_order(&raw.stages.value) {
        Ok(order) => order,
        Err(cycles) => {
            for cycle in cycles {
                let first = raw.stages.value.get(&cycle[0]).map(|(k, _)| line_of(k));
                diag.push(first, Some(&cycle[0]), format!("the inputs form a cycle: {}", cycle.join(" → ")));
            }
            Vec::new()
        }
    };

    if !diag.out.is_empty() {
        diag.out.sort_by_key(|d| d.line.unwrap_or(0));
        return Err(SpecError { diagnostics: diag.out });
    }
    let mut by_id: HashMap<String, PlannedStage> = stages.into_iter().map(|s| (s.id.clone(), s)).collect();
    let stages = order.into_iter().filter_map(|id| by_id.remove(&id)).collect();
    Ok(Plan { file: file.to_string(), runtime, stages, vars, digest: String::new(), plugins: loaded_plugins })
}

fn line_for<V>(map: &SpannedMap<V>, key: &str) -> Option<usize> {
    map.get(key).map(|(k, _)| line_of(k))
}

/// Finds the line of the field a configuration error is about, and adds a suggestion for unknown fields.
fn locate<V>(map: &SpannedMap<V>, field: &Option<String>, message: &str, known: &[&str]) -> (Option<usize>, String) {
    // serde: "unknown field `pth`, expected one of `path`, `format`"
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(name) = rest.split('`').next() {
            let mut msg = format!("unknown field `{name}`");
            if let Some(s) = closest(name, known.iter().copied()) {
                msg.push_str(&format!("; did you mean `{s}`?"));
            } else if !known.is_empty() {
                msg.push_str(&format!("; known fields: {}", known.join(", ")));
            }
            return (line_for(map, name), msg);
        }
    }
    if let Some(field) = field {
        let top = field.split(['.', '[']).next().unwrap_or(field);
        return (line_for(map, top), format!("field `{field}`: {message}"));
    }
    (None, message.to_string())
}

/// Stage ids ordered so that every stage follows its inputs (file order among equals); or the cycles.
fn topological_order(stages: &SpannedMap<SpannedMap<Value>>) -> Result<Vec<String>, Vec<Vec<String>>> {
    let ids: Vec<&str> = stages.0.iter().map(|(k, _)| k.value.as_str()).collect();
    let inputs_of = |id: &str| -> Vec<String> {
        stages
            .get(id)
            .and_then(|(_, b)| b.value.get("inputs"))
            .map(|(_, v)| match &v.value {
                Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                Value::String(s) => vec![s.clone()],
                _ => Vec::new(),
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|i| ids.contains(&i.as_str()) && i != id)
            .collect()
    };
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut state: HashMap<&str, u8> = HashMap::new();
    let mut order = Vec::new();
    fn visit<'a>(
        id: &'a str,
        ids: &[&'a str],
        inputs_of: &dyn Fn(&str) -> Vec<String>,
        state: &mut HashMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match state.get(id) {
            Some(2) => return Ok(()),
            Some(1) => {
                let start = stack.iter().position(|s| *s == id).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(id.to_string());
                return Err(cycle);
            }
            _ => {}
        }
        state.insert(id, 1);
        stack.push(id);
        for input in inputs_of(id) {
            if let Some(&dep) = ids.iter().find(|i| **i == input) {
                visit(dep, ids, inputs_of, state, stack, order)?;
            }
        }
        stack.pop();
        state.insert(id, 2);
        order.push(id.to_string());
        Ok(())
    }
    let mut cycles = Vec::new();
    for id in &ids {
        let mut stack = Vec::new();
        if let Err(cycle) = visit(id, &ids, &inputs_of, &mut state, &mut stack, &mut order) {
            // Report this cycle, then keep looking for others.
            for v in state.values_mut() {
                if *v == 1 {
                    *v = 2;
                }
            }
            cycles.push(cycle);
        }
    }
    if cycles.is_empty() {
        Ok(order)
    } else {
        Err(cycles)
    }
}
