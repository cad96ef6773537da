//! # dfp-plugin-sdk: stages in your own `.so`
//!
//! Write a stage in your own crate, build it as a `cdylib`, name the library in a pipeline's `plugins:`
//! list, and use its stages like built-ins — without rebuilding dfp and with any Rust compiler: only the C
//! ABI of [`abi`] crosses the boundary, and record batches cross as Arrow C Data Interface arrays (no
//! copies). See docs/plugins.md for the walk-through.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use dfp_plugin_sdk::arrow::array::StringArray;
//! use dfp_plugin_sdk::prelude::*;
//!
//! /// Upper-cases one text column.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Upper {
//!     /// The column.
//!     column: String,
//! }
//!
//! impl Stage for Upper {
//!     const TYPE: &'static str = "upper";
//!     const KIND: Kind = Kind::Transform;
//!     const DESCRIPTION: &'static str = "upper-cases a text column";
//!     fn build(&self, _ctx: &Context) -> Result<Instance, Error> {
//!         Ok(Instance::transform(UpperStage(self.column.clone())))
//!     }
//! }
//! stage!(Upper);
//! export_plugin!(name: "upper", version: "0.1.0");
//!
//! struct UpperStage(String);
//!
//! impl Transform for UpperStage {
//!     fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), Error> {
//!         let at = batch.schema().index_of(&self.0)?;
//!         let text = batch.column(at).as_string_opt::<i32>().ok_or("not a text column")?;
//!         let upper: StringArray = text.iter().map(|v| v.map(str::to_uppercase)).collect();
//!         let mut columns = batch.columns().to_vec();
//!         columns[at] = Arc::new(upper);
//!         out.emit(RecordBatch::try_new(batch.schema(), columns)?);
//!         Ok(())
//!     }
//! }
//! ```
//!
//! Every function the library exports catches panics and reports them as errors of the stage; errors and
//! configuration cross as UTF-8 text; the host's services (logging, counters) come in through [`Context`].
#![deny(missing_docs)]

pub mod abi;
#[doc(hidden)]
pub mod export;

use std::ffi::CString;

pub use arrow;
pub use arrow::record_batch::RecordBatch;
pub use inventory;
pub use schemars;
pub use serde;
pub use serde_json;

pub use abi::ABI_VERSION;

/// Version of this SDK (reported to the host and by `dfp plugin inspect`).
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything a stage author needs.
pub mod prelude {
    pub use crate::arrow;
    pub use crate::arrow::array::{Array, ArrayRef, AsArray};
    pub use crate::arrow::datatypes::{DataType, Field, Schema};
    pub use crate::schemars::JsonSchema;
    pub use crate::serde::Deserialize;
    pub use crate::{
        export_plugin, stage, Context, Emitter, Error, Instance, Kind, Level, RecordBatch, Sink, Source, SourceStatus,
        Stage, Transform,
    };
}

/// A stage's failure, shown to the user with the stage id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_string())
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(e.to_string())
    }
}

/// Source, transform or sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Produces batches.
    Source,
    /// Batches in, batches out.
    Transform,
    /// Consumes batches.
    Sink,
}

/// What a source's poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// More may be available right away.
    Ready,
    /// Nothing now; poll again later.
    Idle,
    /// Done for good.
    Exhausted,
}

/// Log levels for [`Context::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// An error.
    Error,
    /// A warning.
    Warn,
    /// Information.
    Info,
    /// Detail for debugging.
    Debug,
}

/// A source stage instance (one per worker).
pub trait Source: Send {
    /// Emits the next batches; says whether more will come.
    fn poll(&mut self, out: &mut Emitter) -> Result<SourceStatus, Error>;
    /// Called once at the end.
    fn finish(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// A transform stage instance (one per worker).
pub trait Transform: Send {
    /// Handles one input batch, emitting any number of output batches.
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), Error>;
    /// End of input: emit what is still held.
    fn finish(&mut self, _out: &mut Emitter) -> Result<(), Error> {
        Ok(())
    }
}

/// A sink stage instance (one per worker).
pub trait Sink: Send {
    /// Consumes one batch.
    fn write(&mut self, batch: RecordBatch) -> Result<(), Error>;
    /// End of input: flush.
    fn finish(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// A built stage instance.
pub enum Instance {
    /// A source.
    Source(Box<dyn Source>),
    /// A transform.
    Transform(Box<dyn Transform>),
    /// A sink.
    Sink(Box<dyn Sink>),
}

impl Instance {
    /// Wraps a source.
    pub fn source(s: impl Source + 'static) -> Self {
        Instance::Source(Box::new(s))
    }
    /// Wraps a transform.
    pub fn transform(t: impl Transform + 'static) -> Self {
        Instance::Transform(Box::new(t))
    }
    /// Wraps a sink.
    pub fn sink(s: impl Sink + 'static) -> Self {
        Instance::Sink(Box::new(s))
    }
}

/// A stage type: its configuration (deserialized from the stage's YAML fields, minus `type` and `inputs`)
/// and how to build an instance. Register it with [`stage!`].
///
/// Put `#[serde(deny_unknown_fields)]` on the struct and a doc comment on every field: they become the
/// schema that `dfp schema`, `dfp stages` and `dfp plugin inspect` show.
pub trait Stage: serde::de::DeserializeOwned + schemars::JsonSchema + 'static {
    /// The YAML `type` name (must not clash with a built-in stage or another plugin's).
    const TYPE: &'static str;
    /// Source, transform or sink.
    const KIND: Kind;
    /// One line for `dfp stages`.
    const DESCRIPTION: &'static str;
    /// The column whose values must all reach the same worker (per-key state), or `None` for any.
    fn partition_by() -> Option<&'static str> {
        None
    }
    /// Checks beyond types (ranges, exclusive fields); runs at validation time.
    fn validate(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Builds the instance of one worker.
    fn build(&self, ctx: &Context) -> Result<Instance, Error>;
}

/// The host's services for one stage instance (cheap to clone: keep one in your instance to log later).
#[derive(Clone)]
pub struct Context {
    host: *const abi::HostApi,
    stage_id: String,
    worker_index: usize,
    workers: usize,
}

// SAFETY: the host API is valid for the instance's life (ABI rule) and its callbacks are thread-safe on the
// host side, so the context may move to and be shared with other threads.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Context {
    /// # Safety
    /// `host` must point to a valid [`abi::HostApi`] that outlives the context.
    pub(crate) unsafe fn from_host(host: *const abi::HostApi) -> Self {
        // SAFETY: the caller guarantees `host` is valid.
        let h = unsafe { &*host };
        let stage_id = if h.stage_id.is_null() {
            String::new()
        } else {
            // SAFETY: the host's stage id is a NUL-terminated string that lives with the API (ABI rule).
            unsafe { std::ffi::CStr::from_ptr(h.stage_id) }.to_string_lossy().into_owned()
        };
        Context { host, stage_id, worker_index: h.worker_index as usize, workers: h.workers as usize }
    }

    /// The stage id from the YAML.
    pub fn stage_id(&self) -> &str {
        &self.stage_id
    }

    /// This worker's index (0-based).
    pub fn worker_index(&self) -> usize {
        self.worker_index
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Logs through the host (tagged with the stage id).
    pub fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Error => abi::LOG_ERROR,
            Level::Warn => abi::LOG_WARN,
            Level::Info => abi::LOG_INFO,
            Level::Debug => abi::LOG_DEBUG,
        };
        // SAFETY: the host API outlives the context (see `from_host`).
        unsafe { ((*self.host).log)((*self.host).ctx, level, message.as_ptr(), message.len()) }
    }

    /// Adds `value` to this stage's counter `name` (shown by the host).
    pub fn counter_add(&self, name: &str, value: u64) {
        // SAFETY: as for `log`.
        unsafe { ((*self.host).counter_add)((*self.host).ctx, name.as_ptr(), name.len(), value) }
    }
}

/// Where a stage's output goes during one call.
pub struct Emitter {
    api: *const abi::EmitApi,
    failed: Option<Error>,
}

impl Emitter {
    pub(crate) fn new(api: *const abi::EmitApi) -> Self {
        Emitter { api, failed: None }
    }

    /// Emits a batch (handed to the host without copying its buffers).
    pub fn emit(&mut self, batch: RecordBatch) {
        if self.failed.is_some() {
            return;
        }
        let data = arrow::array::Array::into_data(arrow::array::StructArray::from(batch));
        let (mut array, schema) = match arrow::ffi::to_ffi(&data) {
            Ok(pair) => pair,
            Err(e) => {
                self.failed = Some(Error(format!("exporting a batch: {e}")));
                return;
            }
        };
        // SAFETY: `api` is valid during the call that created this emitter; the host takes `array` over.
        let rc = unsafe { ((*self.api).batch)((*self.api).ctx, &mut array, &schema) };
        if rc != abi::OK {
            self.failed = Some(Error("the host refused an emitted batch".into()));
        }
    }

    /// Sends one input record to the dead letters with the reason it could not be used.
    pub fn dead_letter(&mut self, reason: &str, record: &str) {
        // SAFETY: as for `emit`.
        unsafe {
            ((*self.api).dead_letter)((*self.api).ctx, reason.as_ptr(), reason.len(), record.as_ptr(), record.len())
        }
    }

    pub(crate) fn take_failure(&mut self) -> Option<Error> {
        self.failed.take()
    }
}

/// Registers a [`Stage`] type with the plugin's table.
#[macro_export]
macro_rules! stage {
    ($stage:ty) => {
        $crate::inventory::submit! { $crate::export::StageEntry::of::<$stage>() }
    };
}

/// Exports the plugin's entry point (once per library): `export_plugin!(name: "okta", version: "0.1.0");`
///
/// A plugin that adds a log source also exports its log family, in the format of a pipeline's
/// `families:` block (docs/add-a-log-source.md):
/// `export_plugin!(name: "okta", version: "0.1.0", families: include_str!("family.yaml"));`
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, version: $version:expr $(,)?) => {
        /// The dfp plugin entry point: the table of this library's stages.
        #[no_mangle]
        pub extern "C" fn dfp_plugin_entry() -> *const $crate::abi::PluginTable {
            $crate::export::table($name, $version, None)
        }
    };
    (name: $name:expr, version: $version:expr, families: $families:expr $(,)?) => {
        /// The dfp plugin entry point: the table of this library's stages and log families.
        #[no_mangle]
        pub extern "C" fn dfp_plugin_entry() -> *const $crate::abi::PluginTable {
            $crate::export::table($name, $version, Some($families))
        }
    };
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// Helpers to unit-test stages without dfp: they drive an instance through the same C boundary the host
/// uses (batches are exported and imported through the Arrow C Data Interface).
pub mod testing {
    use std::ffi::{c_void, CString};

    use crate::abi::{self, EmitApi, FFI_ArrowArray, FFI_ArrowSchema, HostApi};
    use crate::{Context, Emitter, Error, RecordBatch, Sink, Source, SourceStatus, Transform};

    /// What a call emitted.
    #[derive(Debug, Default)]
    pub struct Collected {
        /// Emitted batches, in order.
        pub batches: Vec<RecordBatch>,
        /// Dead letters: (reason, record).
        pub dead_letters: Vec<(String, String)>,
    }

    impl Collected {
        /// Rows over all emitted batches.
        pub fn rows(&self) -> usize {
            self.batches.iter().map(RecordBatch::num_rows).sum()
        }
    }

    /// # Safety
    /// `message` points to `len` bytes (ABI rule).
    unsafe extern "C" fn log(_: *mut c_void, level: u32, message: *const u8, len: usize) {
        // SAFETY: the caller passes `len` readable bytes.
        let text = String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(message, len) }).into_owned();
        eprintln!("[plugin log {level}] {text}");
    }

    unsafe extern "C" fn counter(_: *mut c_void, _: *const u8, _: usize, _: u64) {}

    /// A context like the one dfp gives worker `worker_index` of `workers` (logs go to stderr).
    pub fn context(stage_id: &str, worker_index: usize, workers: usize) -> Context {
        let id = CString::new(stage_id.replace('\0', " ")).unwrap_or_default();
        // Leaked on purpose: a test context lives until the test process ends.
        let api = Box::leak(Box::new(HostApi {
            ctx: std::ptr::null_mut(),
            stage_id: id.into_raw(),
            worker_index: worker_index as u32,
            workers: workers as u32,
            log,
            counter_add: counter,
        }));
        // SAFETY: the API is leaked, so it outlives the context.
        unsafe { Context::from_host(api) }
    }

    /// # Safety
    /// `ctx` is the `Collected` of `collect`; `array` is handed over and `schema` lent for the call.
    unsafe extern "C" fn take_batch(
        ctx: *mut c_void,
        array: *mut FFI_ArrowArray,
        schema: *const FFI_ArrowSchema,
    ) -> i32 {
        // SAFETY: `collect` passes its own `Collected`, alive and not otherwise borrowed during the call.
        let out = unsafe { &mut *(ctx as *mut Collected) };
        // SAFETY: the caller hands the array over and lends the schema (ABI rule).
        let imported = unsafe { arrow::ffi::from_ffi(FFI_ArrowArray::from_raw(array), &*schema) };
        match imported {
            Ok(data) => {
                out.batches.push(RecordBatch::from(arrow::array::StructArray::from(data)));
                abi::OK
            }
            Err(_) => abi::ERROR,
        }
    }

    /// # Safety
    /// `ctx` is the `Collected` of `collect`; the texts point to their lengths in bytes.
    unsafe extern "C" fn take_dead(ctx: *mut c_void, r: *const u8, rl: usize, rec: *const u8, recl: usize) {
        // SAFETY: `collect` passes its own `Collected`, alive and not otherwise borrowed during the call.
        let out = unsafe { &mut *(ctx as *mut Collected) };
        // SAFETY: the caller passes each text with its length.
        let text =
            |p: *const u8, l: usize| String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(p, l) }).into_owned();
        out.dead_letters.push((text(r, rl), text(rec, recl)));
    }

    fn collect(f: impl FnOnce(&mut Emitter) -> Result<(), Error>) -> Result<Collected, Error> {
        let mut out = Collected::default();
        let api = EmitApi { ctx: (&mut out as *mut Collected).cast(), batch: take_batch, dead_letter: take_dead };
        let mut emitter = Emitter::new(&api);
        f(&mut emitter)?;
        if let Some(e) = emitter.take_failure() {
            return Err(e);
        }
        Ok(out)
    }

    /// Runs one batch through a transform.
    pub fn process(t: &mut dyn Transform, batch: RecordBatch) -> Result<Collected, Error> {
        collect(|out| t.process(batch, out))
    }

    /// Ends a transform's input.
    pub fn finish(t: &mut dyn Transform) -> Result<Collected, Error> {
        collect(|out| t.finish(out))
    }

    /// Polls a source once.
    pub fn poll(s: &mut dyn Source) -> Result<(SourceStatus, Collected), Error> {
        let mut status = SourceStatus::Exhausted;
        let c = collect(|out| {
            status = s.poll(out)?;
            Ok(())
        })?;
        Ok((status, c))
    }

    /// Writes one batch to a sink.
    pub fn write(s: &mut dyn Sink, batch: RecordBatch) -> Result<(), Error> {
        s.write(batch)
    }
}
