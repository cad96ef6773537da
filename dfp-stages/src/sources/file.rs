//! `type: file-source` — reads log files from local paths, directories, globs and `s3://` URLs.
//!
//! ```yaml
//! logs:
//!   type: file-source
//!   path: ./data/azure/*.json        # a file, a directory (its files), a glob, or s3://bucket/prefix/*.json
//!   format: auto                     # auto | json | jsonl | csv | parquet
//!   raw: true                        # one row per record, for the normalizers
//!   start: 2022-08-01T00:00:00Z      # keep files whose time is in [start, end)
//!   end: 2022-08-08T00:00:00Z
//!   s3: { endpoint: "http://127.0.0.1:9000", allow_http: true, from_env: true }
//! ```
//!
//! **Formats.** `json` reads a JSON array file (Azure exports are one array per file), a Microsoft Graph page
//! (`{"@odata.context": …, "value": [ … ]}`) or JSON lines, told apart by the content; `jsonl` reads JSON lines;
//! `csv` reads CSV with a header line (column types inferred per file: integer, float, boolean, else string;
//! empty fields are null); `parquet` reads Parquet. `auto` decides by extension (`.csv`, `.parquet`, else
//! `json`). A `.gz` file is decompressed as a stream, whatever its format. Text is UTF-8; a UTF-8 byte-order
//! mark is skipped, and UTF-16 (a byte-order mark, or the NUL bytes of ASCII text in UTF-16) is decoded.
//!
//! **Output.** By default records become Arrow columns, with the schema inferred per file. With `raw: true`
//! each record becomes one row of two columns, `raw` (the record as JSON text) and `line` (its line in the
//! file; the row number for Parquet): the normalizers parse that text straight into typed columns.
//!
//! **Order and workers.** Each file has a time: the ISO date-time in its name
//! (`AZUREAD_2022-08-01T00_03_56.207Z.json`), else its modification time. Files outside `[start, end)` are
//! skipped; the rest are read in time order. Each file goes to one worker (stable hash of its path) and is
//! emitted at a logical time equal to its rank in that order, so keyed stages downstream see files in the same
//! order whatever the number of workers. When reading a listing to its end (not `watch`), small files share
//! a rank: consecutive files take the same one until their listed sizes add up to 1 MiB (each logical time
//! costs a round of the runtime's progress tracking and a release in every keyed stage, which made
//! thousands of 40-event files twice as slow to read as the same events in a few large ones). A watched
//! folder keeps a rank per file, so that a file's events are released once the next file is read rather
//! than the next listing. A file's rows keep their order.
//!
//! **Bad input.** A record that cannot be read (bad JSON on one line, a CSV row with the wrong number of fields,
//! a value that is not an object, a record over `max_record_bytes`, a record holding bytes that are not
//! UTF-8 — dead-lettered rather than read with replaced characters, so that no user name is mangled) goes
//! to the dead-letter output as `file:line` with the reason; the rest of the file is still read. A JSON
//! array file that does not parse at all is one dead letter. A damaged file — a `.gz` that is truncated or
//! not gzip at all, a file over `max_file_bytes` — keeps what could be read, and the rest is one dead letter
//! naming the file and where it broke; the other files go on. A path that does not exist fails the stage; a
//! glob that matches nothing logs a warning (and, with `watch`, waits for files).
//!
//! **Reading ahead.** With `read_ahead: N` each worker reads the next N files of its queue on threads of
//! its own (at most 4) while it parses the current one, so that waits for a cold disk or a network file
//! system overlap instead of coming one after another. Files are still parsed and emitted in queue order,
//! and a read that fails surfaces when its file's turn comes, as without reading ahead. At most N files
//! (each up to `max_file_bytes`) wait in memory per worker. It is off by default (`0`: each file is read on
//! the worker's thread when its turn comes): on a 2-core machine it made 4,801 small files on a cold disk
//! 30–40 % faster to read, but files in the page cache 10–30 % slower (the reading threads take CPU from the
//! workers, and the bytes arrive in another core's cache), with 50–130 MiB more at the peak; against a
//! local S3 stand-in on the same cores it made no difference (docs/stages.md).
//!
//! **Watch.** With `watch: true` the source does not end: every `poll_interval_secs` it lists again and reads
//! the files it has not seen, in time order.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use arrow::array::{StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use dfp_core::json::records_to_batch;
use dfp_core::{
    register_stage, Batch, ConfigError, DeadLetter, Emitter, Source, SourceStatus, StageConfig, StageContext,
    StageError, StageInstance, StageKind,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::store::{FileInfo, S3Options, Store};
use crate::time::{parse_file_name_time, parse_timestamp};

/// Configuration of `file-source`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A file, a directory (its non-hidden files), a glob such as `logs/**/*.jsonl`, or an `s3://bucket/prefix`
    /// URL (which may end in a glob).
    pub path: String,
    /// How to read the files.
    #[serde(default)]
    pub format: InputFormat,
    /// Emit one row per record with the record's JSON text (`raw`) and line (`line`), for normalizers.
    #[serde(default)]
    pub raw: bool,
    /// Most rows per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// CSV field delimiter.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Keep only files whose time is at or after this instant (ISO 8601).
    #[serde(default)]
    pub start: Option<String>,
    /// Keep only files whose time is before this instant (ISO 8601).
    #[serde(default)]
    pub end: Option<String>,
    /// Keep listing for new files instead of ending.
    #[serde(default)]
    pub watch: bool,
    /// Seconds between listings in watch mode.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: f64,
    /// Records longer than this many bytes are dead letters.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Most bytes read from one file, after decompression: a file (or a `.gz` that inflates) past it is
    /// read up to the limit, and the rest is one dead letter naming the file and the limit.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: usize,
    /// Files each worker reads ahead of the one it parses, on threads of its own (at most
    /// [`READ_THREADS`]); `0` (the default) reads each file on the worker's thread when its turn comes.
    #[serde(default = "default_read_ahead")]
    pub read_ahead: usize,
    /// S3 settings for `s3://` paths.
    #[serde(default)]
    pub s3: S3Options,
}

fn default_batch_size() -> usize {
    4096
}
fn default_delimiter() -> char {
    ','
}
fn default_poll_interval() -> f64 {
    10.0
}
fn default_max_record_bytes() -> usize {
    1 << 20
}
fn default_max_file_bytes() -> usize {
    512 << 20
}
fn default_read_ahead() -> usize {
    0
}

/// Most reading threads of one worker's source.
pub const READ_THREADS: usize = 4;

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// By extension: `.csv` → csv, `.parquet` → parquet, else json.
    #[default]
    Auto,
    /// A JSON array file, a Graph API page, or JSON lines (told apart by the content).
    Json,
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header line.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl FileSourceConfig {
    fn window(&self) -> Result<(Option<i64>, Option<i64>), ConfigError> {
        let parse = |field: &str, v: &Option<String>| -> Result<Option<i64>, ConfigError> {
            v.as_deref()
                .map(|s| {
                    parse_timestamp(s).ok_or_else(|| {
                        ConfigError::field(field, format!("\"{s}\" is not a date-time (e.g. 2022-08-01T00:00:00Z)"))
                    })
                })
                .transpose()
        };
        let start = parse("start", &self.start)?;
        let end = parse("end", &self.end)?;
        if let (Some(a), Some(b)) = (start, end) {
            if a >= b {
                return Err(ConfigError::field("end", "must be after start"));
            }
        }
        Ok((start, end))
    }
}

impl StageConfig for FileSourceConfig {
    const TYPE: &'static str = "file-source";
    const KIND: StageKind = StageKind::Source;
    const DESCRIPTION: &'static str = "reads JSON, JSON-lines, CSV and Parquet files (local, globs, s3://; .gz)";

    fn validate(&self) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(ConfigError::field("path", "must not be empty"));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::field("batch_size", "must be at least 1"));
        }
        if self.max_file_bytes < 1024 {
            return Err(ConfigError::field("max_file_bytes", "must be at least 1024"));
        }
        if !self.delimiter.is_ascii() {
            return Err(ConfigError::field("delimiter", "must be one ASCII character"));
        }
        if self.read_ahead > 1024 {
            return Err(ConfigError::field("read_ahead", "must be at most 1024 (files held in memory per worker)"));
        }
        if !self.poll_interval_secs.is_finite() || self.poll_interval_secs <= 0.0 {
            return Err(ConfigError::field("poll_interval_secs", "must be positive"));
        }
        if let Err(e) = glob::Pattern::new(&self.path) {
            return Err(ConfigError::field("path", format!("not a valid glob: {e}")));
        }
        self.window().map(|_| ())
    }

    fn build(&self, _ctx: &StageContext) -> Result<StageInstance, StageError> {
        let (start, end) = self.window().map_err(|e| StageError::Other(e.to_string()))?;
        Ok(StageInstance::Source(Box::new(FileSource {
            config: self.clone(),
            start,
            end,
            store: None,
            known: HashSet::new(),
            queue: VecDeque::new(),
            ahead: VecDeque::new(),
            readers: None,
            next_rank: 0,
            last_list: Instant::now(),
            current: None,
        })))
    }
}
register_stage!(FileSourceConfig);

/// The schema of `raw: true` output.
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("raw", DataType::Utf8, false), Field::new("line", DataType::UInt32, false)]))
}

/// Files of one listing share a rank (a logical time) until their listed sizes reach this.
const RANK_BYTES: u64 = 1 << 20;

/// A file queued for reading.
struct Queued {
    rank: u64,
    file: FileInfo,
}

/// Records of one file: their JSON text lives in `text`, each as a (line, start, end) span. `bad` holds the
/// (sorted) offsets in `text` of characters that stand for bytes that were not valid text.
struct Records {
    text: String,
    spans: Vec<(u32, usize, usize)>,
    bad: Vec<usize>,
}

impl Records {
    /// The first invalid byte inside `start..end`, as an offset from `start`.
    fn invalid_in(&self, start: usize, end: usize) -> Option<usize> {
        let i = self.bad.partition_point(|&o| o < start);
        self.bad.get(i).filter(|&&o| o < end).map(|&o| o - start)
    }

    fn from_owned(records: Vec<(u32, String)>) -> Self {
        let mut text = String::with_capacity(records.iter().map(|(_, r)| r.len() + 1).sum());
        let mut spans = Vec::with_capacity(records.len());
        for (line, r) in records {
            let start = text.len();
            text.push_str(&r);
            spans.push((line, start, text.len()));
            text.push('\n');
        }
        Records { text, spans, bad: Vec::new() }
    }
}

/// What was read from one file.
enum Content {
    /// JSON records.
    Records(Records),
    /// Parquet batches (columns mode).
    Batches(Vec<RecordBatch>),
}

struct Loaded {
    rank: u64,
    display: String,
    content: Content,
    pos: usize,
}

struct FileSource {
    config: FileSourceConfig,
    start: Option<i64>,
    end: Option<i64>,
    store: Option<Arc<Store>>,
    known: HashSet<String>,
    queue: VecDeque<Queued>,
    /// Files taken from `queue` whose reads are under way, in queue order, each with where its bytes arrive.
    ahead: VecDeque<(Queued, mpsc::Receiver<Result<Bytes, StageError>>)>,
    /// The reading threads' job queue (started at the first read ahead).
    readers: Option<crossbeam_channel::Sender<ReadJob>>,
    next_rank: u64,
    last_list: Instant,
    current: Option<Loaded>,
}

/// One file for a reading thread, and where to send its bytes.
type ReadJob = (FileInfo, mpsc::Sender<Result<Bytes, StageError>>);

/// Starts `threads` threads reading files of `store` until the returned sender is dropped (with the source).
fn start_readers(
    threads: usize,
    store: &Arc<Store>,
    stage: &str,
) -> Result<crossbeam_channel::Sender<ReadJob>, StageError> {
    let (send, receive) = crossbeam_channel::unbounded::<ReadJob>();
    for i in 0..threads {
        let receive = receive.clone();
        let store = Arc::clone(store);
        std::thread::Builder::new()
            .name(format!("dfp-read-{i}"))
            .spawn(move || {
                for (file, reply) in receive {
                    // The source may be gone (a stop): then nobody waits for these bytes.
                    let _ = reply.send(store.get(&file));
                }
            })
            .map_err(|e| StageError::Other(format!("{stage}: cannot start a reading thread: {e}")))?;
    }
    Ok(send)
}

impl FileSource {
    /// The next file of this worker's queue with its bytes, reading up to `read_ahead` files ahead.
    fn next_file(&mut self, ctx: &StageContext) -> Result<Option<(Queued, Bytes)>, StageError> {
        let Some(store) = &self.store else { return Err(StageError::Other("store not opened".into())) };
        if self.config.read_ahead == 0 {
            let Some(q) = self.queue.pop_front() else { return Ok(None) };
            let bytes = store.get(&q.file)?;
            return Ok(Some((q, bytes)));
        }
        while self.ahead.len() < self.config.read_ahead {
            let Some(q) = self.queue.pop_front() else { break };
            if self.readers.is_none() {
                let threads = self.config.read_ahead.min(READ_THREADS);
                self.readers = Some(start_readers(threads, store, &ctx.stage_id)?);
            }
            let (reply, bytes) = mpsc::channel();
            let sent = self.readers.as_ref().is_some_and(|r| r.send((q.file.clone(), reply)).is_ok());
            if !sent {
                return Err(StageError::Other(format!("{}: the reading threads ended", ctx.stage_id)));
            }
            self.ahead.push_back((q, bytes));
        }
        let Some((q, bytes)) = self.ahead.pop_front() else { return Ok(None) };
        let bytes = bytes.recv().map_err(|_| {
            StageError::Other(format!("{}: a reading thread ended before {}", ctx.stage_id, q.file.display))
        })??;
        Ok(Some((q, bytes)))
    }

    /// Lists the store and queues this worker's share of the files not seen before, in time order.
    fn refresh(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        let Some(store) = &self.store else { return Ok(()) };
        self.last_list = Instant::now();
        let mut fresh: Vec<(i64, FileInfo)> = Vec::new();
        for f in store.list()? {
            if !self.known.insert(f.display.clone()) {
                continue;
            }
            let name = f.display.rsplit('/').next().unwrap_or(&f.display);
            let t = parse_file_name_time(name).unwrap_or(f.modified_micros);
            if self.start.is_some_and(|s| t < s) || self.end.is_some_and(|e| t >= e) {
                continue;
            }
            fresh.push((t, f));
        }
        fresh.sort_by(|a, b| (a.0, &a.1.display).cmp(&(b.0, &b.1.display)));
        let total = fresh.len();
        // The rank files of this listing join while it holds fewer than `RANK_BYTES` (a watched folder: none),
        // and its bytes. A listing starts a rank of its own (the last one's may have been read already).
        let mut open: Option<(u64, u64)> = None;
        for (_, file) in fresh {
            let (rank, bytes) = match open {
                Some((rank, bytes)) if bytes < RANK_BYTES && !self.config.watch => (rank, bytes),
                _ => {
                    self.next_rank += 1;
                    (self.next_rank - 1, 0)
                }
            };
            open = Some((rank, bytes.saturating_add(file.size)));
            if dfp_core::hash::worker_for(file.display.as_bytes(), ctx.workers) == ctx.worker_index {
                self.queue.push_back(Queued { rank, file });
            }
        }
        if total == 0 && self.next_rank == 0 && !self.config.watch {
            tracing::warn!(stage = %ctx.stage_id, path = %self.config.path, "no files to read");
        }
        tracing::debug!(stage = %ctx.stage_id, worker = ctx.worker_index, new_files = total, queued = self.queue.len(), "listed");
        Ok(())
    }

    /// Parses a file's `bytes` (read by [`FileSource::next_file`]).
    fn load(&self, q: Queued, bytes: Bytes, out: &mut Emitter) -> Result<Loaded, StageError> {
        let display = q.file.display.clone();
        let limit = self.config.max_file_bytes;
        let mut name = display.to_ascii_lowercase();
        let damaged = |out: &mut Emitter, reason: String| {
            out.dead_letter(DeadLetter::new(reason, String::new(), display.clone()));
        };
        let mut bytes = Vec::from(bytes);
        if name.ends_with(".gz") {
            name.truncate(name.len() - 3);
            let (plain, problem) = gunzip(&bytes, limit);
            match problem {
                None => {}
                Some(Gunzip::NotGzip(e)) => {
                    damaged(out, format!("{display}: not a gzip file ({e}); nothing read from it"));
                }
                Some(Gunzip::Damaged { decoded, near, error }) => damaged(
                    out,
                    format!(
                        "{display}: damaged gzip data near compressed byte {near}, after {decoded} decompressed bytes \
                         ({error}); the records before it are read, the rest of the file is not"
                    ),
                ),
                Some(Gunzip::TooLarge) => damaged(
                    out,
                    format!(
                        "{display}: decompresses to more than max_file_bytes ({limit}); the first {limit} bytes \
                         are read, the rest of the file is not"
                    ),
                ),
            }
            bytes = plain;
        } else if bytes.len() > limit {
            damaged(
                out,
                format!(
                    "{display}: {} bytes, over max_file_bytes ({limit}); the first {limit} bytes are read, the rest \
                     of the file is not",
                    bytes.len()
                ),
            );
            bytes.truncate(limit);
        }
        let format = match self.config.format {
            InputFormat::Auto if name.ends_with(".csv") => InputFormat::Csv,
            InputFormat::Auto if name.ends_with(".parquet") || name.ends_with(".pq") => InputFormat::Parquet,
            InputFormat::Auto => InputFormat::Json,
            f => f,
        };
        let content = match format {
            InputFormat::Parquet => match read_parquet(bytes, &display, self.config.batch_size) {
                Ok(batches) if self.config.raw => {
                    Content::Records(Records::from_owned(batches_to_json_records(&batches)?))
                }
                Ok(batches) => Content::Batches(batches),
                Err(e) => {
                    damaged(out, e.to_string());
                    Content::Batches(Vec::new())
                }
            },
            InputFormat::Csv => {
                let text = decode_text(bytes, &display, out);
                let bad_lines = text.bad_lines();
                Content::Records(Records::from_owned(read_csv(
                    &text.text,
                    self.config.delimiter as u8,
                    &display,
                    &bad_lines,
                    out,
                )))
            }
            InputFormat::Jsonl => {
                let text = decode_text(bytes, &display, out);
                let spans = json_lines(&text.text);
                Content::Records(Records { text: text.text, spans, bad: text.bad })
            }
            _ => {
                let text = decode_text(bytes, &display, out);
                let spans = json_records(&text.text, &display, out);
                Content::Records(Records { text: text.text, spans, bad: text.bad })
            }
        };
        Ok(Loaded { rank: q.rank, display, content, pos: 0 })
    }
}

/// What went wrong while decompressing.
enum Gunzip {
    /// Not gzip data at all.
    NotGzip(std::io::Error),
    /// The data broke off or is corrupt after `decoded` bytes, near compressed byte `near`.
    Damaged { decoded: usize, near: u64, error: std::io::Error },
    /// It inflates past the limit.
    TooLarge,
}

/// Decompresses gzip data (every member) as a stream, keeping at most `limit` bytes; returns what was read
/// and, if it stopped early, why. Memory stays within the limit whatever the data claims.
fn gunzip(compressed: &[u8], limit: usize) -> (Vec<u8>, Option<Gunzip>) {
    /// Counts the compressed bytes the decoder has taken.
    struct Counting<'a> {
        inner: &'a [u8],
        taken: u64,
    }
    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken += n as u64;
            Ok(n)
        }
    }
    let mut decoder = flate2::read::MultiGzDecoder::new(Counting { inner: compressed, taken: 0 });
    let mut plain = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match decoder.read(&mut chunk) {
            Ok(0) => return (plain, None),
            Ok(n) => {
                if plain.len() + n > limit {
                    let keep = limit - plain.len();
                    plain.extend_from_slice(&chunk[..keep]);
                    return (plain, Some(Gunzip::TooLarge));
                }
                plain.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                let near = decoder.get_ref().taken;
                let why = if plain.is_empty() {
                    Gunzip::NotGzip(error)
                } else {
                    Gunzip::Damaged { decoded: plain.len(), near, error }
                };
                return (plain, Some(why));
            }
        }
    }
}

impl Source for FileSource {
    /// A watched folder is a stream; a listing of files has an end.
    fn bounded(&self) -> bool {
        !self.config.watch
    }

    fn open(&mut self, ctx: &StageContext) -> Result<(), StageError> {
        self.store = Some(Arc::new(Store::open(&self.config.path, &self.config.s3)?));
        self.refresh(ctx)
    }

    fn poll(&mut self, ctx: &StageContext, out: &mut Emitter) -> Result<SourceStatus, StageError> {
        if ctx.stop_requested() {
            return Ok(SourceStatus::Exhausted);
        }
        let finished = match &self.current {
            None => true,
            Some(c) => match &c.content {
                Content::Records(r) => c.pos >= r.spans.len(),
                Content::Batches(b) => c.pos >= b.len(),
            },
        };
        if finished {
            self.current = None;
            if self.queue.is_empty() && self.ahead.is_empty() && self.config.watch {
                if self.last_list.elapsed() < Duration::from_secs_f64(self.config.poll_interval_secs) {
                    return Ok(SourceStatus::Idle);
                }
                self.refresh(ctx)?;
            }
            let Some((q, bytes)) = self.next_file(ctx)? else {
                return Ok(if self.config.watch { SourceStatus::Idle } else { SourceStatus::Exhausted });
            };
            self.current = Some(self.load(q, bytes, out)?);
        }
        let Some(cur) = self.current.as_mut() else { return Ok(SourceStatus::Ready) };
        let data = match &cur.content {
            Content::Batches(batches) => {
                cur.pos += 1;
                batches[cur.pos - 1].clone()
            }
            Content::Records(records) => {
                let end = (cur.pos + self.config.batch_size).min(records.spans.len());
                let range = cur.pos..end;
                cur.pos = end;
                chunk_to_batch(records, range, self.config.raw, self.config.max_record_bytes, &cur.display, out)?
            }
        };
        let mut batch = Batch::new(data, ctx.stage_id.clone());
        batch.envelope.origin = cur.display.clone();
        batch.envelope.time = Some(cur.rank);
        out.emit(batch);
        Ok(SourceStatus::Ready)
    }
}

/// At most 4 KiB of a record, for a dead letter.
fn excerpt_of(text: &str) -> String {
    let mut end = text.len().min(4096);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = text[..end].to_string();
    if end < text.len() {
        s.push('…');
    }
    s
}

/// A file's bytes as text, with where bytes that were not valid text were replaced (by U+FFFD).
struct Text {
    text: String,
    bad: Vec<usize>,
}

impl Text {
    /// The 1-based lines holding a replaced byte.
    fn bad_lines(&self) -> HashSet<u32> {
        let mut pos = (0usize, 1u32);
        self.bad.iter().map(|&o| advance_line(&self.text, &mut pos, o)).collect()
    }
}

/// Decodes a file's bytes: UTF-8 (a byte-order mark skipped), or UTF-16 when it starts with a UTF-16
/// byte-order mark or has the NUL bytes of ASCII text in UTF-16. Invalid sequences become U+FFFD, and their
/// places are kept so that the records holding them become dead letters instead of being read mangled.
fn decode_text(bytes: Vec<u8>, display: &str, out: &mut Emitter) -> Text {
    let utf16 = match bytes.as_slice() {
        [0xFF, 0xFE, ..] => Some((true, 2)),
        [0xFE, 0xFF, ..] => Some((false, 2)),
        b if b.len() >= 4 => {
            // ASCII text in UTF-16 has a NUL in every other byte.
            let head = &b[..b.len().min(512) & !1];
            let zeros_odd = head.iter().skip(1).step_by(2).filter(|&&c| c == 0).count();
            let zeros_even = head.iter().step_by(2).filter(|&&c| c == 0).count();
            let half = head.len() / 2;
            if zeros_odd * 10 >= half * 9 && zeros_even == 0 {
                Some((true, 0))
            } else if zeros_even * 10 >= half * 9 && zeros_odd == 0 {
                Some((false, 0))
            } else {
                None
            }
        }
        _ => None,
    };
    if let Some((little, skip)) = utf16 {
        let file = display;
        tracing::debug!(file, little_endian = little, "decoding UTF-16");
        let units = bytes[skip..].chunks(2).map(|c| match (c, little) {
            ([a, b], true) => u16::from_le_bytes([*a, *b]),
            ([a, b], false) => u16::from_be_bytes([*a, *b]),
            _ => 0xFFFD,
        });
        let mut text = String::with_capacity(bytes.len() / 2);
        let mut bad = Vec::new();
        for c in char::decode_utf16(units) {
            match c {
                Ok(c) => text.push(c),
                Err(_) => {
                    bad.push(text.len());
                    text.push(char::REPLACEMENT_CHARACTER);
                }
            }
        }
        if bytes.len() % 2 == 1 {
            out.dead_letter(DeadLetter::new(
                format!("{display}: UTF-16 text with an odd number of bytes: the last byte is not read"),
                String::new(),
                display.to_string(),
            ));
        }
        return Text { text, bad };
    }
    let mut bytes = bytes;
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        bytes.drain(..3);
    }
    let bytes = match String::from_utf8(bytes) {
        Ok(text) => return Text { text, bad: Vec::new() },
        Err(e) => e.into_bytes(),
    };
    let mut text = String::with_capacity(bytes.len());
    let mut bad = Vec::new();
    let mut rest = bytes.as_slice();
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                return Text { text, bad };
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // `valid_up_to` bytes were just checked to be UTF-8.
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                bad.push(text.len());
                text.push(char::REPLACEMENT_CHARACTER);
                rest = &after[e.error_len().unwrap_or(after.len())..];
            }
        }
    }
}

/// Turns a range of records into a batch: raw rows, or parsed columns.
fn chunk_to_batch(
    records: &Records,
    range: std::ops::Range<usize>,
    raw: bool,
    max_bytes: usize,
    display: &str,
    out: &mut Emitter,
) -> Result<RecordBatch, StageError> {
    let too_big = |line: u32, text: &str, out: &mut Emitter| {
        let head: String = text.chars().take(1024).collect();
        out.dead_letter(DeadLetter::new(
            format!("line {line}: record is {} bytes, over max_record_bytes ({max_bytes})", text.len()),
            head + "…",
            format!("{display}:{line}"),
        ));
    };
    let mut chunk: Vec<(u32, &str)> = Vec::with_capacity(range.len());
    for i in range {
        let (line, a, b) = records.spans[i];
        match records.invalid_in(a, b) {
            None => chunk.push((line, &records.text[a..b])),
            Some(at) => out.dead_letter(DeadLetter::new(
                format!(
                    "line {line}: the record holds bytes that are not valid UTF-8 (at byte {at} of the record); it \
                     is not read, so that no value is read mangled"
                ),
                excerpt_of(&records.text[a..b]),
                format!("{display}:{line}"),
            )),
        }
    }
    if raw {
        let mut texts = StringBuilder::with_capacity(chunk.len(), chunk.iter().map(|(_, t)| t.len()).sum());
        let mut lines = UInt32Builder::with_capacity(chunk.len());
        for (line, text) in &chunk {
            if text.len() > max_bytes {
                too_big(*line, text, out);
                continue;
            }
            texts.append_value(text);
            lines.append_value(*line);
        }
        return Ok(RecordBatch::try_new(raw_schema(), vec![Arc::new(texts.finish()), Arc::new(lines.finish())])?);
    }
    let mut values = Vec::with_capacity(chunk.len());
    let mut value_lines = Vec::with_capacity(chunk.len());
    for &(line, text) in &chunk {
        if text.len() > max_bytes {
            too_big(line, text, out);
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(v) => {
                values.push(v);
                value_lines.push(line);
            }
            Err(e) => out.dead_letter(DeadLetter::new(
                format!("line {line}: invalid JSON: {e}"),
                text,
                format!("{display}:{line}"),
            )),
        }
    }
    let converted = records_to_batch(&values)?;
    for (i, reason) in converted.rejected {
        let line = value_lines[i];
        out.dead_letter(DeadLetter::new(
            format!("line {line}: {reason}"),
            values[i].to_string(),
            format!("{display}:{line}"),
        ));
    }
    Ok(converted.batch)
}

/// The 1-based line of byte `offset`, counting from a known (offset, line) position.
fn advance_line(text: &str, from: &mut (usize, u32), offset: usize) -> u32 {
    from.1 += memchr::memchr_iter(b'\n', &text.as_bytes()[from.0..offset]).count() as u32;
    from.0 = offset;
    from.1
}

/// The span of an element a JSON array file could not finish, and why.
type Unfinished = (usize, usize, String);

/// Splits a JSON array into the byte spans of its elements without parsing them (each element is parsed
/// once, later, by whoever reads it). Returns the spans and, for a file that ends inside the array, the span
/// of the unfinished element with the reason.
fn split_array(text: &str) -> (Vec<(usize, usize)>, Option<Unfinished>) {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let Some(open) = b.iter().position(|c| !c.is_ascii_whitespace()).filter(|&i| b[i] == b'[') else {
        return (spans, Some((0, b.len().min(1), "not a JSON array".into())));
    };
    let mut i = open + 1;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            return (spans, Some((i, i, "truncated JSON array: the file ends before `]`".into())));
        }
        if b[i] == b']' && spans.is_empty() {
            return (spans, None);
        }
        let start = i;
        let mut depth = 0usize;
        let mut end = None;
        while i < b.len() {
            match b[i] {
                b'"' => {
                    // Jump to the closing quote, skipping escaped characters.
                    i += 1;
                    loop {
                        match memchr::memchr2(b'"', b'\\', &b[i..]) {
                            Some(k) if b[i + k] == b'\\' => i += k + 2,
                            Some(k) => {
                                i += k + 1;
                                break;
                            }
                            None => {
                                i = b.len();
                                break;
                            }
                        }
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b']' | b',' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let Some(stop) = end else {
            return (spans, Some((start, b.len(), "truncated JSON array: the file ends inside this record".into())));
        };
        let mut e = stop;
        while e > start && b[e - 1].is_ascii_whitespace() {
            e -= 1;
        }
        if e == start {
            return (spans, Some((start, stop, "empty element in the JSON array".into())));
        }
        spans.push((start, e));
        i = stop + 1;
        if b[stop] == b']' {
            return (spans, None);
        }
    }
}

/// Spans of the non-blank lines, trimmed.
fn json_lines(text: &str) -> Vec<(u32, usize, usize)> {
    let base = text.as_ptr() as usize;
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let t = l.trim();
            let start = t.as_ptr() as usize - base;
            (!t.is_empty()).then_some(((i + 1) as u32, start, start + t.len()))
        })
        .collect()
}

#[derive(Deserialize)]
struct GraphPage<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
}

/// Splits a JSON file into record spans: an array, a Graph page, or JSON lines.
fn json_records(text: &str, display: &str, out: &mut Emitter) -> Vec<(u32, usize, usize)> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let (spans, error) = split_array(text);
        let mut pos = (0usize, 1u32);
        let mut out_spans: Vec<(u32, usize, usize)> =
            spans.into_iter().map(|(a, b)| (advance_line(text, &mut pos, a), a, b)).collect();
        if let Some((a, b, reason)) = error {
            let line = advance_line(text, &mut pos, a.min(text.len()));
            let record = excerpt_of(&text[a.min(text.len())..b.min(text.len())]);
            out.dead_letter(DeadLetter::new(format!("line {line}: {reason}"), record, format!("{display}:{line}")));
            out_spans.shrink_to_fit();
        }
        return out_spans;
    }
    let elements: Option<Result<Vec<&RawValue>, serde_json::Error>> =
        if trimmed.starts_with('{') && text.contains("\"@odata.context\"") {
            match serde_json::from_str::<GraphPage>(text) {
                Ok(page) => Some(Ok(page.value)),
                Err(e) if !text.trim_end().contains('\n') => Some(Err(e)),
                // Several lines, not one page: JSON lines of records that mention OData.
                Err(_) => None,
            }
        } else {
            None
        };
    match elements {
        None => json_lines(text),
        Some(Ok(items)) => {
            let base = text.as_ptr() as usize;
            let mut pos = (0usize, 1u32);
            items
                .into_iter()
                .map(|raw| {
                    let start = raw.get().as_ptr() as usize - base;
                    let line = advance_line(text, &mut pos, start);
                    (line, start, start + raw.get().len())
                })
                .collect()
        }
        Some(Err(e)) => {
            let mut record: String = text.chars().take(4096).collect();
            if record.len() < text.len() {
                record.push('…');
            }
            out.dead_letter(DeadLetter::new(
                format!("not a valid JSON array: {e}"),
                record,
                format!("{display}:{}", e.line()),
            ));
            Vec::new()
        }
    }
}

fn read_parquet(bytes: Vec<u8>, display: &str, batch_size: usize) -> Result<Vec<RecordBatch>, StageError> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.with_batch_size(batch_size).build())
        .map_err(|e| StageError::Data(format!("{display}: not a readable Parquet file: {e}")))?;
    reader.map(|b| b.map_err(|e| StageError::Data(format!("{display}: {e}")))).collect::<Result<Vec<_>, _>>()
}

/// Parquet rows as JSON text records (for `raw: true`), numbered from 1.
fn batches_to_json_records(batches: &[RecordBatch]) -> Result<Vec<(u32, String)>, StageError> {
    let mut out = Vec::new();
    let mut n = 0u32;
    for b in batches {
        let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
        w.write(b)?;
        w.finish()?;
        let text = String::from_utf8_lossy(&w.into_inner()).into_owned();
        for line in text.lines() {
            n += 1;
            out.push((n, line.to_string()));
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq)]
enum ColType {
    Int,
    Float,
    Bool,
    Text,
}

/// Reads CSV rows into JSON object records with per-file column types.
fn read_csv(
    text: &str,
    delimiter: u8,
    display: &str,
    bad_lines: &HashSet<u32>,
    out: &mut Emitter,
) -> Vec<(u32, String)> {
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delimiter).has_headers(true).flexible(true).from_reader(text.as_bytes());
    let headers: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_string).collect(),
        Err(e) => {
            out.dead_letter(DeadLetter::new(format!("cannot read the CSV header: {e}"), "", format!("{display}:1")));
            return Vec::new();
        }
    };
    let mut rows: Vec<(u32, csv::StringRecord)> = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map(|p| p.line() as u32).unwrap_or(0);
                if bad_lines.contains(&line) {
                    let text: Vec<&str> = record.iter().collect();
                    out.dead_letter(DeadLetter::new(
                        format!("line {line}: the row holds bytes that are not valid UTF-8; it is not read"),
                        text.join(&(delimiter as char).to_string()),
                        format!("{display}:{line}"),
                    ));
                    continue;
                }
                if record.len() != headers.len() {
                    let text: Vec<&str> = record.iter().collect();
                    out.dead_letter(DeadLetter::new(
                        format!("line {line}: expected {} fields, found {}", headers.len(), record.len()),
                        text.join(&(delimiter as char).to_string()),
                        format!("{display}:{line}"),
                    ));
                    continue;
                }
                rows.push((line, record.clone()));
            }
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                out.dead_letter(DeadLetter::new(format!("line {line}: {e}"), "", format!("{display}:{line}")));
            }
        }
    }
    // One type per column for the whole file, so every batch agrees.
    let types: Vec<ColType> =
        (0..headers.len()).map(|c| column_type(rows.iter().map(|(_, r)| r.get(c).unwrap_or("")))).collect();
    rows.into_iter()
        .map(|(line, r)| {
            let mut obj = Map::with_capacity(headers.len());
            for (c, name) in headers.iter().enumerate() {
                let v = r.get(c).unwrap_or("");
                let value = if v.is_empty() {
                    Value::Null
                } else {
                    match types[c] {
                        ColType::Int => v.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(v)),
                        ColType::Float => v.parse::<f64>().map(Value::from).unwrap_or_else(|_| Value::from(v)),
                        ColType::Bool => Value::Bool(v == "true"),
                        ColType::Text => Value::from(v),
                    }
                };
                obj.insert(name.clone(), value);
            }
            (line, Value::Object(obj).to_string())
        })
        .collect()
}

/// The narrowest type that holds every non-empty value of a column (all-empty columns are text).
fn column_type<'a>(values: impl Iterator<Item = &'a str>) -> ColType {
    let (mut any, mut int, mut float, mut boolean) = (false, true, true, true);
    for v in values.filter(|v| !v.is_empty()) {
        any = true;
        int &= v.parse::<i64>().is_ok();
        float &= v.parse::<f64>().is_ok();
        boolean &= v == "true" || v == "false";
        if !int && !float && !boolean {
            return ColType::Text;
        }
    }
    match (any, int, float, boolean) {
        (false, ..) => ColType::Text,
        (_, true, ..) => ColType::Int,
        (_, _, true, _) => ColType::Float,
        (_, _, _, true) => ColType::Bool,
        _ => ColType::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &str, workers: usize) -> (Vec<(usize, Vec<Batch>)>, Vec<DeadLetter>) {
        let mut per_worker = Vec::new();
        let mut dead = Vec::new();
        for (w, (b, d)) in
            read_per_worker(serde_json::json!({"path": path, "batch_size": 2}), workers).into_iter().enumerate()
        {
            per_worker.push((w, b));
            dead.extend(d);
        }
        (per_worker, dead)
    }

    /// Each of `workers` workers' batches and dead letters, reading to the end with this configuration.
    fn read_per_worker(config: serde_json::Value, workers: usize) -> Vec<(Vec<Batch>, Vec<DeadLetter>)> {
        let config: FileSourceConfig = serde_json::from_value(config).unwrap();
        config.validate().unwrap();
        (0..workers)
            .map(|w| {
                let ctx = StageContext::standalone("logs", w, workers);
                let StageInstance::Source(mut src) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
                src.open(&ctx).unwrap();
                let mut em = Emitter::new();
                while src.poll(&ctx, &mut em).unwrap() != SourceStatus::Exhausted {}
                em.take()
            })
            .collect()
    }

    #[test]
    fn json_arrays_keep_order_and_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("AZUREAD_2022-08-01T00_03_56.207Z.json");
        std::fs::write(&p, "[\n  {\"n\": 1},\n  {\"n\": 2},\n  7,\n  {\"n\": 3}\n]\n").unwrap();
        let (workers, dead) = read_all(p.to_str().unwrap(), 1);
        let batches = &workers[0].1;
        assert_eq!(batches.iter().map(Batch::num_rows).collect::<Vec<_>>(), vec![2, 1]);
        assert!(batches.iter().all(|b| b.envelope.origin == p.display().to_string()));
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].origin, format!("{}:4", p.display()));
        assert!(dead[0].reason.contains("line 4: expected a JSON object"), "{}", dead[0].reason);
    }

    #[test]
    fn a_truncated_array_file_keeps_its_complete_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::fs::write(&p, "[\n {\"n\": 1},\n {\"n\": \n").unwrap();
        let (workers, dead) = read_all(p.to_str().unwrap(), 1);
        // The complete record still flows; the unfinished one is a dead letter with its line.
        assert_eq!(workers[0].1.iter().map(Batch::num_rows).sum::<usize>(), 1);
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.starts_with("line 3: truncated JSON array"), "{}", dead[0].reason);
        assert_eq!(dead[0].record, "{\"n\": \n");
    }

    #[test]
    fn files_of_a_directory_are_split_across_workers_without_overlap() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("f{i}.jsonl")), format!("{{\"f\": {i}}}\n")).unwrap();
        }
        std::fs::write(dir.path().join(".hidden"), "junk").unwrap();
        let (workers, dead) = read_all(dir.path().to_str().unwrap(), 3);
        assert!(dead.is_empty());
        let mut origins: Vec<String> =
            workers.iter().flat_map(|(_, b)| b.iter().map(|b| b.envelope.origin.clone())).collect();
        assert_eq!(origins.len(), 10);
        origins.sort();
        origins.dedup();
        assert_eq!(origins.len(), 10, "each file read by exactly one worker");
        assert!(workers.iter().filter(|(_, b)| !b.is_empty()).count() >= 2, "work is spread");
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let config: FileSourceConfig =
            serde_json::from_value(serde_json::json!({"path": "/nonexistent/dfp/x.json"})).unwrap();
        let ctx = StageContext::standalone("logs", 0, 1);
        let StageInstance::Source(mut src) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
        let e = src.open(&ctx).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/dfp/x.json"), "{e}");
    }

    #[test]
    fn csv_column_types_are_inferred_per_file() {
        assert!(column_type(["1", "2", ""].into_iter()) == ColType::Int);
        assert!(column_type(["1", "2.5"].into_iter()) == ColType::Float);
        assert!(column_type(["true", "false"].into_iter()) == ColType::Bool);
        assert!(column_type(["1", "x"].into_iter()) == ColType::Text);
        assert!(column_type(["", ""].into_iter()) == ColType::Text);
    }

    fn read_with(config: serde_json::Value) -> (Vec<Batch>, Vec<DeadLetter>) {
        let config: FileSourceConfig = serde_json::from_value(config).unwrap();
        config.validate().unwrap();
        let ctx = StageContext::standalone("logs", 0, 1);
        let StageInstance::Source(mut src) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
        src.open(&ctx).unwrap();
        let mut em = Emitter::new();
        while src.poll(&ctx, &mut em).unwrap() != SourceStatus::Exhausted {}
        em.take()
    }

    #[test]
    fn reading_ahead_changes_nothing_that_comes_out() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        for i in 0..40 {
            let name = format!("AZUREAD_2022-08-01T{:02}_{:02}_00.000Z.json", i / 4, (i % 4) * 15);
            let records: Vec<String> = (0..(i % 7 + 1)).map(|k| format!("{{\"file\": {i}, \"k\": {k}}}")).collect();
            let mut text = format!("[\n{}\n]\n", records.join(",\n"));
            if i == 9 {
                text.push_str("junk");
            }
            if i % 5 == 0 {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(text.as_bytes()).unwrap();
                let mut bytes = gz.finish().unwrap();
                if i == 20 {
                    bytes.truncate(bytes.len() / 2);
                }
                std::fs::write(dir.path().join(format!("{name}.gz")), bytes).unwrap();
            } else {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
        }
        let path = dir.path().to_str().unwrap();
        let read = |ahead: usize, workers: usize| {
            let config = serde_json::json!({"path": path, "raw": true, "batch_size": 3, "read_ahead": ahead});
            read_per_worker(config, workers)
                .into_iter()
                .map(|(batches, dead)| {
                    let batches: Vec<_> =
                        batches.into_iter().map(|b| (b.envelope.origin, b.envelope.time, b.data)).collect();
                    let dead: Vec<_> = dead.into_iter().map(|d| (d.origin, d.reason)).collect();
                    (batches, dead)
                })
                .collect::<Vec<_>>()
        };
        for workers in [1, 2] {
            let plain = read(0, workers);
            let rows: usize = plain.iter().flat_map(|(b, _)| b.iter().map(|(_, _, d)| d.num_rows())).sum();
            assert!(rows > 100, "{rows}");
            assert!(plain.iter().map(|(_, d)| d.len()).sum::<usize>() >= 2, "the damaged files are dead letters");
            for ahead in [1, 3, 8, 64] {
                assert!(read(ahead, workers) == plain, "read_ahead {ahead}, {workers} worker(s)");
            }
        }
    }

    #[test]
    fn a_file_that_cannot_be_read_fails_when_its_turn_comes() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..6).map(|i| format!("AZUREAD_2022-08-0{}T00_00_00.000Z.json", i + 1)).collect();
        for name in &names {
            std::fs::write(dir.path().join(name), "[{\"n\": 1}]\n").unwrap();
        }
        for ahead in [0, 4] {
            let config: FileSourceConfig =
                serde_json::from_value(serde_json::json!({"path": dir.path().to_str().unwrap(), "read_ahead": ahead}))
                    .unwrap();
            let ctx = StageContext::standalone("logs", 0, 1);
            let StageInstance::Source(mut src) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
            src.open(&ctx).unwrap();
            // Listed, then gone before it is read (moved away by another process, say).
            let gone = dir.path().join(&names[2]);
            let kept = dir.path().join("moved");
            std::fs::rename(&gone, &kept).unwrap();
            let mut em = Emitter::new();
            let error = loop {
                match src.poll(&ctx, &mut em) {
                    Ok(SourceStatus::Exhausted) => panic!("read_ahead {ahead}: no error"),
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                }
            };
            assert!(error.contains(&names[2]), "read_ahead {ahead}: {error}");
            let (batches, _) = em.take();
            assert_eq!(batches.len(), 2, "read_ahead {ahead}: the two files before it were emitted");
            std::fs::rename(&kept, &gone).unwrap();
        }
        let bad: FileSourceConfig =
            serde_json::from_value(serde_json::json!({"path": "x.json", "read_ahead": 5000})).unwrap();
        assert_eq!(bad.validate().unwrap_err().field.as_deref(), Some("read_ahead"));
    }

    #[test]
    fn files_are_read_in_name_time_order_inside_the_window_with_ranks() {
        let dir = tempfile::tempdir().unwrap();
        for (name, n) in [
            ("AZUREAD_2022-08-01T06_00_00.000Z.json", 3),
            ("AZUREAD_2022-08-01T00_03_56.207Z.json", 1),
            ("AZUREAD_2022-08-01T03_00_00.000Z.json", 2),
            ("AZUREAD_2022-08-02T00_00_00.000Z.json", 4),
        ] {
            std::fs::write(dir.path().join(name), format!("[{{\"n\": {n}}}]")).unwrap();
        }
        let (batches, dead) = read_with(serde_json::json!({
            "path": dir.path().join("*.json").to_str().unwrap(),
            "start": "2022-08-01T00:00:00Z", "end": "2022-08-02T00:00:00Z", "raw": true
        }));
        assert!(dead.is_empty());
        let order: Vec<String> = batches
            .iter()
            .map(|b| {
                b.data.column(0).as_any().downcast_ref::<arrow::array::StringArray>().unwrap().value(0).to_string()
            })
            .collect();
        assert_eq!(order, ["{\"n\": 1}", "{\"n\": 2}", "{\"n\": 3}"]);
        assert_eq!(batches.iter().map(|b| b.envelope.time).collect::<Vec<_>>(), [Some(0); 3], "small files share one");
    }

    #[test]
    fn files_share_a_rank_until_it_holds_a_mebibyte() {
        let dir = tempfile::tempdir().unwrap();
        // 600 KiB, 300 KiB, 200 KiB (the rank now holds 1,100 KiB), then 2 MiB, then 1 KiB: records of 1 KiB.
        let record = format!("{{\"pad\": \"{}\"}}", "x".repeat(1010));
        for (i, kib) in [600, 300, 200, 2048, 1].iter().enumerate() {
            let text = format!("[{}]", vec![record.as_str(); *kib].join(",\n"));
            std::fs::write(dir.path().join(format!("AZUREAD_2022-08-01T0{i}_00_00.000Z.json")), text).unwrap();
        }
        let (batches, dead) = read_with(serde_json::json!({ "path": dir.path().to_str().unwrap(), "raw": true }));
        assert!(dead.is_empty());
        let mut ranks: Vec<u64> = batches.iter().filter_map(|b| b.envelope.time).collect();
        ranks.dedup();
        let files: Vec<usize> = ranks
            .iter()
            .map(|r| {
                let mut origins: Vec<&str> = batches
                    .iter()
                    .filter(|b| b.envelope.time == Some(*r))
                    .map(|b| b.envelope.origin.as_str())
                    .collect();
                origins.dedup();
                origins.len()
            })
            .collect();
        assert_eq!((ranks, files), (vec![0, 1, 2], vec![3, 1, 1]), "files per rank");

        // A watched folder keeps a rank per file.
        let config: FileSourceConfig = serde_json::from_value(
            serde_json::json!({ "path": dir.path().to_str().unwrap(), "raw": true, "watch": true }),
        )
        .unwrap();
        let ctx = StageContext::standalone("logs", 0, 1);
        let StageInstance::Source(mut src) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
        src.open(&ctx).unwrap();
        let mut em = Emitter::new();
        while src.poll(&ctx, &mut em).unwrap() == SourceStatus::Ready {}
        let mut ranks: Vec<u64> = em.take().0.iter().filter_map(|b| b.envelope.time).collect();
        ranks.dedup();
        assert_eq!(ranks, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn gzip_graph_pages_and_parquet() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let page = "{\"@odata.context\": \"https://graph.microsoft.com/v1.0/$metadata#auditLogs/signIns\",\n \"value\": [\n  {\"id\": \"a\"},\n  {\"id\": \"b\"}\n ]}";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(page.as_bytes()).unwrap();
        std::fs::write(dir.path().join("page.json.gz"), gz.finish().unwrap()).unwrap();
        let (batches, dead) =
            read_with(serde_json::json!({"path": dir.path().join("page.json.gz").to_str().unwrap(), "raw": true}));
        assert!(dead.is_empty(), "{dead:?}");
        assert_eq!(batches[0].num_rows(), 2);
        let lines = batches[0].data.column(1).as_any().downcast_ref::<arrow::array::UInt32Array>().unwrap();
        assert_eq!(lines.values().to_vec(), vec![3, 4]);

        // Parquet written from a batch read back as columns.
        let (json_batches, _) =
            read_with(serde_json::json!({"path": dir.path().join("page.json.gz").to_str().unwrap()}));
        let original = &json_batches[0].data;
        let file = std::fs::File::create(dir.path().join("x.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, original.schema(), None).unwrap();
        w.write(original).unwrap();
        w.close().unwrap();
        let (pq, dead) = read_with(serde_json::json!({"path": dir.path().join("x.parquet").to_str().unwrap()}));
        assert!(dead.is_empty());
        assert_eq!(&pq[0].data, original);
    }

    #[test]
    fn oversized_records_are_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.jsonl");
        std::fs::write(&p, format!("{{\"a\": 1}}\n{{\"a\": \"{}\"}}\n{{\"a\": 3}}\n", "x".repeat(5000))).unwrap();
        let (batches, dead) =
            read_with(serde_json::json!({"path": p.to_str().unwrap(), "raw": true, "max_record_bytes": 1000}));
        assert_eq!(batches.iter().map(Batch::num_rows).sum::<usize>(), 2);
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.contains("line 2: record is 5009 bytes"), "{}", dead[0].reason);
    }
}

#[cfg(test)]
mod damaged_input_tests {
    use std::io::Write;

    use arrow::array::{Array, AsArray};

    use super::*;

    fn read(path: &std::path::Path, extra: serde_json::Value) -> (Vec<String>, Vec<DeadLetter>) {
        let mut config = serde_json::json!({"path": path.to_str().unwrap(), "raw": true});
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let config: FileSourceConfig = serde_json::from_value(config).unwrap();
        config.validate().unwrap();
        let ctx = StageContext::standalone("logs", 0, 1);
        let StageInstance::Source(mut src) = StageConfig::build(&config, &ctx).unwrap() else { panic!() };
        src.open(&ctx).unwrap();
        let mut em = Emitter::new();
        while src.poll(&ctx, &mut em).unwrap() != SourceStatus::Exhausted {}
        let (batches, dead) = em.take();
        let rows = batches
            .iter()
            .flat_map(|b| {
                let raw = b.data.column(0).as_string::<i32>();
                (0..raw.len()).map(|i| raw.value(i).to_string()).collect::<Vec<_>>()
            })
            .collect();
        (rows, dead)
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_gzip_bomb_is_read_only_up_to_the_file_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb.jsonl.gz");
        // 2 good lines, then 64 MiB of zeros in one line: a few KiB compressed, 5 members.
        let mut data = b"{\"a\":1}\n{\"a\":2}\n".to_vec();
        data.extend(std::iter::repeat_n(b'0', 64 << 20));
        let member = gz(&data);
        std::fs::write(&p, member.repeat(5)).unwrap();
        let (rows, dead) = read(&p, serde_json::json!({"max_file_bytes": 1 << 20, "max_record_bytes": 4096}));
        assert_eq!(rows.len(), 2, "only the two real records are rows");
        assert_eq!(rows, ["{\"a\":1}", "{\"a\":2}"]);
        let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
        assert!(
            reasons.iter().any(|r| r.contains("decompresses to more than max_file_bytes (1048576)")),
            "{reasons:?}"
        );
        assert!(reasons.iter().any(|r| r.contains("over max_record_bytes")), "{reasons:?}");
    }

    #[test]
    fn a_truncated_or_fake_gzip_keeps_what_was_read_and_other_files_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..2000).map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(40))).collect();
        let whole = gz(lines.as_bytes());
        std::fs::write(dir.path().join("a-cut.jsonl.gz"), &whole[..whole.len() / 2]).unwrap();
        std::fs::write(dir.path().join("b-fake.jsonl.gz"), b"this is not gzip at all\n").unwrap();
        std::fs::write(dir.path().join("c-fine.jsonl"), "{\"n\":\"last\"}\n").unwrap();
        let (rows, dead) = read(dir.path(), serde_json::json!({}));
        assert!(rows.last().is_some_and(|r| r.contains("last")), "the file after the damaged ones is read");
        let from_cut = rows.iter().filter(|r| r.contains("pad")).count();
        assert!(from_cut > 100 && from_cut < 2000, "the readable part of the cut file is kept: {from_cut}");
        let cut = dead.iter().find(|d| d.origin.ends_with("a-cut.jsonl.gz")).expect("the cut file is reported");
        assert!(cut.reason.contains("damaged gzip data near compressed byte"), "{}", cut.reason);
        let fake = dead.iter().find(|d| d.origin.ends_with("b-fake.jsonl.gz")).expect("the fake gzip is reported");
        assert!(fake.reason.contains("not a gzip file"), "{}", fake.reason);
    }

    #[test]
    fn byte_order_marks_and_utf16_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let array = "[\n  {\"u\": \"zoë\"},\n  {\"u\": \"bob\"}\n]\n";
        let bom = dir.path().join("bom.json");
        std::fs::write(&bom, [&[0xEF, 0xBB, 0xBF][..], array.as_bytes()].concat()).unwrap();
        let (rows, dead) = read(&bom, serde_json::json!({}));
        assert!(dead.is_empty(), "{dead:?}");
        assert_eq!(rows, ["{\"u\": \"zoë\"}", "{\"u\": \"bob\"}"]);
        for (name, little, mark) in [("le.json", true, true), ("be.json", false, true), ("nomark.json", true, false)] {
            let p = dir.path().join(name);
            let mut bytes: Vec<u8> = match (mark, little) {
                (true, true) => vec![0xFF, 0xFE],
                (true, false) => vec![0xFE, 0xFF],
                _ => Vec::new(),
            };
            for u in array.encode_utf16() {
                bytes.extend(if little { u.to_le_bytes() } else { u.to_be_bytes() });
            }
            std::fs::write(&p, bytes).unwrap();
            let (rows, dead) = read(&p, serde_json::json!({}));
            assert!(dead.is_empty(), "{name}: {dead:?}");
            assert_eq!(rows, ["{\"u\": \"zoë\"}", "{\"u\": \"bob\"}"], "{name}");
        }
    }

    #[test]
    fn a_record_with_invalid_utf8_is_a_dead_letter_not_a_mangled_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(
            &p,
            [&b"{\"u\":\"alice\"}\n{\"u\":\"b"[..], &[0xFF, 0xFE][..], &b"b\"}\n{\"u\":\"carol\"}\n"[..]].concat(),
        )
        .unwrap();
        let (rows, dead) = read(&p, serde_json::json!({}));
        assert_eq!(rows, ["{\"u\":\"alice\"}", "{\"u\":\"carol\"}"]);
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0].reason.starts_with("line 2: the record holds bytes that are not valid UTF-8"),
            "{}",
            dead[0].reason
        );
        assert_eq!(dead[0].origin, format!("{}:2", p.display()));
        let csv = dir.path().join("x.csv");
        std::fs::write(&csv, [&b"u,n\nalice,1\n"[..], &[0xC3][..], &b"b,2\ncarol,3\n"[..]].concat()).unwrap();
        let (rows, dead) = read(&csv, serde_json::json!({}));
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(dead[0].reason.contains("line 3: the row holds bytes that are not valid UTF-8"), "{}", dead[0].reason);
    }
}

#[cfg(test)]
mod split_tests {
    use super::split_array;

    #[test]
    fn splits_nested_values_strings_and_escapes() {
        let text = r#" [ {"a": [1, {"b": "x]}"}]}, "s\"t,r" ,3,[4,5] ]  "#;
        let (spans, err) = split_array(text);
        assert!(err.is_none());
        let parts: Vec<&str> = spans.iter().map(|(a, b)| &text[*a..*b]).collect();
        assert_eq!(parts, [r#"{"a": [1, {"b": "x]}"}]}"#, r#""s\"t,r""#, "3", "[4,5]"]);
        assert_eq!(split_array("[]").0.len(), 0);
        assert_eq!(split_array("[\n]\n").1, None);
        assert!(split_array("{}").1.is_some());
        assert!(split_array("[1,").1.unwrap().2.contains("truncated"));
    }
}
