//! Checkpoints of the live history of a streaming `features` stage.
//!
//! ```yaml
//! features:
//!   type: features
//!   inputs: [events]
//!   profiles: "${models}"
//!   checkpoint: { path: /var/lib/dfp/checkpoints, interval_secs: 30 }
//! ```
//!
//! Every `interval_secs` (and when the pipeline stops), each worker writes the history of its users to
//! `PATH/<stage>-<worker>-of-<workers>.jsonl.gz` (a new file, synced, then renamed over the old one: a
//! crash leaves the previous checkpoint whole), then tells the runtime that everything before that point
//! is durable. Sources commit their read positions no further (see `dfp_core`'s commit gate), so after a
//! crash — kill -9 included — the restarted pipeline restores the checkpoint and the source replays from
//! the committed positions: nothing is counted twice and nothing is missed.
//!
//! The events a checkpoint holds that may come again (applied, but not committed when it was written)
//! are stored with the features they got: when the replay delivers them, they get the same features and
//! do not change the history a second time. The features of a restarted stream are therefore those of an
//! uninterrupted one.
//!
//! A restart with another number of workers reads every file of the newest checkpoint and keeps the users
//! routed to each worker; in a multi-host cluster that needs `path` on storage every host sees.
//!
//! File format: gzip'd JSON lines; the first line is the header
//! `{"format": 1, "kind": "dfp-checkpoint", "family", "stage", "worker", "workers", "written_at", "users"}`,
//! then one [`super::Profile`] per user, with its checkpoint-only parts (`recent`, `replay`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dfp_core::StageError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::history::{Interner, UserState};
use super::{Profile, FORMAT};

/// `checkpoint:` of the `features` stage.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// A directory for the checkpoint files (created when missing).
    pub path: String,
    /// Seconds between checkpoints. Offsets are committed at checkpoints, so this is also how much a
    /// restart may read again.
    #[serde(default = "d_interval")]
    pub interval_secs: f64,
}

fn d_interval() -> f64 {
    30.0
}

impl CheckpointConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.trim().is_empty() {
            return Err("checkpoint.path: must name a directory".into());
        }
        if !self.interval_secs.is_finite() || self.interval_secs <= 0.0 {
            return Err("checkpoint.interval_secs: must be more than 0".into());
        }
        Ok(())
    }
}

/// The first line of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    format: u32,
    kind: String,
    family: String,
    stage: String,
    worker: usize,
    workers: usize,
    written_at: String,
    users: u64,
}

/// What a restore found.
pub(crate) struct Restored {
    /// The users of this worker, with their history.
    pub(crate) users: Vec<(String, UserState)>,
    /// Files read.
    pub(crate) files: usize,
    /// Problems (a damaged file, a bad line), each naming the file.
    pub(crate) problems: Vec<String>,
}

/// Writes and reads one worker's checkpoints.
pub(crate) struct Checkpointer {
    dir: PathBuf,
    stage: String,
    family: String,
    worker: usize,
    workers: usize,
    pub(crate) interval: Duration,
    pub(crate) last: Instant,
    /// Files of other worker counts are removed after this worker's first checkpoint.
    cleaned: bool,
}

fn file_name(stage: &str, worker: usize, workers: usize) -> String {
    format!("{stage}-{worker:03}-of-{workers:03}.jsonl.gz")
}

/// (worker, workers) of a checkpoint file of `stage`, from its name.
fn parse_name(stage: &str, name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix(stage)?.strip_prefix('-')?.strip_suffix(".jsonl.gz")?;
    let (w, n) = rest.split_once("-of-")?;
    Some((w.parse().ok()?, n.parse().ok()?))
}

impl Checkpointer {
    pub(crate) fn new(config: &CheckpointConfig, stage: &str, family: &str, worker: usize, workers: usize) -> Self {
        Checkpointer {
            dir: PathBuf::from(&config.path),
            stage: stage.to_string(),
            family: family.to_string(),
            worker,
            workers,
            interval: Duration::from_secs_f64(config.interval_secs),
            last: Instant::now(),
            cleaned: false,
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> StageError {
        StageError::Other(format!("checkpoint {}: {what}", self.dir.display()))
    }

    /// Writes this worker's checkpoint (atomically) and returns its size in bytes.
    pub(crate) fn write<'a>(
        &mut self,
        users: impl ExactSizeIterator<Item = (&'a String, &'a UserState)>,
        roles: &[&str],
    ) -> Result<u64, StageError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.err(format!("cannot create the directory: {e}")))?;
        let name = file_name(&self.stage, self.worker, self.workers);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let header = Header {
            format: FORMAT,
            kind: "dfp-checkpoint".into(),
            family: self.family.clone(),
            stage: self.stage.clone(),
            worker: self.worker,
            workers: self.workers,
            written_at: crate::time::format_micros(crate::time::now_micros()),
            users: users.len() as u64,
        };
        let file = std::fs::File::create(&tmp).map_err(|e| self.err(format!("{}: {e}", tmp.display())))?;
        let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
        let io = |e: std::io::Error| self.err(format!("{}: {e}", tmp.display()));
        serde_json::to_writer(&mut gz, &header).map_err(|e| self.err(e))?;
        gz.write_all(b"\n").map_err(io)?;
        for (user, state) in users {
            serde_json::to_writer(&mut gz, &Profile::from_state(user, state, roles, true)).map_err(|e| self.err(e))?;
            gz.write_all(b"\n").map_err(io)?;
        }
        let file = gz.finish().map_err(io)?.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| self.err(format!("{}: {e}", path.display())))?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            // The rename itself is durable once the directory is synced.
            let _ = dir.sync_all();
        }
        self.last = Instant::now();
        if !self.cleaned {
            self.cleaned = true;
            self.remove_other_worker_counts();
        }
        Ok(size)
    }

    /// Files of a run with another worker count are stale once this run has checkpointed.
    fn remove_other_worker_counts(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some((_, n)) = parse_name(&self.stage, &name) {
                if n != self.workers {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Reads the newest checkpoint (every file of it) and keeps this worker's users. A missing directory
    /// or no file is an empty restore; a damaged file is reported and its readable lines kept.
    pub(crate) fn restore(&self, roles: &[&str], interner: &mut Interner) -> Result<Restored, StageError> {
        let mut restored = Restored { users: Vec::new(), files: 0, problems: Vec::new() };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(restored),
            Err(e) => return Err(self.err(format!("cannot list the directory: {e}"))),
        };
        // Group the files by the worker count that wrote them; the newest group is the checkpoint.
        let mut groups: HashMap<usize, Vec<(PathBuf, std::time::SystemTime)>> = HashMap::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some((_, n)) = parse_name(&self.stage, &name) {
                let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                groups.entry(n).or_default().push((e.path(), modified));
            }
        }
        let newest = groups.iter().max_by_key(|(n, files)| (files.iter().map(|(_, m)| *m).max(), **n)).map(|(n, _)| *n);
        let Some(n) = newest else { return Ok(restored) };
        let mut files = groups.remove(&n).unwrap_or_default();
        files.sort();
        if files.len() != n {
            restored.problems.push(format!(
                "checkpoint {}: {} of the {n} files of the newest checkpoint are there; the users of the missing ones start from their profiles",
                self.dir.display(),
                files.len()
            ));
        }
        for (path, _) in files {
            // With the same worker count, a worker's users are all in its own file.
            if n == self.workers
                && parse_name(&self.stage, &path.file_name().unwrap_or_default().to_string_lossy())
                    .is_some_and(|(w, _)| w != self.worker)
            {
                continue;
            }
            restored.files += 1;
            self.read_file(&path, roles, interner, &mut restored);
        }
        Ok(restored)
    }

    fn read_file(&self, path: &Path, roles: &[&str], interner: &mut Interner, restored: &mut Restored) {
        let shown = path.display().to_string();
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                restored.problems.push(format!("checkpoint {shown}: {e}"));
                return;
            }
        };
        let reader = BufReader::new(flate2::read::GzDecoder::new(file));
        let mut bad = 0usize;
        for (i, line) in reader.lines().enumerate() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    restored.problems.push(format!(
                        "checkpoint {shown}: damaged after line {i} ({e}); the users after it start from their profiles"
                    ));
                    return;
                }
            };
            if i == 0 {
                match serde_json::from_str::<Header>(&line) {
                    Ok(h) if h.format == FORMAT && h.kind == "dfp-checkpoint" && h.family == self.family => continue,
                    Ok(h) => {
                        restored.problems.push(format!(
                            "checkpoint {shown}: format {} of family {} (this stage reads format {FORMAT} of {}); not used",
                            h.format, h.family, self.family
                        ));
                        return;
                    }
                    Err(e) => {
                        restored
                            .problems
                            .push(format!("checkpoint {shown}:1: not a checkpoint header ({e}); not used"));
                        return;
                    }
                }
            }
            let profile = serde_json::from_str::<Profile>(&line)
                .map_err(|e| e.to_string())
                .and_then(|p| p.to_state(roles, interner).map(|s| (p.user, s)).map_err(|e| e.0));
            match profile {
                Ok((user, state)) => {
                    if dfp_core::hash::worker_for(user.as_bytes(), self.workers) == self.worker {
                        restored.users.push((user, state));
                    }
                }
                Err(e) => {
                    bad += 1;
                    if bad <= 3 {
                        restored
                            .problems
                            .push(format!("checkpoint {shown}:{}: {e}; that user starts from its profile", i + 1));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::{Bounds, EventView};
    use super::*;

    fn state(country: &str) -> UserState {
        let mut s = UserState::default();
        let values = [Some(country)];
        let e = EventView { time: 7, id: 1, location: None, app: None, values: &values, failed: None, logical: 3 };
        let bounds = Bounds { window: 1 << 40, max_values: 10, track_uncommitted: true };
        s.observe(&e, &bounds, &mut Interner::default(), &mut [false]);
        s
    }

    #[test]
    fn a_checkpoint_round_trips_and_splits_users_over_workers() {
        let dir = tempfile::tempdir().unwrap();
        let config = CheckpointConfig { path: dir.path().display().to_string(), interval_secs: 1.0 };
        let users: Vec<(String, UserState)> = (0..40).map(|i| (format!("user{i}"), state("NO"))).collect();
        let mut one = Checkpointer::new(&config, "features", "azure", 0, 1);
        one.write(users.iter().map(|(u, s)| (u, s)), &["country"]).unwrap();
        // Restored by two workers: each keeps its own users, together all of them.
        let mut seen = 0;
        for w in 0..2 {
            let c = Checkpointer::new(&config, "features", "azure", w, 2);
            let r = c.restore(&["country"], &mut Interner::default()).unwrap();
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            for (u, s) in &r.users {
                assert_eq!(dfp_core::hash::worker_for(u.as_bytes(), 2), w);
                assert_eq!(s.seen.len(), 1);
                assert_eq!(s.replayed.len(), 1, "the uncommitted event may come again");
            }
            seen += r.users.len();
        }
        assert_eq!(seen, 40);
        // A checkpoint by two workers replaces the one-worker files once written.
        let mut w0 = Checkpointer::new(&config, "features", "azure", 0, 2);
        w0.write(std::iter::empty(), &["country"]).unwrap();
        assert!(!dir.path().join("features-000-of-001.jsonl.gz").exists());
    }

    #[test]
    fn damaged_checkpoints_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("features-000-of-001.jsonl.gz"), b"not gzip at all").unwrap();
        let config = CheckpointConfig { path: dir.path().display().to_string(), interval_secs: 1.0 };
        let c = Checkpointer::new(&config, "features", "azure", 0, 1);
        let r = c.restore(&["country"], &mut Interner::default()).unwrap();
        assert!(r.users.is_empty());
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("features-000-of-001.jsonl.gz"), "{:?}", r.problems);
        assert_eq!(parse_name("features", "features-002-of-004.jsonl.gz"), Some((2, 4)));
        assert_eq!(parse_name("features", "featuresx-002-of-004.jsonl.gz"), None);
    }
}
