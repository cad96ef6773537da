//! Dynamic stage plugins: `.so` libraries built with `dfp-plugin-sdk`, loaded with `libloading`.
//!
//! A library is loaded once per process (before any graph is built, so every worker sees the same stage
//! types) and never unloaded. Its one entry point returns a table of stage descriptors
//! ([`dfp_plugin_sdk::abi`]); a library of another ABI version is refused. Each plugin stage becomes a
//! [`StageType`] of the [`Registry`](crate::Registry), so `dfp stages`, `validate`, `schema` and `run` treat
//! it like a built-in. Batches cross as Arrow C Data Interface arrays, without copying their buffers.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{Array, RecordBatch, StructArray};
use dfp_plugin_sdk::abi::{self, EmitApi, FFI_ArrowArray, FFI_ArrowSchema, HostApi, PluginTable, StageDescriptor};

use crate::batch::Batch;
use crate::error::{ConfigError, StageError};
use crate::family::{Family, FamilyOrigin};
use crate::registry::{StageFactory, StageType};
use crate::stage::{
    DeadLetter, Emitter, Partitioning, Sink, Source, SourceStatus, StageContext, StageInstance, StageKind, Transform,
};

/// Why a plugin cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No file for a `plugins:` entry.
    #[error("plugin \"{entry}\": no such file (looked for {tried})")]
    NotFound {
        /// The entry as written.
        entry: String,
        /// The places looked in, comma-separated.
        tried: String,
    },
    /// The file is missing or not a loadable library.
    #[error("plugin {path}: cannot load: {reason}")]
    Open {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library has no dfp entry point.
    #[error("plugin {path}: not a dfp plugin (no `dfp_plugin_entry` symbol): {reason}")]
    NoEntry {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library speaks another ABI version.
    #[error(
        "plugin {path}: built for dfp plugin ABI version {found}, but this dfp speaks ABI version {expected}: rebuild \
         the plugin against dfp-plugin-sdk {sdk}"
    )]
    Abi {
        /// The library.
        path: PathBuf,
        /// Its ABI version.
        found: u32,
        /// This host's ABI version.
        expected: u32,
        /// This host's SDK version.
        sdk: &'static str,
    },
    /// The table is malformed.
    #[error("plugin {path}: {reason}")]
    Invalid {
        /// The library.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A loaded plugin library.
pub struct Plugin {
    /// Where it was loaded from (canonical).
    pub path: PathBuf,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The SDK version it was built with.
    pub sdk_version: String,
    /// Its ABI version.
    pub abi_version: u32,
    /// Its stage types.
    pub stages: Vec<PluginStage>,
    /// The log families it exports.
    pub families: Vec<Family>,
    table: &'static PluginTable,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("name", &self.name).finish_non_exhaustive()
    }
}

/// One stage type of a plugin.
#[derive(Clone)]
pub struct PluginStage {
    /// The YAML `type` name.
    pub type_name: &'static str,
    /// Source, transform or sink.
    pub kind: StageKind,
    /// One line for `dfp stages`.
    pub description: &'static str,
    /// JSON Schema of the configuration.
    pub schema: serde_json::Value,
    /// How the input must be spread over workers.
    pub partitioning: Partitioning,
    desc: &'static StageDescriptor,
}

/// # Safety
/// `p` must be null or a NUL-terminated string that lives for the process.
unsafe fn static_str(p: *const c_char) -> Option<&'static str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a NUL-terminated string that lives for the process.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// Loads the plugin at `path` (once per process: a second call returns the same plugin).
pub fn load(path: &Path) -> Result<Arc<Plugin>, PluginError> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<Plugin>>>> = OnceLock::new();
    let canonical = path.canonicalize().map_err(|e| PluginError::Open { path: path.into(), reason: e.to_string() })?;
    let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = loaded.get(&canonical) {
        return Ok(p.clone());
    }
    let plugin = Arc::new(open(&canonical)?);
    loaded.insert(canonical, plugin.clone());
    Ok(plugin)
}

fn open(path: &Path) -> Result<Plugin, PluginError> {
    let err = |reason: String| PluginError::Invalid { path: path.into(), reason };
    // SAFETY: loading a library runs its initialisers; plugins are trusted code named by the operator.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| PluginError::Open {
        path: path.into(),
        reason: std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
    })?;
    // SAFETY: the symbol has the documented signature (ABI rule 1).
    let entry: abi::EntryFn = unsafe {
        *lib.get::<abi::EntryFn>(abi::ENTRY_SYMBOL).map_err(|e| PluginError::NoEntry {
            path: path.into(),
            reason: std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
        })?
    };
    // Never unloaded: the table, its strings and its functions stay valid for the process.
    std::mem::forget(lib);
    // SAFETY: calling the entry point; it returns a pointer to a static table (or null).
    let table = unsafe { entry() };
    if table.is_null() {
        return Err(err("the entry point returned no table".into()));
    }
    // SAFETY: `abi_version` is the first field of the table in every ABI version.
    let found = unsafe { *(table as *const u32) };
    if found != abi::ABI_VERSION {
        return Err(PluginError::Abi {
            path: path.into(),
            found,
            expected: abi::ABI_VERSION,
            sdk: dfp_plugin_sdk::SDK_VERSION,
        });
    }
    // SAFETY: same ABI version, so the layout is ours; the table is static.
    let table: &'static PluginTable = unsafe { &*table };
    let text = |p: *const c_char, what: &str| -> Result<&'static str, PluginError> {
        // SAFETY: the table's strings are static NUL-terminated UTF-8 (ABI rule).
        unsafe { static_str(p) }.ok_or_else(|| err(format!("{what} is missing or not UTF-8")))
    };
    let descriptors: &'static [StageDescriptor] = if table.stage_count == 0 {
        &[]
    } else {
        // SAFETY: `stages` points to `stage_count` descriptors for the life of the process.
        unsafe { std::slice::from_raw_parts(table.stages, table.stage_count) }
    };
    let mut stages = Vec::new();
    for d in descriptors {
        let type_name = text(d.type_name, "a stage type name")?;
        let kind = match d.kind {
            abi::KIND_SOURCE => StageKind::Source,
            abi::KIND_TRANSFORM => StageKind::Transform,
            abi::KIND_SINK => StageKind::Sink,
            k => return Err(err(format!("stage type \"{type_name}\" has unknown kind {k}"))),
        };
        let schema = serde_json::from_str(text(d.config_schema, "a config schema")?)
            .map_err(|e| err(format!("stage type \"{type_name}\": config schema is not JSON: {e}")))?;
        // SAFETY: as for `text`.
        let partitioning = match unsafe { static_str(d.partition_by) } {
            None => Partitioning::Any,
            Some(column) => Partitioning::By(column.to_string()),
        };
        stages.push(PluginStage {
            type_name,
            kind,
            description: text(d.description, "a stage description")?,
            schema,
            partitioning,
            desc: d,
        });
    }
    // SAFETY: as for `text`; the families text is optional (null: none exported).
    let families = match unsafe { static_str(table.families) } {
        None => Vec::new(),
        Some(yaml) => Family::parse_yaml(yaml).map_err(|e| err(format!("exported {e}")))?,
    };
    Ok(Plugin {
        path: path.into(),
        name: text(table.plugin_name, "the plugin name")?.to_string(),
        version: text(table.plugin_version, "the plugin version")?.to_string(),
        sdk_version: text(table.sdk_version, "the SDK version")?.to_string(),
        abi_version: found,
        stages,
        families,
        table,
    })
}

impl Plugin {
    /// The plugin's stages as registry entries.
    pub fn stage_types(self: &Arc<Self>) -> Vec<StageType> {
        self.stages
            .iter()
            .map(|s| {
                let schema = s.schema.clone();
                let plugin = self.clone();
                let stage = s.clone();
                StageType {
                    type_name: s.type_name,
                    kind: s.kind,
                    description: s.description,
                    schema: Arc::new(move || schema.clone()),
                    factory: Arc::new(move |config, _ctx| {
                        let json = CString::new(config.to_string())
                            .map_err(|_| ConfigError { field: None, message: "configuration holds a NUL".into() })?;
                        plugin
                            // SAFETY: `json` is NUL-terminated and outlives the call; `call` passes a valid
                            // out-pointer for the error (ABI rules).
                            .call(|error| unsafe { (stage.desc.validate)(json.as_ptr(), error) })
                            .map_err(|message| ConfigError { field: None, message })?;
                        Ok(Arc::new(PluginFactory { plugin: plugin.clone(), stage: stage.clone(), json: json.clone() })
                            as Arc<dyn StageFactory>)
                    }),
                    plugin: Some(self.path.clone()),
                    renamed: &[],
                    outputs: &[],
                }
            })
            .collect()
    }

    /// Runs one ABI call; turns [`abi::ERROR`] into the plugin's message (freeing it with the plugin).
    fn call(&self, f: impl FnOnce(*mut *mut c_char) -> i32) -> Result<(), String> {
        let mut error: *mut c_char = std::ptr::null_mut();
        let rc = f(&mut error);
        if rc == abi::OK {
            return Ok(());
        }
        let message = if error.is_null() {
            "failed without a message".to_string()
        } else {
            // SAFETY: the plugin stored a NUL-terminated string it allocated; it frees it.
            let m = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
            // SAFETY: the string is the plugin's, handed back once to its own `free_string` (ABI rule).
            unsafe { (self.table.free_string)(error) };
            m
        };
        Err(message)
    }
}

struct PluginFactory {
    plugin: Arc<Plugin>,
    stage: PluginStage,
    json: CString,
}

impl StageFactory for PluginFactory {
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        let host = Box::new(HostState::new(ctx));
        let mut api = Box::new(HostApi {
            ctx: std::ptr::null_mut(),
            stage_id: host.stage_id.as_ptr(),
            worker_index: ctx.worker_index as u32,
            workers: ctx.workers as u32,
            log: host_log,
            counter_add: host_counter_add,
        });
        api.ctx = (&*host as *const HostState).cast_mut().cast();
        let mut instance: *mut c_void = std::ptr::null_mut();
        let desc = self.stage.desc;
        self.plugin
            // SAFETY: the configuration is NUL-terminated, the host API is boxed and kept in the handle for the
            // instance's life, and the out-pointers are valid for the call (ABI rules).
            .call(|error| unsafe { (desc.create)(self.json.as_ptr(), &*api, &mut instance, error) })
            .map_err(|m| StageError::Other(format!("plugin {}: {m}", self.plugin.name)))?;
        let handle = Handle { plugin: self.plugin.clone(), desc, instance, _api: api, host };
        let partitioning = self.stage.partitioning.clone();
        Ok(match self.stage.kind {
            StageKind::Source => StageInstance::Source(Box::new(PluginSource { handle })),
            StageKind::Transform => StageInstance::Transform(Box::new(PluginTransform { handle, partitioning })),
            StageKind::Sink => StageInstance::Sink(Box::new(PluginSink { handle, partitioning })),
        })
    }
}

/// What the host's callbacks for one instance see.
struct HostState {
    stage_id: CString,
    counters: Mutex<HashMap<String, u64>>,
}

impl HostState {
    fn new(ctx: &StageContext) -> Self {
        HostState {
            stage_id: CString::new(ctx.stage_id.replace('\0', " ")).unwrap_or_default(),
            counters: Mutex::new(HashMap::new()),
        }
    }
}

fn text_of(p: *const u8, len: usize) -> String {
    if p.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: the plugin passes `len` readable bytes.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(p, len) }).into_owned()
}

/// # Safety
/// `ctx` is the `HostState` of the instance's host API; `message` points to `len` bytes.
unsafe extern "C" fn host_log(ctx: *mut c_void, level: u32, message: *const u8, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the boxed `HostState` the handle keeps alive for the instance's life.
        let state = unsafe { &*(ctx as *const HostState) };
        let stage = state.stage_id.to_string_lossy();
        let message = text_of(message, len);
        match level {
            abi::LOG_ERROR => tracing::error!(stage = %stage, "{message}"),
            abi::LOG_WARN => tracing::warn!(stage = %stage, "{message}"),
            abi::LOG_INFO => tracing::info!(stage = %stage, "{message}"),
            _ => tracing::debug!(stage = %stage, "{message}"),
        }
    }));
}

/// # Safety
/// `ctx` is the `HostState` of the instance's host API; `name` points to `len` bytes.
unsafe extern "C" fn host_counter_add(ctx: *mut c_void, name: *const u8, len: usize, value: u64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the boxed `HostState` the handle keeps alive for the instance's life.
        let state = unsafe { &*(ctx as *const HostState) };
        let name = text_of(name, len);
        if let Some(m) = crate::observe::metrics() {
            let labels = [
                crate::observe::KeyValue::new("stage", state.stage_id.to_string_lossy().into_owned()),
                crate::observe::KeyValue::new("counter", m.bounded("plugin_counter", &name)),
            ];
            m.plugin_counters.add(value, &labels);
        }
        let mut counters = state.counters.lock().unwrap_or_else(|p| p.into_inner());
        *counters.entry(name).or_default() += value;
    }));
}

/// One live plugin instance; destroyed (by the plugin) when dropped.
struct Handle {
    plugin: Arc<Plugin>,
    desc: &'static StageDescriptor,
    instance: *mut c_void,
    _api: Box<HostApi>,
    host: Box<HostState>,
}

// SAFETY: the instance is used by one worker thread at a time, and the plugin's stages are `Send` (the SDK's
// trait bound), so moving the handle to another thread is sound.
unsafe impl Send for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        let counters = self.host.counters.lock().map(|c| c.clone()).unwrap_or_default();
        if !counters.is_empty() {
            let mut list: Vec<_> = counters.into_iter().collect();
            list.sort();
            tracing::info!(stage = %self.host.stage_id.to_string_lossy(), counters = ?list, "plugin counters");
        }
        // SAFETY: `instance` came from `create` and is destroyed once.
        unsafe { (self.desc.destroy)(self.instance) };
    }
}

/// Collects what a plugin emits during one call.
struct EmitState<'a> {
    out: &'a mut Emitter,
    template: Option<&'a Batch>,
    source: &'a str,
    failure: Option<String>,
}

/// # Safety
/// `ctx` is the `EmitState` of the call in progress; `array` is handed over and `schema` lent (ABI rules).
unsafe extern "C" fn emit_batch(ctx: *mut c_void, array: *mut FFI_ArrowArray, schema: *const FFI_ArrowSchema) -> i32 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `with_emit` passes its own `EmitState`, alive and not otherwise borrowed during the call.
        let state = unsafe { &mut *(ctx as *mut EmitState<'_>) };
        if array.is_null() || schema.is_null() {
            state.failure = Some("emitted a null batch".into());
            return abi::ERROR;
        }
        // SAFETY: the plugin hands the array over (we release it) and lends the schema.
        let imported = unsafe { arrow::ffi::from_ffi(FFI_ArrowArray::from_raw(array), &*schema) };
        let data = match imported {
            Ok(d) => d,
            Err(e) => {
                state.failure = Some(format!("emitted a batch that cannot be imported: {e}"));
                return abi::ERROR;
            }
        };
        if !matches!(data.data_type(), arrow::datatypes::DataType::Struct(_)) {
            state.failure = Some(format!("emitted a {} array; a batch is a struct array", data.data_type()));
            return abi::ERROR;
        }
        let batch = RecordBatch::from(StructArray::from(data));
        let out = match state.template {
            Some(t) => t.with_data(batch),
            None => Batch::new(batch, state.source),
        };
        state.out.emit(out);
        abi::OK
    }));
    r.unwrap_or(abi::ERROR)
}

unsafe extern "C" fn emit_dead_letter(
    ctx: *mut c_void,
    reason: *const u8,
    reason_len: usize,
    record: *const u8,
    record_len: usize,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `with_emit` passes its own `EmitState`, alive and not otherwise borrowed during the call.
        let state = unsafe { &mut *(ctx as *mut EmitState<'_>) };
        let origin = state.template.map(|b| b.envelope.origin.clone()).unwrap_or_default();
        state.out.dead_letter(DeadLetter::new(text_of(reason, reason_len), text_of(record, record_len), origin));
    }));
}

impl Handle {
    /// Runs one call with an emitter; the plugin's error (or an emit failure) becomes a stage error.
    fn with_emit(
        &mut self,
        out: &mut Emitter,
        template: Option<&Batch>,
        f: impl FnOnce(*mut c_void, *const EmitApi, *mut *mut c_char) -> i32,
    ) -> Result<(), StageError> {
        let source = self.host.stage_id.to_string_lossy().into_owned();
        let mut state = EmitState { out, template, source: &source, failure: None };
        let api = EmitApi {
            ctx: (&mut state as *mut EmitState<'_>).cast(),
            batch: emit_batch,
            dead_letter: emit_dead_letter,
        };
        let instance = self.instance;
        let r = self.plugin.call(|error| f(instance, &api, error));
        if let Some(f) = state.failure.take() {
            return Err(StageError::Other(format!("plugin {}: {f}", self.plugin.name)));
        }
        r.map_err(|m| StageError::Other(format!("plugin {}: {m}", self.plugin.name)))
    }

    fn process(&mut self, batch: Option<&Batch>, out: &mut Emitter) -> Result<(), StageError> {
        let Some(batch) = batch else { return Ok(()) };
        let data = StructArray::from(batch.data.clone()).into_data();
        let (mut array, schema) =
            arrow::ffi::to_ffi(&data).map_err(|e| StageError::Other(format!("exporting a batch to a plugin: {e}")))?;
        let desc = self.desc;
        // SAFETY: the instance is live (the handle owns it), the array is handed over and the schema lent for
        // the call, and `with_emit` passes a valid emit API and error out-pointer (ABI rules).
        self.with_emit(out, Some(batch), |instance, emit, error| unsafe {
            (desc.process)(instance, &mut array, &schema, emit, error)
        })
    }
}

struct PluginSource {
    handle: Handle,
}

impl Source for PluginSource {
    fn poll(&mut self, _ctx: &StageContext, out: &mut Emitter) -> Result<SourceStatus, StageError> {
        let mut status = abi::POLL_EXHAUSTED;
        let desc = self.handle.desc;
        self.handle
            // SAFETY: the instance is live (the handle owns it); the pointers are valid for the call (ABI rules).
            .with_emit(out, None, |instance, emit, error| unsafe { (desc.poll)(instance, emit, &mut status, error) })?;
        Ok(match status {
            abi::POLL_READY => SourceStatus::Ready,
            abi::POLL_IDLE => SourceStatus::Idle,
            _ => SourceStatus::Exhausted,
        })
    }

    fn finish(&mut self, _ctx: &StageContext) -> Result<(), StageError> {
        let desc = self.handle.desc;
        let mut sink = Emitter::new();
        // SAFETY: the instance is live (the handle owns it); the pointers are valid for the call (ABI rules).
        self.handle.with_emit(&mut sink, None, |instance, emit, error| unsafe { (desc.finish)(instance, emit, error) })
    }
}

struct PluginTransform {
    handle: Handle,
    partitioning: Partitioning,
}

impl Transform for PluginTransform {
    fn input_partitioning(&self) -> Partitioning {
        self.partitioning.clone()
    }

    fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
        self.handle.process(Some(&batch), out)
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        let desc = self.handle.desc;
        // SAFETY: the instance is live (the handle owns it); the pointers are valid for the call (ABI rules).
        self.handle.with_emit(out, None, |instance, emit, error| unsafe { (desc.finish)(instance, emit, error) })
    }
}

struct PluginSink {
    handle: Handle,
    partitioning: Partitioning,
}

impl Sink for PluginSink {
    fn input_partitioning(&self) -> Partitioning {
        self.partitioning.clone()
    }

    fn write(&mut self, batch: Batch) -> Result<(), StageError> {
        let mut out = Emitter::new();
        self.handle.process(Some(&batch), &mut out)
    }

    fn finish(&mut self) -> Result<(), StageError> {
        let desc = self.handle.desc;
        let mut out = Emitter::new();
        // SAFETY: the instance is live (the handle owns it); the pointers are valid for the call (ABI rules).
        self.handle.with_emit(&mut out, None, |instance, emit, error| unsafe { (desc.finish)(instance, emit, error) })
    }
}

/// Where a `plugins:` entry points: a path with a `/` as written (relative to the working directory); a
/// bare file name is looked up in `$DFP_PLUGIN_PATH` (colon-separated folders), then next to the running
/// executable. The error lists the places looked in.
pub fn resolve(entry: &str) -> Result<PathBuf, PluginError> {
    let p = Path::new(entry);
    let mut tried = vec![p.to_path_buf()];
    if !entry.contains('/') {
        if let Ok(dirs) = std::env::var("DFP_PLUGIN_PATH") {
            tried.extend(dirs.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(entry)));
        }
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
            tried.push(dir.join(entry));
        }
    }
    match tried.iter().find(|c| c.exists()) {
        Some(found) => Ok(found.clone()),
        None => Err(PluginError::NotFound {
            entry: entry.to_string(),
            tried: tried.iter().map(|t| t.display().to_string()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// [`resolve`] then [`load`].
pub fn load_entry(entry: &str) -> Result<Arc<Plugin>, PluginError> {
    load(&resolve(entry)?)
}

/// Adds a plugin's stage types to `registry`; a plugin already there (listed twice) or a name clash is an
/// error, and nothing is added then.
pub fn add_to(registry: &mut crate::Registry, plugin: &Arc<Plugin>) -> Result<(), String> {
    if registry.iter().any(|t| t.plugin.as_ref() == Some(&plugin.path))
        || plugin
            .families
            .iter()
            .any(|f| registry.families().origin(&f.name) == Some(&FamilyOrigin::Plugin(plugin.path.clone())))
    {
        return Err(format!("plugin {} is listed twice", plugin.path.display()));
    }
    let mut next = registry.clone();
    next.extend(plugin.stage_types())?;
    next.extend_families(plugin.families.clone(), FamilyOrigin::Plugin(plugin.path.clone()))?;
    *registry = next;
    Ok(())
}
