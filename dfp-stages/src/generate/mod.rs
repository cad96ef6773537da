//! `dfp generate`: labelled synthetic sign-in logs of a log family for training, testing and measuring
//! detection quality. Azure AD and Duo records are written here; any other family whose declaration names a
//! `sample_writer` stage (a plugin's family, usually) is written through that stage, which gets the
//! generated sign-ins as rows ([`events`]).
//!
//! A seeded population of users (home city, working hours, favourite apps, devices, addresses, volume,
//! failure rate) signs in day after day. The last days form the inference period, into which benign
//! changes (business trips, a replaced laptop, an app rolled out to everyone) and attacks (account takeover,
//! quiet takeover, password spray, token theft, impossible travel) are injected. The output directory gets:
//!
//! - `train/` and `infer/`: one JSON array per 3-hour window (windows counted from the start), named for
//!   the window start plus a few seconds, e.g. `AZUREAD_2026-10-01T00_00_03.207Z.json` (`DUO_…`; other
//!   families: the family name in capitals); events sorted by time; empty windows have no file;
//! - `labels.csv`: `id,label,kind` for every inference-period event (Duo enrollment records, which are not
//!   authentications, have no row). `label` is 1 for attacks;
//! - `directory.csv`: `username,department,office`, one row per user (the user name as the family's logs
//!   write it), as an HR or directory export would give it: for `add-user-data`'s `directory` and for
//!   peer groups by department (`train`'s `groups`).
//!
//! The same options and seed give the same bytes. Generated addresses come from reserved blocks (see
//! `tables.rs`); names, devices and ids are made up.
//!
//! ```no_run
//! use dfp_stages::generate::{generate, GenerateOptions};
//! let mut options = GenerateOptions::new("azure", "out/azure");
//! options.users = 20;
//! options.days = 14;
//! let report = generate(&options)?;
//! println!("{report}");
//! # Ok::<(), dfp_stages::generate::GenerateError>(())
//! ```

mod azure;
mod duo;
pub mod events;
mod format;
mod population;
mod scenario;
mod tables;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use format::{Ts, TsStyle, TICKS_PER_SEC};
use scenario::{Dataset, Timeline};

/// Length of the window covered by one log file.
const WINDOW: i64 = 3 * 3600 * TICKS_PER_SEC;

/// What an event is, as written in `labels.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An ordinary sign-in.
    Normal,
    /// Attack: new country, address, OS and browser; a burst over dozens of apps the user never used.
    AccountTakeover,
    /// Attack: new country and browser, but the user's usual apps and volume.
    QuietTakeover,
    /// Attack: bursts of failed passwords from a few addresses, then a success from a new address.
    PasswordSpray,
    /// Attack: an unknown device using admin portals at night, from the user's own country.
    TokenTheft,
    /// Attack: a sign-in from a far city within the hour of an ordinary sign-in.
    ImpossibleTravel,
    /// Benign: the user works from another city for a few days (usual apps and devices).
    BusinessTrip,
    /// Benign: an app nobody used before, used by everyone from one day on.
    NewAppRollout,
    /// Benign: a new computer (new name, newer OS build) from one day on.
    ReplacedLaptop,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 9] = [
        Kind::Normal,
        Kind::AccountTakeover,
        Kind::QuietTakeover,
        Kind::PasswordSpray,
        Kind::TokenTheft,
        Kind::ImpossibleTravel,
        Kind::BusinessTrip,
        Kind::NewAppRollout,
        Kind::ReplacedLaptop,
    ];

    /// The name in `labels.csv`, e.g. `account_takeover`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "normal",
            Kind::AccountTakeover => "account_takeover",
            Kind::QuietTakeover => "quiet_takeover",
            Kind::PasswordSpray => "password_spray",
            Kind::TokenTheft => "token_theft",
            Kind::ImpossibleTravel => "impossible_travel",
            Kind::BusinessTrip => "business_trip",
            Kind::NewAppRollout => "new_app_rollout",
            Kind::ReplacedLaptop => "replaced_laptop",
        }
    }

    /// Whether events of this kind are attacks (label 1).
    pub fn is_attack(self) -> bool {
        matches!(
            self,
            Kind::AccountTakeover
                | Kind::QuietTakeover
                | Kind::PasswordSpray
                | Kind::TokenTheft
                | Kind::ImpossibleTravel
        )
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options of [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The log family whose records to write (`azure`, `duo`, or a family with a sample writer).
    pub family: String,
    /// Output directory (created if missing).
    pub out: PathBuf,
    /// Number of users.
    pub users: usize,
    /// Days in all.
    pub days: u32,
    /// Days of the training period; `None` means [`default_train_days`].
    pub train_days: Option<u32>,
    /// Seed of every random choice.
    pub seed: u64,
    /// First instant, Unix seconds (UTC).
    pub start: i64,
    /// Replace log files left in `train/` and `infer/` by an earlier run.
    pub force: bool,
    /// Share of light users (0–1): they sign in a tenth as often, so most never reach a model's
    /// `min_history`.
    pub light_users: f64,
    /// Share of new joiners (0–1): they start signing in during the second half of the training period.
    pub joiners: f64,
}

/// 2026-10-01T00:00:00Z.
pub const DEFAULT_START: i64 = 1_790_812_800;

impl GenerateOptions {
    /// Defaults: 60 users, 30 days, the last 7 for inference, seed 1, from 2026-10-01T00:00:00Z.
    pub fn new(family: impl Into<String>, out: impl Into<PathBuf>) -> GenerateOptions {
        GenerateOptions {
            family: family.into(),
            out: out.into(),
            users: 60,
            days: 30,
            train_days: None,
            seed: 1,
            start: DEFAULT_START,
            force: false,
            light_users: 0.0,
            joiners: 0.0,
        }
    }

    /// The training days in effect.
    pub fn effective_train_days(&self) -> u32 {
        self.train_days.unwrap_or_else(|| default_train_days(self.days))
    }
}

/// Training days when not given: all but the last 7, but at least half of the days (so short sets keep a
/// training period).
pub fn default_train_days(days: u32) -> u32 {
    days.saturating_sub(7).max(days / 2)
}

/// Parses a start time: a date (`2026-10-01`, midnight UTC) or an RFC 3339 time in whole seconds
/// (`2026-10-01T06:00:00Z`). Returns Unix seconds.
pub fn parse_start(text: &str) -> Result<i64, GenerateError> {
    let text = text.trim();
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return date
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp())
            .ok_or_else(|| GenerateError::Invalid(format!("start {text:?} is out of range")));
    }
    let time = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
        GenerateError::Invalid(format!("start {text:?} is neither a date (2026-10-01) nor an RFC 3339 time: {e}"))
    })?;
    if time.timestamp_subsec_nanos() != 0 {
        return Err(GenerateError::Invalid(format!("start {text:?} must be a whole second")));
    }
    Ok(time.timestamp())
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// An option is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The output holds log files of an earlier run.
    #[error("{0} already holds log files; pass --force to replace them or choose another output directory")]
    NotEmpty(PathBuf),
    /// The family cannot be generated (unknown, or no sample writer), or its writer failed.
    #[error("{0}")]
    Writer(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io { path: path.to_path_buf(), source }
}

/// Events and files of one period.
#[derive(Debug, Clone, Default)]
pub struct PeriodSummary {
    /// Days in the period.
    pub days: u32,
    /// Records written (Duo enrollment records included).
    pub events: u64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// The directory.
    pub dir: PathBuf,
}

/// How one kind appears in the labels.
#[derive(Debug, Clone)]
pub struct KindSummary {
    /// The kind.
    pub kind: Kind,
    /// Users it was applied to (for `normal`: every user; for `new_app_rollout`: one rollout).
    pub instances: u32,
    /// Labelled inference-period events of this kind.
    pub events: u64,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    /// The options used (with the training days resolved).
    pub options: GenerateOptions,
    /// The training period.
    pub train: PeriodSummary,
    /// The inference period.
    pub infer: PeriodSummary,
    /// Duo enrollment records (in the files, not in the labels).
    pub enrollments: u64,
    /// The labels file.
    pub labels: PathBuf,
    /// Rows in the labels file.
    pub label_rows: u64,
    /// The directory export (`directory.csv`).
    pub directory: PathBuf,
    /// Per kind, in [`Kind::ALL`] order.
    pub kinds: Vec<KindSummary>,
    /// Wall time of generating and writing.
    pub elapsed: Duration,
}

impl GenerateReport {
    /// Records written in all.
    pub fn events(&self) -> u64 {
        self.train.events + self.infer.events
    }

    /// Records written per second of wall time.
    pub fn events_per_sec(&self) -> f64 {
        self.events() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Labelled attack events.
    pub fn attack_events(&self) -> u64 {
        self.kinds.iter().filter(|k| k.kind.is_attack()).map(|k| k.events).sum()
    }
}

impl fmt::Display for GenerateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "generated {} sign-in logs: {} users, {} days from {}, seed {}",
            o.family,
            o.users,
            o.days,
            chrono::DateTime::from_timestamp(o.start, 0)
                .map_or_else(|| o.start.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            o.seed
        )?;
        for (name, p) in [("train", &self.train), ("infer", &self.infer)] {
            writeln!(
                f,
                "  {name}  {:>3} days {:>9} events {:>6} files {:>9.1} MB  {}",
                p.days,
                p.events,
                p.files,
                p.bytes as f64 / 1e6,
                p.dir.display()
            )?;
        }
        if self.enrollments > 0 {
            writeln!(f, "  {} Duo enrollment records (not labelled)", self.enrollments)?;
        }
        writeln!(
            f,
            "  labels {} rows, {} attack events: {}",
            self.label_rows,
            self.attack_events(),
            self.labels.display()
        )?;
        writeln!(f, "  directory {} users: {}", self.options.users, self.directory.display())?;
        writeln!(f, "  {:<18} {:>5} {:>6} {:>8}", "kind", "label", "users", "events")?;
        for k in &self.kinds {
            writeln!(
                f,
                "  {:<18} {:>5} {:>6} {:>8}",
                k.kind.as_str(),
                u8::from(k.kind.is_attack()),
                k.instances,
                k.events
            )?;
        }
        write!(
            f,
            "  {} events in {:.3} s: {:.0} events/s",
            self.events(),
            self.elapsed.as_secs_f64(),
            self.events_per_sec()
        )
    }
}

fn validate(options: &GenerateOptions) -> Result<Timeline, GenerateError> {
    let invalid = |m: String| Err(GenerateError::Invalid(m));
    if options.users == 0 || options.users > 1_000_000 {
        return invalid(format!("users must be between 1 and 1000000, not {}", options.users));
    }
    if options.days < 2 || options.days > 3660 {
        return invalid(format!("days must be between 2 and 3660, not {}", options.days));
    }
    let train_days = options.effective_train_days();
    if train_days == 0 || train_days >= options.days {
        return invalid(format!(
            "train-days must be at least 1 and less than days ({}), not {train_days}",
            options.days
        ));
    }
    for (name, share) in [("light-users", options.light_users), ("joiners", options.joiners)] {
        if !(0.0..=1.0).contains(&share) {
            return invalid(format!("{name} must be a share between 0 and 1, not {share}"));
        }
    }
    let start = options
        .start
        .checked_mul(TICKS_PER_SEC)
        .filter(|s| s.checked_add(i64::from(options.days) * 86_400 * TICKS_PER_SEC).is_some());
    match start {
        Some(start) if (0..253_402_300_800 * TICKS_PER_SEC).contains(&start) => {
            Ok(Timeline { start, days: options.days, train_days })
        }
        _ => invalid(format!("start {} is out of range", options.start)),
    }
}

/// Prepares `dir`: creates it, or, when it holds log files of an earlier run, removes them (`force`) or
/// refuses.
fn prepare_dir(dir: &Path, force: bool) -> Result<(), GenerateError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut stale = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if is_generated_name(&name) {
            stale.push(entry.path());
        }
    }
    if !stale.is_empty() && !force {
        return Err(GenerateError::NotEmpty(dir.to_path_buf()));
    }
    for path in stale {
        fs::remove_file(&path).map_err(io_error(&path))?;
    }
    Ok(())
}

/// Whether a file name is one the generator writes: `PREFIX_2026-…Z.json`, the prefix in capitals.
fn is_generated_name(name: &str) -> bool {
    let b = name.as_bytes();
    let stamp = (1..b.len().saturating_sub(5))
        .find(|&i| b[i] == b'_' && b[i + 1..i + 5].iter().all(u8::is_ascii_digit) && b[i + 5] == b'-');
    stamp.is_some_and(|i| {
        b[..i].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_') && name.ends_with("Z.json")
    })
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.bytes += buf.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A deterministic offset of 1–10 s (millisecond precision) added to a window start in its file name, as
/// real exports are named a little after the window opens.
fn name_offset(seed: u64, window: i64) -> i64 {
    let mut x = seed ^ (window as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    (1_000 + (x % 9_000) as i64) * 10_000
}

/// Generates the data set described by `options` and writes it; the family is one of the built-in ones.
pub fn generate(options: &GenerateOptions) -> Result<GenerateReport, GenerateError> {
    generate_with(options, dfp_core::Registry::global())
}

/// [`generate`] with the families and stage types of `registry` (say, with a plugin added, whose family's
/// sample writer renders the records).
pub fn generate_with(
    options: &GenerateOptions,
    registry: &dfp_core::Registry,
) -> Result<GenerateReport, GenerateError> {
    let started = Instant::now();
    let timeline = validate(options)?;
    let family = registry.families().require(&options.family).map_err(GenerateError::Writer)?.clone();
    let built_in = BUILT_IN.iter().find(|b| b.family == family.name);
    let sample_writer = match (built_in, &family.sample_writer) {
        (Some(_), _) => None,
        (None, Some(stage)) => Some(stage.as_str()),
        (None, None) => {
            return Err(GenerateError::Writer(format!(
                "the log family \"{}\" has no sample writer, so dfp generate cannot write its records (a family \
                 names a transform stage that renders generated sign-ins with `sample_writer:`; built in: {})",
                family.name,
                BUILT_IN.iter().map(|b| b.family).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let train_dir = options.out.join("train");
    let infer_dir = options.out.join("infer");
    prepare_dir(&train_dir, options.force)?;
    prepare_dir(&infer_dir, options.force)?;
    let spread = scenario::Spread { light: options.light_users, joiners: options.joiners };
    let dataset = scenario::build(options.seed, options.users, timeline, spread);
    let mut writer = match (built_in, sample_writer) {
        (Some(b), _) => Writer::BuiltIn(b, azure::AzureContext::new(&dataset.population)),
        (None, Some(stage)) => Writer::Stage(StageWriter::new(registry, &family, stage)?),
        (None, None) => unreachable!("checked above"),
    };
    let enrollment_records = built_in.is_some_and(|b| b.enrollment_records);
    let mut report = GenerateReport {
        options: GenerateOptions { train_days: Some(timeline.train_days), ..options.clone() },
        train: PeriodSummary { days: timeline.train_days, dir: train_dir.clone(), ..PeriodSummary::default() },
        infer: PeriodSummary {
            days: timeline.days - timeline.train_days,
            dir: infer_dir.clone(),
            ..PeriodSummary::default()
        },
        enrollments: 0,
        labels: options.out.join("labels.csv"),
        label_rows: 0,
        directory: options.out.join("directory.csv"),
        kinds: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let prefix = built_in.map_or_else(|| family.name.to_ascii_uppercase().replace('-', "_"), |b| b.prefix.to_string());
    write_logs(&dataset, options, &prefix, &mut writer, enrollment_records, &mut report)?;
    write_labels(&dataset, enrollment_records, &mut report)?;
    write_directory(&dataset.population, &family.name, &report.directory)?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A family whose records the generator writes itself.
struct BuiltIn {
    family: &'static str,
    /// File-name prefix.
    prefix: &'static str,
    /// Enrollments are records of their own, not sign-ins (and so not labelled).
    enrollment_records: bool,
    write: fn(&mut dyn Write, &azure::AzureContext, &population::Population, &scenario::Event) -> io::Result<()>,
}

const BUILT_IN: [BuiltIn; 2] = [
    BuiltIn { family: "azure", prefix: "AZUREAD", enrollment_records: false, write: write_azure },
    BuiltIn { family: "duo", prefix: "DUO", enrollment_records: true, write: write_duo },
];

fn write_azure(
    mut out: &mut dyn Write,
    ctx: &azure::AzureContext,
    population: &population::Population,
    e: &scenario::Event,
) -> io::Result<()> {
    azure::write_event(&mut out, ctx, population, e)
}

fn write_duo(
    mut out: &mut dyn Write,
    _: &azure::AzureContext,
    population: &population::Population,
    e: &scenario::Event,
) -> io::Result<()> {
    duo::write_event(&mut out, population, e)
}

/// How records are rendered.
enum Writer<'a> {
    BuiltIn(&'a BuiltIn, azure::AzureContext),
    Stage(StageWriter),
}

/// A family's sample writer: a transform stage that turns [`events`] rows into raw records.
struct StageWriter {
    stage: String,
    transform: Box<dyn dfp_core::Transform>,
}

impl StageWriter {
    fn new(registry: &dfp_core::Registry, family: &dfp_core::Family, stage: &str) -> Result<Self, GenerateError> {
        let fail =
            |m: String| GenerateError::Writer(format!("sample writer \"{stage}\" of family \"{}\": {m}", family.name));
        let t = registry.get(stage).ok_or_else(|| fail("no such stage type (is its plugin loaded?)".into()))?;
        let families = dfp_core::ConfigContext { families: registry.families() };
        let factory = (t.factory)(serde_json::json!({}), &families).map_err(|e| fail(e.to_string()))?;
        let ctx = dfp_core::StageContext::standalone(stage, 0, 1)
            .with_families(std::sync::Arc::new(registry.families().clone()));
        let mut transform = match factory.build(&ctx).map_err(|e| fail(e.to_string()))? {
            dfp_core::StageInstance::Transform(t) => t,
            other => return Err(fail(format!("a sample writer is a transform, not a {}", other.kind()))),
        };
        transform.open(&ctx).map_err(|e| fail(e.to_string()))?;
        Ok(StageWriter { stage: stage.to_string(), transform })
    }

    /// The raw records of `events`, one per event, in order.
    fn records(
        &mut self,
        population: &population::Population,
        events: &[scenario::Event],
    ) -> Result<Vec<String>, String> {
        use arrow::array::{Array, AsArray};
        let rows = events::batch(population, events).map_err(|e| e.to_string())?;
        let mut out = dfp_core::Emitter::new();
        self.transform
            .process(dfp_core::Batch::new(rows, "generate"), &mut out)
            .map_err(|e| format!("sample writer \"{}\": {e}", self.stage))?;
        let (batches, dead) = out.take();
        if let Some(d) = dead.first() {
            return Err(format!("sample writer \"{}\" rejected a generated event: {}", self.stage, d.reason));
        }
        let mut records = Vec::with_capacity(events.len());
        for b in &batches {
            let raw = b.data.column_by_name("raw").and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| {
                format!("sample writer \"{}\" must emit a text column `raw` (one record per event)", self.stage)
            })?;
            records
                .extend((0..raw.len()).map(|i| if raw.is_null(i) { String::new() } else { raw.value(i).to_string() }));
        }
        if records.len() != events.len() {
            return Err(format!(
                "sample writer \"{}\" wrote {} records for {} events (it must write one per event, in order)",
                self.stage,
                records.len(),
                events.len()
            ));
        }
        Ok(records)
    }
}

/// Whether an event gets a row in `labels.csv` (inference period, and a sign-in).
fn is_labelled(dataset: &Dataset, enrollment_records: bool, e: &scenario::Event) -> bool {
    e.ticks >= dataset.timeline.infer_start() && !(enrollment_records && e.enrollment)
}

fn write_logs(
    dataset: &Dataset,
    options: &GenerateOptions,
    prefix: &str,
    writer: &mut Writer<'_>,
    enrollment_records: bool,
    report: &mut GenerateReport,
) -> Result<(), GenerateError> {
    let timeline = dataset.timeline;
    let mut rest = dataset.events.as_slice();
    while let Some(first) = rest.first() {
        let window = (first.ticks - timeline.start).div_euclid(WINDOW);
        let window_start = timeline.start + window * WINDOW;
        let len = rest.iter().position(|e| e.ticks >= window_start + WINDOW).unwrap_or(rest.len());
        let (events, tail) = rest.split_at(len);
        rest = tail;
        let period = if window_start >= timeline.infer_start() { &mut report.infer } else { &mut report.train };
        let name =
            format!("{prefix}_{}.json", Ts(window_start + name_offset(options.seed, window), TsStyle::FileMillis));
        let path = period.dir.join(name);
        let rendered = match writer {
            Writer::Stage(w) => Some(w.records(&dataset.population, events).map_err(GenerateError::Writer)?),
            Writer::BuiltIn(..) => None,
        };
        let file = File::create(&path).map_err(io_error(&path))?;
        let mut out = Counting { inner: BufWriter::with_capacity(1 << 16, file), bytes: 0 };
        let written: io::Result<()> = (|| {
            out.write_all(b"[\n")?;
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",\n")?;
                }
                match (&*writer, &rendered) {
                    (Writer::BuiltIn(b, ctx), _) => (b.write)(&mut out, ctx, &dataset.population, e)?,
                    (_, Some(records)) => out.write_all(records[i].as_bytes())?,
                    (_, None) => {}
                }
            }
            out.write_all(b"\n]\n")?;
            out.flush()
        })();
        written.map_err(io_error(&path))?;
        period.files += 1;
        period.events += events.len() as u64;
        period.bytes += out.bytes;
        if enrollment_records {
            report.enrollments += events.iter().filter(|e| e.enrollment).count() as u64;
        }
    }
    Ok(())
}

/// `directory.csv`: each user's name as the family's logs write it (Duo: the e-mail local part), department
/// and office city.
fn write_directory(population: &population::Population, family: &str, path: &Path) -> Result<(), GenerateError> {
    let file = File::create(path).map_err(io_error(path))?;
    let mut out = BufWriter::new(file);
    let written: io::Result<()> = (|| {
        out.write_all(b"username,department,office\n")?;
        for u in &population.users {
            let name = if family == "duo" { u.local_part() } else { u.upn.as_str() };
            let (department, _) = tables::DEPARTMENTS[u.department];
            writeln!(out, "{name},{department},{}", tables::CITIES[u.home].name)?;
        }
        out.flush()
    })();
    written.map_err(io_error(path))
}

fn write_labels(dataset: &Dataset, enrollment_records: bool, report: &mut GenerateReport) -> Result<(), GenerateError> {
    let path = report.labels.clone();
    let file = File::create(&path).map_err(io_error(&path))?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let mut counts = [0u64; Kind::ALL.len()];
    let written: io::Result<()> = (|| {
        out.write_all(b"id,label,kind\n")?;
        for e in dataset.events.iter().filter(|e| is_labelled(dataset, enrollment_records, e)) {
            writeln!(out, "{},{},{}", e.id, u8::from(e.kind.is_attack()), e.kind.as_str())?;
            counts[e.kind.index()] += 1;
        }
        out.flush()
    })();
    written.map_err(io_error(&path))?;
    report.label_rows = counts.iter().sum();
    report.kinds = Kind::ALL
        .iter()
        .map(|&kind| KindSummary { kind, instances: dataset.instances[kind.index()], events: counts[kind.index()] })
        .collect();
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod names {
    #[test]
    fn generated_file_names_are_recognised() {
        assert!(super::is_generated_name("AZUREAD_2026-10-01T00_00_03.207Z.json"));
        assert!(super::is_generated_name("TINY_LOG_2026-10-01T00_00_03.207Z.json"));
        assert!(!super::is_generated_name("notes_2026-10-01.txt"));
        assert!(!super::is_generated_name("labels.csv"));
        assert!(!super::is_generated_name("mine_2026-10-01T00_00_03.207Z.json"));
    }
}
