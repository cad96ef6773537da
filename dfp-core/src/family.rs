//! Log families: what a kind of sign-in log looks like once normalized, as data.
//!
//! A *family* (Azure AD, Duo, a plugin's, a team's own Google Workspace or Cisco ISE logs) is declared once: the
//! normalized columns its normalizer produces, which of them play the roles the DFP stages need (the app,
//! the place, the browser, the address, the result…), the model's input features and the prefix of its
//! model names. Stages never switch on a family name: `features`, `train`, `score`, `threshold`, the
//! report and the generator read what they need from the [`Family`].
//!
//! Families come from three places, all in the same format:
//! - built in: `dfp-stages` registers Azure and Duo with [`register_family!`](crate::register_family);
//! - a plugin library exports its own next to its stages (the example plugins in `dfp-plugins/` do);
//! - a pipeline declares them under `families:` (inline, or in a file it names).
//!
//! ```yaml
//! families:
//!   gws:                                  # the name pipelines use: `family: gws`
//!     description: Google Workspace login audit events
//!     columns:                            # every normalized column, in order: type, and for the generic
//!       id:        { type: text, path: id.uniqueQualifier }       # `normalize` stage the JSON path to read
//!       timestamp: { type: time, path: id.time }
//!       username:  { type: text, path: actor.email }
//!       app:       { type: text, path: events.0.name, missing: missing }
//!       ipAddress: { type: ip, path: ipAddress }
//!       country:   { type: text, path: geo.country }
//!       city:      { type: text, path: geo.city }
//!       location:  { type: text, join: [city, country] }
//!       success:   { type: bool, path: events.0.type, true: [login_success], false: [login_failure] }
//!     roles: { app: app, ip: ipAddress, country: country, city: city, location: location,
//!              result: { column: success } }
//!     features:
//!       categorical: [app]
//!       binary: [success]
//!       numeric: [logcount, locincrement, appincrement]
//! ```
//!
//! The columns `id`, `timestamp` and `username` are in every family (the DESIGN's invariant: every row
//! keeps its event id, user and UTC time). Model features may name normalized columns or the columns the
//! `features` stage derives ([`DERIVED`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The columns the `features` stage adds, which model features may name besides the normalized ones:
/// Morpheus's day counters, the cross-day novelty flags (one per context role the family has) and the
/// hours since the user's previous event.
pub const DERIVED: [&str; 11] = [
    "logcount",
    "locincrement",
    "appincrement",
    "new_app",
    "new_country",
    "new_city",
    "new_browser",
    "new_os",
    "new_device",
    "new_ip_prefix",
    "hours_since_prev",
];

/// The columns every family has, with their types.
pub const REQUIRED_COLUMNS: [(&str, ColumnType); 3] =
    [("id", ColumnType::Text), ("timestamp", ColumnType::Time), ("username", ColumnType::Text)];

/// The type of a normalized column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text.
    Text,
    /// A UTC time (microseconds): ISO 8601 text or epoch seconds in the raw record.
    Time,
    /// A 64-bit float.
    Float,
    /// A boolean (from a JSON boolean, or from text through `true`/`false` value lists).
    Bool,
    /// An IP address as text, without a port or IPv6 brackets.
    Ip,
}

/// One normalized column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// The column name (the key under `columns:`).
    #[serde(skip)]
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// For the generic `normalize` stage: where the value sits in a raw JSON record, as a dotted path
    /// (`actor.email`, `events.0.name`: numbers index arrays); several paths separated by `|` are tried in
    /// order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The value written when the record has none (model-input text columns use `missing`, as Morpheus
    /// does); without it a missing value is null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// `bool` columns read from text: the values meaning true (compared case-insensitively).
    #[serde(default, rename = "true", skip_serializing_if = "Vec::is_empty")]
    pub true_values: Vec<String>,
    /// `bool` columns read from text: the values meaning false. A value in neither list makes the record a
    /// dead letter.
    #[serde(default, rename = "false", skip_serializing_if = "Vec::is_empty")]
    pub false_values: Vec<String>,
    /// A text column made of other columns: `[city, country]` gives `"Seattle, US"`, with `missing` for an
    /// absent part (and `missing` alone when every part is absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<String>,
}

/// The column holding a sign-in's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultRole {
    /// The column.
    pub column: String,
    /// Values of a text column that mean success (case-insensitive). Empty for a `bool` column, where
    /// true means success.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<String>,
}

/// Which normalized columns play the roles the stages need. Every role is optional: a stage that needs a
/// role the family lacks says so (`features` then leaves out the counter or novelty flag that needs it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    /// The application signed in to (`appincrement`, `new_app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The place as one value, e.g. "city, country" (`locincrement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Country (`new_country`, alert labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// City (`new_city`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Browser (`new_browser`, alert labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    /// Operating system (`new_os`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Device name or id (`new_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Source IP address (`new_ip_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Why a sign-in failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultRole>,
    /// Latitude of the place (degrees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<String>,
    /// Longitude of the place (degrees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<String>,
    /// A session or correlation id, where the log has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The context roles behind the `new_*` novelty flags, in output order: (role, flag).
pub const NOVELTY: [(&str, &str); 7] = [
    ("app", "new_app"),
    ("country", "new_country"),
    ("city", "new_city"),
    ("browser", "new_browser"),
    ("os", "new_os"),
    ("device", "new_device"),
    ("ip", "new_ip_prefix"),
];

impl Roles {
    /// The column of a role by its name (`app`, `country`, …; `result` gives its column).
    pub fn get(&self, role: &str) -> Option<&str> {
        match role {
            "app" => self.app.as_deref(),
            "location" => self.location.as_deref(),
            "country" => self.country.as_deref(),
            "city" => self.city.as_deref(),
            "browser" => self.browser.as_deref(),
            "os" => self.os.as_deref(),
            "device" => self.device.as_deref(),
            "ip" => self.ip.as_deref(),
            "failure_reason" => self.failure_reason.as_deref(),
            "result" => self.result.as_ref().map(|r| r.column.as_str()),
            "latitude" => self.latitude.as_deref(),
            "longitude" => self.longitude.as_deref(),
            "session" => self.session.as_deref(),
            _ => None,
        }
    }

    /// Every role that is set, as (role, column).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        const ALL: [&str; 13] = [
            "app",
            "location",
            "country",
            "city",
            "browser",
            "os",
            "device",
            "ip",
            "failure_reason",
            "result",
            "latitude",
            "longitude",
            "session",
        ];
        ALL.into_iter().filter_map(move |r| self.get(r).map(|c| (r, c)))
    }
}

/// The model's input features, by how they are encoded. In the model they are ordered numeric, binary,
/// categorical, each list in the order given here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelFeatures {
    /// Categories (embeddings, cross-entropy).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// True/false columns (binary cross-entropy).
    #[serde(default)]
    pub binary: Vec<String>,
    /// Numbers, standard-scaled (MSE); the day counters are here.
    #[serde(default)]
    pub numeric: Vec<String>,
}

/// How user ids are made comparable before anything is keyed by them (models, profiles, per-user state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserCase {
    /// Keep the id as written.
    #[default]
    Preserve,
    /// Lower-case it (Azure UPNs and e-mail addresses are case-insensitive).
    Lower,
}

/// The normalization of user ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserIds {
    /// `preserve` or `lower`.
    #[serde(default)]
    pub case: UserCase,
}

impl UserIds {
    /// The id as the family compares it: trimmed, and case-folded when the family says so. Borrowed when
    /// nothing changes.
    pub fn normalize<'a>(&self, id: &'a str) -> std::borrow::Cow<'a, str> {
        let trimmed = id.trim();
        match self.case {
            UserCase::Lower if trimmed.chars().any(char::is_uppercase) => {
                std::borrow::Cow::Owned(trimmed.to_lowercase())
            }
            _ => std::borrow::Cow::Borrowed(trimmed),
        }
    }
}

/// A log family. Built with [`Family::from_value`], which checks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Family {
    /// The name pipelines use (`family: azure`): the key the family is declared under.
    #[serde(skip)]
    pub name: String,
    /// One line for `dfp families`.
    #[serde(default)]
    pub description: String,
    /// The middle part of model names, `DFP-<model_prefix>-<user>` (default: the family name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_prefix: String,
    /// The stage type that turns raw records into these columns (default: the generic `normalize`,
    /// which reads each column's `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalizer: Option<String>,
    /// The normalized columns, in order (`id`, `timestamp` and `username` among them).
    #[schemars(with = "BTreeMap<String, Column>")]
    #[serde(serialize_with = "columns_ser", deserialize_with = "columns_de")]
    pub columns: Vec<Column>,
    /// Which columns play the roles stages need.
    #[serde(default)]
    pub roles: Roles,
    /// The model's inputs.
    pub features: ModelFeatures,
    /// How user ids are compared.
    #[serde(default)]
    pub user_ids: UserIds,
    /// JSON pointers (`/properties/userPrincipalName`) where raw records hold the user id, tried in order
    /// (`dfp produce` keys Kafka messages by it). Default: the `username` column's `path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_user: Vec<String>,
    /// A transform stage type that renders generated sign-ins (`dfp generate`) as this family's raw
    /// records; see docs/generate-eval.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_writer: Option<String>,
}

fn columns_ser<S: serde::Serializer>(columns: &[Column], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(columns.len()))?;
    for c in columns {
        map.serialize_entry(&c.name, c)?;
    }
    map.end()
}

fn columns_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Column>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<Column>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping of column name to its type or `{ type: …, path: … }`")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<Column> = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                let value: Value = map.next_value()?;
                let mut column: Column = match value {
                    // `country: text` is short for `country: { type: text }`.
                    Value::String(t) => serde_json::from_value(serde_json::json!({ "type": t })),
                    other => serde_json::from_value(other),
                }
                .map_err(|e| serde::de::Error::custom(format!("column \"{name}\": {e}")))?;
                if out.iter().any(|c| c.name == name) {
                    return Err(serde::de::Error::custom(format!("column \"{name}\" is declared twice")));
                }
                column.name = name;
                out.push(column);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// Why a family declaration is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("family \"{family}\": {message}")]
pub struct FamilyError {
    /// The family.
    pub family: String,
    /// The field at fault (`roles.app`, `columns.location`), when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Family {
    /// Parses and checks a family declared under `name`.
    pub fn from_value(name: &str, value: Value) -> Result<Family, FamilyError> {
        let mut family: Family = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            FamilyError {
                family: name.to_string(),
                field: (path != ".").then_some(path),
                message: e.into_inner().to_string(),
            }
        })?;
        family.name = name.to_string();
        if family.model_prefix.is_empty() {
            family.model_prefix = name.to_string();
        }
        if family.raw_user.is_empty() {
            if let Some(path) = family.column("username").and_then(|c| c.path.as_deref()) {
                family.raw_user = path.split('|').map(|p| format!("/{}", p.trim().replace('.', "/"))).collect();
            }
        }
        family.check()?;
        Ok(family)
    }

    /// Parses a YAML text of `name: { … }` entries (a families file, or a built-in family).
    pub fn parse_yaml(yaml: &str) -> Result<Vec<Family>, FamilyError> {
        let value: BTreeMap<String, Value> = serde_saphyr::from_str(yaml).map_err(|e| FamilyError {
            family: "?".into(),
            field: None,
            message: e.to_string(),
        })?;
        value.into_iter().map(|(name, v)| Family::from_value(&name, v)).collect()
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The novelty flags this family's roles allow, as (role column, flag name), in output order.
    pub fn novelty(&self) -> Vec<(&str, &'static str)> {
        NOVELTY.iter().filter_map(|(role, flag)| self.roles.get(role).map(|c| (c, *flag))).collect()
    }

    /// Whether a column is produced for this family: a normalized column, or one the `features` stage
    /// derives from the roles the family has.
    pub fn provides(&self, column: &str) -> bool {
        if self.column(column).is_some() {
            return true;
        }
        match column {
            "logcount" | "hours_since_prev" => true,
            "new_values" => !self.novelty().is_empty(),
            "locincrement" => self.roles.location.is_some(),
            "appincrement" => self.roles.app.is_some(),
            other => self.novelty().iter().any(|(_, flag)| *flag == other),
        }
    }

    /// Whether the generic `normalize` stage can read this family's raw records: every column has a
    /// `path` or a `join`.
    pub fn generic_normalizer_ready(&self) -> Result<(), String> {
        let missing: Vec<&str> = self
            .columns
            .iter()
            .filter(|c| c.path.is_none() && c.join.is_empty() && c.name != "id")
            .map(|c| c.name.as_str())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("columns without a `path` (or `join`): {}", missing.join(", ")))
        }
    }

    fn check(&self) -> Result<(), FamilyError> {
        let err = |field: &str, message: String| FamilyError {
            family: self.name.clone(),
            field: (!field.is_empty()).then(|| field.to_string()),
            message,
        };
        if !valid_name(&self.name) {
            return Err(err("", "a family name holds only letters, digits, '_' and '-'".into()));
        }
        if !valid_name(&self.model_prefix) {
            return Err(err("model_prefix", "holds only letters, digits, '_' and '-'".into()));
        }
        for (name, kind) in REQUIRED_COLUMNS {
            match self.column(name) {
                None => return Err(err("columns", format!("every family has a `{name}` column ({kind:?})"))),
                Some(c) if c.kind != kind => {
                    return Err(err(&format!("columns.{name}"), format!("`{name}` must be of type {kind:?}")))
                }
                _ => {}
            }
        }
        let names: HashSet<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        for c in &self.columns {
            let field = format!("columns.{}", c.name);
            if DERIVED.contains(&c.name.as_str()) {
                return Err(err(&field, format!("\"{}\" is a column the `features` stage adds", c.name)));
            }
            if !c.join.is_empty() {
                if c.kind != ColumnType::Text || c.path.is_some() {
                    return Err(err(&field, "a `join` column is text and has no `path`".into()));
                }
                for part in &c.join {
                    if !names.contains(part.as_str()) || part == &c.name {
                        return Err(err(&field, format!("`join` names \"{part}\", not another column of this family")));
                    }
                }
            }
            if (!c.true_values.is_empty() || !c.false_values.is_empty()) && c.kind != ColumnType::Bool {
                return Err(err(&field, "`true`/`false` value lists are for `bool` columns".into()));
            }
            if c.missing.is_some() && !matches!(c.kind, ColumnType::Text) {
                return Err(err(&field, "`missing` is for text columns".into()));
            }
        }
        for (role, column) in self.roles.iter() {
            if !names.contains(column) {
                return Err(err(
                    &format!("roles.{role}"),
                    format!("names column \"{column}\", which the family does not declare{}", hint(column, &names)),
                ));
            }
        }
        if let Some(r) = &self.roles.result {
            let kind = self.column(&r.column).map(|c| c.kind);
            if kind == Some(ColumnType::Bool) && !r.success.is_empty() {
                return Err(err("roles.result.success", "a `bool` result column needs no success values".into()));
            }
            if kind != Some(ColumnType::Bool) && r.success.is_empty() {
                return Err(err("roles.result.success", "list the values of the text column that mean success".into()));
            }
        }
        let mut seen = HashSet::new();
        for (list, kinds) in [
            ("categorical", &self.features.categorical),
            ("binary", &self.features.binary),
            ("numeric", &self.features.numeric),
        ] {
            for f in kinds {
                let field = format!("features.{list}");
                if !seen.insert(f.as_str()) {
                    return Err(err(&field, format!("\"{f}\" is listed twice")));
                }
                if !self.provides(f) {
                    let mut all: HashSet<&str> = names.clone();
                    all.extend(DERIVED.iter().copied().filter(|d| self.provides(d)));
                    return Err(err(
                        &field,
                        format!(
                            "\"{f}\" is neither a column of the family nor one `features` derives from its roles{}",
                            hint(f, &all)
                        ),
                    ));
                }
            }
        }
        if seen.is_empty() {
            return Err(err("features", "the model needs at least one input feature".into()));
        }
        Ok(())
    }
}

fn hint(name: &str, candidates: &HashSet<&str>) -> String {
    let mut sorted: Vec<&str> = candidates.iter().copied().collect();
    sorted.sort_unstable();
    match crate::suggest::closest(name, sorted.iter().copied()) {
        Some(s) => format!("; did you mean \"{s}\"?"),
        None => String::new(),
    }
}

/// True for names usable as family names and model prefixes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Where a family was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FamilyOrigin {
    /// Linked into dfp.
    BuiltIn,
    /// Exported by a plugin library.
    Plugin(std::path::PathBuf),
    /// Declared by a pipeline (`file:line`).
    Pipeline(String),
}

impl std::fmt::Display for FamilyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FamilyOrigin::BuiltIn => f.write_str("built-in"),
            FamilyOrigin::Plugin(p) => write!(f, "plugin {}", p.display()),
            FamilyOrigin::Pipeline(at) => write!(f, "pipeline {at}"),
        }
    }
}

/// The families a pipeline may use, by name.
#[derive(Debug, Clone, Default)]
pub struct Families {
    by_name: BTreeMap<String, (Arc<Family>, FamilyOrigin)>,
}

impl Families {
    /// Adds a family; a name already taken is an error naming both origins.
    pub fn add(&mut self, family: Family, origin: FamilyOrigin) -> Result<(), String> {
        if let Some((_, prev)) = self.by_name.get(&family.name) {
            return Err(format!("family \"{}\" of {origin} clashes with the one of {prev}", family.name));
        }
        self.by_name.insert(family.name.clone(), (Arc::new(family), origin));
        Ok(())
    }

    /// A family by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Family>> {
        self.by_name.get(name).map(|(f, _)| f)
    }

    /// A family by name, or an error that lists the known ones and suggests the closest.
    pub fn require(&self, name: &str) -> Result<&Arc<Family>, String> {
        self.get(name).ok_or_else(|| {
            let mut msg = format!("unknown log family \"{name}\"");
            if let Some(s) = crate::suggest::closest(name, self.by_name.keys().map(String::as_str)) {
                msg.push_str(&format!("; did you mean \"{s}\"?"));
            }
            msg.push_str(&format!(
                " (known: {}; declare others under `families:` or load a plugin that exports one)",
                self.names().join(", ")
            ));
            msg
        })
    }

    /// The family whose models are named `DFP-<prefix>-…`.
    pub fn by_model_prefix(&self, prefix: &str) -> Option<&Arc<Family>> {
        self.by_name.values().map(|(f, _)| f).find(|f| f.model_prefix == prefix)
    }

    /// Where a family came from.
    pub fn origin(&self, name: &str) -> Option<&FamilyOrigin> {
        self.by_name.get(name).map(|(_, o)| o)
    }

    /// Every family, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Family>> {
        self.by_name.values().map(|(f, _)| f)
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

/// A built-in family, registered with `inventory` by the crate that provides its normalizer.
pub struct FamilyRegistration {
    /// The family as YAML (`name: { … }`), in the format of a pipeline's `families:`.
    pub yaml: &'static str,
}

inventory::collect!(FamilyRegistration);

/// Registers a built-in family from YAML text (usually `include_str!("azure.yaml")`).
#[macro_export]
macro_rules! register_family {
    ($yaml:expr) => {
        $crate::inventory::submit! { $crate::family::FamilyRegistration { yaml: $yaml } }
    };
}

/// The families linked into this program. A built-in family that does not parse is a bug caught by the
/// tests; it is left out with an error log.
pub(crate) fn built_in() -> Families {
    let mut families = Families::default();
    for reg in inventory::iter::<FamilyRegistration> {
        match Family::parse_yaml(reg.yaml) {
            Ok(list) => {
                for f in list {
                    if let Err(e) = families.add(f, FamilyOrigin::BuiltIn) {
                        tracing::error!("{e}");
                    }
                }
            }
            Err(e) => tracing::error!("built-in {e}"),
        }
    }
    families
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn small() -> Value {
        json!({
            "columns": {
                "id": "text", "timestamp": "time", "username": "text",
                "app": { "type": "text", "missing": "missing" },
                "city": "text", "country": "text",
                "location": { "type": "text", "join": ["city", "country"] },
                "ok": "bool",
            },
            "roles": { "app": "app", "city": "city", "country": "country", "location": "location",
                       "result": { "column": "ok" } },
            "features": { "categorical": ["app"], "binary": ["ok"], "numeric": ["logcount", "appincrement"] },
        })
    }

    #[test]
    fn a_family_parses_with_defaults_and_keeps_column_order() {
        let f = Family::from_value("mine", small()).unwrap();
        assert_eq!(f.model_prefix, "mine");
        let names: Vec<&str> = f.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "timestamp", "username", "app", "city", "country", "location", "ok"]);
        assert_eq!(f.novelty(), vec![("app", "new_app"), ("country", "new_country"), ("city", "new_city")]);
        assert!(f.provides("appincrement") && f.provides("locincrement") && !f.provides("new_os"));
    }

    #[test]
    fn mistakes_name_the_field() {
        let mut v = small();
        v["roles"]["app"] = json!("aap");
        let e = Family::from_value("mine", v).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("roles.app"));
        assert!(e.message.contains("did you mean \"app\""), "{e}");

        let mut v = small();
        v["features"]["numeric"] = json!(["new_os"]);
        let e = Family::from_value("mine", v).unwrap_err();
        assert!(e.message.contains("\"new_os\" is neither"), "{e}");

        let mut v = small();
        v["columns"]["timestamp"] = json!("text");
        assert!(Family::from_value("mine", v).unwrap_err().message.contains("Time"));

        let mut v = small();
        v["rolez"] = json!({});
        let e = Family::from_value("mine", v).unwrap_err();
        assert!(e.message.contains("unknown field `rolez`"), "{e}");

        let mut v = small();
        v["roles"]["result"] = json!({ "column": "app" });
        assert!(Family::from_value("mine", v).unwrap_err().message.contains("mean success"));
    }

    #[test]
    fn user_ids_fold_case_when_asked() {
        let lower = UserIds { case: UserCase::Lower };
        assert_eq!(lower.normalize(" ALOPEZ9@Contoso.com "), "alopez9@contoso.com");
        assert!(matches!(lower.normalize("bob"), std::borrow::Cow::Borrowed("bob")));
        assert_eq!(UserIds::default().normalize("Bob"), "Bob");
    }

    #[test]
    fn raw_user_pointers_default_to_the_username_path() {
        let mut v = small();
        v["columns"]["username"] = json!({ "type": "text", "path": "actor.email | user" });
        let f = Family::from_value("mine", v).unwrap();
        assert_eq!(f.raw_user, ["/actor/email", "/user"]);
    }

    #[test]
    fn clashing_names_are_refused_with_both_origins() {
        let mut all = Families::default();
        all.add(Family::from_value("mine", small()).unwrap(), FamilyOrigin::BuiltIn).unwrap();
        let e = all
            .add(Family::from_value("mine", small()).unwrap(), FamilyOrigin::Pipeline("p.yaml:3".into()))
            .unwrap_err();
        assert!(e.contains("pipeline p.yaml:3") && e.contains("built-in"), "{e}");
        assert!(all.require("mien").unwrap_err().contains("did you mean \"mine\""));
    }
}
