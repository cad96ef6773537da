//! The pipeline YAML loader: raw YAML → validated plan, with every diagnostic a plain value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Plugin entries load shared libraries: that is not the loader's parsing, and a fuzzer must not dlopen
    // whatever it names.
    if text.contains("plugins") {
        return;
    }
    dfp_stages::link();
    if let Err(e) = dfp_core::Pipeline::from_yaml_str(text, "fuzz.yaml", &["input=x".to_string()]) {
        let _ = e.to_string();
    }
});
