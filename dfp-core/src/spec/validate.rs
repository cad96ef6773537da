//! Raw model → validated [`Plan`]: variables, stage configurations, graph checks. Every problem found
//! is reported, not just the first.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::raw::{line_of, RawFamilies, RawPipeline, SpannedMap};
use super::vars::{self, EnvLookup};
use super::{Diagnostic, Plan, PlannedStage, RuntimeConfig, SpecError, DEAD_LETTERS};
use crate::family::{Families, Family, FamilyOrigin};
use crate::registry::{parse_config, ConfigContext, Registry, StageType};
use crate::stage::StageKind;
use crate::suggest::closest;

/// Collects every problem found; values read from `${env:…}` never appear in a message.
struct Collector<'a> {
    file: &'a str,
    out: Vec<Diagnostic>,
}

impl Collector<'_> {
    fn push(&mut self, line: Option<usize>, stage: Option<&str>, message: impl Into<String>) {
        self.push_in(self.file.to_string(), line, stage, message);
    }

    fn push_in(&mut self, file: String, line: Option<usize>, stage: Option<&str>, message: impl Into<String>) {
        self.out.push(Diagnostic { file, line, stage: stage.map(str::to_string), message: message.into() });
    }
}

/// Values taken from the environment, with the variable they came from, so that diagnostics can name the
/// variable instead of showing the value (it may be a secret).
#[derive(Default)]
struct EnvReads(RefCell<Vec<(String, String)>>);

impl EnvReads {
    fn redact(&self, text: &str) -> String {
        let reads = self.0.borrow();
        let mut out = text.to_string();
        // Longest first, so that a secret containing another is replaced whole.
        let mut sorted: Vec<&(String, String)> = reads.iter().filter(|(v, _)| v.len() >= 3).collect();
        sorted.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        for (value, name) in sorted {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("<value of ${{env:{name}}}>"));
            }
        }
        out
    }
}

/// True for ids usable as stage ids.
pub fn valid_stage_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Validates a raw pipeline: a few passes over the file, each adding what it finds to one collector, so
/// that every problem is reported, not just the first.
pub fn validate(
    raw: &RawPipeline,
    file: &str,
    overrides: &[String],
    registry: &Registry,
    env: EnvLookup<'_>,
) -> Result<Plan, SpecError> {
    let reads = EnvReads::default();
    let recording = |name: &str| {
        let value = env(name);
        if let Some(v) = &value {
            reads.0.borrow_mut().push((v.clone(), name.to_string()));
        }
        value
    };
    let mut v =
        Validator { diag: Collector { file, out: Vec::new() }, env: &recording, file, disabled: HashMap::new() };

    v.version(raw);
    let vars = v.vars(raw, overrides);
    let runtime = v.runtime(raw, &vars);
    let (extended, plugins) = v.plugins(raw, &vars, registry);
    let registry = extended.as_ref().unwrap_or(registry);
    let families = v.families(raw, &vars, registry);
    let family = v.pipeline_family(raw, &families);
    let (stages, kinds) = v.stages(raw, &vars, registry, &families, family.as_ref());
    v.inputs(raw, &kinds);
    let order = v.order(raw);

    let mut diagnostics = v.diag.out;
    if !diagnostics.is_empty() {
        for d in &mut diagnostics {
            d.message = reads.redact(&d.message);
        }
        diagnostics.sort_by_key(|d| (d.file != file, d.line.unwrap_or(0)));
        return Err(SpecError { diagnostics });
    }
    let mut by_id: HashMap<String, PlannedStage> = stages.into_iter().map(|s| (s.id.clone(), s)).collect();
    let stages = order.into_iter().filter_map(|id| by_id.remove(&id)).collect();
    Ok(Plan {
        file: file.to_string(),
        runtime,
        stages,
        vars,
        digest: String::new(),
        plugins,
        families: Arc::new(families),
        family: family.map(|(name, _)| name),
    })
}

struct Validator<'a> {
    diag: Collector<'a>,
    env: EnvLookup<'a>,
    file: &'a str,
    /// Stages left out with `enabled: false`, and the line that says so.
    disabled: HashMap<String, usize>,
}

impl Validator<'_> {
    fn version(&mut self, raw: &RawPipeline) {
        if let Some(version) = &raw.version {
            if version.value != 1 {
                self.diag.push(
                    Some(line_of(version)),
                    None,
                    format!("unsupported version {}; this dfp reads version 1", version.value),
                );
            }
        }
    }

    /// Variables: defaults (which may use `${env:…}` only), then `--var` overrides.
    fn vars(&mut self, raw: &RawPipeline, overrides: &[String]) -> BTreeMap<String, Value> {
        let mut vars: BTreeMap<String, Value> = BTreeMap::new();
        let none = BTreeMap::new();
        for (name, value) in &raw.vars.0 {
            if !vars::valid_name(&name.value) {
                self.diag.push(Some(line_of(name)), None, format!("\"{}\" is not a valid variable name", name.value));
                continue;
            }
            match vars::interpolate(&value.value, &none, self.env) {
                Ok(v) => {
                    vars.insert(name.value.clone(), v);
                }
                Err(e) => self.diag.push(Some(line_of(value)), None, format!("variable \"{}\": {e}", name.value)),
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
                        self.diag.push(None, None, msg);
                    }
                }
                Err(e) => self.diag.push(None, None, e),
            }
        }
        vars
    }

    fn runtime(&mut self, raw: &RawPipeline, vars: &BTreeMap<String, Value>) -> RuntimeConfig {
        let mut runtime_json = serde_json::Map::new();
        for (key, value) in &raw.runtime.0 {
            match vars::interpolate(&value.value, vars, self.env) {
                Ok(v) => {
                    runtime_json.insert(key.value.clone(), v);
                }
                Err(e) => self.diag.push(Some(line_of(value)), None, format!("runtime.{}: {e}", key.value)),
            }
        }
        let r = match parse_config::<RuntimeConfig>(Value::Object(runtime_json)) {
            Ok(r) => r,
            Err(e) => {
                let known: Vec<String> = schema_fields(&crate::registry::schema_of::<RuntimeConfig>());
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                let (line, msg) = locate(&raw.runtime, &e.field, &e.message, &known);
                let line = line.or_else(|| raw.runtime.0.first().map(|(k, _)| line_of(k)));
                self.diag.push(line, None, format!("runtime: {msg}"));
                return RuntimeConfig::default();
            }
        };
        let mut check = |ok: bool, key: &str, message: String| {
            if !ok {
                self.diag.push(line_for(&raw.runtime, key), None, message);
            }
        };
        check(r.workers > 0, "workers", "runtime.workers must be at least 1".into());
        check(r.max_in_flight > 0, "max_in_flight", "runtime.max_in_flight must be at least 1".into());
        check(r.processes > 0, "processes", "runtime.processes must be at least 1".into());
        check(
            r.process.is_none_or(|i| i < r.processes.max(1)),
            "process",
            format!("runtime.process must be below runtime.processes ({})", r.processes),
        );
        check(
            r.connect_timeout_secs.is_finite() && r.connect_timeout_secs > 0.0,
            "connect_timeout_secs",
            "runtime.connect_timeout_secs must be a positive number".into(),
        );
        if let Some(addr) = &r.metrics {
            if let Err(e) = crate::observe::check_addr(addr) {
                self.diag.push(line_for(&raw.runtime, "metrics"), None, format!("runtime.metrics: {e}"));
            }
        }
        r
    }

    /// Plugins are loaded before the stages are checked, so that their stage types and families count
    /// like built-ins. Returns the extended registry (when a plugin was listed) and `name version` of each.
    fn plugins(
        &mut self,
        raw: &RawPipeline,
        vars: &BTreeMap<String, Value>,
        registry: &Registry,
    ) -> (Option<Registry>, Vec<String>) {
        let mut extended: Option<Registry> = None;
        let mut loaded = Vec::new();
        for p in &raw.plugins {
            let entry = match vars::interpolate(&Value::String(p.value.clone()), vars, self.env) {
                Ok(Value::String(s)) => s,
                Ok(other) => other.to_string(),
                Err(e) => {
                    self.diag.push(Some(line_of(p)), None, format!("plugin \"{}\": {e}", p.value));
                    continue;
                }
            };
            let added = crate::plugin::load_entry(&entry).map_err(|e| e.to_string()).and_then(|plugin| {
                loaded.push(format!("{} {}", plugin.name, plugin.version));
                crate::plugin::add_to(extended.get_or_insert_with(|| registry.clone()), &plugin)
            });
            if let Err(e) = added {
                self.diag.push(Some(line_of(p)), None, e);
            }
        }
        (extended, loaded)
    }

    /// The families of the registry plus those the pipeline declares (inline or in a file).
    fn families(&mut self, raw: &RawPipeline, vars: &BTreeMap<String, Value>, registry: &Registry) -> Families {
        let mut families = registry.families().clone();
        let Some(declared) = &raw.families else { return families };
        let at = line_of(declared);
        match &declared.value {
            RawFamilies::Inline(map) => self.add_families(&mut families, map, self.file.to_string()),
            RawFamilies::File(name) => {
                let name = match vars::interpolate(&Value::String(name.clone()), vars, self.env) {
                    Ok(Value::String(s)) => s,
                    Ok(other) => other.to_string(),
                    Err(e) => {
                        self.diag.push(Some(at), None, format!("families: {e}"));
                        return families;
                    }
                };
                let path = relative_to(self.file, &name);
                let shown = path.display().to_string();
                match std::fs::read_to_string(&path) {
                    Err(e) => self.diag.push(Some(at), None, format!("families: cannot read {shown}: {e}")),
                    Ok(text) => match serde_saphyr::from_str::<SpannedMap<SpannedMap<Value>>>(&text) {
                        Ok(map) => self.add_families(&mut families, &map, shown),
                        Err(e) => {
                            let line = e.location().map(|l| l.line() as usize).filter(|l| *l > 0);
                            let message = e.to_string();
                            let message = message.lines().next().unwrap_or("").trim_start_matches("error: ");
                            self.diag.push_in(shown, line, None, format!("families: {message}"));
                        }
                    },
                }
            }
        }
        families
    }

    fn add_families(&mut self, families: &mut Families, map: &SpannedMap<SpannedMap<Value>>, file: String) {
        for (name, body) in &map.0 {
            let object: serde_json::Map<String, Value> =
                body.value.0.iter().map(|(k, v)| (k.value.clone(), v.value.clone())).collect();
            match Family::from_value(&name.value, Value::Object(object)) {
                Ok(f) => {
                    let origin = FamilyOrigin::Pipeline(format!("{file}:{}", line_of(name)));
                    if let Err(e) = families.add(f, origin) {
                        self.diag.push_in(file.clone(), Some(line_of(name)), None, e);
                    }
                }
                Err(e) => {
                    let top = e.field.as_deref().map(|f| f.split(['.', '[']).next().unwrap_or(f));
                    let line = top.and_then(|t| line_for(&body.value, t)).unwrap_or(line_of(name));
                    let msg = match &e.field {
                        Some(field) => format!("family \"{}\": {field}: {}", e.family, e.message),
                        None => e.to_string(),
                    };
                    self.diag.push_in(file.clone(), Some(line), None, msg);
                }
            }
        }
    }

    /// The pipeline's `family:` (the default of every stage's `family`), with its line.
    fn pipeline_family(&mut self, raw: &RawPipeline, families: &Families) -> Option<(String, usize)> {
        let f = raw.family.as_ref()?;
        if let Err(e) = families.require(&f.value) {
            self.diag.push(Some(line_of(f)), None, format!("family: {e}"));
            return None;
        }
        Some((f.value.clone(), line_of(f)))
    }

    /// Each stage: its type, inputs and configuration (after variables, with the pipeline's family filled
    /// in), parsed and checked by its type.
    fn stages<'r>(
        &mut self,
        raw: &'r RawPipeline,
        vars: &BTreeMap<String, Value>,
        registry: &Registry,
        families: &Families,
        family: Option<&(String, usize)>,
    ) -> (Vec<PlannedStage>, StageKinds<'r>) {
        let mut stages: Vec<PlannedStage> = Vec::new();
        let mut kinds: StageKinds<'_> = HashMap::new();
        if raw.stages.value.0.is_empty() {
            self.diag.push(
                Some(line_of(&raw.stages)),
                None,
                "`stages` is empty: a pipeline needs at least a source and a sink",
            );
        }
        for (id_s, body) in &raw.stages.value.0 {
            let id = id_s.value.as_str();
            let line = line_of(id_s);
            if !valid_stage_id(id) || id == DEAD_LETTERS {
                self.diag.push(
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
            if !self.enabled(id, body, vars) {
                continue;
            }
            let reg = self.stage_type(id, line, body, registry);
            let (inputs, inputs_line) = self.stage_inputs(id, body);
            let Some(reg) = reg else { continue };
            kinds.insert(id, (reg.kind, reg.outputs));
            match reg.kind {
                StageKind::Source if !inputs.is_empty() => self.diag.push(
                    inputs_line,
                    Some(id),
                    format!("a source (\"{}\") takes no inputs; remove `inputs`", reg.type_name),
                ),
                StageKind::Transform | StageKind::Sink if inputs.is_empty() => self.diag.push(
                    Some(line),
                    Some(id),
                    format!("a {} needs `inputs`: the ids of the stages it reads from", reg.kind),
                ),
                _ => {}
            }
            let schema = (reg.schema)();
            let fields = schema_fields(&schema);
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            // The configuration: every other field, after variables.
            let mut config = serde_json::Map::new();
            let mut config_ok = true;
            for (k, v) in &body.0 {
                if k.value == "type" || k.value == "inputs" || k.value == "enabled" {
                    continue;
                }
                if let Some((_, message)) = reg.renamed.iter().find(|(old, _)| *old == k.value) {
                    config_ok = false;
                    self.diag.push(
                        Some(line_of(k)),
                        Some(id),
                        format!("`{}` is no longer accepted: {message}", k.value),
                    );
                    continue;
                }
                match vars::interpolate(&v.value, vars, self.env) {
                    Ok(val) => {
                        config.insert(k.value.clone(), val);
                    }
                    Err(e) => {
                        config_ok = false;
                        self.diag.push(Some(line_of(v)), Some(id), format!("field `{}`: {e}", k.value));
                    }
                }
            }
            // A stage with a `family` field gets the pipeline's unless it names its own.
            if fields.contains(&"family") {
                match (config.get("family"), family) {
                    (Some(Value::String(name)), _) => {
                        if let Err(e) = families.require(name) {
                            config_ok = false;
                            self.diag.push(line_for(body, "family").or(Some(line)), Some(id), e);
                        }
                    }
                    (None, Some((name, _))) => {
                        config.insert("family".into(), Value::String(name.clone()));
                    }
                    _ => {}
                }
            }
            if !config_ok {
                continue;
            }
            let ctx = ConfigContext { families };
            match (reg.factory)(Value::Object(config), &ctx) {
                Ok(factory) => stages.push(PlannedStage {
                    id: id.to_string(),
                    type_name: reg.type_name.to_string(),
                    kind: reg.kind,
                    inputs,
                    line,
                    factory,
                }),
                Err(e) if e.message == "missing field `family`" => {
                    let known = families.names().join(", ");
                    self.diag.push(
                        Some(line),
                        Some(id),
                        format!(
                            "needs a log family: name it once at the top of the pipeline (`family: NAME`) or on \
                             this stage; known families: {known}"
                        ),
                    );
                }
                Err(e) => {
                    let (fline, msg) = locate(body, &e.field, &e.message, &fields);
                    let fline =
                        fline.or_else(|| if e.field.as_deref() == Some("family") { family.map(|f| f.1) } else { None });
                    self.diag.push(fline.or(Some(line)), Some(id), msg);
                }
            }
        }
        (stages, kinds)
    }

    fn stage_type<'r>(
        &mut self,
        id: &str,
        line: usize,
        body: &SpannedMap<Value>,
        registry: &'r Registry,
    ) -> Option<&'r StageType> {
        let Some((_, v)) = body.get("type") else {
            self.diag.push(Some(line), Some(id), "missing field `type`");
            return None;
        };
        match &v.value {
            Value::String(t) => {
                let found = registry.get(t);
                if found.is_none() {
                    let mut msg = format!("unknown type \"{t}\"");
                    if let Some(s) = registry.suggest(t) {
                        msg.push_str(&format!("; did you mean \"{s}\"?"));
                    } else {
                        msg.push_str("; `dfp stages` lists the available types");
                    }
                    self.diag.push(Some(line_of(v)), Some(id), msg);
                }
                found
            }
            other => {
                self.diag.push(
                    Some(line_of(v)),
                    Some(id),
                    format!("`type` must be a string, found {}", crate::json::kind_of(other)),
                );
                None
            }
        }
    }

    fn stage_inputs(&mut self, id: &str, body: &SpannedMap<Value>) -> (Vec<String>, Option<usize>) {
        let mut inputs = Vec::new();
        let Some((k, v)) = body.get("inputs") else { return (inputs, None) };
        match &v.value {
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::String(s) => inputs.push(s.clone()),
                        other => self.diag.push(
                            Some(line_of(v)),
                            Some(id),
                            format!("`inputs` must list stage ids, found {}", crate::json::kind_of(other)),
                        ),
                    }
                }
            }
            Value::String(s) => inputs.push(s.clone()),
            other => self.diag.push(
                Some(line_of(v)),
                Some(id),
                format!("`inputs` must be a list of stage ids, found {}", crate::json::kind_of(other)),
            ),
        }
        (inputs, Some(line_of(k)))
    }

    /// `enabled:` (default true; a variable makes a stage optional): false leaves the stage out of the
    /// pipeline, as if it were not written.
    fn enabled(&mut self, id: &str, body: &SpannedMap<Value>, vars: &BTreeMap<String, Value>) -> bool {
        let Some((k, v)) = body.get("enabled") else { return true };
        let value = match vars::interpolate(&v.value, vars, self.env) {
            Ok(value) => value,
            Err(e) => {
                self.diag.push(Some(line_of(v)), Some(id), format!("field `enabled`: {e}"));
                return true;
            }
        };
        let on = match value {
            Value::Bool(b) => b,
            Value::String(t) if t == "true" || t == "false" => t == "true",
            other => {
                let found = crate::json::kind_of(&other);
                self.diag.push(Some(line_of(v)), Some(id), format!("`enabled` must be true or false, found {found}"));
                return true;
            }
        };
        if !on {
            self.disabled.insert(id.to_string(), line_of(k));
        }
        on
    }

    /// Graph checks across stages: every input names another stage that has an output.
    fn inputs(&mut self, raw: &RawPipeline, kinds: &StageKinds<'_>) {
        let ids: HashSet<&str> = raw.stages.value.0.iter().map(|(k, _)| k.value.as_str()).collect();
        for (id_s, body) in &raw.stages.value.0 {
            let id = id_s.value.as_str();
            if self.disabled.contains_key(id) {
                continue;
            }
            let Some((_, v)) = body.value.get("inputs") else { continue };
            let names: Vec<&str> = match &v.value {
                Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                Value::String(s) => vec![s.as_str()],
                _ => continue,
            };
            for (i, input) in names.iter().copied().enumerate() {
                if names[..i].contains(&input) {
                    self.diag.push(Some(line_of(v)), Some(id), format!("input \"{input}\" is listed twice"));
                    continue;
                }
                if input == DEAD_LETTERS {
                    continue;
                }
                if input == id {
                    self.diag.push(Some(line_of(v)), Some(id), "a stage cannot read its own output");
                    continue;
                }
                let source = input.rsplit_once('.').map_or(input, |(s, _)| s);
                if let Some(off) = self.disabled.get(source).or_else(|| self.disabled.get(input)) {
                    self.diag.push(
                        Some(line_of(v)),
                        Some(id),
                        format!(
                            "input \"{input}\" is disabled (`enabled: false` at line {off}): enable it, or disable \"{id}\" too"
                        ),
                    );
                    continue;
                }
                if !ids.contains(input) {
                    if let Some((stage, port)) = input.rsplit_once('.').filter(|(s, _)| ids.contains(s)) {
                        let ports = kinds.get(stage).map(|k| k.1).unwrap_or_default();
                        if !ports.contains(&port) {
                            let mut msg = format!("stage \"{stage}\" has no output \"{port}\"");
                            match ports {
                                [] => msg.push_str(&format!("; read its main output with \"{stage}\"")),
                                _ => msg.push_str(&format!(
                                    "; its outputs: \"{stage}\", {}",
                                    ports.iter().map(|p| format!("\"{stage}.{p}\"")).collect::<Vec<_>>().join(", ")
                                )),
                            }
                            self.diag.push(Some(line_of(v)), Some(id), msg);
                        } else if stage == id {
                            self.diag.push(Some(line_of(v)), Some(id), "a stage cannot read its own output");
                        }
                        continue;
                    }
                    let mut msg = format!("input \"{input}\" is not a stage in this pipeline");
                    let all = raw.stages.value.0.iter().map(|(k, _)| k.value.as_str()).chain([DEAD_LETTERS]);
                    if let Some(s) = closest(input, all) {
                        msg.push_str(&format!("; did you mean \"{s}\"?"));
                    }
                    self.diag.push(Some(line_of(v)), Some(id), msg);
                } else if let Some((StageKind::Sink, _)) = kinds.get(input) {
                    self.diag.push(
                        Some(line_of(v)),
                        Some(id),
                        format!("input \"{input}\" is a sink; a sink's output cannot be read"),
                    );
                }
            }
        }
    }

    fn order(&mut self, raw: &RawPipeline) -> Vec<String> {
        match topological_order(&raw.stages.value) {
            Ok(order) => order,
            Err(cycles) => {
                for cycle in cycles {
                    let first = raw.stages.value.get(&cycle[0]).map(|(k, _)| line_of(k));
                    self.diag.push(first, Some(&cycle[0]), format!("the inputs form a cycle: {}", cycle.join(" → ")));
                }
                Vec::new()
            }
        }
    }
}

/// The property names of a configuration schema.
fn schema_fields(schema: &Value) -> Vec<String> {
    schema.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect()).unwrap_or_default()
}

/// `name` as a path: absolute as is, relative to the pipeline file's folder otherwise.
fn relative_to(pipeline: &str, name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(name);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match std::path::Path::new(pipeline).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_path_buf(),
    }
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

/// Each stage's kind and named outputs, by id.
type StageKinds<'r> = HashMap<&'r str, (StageKind, &'static [&'static str])>;

/// The stage an input names: the stage of that id, or for `stage.port` (a named output) that stage.
pub(crate) fn stage_of_input<'a>(input: &'a str, ids: &[&str]) -> Option<&'a str> {
    if ids.contains(&input) {
        return Some(input);
    }
    input.rsplit_once('.').map(|(s, _)| s).filter(|s| ids.contains(s))
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
            .map(|i| stage_of_input(&i, &ids).unwrap_or(&i).to_string())
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
