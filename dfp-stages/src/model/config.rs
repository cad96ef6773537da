//! The hyper-parameters of training (stored in every model's manifest).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Plain SGD (Morpheus).
    #[default]
    Sgd,
    /// Adam.
    Adam,
}

/// Hyper-parameters (defaults: Morpheus's dfencoder settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Most epochs (Morpheus: 100 for Azure, 30 for Duo).
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Stop after this many epochs without a better validation loss.
    #[serde(default = "d_patience")]
    pub patience: usize,
    /// Learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Learning-rate factor applied after every epoch.
    #[serde(default = "d_lr_decay")]
    pub lr_decay: f64,
    /// Rows per step.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Probability that an input cell is swapped with the same cell of another row.
    #[serde(default = "d_swap")]
    pub swap_noise: f64,
    /// Share of the most recent rows held out for early stopping and validation statistics.
    #[serde(default = "d_val")]
    pub validation_fraction: f64,
    /// `sgd` (Morpheus) or `adam`.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Where the z-score statistics come from: `training`, `validation` or `robust` (median/MAD).
    #[serde(default)]
    pub stats: StatsMode,
    /// Encoder hidden sizes.
    #[serde(default = "d_encoder")]
    pub encoder_layers: Vec<usize>,
    /// Decoder hidden sizes.
    #[serde(default = "d_decoder")]
    pub decoder_layers: Vec<usize>,
    /// Seed of every random choice.
    #[serde(default = "d_seed")]
    pub seed: u64,
}

fn d_epochs() -> usize {
    100
}
fn d_patience() -> usize {
    5
}
fn d_lr() -> f64 {
    1e-3
}
fn d_lr_decay() -> f64 {
    0.99
}
fn d_batch() -> usize {
    512
}
fn d_swap() -> f64 {
    0.2
}
fn d_val() -> f64 {
    0.15
}
fn d_encoder() -> Vec<usize> {
    vec![512, 500]
}
fn d_decoder() -> Vec<usize> {
    vec![512]
}
fn d_seed() -> u64 {
    42
}

impl Default for TrainConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

/// Where the z-score statistics come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatsMode {
    /// Mean and standard deviation of the training rows' losses (Morpheus).
    #[default]
    Training,
    /// Mean and standard deviation on the held-out (most recent) slice.
    Validation,
    /// Median and MAD·1.4826 of the training rows' losses (robust to outliers in training data).
    Robust,
}
