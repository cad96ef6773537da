//! The DFP model: per-feature encoding, the dfencoder-style autoencoder on libtorch, training, scoring
//! and the model artifact.
//!
//! Defaults follow Morpheus's dfencoder so that scores are comparable: categorical features become
//! embeddings of size `min(600, round(1.6·n^0.56))` (index 0 is the "other" bucket for unseen values),
//! numeric features are standard-scaled with stored mean/std, binary features are 0/1; an MLP
//! 512-500 (encoder) and 512 (decoder) with ReLU feeds one head per feature (MSE numeric, BCE binary,
//! cross-entropy categorical), every feature weighted equally. Training uses swap noise 0.2, SGD lr 1e-3
//! decayed ×0.99 per epoch, batch 512, the most recent 15 % as validation for early stopping. A row's
//! anomaly is the per-feature loss turned into a z-score with statistics from training (or the
//! validation slice, or median/MAD), summarised as `mean_abs_z` and `max_abs_z`.
//!
//! Everything random (weight initialisation, shuffling, swap noise) comes from a ChaCha generator seeded
//! per model, never from libtorch's global generator, so a model is the same whichever worker trains it
//! and whatever else trains at the same time (on CPU).

pub mod artifact;
pub mod encode;
pub mod net;
pub mod train;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use artifact::{Manifest, Model};
pub use encode::{Encoded, FeatureEncoder};
pub use train::{train, train_from, TrainConfig};

/// Where models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device.
    Cuda,
}

impl DeviceChoice {
    /// The libtorch device.
    pub fn device(self) -> tch::Device {
        match self {
            DeviceChoice::Auto => tch::Device::cuda_if_available(),
            DeviceChoice::Cpu => tch::Device::Cpu,
            DeviceChoice::Cuda => tch::Device::Cuda(0),
        }
    }
}

/// How a feature is fed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    /// A category (embedding in, cross-entropy out).
    Categorical,
    /// A number (standard-scaled, MSE).
    Numeric,
    /// True/false (0/1, binary cross-entropy).
    Binary,
}

/// A model input column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureDef {
    /// Column name.
    pub name: String,
    /// How it is encoded.
    pub kind: FeatureKind,
    /// Apply `ln(1 + x)` before scaling (numeric counters).
    #[serde(default)]
    pub log: bool,
}

/// The log families with built-in feature sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Azure AD sign-ins (`normalize-azure` + `features`).
    Azure,
    /// Duo authentications (`normalize-duo` + `features`).
    Duo,
}

impl Source {
    /// The name used in model names (`DFP-azure-…`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Azure => "azure",
            Source::Duo => "duo",
        }
    }
}

/// Options beyond Morpheus's feature set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureOptions {
    /// Feed `ln(1 + x)` of the counters instead of the raw counts.
    #[serde(default)]
    pub log_counters: bool,
    /// Add the cross-day novelty features (`new_*`, `hours_since_prev`) as model inputs.
    #[serde(default)]
    pub novelty: bool,
}

/// The model inputs of a source: Morpheus's list, plus the options.
pub fn feature_set(source: Source, options: FeatureOptions) -> Vec<FeatureDef> {
    let cat = |n: &str| FeatureDef { name: n.into(), kind: FeatureKind::Categorical, log: false };
    let num = |n: &str| FeatureDef { name: n.into(), kind: FeatureKind::Numeric, log: options.log_counters };
    let bin = |n: &str| FeatureDef { name: n.into(), kind: FeatureKind::Binary, log: false };
    let mut features = match source {
        Source::Azure => vec![
            cat("appDisplayName"),
            cat("clientAppUsed"),
            cat("deviceDetailbrowser"),
            cat("deviceDetaildisplayName"),
            cat("deviceDetailoperatingSystem"),
            cat("statusfailureReason"),
            num("appincrement"),
            num("locincrement"),
            num("logcount"),
        ],
        Source::Duo => vec![
            cat("accessdevicebrowser"),
            cat("accessdeviceos"),
            cat("authdevicename"),
            cat("reason"),
            bin("result"),
            num("locincrement"),
            num("logcount"),
        ],
    };
    if options.novelty {
        for n in ["new_app", "new_country", "new_city", "new_browser", "new_os", "new_device", "new_ip_prefix"] {
            features.push(bin(n));
        }
        features.push(FeatureDef { name: "hours_since_prev".into(), kind: FeatureKind::Numeric, log: true });
    }
    features
}

/// The embedding size dfencoder uses for a categorical feature with `n` categories.
pub fn embedding_dim(n: usize) -> i64 {
    ((1.6 * (n as f64).powf(0.56)).round() as i64).clamp(1, 600)
}

/// Escapes a user id for a model name: bytes other than `A-Z a-z 0-9 . _ - @ +` become `=XX` (hex). The
/// result is safe as a file name and an object-store key, and the same rule is used to write and to read,
/// so `alice@contoso.com` always finds `DFP-azure-alice@contoso.com` and `a/b` finds `DFP-azure-a=2Fb`.
pub fn escape_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The user part of the generic model's name. No user id escapes to it: an escaped `=` is always followed
/// by two hex digits.
pub const GENERIC: &str = "=generic";

/// The registry name of a user's model (`None`: the generic model).
pub fn model_name(source: Source, user: Option<&str>) -> String {
    match user {
        Some(u) => format!("DFP-{}-{}", source.as_str(), escape_user(u)),
        None => format!("DFP-{}-{GENERIC}", source.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_sizes_follow_dfencoder() {
        assert_eq!(embedding_dim(1), 2);
        assert_eq!(embedding_dim(10), 6);
        assert_eq!(embedding_dim(100), 21);
        assert_eq!(embedding_dim(100_000), 600);
    }

    #[test]
    fn names_escape_users_and_keep_generic_apart() {
        assert_eq!(model_name(Source::Azure, Some("alice@contoso.com")), "DFP-azure-alice@contoso.com");
        assert_eq!(model_name(Source::Duo, Some("a b/c=%")), "DFP-duo-a=20b=2Fc=3D=25");
        assert_eq!(model_name(Source::Azure, None), "DFP-azure-=generic");
        for tricky in ["=generic", "generic", "@generic"] {
            assert_ne!(model_name(Source::Azure, Some(tricky)), model_name(Source::Azure, None));
        }
    }
}
