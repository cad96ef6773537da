//! The plugin configuration path: configuration JSON crossing the C ABI into a plugin's `validate` and
//! `create` (parsing, error strings handed back and freed, panics caught).
#![no_main]

use std::ffi::{c_char, CString};

use dfp_plugin_sdk::prelude::*;
use libfuzzer_sys::fuzz_target;

/// A stage with a configuration of several shapes.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Probe {
    /// A required text.
    column: String,
    /// A bounded number.
    #[serde(default)]
    limit: Option<u32>,
    /// A list.
    #[serde(default)]
    values: Vec<String>,
    /// A nested object.
    #[serde(default)]
    nested: Option<std::collections::BTreeMap<String, f64>>,
}

impl Stage for Probe {
    const TYPE: &'static str = "fuzz-probe";
    const KIND: Kind = Kind::Transform;
    const DESCRIPTION: &'static str = "fuzzing the configuration path";
    fn build(&self, _ctx: &Context) -> Result<Instance, Error> {
        if self.limit == Some(0) {
            return Err(Error("limit must be positive".into()));
        }
        Ok(Instance::transform(Pass))
    }
}

struct Pass;

impl Transform for Pass {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), Error> {
        out.emit(batch);
        Ok(())
    }
}

stage!(Probe);
export_plugin!(name: "fuzz", version: "0.0.0");

fuzz_target!(|data: &[u8]| {
    let Ok(json) = CString::new(data) else { return };
    let table = dfp_plugin_entry();
    // SAFETY: the table is the static one `export_plugin!` builds; it has one stage.
    let stage = unsafe { &*(*table).stages };
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `json` is NUL-terminated and lives for the call; `error` is a valid out-pointer.
    let rc = unsafe { (stage.validate)(json.as_ptr(), &mut error) };
    if !error.is_null() {
        // SAFETY: the plugin allocated the message; it is handed back to the plugin to free.
        unsafe { ((*table).free_string)(error) };
    }
    assert!(rc == dfp_plugin_sdk::abi::OK || rc == dfp_plugin_sdk::abi::ERROR);
});
