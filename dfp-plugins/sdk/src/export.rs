//! The plugin side of the ABI: the table that [`export_plugin!`](crate::export_plugin) returns and the
//! `extern "C"` functions behind it. Stage authors do not call this module.

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use arrow::array::StructArray;
use arrow::record_batch::RecordBatch;

use crate::abi::{self, EmitApi, FFI_ArrowArray, FFI_ArrowSchema, HostApi, PluginTable, StageDescriptor};
use crate::{c_string, Context, Emitter, Error, Instance, Kind, SourceStatus, Stage};

/// One registered stage type (what [`stage!`](crate::stage) submits).
pub struct StageEntry {
    type_name: &'static str,
    kind: Kind,
    description: &'static str,
    schema: fn() -> String,
    partition_by: fn() -> Option<&'static str>,
    validate: unsafe extern "C" fn(*const c_char, *mut *mut c_char) -> i32,
    create: unsafe extern "C" fn(*const c_char, *const HostApi, *mut *mut c_void, *mut *mut c_char) -> i32,
}

inventory::collect!(StageEntry);

impl StageEntry {
    /// The entry of a [`Stage`] type.
    pub const fn of<S: Stage>() -> Self {
        StageEntry {
            type_name: S::TYPE,
            kind: S::KIND,
            description: S::DESCRIPTION,
            schema: schema_of::<S>,
            partition_by: S::partition_by,
            validate: validate_stage::<S>,
            create: create_stage::<S>,
        }
    }
}

fn schema_of<S: Stage>() -> String {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true);
    settings.into_generator().into_root_schema_for::<S>().to_value().to_string()
}

/// The instance behind the `*mut c_void` the host holds.
struct Slot {
    instance: Instance,
}

fn leak(s: &str) -> *const c_char {
    c_string(s).into_raw()
}

/// Builds (once) and returns the library's table; `families` is the YAML text of the log families the
/// plugin exports.
pub fn table(name: &str, version: &str, families: Option<&str>) -> *const PluginTable {
    static TABLE: OnceLock<&'static PluginTable> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut entries: Vec<&StageEntry> = inventory::iter::<StageEntry>.into_iter().collect();
        entries.sort_by_key(|e| e.type_name);
        let stages: Vec<StageDescriptor> = entries
            .iter()
            .map(|e| StageDescriptor {
                type_name: leak(e.type_name),
                kind: match e.kind {
                    Kind::Source => abi::KIND_SOURCE,
                    Kind::Transform => abi::KIND_TRANSFORM,
                    Kind::Sink => abi::KIND_SINK,
                },
                description: leak(e.description),
                config_schema: leak(&(e.schema)()),
                partition_by: (e.partition_by)().map_or(std::ptr::null(), leak),
                validate: e.validate,
                create: e.create,
                poll,
                process,
                finish,
                destroy,
            })
            .collect();
        let stages: &'static [StageDescriptor] = Vec::leak(stages);
        Box::leak(Box::new(PluginTable {
            abi_version: abi::ABI_VERSION,
            sdk_version: leak(crate::SDK_VERSION),
            plugin_name: leak(name),
            plugin_version: leak(version),
            stages: stages.as_ptr(),
            stage_count: stages.len(),
            free_string,
            families: families.map_or(std::ptr::null(), leak),
        }))
    });
    *table as *const PluginTable
}

/// # Safety
/// `s` is null or a string this plugin returned as an error (ABI rule: freed by the side that allocated it).
unsafe extern "C" fn free_string(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from `CString::into_raw` in `guarded`, and the host frees each string once.
        drop(unsafe { std::ffi::CString::from_raw(s) });
    }
}

/// Runs `f`, turning an error or a panic into [`abi::ERROR`] with the message in `*error`.
fn guarded(error: *mut *mut c_char, f: impl FnOnce() -> Result<(), Error>) -> i32 {
    let message = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return abi::OK,
        Ok(Err(e)) => e.0,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            format!("panicked: {what}")
        }
    };
    if !error.is_null() {
        // SAFETY: the host passes a valid out-pointer; it frees the string with `free_string`.
        unsafe { *error = c_string(&message).into_raw() };
    }
    abi::ERROR
}

/// # Safety
/// `json` must be null or a NUL-terminated string.
unsafe fn parse<S: Stage>(json: *const c_char) -> Result<S, Error> {
    // SAFETY: the caller guarantees a NUL-terminated string that lives for this call.
    let text = if json.is_null() { "{}".into() } else { unsafe { CStr::from_ptr(json) }.to_string_lossy() };
    let mut de = serde_json::Deserializer::from_str(&text);
    let config: S = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            Error(e.into_inner().to_string())
        } else {
            Error(format!("{path}: {}", e.into_inner()))
        }
    })?;
    config.validate()?;
    Ok(config)
}

/// # Safety
/// `json` is null or NUL-terminated; `error` is null or a valid out-pointer (ABI rules).
unsafe extern "C" fn validate_stage<S: Stage>(json: *const c_char, error: *mut *mut c_char) -> i32 {
    // SAFETY: the host passes a NUL-terminated configuration (ABI rule).
    guarded(error, || unsafe { parse::<S>(json) }.map(|_| ()))
}

/// # Safety
/// As for the other entry points: the host's pointers are valid for the call, `host` for the instance's life.
unsafe extern "C" fn create_stage<S: Stage>(
    json: *const c_char,
    host: *const HostApi,
    instance: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    guarded(error, || {
        if host.is_null() || instance.is_null() {
            return Err(Error("create: null argument".into()));
        }
        // SAFETY: the host passes a NUL-terminated configuration (ABI rule).
        let config = unsafe { parse::<S>(json) }?;
        // SAFETY: the host API outlives the instance (ABI rule).
        let ctx = unsafe { Context::from_host(host) };
        let built = config.build(&ctx)?;
        let kind_ok = matches!(
            (&built, S::KIND),
            (Instance::Source(_), Kind::Source)
                | (Instance::Transform(_), Kind::Transform)
                | (Instance::Sink(_), Kind::Sink)
        );
        if !kind_ok {
            return Err(Error(format!("stage type {} built an instance of another kind than it declares", S::TYPE)));
        }
        let slot = Box::new(Slot { instance: built });
        // SAFETY: `instance` was checked non-null and the host passes a valid out-pointer.
        unsafe { *instance = Box::into_raw(slot).cast() };
        Ok(())
    })
}

/// # Safety
/// `instance` must come from `create` and not be destroyed.
unsafe fn slot<'a>(instance: *mut c_void) -> Result<&'a mut Slot, Error> {
    if instance.is_null() {
        return Err(Error("null instance".into()));
    }
    // SAFETY: the caller guarantees `instance` is a live `Slot` from `create`; the host calls one entry point
    // of an instance at a time, so the reference is unique.
    Ok(unsafe { &mut *(instance.cast::<Slot>()) })
}

/// # Safety
/// `instance` comes from `create`; the other pointers are valid for the call (ABI rules).
unsafe extern "C" fn poll(
    instance: *mut c_void,
    emit: *const EmitApi,
    status: *mut u32,
    error: *mut *mut c_char,
) -> i32 {
    guarded(error, || {
        // SAFETY: `instance` comes from `create` (ABI rule).
        let slot = unsafe { slot(instance) }?;
        let Instance::Source(source) = &mut slot.instance else { return Err(Error("poll: not a source".into())) };
        let mut out = Emitter::new(emit);
        let s = source.poll(&mut out)?;
        if let Some(e) = out.take_failure() {
            return Err(e);
        }
        if !status.is_null() {
            let code = match s {
                SourceStatus::Ready => abi::POLL_READY,
                SourceStatus::Idle => abi::POLL_IDLE,
                SourceStatus::Exhausted => abi::POLL_EXHAUSTED,
            };
            // SAFETY: `status` was checked non-null; the host passes a valid out-pointer.
            unsafe { *status = code };
        }
        Ok(())
    })
}

/// # Safety
/// `instance` comes from `create`; `array` is handed over, `schema` lent, for the call (ABI rules).
unsafe extern "C" fn process(
    instance: *mut c_void,
    array: *mut FFI_ArrowArray,
    schema: *const FFI_ArrowSchema,
    emit: *const EmitApi,
    error: *mut *mut c_char,
) -> i32 {
    guarded(error, || {
        // SAFETY: `instance` comes from `create` (ABI rule).
        let slot = unsafe { slot(instance) }?;
        if array.is_null() || schema.is_null() {
            return Err(Error("process: null batch".into()));
        }
        // SAFETY: the host hands the array over (we release it) and lends the schema for this call.
        let data = unsafe { arrow::ffi::from_ffi(FFI_ArrowArray::from_raw(array), &*schema) }
            .map_err(|e| Error(format!("importing a batch: {e}")))?;
        let batch = RecordBatch::from(StructArray::from(data));
        let mut out = Emitter::new(emit);
        match &mut slot.instance {
            Instance::Transform(t) => t.process(batch, &mut out)?,
            Instance::Sink(s) => s.write(batch)?,
            Instance::Source(_) => return Err(Error("process: a source takes no input".into())),
        }
        match out.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// # Safety
/// `instance` comes from `create`; the other pointers are valid for the call (ABI rules).
unsafe extern "C" fn finish(instance: *mut c_void, emit: *const EmitApi, error: *mut *mut c_char) -> i32 {
    guarded(error, || {
        // SAFETY: `instance` comes from `create` (ABI rule).
        let slot = unsafe { slot(instance) }?;
        let mut out = Emitter::new(emit);
        match &mut slot.instance {
            Instance::Transform(t) => t.finish(&mut out)?,
            Instance::Sink(s) => s.finish()?,
            Instance::Source(s) => s.finish()?,
        }
        match out.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// # Safety
/// `instance` comes from `create` and is destroyed once (ABI rule).
unsafe extern "C" fn destroy(instance: *mut c_void) {
    if !instance.is_null() {
        // A panic in a stage's Drop must not unwind into the host.
        // SAFETY: `instance` is the `Box<Slot>` `create` leaked; the host destroys it once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(instance.cast::<Slot>()) })));
    }
}
