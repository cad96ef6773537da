//! The time parser every normalizer and `file-source` window uses: ISO 8601 and US-style times.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(t) = dfp_stages::time::parse_timestamp(text) {
            // Whatever parses formats back and parses to the same instant.
            let again = dfp_stages::time::format_micros(t);
            assert_eq!(dfp_stages::time::parse_timestamp(&again), Some(t), "{text:?} → {t} → {again:?}");
        }
        let _ = dfp_stages::time::parse_file_name_time(text);
    }
});
