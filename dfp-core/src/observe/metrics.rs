//! The OpenTelemetry instruments, exported for Prometheus through opentelemetry-prometheus.
//!
//! Metrics are off until something enables them ([`enable_metrics`], done by the admin endpoint); until
//! then [`metrics`] returns `None` and recording costs one atomic load. Per-stage event counts, in-flight
//! batches, input lag and worker busy time are *observed* at scrape time from the runs' atomic counters
//! (nothing extra on the hot path); the rest are recorded where they happen.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use super::names;
use super::stats::RunStats;
use super::ObserveError;

/// Distinct values kept per alert label; further values are counted under `other`.
pub const MAX_LABEL_VALUES: usize = 100;

/// The instruments stages record into. Obtain with [`metrics`].
#[derive(Debug)]
pub struct Metrics {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    /// [`names::STAGE_PROCESSING_SECONDS`].
    pub stage_seconds: Histogram<f64>,
    /// [`names::MODEL_CACHE_HITS`].
    pub model_cache_hits: Counter<u64>,
    /// [`names::MODEL_CACHE_MISSES`].
    pub model_cache_misses: Counter<u64>,
    /// [`names::MODEL_LOAD_SECONDS`].
    pub model_load_seconds: Histogram<f64>,
    /// [`names::MODEL_LOAD_ERRORS`].
    pub model_load_errors: Counter<u64>,
    /// [`names::REGISTRY_ERRORS`].
    pub registry_errors: Counter<u64>,
    /// [`names::MODELS_TRAINED`].
    pub models_trained: Counter<u64>,
    /// [`names::MODEL_PROMOTIONS`].
    pub model_promotions: Counter<u64>,
    /// [`names::MODEL_TRAINING_SECONDS`].
    pub training_seconds: Histogram<f64>,
    /// [`names::ALERTS`].
    pub alerts: Counter<u64>,
    /// [`names::TAP_ROWS_DROPPED`].
    pub tap_rows_dropped: Counter<u64>,
    /// [`names::PLUGIN_COUNTER`].
    pub plugin_counters: Counter<u64>,
    /// [`names::SINK_DOCUMENTS`].
    pub sink_documents: Counter<u64>,
    /// [`names::SINK_REQUEST_SECONDS`].
    pub sink_request_seconds: Histogram<f64>,
    labels: Mutex<HashMap<&'static str, HashSet<String>>>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());
/// Runs whose counters the observable instruments report.
static LIVE: Mutex<Vec<Arc<RunStats>>> = Mutex::new(Vec::new());

/// The instruments, when metrics are enabled.
#[inline]
pub fn metrics() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Turns metrics on for this process (idempotent) and returns the instruments.
pub fn enable_metrics() -> Result<&'static Metrics, ObserveError> {
    if let Some(m) = METRICS.get() {
        return Ok(m);
    }
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = METRICS.get() {
        return Ok(m);
    }
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_units()
        .without_counter_suffixes()
        .without_target_info()
        .scope_info_enabled(false)
        .build()
        .map_err(|e| ObserveError::Metrics(e.to_string()))?;
    let provider = SdkMeterProvider::builder().with_reader(exporter).build();
    let meter = provider.meter("dfp");
    register_observables(&meter);
    let seconds = |name: &'static str, help: &'static str, bounds: &[f64]| {
        meter.f64_histogram(name).with_description(help).with_boundaries(bounds.to_vec()).build()
    };
    let counter = |name: &'static str, help: &'static str| meter.u64_counter(name).with_description(help).build();
    let m = Metrics {
        stage_seconds: seconds(
            names::STAGE_PROCESSING_SECONDS,
            "Time of one stage call (source poll, transform batch, sink write)",
            &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        ),
        model_cache_hits: counter(names::MODEL_CACHE_HITS, "Model lookups served from the scorer's cache"),
        model_cache_misses: counter(names::MODEL_CACHE_MISSES, "Model lookups that went to the registry"),
        model_load_seconds: seconds(
            names::MODEL_LOAD_SECONDS,
            "Time to fetch and load one model",
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        ),
        model_load_errors: counter(
            names::MODEL_LOAD_ERRORS,
            "Model versions that cannot be used; their users are scored by the generic model",
        ),
        registry_errors: counter(names::REGISTRY_ERRORS, "Failed model-registry calls"),
        models_trained: counter(names::MODELS_TRAINED, "Models trained and published"),
        model_promotions: counter(names::MODEL_PROMOTIONS, "Promotion decisions on retrained models"),
        training_seconds: seconds(
            names::MODEL_TRAINING_SECONDS,
            "Training time per model",
            &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0],
        ),
        alerts: counter(names::ALERTS, "Alerts raised"),
        tap_rows_dropped: counter(names::TAP_ROWS_DROPPED, "Rows dfp tap dropped for a slow reader"),
        plugin_counters: counter(names::PLUGIN_COUNTER, "Counters added by plugin stages"),
        sink_documents: counter(names::SINK_DOCUMENTS, "Documents a sink sent to an external store, by outcome"),
        sink_request_seconds: seconds(
            names::SINK_REQUEST_SECONDS,
            "Time of one request of a sink to an external store (one bulk request)",
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        ),
        labels: Mutex::new(HashMap::new()),
        registry,
        _provider: provider,
    };
    let _ = METRICS.set(m);
    METRICS.get().ok_or_else(|| ObserveError::Metrics("metrics could not be initialised".into()))
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let families = self.registry.gather();
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// `value` if fewer than [`MAX_LABEL_VALUES`] distinct values were seen for `label` (or it was seen
    /// before), else `"other"`: keeps label cardinality bounded whatever the data holds.
    pub fn bounded(&self, label: &'static str, value: &str) -> String {
        let mut seen = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        let set = seen.entry(label).or_default();
        if set.contains(value) {
            return value.to_string();
        }
        if set.len() < MAX_LABEL_VALUES {
            set.insert(value.to_string());
            return value.to_string();
        }
        "other".to_string()
    }
}

/// Makes a run's counters visible to the observable instruments (until [`unregister_run`]).
pub(crate) fn register_run(stats: &Arc<RunStats>) {
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(stats));
}

/// Stops reporting a run.
pub(crate) fn unregister_run(stats: &Arc<RunStats>) {
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).retain(|s| !Arc::ptr_eq(s, stats));
}

fn each_stage(f: impl Fn(&RunStats, usize, &[KeyValue])) {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for run in &live {
        for (i, s) in run.stages.iter().enumerate() {
            let attrs = [
                KeyValue::new("pipeline", run.pipeline.clone()),
                KeyValue::new("process", run.process as i64),
                KeyValue::new("stage", s.id.clone()),
            ];
            f(run, i, &attrs);
        }
    }
}

fn register_observables(meter: &Meter) {
    type Read = fn(&super::stats::StageStats) -> u64;
    let counters: [(&'static str, &'static str, Read); 5] = [
        (names::STAGE_EVENTS_RECEIVED, "Rows a stage received", |s| s.rows_in.load(Ordering::Relaxed)),
        (names::STAGE_EVENTS_SENT, "Rows a stage sent downstream", |s| s.rows_out.load(Ordering::Relaxed)),
        (names::STAGE_EVENTS_DEAD_LETTERED, "Records a stage rejected to the dead-letter output", |s| {
            s.dead.load(Ordering::Relaxed)
        }),
        (names::STAGE_EVENTS_SKIPPED, "Records a stage dropped on purpose", |s| s.skipped.load(Ordering::Relaxed)),
        (names::STAGE_BATCHES_SENT, "Batches a stage sent downstream", |s| s.batches_out.load(Ordering::Relaxed)),
    ];
    for (name, help, read) in counters {
        let _ = meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o| each_stage(|run, i, attrs| o.observe(read(&run.stages[i]), attrs)))
            .build();
    }
    let _ = meter
        .u64_observable_counter(names::STAGE_COUNTER)
        .with_description("Named counts a stage keeps (duplicate event ids, evicted users, ...)")
        .with_callback(|o| {
            each_stage(|run, i, attrs| {
                let counters = run.stages[i].counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for (name, n) in counters {
                    let mut labels = attrs.to_vec();
                    labels.push(KeyValue::new("counter", name));
                    o.observe(n, &labels);
                }
            })
        })
        .build();
    let _ = meter
        .u64_observable_gauge(names::SOURCE_BATCHES_IN_FLIGHT)
        .with_description("Batches a source emitted that have not yet passed every sink")
        .with_callback(|o| {
            each_stage(|run, i, attrs| {
                let s = &run.stages[i];
                if s.kind == crate::stage::StageKind::Source {
                    o.observe(s.in_flight.iter().map(|a| a.load(Ordering::Relaxed)).sum(), attrs);
                }
            })
        })
        .build();
    let _ = meter
        .f64_observable_gauge(names::STAGE_INPUT_LAG_SECONDS)
        .with_description("Now minus the event time of the newest event the stage saw")
        .with_callback(|o| {
            each_stage(|run, i, attrs| {
                if let Some(lag) = run.lag_seconds(i) {
                    o.observe(lag, attrs)
                }
            })
        })
        .build();
    let _ = meter
        .f64_observable_counter(names::WORKER_BUSY_SECONDS)
        .with_description("Time worker threads spent inside dfp operators")
        .with_callback(|o| {
            let live = LIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for run in &live {
                for (w, ns) in run.busy_ns.iter().enumerate() {
                    let attrs = [
                        KeyValue::new("pipeline", run.pipeline.clone()),
                        KeyValue::new("process", run.process as i64),
                        KeyValue::new("worker", (run.first_worker + w) as i64),
                    ];
                    o.observe(ns.load(Ordering::Relaxed) as f64 / 1e9, &attrs);
                }
            }
        })
        .build();
    let _ = meter
        .u64_observable_gauge(names::PIPELINE_READY)
        .with_description("1 while the pipeline is ready (graph built, sources connected, models loadable)")
        .with_callback(|o| {
            let live = LIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for run in &live {
                let attrs =
                    [KeyValue::new("pipeline", run.pipeline.clone()), KeyValue::new("process", run.process as i64)];
                o.observe(u64::from(run.readiness().is_ok()), &attrs);
            }
        })
        .build();
}
