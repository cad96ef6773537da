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
    /// The libtorch device: `auto` is CUDA when [`cuda_available`], else the CPU; `cuda` without a usable
    /// GPU is an error saying why.
    pub fn device(self) -> Result<tch::Device, String> {
        match self {
            DeviceChoice::Auto => Ok(if cuda_available() { tch::Device::Cuda(0) } else { tch::Device::Cpu }),
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Cuda => match cuda_status() {
                Ok(()) => Ok(tch::Device::Cuda(0)),
                Err(why) => Err(format!("device: cuda was asked for but {why}")),
            },
        }
    }
}

/// Sets libtorch's intra-op thread count for this process (the stages use one thread per worker).
pub fn set_torch_threads(n: i32) {
    tch::set_num_threads(n);
}

/// Whether models can run on a GPU: dfp was built with the `cuda` feature, libtorch's CUDA backend
/// (`libtorch_cuda.so` and the NVIDIA libraries) loads, and libtorch sees a device.
pub fn cuda_available() -> bool {
    cuda_status().is_ok()
}

/// [`cuda_available`], with the reason when not.
pub fn cuda_status() -> Result<(), String> {
    static STATUS: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    STATUS
        .get_or_init(|| {
            load_cuda_backend()?;
            if tch::Cuda::is_available() {
                tracing::debug!(devices = tch::Cuda::device_count(), "libtorch sees CUDA");
                Ok(())
            } else {
                Err("libtorch's CUDA backend loaded but it sees no GPU".to_string())
            }
        })
        .clone()
}

/// Loads `libtorch_cuda.so` once so that its CUDA kernels register with libtorch. The binary links only
/// libtorch's CPU library, so the same build runs on machines without the NVIDIA libraries.
#[cfg(feature = "cuda")]
fn load_cuda_backend() -> Result<(), String> {
    let mut tried = Vec::new();
    let mut candidates = vec![std::path::PathBuf::from("libtorch_cuda.so")];
    if let Ok(dir) = std::env::var("LIBTORCH") {
        candidates.push(std::path::Path::new(&dir).join("lib").join("libtorch_cuda.so"));
    }
    if let Some(dir) = option_env!("DFP_LIBTORCH_LIB") {
        candidates.push(std::path::Path::new(dir).join("libtorch_cuda.so"));
    }
    candidates.dedup();
    for path in candidates {
        // SAFETY: libtorch_cuda.so is libtorch's own library of the same version as the linked CPU
        // library; loading it only runs its registration constructors. It stays loaded for good.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => {
                std::mem::forget(lib);
                tracing::debug!(path = %path.display(), "loaded libtorch's CUDA backend");
                return Ok(());
            }
            Err(e) => {
                let why = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
                tried.push(format!("{}: {why}", path.display()))
            }
        }
    }
    Err(format!("libtorch's CUDA backend could not be loaded ({})", tried.join("; ")))
}

#[cfg(not(feature = "cuda"))]
fn load_cuda_backend() -> Result<(), String> {
    Err("dfp was built without the `cuda` feature (cargo build --release --features cuda)".to_string())
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
    /// Okta System Log sign-ins (the `normalize-okta` plugin + `features` preset `azure`): the Azure
    /// feature set, models named `DFP-okta-…`.
    Okta,
}

impl Source {
    /// The name used in model names (`DFP-azure-…`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Azure => "azure",
            Source::Duo => "duo",
            Source::Okta => "okta",
        }
    }
}

/// Options beyond Morpheus's feature set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureOptions {
    /// Feed `ln(1 + x)` of the counters instead of the raw counts.
    #[serde(default)]
    pub log_counters: bool,
    /// Add the cross-day novelty features (`new_*`, `hours_since_prev`) as model inputs.
    #[serde(default)]
    pub novelty: bool,
    /// More numeric input columns, made by your own stages (for example the `geo_velocity_kmh` of the
    /// geo-velocity plugin); `ln(1 + x)`-scaled when `log_counters` is on. Training and scoring must list
    /// the same ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_numeric: Vec<String>,
}

/// The model inputs of a source: Morpheus's list, plus the options.
pub fn feature_set(source: Source, options: FeatureOptions) -> Vec<FeatureDef> {
    let cat = |n: &str| FeatureDef { name: n.into(), kind: FeatureKind::Categorical, log: false };
    let num = |n: &str| FeatureDef { name: n.into(), kind: FeatureKind::Numeric, log: options.log_counters };
    let bin = |n: &str| FeatureDef { name: n.into(), kind: FeatureKind::Binary, log: false };
    let mut features = match source {
        Source::Azure | Source::Okta => vec![
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
    for n in &options.extra_numeric {
        if !features.iter().any(|f| &f.name == n) {
            features.push(num(n));
        }
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

    #[test]
    fn device_choice_follows_cuda_availability() {
        assert_eq!(DeviceChoice::Cpu.device(), Ok(tch::Device::Cpu));
        match cuda_status() {
            Ok(()) => {
                assert_eq!(DeviceChoice::Auto.device(), Ok(tch::Device::Cuda(0)));
                assert_eq!(DeviceChoice::Cuda.device(), Ok(tch::Device::Cuda(0)));
            }
            Err(why) => {
                assert!(!why.is_empty());
                assert_eq!(DeviceChoice::Auto.device(), Ok(tch::Device::Cpu));
                let err = DeviceChoice::Cuda.device().expect_err("cuda without a GPU is an error");
                assert!(err.starts_with("device: cuda was asked for but "), "{err}");
                assert!(err.ends_with(&why), "{err}");
            }
        }
    }
}
