//! The C ABI between dfp (the host) and a plugin library. Both sides compile this module; nothing else of
//! Rust crosses the boundary, so a plugin may be built with another compiler version than dfp.
//!
//! Rules of ABI version 2 (version 1 had no `families`):
//! - The library exports one symbol, [`ENTRY_SYMBOL`]: `extern "C" fn() -> *const PluginTable`. The table
//!   and everything it points to stay valid for the life of the process (the host never unloads).
//! - [`PluginTable::abi_version`] is the first field of the table in every ABI version: the host reads it
//!   first and refuses a library whose version differs from its own.
//! - Text crosses as NUL-terminated UTF-8 (`*const c_char`) or as pointer + length. Error strings a plugin
//!   returns are allocated by the plugin and handed back to [`PluginTable::free_string`].
//! - Record batches cross as Arrow C Data Interface structs: a batch is a struct array whose children are the
//!   columns. The receiver of an `FFI_ArrowArray` takes it over (moves it out and leaves a released struct
//!   behind) and calls its `release` callback when done, so memory is freed by the side that allocated it.
//!   `FFI_ArrowSchema` arguments are borrowed for the duration of the call.
//! - Every function returns [`OK`] or [`ERROR`]; on [`ERROR`] it has stored an error string in `*error`.
//!   Plugin functions catch panics and report them as errors; host callbacks do the same.
//! - Host services (logging, counters, emitting rows, dead letters) are passed in as function pointers
//!   with an opaque context, never through shared globals.
//! - Log families the plugin exports cross as one static NUL-terminated YAML or JSON text
//!   ([`PluginTable::families`]) in the format of a pipeline's `families:` block; null when it exports none.

use std::ffi::{c_char, c_void};

pub use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};

/// The ABI version this crate speaks.
pub const ABI_VERSION: u32 = 2;

/// The symbol every plugin library exports (NUL-terminated, for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"dfp_plugin_entry\0";

/// The signature of [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const PluginTable;

/// Success.
pub const OK: i32 = 0;
/// Failure: an error string was stored.
pub const ERROR: i32 = 1;

/// A source stage.
pub const KIND_SOURCE: u32 = 0;
/// A transform stage.
pub const KIND_TRANSFORM: u32 = 1;
/// A sink stage.
pub const KIND_SINK: u32 = 2;

/// A source has more to give now.
pub const POLL_READY: u32 = 0;
/// A source has nothing right now; poll again later.
pub const POLL_IDLE: u32 = 1;
/// A source is done.
pub const POLL_EXHAUSTED: u32 = 2;

/// Log levels of [`HostApi::log`].
pub const LOG_ERROR: u32 = 1;
/// Warning.
pub const LOG_WARN: u32 = 2;
/// Information.
pub const LOG_INFO: u32 = 3;
/// Debugging detail.
pub const LOG_DEBUG: u32 = 4;

/// What a plugin library offers.
#[repr(C)]
pub struct PluginTable {
    /// [`ABI_VERSION`] of the SDK the plugin was built with. Always the first field.
    pub abi_version: u32,
    /// Version of `dfp-plugin-sdk` the plugin was built with.
    pub sdk_version: *const c_char,
    /// The plugin's name.
    pub plugin_name: *const c_char,
    /// The plugin's version.
    pub plugin_version: *const c_char,
    /// The stage types, `stage_count` of them.
    pub stages: *const StageDescriptor,
    /// Number of stage types.
    pub stage_count: usize,
    /// Frees an error string the plugin returned.
    pub free_string: unsafe extern "C" fn(*mut c_char),
    /// The log families the plugin exports: `name: { … }` declarations as YAML or JSON text, or null.
    pub families: *const c_char,
}

/// One stage type of a plugin.
#[repr(C)]
pub struct StageDescriptor {
    /// The YAML `type` name.
    pub type_name: *const c_char,
    /// [`KIND_SOURCE`], [`KIND_TRANSFORM`] or [`KIND_SINK`].
    pub kind: u32,
    /// One line for `dfp stages`.
    pub description: *const c_char,
    /// JSON Schema of the configuration.
    pub config_schema: *const c_char,
    /// Null: any partitioning; else the column whose values must all reach the same worker.
    pub partition_by: *const c_char,
    /// Parses and checks a configuration (JSON) without building anything.
    pub validate: unsafe extern "C" fn(config_json: *const c_char, error: *mut *mut c_char) -> i32,
    /// Builds one instance for one worker.
    pub create: unsafe extern "C" fn(
        config_json: *const c_char,
        host: *const HostApi,
        instance: *mut *mut c_void,
        error: *mut *mut c_char,
    ) -> i32,
    /// Sources: produce batches through `emit`; stores a `POLL_*` status.
    pub poll: unsafe extern "C" fn(
        instance: *mut c_void,
        emit: *const EmitApi,
        status: *mut u32,
        error: *mut *mut c_char,
    ) -> i32,
    /// Transforms and sinks: one input batch (taken over by the plugin).
    pub process: unsafe extern "C" fn(
        instance: *mut c_void,
        array: *mut FFI_ArrowArray,
        schema: *const FFI_ArrowSchema,
        emit: *const EmitApi,
        error: *mut *mut c_char,
    ) -> i32,
    /// End of input: flush what is held.
    pub finish: unsafe extern "C" fn(instance: *mut c_void, emit: *const EmitApi, error: *mut *mut c_char) -> i32,
    /// Frees an instance.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
}

/// Services the host offers a stage instance; valid for the life of the instance.
#[repr(C)]
pub struct HostApi {
    /// The host's context for the callbacks.
    pub ctx: *mut c_void,
    /// The stage id from the YAML (NUL-terminated).
    pub stage_id: *const c_char,
    /// This worker's index.
    pub worker_index: u32,
    /// Number of workers.
    pub workers: u32,
    /// Logs a message (UTF-8, `len` bytes) at a `LOG_*` level, tagged with the stage id.
    pub log: unsafe extern "C" fn(ctx: *mut c_void, level: u32, message: *const u8, len: usize),
    /// Adds to a counter of this stage (name: UTF-8, `len` bytes).
    pub counter_add: unsafe extern "C" fn(ctx: *mut c_void, name: *const u8, len: usize, value: u64),
}

/// Where a call's output goes; valid during that call only.
#[repr(C)]
pub struct EmitApi {
    /// The host's context for the callbacks.
    pub ctx: *mut c_void,
    /// Emits one batch (a struct array, taken over by the host). Returns [`OK`] or [`ERROR`].
    pub batch:
        unsafe extern "C" fn(ctx: *mut c_void, array: *mut FFI_ArrowArray, schema: *const FFI_ArrowSchema) -> i32,
    /// Sends one record to the dead letters with a reason (both UTF-8).
    pub dead_letter: unsafe extern "C" fn(
        ctx: *mut c_void,
        reason: *const u8,
        reason_len: usize,
        record: *const u8,
        record_len: usize,
    ),
}

// SAFETY: the table is immutable and lives for the process (ABI rule 1): its raw pointers point at static,
// never-written data, so sharing it between threads is sound.
unsafe impl Sync for PluginTable {}
// SAFETY: as above; moving the (immutable) table's address between threads is sound.
unsafe impl Send for PluginTable {}
// SAFETY: a descriptor is part of the immutable, process-long table (see `PluginTable`).
unsafe impl Sync for StageDescriptor {}
// SAFETY: as above.
unsafe impl Send for StageDescriptor {}
