//! Where files come from: local paths, directories and globs, and `s3://` URLs, all through
//! `object_store`, so one code path lists, dates and reads every file.

use std::sync::Arc;

use bytes::Bytes;
use dfp_core::StageError;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use schemars::JsonSchema;
use serde::Deserialize;

/// S3 connection settings (all optional: the defaults read nothing from the environment). `Debug` shows
/// `***` for the secret key and the session token.
#[derive(Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server (`http://127.0.0.1:9000`); AWS when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key (write `${env:NAME}` rather than the secret itself).
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Allow plain `http://` endpoints.
    #[serde(default)]
    pub allow_http: bool,
    /// Also read the standard `AWS_*` environment variables (explicit fields win).
    #[serde(default)]
    pub from_env: bool,
    /// Send unsigned requests (public buckets).
    #[serde(default)]
    pub anonymous: bool,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("from_env", &self.from_env)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl S3Options {
    /// An S3 client for `bucket` with these settings; explicit fields win over the environment.
    pub fn build(&self, bucket: &str) -> Result<object_store::aws::AmazonS3, object_store::Error> {
        let mut b = if self.from_env { AmazonS3Builder::from_env() } else { AmazonS3Builder::new() };
        b = b.with_bucket_name(bucket);
        // An unset flag leaves what the environment said (AWS_ALLOW_HTTP) in place.
        if self.allow_http || !self.from_env {
            b = b.with_allow_http(self.allow_http);
        }
        if let Some(v) = &self.endpoint {
            b = b.with_endpoint(v);
        }
        if let Some(v) = &self.region {
            b = b.with_region(v);
        } else if !self.from_env {
            b = b.with_region("us-east-1");
        }
        if let Some(v) = &self.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &self.secret_access_key {
            b = b.with_secret_access_key(v);
        }
        if let Some(v) = &self.session_token {
            b = b.with_token(v);
        }
        if self.anonymous {
            b = b.with_skip_signature(true);
        }
        b.build()
    }
}

/// The parts of an `s3://bucket/key` URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Url<'a> {
    /// The bucket (may be empty when the URL lacks one: callers report that).
    pub bucket: &'a str,
    /// The key or prefix after the bucket (may be empty).
    pub key: &'a str,
}

/// Splits an `s3://bucket/key` location; `None` when it is not an `s3://` URL.
pub fn parse_s3(location: &str) -> Option<S3Url<'_>> {
    let rest = location.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    Some(S3Url { bucket, key })
}

/// A single-threaded tokio runtime for blocking on object-store, HTTP and Kafka futures from a worker
/// thread (stages are synchronous; each keeps its own runtime).
pub fn io_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path inside the store.
    pub path: ObjPath,
    /// How to show it: an absolute local path or an `s3://` URL.
    pub display: String,
    /// Last modification time, microseconds since the epoch.
    pub modified_micros: i64,
    /// Size in bytes.
    pub size: u64,
}

enum Scope {
    /// One object.
    File(ObjPath),
    /// The objects directly under a prefix.
    Dir(ObjPath),
    /// Every object under a prefix whose full display name matches the pattern.
    Glob(ObjPath, glob::Pattern),
}

/// A listable, readable set of files.
pub struct Store {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is the local file system: files are then read on the calling thread (one
    /// `read`, no hand-off to the I/O runtime's blocking pool, which costs more than a small file's read).
    local: Option<Arc<LocalFileSystem>>,
    scope: Scope,
    display_prefix: String,
    runtime: tokio::runtime::Runtime,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> StageError {
    StageError::Other(format!("{what}: {e}"))
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Splits `a/b/c*/d` into (`a/b`, `c*/d`): the part before the first component with a glob character.
fn split_glob(s: &str) -> (&str, &str) {
    let first = s.find(['*', '?', '[']).unwrap_or(s.len());
    match s[..first].rfind('/') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => ("", s),
    }
}

impl Store {
    /// Opens a location: a local file, directory or glob, or `s3://bucket/prefix[/glob]`.
    pub fn open(location: &str, s3: &S3Options) -> Result<Store, StageError> {
        let runtime = io_runtime().map_err(|e| io_err("cannot start the I/O runtime", e))?;
        if let Some(S3Url { bucket, key }) = parse_s3(location) {
            if bucket.is_empty() {
                return Err(StageError::Other(format!("{location}: no bucket in the URL")));
            }
            let store: Arc<dyn ObjectStore> = Arc::new(s3.build(bucket).map_err(|e| io_err(location, e))?);
            let scope = if has_glob(key) {
                let (prefix, _) = split_glob(key);
                let pattern = glob::Pattern::new(key).map_err(|e| io_err(location, e))?;
                Scope::Glob(ObjPath::from(prefix), pattern)
            } else if key.is_empty() || key.ends_with('/') {
                Scope::Dir(ObjPath::from(key.trim_end_matches('/')))
            } else {
                // A key or a "directory": decided when listing.
                Scope::File(ObjPath::from(key))
            };
            return Ok(Store { store, local: None, scope, display_prefix: format!("s3://{bucket}/"), runtime });
        }
        let local = Arc::new(LocalFileSystem::new());
        let store: Arc<dyn ObjectStore> = Arc::clone(&local) as Arc<dyn ObjectStore>;
        let cwd = std::env::current_dir().map_err(|e| io_err("cannot read the current directory", e))?;
        let scope = if has_glob(location) {
            let (base, rest) = split_glob(location);
            let base_dir = cwd.join(if base.is_empty() && !location.starts_with('/') { "." } else { base });
            let base_dir =
                if base.is_empty() && location.starts_with('/') { std::path::PathBuf::from("/") } else { base_dir };
            let abs = std::fs::canonicalize(&base_dir).map_err(|e| StageError::io(&base_dir, e))?;
            let pattern_text = format!("{}/{rest}", abs.display().to_string().trim_end_matches('/'));
            let pattern = glob::Pattern::new(&pattern_text).map_err(|e| io_err(location, e))?;
            let prefix = ObjPath::from_absolute_path(&abs).map_err(|e| io_err(location, e))?;
            Scope::Glob(prefix, pattern)
        } else {
            let p = cwd.join(location);
            let abs = std::fs::canonicalize(&p).map_err(|e| StageError::io(location, e))?;
            let obj = ObjPath::from_absolute_path(&abs).map_err(|e| io_err(location, e))?;
            if abs.is_dir() {
                Scope::Dir(obj)
            } else {
                Scope::File(obj)
            }
        };
        Ok(Store { store, local: Some(local), scope, display_prefix: "/".into(), runtime })
    }

    /// The display form of a path.
    pub fn display(&self, path: &ObjPath) -> String {
        format!("{}{}", self.display_prefix, path)
    }

    fn info(&self, meta: object_store::ObjectMeta) -> FileInfo {
        FileInfo {
            display: self.display(&meta.location),
            path: meta.location,
            modified_micros: meta.last_modified.timestamp_micros(),
            size: meta.size,
        }
    }

    /// Lists the files, sorted by display name. Hidden files (a name starting with `.`) are left out.
    pub fn list(&self) -> Result<Vec<FileInfo>, StageError> {
        use futures_util::StreamExt;
        let store = Arc::clone(&self.store);
        let mut out = Vec::new();
        match &self.scope {
            Scope::File(path) => {
                let head = self.runtime.block_on(store.head(path));
                match head {
                    Ok(meta) => out.push(self.info(meta)),
                    // An S3 key that is not an object may be a "directory".
                    Err(object_store::Error::NotFound { .. }) if self.display_prefix != "/" => {
                        let listed = self
                            .runtime
                            .block_on(store.list_with_delimiter(Some(path)))
                            .map_err(|e| io_err(&self.display(path), e))?;
                        out.extend(listed.objects.into_iter().map(|m| self.info(m)));
                        if out.is_empty() {
                            return Err(StageError::Other(format!("{}: no such object or prefix", self.display(path))));
                        }
                    }
                    Err(e) => return Err(io_err(&self.display(path), e)),
                }
            }
            Scope::Dir(prefix) => {
                let listed = self
                    .runtime
                    .block_on(store.list_with_delimiter(Some(prefix)))
                    .map_err(|e| io_err(&self.display(prefix), e))?;
                out.extend(listed.objects.into_iter().map(|m| self.info(m)));
            }
            Scope::Glob(prefix, pattern) => {
                let opts = glob::MatchOptions { require_literal_separator: true, ..Default::default() };
                let is_local = self.display_prefix == "/";
                let metas: Vec<object_store::ObjectMeta> = self.runtime.block_on(async {
                    let mut stream = store.list(Some(prefix));
                    let mut metas = Vec::new();
                    while let Some(item) = stream.next().await {
                        metas.push(item.map_err(|e| io_err(&format!("listing {}{prefix}", self.display_prefix), e))?);
                    }
                    Ok::<_, StageError>(metas)
                })?;
                for meta in metas {
                    let candidate = if is_local { format!("/{}", meta.location) } else { meta.location.to_string() };
                    if pattern.matches_with(&candidate, opts) {
                        out.push(self.info(meta));
                    }
                }
            }
        }
        out.retain(|f| !f.path.filename().unwrap_or_default().starts_with('.'));
        out.sort_by(|a, b| a.display.cmp(&b.display));
        Ok(out)
    }

    /// Reads a whole file.
    pub fn get(&self, file: &FileInfo) -> Result<Bytes, StageError> {
        if let Some(local) = &self.local {
            let path = local.path_to_filesystem(&file.path).map_err(|e| io_err(&file.display, e))?;
            return std::fs::read(&path).map(Bytes::from).map_err(|e| io_err(&file.display, e));
        }
        let store = Arc::clone(&self.store);
        self.runtime
            .block_on(async move { store.get(&file.path).await?.bytes().await })
            .map_err(|e| io_err(&file.display, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret_key_and_the_token() {
        let o = S3Options {
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI-s3cret".into()),
            session_token: Some("FwoGZXIvYXdz-t0ken".into()),
            ..Default::default()
        };
        let text = format!("{o:?}");
        assert!(!text.contains("s3cret") && !text.contains("t0ken") && text.contains("AKIDEXAMPLE"), "{text}");
    }

    #[test]
    fn glob_split_keeps_the_literal_directory() {
        assert_eq!(split_glob("logs/2024/*.json"), ("logs/2024", "*.json"));
        assert_eq!(split_glob("*.json"), ("", "*.json"));
        assert_eq!(split_glob("a/b*/c/*.gz"), ("a", "b*/c/*.gz"));
    }

    #[test]
    fn local_globs_directories_and_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        for name in ["a.json", "b.json", "c.csv", ".hidden.json", "sub/d.json"] {
            std::fs::write(dir.path().join(name), "[]").unwrap();
        }
        let names = |loc: &str| -> Vec<String> {
            Store::open(loc, &S3Options::default())
                .unwrap()
                .list()
                .unwrap()
                .into_iter()
                .map(|f| f.display.rsplit('/').next().unwrap().to_string())
                .collect()
        };
        let d = dir.path().display().to_string();
        assert_eq!(names(&format!("{d}/*.json")), ["a.json", "b.json"]);
        assert_eq!(names(&format!("{d}/**/*.json")), ["a.json", "b.json", "d.json"]);
        assert_eq!(names(&d), ["a.json", "b.json", "c.csv"]);
        assert_eq!(names(&format!("{d}/c.csv")), ["c.csv"]);
        assert!(Store::open(&format!("{d}/missing.json"), &S3Options::default()).is_err());
    }
}
