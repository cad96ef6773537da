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
pub mod config;
pub mod encode;
pub mod net;
pub(crate) mod onednn;
pub mod peers;
pub(crate) mod pool;
pub mod train;

use dfp_core::Family;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use artifact::{Manifest, Model, ModelKind, UserStats};
pub use config::TrainConfig;
pub use encode::{Encoded, FeatureEncoder};
pub use onednn::{f32_policy, F32Policy};
pub use train::{train, train_from};

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
                // Kept for good: its symbols give each worker a stream of its own (`cuda::worker_stream`).
                let _ = cuda::BACKEND.set(lib);
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

/// A CUDA stream per worker thread, so that workers scoring on one GPU do not queue behind each other on
/// libtorch's default stream (the H200 measurements in docs/models.md: 16 workers on one stream lost to
/// the CPU).
#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use std::os::raw::{c_int, c_uint, c_void};
    use std::sync::OnceLock;

    /// `libtorch_cuda.so`, once loaded (its dependencies include the CUDA runtime).
    pub(super) static BACKEND: OnceLock<libloading::Library> = OnceLock::new();

    /// `cudaStreamCreateWithFlags(cudaStream_t*, unsigned int) -> cudaError_t`.
    type CreateStream = unsafe extern "C" fn(*mut *mut c_void, c_uint) -> c_int;
    /// `aoti_torch_create_cuda_stream_guard(void* stream, int32_t device, CUDAStreamGuardHandle*)`.
    type CreateGuard = unsafe extern "C" fn(*mut c_void, i32, *mut *mut c_void) -> i32;
    /// `aoti_torch_delete_cuda_stream_guard(CUDAStreamGuardHandle)`.
    type DeleteGuard = unsafe extern "C" fn(*mut c_void) -> i32;

    /// `cudaStreamNonBlocking`: the stream does not wait for the legacy default stream.
    const NON_BLOCKING: c_uint = 1;

    struct Api {
        create_stream: CreateStream,
        create_guard: CreateGuard,
        delete_guard: DeleteGuard,
    }

    fn api() -> Option<&'static Api> {
        static API: OnceLock<Option<Api>> = OnceLock::new();
        API.get_or_init(|| {
            let lib = BACKEND.get()?;
            // SAFETY: the names are the CUDA runtime's and libtorch 2.11's C functions (torch/csrc/inductor/
            // aoti_torch/c/shim.h), with the signatures the types above spell out; the library stays loaded.
            unsafe {
                Some(Api {
                    create_stream: *lib.get::<CreateStream>(b"cudaStreamCreateWithFlags\0").ok()?,
                    create_guard: *lib.get::<CreateGuard>(b"aoti_torch_create_cuda_stream_guard\0").ok()?,
                    delete_guard: *lib.get::<DeleteGuard>(b"aoti_torch_delete_cuda_stream_guard\0").ok()?,
                })
            }
        })
        .as_ref()
    }

    thread_local! {
        /// This thread's stream on device 0 (created at first use, kept for the thread's life).
        static STREAM: Option<usize> = api().and_then(|api| {
            let mut stream: *mut c_void = std::ptr::null_mut();
            // SAFETY: creates a stream into `stream`; a non-zero result leaves it unusable and is refused.
            let rc = unsafe { (api.create_stream)(&mut stream, NON_BLOCKING) };
            (rc == 0 && !stream.is_null()).then_some(stream as usize)
        });
    }

    /// While alive, libtorch's current stream on this thread (device `index`) is the thread's own.
    pub(crate) struct StreamGuard {
        guard: *mut c_void,
        delete: DeleteGuard,
    }

    impl Drop for StreamGuard {
        fn drop(&mut self) {
            // SAFETY: `guard` came from `aoti_torch_create_cuda_stream_guard` and is deleted once, here, on
            // the thread that made it; that restores the stream that was current before.
            unsafe { (self.delete)(self.guard) };
        }
    }

    /// Makes this worker's stream current for device `index` until the guard drops; `None` when the CUDA
    /// backend or its functions are missing (then the default stream is used, as before).
    pub(crate) fn worker_stream(index: usize) -> Option<StreamGuard> {
        let api = api()?;
        let stream = STREAM.with(|s| *s)?;
        let mut guard: *mut c_void = std::ptr::null_mut();
        // SAFETY: `stream` is a live stream of this thread (never destroyed); `guard` receives a new handle.
        let rc = unsafe { (api.create_guard)(stream as *mut c_void, index as i32, &mut guard) };
        (rc == 0 && !guard.is_null()).then_some(StreamGuard { guard, delete: api.delete_guard })
    }
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

/// Options beyond Morpheus's feature set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureOptions {
    /// Feed `ln(1 + x)` of the counters instead of the raw counts.
    #[serde(default)]
    pub log_counters: bool,
    /// Add the cross-day novelty features (`new_*`, `hours_since_prev`) as model inputs.
    #[serde(default)]
    pub novelty: bool,
    /// Add `new_values` as a model input: how many of the event's context values (app, country, city,
    /// browser, OS, device; not the IP prefix, which changes too often to mean much) the user has not shown
    /// within the history window. One number instead of one flag per value; it means something only when
    /// each user's history is known (user profiles), so train with `warmup_days`.
    #[serde(default)]
    pub novelty_count: bool,
    /// More numeric input columns, made by your own stages (for example the `geo_velocity_kmh` of the
    /// geo-velocity plugin); `ln(1 + x)`-scaled when `log_counters` is on. Training and scoring must list
    /// the same ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_numeric: Vec<String>,
    /// Morpheus's exact model inputs: `log_counters`, `novelty` and `novelty_count` are ignored (and the
    /// `train` stage's `warmup_days`), so one switch (the shipped pipelines' `morpheus` var) gives the
    /// reference feature set whatever the other options say. `extra_numeric` columns are still added.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub morpheus: bool,
}

impl FeatureOptions {
    /// The options in effect: all of dfp's additions off when `morpheus` is set.
    pub fn effective(&self) -> FeatureOptions {
        if self.morpheus {
            FeatureOptions { extra_numeric: self.extra_numeric.clone(), morpheus: true, ..Default::default() }
        } else {
            self.clone()
        }
    }
}

/// The model inputs of a log family: its feature list (for Azure and Duo, Morpheus's), plus the options.
/// Within each kind the order is the family's, which the model keeps.
pub fn feature_set(family: &Family, options: &FeatureOptions) -> Vec<FeatureDef> {
    let options = &options.effective();
    let def = |n: &str, kind: FeatureKind, log: bool| FeatureDef { name: n.into(), kind, log };
    let f = &family.features;
    let mut features: Vec<FeatureDef> = Vec::new();
    features.extend(f.categorical.iter().map(|n| def(n, FeatureKind::Categorical, false)));
    features.extend(f.binary.iter().map(|n| def(n, FeatureKind::Binary, false)));
    features.extend(f.numeric.iter().map(|n| def(n, FeatureKind::Numeric, options.log_counters)));
    if options.novelty {
        for (_, flag) in family.novelty() {
            if !features.iter().any(|d| d.name == flag) {
                features.push(def(flag, FeatureKind::Binary, false));
            }
        }
        if !features.iter().any(|d| d.name == "hours_since_prev") {
            features.push(def("hours_since_prev", FeatureKind::Numeric, true));
        }
    }
    if options.novelty_count && !family.novelty().is_empty() && !features.iter().any(|d| d.name == "new_values") {
        features.push(def("new_values", FeatureKind::Numeric, false));
    }
    for n in &options.extra_numeric {
        if !features.iter().any(|d| &d.name == n) {
            features.push(def(n, FeatureKind::Numeric, options.log_counters));
        }
    }
    features
}

/// The embedding size dfencoder uses for a categorical feature with `n` categories.
pub fn embedding_dim(n: usize) -> i64 {
    ((1.6 * (n as f64).powf(0.56)).round() as i64).clamp(1, 600)
}

/// Longest escaped user id kept whole in a model name: with `DFP-<prefix>-` the name stays well inside
/// the 255 bytes a file name may have.
pub const MAX_ESCAPED_USER: usize = 160;

/// Escapes a user id for a model name: bytes other than `A-Z a-z 0-9 . _ - @ +` become `=XX` (hex). The
/// result is safe as a file name and an object-store key, and the same rule is used to write and to read,
/// so `alice@contoso.com` always finds `DFP-azure-alice@contoso.com` and `a/b` finds `DFP-azure-a=2Fb`.
///
/// An id whose escaped form is longer than [`MAX_ESCAPED_USER`] bytes keeps its first 120 escaped bytes
/// (cut before an escape) followed by `=~` and 16 hex digits of a stable 64-bit hash of the whole id: still
/// one name per id (two ids collide only if they share those 120 bytes and their hash), and no short id's
/// name looks like it, since an escaped `=` is otherwise always followed by two hex digits.
pub fn escape_user(user: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+') {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
    if out.len() > MAX_ESCAPED_USER {
        let mut cut = 120;
        // Never cut inside an `=XX` escape.
        while out.as_bytes()[cut - 1] == b'=' || (cut >= 2 && out.as_bytes()[cut - 2] == b'=') {
            cut -= 1;
        }
        out.truncate(cut);
        let _ = write!(out, "=~{:016x}", dfp_core::hash::stable_hash(user.as_bytes()));
    }
    out
}

/// The user part of the generic model's name. No user id escapes to it: an escaped `=` is always followed
/// by two hex digits.
pub const GENERIC: &str = "=generic";

/// The registry name of a peer group's model: `DFP-<model prefix>-=group-<escaped group>` (no user id
/// escapes to it, as for [`GENERIC`]).
pub fn group_model_name(family: &Family, group: &str) -> String {
    format!("DFP-{}{GROUP_INFIX}{}", family.model_prefix, escape_user(group))
}

/// What stands between the family's model prefix and a group's name in a group model's name.
pub const GROUP_INFIX: &str = "-=group-";

/// The registry name of a user's model in a family (`None`: the family's generic model):
/// `DFP-<model prefix>-<escaped user>`.
pub fn model_name(family: &Family, user: Option<&str>) -> String {
    match user {
        Some(u) => format!("DFP-{}-{}", family.model_prefix, escape_user(u)),
        None => format!("DFP-{}-{GENERIC}", family.model_prefix),
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

    fn family(name: &str) -> std::sync::Arc<Family> {
        dfp_core::Registry::global().families().get(name).expect("a built-in family").clone()
    }

    #[test]
    fn names_escape_users_and_keep_generic_apart() {
        let (azure, duo) = (family("azure"), family("duo"));
        assert_eq!(model_name(&azure, Some("alice@contoso.com")), "DFP-azure-alice@contoso.com");
        assert_eq!(model_name(&duo, Some("a b/c=%")), "DFP-duo-a=20b=2Fc=3D=25");
        assert_eq!(model_name(&azure, None), "DFP-azure-=generic");
        for tricky in ["=generic", "generic", "@generic"] {
            assert_ne!(model_name(&azure, Some(tricky)), model_name(&azure, None));
        }
    }

    #[test]
    fn long_user_ids_get_bounded_distinct_names() {
        let azure = family("azure");
        let a = "x".repeat(4000);
        let b = format!("{}y", "x".repeat(3999));
        let (na, nb) = (model_name(&azure, Some(&a)), model_name(&azure, Some(&b)));
        assert!(na.len() <= 160 && nb.len() <= 160, "{} {}", na.len(), nb.len());
        assert_ne!(na, nb, "same first bytes, different ids");
        assert_eq!(na, model_name(&azure, Some(&a)), "stable");
        assert!(na.contains("=~"));
        // Escapes are never cut in half, whatever the alignment.
        for pad in 0..3 {
            let odd = format!("{}{}", "a".repeat(pad), "/".repeat(300));
            let e = escape_user(&odd);
            let head = e.split("=~").next().unwrap();
            assert!(head.split('=').skip(1).all(|part| part.len() == 2), "{head}");
        }
        // An id just under the bound is kept whole.
        assert_eq!(escape_user(&"u".repeat(160)), "u".repeat(160));
    }

    #[test]
    fn feature_sets_follow_the_family_in_morpheus_order() {
        let names =
            |f: &Family, o: &FeatureOptions| -> Vec<String> { feature_set(f, o).into_iter().map(|d| d.name).collect() };
        let plain = FeatureOptions::default();
        assert_eq!(
            names(&family("azure"), &plain),
            [
                "appDisplayName",
                "clientAppUsed",
                "deviceDetailbrowser",
                "deviceDetaildisplayName",
                "deviceDetailoperatingSystem",
                "statusfailureReason",
                "appincrement",
                "locincrement",
                "logcount"
            ]
        );
        assert_eq!(
            names(&family("duo"), &plain),
            ["accessdevicebrowser", "accessdeviceos", "authdevicename", "reason", "result", "locincrement", "logcount"]
        );
        let novelty = FeatureOptions { novelty: true, ..Default::default() };
        let with = names(&family("duo"), &novelty);
        assert_eq!(with.len(), 7 + 7 + 1);
        assert_eq!(with.last().map(String::as_str), Some("hours_since_prev"));
        // One switch gives Morpheus's set back whatever else is on; the log scaling goes too.
        let all = FeatureOptions { novelty: true, novelty_count: true, log_counters: true, ..Default::default() };
        let morpheus = FeatureOptions { morpheus: true, ..all.clone() };
        assert_eq!(feature_set(&family("azure"), &morpheus), feature_set(&family("azure"), &plain));
        assert_ne!(feature_set(&family("azure"), &all), feature_set(&family("azure"), &plain));
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
