//! What the fuzz targets share: a normalizer stage driven with one raw record, as `file-source` would hand
//! it over.

use std::sync::Arc;

use dfp_core::arrow::array::{StringArray, UInt32Array};
use dfp_core::arrow::record_batch::RecordBatch;
use dfp_core::{Batch, ConfigContext, Emitter, Families, Registry, StageContext, StageInstance, Transform};

/// A normalizer stage of `type_name`, built with `config` (families: the built-in ones plus `extra`).
pub fn normalizer(type_name: &str, config: serde_json::Value, extra: Option<&str>) -> Box<dyn Transform> {
    dfp_stages::link();
    let mut registry = Registry::global().clone();
    if let Some(yaml) = extra {
        let families = dfp_core::Family::parse_yaml(yaml).expect("the seed family parses");
        registry.extend_families(families, dfp_core::family::FamilyOrigin::BuiltIn).expect("no clash");
    }
    let families: Families = registry.families().clone();
    let reg = registry.get(type_name).expect("registered");
    let factory = (reg.factory)(config, &ConfigContext { families: &families }).expect("valid config");
    let ctx = StageContext::standalone("fuzz", 0, 1).with_families(Arc::new(families));
    match factory.build(&ctx).expect("built") {
        StageInstance::Transform(t) => t,
        _ => panic!("not a transform"),
    }
}

/// Hands one record (any text) to a normalizer; every outcome but a panic is fine.
pub fn normalize_one(stage: &mut dyn Transform, record: &str) {
    let data = RecordBatch::try_new(
        dfp_stages::sources::file::raw_schema(),
        vec![Arc::new(StringArray::from(vec![record])), Arc::new(UInt32Array::from(vec![1u32]))],
    )
    .expect("raw batch");
    let mut out = Emitter::new();
    let _ = stage.process(Batch::new(data, "fuzz"), &mut out);
}
