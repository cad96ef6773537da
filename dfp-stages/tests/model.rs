//! The model on real-shaped data: encoding, determinism, artifacts, registry names, fallback, hot reload.

use std::sync::OnceLock;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::UInt64Type;
use dfp_core::models::ModelRegistry;
use dfp_core::{Pipeline, RunOptions};
use dfp_stages::model::artifact::{LossStats, StatsMode, MANIFEST, WEIGHTS};
use dfp_stages::model::{feature_set, model_name, train, FeatureEncoder, FeatureOptions, Model, TrainConfig};
use dfp_stages::registry::LocalRegistry;
use dfp_stages::store::S3Options;
use serde_json::json;
use tch::Device;

/// The built-in Azure log family.
fn azure() -> std::sync::Arc<dfp_core::Family> {
    dfp_stages::link();
    dfp_core::Registry::global().families().get("azure").expect("built in").clone()
}

/// Normalized + featured rows of the shipped Azure sample (training period).
fn features() -> &'static RecordBatch {
    static ROWS: OnceLock<RecordBatch> = OnceLock::new();
    ROWS.get_or_init(|| {
        dfp_stages::link();
        let yaml = r#"
version: 1
family: azure
stages:
  logs:     { type: file-source, path: ../examples/data/azure/train, raw: true }
  events:   { type: normalize-azure, inputs: [logs] }
  features: { type: features, inputs: [events] }
  out:      { type: embedded-output, inputs: [features] }
"#;
        let running = Pipeline::from_yaml_str(yaml, "test.yaml", &[]).unwrap().spawn(RunOptions::default()).unwrap();
        let out = running.output().clone();
        running.finish().unwrap();
        let batches: Vec<RecordBatch> = out.try_iter().map(|b| b.data).collect();
        concat_batches(&batches[0].schema(), &batches).unwrap()
    })
}

fn quick() -> TrainConfig {
    serde_json::from_value(json!({"epochs": 3, "seed": 7})).unwrap()
}

fn user_rows(user: &str) -> RecordBatch {
    let all = features();
    let users = all.column_by_name("username").unwrap().as_string::<i32>();
    let keep: arrow::array::BooleanArray = users.iter().map(|u| Some(u == Some(user))).collect();
    arrow::compute::filter_record_batch(all, &keep).unwrap()
}

#[test]
fn encoding_round_trips_through_the_manifest() {
    let defs = feature_set(&azure(), &FeatureOptions::default());
    let enc = FeatureEncoder::fit(&defs, features()).unwrap();
    let stored: Vec<_> = serde_json::from_value(serde_json::to_value(&enc.features).unwrap()).unwrap();
    let back = FeatureEncoder::with_features(stored);
    assert_eq!(enc.encode(features()).unwrap(), back.encode(features()).unwrap());
    // Scaled numerics have mean 0 and standard deviation 1 on the training rows.
    let e = enc.encode(features()).unwrap();
    let (nn, _, nc) = enc.shape();
    for j in 0..nn {
        let col: Vec<f64> = (0..e.rows).map(|r| f64::from(e.numeric[r * nn + j])).collect();
        if col.iter().all(|v| *v == 0.0) {
            continue; // a constant feature (e.g. one location all along) scales to 0
        }
        let mean = col.iter().sum::<f64>() / col.len() as f64;
        let sd = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64).sqrt();
        assert!(mean.abs() < 1e-4 && (sd - 1.0).abs() < 1e-3, "feature {j}: mean {mean}, sd {sd}");
    }
    // Every training category is known (index ≥ 1); an unseen value falls into "other" (0).
    assert!(e.categorical.iter().all(|c| *c >= 1));
    let mut unseen = features().slice(0, 1);
    let cols: Vec<_> = unseen
        .schema()
        .fields()
        .iter()
        .zip(unseen.columns())
        .map(|(f, c)| {
            if f.name() == "appDisplayName" {
                std::sync::Arc::new(arrow::array::StringArray::from(vec!["Never Seen App"])) as _
            } else {
                c.clone()
            }
        })
        .collect();
    unseen = RecordBatch::try_new(unseen.schema(), cols).unwrap();
    let app = enc
        .features
        .iter()
        .filter(|f| f.def.kind == dfp_stages::model::FeatureKind::Categorical)
        .position(|f| f.def.name == "appDisplayName")
        .unwrap();
    assert_eq!(enc.encode(&unseen).unwrap().categorical[app], 0);
    assert!(nc >= 6);
}

#[test]
fn loss_statistics_by_hand() {
    let rows = vec![vec![1.0, 10.0], vec![3.0, 10.0], vec![5.0, 40.0]];
    let s = LossStats::compute(&rows, 2, StatsMode::Training);
    assert_eq!(s.center, vec![3.0, 20.0]);
    assert!((s.scale[0] - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
    let r = LossStats::compute(&rows, 2, StatsMode::Robust);
    assert_eq!(r.center, vec![3.0, 10.0]);
    // MAD of [1,3,5] around 3 is 2; of [10,10,40] around 10 is 0 → floored.
    assert!((r.scale[0] - 2.0 * 1.4826).abs() < 1e-12);
    assert_eq!(r.scale[1], 1e-6);
}

#[test]
fn scores_are_z_scores_of_the_per_feature_losses() {
    let rows = user_rows("kenji.lopez@contoso.com");
    let defs = feature_set(&azure(), &FeatureOptions::default());
    let model = train("m", &defs, &rows, &quick(), Device::Cpu).unwrap();
    let scores = model.score(&rows).unwrap();
    let stats = &model.manifest.loss_stats;
    // With training statistics, the z-scores of the training rows average 0 per feature and have sd 1.
    let n = rows.num_rows() - model.manifest.training.validation_rows;
    for j in 0..scores.features.len() {
        let col: Vec<f64> = scores.z[..n].iter().map(|r| f64::from(r[j])).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let sd = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        if stats.scale[j] > 1e-5 {
            assert!(mean.abs() < 1e-3 && (sd - 1.0).abs() < 1e-3, "{}: mean {mean} sd {sd}", scores.features[j]);
        }
    }
    for (i, z) in scores.z.iter().enumerate() {
        let abs: Vec<f64> = z.iter().map(|v| f64::from(v.abs())).collect();
        assert!((scores.mean_abs_z[i] - abs.iter().sum::<f64>() / abs.len() as f64).abs() < 1e-9);
        assert!((scores.max_abs_z[i] - abs.iter().cloned().fold(0.0, f64::max)).abs() < 1e-9);
    }
    // `positive`: the same z-scores, only the part above normal is summarised.
    let pos = model.score_with(&rows, dfp_stages::model::artifact::ZMode::Positive).unwrap();
    assert_eq!(pos.z, scores.z);
    for (i, z) in pos.z.iter().enumerate() {
        let above: Vec<f64> = z.iter().map(|v| f64::from(v.max(0.0))).collect();
        assert!((pos.mean_abs_z[i] - above.iter().sum::<f64>() / above.len() as f64).abs() < 1e-9);
        assert!(pos.mean_abs_z[i] <= scores.mean_abs_z[i] + 1e-12);
    }
}

#[test]
fn training_is_deterministic_and_artifacts_round_trip() {
    let rows = user_rows("quinn.johnson@contoso.com");
    let defs = feature_set(&azure(), &FeatureOptions::default());
    let a = train("DFP-azure-quinn", &defs, &rows, &quick(), Device::Cpu).unwrap();
    let b = train("DFP-azure-quinn", &defs, &rows, &quick(), Device::Cpu).unwrap();
    let fa = a.to_files().unwrap();
    let fb = b.to_files().unwrap();
    assert_eq!(fa[0].1, fb[0].1, "same seed, same weights");
    assert_eq!(a.score(&rows).unwrap(), b.score(&rows).unwrap());
    let mut other = quick();
    other.seed = 8;
    let c = train("DFP-azure-quinn", &defs, &rows, &other, Device::Cpu).unwrap();
    assert_ne!(c.to_files().unwrap()[0].1, fa[0].1, "another seed, other weights");
    // Save → load gives identical scores.
    let weights = &fa.iter().find(|f| f.0 == WEIGHTS).unwrap().1;
    let manifest = &fa.iter().find(|f| f.0 == MANIFEST).unwrap().1;
    let loaded = Model::from_files("DFP-azure-quinn", manifest, weights, Device::Cpu).unwrap();
    assert_eq!(loaded.score(&rows).unwrap(), a.score(&rows).unwrap());
    assert_eq!(loaded.manifest, a.manifest);
    // A damaged weights file is refused, naming the model and the file.
    for damaged in [&weights[..weights.len() / 2], &weights[..4]] {
        let err = Model::from_files("DFP-azure-quinn", manifest, damaged, Device::Cpu).err().expect("refused");
        let text = err.to_string();
        assert!(text.contains("DFP-azure-quinn") && text.contains(WEIGHTS), "{text}");
    }
}

#[test]
fn bf16_scoring_stays_close_to_f32_for_every_batch_size() {
    let rows = user_rows("quinn.johnson@contoso.com");
    let defs = feature_set(&azure(), &FeatureOptions::default());
    let f32_model = train("DFP-azure-quinn", &defs, &rows, &quick(), Device::Cpu).unwrap();
    let files = f32_model.to_files().unwrap();
    let weights = &files.iter().find(|f| f.0 == WEIGHTS).unwrap().1;
    let manifest = &files.iter().find(|f| f.0 == MANIFEST).unwrap().1;
    let mut bf16 = Model::from_files("DFP-azure-quinn", manifest, weights, Device::Cpu).unwrap();
    bf16.to_bf16();
    // 1 and 16 rows need no padding; 17, 45 and all rows are padded to a bucket size and cut back.
    for n in [1, 16, 17, 45, rows.num_rows()] {
        let part = rows.slice(0, n.min(rows.num_rows()));
        let a = f32_model.score(&part).unwrap();
        let b = bf16.score(&part).unwrap();
        assert_eq!(b.mean_abs_z.len(), part.num_rows());
        assert_ne!(a, b, "bf16 really ran ({n} rows)");
        for (x, y) in a.mean_abs_z.iter().zip(&b.mean_abs_z) {
            assert!((x - y).abs() <= 0.05 * x.abs().max(1.0), "{n} rows: f32 {x} vs bf16 {y}");
        }
    }
}

#[test]
fn a_model_for_other_features_is_refused_clearly() {
    let rows = user_rows("quinn.johnson@contoso.com");
    let defs = feature_set(&azure(), &FeatureOptions::default());
    let model = train("DFP-azure-quinn", &defs, &rows, &quick(), Device::Cpu).unwrap();
    let with_novelty = feature_set(&azure(), &FeatureOptions { novelty: true, ..FeatureOptions::default() });
    let err = model.check_features(&with_novelty).unwrap_err().to_string();
    assert!(err.contains("DFP-azure-quinn does not fit this pipeline") && err.contains("new_app"), "{err}");
    assert!(model.check_features(&defs).is_ok());
}

fn publish(reg: &LocalRegistry, user: Option<&str>, rows: &RecordBatch, seed: u64) -> u64 {
    let defs = feature_set(&azure(), &FeatureOptions::default());
    let mut cfg = quick();
    cfg.seed = seed;
    let name = model_name(&azure(), user);
    let model = train(&name, &defs, rows, &cfg, Device::Cpu).unwrap();
    reg.publish(&name, &model.to_files().unwrap()).unwrap()
}

/// Scores `rows` through an embedded pipeline with extra `score` settings; id → (mean_abs_z, model).
fn score_all(location: &str, rows: &RecordBatch, extra: &str) -> std::collections::BTreeMap<String, (f64, String)> {
    score_all_by(location, rows, extra, rows.num_rows())
}

/// Scores `rows` pushed in batches of `by` rows; each row's `mean_abs_z` and model by event id.
fn score_all_by(
    location: &str,
    rows: &RecordBatch,
    extra: &str,
    by: usize,
) -> std::collections::BTreeMap<String, (f64, String)> {
    let yaml = format!(
        r#"
version: 1
runtime: {{ workers: 2 }}
stages:
  in:     {{ type: embedded-input }}
  scored: {{ type: score, inputs: [in], registry: "{location}", family: azure{extra} }}
  out:    {{ type: embedded-output, inputs: [scored] }}
"#
    );
    let running = Pipeline::from_yaml_str(&yaml, "score.yaml", &[]).unwrap().spawn(RunOptions::default()).unwrap();
    for at in (0..rows.num_rows()).step_by(by.max(1)) {
        running.input().push_batch(rows.slice(at, by.min(rows.num_rows() - at))).unwrap();
    }
    let out = running.output().clone();
    running.finish().unwrap();
    let mut scored = std::collections::BTreeMap::new();
    let mut n = 0;
    for b in out.try_iter() {
        let d = &b.data;
        let ids = d.column_by_name("id").unwrap().as_string::<i32>();
        let z = d.column_by_name("mean_abs_z").unwrap().as_primitive::<arrow::datatypes::Float64Type>();
        let models = d.column_by_name("model_name").unwrap().as_string::<i32>();
        for i in 0..d.num_rows() {
            scored.insert(ids.value(i).to_string(), (z.value(i), models.value(i).to_string()));
            n += 1;
        }
    }
    assert_eq!(n, scored.len(), "an id came out twice");
    scored
}

#[test]
fn scoring_in_small_pieces_gives_the_same_rows_as_one_piece() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap().to_string();
    let reg = LocalRegistry::open(&location, &S3Options::default()).unwrap();
    for user in ["kenji.lopez@contoso.com", "quinn.johnson@contoso.com"] {
        publish(&reg, Some(user), &user_rows(user), 1);
    }
    publish(&reg, None, features(), 1);
    let all = features();
    let whole = score_all(&location, all, ", piece_rows: 1000000");
    let pieces = score_all(&location, all, ", piece_rows: 50");
    // Batches of three rows scored one by one: a user's model sees one to three rows at a time, where the
    // CPU kernels take another path than for many rows; the scores must still be the same to the last bit.
    let tiny = score_all_by(&location, all, ", gather_rows: 1", 3);
    assert_eq!(whole.len(), all.num_rows(), "every row scored once");
    assert_eq!(pieces, whole, "same scores and models, piece by piece");
    assert_eq!(tiny, whole, "same scores and models, three rows at a time");
    let users: std::collections::BTreeSet<&str> = whole.values().map(|v| v.1.as_str()).collect();
    assert_eq!(users.len(), 3, "both users' models and the generic one were used: {users:?}");
}

#[test]
fn scoring_uses_the_users_model_falls_back_to_generic_and_picks_up_new_versions() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap().to_string();
    let reg = LocalRegistry::open(&location, &S3Options::default()).unwrap();
    let kenji = "kenji.lopez@contoso.com";
    publish(&reg, Some(kenji), &user_rows(kenji), 1);
    publish(&reg, None, features(), 1);
    // The e-mail user's model is stored under its escaped name and found again by the scorer.
    assert!(reg.latest(&model_name(&azure(), Some(kenji))).unwrap() == Some(1));

    let yaml = format!(
        r#"
version: 1
runtime: {{ workers: 2 }}
stages:
  in:     {{ type: embedded-input }}
  scored: {{ type: score, inputs: [in], registry: "{location}", family: azure, cache_ttl_secs: 0 }}
  out:    {{ type: embedded-output, inputs: [scored] }}
"#
    );
    let running = Pipeline::from_yaml_str(&yaml, "score.yaml", &[]).unwrap().spawn(RunOptions::default()).unwrap();
    let collect = |running: &dfp_core::RunningPipeline, want: usize| -> Vec<(String, String, u64, String)> {
        let mut out = Vec::new();
        while out.len() < want {
            let b = running.output().recv_timeout(std::time::Duration::from_secs(60)).expect("scored rows");
            let d = &b.data;
            let users = d.column_by_name("username").unwrap().as_string::<i32>();
            let kinds = d.column_by_name("model_kind").unwrap().as_string::<i32>();
            let versions = d.column_by_name("model_version").unwrap().as_primitive::<UInt64Type>();
            let ids = d.column_by_name("id").unwrap().as_string::<i32>();
            for i in 0..d.num_rows() {
                out.push((users.value(i).into(), kinds.value(i).into(), versions.value(i), ids.value(i).into()));
            }
        }
        out
    };
    let all = features();
    running.input().push_batch(all.clone()).unwrap();
    let first = collect(&running, all.num_rows());
    let mut ids: Vec<&str> = first.iter().map(|r| r.3.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.num_rows(), "every input row scored exactly once");
    for (user, kind, version, _) in &first {
        let expected = if user == kenji { "user" } else { "generic" };
        assert_eq!((kind.as_str(), *version), (expected, 1), "{user}");
    }
    // A new version of kenji's model appears while the pipeline runs.
    assert_eq!(publish(&reg, Some(kenji), &user_rows(kenji), 2), 2);
    running.input().push_batch(user_rows(kenji)).unwrap();
    let second = collect(&running, user_rows(kenji).num_rows());
    assert!(second.iter().all(|(_, kind, version, _)| kind == "user" && *version == 2), "{:?}", &second[..1]);
    running.finish().unwrap();
}

#[test]
fn gathered_rows_leave_at_their_own_time_as_soon_as_the_input_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap().to_string();
    let reg = LocalRegistry::open(&location, &S3Options::default()).unwrap();
    publish(&reg, None, features(), 1);
    // Gathering would wait ten minutes: the rows come out because no input follows them.
    let yaml = format!(
        r#"
version: 1
stages:
  in:     {{ type: embedded-input }}
  scored: {{ type: score, inputs: [in], registry: "{location}", family: azure, gather_ms: 600000, gather_idle_ms: 300 }}
  out:    {{ type: embedded-output, inputs: [scored] }}
"#
    );
    let running = Pipeline::from_yaml_str(&yaml, "score.yaml", &[]).unwrap().spawn(RunOptions::default()).unwrap();
    let all = features();
    let half = all.num_rows() / 2;
    // Two pushes, two logical times, within the idle time: gathered and scored together.
    running.input().push_batch(all.slice(0, half)).unwrap();
    running.input().push_batch(all.slice(half, all.num_rows() - half)).unwrap();
    let first_ids: std::collections::BTreeSet<String> = {
        let ids = all.column_by_name("id").unwrap().as_string::<i32>();
        (0..half).map(|i| ids.value(i).to_string()).collect()
    };
    let mut seen = 0;
    let mut times: std::collections::BTreeMap<bool, std::collections::BTreeSet<u64>> = Default::default();
    while seen < all.num_rows() {
        let b = running
            .output()
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("scored rows long before gather_ms: the input paused");
        let ids = b.data.column_by_name("id").unwrap().as_string::<i32>();
        let from_first: std::collections::BTreeSet<bool> =
            (0..b.num_rows()).map(|i| first_ids.contains(ids.value(i))).collect();
        assert_eq!(from_first.len(), 1, "a batch holds the rows of one push");
        let time = b.envelope.time.expect("a logical time");
        times.entry(*from_first.first().unwrap()).or_default().insert(time);
        seen += b.num_rows();
    }
    let (first, second) = (&times[&true], &times[&false]);
    assert!(first.len() == 1 && second.len() == 1, "each push's rows at one time: {times:?}");
    assert!(first.first() < second.first(), "each at its own, in order: {times:?}");
    running.finish().unwrap();
}

#[test]
fn warm_start_continues_from_the_previous_version() {
    let rows = user_rows("kenji.lopez@contoso.com");
    let defs = feature_set(&azure(), &FeatureOptions::default());
    let cfg = |epochs: usize| -> TrainConfig {
        serde_json::from_value(json!({"epochs": epochs, "seed": 3, "optimizer": "adam", "lr": 0.003})).unwrap()
    };
    let v1 = train("m", &defs, &rows, &cfg(6), Device::Cpu).unwrap();
    let fresh = train("m", &defs, &rows, &cfg(1), Device::Cpu).unwrap();
    let warm = dfp_stages::model::train_from("m", &defs, &rows, &cfg(1), Device::Cpu, Some(&v1)).unwrap();
    // The previous encoding is kept, and training starts where version 1 ended.
    assert_eq!(warm.manifest.features, v1.manifest.features);
    let first = |m: &Model| m.manifest.training.loss_history[0].0;
    let last_v1 = v1.manifest.training.loss_history.last().unwrap().0;
    assert!(first(&warm) < first(&fresh), "warm {} vs fresh {}", first(&warm), first(&fresh));
    assert!((first(&warm) - last_v1).abs() < (first(&fresh) - last_v1).abs());
}
