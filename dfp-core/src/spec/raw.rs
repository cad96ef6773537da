//! The raw model: the YAML file as written, every key with its line.

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::SpecError;

/// A mapping whose keys and values keep their locations, in file order.
#[derive(Debug, Default)]
pub struct SpannedMap<V>(pub Vec<(Spanned<String>, Spanned<V>)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SpannedMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = SpannedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                read_map(map)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(SpannedMap(Vec::new()))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// Reads a mapping into a [`SpannedMap`], refusing duplicate keys (in linear time: a pipeline may have
/// very many variables).
fn read_map<'de, V: Deserialize<'de>, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<SpannedMap<V>, A::Error> {
    let mut out: Vec<(Spanned<String>, Spanned<V>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while let Some(k) = map.next_key::<Spanned<String>>()? {
        let v = map.next_value::<Spanned<V>>()?;
        if !seen.insert(k.value.clone()) {
            return Err(serde::de::Error::custom(format!("duplicate key \"{}\"", k.value)));
        }
        out.push((k, v));
    }
    Ok(SpannedMap(out))
}

/// `families:` — declarations inline, or the name of a file holding them.
#[derive(Debug)]
pub enum RawFamilies {
    /// `families: { name: { … } }`
    Inline(SpannedMap<SpannedMap<Value>>),
    /// `families: path/to/families.yaml` (relative to the pipeline file).
    File(String),
}

impl<'de> Deserialize<'de> for RawFamilies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawFamilies;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of family declarations, or the name of a file holding them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawFamilies::File(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                read_map(map).map(RawFamilies::Inline)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl<V> SpannedMap<V> {
    /// The entry for `key`.
    pub fn get(&self, key: &str) -> Option<&(Spanned<String>, Spanned<V>)> {
        self.0.iter().find(|(k, _)| k.value == key)
    }
}

/// The top level of a pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// Format version; only 1 exists.
    #[serde(default)]
    pub version: Option<Spanned<Value>>,
    /// Variables with their defaults.
    #[serde(default)]
    pub vars: SpannedMap<Value>,
    /// Paths of dynamic plugins.
    #[serde(default)]
    pub plugins: Vec<Spanned<String>>,
    /// Runtime settings.
    #[serde(default)]
    pub runtime: SpannedMap<Value>,
    /// The log family of the pipeline: the default `family` of every stage that has one.
    #[serde(default)]
    pub family: Option<Spanned<String>>,
    /// Log families the pipeline declares, inline or in a file.
    #[serde(default)]
    pub families: Option<Spanned<RawFamilies>>,
    /// The stages by id.
    pub stages: Spanned<SpannedMap<SpannedMap<Value>>>,
}

impl RawPipeline {
    /// Parses YAML text; a syntax or shape error becomes a one-diagnostic [`SpecError`].
    pub fn parse(yaml: &str, file: &str) -> Result<Self, SpecError> {
        serde_saphyr::from_str::<RawPipeline>(yaml).map_err(|e| {
            let line = e.location().map(|l| l.line() as usize).filter(|l| *l > 0);
            let message = first_line(&e.to_string());
            SpecError::single(file, line, message)
        })
    }
}

/// serde-saphyr renders a snippet after the message; the diagnostic keeps the message line only.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // Advice about the parser's own options means nothing to a pipeline author.
    line.split(", set DuplicateKeyPolicy").next().unwrap_or(line).to_string()
}

/// The 1-based line of a spanned value.
pub fn line_of<T>(s: &Spanned<T>) -> usize {
    s.referenced.line() as usize
}
