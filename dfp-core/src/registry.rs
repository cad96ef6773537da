//! The registry of stage types.
//!
//! Every stage type registers a [`StageRegistration`] through `inventory` — its YAML `type` name, kind,
//! one-line description, configuration schema and constructor — so that linking a crate is enough to make
//! its stages available. Built-in stages do it with [`register_stage!`](crate::register_stage):
//!
//! ```
//! use dfp_core::{register_stage, Batch, Emitter, StageConfig, StageContext, StageError, StageInstance,
//!                StageKind, Transform};
//! use dfp_core::schemars::JsonSchema;
//! use serde::Deserialize;
//!
//! /// Passes batches through unchanged.
//! #[derive(Debug, Clone, Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct PassConfig {}
//!
//! struct Pass;
//! impl Transform for Pass {
//!     fn process(&mut self, batch: Batch, out: &mut Emitter) -> Result<(), StageError> {
//!         out.emit(batch);
//!         Ok(())
//!     }
//! }
//!
//! impl StageConfig for PassConfig {
//!     const TYPE: &'static str = "doc-pass";
//!     const KIND: StageKind = StageKind::Transform;
//!     const DESCRIPTION: &'static str = "passes batches through";
//!     fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
//!         Ok(StageInstance::Transform(Box::new(Pass)))
//!     }
//! }
//! register_stage!(PassConfig);
//!
//! let registry = dfp_core::Registry::global();
//! assert!(registry.get("doc-pass").is_some());
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::error::{ConfigError, StageError};
use crate::family::{Families, Family, FamilyOrigin};
use crate::stage::{StageContext, StageInstance, StageKind};

/// Re-exported from [`crate::suggest`], where it lives, for existing callers.
pub use crate::suggest::closest;

/// A validated stage configuration that can build one instance per worker.
pub trait StageFactory: Send + Sync {
    /// Builds the instance for the worker described by `ctx`.
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError>;
}

/// A stage type's configuration: parsed from the YAML fields of a stage (everything but `type` and
/// `inputs`), checked, then used to build instances.
///
/// Put `#[serde(deny_unknown_fields)]` on the struct and a doc comment on every field: the comments become
/// the schema's descriptions that `dfp schema` and `dfp stages` show.
pub trait StageConfig: DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// The YAML `type` name.
    const TYPE: &'static str;
    /// Source, transform or sink.
    const KIND: StageKind;
    /// One line for `dfp stages`.
    const DESCRIPTION: &'static str;
    /// Fields this type no longer accepts, with what to write instead: `("preset", "name the log family …")`.
    /// Validation reports them by name and line instead of a plain "unknown field".
    const RENAMED: &'static [(&'static str, &'static str)] = &[];
    /// Named outputs besides the main one, read in YAML as `inputs: [stage.port]` (a
    /// [`DataflowTransform`](crate::DataflowTransform) builds them).
    const OUTPUTS: &'static [&'static str] = &[];
    /// Checks that go beyond types (mutually exclusive fields, ranges). Runs at validation time.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Checks that need the rest of the pipeline (for example the log family the stage reads). Runs at
    /// validation time, after [`validate`](StageConfig::validate).
    fn check(&self, _ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Builds the instance for one worker.
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError>;
}

impl<C: StageConfig> StageFactory for C {
    fn build(&self, ctx: &StageContext) -> Result<StageInstance, StageError> {
        StageConfig::build(self, ctx)
    }
}

/// Parses a configuration value, reporting the failing field's path.
pub fn parse_config<C: DeserializeOwned>(value: serde_json::Value) -> Result<C, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        ConfigError { field: (path != ".").then_some(path), message: inner }
    })
}

/// The JSON Schema of a configuration type, with sub-schemas inlined so it stands alone.
pub fn schema_of<C: JsonSchema>() -> serde_json::Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true);
    let schema = settings.into_generator().into_root_schema_for::<C>();
    schema.to_value()
}

/// What a stage configuration may look at while it is checked.
#[derive(Clone, Copy)]
pub struct ConfigContext<'a> {
    /// The log families the pipeline may use.
    pub families: &'a Families,
}

impl ConfigContext<'_> {
    /// The family named `name`, or an error listing the known ones.
    pub fn family(&self, name: &str) -> Result<&Arc<Family>, ConfigError> {
        self.families.require(name).map_err(|m| ConfigError::field("family", m))
    }
}

fn factory_of<C: StageConfig>(
    value: serde_json::Value,
    ctx: &ConfigContext<'_>,
) -> Result<Arc<dyn StageFactory>, ConfigError> {
    let config: C = parse_config(value)?;
    config.validate()?;
    config.check(ctx)?;
    Ok(Arc::new(config))
}

/// Parses and validates a configuration into a factory: the constructor a [`StageRegistration`] carries.
pub type RegisteredFactoryFn = fn(serde_json::Value, &ConfigContext<'_>) -> Result<Arc<dyn StageFactory>, ConfigError>;

/// One stage type, as registered with `inventory`.
#[derive(Clone, Copy)]
pub struct StageRegistration {
    /// The YAML `type` name.
    pub type_name: &'static str,
    /// Source, transform or sink.
    pub kind: StageKind,
    /// One line for `dfp stages`.
    pub description: &'static str,
    /// The JSON Schema of the configuration.
    pub schema: fn() -> serde_json::Value,
    /// Parses and validates a configuration into a factory.
    pub factory: RegisteredFactoryFn,
    /// Fields no longer accepted, with what to write instead.
    pub renamed: &'static [(&'static str, &'static str)],
    /// Named outputs besides the main one.
    pub outputs: &'static [&'static str],
}

impl StageRegistration {
    /// The registration of a [`StageConfig`] type.
    pub const fn of<C: StageConfig>() -> Self {
        StageRegistration {
            type_name: C::TYPE,
            kind: C::KIND,
            description: C::DESCRIPTION,
            schema: schema_of::<C>,
            factory: factory_of::<C>,
            renamed: C::RENAMED,
            outputs: C::OUTPUTS,
        }
    }
}

inventory::collect!(StageRegistration);

/// Registers a [`StageConfig`] type with the global registry.
#[macro_export]
macro_rules! register_stage {
    ($config:ty) => {
        $crate::inventory::submit! { $crate::registry::StageRegistration::of::<$config>() }
    };
}

/// Parses and validates a stage configuration into a factory.
pub type FactoryFn =
    dyn Fn(serde_json::Value, &ConfigContext<'_>) -> Result<Arc<dyn StageFactory>, ConfigError> + Send + Sync;

/// A stage type a pipeline may use: a built-in (from [`StageRegistration`]) or one from a plugin.
#[derive(Clone)]
pub struct StageType {
    /// The YAML `type` name.
    pub type_name: &'static str,
    /// Source, transform or sink.
    pub kind: StageKind,
    /// One line for `dfp stages`.
    pub description: &'static str,
    /// The JSON Schema of the configuration.
    pub schema: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Parses and validates a configuration into a factory.
    pub factory: Arc<FactoryFn>,
    /// The plugin library it comes from; `None` for built-ins.
    pub plugin: Option<std::path::PathBuf>,
    /// Fields no longer accepted, with what to write instead.
    pub renamed: &'static [(&'static str, &'static str)],
    /// Named outputs besides the main one (`inputs: [stage.port]`).
    pub outputs: &'static [&'static str],
}

impl From<&StageRegistration> for StageType {
    fn from(r: &StageRegistration) -> Self {
        let schema = r.schema;
        let factory = r.factory;
        StageType {
            type_name: r.type_name,
            kind: r.kind,
            description: r.description,
            schema: Arc::new(schema),
            factory: Arc::new(factory),
            plugin: None,
            renamed: r.renamed,
            outputs: r.outputs,
        }
    }
}

impl StageType {
    /// Where the stage type comes from: `built-in` or the plugin's path.
    pub fn origin(&self) -> String {
        match &self.plugin {
            None => "built-in".to_string(),
            Some(p) => format!("plugin {}", p.display()),
        }
    }
}

/// The stage types and log families a pipeline may use.
#[derive(Clone)]
pub struct Registry {
    stages: BTreeMap<&'static str, StageType>,
    families: Families,
}

impl Registry {
    /// Every stage type linked into this program.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let mut stages = BTreeMap::new();
            for reg in inventory::iter::<StageRegistration> {
                if let Some(prev) = stages.insert(reg.type_name, StageType::from(reg)) {
                    tracing::warn!(type_name = prev.type_name, "stage type registered twice; the last one wins");
                }
            }
            Registry { stages, families: crate::family::built_in() }
        })
    }

    /// The log families: built in, and those of the plugins added.
    pub fn families(&self) -> &Families {
        &self.families
    }

    /// Adds log families (from a plugin). A name already taken is an error naming both origins; nothing is
    /// added then.
    pub fn extend_families(&mut self, families: Vec<Family>, origin: FamilyOrigin) -> Result<(), String> {
        let mut next = self.families.clone();
        for f in families {
            next.add(f, origin.clone())?;
        }
        self.families = next;
        Ok(())
    }

    /// Adds stage types (from a plugin). A name already taken is an error naming both origins; nothing
    /// is added then.
    pub fn extend(&mut self, types: Vec<StageType>) -> Result<(), String> {
        for t in &types {
            if let Some(prev) = self.stages.get(t.type_name) {
                return Err(format!(
                    "stage type \"{}\" of {} clashes with the one of {}",
                    t.type_name,
                    t.origin(),
                    prev.origin()
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in &types {
            if !seen.insert(t.type_name) {
                return Err(format!("stage type \"{}\" is declared twice by {}", t.type_name, t.origin()));
            }
        }
        for t in types {
            self.stages.insert(t.type_name, t);
        }
        Ok(())
    }

    /// Looks a stage type up by name.
    pub fn get(&self, type_name: &str) -> Option<&StageType> {
        self.stages.get(type_name)
    }

    /// All stage types, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &StageType> {
        self.stages.values()
    }

    /// The registered name closest to `name`, if one is close enough to be a likely typo.
    pub fn suggest(&self, name: &str) -> Option<&'static str> {
        closest(name, self.stages.keys().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_name_clash_names_both_origins_and_adds_nothing() {
        let mut registry = Registry { stages: BTreeMap::new(), families: Families::default() };
        let make = |name: &'static str, plugin: Option<&str>| StageType {
            type_name: name,
            kind: StageKind::Transform,
            description: "test",
            schema: Arc::new(|| serde_json::json!({})),
            factory: Arc::new(|_, _| Err(ConfigError { field: None, message: "not built in this test".into() })),
            plugin: plugin.map(std::path::PathBuf::from),
            renamed: &[],
            outputs: &[],
        };
        registry.extend(vec![make("filter", None)]).unwrap();
        let err = registry.extend(vec![make("mine", Some("/p/a.so")), make("filter", Some("/p/a.so"))]).unwrap_err();
        assert!(err.contains("\"filter\"") && err.contains("plugin /p/a.so") && err.contains("built-in"), "{err}");
        assert!(registry.get("mine").is_none(), "nothing of the refused plugin is added");
        let err = registry.extend(vec![make("x", Some("/p/b.so")), make("x", Some("/p/b.so"))]).unwrap_err();
        assert!(err.contains("declared twice"), "{err}");
        registry.extend(vec![make("x", Some("/p/b.so"))]).unwrap();
        let err = registry.extend(vec![make("x", Some("/p/c.so"))]).unwrap_err();
        assert!(err.contains("plugin /p/c.so") && err.contains("plugin /p/b.so"), "{err}");
    }
}
