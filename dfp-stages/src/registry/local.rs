//! The local model registry: a directory or an `s3://` prefix, through object_store.
//!
//! Layout, per model name: `NAME/v000001/model.safetensors`, `NAME/v000001/manifest.json`, …, and
//! `NAME/LATEST` holding the newest complete version number. Publishing writes the weights, then the
//! manifest (created only if absent, so two concurrent publishers never share a version), then moves
//! `LATEST`; a reader follows `LATEST`, so it never sees a half-written version.

use std::sync::Arc;

use dfp_core::models::{ListedModel, ModelRegistry, RegistryError};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::store::{io_runtime, parse_s3, S3Options, S3Url};

/// A registry in a directory or under an `s3://bucket/prefix`.
pub struct LocalRegistry {
    location: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for LocalRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRegistry").field("location", &self.location).finish()
    }
}

fn version_dir(v: u64) -> String {
    format!("v{v:06}")
}

impl LocalRegistry {
    /// Opens (and for a directory, creates) a registry.
    pub fn open(location: &str, s3: &S3Options) -> Result<Self, RegistryError> {
        let err = |m: String| RegistryError { location: location.to_string(), message: m };
        let runtime = io_runtime().map_err(|e| err(format!("cannot start the I/O runtime: {e}")))?;
        let (store, prefix): (Arc<dyn ObjectStore>, ObjPath) = if let Some(S3Url { bucket, key }) = parse_s3(location) {
            (Arc::new(s3.build(bucket).map_err(|e| err(e.to_string()))?), ObjPath::from(key.trim_end_matches('/')))
        } else {
            std::fs::create_dir_all(location).map_err(|e| err(format!("cannot create the directory: {e}")))?;
            let store = LocalFileSystem::new_with_prefix(location).map_err(|e| err(e.to_string()))?;
            (Arc::new(store), ObjPath::default())
        };
        Ok(LocalRegistry { location: location.to_string(), store, prefix, runtime })
    }

    fn path(&self, parts: &[&str]) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in parts {
            p = p.clone().join(*part);
        }
        p
    }

    fn err(&self, message: impl Into<String>) -> RegistryError {
        RegistryError { location: self.location.clone(), message: message.into() }
    }

    fn versions(&self, name: &str) -> Result<Vec<u64>, RegistryError> {
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&self.path(&[name]))))
            .map_err(|e| self.err(format!("listing {name}: {e}")))?;
        let mut versions: Vec<u64> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|f| f.strip_prefix('v')).and_then(|v| v.parse().ok()))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    fn get(&self, path: &ObjPath) -> Result<Option<Vec<u8>>, RegistryError> {
        let store = Arc::clone(&self.store);
        match self.runtime.block_on(async move { store.get(path).await?.bytes().await }) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("reading {path}: {e}"))),
        }
    }
}

impl ModelRegistry for LocalRegistry {
    fn location(&self) -> &str {
        &self.location
    }

    fn publish(&self, name: &str, files: &[(&str, Vec<u8>)]) -> Result<u64, RegistryError> {
        let (last, rest): (Vec<_>, Vec<_>) = files.iter().partition(|(f, _)| *f == "manifest.json");
        let ordered: Vec<&(&str, Vec<u8>)> = rest.into_iter().chain(last).collect();
        let mut version = self.versions(name)?.last().copied().unwrap_or(0) + 1;
        for _attempt in 0..16 {
            let dir = version_dir(version);
            let mut taken = false;
            for (i, (file, bytes)) in ordered.iter().enumerate() {
                let path = self.path(&[name, &dir, file]);
                // The last file marks the version complete: create it only if nobody else did.
                let mode = if i + 1 == ordered.len() { PutMode::Create } else { PutMode::Overwrite };
                let payload = PutPayload::from(bytes.clone());
                let result = self.runtime.block_on(self.store.put_opts(
                    &path,
                    payload,
                    PutOptions { mode, ..Default::default() },
                ));
                match result {
                    Ok(_) => {}
                    Err(object_store::Error::AlreadyExists { .. }) => {
                        taken = true;
                        break;
                    }
                    Err(e) => return Err(self.err(format!("writing {path}: {e}"))),
                }
            }
            if taken {
                version += 1;
                continue;
            }
            // Move LATEST forward (never back, if a newer version was published meanwhile).
            let newest = self.versions(name)?.last().copied().unwrap_or(version).max(version);
            let latest = self.path(&[name, "LATEST"]);
            self.runtime
                .block_on(self.store.put(&latest, PutPayload::from(newest.to_string().into_bytes())))
                .map_err(|e| self.err(format!("writing {latest}: {e}")))?;
            return Ok(version);
        }
        Err(self.err(format!("{name}: could not claim a version after 16 attempts")))
    }

    fn latest(&self, name: &str) -> Result<Option<u64>, RegistryError> {
        let Some(bytes) = self.get(&self.path(&[name, "LATEST"]))? else { return Ok(None) };
        let text = String::from_utf8_lossy(&bytes);
        text.trim()
            .parse()
            .map(Some)
            .map_err(|_| self.err(format!("{name}/LATEST holds \"{}\", not a version", text.trim())))
    }

    fn fetch(&self, name: &str, version: u64, file: &str) -> Result<Vec<u8>, RegistryError> {
        let path = self.path(&[name, &version_dir(version), file]);
        self.get(&path)?.ok_or_else(|| self.err(format!("{path} does not exist")))
    }

    fn list(&self) -> Result<Vec<ListedModel>, RegistryError> {
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(if self.prefix.as_ref().is_empty() {
                None
            } else {
                Some(&self.prefix)
            }))
            .map_err(|e| self.err(format!("listing: {e}")))?;
        let mut out = Vec::new();
        for p in listed.common_prefixes {
            let Some(name) = p.filename() else { continue };
            let latest = match self.latest(name) {
                Ok(Some(version)) => Ok(version),
                Ok(None) => Err("no published version (no LATEST)".to_string()),
                Err(e) => Err(e.message),
            };
            out.push(ListedModel { name: name.to_string(), latest });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_latest_follows_and_names_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let reg = LocalRegistry::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        let azure = dfp_core::Registry::global().families().get("azure").cloned().expect("built in");
        let name = crate::model::model_name(&azure, Some("alice@contoso.com"));
        assert_eq!(reg.latest(&name).unwrap(), None);
        let v1 =
            reg.publish(&name, &[("model.safetensors", b"w1".to_vec()), ("manifest.json", b"{}".to_vec())]).unwrap();
        let v2 =
            reg.publish(&name, &[("model.safetensors", b"w2".to_vec()), ("manifest.json", b"{}".to_vec())]).unwrap();
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(reg.latest(&name).unwrap(), Some(2));
        assert_eq!(reg.fetch(&name, 1, "model.safetensors").unwrap(), b"w1");
        assert_eq!(reg.list().unwrap(), vec![ListedModel { name: name.clone(), latest: Ok(2) }]);
        // A second handle on the same directory sees the same models.
        let again = LocalRegistry::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        assert_eq!(again.fetch(&name, 2, "model.safetensors").unwrap(), b"w2");
    }

    #[test]
    fn a_version_without_its_manifest_is_not_latest() {
        let dir = tempfile::tempdir().unwrap();
        let reg = LocalRegistry::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        reg.publish("m", &[("model.safetensors", b"w".to_vec()), ("manifest.json", b"{}".to_vec())]).unwrap();
        // A crashed publisher left weights only for version 2.
        std::fs::create_dir_all(dir.path().join("m/v000002")).unwrap();
        std::fs::write(dir.path().join("m/v000002/model.safetensors"), b"partial").unwrap();
        assert_eq!(reg.latest("m").unwrap(), Some(1));
        // The next publish skips the abandoned slot.
        assert_eq!(
            reg.publish("m", &[("model.safetensors", b"w3".to_vec()), ("manifest.json", b"{}".to_vec())]).unwrap(),
            3
        );
        assert_eq!(reg.latest("m").unwrap(), Some(3));
        assert_eq!(reg.fetch("m", 3, "model.safetensors").unwrap(), b"w3");
    }
}
