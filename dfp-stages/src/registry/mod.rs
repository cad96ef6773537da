//! Model registries. `local` keeps artifacts in a directory or under an `s3://` prefix; `mlflow` on an
//! MLflow tracking server. [`open`] picks one from the location.
pub mod local;
pub mod mlflow;

use std::sync::Arc;

use dfp_core::models::{ModelRegistry, RegistryError};

pub use local::LocalRegistry;
pub use mlflow::{MlflowOptions, MlflowRegistry};

use crate::store::S3Options;

/// Opens the registry at `location`: `mlflow://HOST:PORT` (or `mlflow+https://…`) is MLflow, anything
/// else a directory or an `s3://` prefix.
pub fn open(location: &str, s3: &S3Options, mlflow: &MlflowOptions) -> Result<Arc<dyn ModelRegistry>, RegistryError> {
    if mlflow::is_mlflow(location) {
        Ok(Arc::new(MlflowRegistry::open(location, mlflow, s3)?))
    } else {
        Ok(Arc::new(LocalRegistry::open(location, s3)?))
    }
}
