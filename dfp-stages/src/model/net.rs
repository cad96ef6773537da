//! The autoencoder: embeddings + MLP + one head per feature, on a tch `VarStore`.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Reduction, Tensor};

use super::embedding_dim;
use super::encode::Encoded;

/// Layer sizes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Architecture {
    /// Numeric features.
    pub numeric: usize,
    /// Binary features.
    pub binary: usize,
    /// Category counts (with "other") of the categorical features.
    pub cardinalities: Vec<usize>,
    /// Encoder hidden sizes (Morpheus: 512, 500).
    pub encoder: Vec<usize>,
    /// Decoder hidden sizes (Morpheus: 512).
    pub decoder: Vec<usize>,
}

struct Layer {
    w: Tensor,
    b: Tensor,
}

/// The network's parameters, registered in a `VarStore` under stable names.
pub struct Net {
    embeddings: Vec<Tensor>,
    hidden: Vec<Layer>,
    numeric_head: Option<Layer>,
    binary_head: Option<Layer>,
    categorical_heads: Vec<Layer>,
    /// Every head stacked into one layer (`[numeric | binary | categorical…]` outputs) for scoring: one
    /// matrix product instead of one per feature. Built by [`Net::merge_heads`] once training is over.
    merged_head: Option<Layer>,
    arch: Architecture,
    device: Device,
}

/// Network outputs for a batch.
pub struct Output {
    /// Predicted scaled numerics, `[n, numeric]`.
    pub numeric: Option<Tensor>,
    /// Binary logits, `[n, binary]`.
    pub binary: Option<Tensor>,
    /// Logits per categorical feature, each `[n, cardinality]`.
    pub categorical: Vec<Tensor>,
}

/// Fewest rows a forward pass runs on (f32): measured, up to 5 rows round differently from many.
const MIN_ROWS: i64 = 16;

/// `rows` rounded up to 8 steps per power of two (at least 16): few distinct shapes, at most 1/8 padding.
fn padded_rows(rows: i64) -> i64 {
    if rows <= MIN_ROWS {
        return MIN_ROWS;
    }
    let step = 1i64 << (63 - rows.leading_zeros() as i64 - 3).max(0);
    (rows + step - 1) / step * step
}

/// PyTorch's default initialisation, drawn from our own generator: U(−1/√fan_in, 1/√fan_in).
fn uniform(rng: &mut ChaCha8Rng, shape: &[i64], fan_in: usize) -> Tensor {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    let n: i64 = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Tensor::from_slice(&data).view(shape)
}

/// Standard normal values (Box–Muller), for embeddings (PyTorch: N(0, 1)).
fn normal(rng: &mut ChaCha8Rng, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Tensor::from_slice(&data).view(shape)
}

impl Net {
    /// Creates the parameters in `vs`, initialised from `rng`.
    pub fn new(vs: &nn::VarStore, arch: &Architecture, rng: &mut ChaCha8Rng) -> Net {
        Self::build(vs, arch, Some(rng))
    }

    /// Creates uninitialised parameters in `vs`, to be overwritten by stored weights (no random draws).
    pub fn zeroed(vs: &nn::VarStore, arch: &Architecture) -> Net {
        Self::build(vs, arch, None)
    }

    fn build(vs: &nn::VarStore, arch: &Architecture, mut rng: Option<&mut ChaCha8Rng>) -> Net {
        let mut uniform = |shape: &[i64], fan_in: usize| match rng.as_deref_mut() {
            Some(r) => uniform(r, shape, fan_in),
            None => Tensor::empty(shape, (Kind::Float, Device::Cpu)),
        };
        let root = vs.root();
        let device = vs.device();
        let mut layer = |name: &str, fan_in: usize, out: usize| Layer {
            w: root
                .var_copy(&format!("{name}_weight"), &uniform(&[out as i64, fan_in as i64], fan_in).to_device(device)),
            b: root.var_copy(&format!("{name}_bias"), &uniform(&[out as i64], fan_in).to_device(device)),
        };
        let mut input = arch.numeric + arch.binary;
        let mut dims = Vec::new();
        for n in &arch.cardinalities {
            let dim = embedding_dim(*n);
            dims.push((*n as i64, dim));
            input += dim as usize;
        }
        let mut hidden = Vec::new();
        let mut fan_in = input;
        for (i, h) in arch.encoder.iter().chain(arch.decoder.iter()).enumerate() {
            hidden.push(layer(&format!("hidden{i}"), fan_in, *h));
            fan_in = *h;
        }
        let numeric_head = (arch.numeric > 0).then(|| layer("numeric_head", fan_in, arch.numeric));
        let binary_head = (arch.binary > 0).then(|| layer("binary_head", fan_in, arch.binary));
        let categorical_heads: Vec<Layer> = arch
            .cardinalities
            .iter()
            .enumerate()
            .map(|(i, n)| layer(&format!("categorical_head{i}"), fan_in, *n))
            .collect();
        let embeddings = dims
            .iter()
            .enumerate()
            .map(|(i, (n, dim))| {
                let init = match rng.as_deref_mut() {
                    Some(r) => normal(r, &[*n, *dim]),
                    None => Tensor::zeros([*n, *dim], (Kind::Float, Device::Cpu)),
                };
                root.var_copy(&format!("embedding{i}_weight"), &init.to_device(device))
            })
            .collect();
        Net {
            embeddings,
            hidden,
            numeric_head,
            binary_head,
            categorical_heads,
            merged_head: None,
            arch: arch.clone(),
            device,
        }
    }

    /// The inputs of a batch as tensors on the model's device.
    pub fn inputs(&self, e: &Encoded) -> (Tensor, Tensor, Tensor) {
        let n = e.rows as i64;
        let num = Tensor::from_slice(&e.numeric).view([n, self.arch.numeric as i64]).to_device(self.device);
        let bin = Tensor::from_slice(&e.binary).view([n, self.arch.binary as i64]).to_device(self.device);
        let cat =
            Tensor::from_slice(&e.categorical).view([n, self.arch.cardinalities.len() as i64]).to_device(self.device);
        (num, bin, cat)
    }

    /// Stacks the output heads into one layer for scoring. Call once the weights are final: later changes
    /// to the heads are not seen by the stacked copy.
    pub fn merge_heads(&mut self) {
        let heads: Vec<&Layer> =
            self.numeric_head.iter().chain(self.binary_head.iter()).chain(self.categorical_heads.iter()).collect();
        if heads.is_empty() {
            return;
        }
        self.merged_head = tch::no_grad(|| {
            let w: Vec<&Tensor> = heads.iter().map(|l| &l.w).collect();
            let b: Vec<&Tensor> = heads.iter().map(|l| &l.b).collect();
            Some(Layer { w: Tensor::cat(&w, 0), b: Tensor::cat(&b, 0) })
        });
    }

    /// Converts the hidden layers' weights to bfloat16 in place (scoring only: the optimiser is not told).
    pub fn hidden_to_bf16(&mut self) {
        tch::no_grad(|| {
            for l in &mut self.hidden {
                l.w.set_data(&l.w.to_kind(Kind::BFloat16));
                l.b.set_data(&l.b.to_kind(Kind::BFloat16));
            }
        });
    }

    /// Forward pass. Hidden layers run in their weights' precision; the heads and outputs are f32.
    pub fn forward(&self, num: &Tensor, bin: &Tensor, cat: &Tensor) -> Output {
        let kind = self.hidden.first().map_or(Kind::Float, |l| l.w.kind());
        let mut parts = vec![num.shallow_clone(), bin.shallow_clone()];
        for (i, emb) in self.embeddings.iter().enumerate() {
            parts.push(Tensor::embedding(emb, &cat.select(1, i as i64), -1, false, false));
        }
        let mut x = Tensor::cat(&parts, 1);
        let rows = x.size()[0];
        // The CPU kernels take another path (and round differently) for a handful of rows, so a few rows
        // are padded to `MIN_ROWS`: an event scores the same to the last bit whether it comes alone or with
        // others. oneDNN (bf16) compiles a kernel per matrix shape: there the row count is rounded up to
        // one of a few sizes (at most 1/8 padding) so that per-user batches of every size reuse them.
        let padded = if kind != Kind::Float { padded_rows(rows) } else { rows.max(MIN_ROWS) };
        if padded > rows {
            x = x.constant_pad_nd([0, 0, 0, padded - rows]);
        }
        if kind != Kind::Float {
            x = x.to_kind(kind);
        }
        for l in &self.hidden {
            x = x.linear(&l.w, Some(&l.b)).relu();
        }
        if kind != Kind::Float {
            x = x.to_kind(Kind::Float);
        }
        let trim = |t: Tensor| if padded > rows { t.narrow(0, 0, rows) } else { t };
        if let Some(m) = &self.merged_head {
            let all = trim(x.linear(&m.w, Some(&m.b)));
            let mut at = 0;
            let mut take = |width: usize| {
                let part = all.narrow(1, at, width as i64);
                at += width as i64;
                part
            };
            return Output {
                numeric: self.numeric_head.as_ref().map(|_| take(self.arch.numeric)),
                binary: self.binary_head.as_ref().map(|_| take(self.arch.binary)),
                categorical: self.arch.cardinalities.iter().map(|n| take(*n)).collect(),
            };
        }
        let head = |l: &Layer| trim(x.linear(&l.w, Some(&l.b)));
        Output {
            numeric: self.numeric_head.as_ref().map(head),
            binary: self.binary_head.as_ref().map(head),
            categorical: self.categorical_heads.iter().map(head).collect(),
        }
    }

    /// Per-row, per-feature losses `[n, features]` in model order (numeric, binary, categorical).
    pub fn losses(&self, out: &Output, num: &Tensor, bin: &Tensor, cat: &Tensor) -> Tensor {
        let mut cols: Vec<Tensor> = Vec::new();
        if let Some(p) = &out.numeric {
            cols.push((p - num).square());
        }
        if let Some(p) = &out.binary {
            cols.push(p.binary_cross_entropy_with_logits::<Tensor>(bin, None, None, Reduction::None));
        }
        for (i, logits) in out.categorical.iter().enumerate() {
            let target = cat.select(1, i as i64);
            cols.push(logits.cross_entropy_loss::<Tensor>(&target, None, Reduction::None, -100, 0.0).unsqueeze(1));
        }
        Tensor::cat(&cols, 1).to_kind(Kind::Float)
    }
}

/// Per-row, per-feature losses without noise, `rows × features`.
pub(crate) fn row_losses(net: &Net, e: &Encoded) -> Vec<Vec<f32>> {
    if e.rows == 0 {
        return Vec::new();
    }
    tch::no_grad(|| {
        let (n, b, c) = net.inputs(e);
        let out = net.forward(&n, &b, &c);
        let l = net.losses(&out, &n, &b, &c).to_device(Device::Cpu).contiguous();
        let cols = l.size()[1] as usize;
        let flat: Vec<f32> = Vec::<f32>::try_from(l.view([-1])).unwrap_or_default();
        flat.chunks(cols.max(1)).map(<[f32]>::to_vec).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::padded_rows;

    #[test]
    fn padded_rows_are_few_sizes_with_little_padding() {
        assert_eq!(padded_rows(1), 16);
        assert_eq!(padded_rows(16), 16);
        assert_eq!(padded_rows(17), 18);
        assert_eq!(padded_rows(300), 320);
        assert_eq!(padded_rows(1024), 1024);
        assert_eq!(padded_rows(1025), 1152);
        let mut sizes = std::collections::BTreeSet::new();
        for n in 1..=4096 {
            let p = padded_rows(n);
            assert!(p >= n && (p <= 16 || (p - n) * 8 <= n), "{n} → {p}");
            sizes.insert(p);
        }
        assert!(sizes.len() <= 80, "{} sizes", sizes.len());
    }
}
