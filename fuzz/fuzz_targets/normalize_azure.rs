//! `normalize-azure` on any record: Azure Monitor exports and Microsoft Graph sign-ins.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;

thread_local! {
    static STAGE: RefCell<Box<dyn dfp_core::Transform>> =
        RefCell::new(dfp_fuzz::normalizer("normalize-azure", serde_json::json!({}), None));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = std::str::from_utf8(data) {
        STAGE.with(|s| dfp_fuzz::normalize_one(s.borrow_mut().as_mut(), record));
    }
});
