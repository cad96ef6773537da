//! The JSON Schema of the pipeline format, built from the registered stages' configuration schemas
//! (what `dfp schema` prints; editors use it for completion and checking).

use serde_json::{json, Map, Value};

use super::RuntimeConfig;
use crate::registry::{schema_of, Registry};

/// The schema of a whole pipeline file for the stage types in `registry`.
pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut variants = Vec::new();
    for reg in registry.iter() {
        let mut stage = (reg.schema)();
        let obj = stage.as_object_mut().expect("a stage schema is an object");
        obj.remove("$schema");
        obj.insert("type".into(), json!("object"));
        let props = obj.entry("properties").or_insert_with(|| Value::Object(Map::new()));
        if let Some(props) = props.as_object_mut() {
            props.insert("type".into(), json!({ "const": reg.type_name, "description": reg.description }));
            props.insert(
                "enabled".into(),
                json!({ "type": ["boolean", "string"], "default": true,
                        "description": "false leaves the stage out (write `enabled: ${var}` to make it optional)" }),
            );
            if reg.kind != crate::stage::StageKind::Source {
                props.insert(
                    "inputs".into(),
                    json!({ "type": "array", "items": { "type": "string" }, "minItems": 1,
                            "description": "ids of the stages this one reads (or `dead-letters`)" }),
                );
            }
        }
        let required = obj.entry("required").or_insert_with(|| json!([]));
        if let Some(req) = required.as_array_mut() {
            // The pipeline's `family:` fills a stage's `family` when the stage names none.
            req.retain(|r| r != "family");
            req.push(json!("type"));
            if reg.kind != crate::stage::StageKind::Source {
                req.push(json!("inputs"));
            }
        }
        obj.insert("additionalProperties".into(), json!(false));
        obj.insert("title".into(), json!(reg.type_name));
        variants.push(stage);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "dfp pipeline",
        "type": "object",
        "additionalProperties": false,
        "required": ["stages"],
        "properties": {
            "version": { "const": 1 },
            "vars": {
                "type": "object",
                "description": "variables and their defaults; referenced as ${name}, overridden with --var name=value",
                "additionalProperties": { "type": ["string", "number", "boolean", "null"] }
            },
            "plugins": { "type": "array", "items": { "type": "string" }, "description": "plugin libraries (.so) whose stage types the pipeline uses: a path, or a file name looked up in $DFP_PLUGIN_PATH and next to dfp" },
            "runtime": schema_of::<RuntimeConfig>(),
            "family": {
                "type": "string",
                "description": "the log family of the pipeline (azure, duo, or one declared under `families:` or by a plugin): the `family` of every stage that reads one"
            },
            "families": {
                "description": "log families the pipeline declares: a mapping of name to declaration, or the name of a YAML file holding them (relative to the pipeline file)",
                "oneOf": [
                    { "type": "string" },
                    { "type": "object", "additionalProperties": schema_of::<crate::family::Family>() }
                ]
            },
            "stages": {
                "type": "object",
                "description": "the stages by id",
                "additionalProperties": { "oneOf": variants }
            }
        }
    })
}
