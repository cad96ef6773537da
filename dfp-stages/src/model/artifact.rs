//! A trained model as an artifact: `model.safetensors` (weights) plus `manifest.json` (feature schema,
//! vocabularies, scalers, loss statistics, hyper-parameters, training window and rows, dfp version).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

pub use super::config::StatsMode;
use super::config::TrainConfig;
use super::encode::{Encoded, EncodedFeature, FeatureEncoder};
use super::net::{row_losses, stacked_losses, Architecture, Net, StackKey};
use super::FeatureDef;

/// The artifact's file names.
pub const MANIFEST: &str = "manifest.json";
/// The weights' file name.
pub const WEIGHTS: &str = "model.safetensors";
/// A shared model's per-user z statistics (`calibration`), when it has any.
pub const CALIBRATION: &str = "calibration.json";
/// The generic model's peer-group membership (`user → group`), when groups were trained.
pub const GROUPS: &str = "groups.json";

/// What a model is for (recorded in its manifest, shown in scores as `model_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// One user's model, trained from scratch on at least `min_history` of the user's events.
    #[default]
    User,
    /// One user's model fine-tuned from a shared (generic or group) model on fewer events.
    Finetuned,
    /// A peer group's model: the generic model fine-tuned on the events of the group's users.
    Group,
    /// The model of everybody's events.
    Generic,
}

impl ModelKind {
    /// `user`, `finetuned`, `group` or `generic`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::User => "user",
            ModelKind::Finetuned => "finetuned",
            ModelKind::Group => "group",
            ModelKind::Generic => "generic",
        }
    }

    /// The kind a registry name says (`…-=generic`, `…-=group-…`, else a user's model); a manifest, when
    /// readable, says more (`finetuned`).
    pub fn of_name(name: &str) -> ModelKind {
        if name.ends_with(super::GENERIC) {
            ModelKind::Generic
        } else if name.contains(super::GROUP_INFIX) {
            ModelKind::Group
        } else {
            ModelKind::User
        }
    }

    /// Whether the model scores many users (their rows are then scored in fixed-size chunks, and may use
    /// per-user calibration).
    pub fn shared(self) -> bool {
        matches!(self, ModelKind::Group | ModelKind::Generic)
    }
}

/// Per-feature loss statistics, in model order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossStats {
    /// How they were computed.
    pub mode: StatsMode,
    /// Centre (mean or median) per feature.
    pub center: Vec<f64>,
    /// Scale (standard deviation or scaled MAD) per feature; never below 1e-6.
    pub scale: Vec<f64>,
}

impl LossStats {
    /// Statistics of `rows × features` losses.
    pub fn compute(rows: &[Vec<f32>], features: usize, mode: StatsMode) -> Self {
        let mut center = vec![0.0; features];
        let mut scale = vec![1.0; features];
        if !rows.is_empty() {
            for j in 0..features {
                let mut col: Vec<f64> = rows.iter().map(|r| f64::from(r[j])).collect();
                let (c, s) = match mode {
                    StatsMode::Robust => {
                        let med = median(&mut col);
                        let mut dev: Vec<f64> = col.iter().map(|v| (v - med).abs()).collect();
                        (med, median(&mut dev) * 1.4826)
                    }
                    _ => {
                        let mean = col.iter().sum::<f64>() / col.len() as f64;
                        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
                        (mean, var.sqrt())
                    }
                };
                center[j] = c;
                scale[j] = s.max(1e-6);
            }
        }
        LossStats { mode, center, scale }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// What training saw and did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// First event time (µs since the epoch, UTC).
    pub start_micros: i64,
    /// Last event time.
    pub end_micros: i64,
    /// Rows used (training + validation).
    pub rows: usize,
    /// Rows held out for validation.
    pub validation_rows: usize,
    /// Epochs actually run.
    pub epochs_run: usize,
    /// Last training loss.
    pub train_loss: f64,
    /// Best validation loss.
    pub validation_loss: f64,
    /// (training, validation) loss per epoch.
    pub loss_history: Vec<(f64, f64)>,
    /// Wall time.
    pub seconds: f64,
    /// The version this model was fine-tuned from (`warm_start`), if any.
    #[serde(default)]
    pub warm_start_from: Option<u64>,
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The dfp version that trained the model.
    pub dfp_version: String,
    /// The registry name (`DFP-azure-alice%40contoso.com`).
    pub name: String,
    /// The log family the model was trained for (absent in models of dfp before families).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Model inputs with their encodings, in model order.
    pub features: Vec<EncodedFeature>,
    /// Layer sizes.
    pub architecture: Architecture,
    /// z-score statistics.
    pub loss_stats: LossStats,
    /// Hyper-parameters.
    pub hyper_parameters: TrainConfig,
    /// The training run.
    pub training: TrainingInfo,
    /// What the model is for (absent in models of dfp before model kinds: then told by the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ModelKind>,
    /// Why the model is what it is, e.g. `fine-tuned from DFP-azure-=generic on 120 events`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A group model's group; a user model's peer group, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Files of the version beyond the manifest and the weights ([`CALIBRATION`], [`GROUPS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl Manifest {
    /// Refuses loss statistics that would make z-scores meaningless: one centre and scale per feature, all
    /// finite, every scale positive (a zero spread divides by zero).
    pub fn check_loss_stats(&self) -> Result<(), ArtifactError> {
        let s = &self.loss_stats;
        let n = self.features.len();
        let bad = |detail: String| Err(ArtifactError::Invalid { name: self.name.clone(), detail });
        if s.center.len() != n || s.scale.len() != n {
            return bad(format!(
                "loss statistics for {} and {} features, but the model has {n}",
                s.center.len(),
                s.scale.len()
            ));
        }
        for (i, f) in self.features.iter().enumerate() {
            if !(s.center[i].is_finite() && s.scale[i].is_finite() && s.scale[i] > 0.0) {
                return bad(format!(
                    "feature {}: loss centre {} and spread {} (a spread must be a positive number)",
                    f.def.name, s.center[i], s.scale[i]
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn new(
        name: &str,
        encoder: &FeatureEncoder,
        architecture: Architecture,
        loss_stats: LossStats,
        hyper_parameters: TrainConfig,
        training: TrainingInfo,
    ) -> Self {
        Manifest {
            format: 1,
            dfp_version: env!("CARGO_PKG_VERSION").to_string(),
            name: name.to_string(),
            family: None,
            features: encoder.features.clone(),
            architecture,
            loss_stats,
            hyper_parameters,
            training,
            kind: None,
            reason: None,
            group: None,
            files: Vec::new(),
        }
    }

    /// The model's kind: as recorded, or (models of dfp before model kinds) told by its name.
    pub fn kind(&self) -> ModelKind {
        self.kind.unwrap_or_else(|| ModelKind::of_name(&self.name))
    }
}

/// One user's z statistics through a shared model (`calibration.json` maps user ids to these): the
/// user's own per-feature loss centre and spread, shrunk toward the model's by `prior_rows` pseudo-rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserStats {
    /// The user's rows the statistics come from.
    pub rows: usize,
    /// Centre per feature, in model order.
    pub center: Vec<f64>,
    /// Spread per feature; never below 1e-6.
    pub scale: Vec<f64>,
}

impl UserStats {
    /// Shrinks the statistics of `rows` losses toward the model's `prior` by `prior_rows` pseudo-rows:
    /// centre `(n·c_u + k·c_m)/(n + k)`, spread `√((n·s_u² + k·s_m²)/(n + k))`. A user with few rows stays
    /// near the model's statistics; one with many gets their own.
    pub fn shrunk(rows: &[Vec<f32>], prior: &LossStats, prior_rows: f64) -> Self {
        let own = LossStats::compute(rows, prior.center.len(), StatsMode::Training);
        let n = rows.len() as f64;
        let k = prior_rows.max(0.0);
        let w = |a: f64, b: f64| if n + k > 0.0 { (n * a + k * b) / (n + k) } else { b };
        let center = own.center.iter().zip(&prior.center).map(|(c, p)| w(*c, *p)).collect();
        let scale = own.scale.iter().zip(&prior.scale).map(|(s, p)| w(s * s, p * p).sqrt().max(1e-6)).collect();
        UserStats { rows: rows.len(), center, scale }
    }
}

/// Why an artifact cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A file is missing from the artifact.
    #[error("artifact {name}: file {file} is missing")]
    MissingFile {
        /// Model name.
        name: String,
        /// File name.
        file: &'static str,
    },
    /// The manifest is not readable.
    #[error("artifact {name}: manifest.json: {source}")]
    Manifest {
        /// Model name.
        name: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The model was trained on other features than the pipeline produces.
    #[error("model {name} does not fit this pipeline: {detail}")]
    Mismatch {
        /// Model name.
        name: String,
        /// What differs.
        detail: String,
    },
    /// libtorch failed (weights unreadable or of the wrong shape).
    #[error("model {name}: weights: {source}")]
    Weights {
        /// Model name.
        name: String,
        /// The libtorch error.
        source: tch::TchError,
    },
    /// The manifest holds values no model can have.
    #[error("model {name}: invalid manifest: {detail}")]
    Invalid {
        /// Model name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A temporary file could not be written.
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
}

/// A trained model, ready to score.
pub struct Model {
    /// Its manifest.
    pub manifest: Manifest,
    pub(crate) encoder: FeatureEncoder,
    pub(crate) net: Net,
    pub(crate) vs: nn::VarStore,
    /// A shared model's per-user z statistics ([`CALIBRATION`]), by user id.
    pub calibration: std::collections::BTreeMap<String, UserStats>,
    /// The generic model's peer groups ([`GROUPS`]): user id → group.
    pub groups: std::collections::BTreeMap<String, String>,
}

/// Tensors read from a safetensors file: name → (shape, little-endian f32 bytes).
type StoredTensors<'a> = std::collections::HashMap<String, (Vec<i64>, &'a [u8])>;

/// The f32 tensors of a safetensors file (8-byte little-endian header length, JSON header, data): name →
/// (shape, bytes). Read from memory, without a temporary file.
fn read_safetensors(bytes: &[u8]) -> Result<StoredTensors<'_>, String> {
    #[derive(Deserialize)]
    struct Entry {
        dtype: String,
        shape: Vec<i64>,
        data_offsets: [usize; 2],
    }
    let len = bytes.get(..8).ok_or("shorter than its header")?;
    let len = usize::try_from(u64::from_le_bytes(len.try_into().map_err(|_| "bad header")?))
        .map_err(|_| "header length too large")?;
    let header = bytes.get(8..8usize.saturating_add(len)).ok_or("truncated header")?;
    let data = &bytes[8 + len..];
    let entries: std::collections::HashMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let mut out = std::collections::HashMap::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let e: Entry = serde_json::from_value(value).map_err(|e| format!("{name}: {e}"))?;
        if e.dtype != "F32" {
            return Err(format!("{name} is {}, expected F32", e.dtype));
        }
        let [start, end] = e.data_offsets;
        let elements: i64 = e.shape.iter().product();
        let slice = data.get(start..end).filter(|s| s.len() as i64 == elements * 4);
        let slice = slice.ok_or_else(|| format!("{name}: data offsets {start}..{end} do not fit its shape"))?;
        out.insert(name, (e.shape, slice));
    }
    Ok(out)
}

/// How per-feature z-scores are summarised into `mean_abs_z` / `max_abs_z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ZMode {
    /// |z| (Morpheus): a loss far below normal counts like one far above.
    #[default]
    Abs,
    /// max(z, 0): only losses above normal count (a row that is reconstructed unusually well is not
    /// suspicious).
    Positive,
}

impl ZMode {
    /// How much a feature's z counts in `mean_abs_z`, `max_abs_z` and `risk`: |z|, or z above 0.
    pub fn magnitude(self, z: f32) -> f64 {
        match self {
            ZMode::Abs => f64::from(z.abs()),
            ZMode::Positive => f64::from(z.max(0.0)),
        }
    }

    /// A row's risk: the mean over features of each z's magnitude, each at most `cap` — what the `score`
    /// stage ranks and thresholds on (and promotion counts alerts with).
    pub fn risk(self, z: &[f32], cap: f64) -> f64 {
        z.iter().map(|v| self.magnitude(*v).min(cap)).sum::<f64>() / z.len().max(1) as f64
    }
}

/// Scores of a set of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Feature names in model order.
    pub features: Vec<String>,
    /// Per row, per feature: z-score of the reconstruction loss.
    pub z: Vec<Vec<f32>>,
    /// Per row: mean of |z| over features.
    pub mean_abs_z: Vec<f64>,
    /// Per row: max of |z| over features.
    pub max_abs_z: Vec<f64>,
}

impl Model {
    /// The artifact's files: the manifest and the weights.
    pub fn to_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>, ArtifactError> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(WEIGHTS);
        self.vs.save(&path).map_err(|source| ArtifactError::Weights { name: self.manifest.name.clone(), source })?;
        let weights = std::fs::read(&path)?;
        let mut files = vec![(WEIGHTS, weights)];
        let mut manifest = self.manifest.clone();
        manifest.files.clear();
        if !self.calibration.is_empty() {
            files.push((CALIBRATION, self.json(&self.calibration, false)?));
            manifest.files.push(CALIBRATION.into());
        }
        if !self.groups.is_empty() {
            files.push((GROUPS, self.json(&self.groups, false)?));
            manifest.files.push(GROUPS.into());
        }
        files.push((MANIFEST, self.json(&manifest, true)?));
        Ok(files)
    }

    fn json<T: Serialize>(&self, value: &T, pretty: bool) -> Result<Vec<u8>, ArtifactError> {
        let bytes = if pretty { serde_json::to_vec_pretty(value) } else { serde_json::to_vec(value) };
        bytes.map_err(|source| ArtifactError::Manifest { name: self.manifest.name.clone(), source })
    }

    /// Reads one of the version's further files (those the manifest lists in `files`) into the model.
    pub fn attach(&mut self, file: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
        let name = self.manifest.name.clone();
        let bad = |detail: String| ArtifactError::Invalid { name: name.clone(), detail };
        match file {
            CALIBRATION => {
                let calibration: std::collections::BTreeMap<String, UserStats> =
                    serde_json::from_slice(bytes).map_err(|e| bad(format!("{CALIBRATION}: {e}")))?;
                let n = self.manifest.features.len();
                for (user, s) in &calibration {
                    let finite = s.center.iter().chain(&s.scale).all(|v| v.is_finite());
                    if s.center.len() != n || s.scale.len() != n || !finite || s.scale.iter().any(|v| *v <= 0.0) {
                        return Err(bad(format!(
                            "{CALIBRATION}: the statistics of user \"{user}\" do not fit the model's {n} features"
                        )));
                    }
                }
                self.calibration = calibration;
            }
            GROUPS => {
                self.groups = serde_json::from_slice(bytes).map_err(|e| bad(format!("{GROUPS}: {e}")))?;
            }
            other => return Err(bad(format!("the manifest lists an unknown file {other}"))),
        }
        Ok(())
    }

    /// Loads an artifact from its files.
    pub fn from_files(name: &str, manifest: &[u8], weights: &[u8], device: Device) -> Result<Model, ArtifactError> {
        let manifest: Manifest =
            serde_json::from_slice(manifest).map_err(|source| ArtifactError::Manifest { name: name.into(), source })?;
        manifest.check_loss_stats()?;
        let encoder = FeatureEncoder::with_features(manifest.features.clone());
        let vs = nn::VarStore::new(device);
        // Shapes come from the manifest; the values are then copied from the stored weights.
        let mut net = Net::zeroed(&vs, &manifest.architecture);
        let bad = |detail: String| ArtifactError::Weights { name: name.into(), source: tch::TchError::Convert(detail) };
        let stored = read_safetensors(weights).map_err(|e| bad(format!("{WEIGHTS}: {e}")))?;
        tch::no_grad(|| -> Result<(), ArtifactError> {
            for (var_name, mut var) in vs.variables() {
                let (shape, data) =
                    stored.get(&var_name).ok_or_else(|| bad(format!("{WEIGHTS} has no tensor {var_name}")))?;
                if *shape != var.size() {
                    return Err(bad(format!(
                        "{var_name} is {shape:?} in {WEIGHTS}, the manifest says {:?}",
                        var.size()
                    )));
                }
                let src = Tensor::f_from_data_size(data, shape, Kind::Float)
                    .map_err(|source| ArtifactError::Weights { name: name.into(), source })?;
                var.copy_(&src);
            }
            Ok(())
        })?;
        net.merge_heads();
        Ok(Model { manifest, encoder, net, vs, calibration: Default::default(), groups: Default::default() })
    }

    /// Switches the hidden layers (the bulk of the work) to bfloat16 for scoring (CPUs with AVX-512 BF16 or
    /// AMX and GPUs run them about twice as fast); embeddings and output heads stay f32. The loss statistics
    /// stay those measured in f32, so scores move slightly.
    pub fn to_bf16(&mut self) {
        self.net.hidden_to_bf16();
    }

    /// Prepares the model to be scored together with others of the same [`StackKey`]
    /// ([`Model::losses_stacked`]). Call after [`Model::to_bf16`] when scoring in bf16.
    pub fn prepare_stacking(&mut self) {
        self.net.prepare_stacking();
    }

    /// The key under which this model stacks with others, once prepared.
    pub fn stack_key(&self) -> Option<&StackKey> {
        self.net.stack_key()
    }

    /// Per-feature losses of many models' encoded rows, in `jobs`' order: the models prepared for
    /// stacking ([`Model::prepare_stacking`]) in batched passes per [`StackKey`], the others (and a model
    /// alone under its key) one by one. Equal to each model's own losses to rounding.
    pub fn losses_stacked(jobs: &[(&Model, &Encoded)]) -> Vec<Vec<Vec<f32>>> {
        let nets: Vec<(&Net, &Encoded)> = jobs.iter().map(|(m, e)| (&m.net, *e)).collect();
        stacked_losses(&nets)
    }

    /// `batch` synthetic rows in the model's input shape (for benchmarks).
    fn synthetic(&self, batch: usize) -> Encoded {
        let (nn, nb, nc) = self.encoder.shape();
        let cards = &self.manifest.architecture.cardinalities;
        Encoded {
            rows: batch,
            numeric: (0..batch * nn).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect(),
            binary: (0..batch * nb).map(|i| (i % 2) as f32).collect(),
            categorical: (0..batch * nc).map(|i| ((i / nc.max(1)) % cards[i % nc.max(1)].max(1)) as i64).collect(),
        }
    }

    /// Forward pass plus per-feature losses (what scoring costs besides encoding) on `batch` synthetic rows,
    /// repeated for at least `min_time`: rows per second. For benchmarks (`dfp bench --model`).
    pub fn forward_rate(&self, batch: usize, min_time: std::time::Duration) -> f64 {
        Model::many_rate(&[self], batch, min_time)
    }

    /// [`Model::losses_stacked`] over `models`, `batch` synthetic rows each, repeated for at least
    /// `min_time`: rows per second (models not prepared for stacking run one by one). For benchmarks
    /// (`dfp bench --model --stack`).
    pub fn many_rate(models: &[&Model], batch: usize, min_time: std::time::Duration) -> f64 {
        let inputs: Vec<Encoded> = models.iter().map(|m| m.synthetic(batch)).collect();
        let jobs: Vec<(&Model, &Encoded)> = models.iter().copied().zip(&inputs).collect();
        let _ = Model::losses_stacked(&jobs);
        let started = std::time::Instant::now();
        let mut rows = 0usize;
        while started.elapsed() < min_time {
            let _ = Model::losses_stacked(&jobs);
            rows += batch * models.len();
        }
        rows as f64 / started.elapsed().as_secs_f64()
    }

    /// Checks that the model was trained for the pipeline's log family (models older than families
    /// record none and pass).
    pub fn check_family(&self, family: &str) -> Result<(), ArtifactError> {
        match &self.manifest.family {
            Some(f) if f != family => Err(ArtifactError::Mismatch {
                name: self.manifest.name.clone(),
                detail: format!(
                    "it was trained for the log family \"{f}\", but this pipeline reads the family \"{family}\""
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Checks that the model reads exactly the features the pipeline produces.
    pub fn check_features(&self, expected: &[FeatureDef]) -> Result<(), ArtifactError> {
        let mut have: Vec<&FeatureDef> = self.manifest.features.iter().map(|f| &f.def).collect();
        let mut want: Vec<&FeatureDef> = expected.iter().collect();
        have.sort_by(|a, b| a.name.cmp(&b.name));
        want.sort_by(|a, b| a.name.cmp(&b.name));
        if have == want {
            return Ok(());
        }
        let show = |v: &[&FeatureDef]| {
            v.iter()
                .map(|f| format!("{}:{:?}{}", f.name, f.kind, if f.log { "(log)" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(ArtifactError::Mismatch {
            name: self.manifest.name.clone(),
            detail: format!("it was trained on [{}] but the pipeline provides [{}]", show(&have), show(&want)),
        })
    }

    /// The model's feature names in order.
    pub fn feature_names(&self) -> Vec<String> {
        self.encoder.names().into_iter().map(str::to_string).collect()
    }

    /// Scores rows: per-feature loss → z-score → mean and max of |z| (Morpheus).
    pub fn score(&self, rows: &arrow::array::RecordBatch) -> Result<Scores, super::encode::EncodeError> {
        self.score_with(rows, ZMode::Abs)
    }

    /// Scores rows, summarising the z-scores as `mode` says.
    pub fn score_with(
        &self,
        rows: &arrow::array::RecordBatch,
        mode: ZMode,
    ) -> Result<Scores, super::encode::EncodeError> {
        self.score_calibrated(rows, mode, &[])
    }

    /// Per-feature losses of `rows` (`rows × features`, model order), as scoring computes them.
    pub fn losses(&self, rows: &arrow::array::RecordBatch) -> Result<Vec<Vec<f32>>, super::encode::EncodeError> {
        Ok(self.encoded_losses(&self.encode(rows)?))
    }

    /// Encodes rows as the model's inputs.
    pub fn encode(&self, rows: &arrow::array::RecordBatch) -> Result<Encoded, super::encode::EncodeError> {
        self.encoder.encode(rows)
    }

    /// Per-feature losses of encoded rows.
    pub fn encoded_losses(&self, rows: &Encoded) -> Vec<Vec<f32>> {
        row_losses(&self.net, rows)
    }

    /// Scores rows; row `i` takes its z statistics from `stats[i]` when that is `Some` (a user's
    /// calibration), else from the model's. `stats` may be shorter than the rows (empty: the model's for
    /// every row).
    pub fn score_calibrated(
        &self,
        rows: &arrow::array::RecordBatch,
        mode: ZMode,
        stats: &[Option<&UserStats>],
    ) -> Result<Scores, super::encode::EncodeError> {
        Ok(self.scores_of_losses(self.losses(rows)?, mode, stats))
    }

    /// Scores from per-feature losses (as [`Model::losses`] gives them), with the z statistics of
    /// [`Model::score_calibrated`].
    pub fn scores_of_losses(&self, losses: Vec<Vec<f32>>, mode: ZMode, stats: &[Option<&UserStats>]) -> Scores {
        let model_stats = &self.manifest.loss_stats;
        let mut z = Vec::with_capacity(losses.len());
        let mut mean_abs_z = Vec::with_capacity(losses.len());
        let mut max_abs_z = Vec::with_capacity(losses.len());
        for (i, row) in losses.into_iter().enumerate() {
            let (center, scale) = match stats.get(i).copied().flatten() {
                Some(u) => (&u.center, &u.scale),
                None => (&model_stats.center, &model_stats.scale),
            };
            let zs: Vec<f32> =
                row.iter().enumerate().map(|(j, l)| ((f64::from(*l) - center[j]) / scale[j]) as f32).collect();
            let abs: Vec<f64> = zs.iter().map(|v| mode.magnitude(*v)).collect();
            mean_abs_z.push(abs.iter().sum::<f64>() / abs.len().max(1) as f64);
            max_abs_z.push(abs.iter().copied().fold(0.0, f64::max));
            z.push(zs);
        }
        Scores { features: self.feature_names(), z, mean_abs_z, max_abs_z }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_statistics_shrink_toward_the_models_by_the_prior_rows() {
        let prior = LossStats { mode: StatsMode::Training, center: vec![1.0], scale: vec![1.0] };
        // Ten rows of loss 3.0 (spread 0): centre (10·3 + 10·1)/20 = 2, spread √((10·0 + 10·1)/20).
        let rows = vec![vec![3.0f32]; 10];
        let s = UserStats::shrunk(&rows, &prior, 10.0);
        assert_eq!(s.rows, 10);
        assert!((s.center[0] - 2.0).abs() < 1e-9, "{s:?}");
        assert!((s.scale[0] - 0.5f64.sqrt()).abs() < 1e-6, "{s:?}");
        // No prior: the user's own statistics (the spread kept above zero).
        let s = UserStats::shrunk(&rows, &prior, 0.0);
        assert!((s.center[0] - 3.0).abs() < 1e-9 && s.scale[0] >= 1e-6, "{s:?}");
        // Many rows outweigh the prior.
        let many = vec![vec![3.0f32]; 10_000];
        assert!((UserStats::shrunk(&many, &prior, 20.0).center[0] - 3.0).abs() < 0.01);
    }

    /// A small model on two features: a number and a category.
    fn tiny() -> (Model, arrow::array::RecordBatch) {
        use arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
        use std::sync::Arc;
        let n = 64;
        let rows = arrow::array::RecordBatch::try_from_iter([
            ("timestamp", Arc::new(TimestampMicrosecondArray::from_iter_values(0..n)) as arrow::array::ArrayRef),
            ("count", Arc::new(Float64Array::from_iter_values((0..n).map(|i| (i % 7) as f64)))),
            ("app", Arc::new(StringArray::from_iter_values((0..n).map(|i| ["mail", "chat", "crm"][i as usize % 3])))),
        ])
        .unwrap();
        let defs = vec![
            FeatureDef { name: "count".into(), kind: super::super::FeatureKind::Numeric, log: false },
            FeatureDef { name: "app".into(), kind: super::super::FeatureKind::Categorical, log: false },
        ];
        let config = TrainConfig { epochs: 2, ..TrainConfig::default() };
        (super::super::train("tiny", &defs, &rows, &config, Device::Cpu).unwrap(), rows)
    }

    #[test]
    fn calibration_and_groups_travel_with_the_artifact_and_are_checked() {
        let (mut model, rows) = tiny();
        let losses = model.losses(&rows).unwrap();
        let shifted: Vec<Vec<f32>> = losses.iter().map(|r| r.iter().map(|l| l + 5.0).collect()).collect();
        model.calibration.insert("alice".into(), UserStats::shrunk(&shifted, &model.manifest.loss_stats, 0.0));
        model.groups.insert("alice".into(), "b1".into());
        let files = model.to_files().unwrap();
        let file = |name: &str| files.iter().find(|(n, _)| *n == name).map(|(_, b)| b.clone()).unwrap();
        let mut back = Model::from_files("tiny", &file(MANIFEST), &file(WEIGHTS), Device::Cpu).unwrap();
        assert_eq!(back.manifest.files, vec![CALIBRATION.to_string(), GROUPS.to_string()]);
        for f in back.manifest.files.clone() {
            back.attach(&f, &file(&f)).unwrap();
        }
        assert_eq!(back.calibration, model.calibration);
        assert_eq!(back.groups["alice"], "b1");
        // Alice's statistics sit 5 above the model's losses: her rows score far below the model's z.
        let alice = back.calibration.get("alice");
        let own = back.score_calibrated(&rows, ZMode::Abs, &vec![alice; rows.num_rows()]).unwrap();
        let plain = back.score_with(&rows, ZMode::Abs).unwrap();
        assert!(own.z[0][0] < plain.z[0][0] - 1.0, "{:?} vs {:?}", own.z[0], plain.z[0]);
        // Statistics that do not fit the model are refused with the user's name.
        let bad = br#"{"bob": {"rows": 3, "center": [0.0], "scale": [1.0]}}"#;
        let err = back.attach(CALIBRATION, bad).unwrap_err().to_string();
        assert!(err.contains("\"bob\"") && err.contains("2 features"), "{err}");
        assert!(back.attach("other.json", b"{}").unwrap_err().to_string().contains("unknown file other.json"));
    }
}
