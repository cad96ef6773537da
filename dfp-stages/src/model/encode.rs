//! Columns → tensors: vocabularies for categorical features, scalers for numeric ones.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use serde::{Deserialize, Serialize};

use super::{FeatureDef, FeatureKind};
use crate::normalize::MISSING;

/// How one feature is encoded; stored in the model manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodedFeature {
    /// The column.
    #[serde(flatten)]
    pub def: FeatureDef,
    /// Categorical: the categories seen in training (index `i + 1`; 0 is "other").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vocab: Vec<String>,
    /// Numeric: mean used for scaling.
    #[serde(default)]
    pub mean: f64,
    /// Numeric: standard deviation used for scaling (1 when the feature is constant).
    #[serde(default = "one")]
    pub std: f64,
}

fn one() -> f64 {
    1.0
}

/// The fitted encoding of all model inputs (the manifest stores its `features`).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureEncoder {
    /// Features in model order: numeric, then binary, then categorical.
    pub features: Vec<EncodedFeature>,
    index: Vec<HashMap<String, i64>>,
}

/// A batch of encoded rows, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    /// Rows.
    pub rows: usize,
    /// Scaled numeric values, `rows × n_numeric`.
    pub numeric: Vec<f32>,
    /// Binary values as 0/1, `rows × n_binary`.
    pub binary: Vec<f32>,
    /// Category indices, `rows × n_categorical`.
    pub categorical: Vec<i64>,
}

/// Why rows cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A model input column is missing from the batch.
    #[error("column \"{0}\" is missing: the model needs it (check the pipeline's features stage and options)")]
    MissingColumn(String),
    /// A model input column has a type the feature kind cannot read.
    #[error("column \"{column}\" is {found}, but the model reads it as {kind:?}")]
    WrongType {
        /// The column.
        column: String,
        /// Its Arrow type.
        found: DataType,
        /// The feature kind.
        kind: FeatureKind,
    },
}

fn numbers(batch: &RecordBatch, name: &str) -> Result<Vec<Option<f64>>, EncodeError> {
    let col = batch.column_by_name(name).ok_or_else(|| EncodeError::MissingColumn(name.into()))?;
    Ok(match col.data_type() {
        DataType::Int64 => col.as_primitive::<Int64Type>().iter().map(|v| v.map(|x| x as f64)).collect(),
        DataType::Float64 => col.as_primitive::<Float64Type>().iter().collect(),
        DataType::Boolean => col.as_boolean().iter().map(|v| v.map(|b| if b { 1.0 } else { 0.0 })).collect(),
        other => {
            return Err(EncodeError::WrongType {
                column: name.into(),
                found: other.clone(),
                kind: FeatureKind::Numeric,
            })
        }
    })
}

fn texts<'a>(batch: &'a RecordBatch, name: &str) -> Result<Vec<&'a str>, EncodeError> {
    let col = batch.column_by_name(name).ok_or_else(|| EncodeError::MissingColumn(name.into()))?;
    match col.data_type() {
        DataType::Utf8 => Ok(col.as_string::<i32>().iter().map(|v| v.unwrap_or(MISSING)).collect()),
        other => {
            Err(EncodeError::WrongType { column: name.into(), found: other.clone(), kind: FeatureKind::Categorical })
        }
    }
}

fn prepare(def: &FeatureDef, v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite()).map(|x| if def.log { x.max(0.0).ln_1p() } else { x })
}

impl FeatureEncoder {
    /// Fits vocabularies and scalers on training rows.
    pub fn fit(defs: &[FeatureDef], batch: &RecordBatch) -> Result<Self, EncodeError> {
        let mut ordered: Vec<&FeatureDef> = Vec::new();
        for kind in [FeatureKind::Numeric, FeatureKind::Binary, FeatureKind::Categorical] {
            ordered.extend(defs.iter().filter(|d| d.kind == kind));
        }
        let mut features = Vec::with_capacity(ordered.len());
        for def in ordered {
            let mut f = EncodedFeature { def: def.clone(), vocab: Vec::new(), mean: 0.0, std: 1.0 };
            match def.kind {
                FeatureKind::Numeric => {
                    let vals: Vec<f64> =
                        numbers(batch, &def.name)?.into_iter().filter_map(|v| prepare(def, v)).collect();
                    if !vals.is_empty() {
                        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                        f.mean = mean;
                        f.std = if var.sqrt() > 1e-9 { var.sqrt() } else { 1.0 };
                    }
                }
                FeatureKind::Binary => {
                    numbers(batch, &def.name)?;
                }
                FeatureKind::Categorical => {
                    let mut counts: HashMap<&str, usize> = HashMap::new();
                    for v in texts(batch, &def.name)? {
                        *counts.entry(v).or_default() += 1;
                    }
                    let mut vocab: Vec<(&str, usize)> = counts.into_iter().collect();
                    // Most frequent first, then by name: a stable order for a given input.
                    vocab.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                    f.vocab = vocab.into_iter().map(|(v, _)| v.to_string()).collect();
                }
            }
            features.push(f);
        }
        Ok(Self::with_features(features))
    }

    /// An encoder from fitted features (as stored in a manifest).
    pub fn with_features(features: Vec<EncodedFeature>) -> Self {
        let index = features
            .iter()
            .map(|f| f.vocab.iter().enumerate().map(|(i, v)| (v.clone(), i as i64 + 1)).collect())
            .collect();
        FeatureEncoder { features, index }
    }

    fn count(&self, kind: FeatureKind) -> usize {
        self.features.iter().filter(|f| f.def.kind == kind).count()
    }

    /// Numbers of numeric, binary and categorical features.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.count(FeatureKind::Numeric), self.count(FeatureKind::Binary), self.count(FeatureKind::Categorical))
    }

    /// Category counts (including "other") of the categorical features, in order.
    pub fn cardinalities(&self) -> Vec<usize> {
        self.features.iter().filter(|f| f.def.kind == FeatureKind::Categorical).map(|f| f.vocab.len() + 1).collect()
    }

    /// Feature names in model order.
    pub fn names(&self) -> Vec<&str> {
        self.features.iter().map(|f| f.def.name.as_str()).collect()
    }

    /// Encodes rows.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Encoded, EncodeError> {
        let rows = batch.num_rows();
        let (nn, nb, nc) = self.shape();
        let mut out = Encoded {
            rows,
            numeric: vec![0.0; rows * nn],
            binary: vec![0.0; rows * nb],
            categorical: vec![0; rows * nc],
        };
        let (mut jn, mut jb, mut jc) = (0, 0, 0);
        for (k, f) in self.features.iter().enumerate() {
            match f.def.kind {
                FeatureKind::Numeric => {
                    for (r, v) in numbers(batch, &f.def.name)?.into_iter().enumerate() {
                        let x = prepare(&f.def, v).unwrap_or(f.mean);
                        out.numeric[r * nn + jn] = ((x - f.mean) / f.std) as f32;
                    }
                    jn += 1;
                }
                FeatureKind::Binary => {
                    for (r, v) in numbers(batch, &f.def.name)?.into_iter().enumerate() {
                        out.binary[r * nb + jb] = if v.unwrap_or(0.0) > 0.5 { 1.0 } else { 0.0 };
                    }
                    jb += 1;
                }
                FeatureKind::Categorical => {
                    for (r, v) in texts(batch, &f.def.name)?.into_iter().enumerate() {
                        out.categorical[r * nc + jc] = self.index[k].get(v).copied().unwrap_or(0);
                    }
                    jc += 1;
                }
            }
        }
        Ok(out)
    }
}
