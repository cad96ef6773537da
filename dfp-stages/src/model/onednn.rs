//! f32 linear layers for scoring and training through oneDNN instead of MKL.
//!
//! libtorch runs an f32 `linear` on the CPU through MKL's `sgemm`, which packs the weights again on every
//! call and, on AMD CPUs, takes its AVX2 path. oneDNN (inside the same libtorch) runs the same product with
//! its own kernels about twice as fast once a call has more than a few dozen rows (measured on a Zen 5
//! core: 512×500 at 128 rows, 233 against 110 GFLOP/s). libtorch reaches those kernels without a weight
//! reorder per call through `mkldnn::_linear_pointwise`, which its ahead-of-time C interface exports as
//! `aoti_torch_cpu__linear_pointwise`; a tch build has no binding for it, so it is looked up by name at
//! run time (absent from a libtorch built without oneDNN: then MKL is used).
//!
//! Rules:
//! - `_linear_pointwise` has no derivative: it serves scoring ([`linear`]). Training goes through
//!   `mkldnn_linear`, which has one but reorders the weights on every call ([`hidden_for_training`]).
//! - A row's result must not depend on the other rows of the call (an event scores the same to the last
//!   bit whether it comes alone or with others; the cluster test compares whole runs byte for byte).
//!   oneDNN chooses its kernel by shape, and on the machine this was built on a call of fewer than about
//!   100 rows rounds differently from a larger one. So callers pad calls to at least [`MIN_ROWS`] rows,
//!   and each layer shape is first checked on this machine ([`usable`]): the rows of calls of many sizes
//!   from [`MIN_ROWS`] up, at several offsets, must equal those of one large call, bit for bit. A shape
//!   that fails (or any error) is run through MKL, as before.
//! - Whether oneDNN is used is decided once per process ([`f32_policy`]). `DFP_ONEDNN=on` or `off` in the
//!   environment decides for scoring and training alike. `auto` (the default) trains through oneDNN
//!   wherever libtorch has it, and scores through it only on AMD CPUs of family 26 (Zen 5) and later: there
//!   a call runs twice as fast as MKL's, which repays padding small calls, and the bench ran 6–20 % faster
//!   end to end. On a Zen 4 (family 25, AVX-512 on half-width units) a call of 128 rows ran only as fast as
//!   MKL's, the padding cost more than the larger calls gained, and the bench ran 12–53 % slower (training,
//!   which pads nothing, still ran 4 % faster). Intel CPUs, where MKL takes its AVX-512 path, were not
//!   measured: `auto` scores through MKL there (docs/models.md).
//! - Results differ from MKL's in the last bits (the products add in another order): about 5e-6 relative
//!   on a layer, 1.5e-5 at most in `mean_abs_z` (2.7e-6 relative) on the benchmark (docs/models.md).

use std::collections::HashMap;
use std::os::raw::{c_char, c_void};
use std::sync::{Mutex, OnceLock};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

/// Fewest rows a oneDNN call runs on: smaller calls are padded to it (see the module's rules).
pub(crate) const MIN_ROWS: i64 = 128;

/// Fewest inputs and outputs of a layer run through oneDNN. The first layer (a few dozen inputs, a
/// different count per user) and the heads (a few dozen outputs) gain little, and each distinct shape costs
/// oneDNN a compiled kernel: they stay with MKL.
const BIG: i64 = 128;

/// `mkldnn::_linear_pointwise(X, W, B?, attr, scalars, algorithm) -> Tensor`, through libtorch's C interface.
type LinearPointwise = unsafe extern "C" fn(
    x: *mut C_tensor,
    w: *mut C_tensor,
    b: *mut *mut C_tensor,
    attr: *const c_char,
    scalars: *const *const f64,
    scalars_len: i64,
    algorithm: *const *const c_char,
    out: *mut *mut C_tensor,
) -> i32;

/// Where f32 layers on the CPU run in this process, and why: [`f32_policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct F32Policy {
    /// Scoring may run hidden layers through oneDNN (each layer shape still has to pass a check of its
    /// rounding on this machine).
    pub scoring: bool,
    /// Training runs hidden layers through oneDNN (when this libtorch has it).
    pub training: bool,
    /// Why, in words: `DFP_ONEDNN=off`, or `auto: AMD CPU family 25`.
    pub reason: String,
}

impl std::fmt::Display for F32Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |onednn: bool| if onednn { "oneDNN" } else { "MKL" };
        write!(f, "scoring through {}, training through {} ({})", name(self.scoring), name(self.training), self.reason)
    }
}

/// The process's choice: `DFP_ONEDNN` = `on` | `off` | `auto` (the default, also when unset or empty; `1`,
/// `true`, `yes` and `0`, `false`, `no` are taken as `on` and `off`, in any case). `auto`
/// trains through oneDNN and scores through it on AMD CPUs of family 26 and later only (see the module's
/// rules). An unknown value is reported once as a warning and taken as `auto`. Read once per process.
pub fn f32_policy() -> &'static F32Policy {
    static POLICY: OnceLock<F32Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let value = std::env::var("DFP_ONEDNN").unwrap_or_default();
        let policy = decide(&value, cpu());
        tracing::info!("f32 layers on the CPU: {policy}");
        policy
    })
}

/// [`f32_policy`] for a value of `DFP_ONEDNN` on a CPU of this `(vendor, family)`.
fn decide(value: &str, cpu: Option<(String, u32)>) -> F32Policy {
    let both = |onednn: bool, reason: &str| F32Policy { scoring: onednn, training: onednn, reason: reason.into() };
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "yes" => return both(true, "DFP_ONEDNN=on"),
        "off" | "0" | "false" | "no" => return both(false, "DFP_ONEDNN=off"),
        "" | "auto" => {}
        other => tracing::warn!("DFP_ONEDNN={other:?} is not on, off or auto; taking auto"),
    }
    let (scoring, reason) = match cpu {
        Some((vendor, family)) if vendor == "AuthenticAMD" => (family >= 26, format!("auto: AMD CPU family {family}")),
        Some((vendor, family)) => (false, format!("auto: {vendor} CPU family {family}")),
        None => (false, "auto: CPU not identified".to_string()),
    };
    F32Policy { scoring, training: true, reason }
}

/// The CPU's vendor string and family (base family plus extended family, as AMD and Intel define it).
#[cfg(target_arch = "x86_64")]
fn cpu() -> Option<(String, u32)> {
    use std::arch::x86_64::__cpuid;
    // CPUID leaves 0 and 1 exist on every x86-64 CPU.
    let (zero, one) = (__cpuid(0), __cpuid(1));
    let vendor: Vec<u8> = [zero.ebx, zero.edx, zero.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    let base = (one.eax >> 8) & 0xf;
    let family = if base == 0xf { base + ((one.eax >> 20) & 0xff) } else { base };
    Some((String::from_utf8_lossy(&vendor).into_owned(), family))
}

/// Not an x86-64 CPU: `auto` keeps MKL (or whatever libtorch's `linear` uses there).
#[cfg(not(target_arch = "x86_64"))]
fn cpu() -> Option<(String, u32)> {
    None
}

/// The function, when this libtorch exports it.
fn linear_pointwise() -> Option<LinearPointwise> {
    static FOUND: OnceLock<Option<LinearPointwise>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name only reads the loaded objects' symbol tables.
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"aoti_torch_cpu__linear_pointwise".as_ptr()) };
        // SAFETY: the symbol is libtorch's `aoti_torch_cpu__linear_pointwise`, whose C signature (torch/csrc/
        // inductor/aoti_torch/c/shim_cpu.h, PyTorch 2.11) `LinearPointwise` spells out.
        (!symbol.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, LinearPointwise>(symbol) })
    })
}

/// `x · wᵀ + b`, then ReLU when `relu`, through oneDNN: `None` when the op is missing or fails (the caller
/// falls back to `linear`). `x`, `w` and `b` must be f32 CPU tensors; `x` is `[rows, in]`, `w` `[out, in]`.
fn call(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Option<Tensor> {
    let op = linear_pointwise()?;
    let (x, w, b) = (x.contiguous(), w.contiguous(), b.contiguous());
    let attr = if relu { c"relu" } else { c"none" };
    let mut bias = b.as_ptr() as *mut C_tensor;
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the tensor pointers are live `at::Tensor`s (tch's handles are `at::Tensor*`, as are the C
    // interface's) held by `x`, `w` and `b` for the whole call; the op copies what it keeps. On success
    // `out` is a new `at::Tensor*` that nobody else owns, which `Tensor::from_ptr` takes over (and frees
    // with `delete`, as the C interface allocates it with `new`).
    let rc = unsafe {
        op(
            x.as_ptr() as *mut C_tensor,
            w.as_ptr() as *mut C_tensor,
            &mut bias,
            attr.as_ptr(),
            std::ptr::null(),
            0,
            std::ptr::null(),
            &mut out,
        )
    };
    // SAFETY: see above; a failed call leaves `out` null.
    (rc == 0 && !out.is_null()).then(|| unsafe { Tensor::from_ptr(out) })
}

/// Whether a layer of `inputs` → `outputs` runs through oneDNN on this machine: the op exists and rows of
/// calls of [`MIN_ROWS`] rows and more come out the same, to the bit, as in one large call. Checked once
/// per shape and process, on random weights (a few milliseconds).
fn usable(inputs: i64, outputs: i64) -> bool {
    static CHECKED: OnceLock<Mutex<HashMap<(i64, i64), bool>>> = OnceLock::new();
    let checked = CHECKED.get_or_init(Default::default);
    if let Some(ok) = checked.lock().ok().and_then(|c| c.get(&(inputs, outputs)).copied()) {
        return ok;
    }
    let ok = linear_pointwise().is_some()
        && tch::no_grad(|| stable(inputs, outputs, true) && stable(inputs, outputs, false));
    if let Ok(mut c) = checked.lock() {
        c.insert((inputs, outputs), ok);
    }
    ok
}

/// The check behind [`usable`].
fn stable(inputs: i64, outputs: i64, relu: bool) -> bool {
    const LARGE: i64 = 2048;
    let mut rng = ChaCha8Rng::seed_from_u64(0x0d_11);
    let mut random = |n: i64| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
    let x = Tensor::from_slice(&random(LARGE * inputs)).view([LARGE, inputs]);
    let w = Tensor::from_slice(&random(outputs * inputs)).view([outputs, inputs]);
    let b = Tensor::from_slice(&random(outputs));
    let Some(all) = call(&x, &w, &b, relu) else { return false };
    let sizes = [MIN_ROWS, MIN_ROWS + 1, 144, 160, 200, 255, 256, 300, 384, 511, 640, 777, 1024, 1500];
    let offsets = [0, 1, 7, 64];
    sizes.iter().zip(offsets.iter().cycle()).all(|(&rows, &at)| {
        call(&x.narrow(0, at, rows), &w, &b, relu).is_some_and(|part| part.equal(&all.narrow(0, at, rows)))
    })
}

/// One layer for scoring: `x · wᵀ + b`, then ReLU when `relu`, through oneDNN where the [`f32_policy`] allows
/// and the shape is [`usable`] (`x` must then hold at least [`MIN_ROWS`] rows), else through `linear` (MKL).
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Tensor {
    linear_in(x, w, b, relu, f32_policy().scoring)
}

/// [`linear`], with oneDNN allowed or not whatever the policy.
fn linear_in(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool, onednn: bool) -> Tensor {
    let size = w.size();
    let fast = onednn
        && x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && w.kind() == Kind::Float
        && size.len() == 2
        && size.iter().all(|n| *n >= BIG)
        && x.size().first().is_some_and(|rows| *rows >= MIN_ROWS)
        && usable(size[1], size[0]);
    if let Some(out) = fast.then(|| call(x, w, b, relu)).flatten() {
        return out;
    }
    let out = x.linear(w, Some(b));
    if relu {
        out.relu()
    } else {
        out
    }
}

/// Whether scoring a network whose layers have these `[out, in]` shapes goes through oneDNN for at least
/// one layer (then calls are padded to [`MIN_ROWS`]).
pub(crate) fn any_usable(shapes: &[(i64, i64)]) -> bool {
    f32_policy().scoring
        && shapes.iter().any(|&(outputs, inputs)| outputs >= BIG && inputs >= BIG && usable(inputs, outputs))
}

/// The hidden layers for training (each `x · wᵀ + b`, then ReLU; `layers` as `(w, b)`), through oneDNN's
/// `mkldnn_linear`, which unlike `_linear_pointwise` has a derivative: the activations stay in oneDNN's
/// layout from the first layer to the last, and the gradients come back dense. A training step of the
/// 512-500-512 network on 512 rows takes about 10 ms instead of 18 ms through MKL on the bench machine.
/// `None` when the [`f32_policy`] keeps MKL, this libtorch has no oneDNN, or `x` is not an f32 CPU tensor (the
/// caller uses `linear`).
pub(crate) fn hidden_for_training(x: &Tensor, layers: &[(&Tensor, &Tensor)]) -> Option<Tensor> {
    f32_policy().training.then(|| hidden_through_onednn(x, layers)).flatten()
}

/// [`hidden_for_training`] whatever the policy.
fn hidden_through_onednn(x: &Tensor, layers: &[(&Tensor, &Tensor)]) -> Option<Tensor> {
    let ok = tch::utils::has_mkldnn()
        && x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && layers.iter().all(|(w, _)| w.kind() == Kind::Float && w.size().len() == 2);
    if !ok || layers.is_empty() {
        return None;
    }
    let mut h = x.contiguous().f_to_mkldnn(None::<Kind>).ok()?;
    for (w, b) in layers {
        h = h.f_mkldnn_linear(w, Some(*b)).ok()?.f_relu().ok()?;
    }
    h.f_to_dense(Kind::Float, false).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onednn_layers_agree_with_mkl_and_do_not_depend_on_the_other_rows() {
        assert!(linear_pointwise().is_some(), "libtorch exports aoti_torch_cpu__linear_pointwise");
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut random = |n: i64| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        for (inputs, outputs) in [(512, 500), (500, 512), (256, 128)] {
            assert!(usable(inputs, outputs), "{inputs}→{outputs} is checked stable on this machine");
            let x = Tensor::from_slice(&random(600 * inputs)).view([600, inputs]);
            let w = Tensor::from_slice(&random(outputs * inputs)).view([outputs, inputs]);
            let b = Tensor::from_slice(&random(outputs));
            for relu in [false, true] {
                let fast = linear_in(&x, &w, &b, relu, true);
                let mut mkl = x.linear(&w, Some(&b));
                if relu {
                    mkl = mkl.relu();
                }
                let worst = f64::try_from((&fast - &mkl).abs().max()).unwrap();
                let scale = f64::try_from(mkl.abs().max()).unwrap();
                assert!(worst <= 1e-5 * (1.0 + scale), "{inputs}→{outputs}: {worst} (values up to {scale})");
                // Any 128 or more rows at any offset: the same bits as in the call of 600.
                for (at, rows) in [(0, 128), (3, 131), (100, 400), (472, 128)] {
                    assert!(linear_in(&x.narrow(0, at, rows), &w, &b, relu, true).equal(&fast.narrow(0, at, rows)));
                }
            }
        }
        // Fewer rows than MIN_ROWS, and small layers, go through MKL.
        for (rows, inputs, outputs) in [(4, 256, 256), (200, 30, 512), (200, 512, 33)] {
            let x = Tensor::from_slice(&random(rows * inputs)).view([rows, inputs]);
            let w = Tensor::from_slice(&random(outputs * inputs)).view([outputs, inputs]);
            let b = Tensor::from_slice(&random(outputs));
            assert!(linear_in(&x, &w, &b, false, true).equal(&x.linear(&w, Some(&b))));
        }
    }

    #[test]
    fn the_policy_follows_dfp_onednn_then_the_cpu() {
        let amd = |family| Some(("AuthenticAMD".to_string(), family));
        let intel = Some(("GenuineIntel".to_string(), 6));
        // auto (unset, empty, `auto`, or an unknown value): training through oneDNN, scoring on Zen 5 and
        // later only.
        for value in ["", "auto", " AUTO ", "fast"] {
            for cpu in [amd(25), amd(26), amd(27), intel.clone(), None] {
                let p = decide(value, cpu.clone());
                let zen5 = cpu.as_ref().is_some_and(|(v, f)| v == "AuthenticAMD" && *f >= 26);
                assert_eq!((p.scoring, p.training), (zen5, true), "{value:?} on {cpu:?}");
            }
        }
        assert_eq!(
            decide("auto", amd(25)).to_string(),
            "scoring through MKL, training through oneDNN (auto: AMD CPU family 25)"
        );
        // An explicit value wins over the CPU.
        for value in ["on", "1", "true", "Yes"] {
            let p = decide(value, amd(25));
            assert!(p.scoring && p.training, "{value:?}");
        }
        for value in ["off", "0", "false", "NO"] {
            let p = decide(value, amd(26));
            assert!(!p.scoring && !p.training, "{value:?}");
        }
        assert_eq!(decide("off", amd(26)).to_string(), "scoring through MKL, training through MKL (DFP_ONEDNN=off)");
        // This machine's CPU is identified (x86-64 everywhere dfp is built and tested).
        let (vendor, family) = cpu().expect("an x86-64 CPU");
        assert!(!vendor.is_empty() && family > 0, "{vendor} {family}");
    }

    #[test]
    fn training_through_onednn_gives_mkls_losses_and_gradients() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut random = |n: i64, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-scale..scale)).collect() };
        let dims = [30i64, 64, 48, 64];
        let params: Vec<(Tensor, Tensor)> = dims
            .windows(2)
            .map(|d| {
                let w = Tensor::from_slice(&random(d[1] * d[0], 0.3)).view([d[1], d[0]]).set_requires_grad(true);
                (w, Tensor::from_slice(&random(d[1], 0.1)).set_requires_grad(true))
            })
            .collect();
        let input = Tensor::from_slice(&random(40 * 30, 1.0)).view([40, 30]).set_requires_grad(true);
        let target = Tensor::from_slice(&random(40 * 64, 1.0)).view([40, 64]);
        let step = |onednn: bool| -> (f64, Vec<Tensor>) {
            let all: Vec<&Tensor> = params.iter().flat_map(|(w, b)| [w, b]).chain([&input]).collect();
            for t in &all {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let x = &input * 1.0;
            let layers: Vec<(&Tensor, &Tensor)> = params.iter().map(|(w, b)| (w, b)).collect();
            let out = if onednn {
                hidden_through_onednn(&x, &layers).expect("oneDNN in this libtorch")
            } else {
                layers.iter().fold(x, |h, (w, b)| h.linear(w, Some(*b)).relu())
            };
            let loss = (out - &target).square().mean(Kind::Float);
            loss.backward();
            (f64::try_from(&loss).unwrap(), all.iter().map(|t| t.grad().copy()).collect())
        };
        let (mkl, mkl_grads) = step(false);
        let (fast, fast_grads) = step(true);
        assert!((mkl - fast).abs() <= 1e-6 * mkl.abs(), "{mkl} vs {fast}");
        for (a, b) in mkl_grads.iter().zip(&fast_grads) {
            let worst = f64::try_from((a - b).abs().max()).unwrap();
            let scale = f64::try_from(a.abs().max()).unwrap();
            assert!(worst <= 1e-5 * (1e-3 + scale), "gradient differs by {worst} (values up to {scale})");
        }
    }
}
