//! Training one model on a set of rows.

use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{lexsort_to_indices, sort_to_indices, take_record_batch, SortColumn};
use arrow::datatypes::TimestampMicrosecondType;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

use super::artifact::{LossStats, Manifest, Model, TrainingInfo};
use super::config::{Optimizer, StatsMode, TrainConfig};
use super::encode::{Encoded, FeatureEncoder};
use super::net::{row_losses, Architecture, Net};
use super::FeatureDef;

/// Why a model could not be trained.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The rows cannot be encoded.
    #[error(transparent)]
    Encode(#[from] super::encode::EncodeError),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Arrow failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Nothing to train on.
    #[error("no rows to train on")]
    Empty,
}

/// Rows `idx` of an encoded set, with swap noise applied to the inputs when `swap` > 0.
fn gather(e: &Encoded, idx: &[usize], swap: f64, rng: &mut ChaCha8Rng) -> (Encoded, Encoded) {
    let (nn, nb, nc) =
        (e.numeric.len() / e.rows.max(1), e.binary.len() / e.rows.max(1), e.categorical.len() / e.rows.max(1));
    let mut target = Encoded { rows: idx.len(), ..Default::default() };
    for &r in idx {
        target.numeric.extend_from_slice(&e.numeric[r * nn..(r + 1) * nn]);
        target.binary.extend_from_slice(&e.binary[r * nb..(r + 1) * nb]);
        target.categorical.extend_from_slice(&e.categorical[r * nc..(r + 1) * nc]);
    }
    let mut noisy = target.clone();
    if swap > 0.0 && idx.len() > 1 {
        let n = idx.len();
        for r in 0..n {
            for j in 0..nn {
                if rng.random_bool(swap) {
                    noisy.numeric[r * nn + j] = target.numeric[rng.random_range(0..n) * nn + j];
                }
            }
            for j in 0..nb {
                if rng.random_bool(swap) {
                    noisy.binary[r * nb + j] = target.binary[rng.random_range(0..n) * nb + j];
                }
            }
            for j in 0..nc {
                if rng.random_bool(swap) {
                    noisy.categorical[r * nc + j] = target.categorical[rng.random_range(0..n) * nc + j];
                }
            }
        }
    }
    (noisy, target)
}

/// Mean per-feature loss over rows, then the mean over features (every feature weighs the same).
fn objective(net: &Net, noisy: &Encoded, target: &Encoded) -> Tensor {
    let (n_in, b_in, c_in) = net.inputs(noisy);
    let (n_t, b_t, c_t) = net.inputs(target);
    let out = net.forward(&n_in, &b_in, &c_in);
    net.losses(&out, &n_t, &b_t, &c_t).mean_dim(0, false, Kind::Float).mean(Kind::Float)
}

/// Trains a model on `rows` (which must hold a `timestamp` column and the feature columns).
pub fn train(
    name: &str,
    features: &[FeatureDef],
    rows: &RecordBatch,
    config: &TrainConfig,
    device: Device,
) -> Result<Model, TrainError> {
    train_from(name, features, rows, config, device, None)
}

/// Trains a model, optionally fine-tuning `previous` (a version of the same model): its encoding
/// (vocabularies, scalers) and weights are the starting point, so values new since then fall into the
/// "other" category until a full retraining.
pub fn train_from(
    name: &str,
    features: &[FeatureDef],
    rows: &RecordBatch,
    config: &TrainConfig,
    device: Device,
    previous: Option<&Model>,
) -> Result<Model, TrainError> {
    if rows.num_rows() == 0 {
        return Err(TrainError::Empty);
    }
    let started = Instant::now();
    // Oldest first, so that the validation slice is the most recent rows. Events of the same time are
    // ordered by id, so the model does not depend on the order rows arrived in (which varies with how
    // workers' batches interleave).
    let ts = rows
        .column_by_name("timestamp")
        .ok_or_else(|| super::encode::EncodeError::MissingColumn("timestamp".into()))?;
    let order = match rows.column_by_name("id") {
        Some(id) => lexsort_to_indices(
            &[SortColumn { values: ts.clone(), options: None }, SortColumn { values: id.clone(), options: None }],
            None,
        )?,
        None => sort_to_indices(ts, None, None)?,
    };
    let rows = take_record_batch(rows, &order)?;
    let times =
        rows.column_by_name("timestamp").and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned());
    let (start, end) = times
        .as_ref()
        .map(|t| (t.iter().flatten().min().unwrap_or(0), t.iter().flatten().max().unwrap_or(0)))
        .unwrap_or((0, 0));

    let encoder = match previous {
        Some(p) => FeatureEncoder::with_features(p.manifest.features.clone()),
        None => FeatureEncoder::fit(features, &rows)?,
    };
    let encoded = encoder.encode(&rows)?;
    let n = encoded.rows;
    let n_val = if n >= 20 { ((n as f64) * config.validation_fraction).round() as usize } else { 0 };
    let n_train = n - n_val;
    let (nn, nb, _) = encoder.shape();
    let arch = Architecture {
        numeric: nn,
        binary: nb,
        cardinalities: encoder.cardinalities(),
        encoder: config.encoder_layers.clone(),
        decoder: config.decoder_layers.clone(),
    };
    let seed = config.seed ^ dfp_core::hash::stable_hash(name.as_bytes());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vs = nn::VarStore::new(device);
    let arch = previous.map_or(arch, |p| p.manifest.architecture.clone());
    let mut net = Net::new(&vs, &arch, &mut rng);
    if let Some(p) = previous {
        // Start from the previous version's weights.
        let old = p.vs.variables();
        tch::no_grad(|| {
            for (k, mut v) in vs.variables() {
                if let Some(w) = old.get(&k) {
                    v.copy_(&w.to_device(device));
                }
            }
        });
    }
    let mut opt = match config.optimizer {
        Optimizer::Sgd => nn::Sgd::default().build(&vs, config.lr)?,
        Optimizer::Adam => nn::Adam::default().build(&vs, config.lr)?,
    };
    let train_idx: Vec<usize> = (0..n_train).collect();
    let val_idx: Vec<usize> = (n_train..n).collect();
    let (_, val_set) = gather(&encoded, &val_idx, 0.0, &mut rng);
    let mut lr = config.lr;
    let mut best: Option<(f64, Vec<(String, Tensor)>)> = None;
    let mut since_best = 0;
    let mut history = Vec::new();
    let mut epochs_run = 0;
    for _epoch in 0..config.epochs {
        epochs_run += 1;
        let mut idx = train_idx.clone();
        idx.shuffle(&mut rng);
        let mut total = 0.0;
        let mut steps = 0;
        for chunk in idx.chunks(config.batch_size.max(1)) {
            let (noisy, target) = gather(&encoded, chunk, config.swap_noise, &mut rng);
            let loss = objective(&net, &noisy, &target);
            opt.backward_step(&loss);
            total += loss.double_value(&[]);
            steps += 1;
        }
        let train_loss = total / steps.max(1) as f64;
        let val_loss =
            if n_val > 0 { tch::no_grad(|| objective(&net, &val_set, &val_set).double_value(&[])) } else { train_loss };
        history.push((train_loss, val_loss));
        let improved = best.as_ref().is_none_or(|(b, _)| val_loss < *b - 1e-6);
        if improved {
            let snapshot = vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
            best = Some((val_loss, snapshot));
            since_best = 0;
        } else {
            since_best += 1;
            if n_val > 0 && since_best >= config.patience {
                break;
            }
        }
        lr *= config.lr_decay;
        opt.set_lr(lr);
    }
    // Keep the weights of the best validation epoch.
    if let Some((_, snapshot)) = &best {
        let vars = vs.variables();
        tch::no_grad(|| {
            for (k, v) in snapshot {
                if let Some(mut var) = vars.get(k).map(Tensor::shallow_clone) {
                    var.copy_(v);
                }
            }
        });
    }
    // From here on the weights are final: score as the artifact will.
    net.merge_heads();
    let (_, train_set) = gather(&encoded, &train_idx, 0.0, &mut rng);
    let stats_rows = match config.stats {
        StatsMode::Validation if n_val >= 10 => row_losses(&net, &val_set),
        _ => row_losses(&net, &train_set),
    };
    let stats = LossStats::compute(&stats_rows, encoder.features.len(), config.stats);
    let manifest = Manifest::new(
        name,
        &encoder,
        arch,
        stats,
        config.clone(),
        TrainingInfo {
            start_micros: start,
            end_micros: end,
            rows: n,
            validation_rows: n_val,
            epochs_run,
            train_loss: history.last().map_or(0.0, |h| h.0),
            validation_loss: best.as_ref().map_or(0.0, |b| b.0),
            loss_history: history,
            seconds: started.elapsed().as_secs_f64(),
            warm_start_from: None,
        },
    );
    Ok(Model { manifest, encoder, net, vs, calibration: Default::default(), groups: Default::default() })
}
