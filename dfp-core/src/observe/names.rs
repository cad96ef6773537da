//! Every metric dfp exports, by its Prometheus name (the single place names are spelled).
//!
//! Names follow `dfp_<noun>_<unit>[_total]`: counters end in `_total`, times are in seconds. Labels are
//! bounded: stage ids, worker indexes, model kinds, and alert dimensions capped at
//! [`MAX_LABEL_VALUES`](super::MAX_LABEL_VALUES) distinct values each (no per-user labels).

/// Rows a stage received (counter; labels `pipeline`, `stage`).
pub const STAGE_EVENTS_RECEIVED: &str = "dfp_stage_events_received_total";
/// Rows a stage sent downstream (counter; labels `pipeline`, `stage`).
pub const STAGE_EVENTS_SENT: &str = "dfp_stage_events_sent_total";
/// Records a stage rejected to the dead-letter output (counter; labels `pipeline`, `stage`).
pub const STAGE_EVENTS_DEAD_LETTERED: &str = "dfp_stage_events_dead_lettered_total";
/// Records a stage dropped on purpose, such as enrollment events (counter; labels `pipeline`, `stage`).
pub const STAGE_EVENTS_SKIPPED: &str = "dfp_stage_events_skipped_total";
/// Batches a stage sent downstream (counter; labels `pipeline`, `stage`).
pub const STAGE_BATCHES_SENT: &str = "dfp_stage_batches_sent_total";
/// Time of one stage call — a source poll, a transform's batch, a sink write (histogram, seconds; labels
/// `pipeline`, `stage`).
pub const STAGE_PROCESSING_SECONDS: &str = "dfp_stage_processing_seconds";
/// Batches a source emitted that have not yet passed every sink (gauge; labels `pipeline`, `stage`).
pub const SOURCE_BATCHES_IN_FLIGHT: &str = "dfp_source_batches_in_flight";
/// Now minus the event time of the newest event a stage has seen (gauge, seconds; labels `pipeline`,
/// `stage`; only stages that know event times: normalizers, Kafka sources).
pub const STAGE_INPUT_LAG_SECONDS: &str = "dfp_stage_input_lag_seconds";
/// Time worker threads spent inside dfp operators (counter, seconds; labels `pipeline`, `worker`).
pub const WORKER_BUSY_SECONDS: &str = "dfp_worker_busy_seconds_total";
/// 1 while the pipeline is ready (graph built, sources connected, models loadable), else 0 (gauge;
/// label `pipeline`).
pub const PIPELINE_READY: &str = "dfp_pipeline_ready";
/// Model lookups served from a scorer's cache (counter; label `stage`).
pub const MODEL_CACHE_HITS: &str = "dfp_model_cache_hits_total";
/// Model lookups that went to the registry (counter; labels `stage`, `result`: `loaded` or `absent`).
pub const MODEL_CACHE_MISSES: &str = "dfp_model_cache_misses_total";
/// Time to fetch and load one model from the registry (histogram, seconds; label `stage`).
pub const MODEL_LOAD_SECONDS: &str = "dfp_model_load_seconds";
/// Model versions a scorer found unusable — unreadable weights or manifest, another family or other
/// features, impossible loss statistics — whose users were scored by the generic model instead (counter;
/// label `stage`).
pub const MODEL_LOAD_ERRORS: &str = "dfp_model_load_errors_total";
/// Failed model-registry calls (counter; labels `stage`, `operation`).
pub const REGISTRY_ERRORS: &str = "dfp_registry_errors_total";
/// Models trained and published (counter; labels `stage`, `kind`: `user` or `generic`).
pub const MODELS_TRAINED: &str = "dfp_models_trained_total";
/// Promotion decisions on retrained models (counter; labels `stage`, `kind`, `decision`: `promote`, `keep`
/// or `new`); a dry run counts what it would decide.
pub const MODEL_PROMOTIONS: &str = "dfp_model_promotions_total";
/// Training time per model (histogram, seconds; labels `stage`, `kind`).
pub const MODEL_TRAINING_SECONDS: &str = "dfp_model_training_seconds";
/// Alerts raised (counter; labels `stage`, `source`, `country`, `browser`, `model_kind`: `user` or
/// `generic`).
pub const ALERTS: &str = "dfp_alerts_total";
/// Rows `dfp tap` could not deliver because the tap client read too slowly (counter; labels `pipeline`,
/// `stage`).
pub const TAP_ROWS_DROPPED: &str = "dfp_tap_rows_dropped_total";

/// Named counts a built-in stage keeps, such as `duplicate_ids` or `evicted_users` (counter; labels
/// `pipeline`, `process`, `stage`, `counter`).
pub const STAGE_COUNTER: &str = "dfp_stage_counter_total";
/// Counters a plugin stage adds through its SDK `Context` (counter; labels `stage`, `counter`: the
/// plugin's name for it).
pub const PLUGIN_COUNTER: &str = "dfp_plugin_counter_total";

/// Every name above, for docs and tests.
pub const ALL: &[&str] = &[
    STAGE_EVENTS_RECEIVED,
    STAGE_EVENTS_SENT,
    STAGE_EVENTS_DEAD_LETTERED,
    STAGE_EVENTS_SKIPPED,
    STAGE_BATCHES_SENT,
    STAGE_PROCESSING_SECONDS,
    SOURCE_BATCHES_IN_FLIGHT,
    STAGE_INPUT_LAG_SECONDS,
    WORKER_BUSY_SECONDS,
    PIPELINE_READY,
    MODEL_CACHE_HITS,
    MODEL_CACHE_MISSES,
    MODEL_LOAD_ERRORS,
    MODEL_LOAD_SECONDS,
    REGISTRY_ERRORS,
    MODELS_TRAINED,
    MODEL_PROMOTIONS,
    MODEL_TRAINING_SECONDS,
    ALERTS,
    TAP_ROWS_DROPPED,
    STAGE_COUNTER,
    PLUGIN_COUNTER,
];
/// Documents a sink sent to an external store, by outcome (counter; labels `stage`, `result`: `sent`,
/// `duplicate` — refused as already there, which counts as delivered —, `retried`, `rejected` — to the
/// dead letters).
pub const SINK_DOCUMENTS: &str = "dfp_sink_documents_total";
/// Time of one request of a sink to an external store, such as one Elasticsearch bulk request
/// (histogram, seconds; label `stage`).
pub const SINK_REQUEST_SECONDS: &str = "dfp_sink_request_seconds";
