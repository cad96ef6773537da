//! Promotion: a retrained model replaces the one in service only when it is not worse.
//!
//! A `train` stage with `promotion.holdout_from` set holds out its input's most recent events (at or after
//! that time): it trains each model — the *challenger* — on the events before it (warm-started from the
//! version in service when `warm_start` is on), then scores the held-out events with the challenger and
//! with the version the registry serves now — the *champion* — and publishes the challenger (which moves
//! the registry's `LATEST`, or the MLflow alias) only when it is not worse:
//!
//! ```yaml
//! users:
//!   type: train
//!   warm_start: true
//!   promotion:
//!     holdout_from: "2026-11-29T00:00:00Z"  # events from here on are held out; "" (the default): no check
//!     loss_tolerance: 0.05                  # held-out loss at most 5 % above the champion's
//!     alert_tolerance: 0.01                 # at most 1 % of the held-out events (at least one) more alerts
//!     threshold: 2.0                        # the alert threshold on risk, as in the inference pipeline
//!     min_rows: 10                          # fewer held-out events: the champion stays
//!     labels: triage-labels.csv             # optional: no labelled attack missed that the champion caught
//!     dry_run: false                        # true: decide and report, publish nothing
//! ```
//!
//! **Criteria**, each on the held-out events the model would score (a user's own for a user or fine-tuned
//! model, everyone's for the generic model):
//! 1. the mean reconstruction loss (the mean over features of each event's loss, in the model's own
//!    encoding) is at most `loss_tolerance` above the champion's;
//! 2. the challenger raises at most `max(1, alert_tolerance × events)` more alerts than the champion, an
//!    alert being an event whose risk (mean per-feature |z|, each capped at `z_cap`, from the model's own
//!    loss statistics) exceeds `threshold`: held-out events are recent, mostly normal activity, so more
//!    alerts mean more false positives (alerts on events labelled as attacks do not count);
//! 3. with `labels` (the `id,label` file `dfp eval` reads; `dfp serve` exports analysts' triage marks as
//!    one), the challenger misses no more labelled attacks and alerts on no more labelled benign events
//!    than the champion.
//!
//! A model without a champion (a new user) is published (`new`). A model with fewer than `min_rows`
//! held-out events keeps its champion (`keep`); with `min_rows: 0` it is published unevaluated. Peer-group
//! models follow the generic model's decision (their membership is stored with it). Each decision is a
//! row of the training report (`decision`, `champion_version`, `heldout_rows`, the two losses and alert
//! counts, and the reason) and counts in `dfp_model_promotions_total`.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use dfp_core::ConfigError;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::model::artifact::ZMode;
use crate::model::Model;

/// `promotion:` of a `train` stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromotionConfig {
    /// Events at or after this time (RFC 3339, a date, or microseconds) are held out of training and
    /// decide whether each new model is published; empty (the default): every model is published.
    #[serde(default)]
    pub holdout_from: String,
    /// How far the challenger's held-out loss may exceed the champion's, as a fraction (0.05: 5 %).
    #[serde(default = "d_loss_tolerance")]
    pub loss_tolerance: f64,
    /// How many more held-out events the challenger may alert on, as a fraction of them (at least one).
    #[serde(default = "d_alert_tolerance")]
    pub alert_tolerance: f64,
    /// The alert threshold on risk (as the inference pipeline's `threshold` stage uses it).
    #[serde(default = "d_threshold")]
    pub threshold: f64,
    /// Most a single feature's |z| counts in risk (as the `score` stage's `z_cap`).
    #[serde(default = "d_z_cap")]
    pub z_cap: f64,
    /// Fewest held-out events that judge a model; with fewer the champion stays (0: publish unevaluated).
    #[serde(default = "d_min_rows")]
    pub min_rows: usize,
    /// A labels file (`id,label[,kind]`, as `dfp eval` reads and `dfp serve` exports from triage marks):
    /// the challenger must not miss a labelled attack, or alert on a labelled benign event, more often than
    /// the champion.
    #[serde(default)]
    pub labels: Option<String>,
    /// Decide and report, but publish nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl Default for PromotionConfig {
    fn default() -> Self {
        PromotionConfig {
            holdout_from: String::new(),
            loss_tolerance: d_loss_tolerance(),
            alert_tolerance: d_alert_tolerance(),
            threshold: d_threshold(),
            z_cap: d_z_cap(),
            min_rows: d_min_rows(),
            labels: None,
            dry_run: false,
        }
    }
}

fn d_loss_tolerance() -> f64 {
    0.05
}
fn d_alert_tolerance() -> f64 {
    0.01
}
fn d_threshold() -> f64 {
    2.0
}
fn d_z_cap() -> f64 {
    50.0
}
fn d_min_rows() -> usize {
    10
}

impl PromotionConfig {
    /// The hold-out time in microseconds, `None` when promotion is off.
    pub fn holdout(&self) -> Result<Option<i64>, ConfigError> {
        if self.holdout_from.trim().is_empty() {
            return Ok(None);
        }
        crate::time::parse_bound(&self.holdout_from, false)
            .map(Some)
            .map_err(|e| ConfigError::field("promotion.holdout_from", e))
    }

    /// Checks the fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.holdout()?;
        for (value, field) in [(self.loss_tolerance, "loss_tolerance"), (self.alert_tolerance, "alert_tolerance")] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ConfigError::field(format!("promotion.{field}"), "must be zero or more"));
            }
        }
        if !self.threshold.is_finite() {
            return Err(ConfigError::field("promotion.threshold", "must be a number"));
        }
        if !(self.z_cap.is_finite() && self.z_cap > 0.0) {
            return Err(ConfigError::field("promotion.z_cap", "must be a positive number"));
        }
        let off = self.holdout_from.trim().is_empty();
        if off && self.labels.is_some() {
            return Err(ConfigError::field("promotion.labels", "needs promotion.holdout_from (what to judge on)"));
        }
        if off && self.dry_run {
            return Err(ConfigError::field("promotion.dry_run", "needs promotion.holdout_from (what to judge on)"));
        }
        Ok(())
    }

    /// The labels file, read (event id → attack), when one is configured.
    pub fn read_labels(&self) -> Result<Option<HashMap<String, bool>>, String> {
        let Some(path) = &self.labels else { return Ok(None) };
        let rows = crate::eval::read_labels(Path::new(path)).map_err(|e| format!("promotion.labels: {e}"))?;
        Ok(Some(rows.into_iter().map(|r| (r.id, r.label)).collect()))
    }
}

/// What the held-out events say of one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Held-out events scored.
    pub rows: usize,
    /// Mean over events of the mean per-feature reconstruction loss.
    pub loss: f64,
    /// Events whose risk exceeds the threshold.
    pub alerts: usize,
    /// Labelled attacks alerted on (not counted against the challenger's alerts).
    pub caught: usize,
    /// Labelled attacks not alerted on.
    pub missed: usize,
    /// Labelled benign events alerted on.
    pub false_alerts: usize,
}

/// Scores `rows` with `model`: the mean loss, the alerts, and against `labels` the misses and false alerts.
pub fn figures(
    model: &Model,
    rows: &RecordBatch,
    config: &PromotionConfig,
    labels: Option<&HashMap<String, bool>>,
) -> Result<Figures, String> {
    let n = rows.num_rows();
    if n == 0 {
        return Ok(Figures { rows: 0, loss: 0.0, alerts: 0, caught: 0, missed: 0, false_alerts: 0 });
    }
    let losses = model.losses(rows).map_err(|e| e.to_string())?;
    let stats = &model.manifest.loss_stats;
    let ids = rows.column_by_name("id").and_then(|c| c.as_string_opt::<i32>());
    let mut figures = Figures { rows: n, loss: 0.0, alerts: 0, caught: 0, missed: 0, false_alerts: 0 };
    let mut z: Vec<f32> = Vec::new();
    for (i, row) in losses.iter().enumerate() {
        figures.loss += row.iter().map(|l| f64::from(*l)).sum::<f64>() / row.len().max(1) as f64;
        // z-scores as `Model::score` computes them, and risk as the `score` stage does.
        z.clear();
        z.extend(
            row.iter().zip(stats.center.iter().zip(&stats.scale)).map(|(l, (c, s))| ((f64::from(*l) - c) / s) as f32),
        );
        let alert = ZMode::Abs.risk(&z, config.z_cap) > config.threshold;
        figures.alerts += usize::from(alert);
        let label = match (labels, ids) {
            (Some(labels), Some(ids)) if ids.is_valid(i) => labels.get(ids.value(i)).copied(),
            _ => None,
        };
        match label {
            Some(true) if alert => figures.caught += 1,
            Some(true) => figures.missed += 1,
            Some(false) if alert => figures.false_alerts += 1,
            _ => {}
        }
    }
    figures.loss /= n as f64;
    Ok(figures)
}

/// Whether the challenger may replace the champion, and why, from their figures on the same events.
pub fn decide(champion: &Figures, challenger: &Figures, config: &PromotionConfig) -> (bool, String) {
    let n = challenger.rows;
    if n < config.min_rows {
        return (
            false,
            format!("{n} held-out events, fewer than promotion.min_rows {}: the champion stays", config.min_rows),
        );
    }
    if n == 0 {
        return (true, "no held-out events; promotion.min_rows 0 publishes unevaluated".into());
    }
    let change = |a: f64, b: f64| if b > 0.0 { format!("{:+.1} %", (a / b - 1.0) * 100.0) } else { "n/a".into() };
    let loss = format!(
        "held-out loss {:.4} vs the champion's {:.4} ({})",
        challenger.loss,
        champion.loss,
        change(challenger.loss, champion.loss)
    );
    let alerts = format!("alerts on {} vs {} of {n} held-out events", challenger.alerts, champion.alerts);
    // Alerts on labelled attacks are not false positives: they do not count against the challenger.
    let (challenger_other, champion_other) = (challenger.alerts - challenger.caught, champion.alerts - champion.caught);
    let mut worse = Vec::new();
    if challenger.loss > champion.loss * (1.0 + config.loss_tolerance) {
        worse.push(format!("{loss}, more than loss_tolerance {} allows", config.loss_tolerance));
    }
    let allowed = ((config.alert_tolerance * n as f64).ceil() as usize).max(1);
    if challenger_other > champion_other + allowed {
        worse.push(format!("{alerts}, more than {allowed} more (alert_tolerance {})", config.alert_tolerance));
    }
    if challenger.missed > champion.missed {
        worse.push(format!("misses {} labelled attacks vs the champion's {}", challenger.missed, champion.missed));
    }
    if challenger.false_alerts > champion.false_alerts {
        worse.push(format!(
            "alerts on {} labelled benign events vs the champion's {}",
            challenger.false_alerts, champion.false_alerts
        ));
    }
    if worse.is_empty() {
        (true, format!("not worse: {loss}; {alerts}"))
    } else {
        (false, format!("worse than the champion: {}", worse.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(rows: usize, loss: f64, alerts: usize) -> Figures {
        Figures { rows, loss, alerts, caught: 0, missed: 0, false_alerts: 0 }
    }

    #[test]
    fn a_challenger_is_promoted_only_when_no_criterion_says_it_is_worse() {
        let c = PromotionConfig::default();
        let champion = f(100, 1.0, 3);
        // Better or within the tolerances.
        assert!(decide(&champion, &f(100, 0.8, 1), &c).0);
        assert!(decide(&champion, &f(100, 1.049, 4), &c).0, "5 % and one alert are tolerated");
        // A higher loss, or more alerts than one per hundred events (at least one).
        let (ok, why) = decide(&champion, &f(100, 1.2, 3), &c);
        assert!(!ok && why.contains("held-out loss 1.2000 vs the champion's 1.0000 (+20.0 %)"), "{why}");
        let (ok, why) = decide(&champion, &f(100, 1.0, 5), &c);
        assert!(!ok && why.contains("alerts on 5 vs 3 of 100"), "{why}");
        assert!(decide(&f(1000, 1.0, 3), &f(1000, 1.0, 13), &c).0, "1 % of 1,000 events is 10 alerts");
        // Alerts on labelled attacks do not count as extra alerts.
        let mut caught = f(100, 1.0, 8);
        caught.caught = 5;
        assert!(decide(&champion, &caught, &c).0, "{}", decide(&champion, &caught, &c).1);
        // Labels: one more missed attack is enough to keep the champion.
        let mut labelled = f(100, 0.5, 3);
        labelled.missed = 1;
        let (ok, why) = decide(&champion, &labelled, &c);
        assert!(!ok && why.contains("misses 1 labelled attacks vs the champion's 0"), "{why}");
        // Too few held-out events: the champion stays, unless min_rows is 0.
        let (ok, why) = decide(&f(3, 1.0, 0), &f(3, 0.1, 0), &c);
        assert!(!ok && why.contains("fewer than promotion.min_rows 10"), "{why}");
        let none = PromotionConfig { min_rows: 0, ..PromotionConfig::default() };
        assert!(decide(&f(0, 0.0, 0), &f(0, 0.0, 0), &none).0);
    }

    #[test]
    fn settings_are_checked() {
        let field = |c: PromotionConfig| c.validate().unwrap_err().field.unwrap_or_default();
        assert_eq!(
            field(PromotionConfig { holdout_from: "yesterday".into(), ..Default::default() }),
            "promotion.holdout_from"
        );
        let on = || PromotionConfig { holdout_from: "2026-11-01".into(), ..Default::default() };
        assert_eq!(field(PromotionConfig { loss_tolerance: -0.1, ..on() }), "promotion.loss_tolerance");
        assert_eq!(field(PromotionConfig { z_cap: 0.0, ..on() }), "promotion.z_cap");
        assert_eq!(field(PromotionConfig { labels: Some("l.csv".into()), ..Default::default() }), "promotion.labels");
        assert_eq!(field(PromotionConfig { dry_run: true, ..Default::default() }), "promotion.dry_run");
        assert_eq!(on().holdout().unwrap(), Some(crate::time::parse_timestamp("2026-11-01T00:00:00Z").unwrap()));
        assert_eq!(PromotionConfig::default().holdout().unwrap(), None);
        assert!(PromotionConfig::default().validate().is_ok());
    }
}
