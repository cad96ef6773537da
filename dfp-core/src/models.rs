//! The model registry: named, versioned model artifacts (a set of files per version).
//!
//! A registry stores each version of a model as a few files (for dfp: `model.safetensors` and
//! `manifest.json`), numbers versions 1, 2, … per name, and publishes atomically: a reader sees a version
//! only once all of its files are written. Implementations: a directory or `s3://` prefix (dfp-stages'
//! `registry::local`), MLflow later.

/// One model as a registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedModel {
    /// Model name.
    pub name: String,
    /// Its latest version (1, 2, …), or why that cannot be read (a damaged `LATEST`, say): one bad model
    /// does not stop a listing.
    pub latest: Result<u64, String>,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[error("model registry {location}: {message}")]
pub struct RegistryError {
    /// The registry (a directory, URL, …).
    pub location: String,
    /// What failed.
    pub message: String,
}

/// Stores and serves model artifacts.
pub trait ModelRegistry: Send + Sync {
    /// Where the registry is, for messages.
    fn location(&self) -> &str;
    /// Publishes a new version of `name` made of `files`; returns its version number.
    fn publish(&self, name: &str, files: &[(&str, Vec<u8>)]) -> Result<u64, RegistryError>;
    /// The latest complete version of `name`, if any.
    fn latest(&self, name: &str) -> Result<Option<u64>, RegistryError>;
    /// One file of a version.
    fn fetch(&self, name: &str, version: u64, file: &str) -> Result<Vec<u8>, RegistryError>;
    /// Every model with its latest version (or why it has none that can be read), sorted by name. Fails
    /// only when the registry itself cannot be listed.
    fn list(&self) -> Result<Vec<ListedModel>, RegistryError>;
}
