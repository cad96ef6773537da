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
    /// The padded copies [`stacked_losses`] stacks with other networks' (see [`Net::prepare_stacking`]).
    stacked: Option<StackForm>,
    arch: Architecture,
    device: Device,
}

/// What networks must share to be stacked into one batched pass: the feature counts, the hidden sizes,
/// the precision, and each categorical feature's category count rounded up by `stacked_categories`
/// (smaller tables and heads are padded to it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StackKey {
    numeric: usize,
    binary: usize,
    categories: Vec<usize>,
    hidden: Vec<usize>,
    bf16: bool,
}

/// A network's layers that differ in shape between users, padded to its [`StackKey`]'s sizes: the
/// embedding tables (extra categories and dimensions zero), the first hidden layer (a zero column for each
/// padded input) and the stacked head (a padded category's logit is −∞, so it takes no probability).
struct StackForm {
    key: StackKey,
    embeddings: Vec<Tensor>,
    first: Tensor,
    head: Layer,
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

/// A categorical feature's category count as stacking pads it: at least 4, a multiple of 4 up to 32,
/// then 8 steps per power of two. User models of one family mostly differ by a category or two, and so
/// mostly fall into a few keys.
fn stacked_categories(n: usize) -> usize {
    match n {
        0..=4 => 4,
        5..=32 => n.div_ceil(4) * 4,
        _ => padded_rows(n as i64) as usize,
    }
}

/// Most rows (the largest user's, times the users) one stacked pass holds.
const STACK_ROWS: usize = 32_768;

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
            stacked: None,
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

    /// Builds the padded copies that let this network be stacked with others of the same [`StackKey`]
    /// (`stacked_losses`). Call once the weights are final (after [`Net::hidden_to_bf16`] when scoring in
    /// bf16). A network without hidden layers is never stacked.
    pub fn prepare_stacking(&mut self) {
        let Some(first) = self.hidden.first() else { return };
        let kind = first.w.kind();
        let arch = &self.arch;
        let categories: Vec<usize> = arch.cardinalities.iter().map(|n| stacked_categories(*n)).collect();
        let key = StackKey {
            numeric: arch.numeric,
            binary: arch.binary,
            categories: categories.clone(),
            hidden: arch.encoder.iter().chain(&arch.decoder).copied().collect(),
            bf16: kind == Kind::BFloat16,
        };
        let heads: Vec<&Layer> =
            self.numeric_head.iter().chain(self.binary_head.iter()).chain(self.categorical_heads.iter()).collect();
        self.stacked = tch::no_grad(|| {
            let plain = (arch.numeric + arch.binary) as i64;
            let dims: Vec<i64> = arch.cardinalities.iter().map(|n| embedding_dim(*n)).collect();
            let padded_dims: Vec<i64> = categories.iter().map(|n| embedding_dim(*n)).collect();
            let width = plain + padded_dims.iter().sum::<i64>();
            let rows = first.w.size()[0];
            let padded_first = Tensor::zeros([rows, width], (kind, self.device));
            padded_first.narrow(1, 0, plain).copy_(&first.w.narrow(1, 0, plain));
            let (mut from, mut to) = (plain, plain);
            let mut embeddings = Vec::new();
            for (k, emb) in self.embeddings.iter().enumerate() {
                padded_first.narrow(1, to, dims[k]).copy_(&first.w.narrow(1, from, dims[k]));
                from += dims[k];
                to += padded_dims[k];
                let table = Tensor::zeros([categories[k] as i64, padded_dims[k]], (Kind::Float, self.device));
                table.narrow(0, 0, arch.cardinalities[k] as i64).narrow(1, 0, dims[k]).copy_(emb);
                embeddings.push(table);
            }
            let last = *key.hidden.last()? as i64;
            let outputs = (plain + categories.iter().sum::<usize>() as i64, last);
            let head_w = Tensor::zeros([outputs.0, outputs.1], (Kind::Float, self.device));
            let head_b = Tensor::full([outputs.0], f64::NEG_INFINITY, (Kind::Float, self.device));
            let mut at = 0;
            let widths = [arch.numeric, arch.binary].into_iter().filter(|n| *n > 0).map(|n| (n, n));
            let cats = arch.cardinalities.iter().zip(&categories).map(|(n, p)| (*n, *p));
            for (head, (real, padded)) in heads.iter().zip(widths.chain(cats)) {
                head_w.narrow(0, at, real as i64).copy_(&head.w);
                head_b.narrow(0, at, real as i64).copy_(&head.b);
                at += padded as i64;
            }
            Some(StackForm { key, embeddings, first: padded_first, head: Layer { w: head_w, b: head_b } })
        });
    }

    /// The key this network stacks under, once [`Net::prepare_stacking`] ran.
    pub fn stack_key(&self) -> Option<&StackKey> {
        self.stacked.as_ref().map(|s| &s.key)
    }

    /// Forward pass. Hidden layers run in their weights' precision; the heads and outputs are f32.
    pub fn forward(&self, num: &Tensor, bin: &Tensor, cat: &Tensor) -> Output {
        self.forward_with(num, bin, cat, false)
    }

    /// The layers' `[out, in]` shapes, hidden layers and then the stacked head.
    fn shapes(&self) -> Vec<(i64, i64)> {
        let layers = self.hidden.iter().chain(self.merged_head.iter());
        layers
            .filter_map(|l| match l.w.size()[..] {
                [out, inputs] => Some((out, inputs)),
                _ => None,
            })
            .collect()
    }

    /// Forward pass; `scoring` (no autograd) runs f32 layers on the CPU through oneDNN where that is
    /// faster and checked to round alike whatever the rows around (see [`super::onednn`]).
    fn forward_with(&self, num: &Tensor, bin: &Tensor, cat: &Tensor, scoring: bool) -> Output {
        let kind = self.hidden.first().map_or(Kind::Float, |l| l.w.kind());
        let mut parts = vec![num.shallow_clone(), bin.shallow_clone()];
        for (i, emb) in self.embeddings.iter().enumerate() {
            parts.push(Tensor::embedding(emb, &cat.select(1, i as i64), -1, false, false));
        }
        let mut x = Tensor::cat(&parts, 1);
        let rows = x.size()[0];
        // The CPU kernels take another path (and round differently) for a handful of rows, so a few rows
        // are padded to `MIN_ROWS`: an event scores the same to the last bit whether it comes alone or with
        // others. Scoring f32 through oneDNN, whose kernels change below about 100 rows, pads to
        // `onednn::MIN_ROWS` instead. oneDNN (bf16, and f32 for scoring) compiles a kernel per matrix
        // shape: there the row count is rounded up to one of a few sizes (at most 1/8 padding) so that
        // per-user batches of every size reuse them.
        let onednn =
            scoring && kind == Kind::Float && self.device == Device::Cpu && super::onednn::any_usable(&self.shapes());
        let padded = if kind != Kind::Float {
            padded_rows(rows)
        } else if onednn {
            padded_rows(rows.max(super::onednn::MIN_ROWS))
        } else {
            rows.max(MIN_ROWS)
        };
        if padded > rows {
            x = x.constant_pad_nd([0, 0, 0, padded - rows]);
        }
        if kind != Kind::Float {
            x = x.to_kind(kind);
        }
        // Training (f32, CPU) runs the hidden layers through oneDNN too, with its derivative.
        let training = (!scoring && kind == Kind::Float && self.device == Device::Cpu)
            .then(|| {
                let layers: Vec<(&Tensor, &Tensor)> = self.hidden.iter().map(|l| (&l.w, &l.b)).collect();
                super::onednn::hidden_for_training(&x, &layers)
            })
            .flatten();
        if let Some(trained) = training {
            x = trained;
        } else {
            for l in &self.hidden {
                x = if onednn {
                    super::onednn::linear(&x, &l.w, &l.b, true)
                } else {
                    x.linear(&l.w, Some(&l.b)).relu()
                };
            }
        }
        if kind != Kind::Float {
            x = x.to_kind(Kind::Float);
        }
        let trim = |t: Tensor| if padded > rows { t.narrow(0, 0, rows) } else { t };
        if let Some(m) = &self.merged_head {
            let all = if onednn { super::onednn::linear(&x, &m.w, &m.b, false) } else { x.linear(&m.w, Some(&m.b)) };
            let all = trim(all);
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
        let out = net.forward_with(&n, &b, &c, true);
        let l = net.losses(&out, &n, &b, &c).to_device(Device::Cpu).contiguous();
        let cols = l.size()[1] as usize;
        let flat: Vec<f32> = Vec::<f32>::try_from(l.view([-1])).unwrap_or_default();
        flat.chunks(cols.max(1)).map(<[f32]>::to_vec).collect()
    })
}

/// Per-row, per-feature losses of many networks' rows (`jobs`: a network and its rows each), computed
/// in batched passes instead of one pass per network: networks of one [`StackKey`] are stacked (their
/// weights side by side, each network's rows padded to the largest in the pass) and every layer is one
/// batched matrix product. That turns a few hundred small device calls into a few large ones, which is
/// what a GPU needs; a CPU gains nothing, as it pays for copying the weights and for the padding.
///
/// Each key's jobs are sorted by rows and cut into passes where padding stays under a quarter of the
/// rows. A job whose network has no stacked form, or that is alone under its key, is scored by itself
/// ([`row_losses`], to the bit). Results come in `jobs`' order and equal [`row_losses`]' to rounding (the
/// products add in another order), not to the bit.
pub(crate) fn stacked_losses(jobs: &[(&Net, &Encoded)]) -> Vec<Vec<Vec<f32>>> {
    let mut result: Vec<Vec<Vec<f32>>> = vec![Vec::new(); jobs.len()];
    let mut keys: Vec<(&StackKey, Vec<usize>)> = Vec::new();
    for (i, (net, rows)) in jobs.iter().enumerate() {
        if rows.rows == 0 {
            continue;
        }
        match net.stack_key() {
            Some(key) => match keys.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(i),
                None => keys.push((key, vec![i])),
            },
            None => result[i] = row_losses(net, rows),
        }
    }
    // Every pass is started before any result is read back, so that a device works on one pass while
    // the host prepares the next.
    let mut passes = Vec::new();
    for (_, mut members) in keys {
        if let [i] = members[..] {
            result[i] = row_losses(jobs[i].0, jobs[i].1);
            continue;
        }
        members.sort_by_key(|&i| std::cmp::Reverse(jobs[i].1.rows));
        let mut start = 0;
        while start < members.len() {
            let most = jobs[members[start]].1.rows;
            let (mut end, mut sum) = (start + 1, most);
            while let Some(&next) = members.get(end) {
                let (count, rows) = (end - start + 1, jobs[next].1.rows);
                if count * most > STACK_ROWS || 4 * count * most > 5 * (sum + rows) {
                    break;
                }
                sum += rows;
                end += 1;
            }
            let pass = members[start..end].to_vec();
            let losses = tch::no_grad(|| stacked_pass(jobs, &pass, most));
            passes.push((pass, most, losses));
            start = end;
        }
    }
    for (pass, most, losses) in passes {
        let features = losses.size().get(2).copied().unwrap_or(0).max(1) as usize;
        let flat: Vec<f32> =
            Vec::<f32>::try_from(losses.to_device(Device::Cpu).contiguous().view([-1])).unwrap_or_default();
        for (slot, &i) in pass.iter().enumerate() {
            let at = slot * most * features;
            result[i] = match flat.get(at..at + jobs[i].1.rows * features) {
                Some(rows) => rows.chunks(features).map(<[f32]>::to_vec).collect(),
                None => row_losses(jobs[i].0, jobs[i].1),
            };
        }
    }
    result
}

/// One stacked pass over the jobs `pass` (same key), each padded to `most` rows: losses `[jobs, most,
/// features]` on the networks' device.
fn stacked_pass(jobs: &[(&Net, &Encoded)], pass: &[usize], most: usize) -> Tensor {
    let nets: Vec<&Net> = pass.iter().map(|&i| jobs[i].0).collect();
    let forms: Vec<&StackForm> = nets.iter().filter_map(|n| n.stacked.as_ref()).collect();
    let (first, form) = (nets[0], forms[0]);
    let key = &form.key;
    let device = first.device;
    let (count, nn, nb, nc) = (pass.len(), key.numeric, key.binary, key.categories.len());
    let mut num = vec![0f32; count * most * nn];
    let mut bin = vec![0f32; count * most * nb];
    let mut cat = vec![0i64; count * most * nc];
    for (slot, &i) in pass.iter().enumerate() {
        let e = jobs[i].1;
        let fill = |to: &mut [f32], from: &[f32], width: usize| {
            let n = from.len().min(most * width);
            to[slot * most * width..][..n].copy_from_slice(&from[..n]);
        };
        fill(&mut num, &e.numeric, nn);
        fill(&mut bin, &e.binary, nb);
        let n = e.categorical.len().min(most * nc);
        cat[slot * most * nc..][..n].copy_from_slice(&e.categorical[..n]);
    }
    // Host buffers go to a GPU from pinned memory, without waiting for the copy.
    let upload = |t: Tensor| {
        if device.is_cuda() {
            let kind = t.kind();
            t.f_pin_memory(device).unwrap_or(t).to_device_(device, kind, true, false)
        } else {
            t
        }
    };
    let (g, m) = (count as i64, most as i64);
    let num = upload(Tensor::from_slice(&num).view([g, m, nn as i64]));
    let bin = upload(Tensor::from_slice(&bin).view([g, m, nb as i64]));
    let cat = upload(Tensor::from_slice(&cat).view([g, m, nc as i64]));
    let stack = |parts: Vec<&Tensor>| Tensor::stack(&parts, 0);
    // Each job's category indices point into its own table of the stacked tables.
    let offsets = Tensor::arange(g, (Kind::Int64, device)).view([g, 1]);
    let mut parts = vec![num.shallow_clone(), bin.shallow_clone()];
    for (k, categories) in key.categories.iter().enumerate() {
        let c = *categories as i64;
        let table = stack(forms.iter().map(|f| &f.embeddings[k]).collect()).view([g * c, -1]);
        let index = cat.select(2, k as i64) + &offsets * c;
        parts.push(Tensor::embedding(&table, &index, -1, false, false));
    }
    let mut x = Tensor::cat(&parts, 2);
    let kind = form.first.kind();
    if kind != Kind::Float {
        x = x.to_kind(kind);
    }
    for l in 0..first.hidden.len() {
        let w = if l == 0 {
            stack(forms.iter().map(|f| &f.first).collect())
        } else {
            stack(nets.iter().map(|n| &n.hidden[l].w).collect())
        };
        let b = stack(nets.iter().map(|n| &n.hidden[l].b).collect()).unsqueeze(1);
        x = b.baddbmm(&x, &w.transpose(1, 2), 1, 1).relu();
    }
    if kind != Kind::Float {
        x = x.to_kind(Kind::Float);
    }
    let head_w = stack(forms.iter().map(|f| &f.head.w).collect());
    let head_b = stack(forms.iter().map(|f| &f.head.b).collect()).unsqueeze(1);
    let out = head_b.baddbmm(&x, &head_w.transpose(1, 2), 1, 1).view([g * m, -1]);
    // The losses as one network's, over the rows of every job (the padded categories widen the heads).
    let mut at = 0;
    let mut take = |width: usize| {
        let part = out.narrow(1, at, width as i64);
        at += width as i64;
        part
    };
    let output = Output {
        numeric: (nn > 0).then(|| take(nn)),
        binary: (nb > 0).then(|| take(nb)),
        categorical: key.categories.iter().map(|c| take(*c)).collect(),
    };
    let rows = |t: &Tensor, width: usize| t.reshape([g * m, width as i64]);
    first.losses(&output, &rows(&num, nn), &rows(&bin, nb), &rows(&cat, nc)).view([g, m, -1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A network with 2 numeric, 1 binary and two categorical inputs of `cards` categories, drawn from `seed`.
    fn net(seed: u64, cards: &[usize], bf16: bool) -> Net {
        let arch = Architecture {
            numeric: 2,
            binary: 1,
            cardinalities: cards.to_vec(),
            encoder: vec![16, 8],
            decoder: vec![16],
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let mut net = Net::new(&vs, &arch, &mut ChaCha8Rng::seed_from_u64(seed));
        net.merge_heads();
        if bf16 {
            net.hidden_to_bf16();
        }
        net.prepare_stacking();
        net
    }

    /// `rows` rows of random inputs for a network with `cards` categories.
    fn rows(seed: u64, rows: usize, cards: &[usize]) -> Encoded {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Encoded {
            rows,
            numeric: (0..rows * 2).map(|_| rng.random_range(-2.0..2.0)).collect(),
            binary: (0..rows).map(|_| f32::from(rng.random_range(0..2u8))).collect(),
            categorical: (0..rows)
                .flat_map(|_| cards.iter().map(|c| rng.random_range(0..*c as i64)).collect::<Vec<_>>())
                .collect(),
        }
    }

    #[test]
    fn stacked_losses_match_each_networks_own() {
        for bf16 in [false, true] {
            // [3, 5], [4, 7] and [2, 8] pad to the same [4, 8]; [3, 40] is stacked under another key.
            let cards: [&[usize]; 5] = [&[3, 5], &[4, 7], &[2, 8], &[3, 5], &[3, 40]];
            let sizes = [37, 1, 20, 0, 5];
            let nets: Vec<Net> = cards.iter().enumerate().map(|(i, c)| net(i as u64, c, bf16)).collect();
            assert_eq!(nets[0].stack_key(), nets[2].stack_key());
            assert_ne!(nets[0].stack_key(), nets[4].stack_key());
            let inputs: Vec<Encoded> = (0..5).map(|i| rows(10 + i as u64, sizes[i], cards[i])).collect();
            let jobs: Vec<(&Net, &Encoded)> = nets.iter().zip(&inputs).collect();
            let stacked = stacked_losses(&jobs);
            for (i, (net, input)) in jobs.iter().enumerate() {
                let own = row_losses(net, input);
                assert_eq!(stacked[i].len(), sizes[i], "job {i}");
                for (a, b) in stacked[i].iter().flatten().zip(own.iter().flatten()) {
                    let tolerance = if bf16 { 2e-2 } else { 1e-5 };
                    assert!((a - b).abs() <= tolerance * (1.0 + b.abs()), "job {i} (bf16 {bf16}): {a} vs {b}");
                }
                if i == 4 {
                    // Another key than the first job's: scored alone, to the bit.
                    assert_eq!(stacked[i], own);
                }
            }
        }
    }

    #[test]
    fn stacking_pads_categories_to_few_sizes() {
        assert_eq!([1, 4, 5, 8, 9, 32, 33].map(stacked_categories), [4, 4, 8, 8, 12, 32, 36]);
        // A padded category takes no probability: its logit is -inf.
        let n = net(7, &[3, 5], false);
        let form = n.stacked.as_ref().unwrap();
        let b = Vec::<f32>::try_from(&form.head.b).unwrap();
        assert_eq!(b.len(), 2 + 1 + 4 + 8);
        assert!(b[..3 + 3].iter().all(|v| v.is_finite()) && b[6] == f32::NEG_INFINITY);
        assert!(b[7..12].iter().all(|v| v.is_finite()) && b[12..].iter().all(|v| *v == f32::NEG_INFINITY));
    }

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
