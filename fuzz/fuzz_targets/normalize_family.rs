//! The family-driven `normalize` on any record, with the Google Workspace family of
//! docs/add-a-log-source.md (paths, joins, booleans from value lists, times as text or numbers).
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;

const FAMILY: &str = include_str!("../../examples/gws/gws-family.yaml");

thread_local! {
    static STAGE: RefCell<Box<dyn dfp_core::Transform>> =
        RefCell::new(dfp_fuzz::normalizer("normalize", serde_json::json!({"family": "gws"}), Some(FAMILY)));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = std::str::from_utf8(data) {
        STAGE.with(|s| dfp_fuzz::normalize_one(s.borrow_mut().as_mut(), record));
    }
});
