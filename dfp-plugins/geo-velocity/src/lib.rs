//! `geo-velocity`: per user, the speed in km/h implied by the distance and the time between a sign-in and
//! the user's previous one (impossible travel), as a new numeric column that the model can take as an input
//! (`features: { extra_numeric: [geo_velocity_kmh] }` on `train` and `score`).
//!
//! The stage declares `partition_by: username`, so dfp sends all of a user's events to the same worker and
//! the per-user state stays local.

use std::collections::HashMap;
use std::sync::Arc;

use dfp_plugin_sdk::arrow::array::{Float64Array, Float64Builder};
use dfp_plugin_sdk::arrow::datatypes::TimestampMicrosecondType;
use dfp_plugin_sdk::prelude::*;

/// Adds the travel speed since the user's previous sign-in.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GeoVelocity {
    /// Name of the new column (km/h).
    #[serde(default = "default_column")]
    column: String,
    /// Shortest interval counted, in seconds: two sign-ins closer in time are treated as this far apart
    /// (so GPS noise between near-simultaneous events is not read as supersonic travel).
    #[serde(default = "default_min_interval")]
    min_interval_secs: f64,
}

fn default_column() -> String {
    "geo_velocity_kmh".into()
}

fn default_min_interval() -> f64 {
    60.0
}

impl Stage for GeoVelocity {
    const TYPE: &'static str = "geo-velocity";
    const KIND: Kind = Kind::Transform;
    const DESCRIPTION: &'static str = "per-user km/h since the previous sign-in (impossible travel) (plugin)";
    fn partition_by() -> Option<&'static str> {
        Some("username")
    }
    fn validate(&self) -> Result<(), Error> {
        if !(self.min_interval_secs.is_finite() && self.min_interval_secs > 0.0) {
            return Err("min_interval_secs: must be a positive number of seconds".into());
        }
        if self.column.is_empty() {
            return Err("column: must not be empty".into());
        }
        Ok(())
    }
    fn build(&self, _ctx: &Context) -> Result<Instance, Error> {
        Ok(Instance::transform(Velocity {
            column: self.column.clone(),
            min_interval_hours: self.min_interval_secs / 3600.0,
            last: HashMap::new(),
        }))
    }
}
stage!(GeoVelocity);
export_plugin!(name: "geo-velocity", version: env!("CARGO_PKG_VERSION"));

struct Velocity {
    column: String,
    min_interval_hours: f64,
    /// user → (time in µs, latitude, longitude) of the latest sign-in with a position.
    last: HashMap<String, (i64, f64, f64)>,
}

/// Great-circle distance in km (haversine, mean Earth radius).
fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().min(1.0).asin()
}

impl Transform for Velocity {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), Error> {
        let need = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| Error(format!("geo-velocity needs a `{name}` column")))
        };
        let users = need("username")?.as_string_opt::<i32>().ok_or("geo-velocity: `username` must be text")?;
        let times = need("timestamp")?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or("geo-velocity: `timestamp` must be a microsecond timestamp")?;
        let lat = need("latitude")?
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or("geo-velocity: `latitude` must be Float64")?;
        let lon = need("longitude")?
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or("geo-velocity: `longitude` must be Float64")?;
        let mut speed = Float64Builder::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            if users.is_null(i) || times.is_null(i) || lat.is_null(i) || lon.is_null(i) {
                speed.append_null();
                continue;
            }
            let (t, a, o) = (times.value(i), lat.value(i), lon.value(i));
            let v = match self.last.get(users.value(i)) {
                Some(&(t0, a0, o0)) => {
                    let hours = ((t - t0).abs() as f64 / 3.6e9).max(self.min_interval_hours);
                    distance_km(a0, o0, a, o) / hours
                }
                None => 0.0,
            };
            speed.append_value(v);
            self.last.insert(users.value(i).to_string(), (t, a, o));
        }
        let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        if let Some(at) = fields.iter().position(|f| f.name() == &self.column) {
            fields.remove(at);
            columns.remove(at);
        }
        fields.push(Field::new(&self.column, DataType::Float64, true));
        columns.push(Arc::new(speed.finish()));
        out.emit(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::distance_km;

    #[test]
    fn distances_are_great_circle_kilometres() {
        // Paris → New York is about 5,837 km.
        let d = distance_km(48.8566, 2.3522, 40.7128, -74.0060);
        assert!((d - 5837.0).abs() < 15.0, "{d}");
        assert!(distance_km(10.0, 10.0, 10.0, 10.0).abs() < 1e-9);
    }
}

#[cfg(test)]
mod stage_tests {
    use std::sync::Arc;

    use dfp_plugin_sdk::arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
    use dfp_plugin_sdk::prelude::*;
    use dfp_plugin_sdk::testing;

    use super::GeoVelocity;

    #[test]
    fn speed_is_per_user_and_uses_the_previous_sign_in() {
        let config: GeoVelocity = dfp_plugin_sdk::serde_json::from_str("{}").unwrap();
        let Instance::Transform(mut t) = config.build(&testing::context("travel", 0, 1)).unwrap() else {
            panic!("a transform")
        };
        let hour = 3_600_000_000i64;
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("username", DataType::Utf8, false),
                Field::new(
                    "timestamp",
                    DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("+00:00".into())),
                    false,
                ),
                Field::new("latitude", DataType::Float64, true),
                Field::new("longitude", DataType::Float64, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "a", "a"])),
                Arc::new(TimestampMicrosecondArray::from(vec![0, 0, hour, hour + 1]).with_timezone("+00:00")),
                // a: Paris, then New York one hour later, then New York again a microsecond later.
                Arc::new(Float64Array::from(vec![Some(48.8566), Some(0.0), Some(40.7128), Some(40.7128)])),
                Arc::new(Float64Array::from(vec![Some(2.3522), Some(0.0), Some(-74.0060), Some(-74.0060)])),
            ],
        )
        .unwrap();
        let out = testing::process(t.as_mut(), batch).unwrap();
        assert_eq!(out.rows(), 4);
        let speed =
            out.batches[0].column_by_name("geo_velocity_kmh").unwrap().as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(speed.value(0), 0.0, "a first sign-in has no speed");
        assert_eq!(speed.value(1), 0.0, "users are apart");
        assert!((speed.value(2) - 5837.0).abs() < 15.0, "Paris → New York in an hour: {}", speed.value(2));
        assert_eq!(speed.value(3), 0.0, "no move");
    }
}
