//! Per-user history in memory: what the `features` stage (and the `profiles` stage, and a restarted stream)
//! keep per user, and the one function that takes an event into it. A [`Profile`](super::Profile) is its
//! stored form.

use std::collections::HashSet;
use std::sync::Arc;

use crate::time::DAY_MICROS;

/// Most events of a user remembered to notice an event delivered twice.
pub(crate) const RECENT_IDS: usize = 16;

/// One value a user has shown for a context role.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeenValue {
    /// Index of the role in [`Roles::novelty`](super::Roles).
    pub(crate) role: u8,
    pub(crate) value: Arc<str>,
    /// First and last time seen (µs).
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) count: u32,
}

/// One UTC day of the day counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DayState {
    pub(crate) day: i64,
    pub(crate) count: i64,
    pub(crate) locations: Vec<Arc<str>>,
    pub(crate) apps: Vec<Arc<str>>,
}

/// What is known of one user.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct UserState {
    pub(crate) events: u64,
    pub(crate) failures: u64,
    pub(crate) first_ts: Option<i64>,
    pub(crate) last_ts: Option<i64>,
    /// Events per UTC hour of day, and per weekday (Monday first).
    pub(crate) hours: [u32; 24],
    pub(crate) weekdays: [u32; 7],
    /// Values seen, sorted by (role, value).
    pub(crate) seen: Vec<SeenValue>,
    /// The latest days (at most 3, oldest first): counters of older days cannot change any more.
    pub(crate) days: Vec<DayState>,
    /// (time, id hash) of the last few events.
    pub(crate) recent: Vec<(i64, u64)>,
    /// Events applied since the last committed position of a checkpointed stream, with the logical time
    /// they arrived at: a restarted stream may deliver them again.
    pub(crate) uncommitted: Vec<(u64, Memo)>,
    /// Events of a restored checkpoint that the restarted stream may deliver again: they get the features
    /// they got before, and do not change the history twice.
    pub(crate) replayed: Vec<Memo>,
    pub(crate) last_prune: i64,
}

/// The features one event got, kept while a restarted stream could deliver it again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Memo {
    pub(crate) time: i64,
    pub(crate) id: u64,
    pub(crate) logcount: i64,
    pub(crate) locincrement: i64,
    pub(crate) appincrement: i64,
    pub(crate) since: Option<f64>,
    /// Bit `k`: the value of novelty role `k` was new.
    pub(crate) new: u32,
}

/// The values of one event that history reads.
pub(crate) struct EventView<'a> {
    pub(crate) time: i64,
    pub(crate) id: u64,
    pub(crate) location: Option<&'a str>,
    pub(crate) app: Option<&'a str>,
    /// One per novelty role, in role order (IP addresses already cut to their prefix).
    pub(crate) values: &'a [Option<&'a str>],
    /// Whether the sign-in failed, when the family says.
    pub(crate) failed: Option<bool>,
    /// The logical time the event arrived at (for checkpointed streams).
    pub(crate) logical: u64,
}

/// What history made of one event: its features.
pub(crate) struct Observed {
    pub(crate) logcount: i64,
    pub(crate) locincrement: i64,
    pub(crate) appincrement: i64,
    /// `hours_since_prev`.
    pub(crate) since: Option<f64>,
    /// The event was seen before (same time and id): scored again, counted.
    pub(crate) duplicate: bool,
    /// The event is one a restored checkpoint already held: its features are the ones it got then.
    pub(crate) replayed: bool,
}

/// Settings of history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// History window (µs): a value unseen for longer is new again, and forgotten.
    pub(crate) window: i64,
    /// Most values kept per user and role.
    pub(crate) max_values: usize,
    /// Remember applied events until committed (checkpointed streams).
    pub(crate) track_uncommitted: bool,
}

/// Shares the text of values many users have (countries, apps, browsers) instead of one copy per user.
/// Bounded: past `CAP` distinct values, new ones are not shared.
#[derive(Default)]
pub(crate) struct Interner {
    set: HashSet<Arc<str>>,
}

impl Interner {
    const CAP: usize = 1 << 20;

    pub(crate) fn get(&mut self, value: &str) -> Arc<str> {
        if let Some(v) = self.set.get(value) {
            return Arc::clone(v);
        }
        let v: Arc<str> = Arc::from(value);
        if self.set.len() < Self::CAP {
            self.set.insert(Arc::clone(&v));
        }
        v
    }
}

fn weekday(t: i64) -> usize {
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    (t.div_euclid(DAY_MICROS) + 3).rem_euclid(7) as usize
}

fn hour(t: i64) -> usize {
    t.rem_euclid(DAY_MICROS).div_euclid(3_600_000_000) as usize
}

impl UserState {
    /// Takes one event in; returns its features and, per novelty role, whether its value was new (written
    /// into `new`).
    pub(crate) fn observe(
        &mut self,
        e: &EventView<'_>,
        bounds: &Bounds,
        interner: &mut Interner,
        new: &mut [bool],
    ) -> Observed {
        let t = e.time;
        let key = (t, e.id);
        if let Some(at) = self.replayed.iter().position(|m| (m.time, m.id) == key) {
            // An event a restored checkpoint already holds, delivered again by the restarted stream.
            let m = self.replayed.swap_remove(at);
            if bounds.track_uncommitted {
                // Until committed again, a second restart may deliver it once more.
                self.uncommitted.push((e.logical, m));
            }
            for (k, flag) in new.iter_mut().enumerate() {
                *flag = k < 32 && m.new & (1 << k) != 0;
            }
            return Observed {
                logcount: m.logcount,
                locincrement: m.locincrement,
                appincrement: m.appincrement,
                since: m.since,
                duplicate: false,
                replayed: true,
            };
        }
        let duplicate = self.recent.contains(&key);
        if !duplicate {
            if self.recent.len() >= RECENT_IDS {
                self.recent.remove(0);
            }
            self.recent.push(key);
        }
        let day_key = t.div_euclid(DAY_MICROS);
        let at = match self.days.binary_search_by_key(&day_key, |d| d.day) {
            Ok(i) => i,
            Err(i) => {
                self.days.insert(i, DayState { day: day_key, ..DayState::default() });
                i
            }
        };
        let (logcount, locincrement, appincrement) = {
            let day = &mut self.days[at];
            let logcount = day.count;
            day.count += 1;
            if let Some(l) = e.location {
                if !day.locations.iter().any(|x| &**x == l) {
                    day.locations.push(interner.get(l));
                }
            }
            if let Some(a) = e.app {
                if !day.apps.iter().any(|x| &**x == a) {
                    day.apps.push(interner.get(a));
                }
            }
            (logcount, day.locations.len() as i64, day.apps.len() as i64)
        };
        // Only the latest days: counters of older days cannot change any more.
        while self.days.len() > 3 {
            self.days.remove(0);
        }
        let mut bits = 0u32;
        for (k, value) in e.values.iter().enumerate() {
            let role = k as u8;
            new[k] = match value {
                None => false,
                Some(v) => match self.seen.binary_search_by(|s| (s.role, &*s.value).cmp(&(role, *v))) {
                    Ok(i) => {
                        let s = &mut self.seen[i];
                        let is_new = t - s.last > bounds.window;
                        s.last = s.last.max(t);
                        s.first = s.first.min(t);
                        s.count = s.count.saturating_add(1);
                        is_new
                    }
                    Err(i) => {
                        let value = interner.get(v);
                        self.seen.insert(i, SeenValue { role, value, first: t, last: t, count: 1 });
                        true
                    }
                },
            };
            if new[k] && k < 32 {
                bits |= 1 << k;
            }
        }
        let since = self.last_ts.map(|prev| (t - prev) as f64 / 3_600_000_000.0);
        self.events += 1;
        self.failures += u64::from(e.failed == Some(true));
        self.hours[hour(t)] = self.hours[hour(t)].saturating_add(1);
        self.weekdays[weekday(t)] = self.weekdays[weekday(t)].saturating_add(1);
        self.first_ts = Some(self.first_ts.map_or(t, |f| f.min(t)));
        self.last_ts = Some(self.last_ts.map_or(t, |p| p.max(t)));
        if t - self.last_prune > bounds.window / 4 {
            self.last_prune = t;
            self.seen.retain(|s| t - s.last <= bounds.window);
            self.replayed.retain(|m| t - m.time <= bounds.window);
        }
        self.bound_values(bounds.max_values);
        if bounds.track_uncommitted {
            let memo = Memo { time: t, id: e.id, logcount, locincrement, appincrement, since, new: bits };
            self.uncommitted.push((e.logical, memo));
        }
        Observed { logcount, locincrement, appincrement, since, duplicate, replayed: false }
    }

    /// Keeps at most `max` values per role: past it, the least recently seen tenth of the role's values goes.
    fn bound_values(&mut self, max: usize) {
        let mut start = 0;
        while start < self.seen.len() {
            let role = self.seen[start].role;
            let end = start + self.seen[start..].iter().take_while(|s| s.role == role).count();
            if end - start > max {
                let mut ages: Vec<i64> = self.seen[start..end].iter().map(|s| s.last).collect();
                let drop = end - start - max * 9 / 10;
                let (_, &mut cut, _) = ages.select_nth_unstable(drop - 1);
                let mut dropped = 0;
                let mut i = start;
                let mut kept_end = end;
                while i < kept_end {
                    if dropped < drop && self.seen[i].last <= cut {
                        self.seen.remove(i);
                        dropped += 1;
                        kept_end -= 1;
                    } else {
                        i += 1;
                    }
                }
                start = kept_end;
            } else {
                start = end;
            }
        }
    }

    /// Forgets the events below `frontier` as uncommitted: a replay starts at or after it.
    pub(crate) fn committed(&mut self, frontier: u64) {
        self.uncommitted.retain(|(logical, _)| *logical >= frontier);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(t: i64, id: u64, values: &'a [Option<&'a str>]) -> EventView<'a> {
        EventView {
            time: t,
            id,
            location: Some("Oslo, NO"),
            app: Some("Teams"),
            values,
            failed: Some(false),
            logical: 0,
        }
    }

    #[test]
    fn counters_novelty_and_duplicates() {
        let bounds = Bounds { window: 2 * DAY_MICROS, max_values: 1000, track_uncommitted: false };
        let mut s = UserState::default();
        let mut i = Interner::default();
        let mut new = [false; 2];
        let h = 3_600_000_000;
        let o = s.observe(&ev(10 * h, 1, &[Some("NO"), Some("Edge")]), &bounds, &mut i, &mut new);
        assert_eq!((o.logcount, o.locincrement, o.appincrement, o.since, o.duplicate), (0, 1, 1, None, false));
        assert_eq!(new, [true, true]);
        let o = s.observe(&ev(11 * h, 2, &[Some("NO"), Some("Firefox")]), &bounds, &mut i, &mut new);
        assert_eq!((o.logcount, o.since), (1, Some(1.0)));
        assert_eq!(new, [false, true]);
        // The same event again: counted as a duplicate, history unchanged by it.
        let before = s.clone();
        let o = s.observe(&ev(11 * h, 2, &[Some("NO"), Some("Firefox")]), &bounds, &mut i, &mut new);
        assert!(o.duplicate);
        assert_eq!(s.events, before.events + 1, "a duplicate still counts as an event");
        // Three days later the country is new again.
        s.observe(&ev(11 * h + 3 * DAY_MICROS, 3, &[Some("NO"), None]), &bounds, &mut i, &mut new);
        assert_eq!(new, [true, false]);
        assert_eq!(s.hours[10], 1);
        assert_eq!(s.weekdays[3], 3, "1970-01-01 was a Thursday");
    }

    #[test]
    fn a_replayed_event_gets_its_old_features_and_changes_nothing() {
        let bounds = Bounds { window: 2 * DAY_MICROS, max_values: 1000, track_uncommitted: true };
        let mut s = UserState::default();
        let mut i = Interner::default();
        let mut new = [false; 1];
        let first = s.observe(&ev(5, 1, &[Some("NO")]), &bounds, &mut i, &mut new);
        assert_eq!(new, [true]);
        let second = s.observe(&ev(9, 2, &[Some("NO")]), &bounds, &mut i, &mut new);
        assert_eq!(s.uncommitted.len(), 2);
        s.committed(1);
        assert!(s.uncommitted.is_empty(), "both arrived at logical time 0");
        // A restored checkpoint: the second event may come again.
        s.replayed =
            vec![Memo { time: 9, id: 2, logcount: 1, locincrement: 1, appincrement: 1, since: second.since, new: 0 }];
        let before = s.clone();
        let o = s.observe(&ev(9, 2, &[Some("NO")]), &bounds, &mut i, &mut new);
        assert!(o.replayed && !o.duplicate);
        assert_eq!((o.logcount, o.since, new), (1, second.since, [false]));
        let mut expected = before;
        expected.replayed.clear();
        expected.uncommitted = s.uncommitted.clone();
        assert_eq!(s, expected);
        assert_eq!(s.uncommitted.len(), 1, "kept until committed again");
        assert_eq!(first.since, None);
    }

    #[test]
    fn values_per_role_are_bounded_least_recent_first() {
        let bounds = Bounds { window: i64::MAX / 4, max_values: 10, track_uncommitted: false };
        let mut s = UserState::default();
        let mut i = Interner::default();
        let mut new = [false; 2];
        for k in 0..25i64 {
            let v = format!("v{k:02}");
            s.observe(&ev(k, k as u64, &[Some(&v), Some("same")]), &bounds, &mut i, &mut new);
        }
        let role0: Vec<&str> = s.seen.iter().filter(|v| v.role == 0).map(|v| &*v.value).collect();
        assert!(role0.len() <= 10, "{role0:?}");
        assert!(role0.contains(&"v24") && !role0.contains(&"v00"), "{role0:?}");
        assert_eq!(s.seen.iter().filter(|v| v.role == 1).count(), 1);
    }
}
