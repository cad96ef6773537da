//! `dfp eval`: detection quality of anomaly scores against the labels written by `dfp generate`.
//!
//! Every labelled event counts. An event with no score is not flagged and ranks below every scored event
//! (ties among them share their average rank), so a pipeline that drops events is not rewarded for it.
//! Score rows whose id is not in the labels are counted and reported; an id scored twice keeps its highest
//! score.
//!
//! The metrics are pure functions of `(score, label)` pairs: [`roc_auc`] (Mann–Whitney, ties at average
//! rank) and [`average_precision`] (area under the precision–recall step curve, as scikit-learn's
//! `average_precision_score`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// Why evaluation could not start.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A line of a file is not what was expected.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The input as a whole is unusable (no files, missing columns).
    #[error("{0}")]
    Input(String),
    /// The scores could not be read.
    #[error(transparent)]
    Scored(#[from] crate::scored::ScoredError),
}

/// One row of `labels.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRow {
    /// Event id.
    pub id: String,
    /// Whether the event is an attack.
    pub label: bool,
    /// What the event is (`normal`, `account_takeover`, …); `unknown` when the file has no kind column.
    pub kind: String,
}

/// Reads a labels file: CSV with a header naming `id` and `label` (0/1 or false/true), optionally `kind`.
/// An id listed twice is an error.
pub fn read_labels(path: &Path) -> Result<Vec<LabelRow>, EvalError> {
    let file = fs::File::open(path).map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(io::BufReader::new(file));
    let parse = |line: u64, message: String| EvalError::Parse { path: path.to_path_buf(), line, message };
    let headers = reader.headers().map_err(|e| parse(1, e.to_string()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(id_col), Some(label_col)) = (column("id"), column("label")) else {
        return Err(parse(
            1,
            format!("the header must name the columns id and label, found {:?}", headers.iter().collect::<Vec<_>>()),
        ));
    };
    let kind_col = column("kind");
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for record in reader.records() {
        let record = record.map_err(|e| parse(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let id = record.get(id_col).unwrap_or("").trim();
        if id.is_empty() {
            return Err(parse(line, "empty id".into()));
        }
        let label = match record.get(label_col).unwrap_or("").trim() {
            "1" | "true" | "True" | "TRUE" => true,
            "0" | "false" | "False" | "FALSE" => false,
            other => return Err(parse(line, format!("label must be 0 or 1, not {other:?}"))),
        };
        if !seen.insert(id.to_string()) {
            return Err(parse(line, format!("id {id} is listed twice")));
        }
        let kind = kind_col.and_then(|c| record.get(c)).map_or("unknown", str::trim).to_string();
        rows.push(LabelRow { id: id.to_string(), label, kind });
    }
    if rows.is_empty() {
        return Err(EvalError::Input(format!(
            "{}: no labelled events, so there is nothing to evaluate",
            path.display()
        )));
    }
    Ok(rows)
}

/// Scores read from one or more files.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    /// Highest score per id.
    pub by_id: HashMap<String, f64>,
    /// Rows read.
    pub rows: u64,
    /// Rows whose id had been seen before.
    pub duplicates: u64,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl Scores {
    /// Records one score; a repeated id keeps the higher score.
    pub fn insert(&mut self, id: String, score: f64) {
        self.rows += 1;
        match self.by_id.get_mut(&id) {
            Some(old) => {
                self.duplicates += 1;
                *old = old.max(score);
            }
            None => {
                self.by_id.insert(id, score);
            }
        }
    }
}

/// Reads scores from `spec`: a file, every non-hidden file of a directory, or a glob ([`crate::scored`]):
/// rows with an `id` (a string or a number) and a numeric `field`.
pub fn read_scores(spec: &str, field: &str) -> Result<Scores, EvalError> {
    let mut scores = Scores::default();
    scores.files = crate::scored::for_each_row(spec, |origin, row| {
        let id = match row.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(origin.error("no id (a string or a number)")),
        };
        let score = crate::scored::number(origin, &row, field)?;
        if score.is_nan() {
            return Err(origin.error(format!("{field} is not a number")));
        }
        scores.insert(id, score);
        Ok(())
    })?;
    if scores.rows == 0 {
        return Err(EvalError::Input(format!("{spec}: no scored events, so there is nothing to evaluate")));
    }
    Ok(scores)
}

/// Area under the ROC curve of `(score, is_positive)` pairs: the probability that a random positive scores
/// above a random negative, ties counting one half. `None` without both classes.
pub fn roc_auc(pairs: &[(f64, bool)]) -> Option<f64> {
    let positives = pairs.iter().filter(|p| p.1).count();
    let negatives = pairs.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut positive_rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j share their average.
        let rank = (i + 1 + j) as f64 / 2.0;
        positive_rank_sum += rank * sorted[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Average precision of `(score, is_positive)` pairs: Σ (Rₖ − Rₖ₋₁)·Pₖ over the distinct score thresholds,
/// highest first (scikit-learn's `average_precision_score`). `None` without positives.
pub fn average_precision(pairs: &[(f64, bool)]) -> Option<f64> {
    let positives = pairs.iter().filter(|p| p.1).count();
    if positives == 0 {
        return None;
    }
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            if sorted[j].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        let recall = tp as f64 / positives as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
        i = j;
    }
    Some(ap)
}

/// The highest threshold at which at least `recall` of the labelled attacks are flagged (flagged = score
/// strictly above it), so that configurations can be compared at the same recall. `None` without attacks,
/// or when that recall needs attacks that have no score.
pub fn threshold_for_recall(labels: &[LabelRow], scores: &Scores, recall: f64) -> Option<f64> {
    let mut positive: Vec<f64> =
        labels.iter().filter(|r| r.label).filter_map(|r| scores.by_id.get(&r.id).copied()).collect();
    let positives = labels.iter().filter(|r| r.label).count();
    let needed = ((recall.clamp(0.0, 1.0) * positives as f64).ceil() as usize).max(1);
    if positives == 0 || needed > positive.len() {
        return None;
    }
    positive.sort_by(|a, b| b.total_cmp(a));
    let lowest_kept = positive[needed - 1];
    // Just below it: the highest score of any labelled event under it (or a little less).
    let below = labels
        .iter()
        .filter_map(|r| scores.by_id.get(&r.id).copied())
        .filter(|s| *s < lowest_kept)
        .fold(f64::NEG_INFINITY, f64::max);
    Some(if below.is_finite() { below } else { lowest_kept - 1.0 })
}

/// Detection rate of one kind of event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindRow {
    /// The kind.
    pub kind: String,
    /// Its label.
    pub label: u8,
    /// Events of this kind flagged.
    pub flagged: u64,
    /// Labelled events of this kind.
    pub total: u64,
    /// `flagged / total`.
    pub rate: f64,
}

/// Detection quality of a set of scores.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The score field.
    pub field: String,
    /// Flagged means score strictly above this.
    pub threshold: f64,
    /// Labelled events.
    pub labelled: u64,
    /// Labelled attacks.
    pub positives: u64,
    /// Labelled non-attacks.
    pub negatives: u64,
    /// Labelled events that have a score.
    pub scored: u64,
    /// Labelled events without a score (not flagged, ranked lowest).
    pub unscored: u64,
    /// Score rows read.
    pub score_rows: u64,
    /// Distinct scored ids that are not in the labels.
    pub unknown_ids: u64,
    /// Score rows repeating an id (the highest score is kept).
    pub duplicate_ids: u64,
    /// Area under the ROC curve (`None` without both classes).
    pub roc_auc: Option<f64>,
    /// Average precision (`None` without positives).
    pub average_precision: Option<f64>,
    /// Events flagged.
    pub flagged: u64,
    /// Attacks flagged.
    pub true_positives: u64,
    /// Non-attacks flagged.
    pub false_positives: u64,
    /// Attacks not flagged.
    pub false_negatives: u64,
    /// `tp / flagged` (`None` when nothing is flagged).
    pub precision: Option<f64>,
    /// `tp / positives` (`None` without positives).
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall (0 when either is 0 or nothing is flagged).
    pub f1: Option<f64>,
    /// Per kind and label: attacks first, then the rest, each by name.
    pub kinds: Vec<KindRow>,
}

/// Scores `labels` with `scores` at `threshold` (`field` is only recorded in the report).
pub fn evaluate(labels: &[LabelRow], scores: &Scores, field: &str, threshold: f64) -> EvalReport {
    let mut pairs = Vec::with_capacity(labels.len());
    let mut per_kind: BTreeMap<(u8, &str), (u64, u64)> = BTreeMap::new();
    let (mut scored, mut tp, mut fp) = (0u64, 0u64, 0u64);
    for row in labels {
        let score = scores.by_id.get(&row.id).copied();
        scored += u64::from(score.is_some());
        let score = score.unwrap_or(f64::NEG_INFINITY);
        let flagged = score > threshold;
        match (flagged, row.label) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            _ => {}
        }
        let entry = per_kind.entry((u8::from(row.label), row.kind.as_str())).or_default();
        entry.0 += u64::from(flagged);
        entry.1 += 1;
        pairs.push((score, row.label));
    }
    let known: HashSet<&str> = labels.iter().map(|r| r.id.as_str()).collect();
    let unknown_ids = scores.by_id.keys().filter(|id| !known.contains(id.as_str())).count() as u64;
    let positives = labels.iter().filter(|r| r.label).count() as u64;
    let flagged = tp + fp;
    let precision = (flagged > 0).then(|| tp as f64 / flagged as f64);
    let recall = (positives > 0).then(|| tp as f64 / positives as f64);
    let f1 = recall.map(|r| {
        let p = precision.unwrap_or(0.0);
        if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        }
    });
    let mut kinds: Vec<KindRow> = per_kind
        .into_iter()
        .map(|((label, kind), (flagged, total))| KindRow {
            kind: kind.to_string(),
            label,
            flagged,
            total,
            rate: flagged as f64 / total as f64,
        })
        .collect();
    kinds.sort_by(|a, b| b.label.cmp(&a.label).then_with(|| a.kind.cmp(&b.kind)));
    EvalReport {
        field: field.to_string(),
        threshold,
        labelled: labels.len() as u64,
        positives,
        negatives: labels.len() as u64 - positives,
        scored,
        unscored: labels.len() as u64 - scored,
        score_rows: scores.rows,
        unknown_ids,
        duplicate_ids: scores.duplicates,
        roc_auc: roc_auc(&pairs),
        average_precision: average_precision(&pairs),
        flagged,
        true_positives: tp,
        false_positives: fp,
        false_negatives: positives - tp,
        precision,
        recall,
        f1,
        kinds,
    }
}

struct Metric(Option<f64>);

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v:.4}"),
            None => f.write_str("n/a"),
        }
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "labelled events    {} ({} positives, {} negatives)",
            self.labelled, self.positives, self.negatives
        )?;
        writeln!(
            f,
            "scored events      {} ({} labelled events without a score: not flagged, ranked lowest)",
            self.scored, self.unscored
        )?;
        writeln!(
            f,
            "score rows         {} ({} ids not in the labels, {} duplicate ids: highest score kept)",
            self.score_rows, self.unknown_ids, self.duplicate_ids
        )?;
        writeln!(f, "ROC-AUC            {}", Metric(self.roc_auc))?;
        writeln!(f, "average precision  {}", Metric(self.average_precision))?;
        writeln!(
            f,
            "at {} > {}: flagged {}, true positives {}, false positives {}, false negatives {}",
            self.field, self.threshold, self.flagged, self.true_positives, self.false_positives, self.false_negatives
        )?;
        writeln!(f, "precision          {}", Metric(self.precision))?;
        writeln!(f, "recall             {}", Metric(self.recall))?;
        writeln!(f, "F1                 {}", Metric(self.f1))?;
        writeln!(f)?;
        write!(f, "{:<20} {:>5} {:>9} / {:<9} {:>8}", "kind", "label", "flagged", "total", "rate")?;
        for k in &self.kinds {
            write!(f, "\n{:<20} {:>5} {:>9} / {:<9} {:>7.2}%", k.kind, k.label, k.flagged, k.total, 100.0 * k.rate)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(scores: &[f64], labels: &[u8]) -> Vec<(f64, bool)> {
        scores.iter().zip(labels).map(|(&s, &l)| (s, l == 1)).collect()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn thresholds_for_a_recall_flag_just_enough_attacks() {
        let labels: Vec<LabelRow> = [("a", true), ("b", true), ("c", false), ("d", true), ("e", false)]
            .iter()
            .map(|(id, l)| LabelRow { id: (*id).into(), label: *l, kind: "k".into() })
            .collect();
        let mut scores = Scores::default();
        for (id, s) in [("a", 9.0), ("b", 5.0), ("c", 6.0), ("d", 1.0), ("e", 0.5)] {
            scores.insert(id.to_string(), s);
        }
        // 2 of 3 attacks: flag a and b (score ≥ 5), so the threshold is the next score down (1.0).
        let t = threshold_for_recall(&labels, &scores, 0.6).unwrap();
        assert_eq!(t, 1.0);
        let r = evaluate(&labels, &scores, "s", t);
        assert_eq!((r.true_positives, r.false_positives), (2, 1));
        assert_eq!(threshold_for_recall(&labels, &scores, 1.0), Some(0.5));
        assert_eq!(threshold_for_recall(&labels[2..3], &scores, 0.5), None);
    }

    #[test]
    fn perfect_separation_scores_one() {
        let p = pairs(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]);
        assert!(close(roc_auc(&p), 1.0));
        assert!(close(average_precision(&p), 1.0));
    }

    #[test]
    fn reversed_order_scores_zero_auc() {
        let p = pairs(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]);
        assert!(close(roc_auc(&p), 0.0));
        // Positives come last: precision 1/3 at recall 1/2, 2/4 at recall 1.
        assert!(close(average_precision(&p), 0.5 * (1.0 / 3.0) + 0.5 * 0.5));
    }

    #[test]
    fn all_tied_scores_half_auc_and_base_rate_ap() {
        let p = pairs(&[0.5; 4], &[0, 1, 0, 1]);
        assert!(close(roc_auc(&p), 0.5));
        assert!(close(average_precision(&p), 0.5));
    }

    #[test]
    fn small_case_matches_scikit_learn() {
        // sklearn: roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) = 0.75,
        //          average_precision_score(...) = 0.8333...
        let p = pairs(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]);
        assert!(close(roc_auc(&p), 0.75));
        assert!(close(average_precision(&p), 5.0 / 6.0));
    }

    #[test]
    fn ties_between_classes_count_one_half() {
        // Positives 0.5 and 0.9; negatives 0.5 and 0.1. Pairs: (0.5,0.5) tie ½, (0.5,0.1) 1, (0.9,·) 2.
        let p = pairs(&[0.5, 0.9, 0.5, 0.1], &[1, 1, 0, 0]);
        assert!(close(roc_auc(&p), 3.5 / 4.0));
        // Thresholds: 0.9 → P 1, R ½; 0.5 → P 2/3, R 1; 0.1 → no recall change.
        assert!(close(average_precision(&p), 0.5 + 0.5 * 2.0 / 3.0));
    }

    #[test]
    fn one_class_has_no_auc() {
        assert_eq!(roc_auc(&pairs(&[0.1, 0.2], &[1, 1])), None);
        assert_eq!(roc_auc(&pairs(&[0.1, 0.2], &[0, 0])), None);
        assert_eq!(average_precision(&pairs(&[0.1, 0.2], &[0, 0])), None);
        assert_eq!(roc_auc(&[]), None);
    }

    fn label(id: &str, attack: bool, kind: &str) -> LabelRow {
        LabelRow { id: id.into(), label: attack, kind: kind.into() }
    }

    #[test]
    fn missing_ids_count_as_not_flagged_and_rank_lowest() {
        let labels = vec![
            label("a", true, "account_takeover"),
            label("b", true, "account_takeover"),
            label("c", false, "normal"),
            label("d", false, "normal"),
            label("e", false, "business_trip"),
        ];
        let mut scores = Scores::default();
        scores.insert("a".into(), 5.0);
        scores.insert("c".into(), 1.0);
        scores.insert("e".into(), 3.0);
        scores.insert("zz".into(), 9.0);
        scores.insert("c".into(), 0.5);
        let r = evaluate(&labels, &scores, "mean_abs_z", 2.0);
        assert_eq!((r.labelled, r.positives, r.negatives), (5, 2, 3));
        assert_eq!((r.scored, r.unscored, r.score_rows, r.unknown_ids, r.duplicate_ids), (3, 2, 5, 1, 1));
        // a (5.0) and e (3.0) are flagged; b is missing, so not flagged.
        assert_eq!((r.flagged, r.true_positives, r.false_positives, r.false_negatives), (2, 1, 1, 1));
        assert!(close(r.precision, 0.5));
        assert!(close(r.recall, 0.5));
        assert!(close(r.f1, 0.5));
        // Ranking: a 5 (+), e 3, c 1 (max of 1 and 0.5 kept), b and d missing (tied lowest).
        // Positive-negative pairs: a beats e, c, d (3); b ties d (½), loses to e, c. AUC = 3.5 / 6.
        assert!(close(r.roc_auc, 3.5 / 6.0));
        // Thresholds: 5 → P 1, R ½; 3 → P ½; 1 → P ⅓; missing → P 2/5, R 1.
        assert!(close(r.average_precision, 0.5 + 0.5 * 0.4));
        let kinds: Vec<(&str, u8, u64, u64)> =
            r.kinds.iter().map(|k| (k.kind.as_str(), k.label, k.flagged, k.total)).collect();
        assert_eq!(kinds, [("account_takeover", 1, 1, 2), ("business_trip", 0, 1, 1), ("normal", 0, 0, 2)]);
        let text = r.to_string();
        assert!(text.contains("ROC-AUC            0.5833"), "{text}");
        assert!(text.contains("account_takeover"), "{text}");
    }

    #[test]
    fn nothing_flagged_has_no_precision_and_zero_f1() {
        let labels = vec![label("a", true, "x"), label("b", false, "normal")];
        let r = evaluate(&labels, &Scores::default(), "s", 0.0);
        assert_eq!(r.precision, None);
        assert!(close(r.recall, 0.0));
        assert!(close(r.f1, 0.0));
        assert!(close(r.roc_auc, 0.5));
    }

    #[test]
    fn reads_json_lines_csv_arrays_directories_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::write(
            p.join("a.jsonl"),
            "{\"id\":\"x\",\"mean_abs_z\":1.5,\"other\":true}\n\n{\"id\":7,\"mean_abs_z\":2}\n",
        )
        .unwrap();
        fs::write(p.join("b.csv"), "user,id,mean_abs_z\nu,x,3.5\nu,y,0.25\n").unwrap();
        fs::write(p.join("c.json"), "[{\"id\":\"z\",\"mean_abs_z\":4}]").unwrap();
        let all = read_scores(p.to_str().unwrap(), "mean_abs_z").unwrap();
        assert_eq!((all.rows, all.duplicates, all.files.len()), (5, 1, 3));
        assert_eq!(all.by_id["x"], 3.5);
        assert_eq!(all.by_id["7"], 2.0);
        assert_eq!(all.by_id["z"], 4.0);
        let globbed = read_scores(&format!("{}/*.csv", p.display()), "mean_abs_z").unwrap();
        assert_eq!(globbed.rows, 2);
        let one = read_scores(p.join("a.jsonl").to_str().unwrap(), "mean_abs_z").unwrap();
        assert_eq!(one.rows, 2);
        fs::write(p.join("bad.jsonl"), "{\"id\":\"q\"}\n").unwrap();
        let err = read_scores(p.join("bad.jsonl").to_str().unwrap(), "mean_abs_z").unwrap_err();
        assert!(err.to_string().ends_with("bad.jsonl:1: no field `mean_abs_z`"), "{err}");
        assert!(read_scores(p.join("nope").to_str().unwrap(), "mean_abs_z").is_err());
        fs::write(p.join("empty.jsonl"), "\n").unwrap();
        let err = read_scores(p.join("empty.jsonl").to_str().unwrap(), "mean_abs_z").unwrap_err();
        assert!(err.to_string().contains("no scored events, so there is nothing to evaluate"), "{err}");
    }

    #[test]
    fn reads_labels_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.csv");
        fs::write(&path, "id,label,kind\na,1,token_theft\nb,0,normal\n").unwrap();
        let rows = read_labels(&path).unwrap();
        assert_eq!(rows, [label("a", true, "token_theft"), label("b", false, "normal")]);
        fs::write(&path, "id,label\na,1\na,0\n").unwrap();
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(err.ends_with(":3: id a is listed twice"), "{err}");
        fs::write(&path, "id,label\na,yes\n").unwrap();
        assert!(read_labels(&path).is_err());
        fs::write(&path, "id,label\n").unwrap();
        assert!(read_labels(&path).unwrap_err().to_string().contains("nothing to evaluate"));
    }
}
