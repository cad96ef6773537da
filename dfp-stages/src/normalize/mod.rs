//! Normalizers: one stage per log family, turning raw records (`file-source` with `raw: true`) into typed
//! columns with Morpheus's names.
//!
//! Shared rules: every output row has `id`, `timestamp` (UTC, microseconds) and `username`; a record without
//! a usable user or time, with a field of the wrong type, that is not valid JSON, or with an output field over
//! `max_field_bytes` goes to the dead-letter output as `file:line` with the reason. Categorical model inputs
//! that are missing become the explicit category [`MISSING`]; context columns kept for analysts (IP, city,
//! coordinates) stay null when missing.

pub mod azure;
pub mod duo;
pub mod generic;

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, StringArray, StringBuilder, TimestampMicrosecondBuilder,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use dfp_core::family::ColumnType;
use dfp_core::{Batch, DeadLetter, Emitter, Family, StageError};
use serde::Deserialize;

/// The category that stands for a missing value in model-input columns.
pub const MISSING: &str = "missing";

/// The default for `max_field_bytes`.
pub fn default_max_field_bytes() -> usize {
    4096
}

/// The raw records of a batch: the `raw` text column and the optional `line` column.
pub(crate) struct RawRows<'a> {
    raw: &'a StringArray,
    lines: Option<&'a UInt32Array>,
}

impl<'a> RawRows<'a> {
    pub(crate) fn of(batch: &'a Batch, stage: &str) -> Result<Self, StageError> {
        let raw = batch.data.column_by_name("raw").and_then(|c| c.as_any().downcast_ref::<StringArray>()).ok_or_else(
            || {
                StageError::Data(format!(
                    "{stage} reads raw records: set `raw: true` on the source stage \"{}\"",
                    batch.envelope.source
                ))
            },
        )?;
        let lines = batch.data.column_by_name("line").and_then(|c| c.as_any().downcast_ref::<UInt32Array>());
        Ok(RawRows { raw, lines })
    }
    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }
    pub(crate) fn text(&self, i: usize) -> &'a str {
        if self.raw.is_null(i) {
            ""
        } else {
            self.raw.value(i)
        }
    }
    /// `file:line` of row `i`.
    pub(crate) fn origin(&self, batch: &Batch, i: usize) -> String {
        match self.lines {
            Some(l) => format!("{}:{}", batch.envelope.origin, l.value(i)),
            None => format!("{}#{}", batch.envelope.origin, i + 1),
        }
    }
}

/// A string, a number or a boolean where a string is expected (error codes, ids).
#[derive(Debug)]
pub(crate) enum LooseStr<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl LooseStr<'_> {
    pub(crate) fn into_string(self) -> String {
        match self {
            LooseStr::Str(s) => s.into_owned(),
            LooseStr::Int(i) => i.to_string(),
            LooseStr::Float(f) => f.to_string(),
            LooseStr::Bool(b) => b.to_string(),
        }
    }
}

// Hand-written visitors instead of `#[serde(untagged)]`: untagged enums buffer the value first, which
// showed up as a tenth of the normalizers' time.
impl<'de: 'a, 'a> Deserialize<'de> for LooseStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LooseStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LooseStr::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LooseStr::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LooseStr::Str(Cow::Owned(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LooseStr::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(LooseStr::Float(v as f64), LooseStr::Int))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LooseStr::Float(v))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LooseStr::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A number, possibly written as a string.
#[derive(Debug)]
pub(crate) struct LooseNum<'a>(LooseStr<'a>);

impl LooseNum<'_> {
    pub(crate) fn value(&self) -> Option<f64> {
        match &self.0 {
            LooseStr::Int(i) => Some(*i as f64),
            LooseStr::Float(f) => Some(*f),
            LooseStr::Str(s) => s.trim().parse().ok(),
            LooseStr::Bool(_) => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LooseNum<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match LooseStr::deserialize(d)? {
            LooseStr::Bool(b) => Err(serde::de::Error::custom(format!("expected a number, found the boolean {b}"))),
            other => Ok(LooseNum(other)),
        }
    }
}

/// Trims; empty becomes `None`.
pub(crate) fn clean(s: Option<Cow<'_, str>>) -> Option<Cow<'_, str>> {
    s.filter(|v| !v.trim().is_empty())
        .map(|v| if v.trim().len() == v.len() { v } else { Cow::Owned(v.trim().to_string()) })
}

/// An IP address without a port or IPv6 brackets: `1.2.3.4:443` → `1.2.3.4`, `[2001:db8::1]:443` →
/// `2001:db8::1`.
pub fn clean_ip(ip: &str) -> &str {
    let ip = ip.trim();
    if let Some(rest) = ip.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match ip.matches(':').count() {
        1 => ip.split(':').next().unwrap_or(ip),
        _ => ip,
    }
}

/// "city, country" with [`MISSING`] for a missing part (and alone when both are).
pub(crate) fn location(city: Option<&str>, country: Option<&str>) -> String {
    match (city, country) {
        (None, None) => MISSING.to_string(),
        (c, k) => format!("{}, {}", c.unwrap_or(MISSING), k.unwrap_or(MISSING)),
    }
}

/// Column kinds of normalized output.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Text,
    Time,
    Float,
    Bool,
}

enum Builder {
    Text(StringBuilder),
    Time(TimestampMicrosecondBuilder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
}

/// Builds a normalized batch column by column; values are appended in column order per row.
pub(crate) struct Columns {
    schema: SchemaRef,
    builders: Vec<Builder>,
}

/// A value for one column of one row.
#[derive(Clone, Copy)]
pub(crate) enum Val<'a> {
    Text(Option<&'a str>),
    Time(i64),
    Float(Option<f64>),
    Bool(bool),
}

impl Val<'_> {
    /// The value as text for tests (`∅` for a null).
    #[cfg(test)]
    pub(crate) fn shown(&self) -> String {
        match self {
            Val::Text(t) => t.unwrap_or("∅").to_string(),
            Val::Time(t) => t.to_string(),
            Val::Float(f) => f.map_or("∅".into(), |f| f.to_string()),
            Val::Bool(b) => b.to_string(),
        }
    }
}

/// The Arrow type of `timestamp` columns.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
}

impl Columns {
    pub(crate) fn new(spec: &[(&str, Kind)], capacity: usize) -> Self {
        let fields: Vec<Field> = spec
            .iter()
            .map(|(name, kind)| match kind {
                Kind::Text => Field::new(*name, DataType::Utf8, true),
                Kind::Time => Field::new(*name, timestamp_type(), false),
                Kind::Float => Field::new(*name, DataType::Float64, true),
                Kind::Bool => Field::new(*name, DataType::Boolean, false),
            })
            .collect();
        let builders = spec
            .iter()
            .map(|(_, kind)| match kind {
                Kind::Text => Builder::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
                Kind::Time => {
                    Builder::Time(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("+00:00"))
                }
                Kind::Float => Builder::Float(Float64Builder::with_capacity(capacity)),
                Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
            })
            .collect();
        Columns { schema: Arc::new(Schema::new(fields)), builders }
    }

    /// Appends one row (values in column order).
    pub(crate) fn push(&mut self, row: &[Val<'_>]) {
        for (b, v) in self.builders.iter_mut().zip(row) {
            match (b, v) {
                (Builder::Text(b), Val::Text(v)) => b.append_option(*v),
                (Builder::Time(b), Val::Time(t)) => b.append_value(*t),
                (Builder::Float(b), Val::Float(f)) => b.append_option(*f),
                (Builder::Bool(b), Val::Bool(x)) => b.append_value(*x),
                // A mismatch is a programming error in a normalizer; keep the row shape with a null.
                (Builder::Text(b), _) => b.append_null(),
                (Builder::Float(b), _) => b.append_null(),
                (Builder::Time(b), _) => b.append_value(0),
                (Builder::Bool(b), _) => b.append_value(false),
            }
        }
    }

    pub(crate) fn finish(self) -> Result<RecordBatch, StageError> {
        let columns: Vec<ArrayRef> = self
            .builders
            .into_iter()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Text(mut b) => Arc::new(b.finish()),
                    Builder::Time(mut b) => Arc::new(b.finish()),
                    Builder::Float(mut b) => Arc::new(b.finish()),
                    Builder::Bool(mut b) => Arc::new(b.finish()),
                }
            })
            .collect();
        Ok(RecordBatch::try_new(self.schema, columns)?)
    }
}

/// The first text value over `limit` bytes, as (column, length).
fn oversized<'a>(names: &'a [String], row: &[Val<'_>], limit: usize) -> Option<(&'a str, usize)> {
    names.iter().zip(row).find_map(|(n, v)| match v {
        Val::Text(Some(s)) if s.len() > limit => Some((n.as_str(), s.len())),
        _ => None,
    })
}

/// A normalizer's output: its log family's columns, in order, and how the family compares user ids.
pub(crate) struct Layout {
    spec: Vec<(String, Kind)>,
    names: Vec<String>,
    /// The position of `username`.
    user: Option<usize>,
    users: dfp_core::family::UserIds,
}

impl Layout {
    /// The columns of `family`.
    pub(crate) fn of(family: &Family) -> Layout {
        let spec: Vec<(String, Kind)> = family
            .columns
            .iter()
            .map(|c| {
                let kind = match c.kind {
                    ColumnType::Text | ColumnType::Ip => Kind::Text,
                    ColumnType::Time => Kind::Time,
                    ColumnType::Float => Kind::Float,
                    ColumnType::Bool => Kind::Bool,
                };
                (c.name.clone(), kind)
            })
            .collect();
        let names: Vec<String> = spec.iter().map(|(n, _)| n.clone()).collect();
        let user = names.iter().position(|n| n == "username");
        Layout { spec, names, user, users: family.user_ids.clone() }
    }
}

/// What a normalizer made of one raw record.
pub(crate) enum Outcome {
    /// It handed one row to the row callback.
    Row,
    /// The record is not of interest (counted as skipped, not a dead letter).
    Skip,
}

/// The part every normalizer shares: reads the raw records of `batch` (`raw: true` on the source), hands
/// each to `parse` with a callback that takes the record's row (values in [`Layout`] order), and emits the
/// rows as one batch. User ids are normalized as the family says (trimmed, lower-cased for families whose
/// ids are case-insensitive) before anything is keyed by them. A record `parse` rejects, or whose row has a
/// text over `max_field_bytes`, becomes a dead letter with its `file:line`.
pub(crate) fn normalize_batch<F>(
    batch: Batch,
    stage: &str,
    layout: &Layout,
    max_field_bytes: usize,
    out: &mut Emitter,
    mut parse: F,
) -> Result<(), StageError>
where
    F: FnMut(&str, &mut dyn FnMut(&[Val<'_>])) -> Result<Outcome, String>,
{
    let rows = RawRows::of(&batch, stage)?;
    let spec: Vec<(&str, Kind)> = layout.spec.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    let mut cols = Columns::new(&spec, rows.len());
    for i in 0..rows.len() {
        let raw = rows.text(i);
        let mut too_long = None;
        let outcome = parse(raw, &mut |row: &[Val<'_>]| {
            if let Some((field, len)) = oversized(&layout.names, row, max_field_bytes) {
                too_long = Some(format!("field {field} is {len} bytes, over max_field_bytes ({max_field_bytes})"));
                return;
            }
            // Most ids are already in their normal form: the row is then pushed as it is.
            match layout.user.and_then(|u| match row.get(u) {
                Some(Val::Text(Some(id))) => match layout.users.normalize(id) {
                    std::borrow::Cow::Owned(normal) => Some((u, normal)),
                    std::borrow::Cow::Borrowed(_) => None,
                },
                _ => None,
            }) {
                None => cols.push(row),
                Some((u, normal)) => {
                    let mut copy: Vec<Val<'_>> = row.to_vec();
                    copy[u] = Val::Text(Some(&normal));
                    cols.push(&copy);
                }
            }
        });
        let reason = match outcome {
            Ok(Outcome::Row) => too_long,
            Ok(Outcome::Skip) => {
                out.skip(1);
                None
            }
            Err(reason) => Some(reason),
        };
        if let Some(reason) = reason {
            out.dead_letter(DeadLetter::new(reason, excerpt(raw), rows.origin(&batch, i)));
        }
    }
    let data = cols.finish()?;
    observe_event_time(&data, out);
    out.emit(batch.with_data(data));
    Ok(())
}

/// "invalid JSON: …" or "unexpected shape: …" for a record serde could not read.
pub(crate) fn json_problem(e: &serde_json::Error) -> String {
    let what = if e.is_syntax() || e.is_eof() { "invalid JSON" } else { "unexpected shape" };
    format!("{what}: {e}")
}

/// A stable id for a record that has none: a hash of its text.
pub(crate) fn hash_id(raw: &str) -> String {
    format!("h{:016x}", dfp_core::hash::stable_hash(raw.as_bytes()))
}

/// Shortens a record for a dead letter.
pub(crate) fn excerpt(raw: &str) -> String {
    if raw.len() <= 4096 {
        raw.to_string()
    } else {
        let mut end = 4096;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &raw[..end])
    }
}

/// Reports the newest `timestamp` of a normalized batch as the stage's event time (input lag metric).
pub(crate) fn observe_event_time(data: &arrow::array::RecordBatch, out: &mut dfp_core::Emitter) {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMicrosecondType;
    if let Some(col) = data.column_by_name("timestamp") {
        if let Some(ts) = col.as_primitive_opt::<TimestampMicrosecondType>() {
            if let Some(newest) = arrow::compute::max(ts) {
                out.observe_event_time(newest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_lose_ports_and_brackets() {
        assert_eq!(clean_ip("203.0.113.7"), "203.0.113.7");
        assert_eq!(clean_ip("203.0.113.7:4433"), "203.0.113.7");
        assert_eq!(clean_ip("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(clean_ip("[2001:db8::1]"), "2001:db8::1");
        assert_eq!(clean_ip("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn locations_name_missing_parts() {
        assert_eq!(location(Some("Seattle"), Some("US")), "Seattle, US");
        assert_eq!(location(None, Some("US")), "missing, US");
        assert_eq!(location(None, None), "missing");
    }
}
