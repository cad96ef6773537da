//! Where profile sets live, and the per-worker cache that hands users their profile.
//!
//! [`ProfileStore`] is the storage boundary (a trait, so that another store can be added);
//! [`RegistryProfiles`] keeps sets in a model registry next to the models (local folder, `s3://`, MLflow),
//! so that one `--var models=…` gives both. [`ProfileCache`] is what `features` and `add-user-data` use:
//! it loads a user's shard on first need, serves the population profile to users the set does not know,
//! and picks up a newer set once the TTL has passed.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfp_core::models::ModelRegistry;
use dfp_core::Family;
use serde::{Deserialize, Serialize};

use super::history::{Interner, UserState};
use super::{roles_of, set_name, shard_of, Profile, ProfileError, FORMAT, SHARDS};

/// The `manifest.json` of a profile set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// Always `dfp-profiles`.
    pub kind: String,
    /// The log family.
    pub family: String,
    /// The roles the profiles track, in order.
    pub roles: Vec<String>,
    /// Shard files (`shard-000.jsonl.gz` …).
    pub shards: usize,
    /// Profiles in the set.
    pub users: u64,
    /// The history window the profiles were kept with.
    pub history_days: u32,
    /// When the set was written (RFC 3339).
    pub written_at: String,
    /// The population profile.
    pub population: Profile,
}

/// Stores profile sets: versioned, each version a manifest and its shard files.
pub trait ProfileStore: Send + Sync {
    /// Where the store is, for messages.
    fn location(&self) -> String;
    /// Publishes a new set of `family` made of `files`; returns its version.
    fn publish(&self, family: &Family, files: &[(&str, Vec<u8>)]) -> Result<u64, ProfileError>;
    /// The latest complete set of `family`, if any.
    fn latest(&self, family: &Family) -> Result<Option<u64>, ProfileError>;
    /// One file of a set.
    fn fetch(&self, family: &Family, version: u64, file: &str) -> Result<Vec<u8>, ProfileError>;
}

/// Profile sets in a model registry: the model `DFP-<prefix>-=profiles`.
pub struct RegistryProfiles {
    registry: Arc<dyn ModelRegistry>,
}

impl RegistryProfiles {
    /// Profiles next to the models of `registry`.
    pub fn new(registry: Arc<dyn ModelRegistry>) -> Self {
        RegistryProfiles { registry }
    }
}

impl ProfileStore for RegistryProfiles {
    fn location(&self) -> String {
        self.registry.location().to_string()
    }
    fn publish(&self, family: &Family, files: &[(&str, Vec<u8>)]) -> Result<u64, ProfileError> {
        self.registry.publish(&set_name(family), files).map_err(|e| ProfileError(e.to_string()))
    }
    fn latest(&self, family: &Family) -> Result<Option<u64>, ProfileError> {
        self.registry.latest(&set_name(family)).map_err(|e| ProfileError(e.to_string()))
    }
    fn fetch(&self, family: &Family, version: u64, file: &str) -> Result<Vec<u8>, ProfileError> {
        self.registry.fetch(&set_name(family), version, file).map_err(|e| ProfileError(e.to_string()))
    }
}

/// The file name of shard `i`.
pub fn shard_file(i: usize) -> String {
    format!("shard-{i:03}.jsonl.gz")
}

/// Encodes a profile set: the manifest and every shard file.
pub fn encode_set(
    family: &Family,
    history_days: u32,
    profiles: impl Iterator<Item = Profile>,
    population: Profile,
    written_at: String,
) -> Result<Vec<(String, Vec<u8>)>, ProfileError> {
    let io = |e: std::io::Error| ProfileError(format!("encoding profiles: {e}"));
    let mut shards: Vec<flate2::write::GzEncoder<Vec<u8>>> =
        (0..SHARDS).map(|_| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())).collect();
    let mut users = 0u64;
    for p in profiles {
        let shard = &mut shards[shard_of(&p.user)];
        serde_json::to_writer(&mut *shard, &p).map_err(|e| ProfileError(format!("encoding profiles: {e}")))?;
        shard.write_all(b"\n").map_err(io)?;
        users += 1;
    }
    let manifest = SetManifest {
        format: FORMAT,
        kind: super::SET_KIND.into(),
        family: family.name.clone(),
        roles: roles_of(family).iter().map(|r| (*r).to_string()).collect(),
        shards: SHARDS,
        users,
        history_days,
        written_at,
        population,
    };
    let mut files = vec![(
        "manifest.json".to_string(),
        serde_json::to_vec_pretty(&manifest).map_err(|e| ProfileError(format!("encoding profiles: {e}")))?,
    )];
    for (i, shard) in shards.into_iter().enumerate() {
        files.push((shard_file(i), shard.finish().map_err(io)?));
    }
    Ok(files)
}

/// Reads one shard file: the profiles it holds, and the lines that could not be read (line number and why).
pub fn decode_shard(bytes: &[u8]) -> (Vec<Profile>, Vec<(usize, String)>) {
    let mut text = Vec::new();
    let mut bad = Vec::new();
    if let Err(e) = flate2::read::GzDecoder::new(bytes).read_to_end(&mut text) {
        // What was decompressed before the damage is still read.
        bad.push((0, format!("damaged gzip: {e}")));
    }
    let mut out = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Profile>(line) {
            Ok(p) => out.push(p),
            Err(e) => bad.push((i + 1, e.to_string())),
        }
    }
    (out, bad)
}

/// Reads and checks a set's manifest.
pub fn decode_manifest(bytes: &[u8], family: &Family) -> Result<SetManifest, ProfileError> {
    let m: SetManifest = serde_json::from_slice(bytes)
        .map_err(|e| ProfileError(format!("manifest.json of the profile set cannot be read: {e}")))?;
    if m.format != FORMAT {
        return Err(ProfileError(format!(
            "the profile set has format {} and this dfp reads format {FORMAT} (retrain to write a new set)",
            m.format
        )));
    }
    if m.family != family.name {
        return Err(ProfileError(format!("the profile set is of family {}, not {}", m.family, family.name)));
    }
    if m.shards != SHARDS {
        return Err(ProfileError(format!(
            "the profile set says it has {} shards; format {FORMAT} has {SHARDS}",
            m.shards
        )));
    }
    Ok(m)
}

/// What the cache handed out for a user.
pub(crate) enum Seed {
    /// The user's own profile.
    Own(UserState),
    /// The user has no (usable) profile: the population's.
    Population(UserState),
    /// No profile set at all: start empty.
    Empty,
}

/// The profile set of one worker: loaded shard by shard as its users show up.
pub struct ProfileCache {
    store: Arc<dyn ProfileStore>,
    family: Arc<Family>,
    roles: Vec<&'static str>,
    ttl: Duration,
    checked: Option<Instant>,
    /// The set in use: its version and manifest.
    current: Option<(u64, SetManifest)>,
    /// Users of loaded shards not handed out yet (only those this worker owns when `owner` is set).
    waiting: HashMap<String, Profile>,
    loaded: HashSet<usize>,
    /// Shards that could not be fetched, and when to try again.
    retry: Vec<(usize, Instant)>,
    /// (worker index, workers): keep only users routed to this worker.
    owner: Option<(usize, usize)>,
    /// Users whose profile could not be used, each reported once.
    reported: HashSet<String>,
    /// Problems to report (the caller logs and counts them).
    problems: Vec<String>,
    /// Whether the store could be read at the last attempt (for readiness).
    reachable: Result<(), String>,
    /// `reachable` changed since [`readiness_change`](ProfileCache::readiness_change) last said.
    readiness_changed: bool,
}

impl ProfileCache {
    /// A cache over `store` for `family`, checking for a newer set every `ttl`.
    pub fn new(store: Arc<dyn ProfileStore>, family: Arc<Family>, ttl: Duration) -> Self {
        ProfileCache {
            roles: roles_of(&family),
            store,
            family,
            ttl,
            checked: None,
            current: None,
            waiting: HashMap::new(),
            loaded: HashSet::new(),
            retry: Vec::new(),
            owner: None,
            reported: HashSet::new(),
            problems: Vec::new(),
            reachable: Ok(()),
            readiness_changed: false,
        }
    }

    /// Keep only the users routed to worker `index` of `workers` (the `username` exchange).
    pub fn owned_by(mut self, index: usize, workers: usize) -> Self {
        self.owner = Some((index, workers));
        self
    }

    /// The version of the set in use.
    pub fn version(&self) -> Option<u64> {
        self.current.as_ref().map(|(v, _)| *v)
    }

    /// The manifest of the set in use.
    pub fn manifest(&self) -> Option<&SetManifest> {
        self.current.as_ref().map(|(_, m)| m)
    }

    /// Whether the store answered at the last attempt (`Err(why)` otherwise).
    pub fn reachable(&self) -> Result<(), String> {
        self.reachable.clone()
    }

    /// The store's reachability when it changed since the last call (for `/readyz`).
    pub fn readiness_change(&mut self) -> Option<Result<(), String>> {
        std::mem::take(&mut self.readiness_changed).then(|| self.reachable.clone())
    }

    /// Problems since the last call (a damaged shard, a profile that cannot be used), each once.
    pub fn take_problems(&mut self) -> Vec<String> {
        std::mem::take(&mut self.problems)
    }

    /// Looks for a newer set when the TTL has passed (or on the first call). Returns true when the set in
    /// use changed: users not handed out yet then come from the new set.
    pub fn refresh(&mut self) -> bool {
        // Shards whose fetch failed are fetched again (for users not met since) after a while.
        if !self.retry.is_empty() {
            let now = Instant::now();
            let loaded = &mut self.loaded;
            self.retry.retain(|(shard, at)| {
                let due = *at <= now;
                if due {
                    loaded.remove(shard);
                }
                !due
            });
        }
        // An unreachable store is asked again sooner.
        let wait = if self.reachable.is_err() { self.ttl.min(Duration::from_secs(10)) } else { self.ttl };
        if self.checked.is_some_and(|at| at.elapsed() < wait) {
            return false;
        }
        self.checked = Some(Instant::now());
        let latest = match self.store.latest(&self.family) {
            Ok(v) => v,
            Err(e) => {
                // Cached profiles keep serving.
                self.readiness_changed |= self.reachable.is_ok();
                self.reachable = Err(format!("profile store {}: {e}", self.store.location()));
                return false;
            }
        };
        self.readiness_changed |= self.reachable.is_err();
        self.reachable = Ok(());
        let Some(latest) = latest else { return false };
        if self.version() == Some(latest) {
            return false;
        }
        match self.store.fetch(&self.family, latest, "manifest.json").and_then(|b| decode_manifest(&b, &self.family)) {
            Ok(m) => {
                self.current = Some((latest, m));
                self.waiting.clear();
                self.loaded.clear();
                self.retry.clear();
                true
            }
            Err(e) => {
                self.problems.push(format!(
                    "profile set version {latest} in {} cannot be used ({e}); {}",
                    self.store.location(),
                    match self.version() {
                        Some(v) => format!("version {v} keeps serving"),
                        None => "users start from no history".to_string(),
                    }
                ));
                false
            }
        }
    }

    fn load_shard(&mut self, shard: usize) {
        let Some((version, _)) = &self.current else { return };
        self.loaded.insert(shard);
        let file = shard_file(shard);
        let bytes = match self.store.fetch(&self.family, *version, &file) {
            Ok(b) => b,
            Err(e) => {
                self.problems.push(format!(
                    "profile shard {file} (version {version}) cannot be read: {e}; its users start from the population profile (tried again in 30 s)"
                ));
                self.retry.push((shard, Instant::now() + Duration::from_secs(30)));
                return;
            }
        };
        let (profiles, bad) = decode_shard(&bytes);
        for (line, why) in bad.iter().take(3) {
            self.problems.push(format!(
                "{} version {version} {file}{}: {why}; that user starts from the population profile",
                self.store.location(),
                if *line > 0 { format!(":{line}") } else { String::new() }
            ));
        }
        for p in profiles {
            if shard_of(&p.user) != shard {
                continue;
            }
            if let Some((index, workers)) = self.owner {
                if dfp_core::hash::worker_for(p.user.as_bytes(), workers) != index {
                    continue;
                }
            }
            self.waiting.insert(p.user.clone(), p);
        }
    }

    /// The history `user` starts from: its profile when the set has a usable one, else the population's
    /// (or nothing when there is no set).
    pub(crate) fn seed(&mut self, user: &str, interner: &mut Interner) -> Seed {
        if self.current.is_none() {
            return Seed::Empty;
        }
        let shard = shard_of(user);
        if !self.loaded.contains(&shard) {
            self.load_shard(shard);
        }
        if let Some(p) = self.waiting.remove(user) {
            match p.to_state(&self.roles, interner) {
                Ok(s) => return Seed::Own(s),
                Err(e) => {
                    if self.reported.insert(user.to_string()) {
                        let v = self.version().unwrap_or(0);
                        self.problems.push(format!(
                            "{} version {v} {}: {e}; that user starts from the population profile",
                            self.store.location(),
                            shard_file(shard)
                        ));
                    }
                }
            }
        }
        match &self.current {
            Some((_, m)) => Seed::Population(super::seed_from_population(&m.population, &self.roles, interner)),
            None => Seed::Empty,
        }
    }

    /// The stored profile of `user` without taking it (for `add-user-data`): loads its shard when needed.
    pub fn peek(&mut self, user: &str) -> Option<&Profile> {
        self.current.as_ref()?;
        let shard = shard_of(user);
        if !self.loaded.contains(&shard) {
            self.load_shard(shard);
        }
        self.waiting.get(user)
    }

    /// The population profile of the set in use.
    pub fn population(&self) -> Option<&Profile> {
        self.current.as_ref().map(|(_, m)| &m.population)
    }
}

/// Reads every profile of the latest set (for tools and tests): the manifest and the profiles, sorted by
/// user.
pub fn read_latest(
    store: &dyn ProfileStore,
    family: &Family,
) -> Result<Option<(SetManifest, Vec<Profile>)>, ProfileError> {
    let Some(v) = store.latest(family)? else { return Ok(None) };
    let manifest = decode_manifest(&store.fetch(family, v, "manifest.json")?, family)?;
    let mut all = Vec::new();
    for i in 0..manifest.shards {
        let (profiles, bad) = decode_shard(&store.fetch(family, v, &shard_file(i))?);
        if let Some((line, why)) = bad.first() {
            return Err(ProfileError(format!("{}:{line}: {why}", shard_file(i))));
        }
        all.extend(profiles);
    }
    all.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(Some((manifest, all)))
}
