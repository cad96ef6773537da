//! Date-time parsing for log timestamps and file names, without allocation.
//!
//! Accepted forms (all give a UTC instant in microseconds since the Unix epoch):
//! - ISO 8601: `2022-08-01T00:03:56Z`, with `T` or a space, 0 to 9 fraction digits, and `Z`, an offset
//!   (`+02:00`, `+0200`, `+02`) or no zone at all (taken as UTC); a bare date is midnight UTC;
//! - US style: `8/1/2022 12:03:56 AM`, `8/1/2022 00:03:56`, `8/1/2022 3:04:05 PM +02:00` (seconds and the
//!   AM/PM marker optional);
//! - file names holding an ISO date-time with `_` for `:` (`AZUREAD_2022-08-01T00_03_56.207Z.json`).

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Microseconds in a day.
pub const DAY_MICROS: i64 = 86_400_000_000;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    /// Between `min` and `max` digits.
    fn digits(&mut self, min: usize, max: usize) -> Option<(u64, usize)> {
        let start = self.i;
        let mut v: u64 = 0;
        while self.i - start < max {
            match self.peek() {
                Some(c @ b'0'..=b'9') => {
                    v = v * 10 + u64::from(c - b'0');
                    self.i += 1;
                }
                _ => break,
            }
        }
        let n = self.i - start;
        (n >= min).then_some((v, n))
    }
    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

fn valid_date(y: i64, m: u64, d: u64) -> bool {
    let days_in = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days_in).contains(&d)
}

/// Time of day after the date: `HH:MM[:SS[.f…]]`; returns micros.
fn time_of_day(c: &mut Cursor<'_>, min_hour_digits: usize) -> Option<i64> {
    let (h, _) = c.digits(min_hour_digits, 2)?;
    if !c.eat(b':') {
        return None;
    }
    let (mi, _) = c.digits(2, 2)?;
    let mut s = 0;
    let mut frac_us = 0;
    if c.eat(b':') {
        s = c.digits(2, 2)?.0;
        if c.eat(b'.') || c.eat(b',') {
            let (f, n) = c.digits(1, 9)?;
            frac_us = if n <= 6 { f * 10u64.pow((6 - n) as u32) } else { f / 10u64.pow((n - 6) as u32) };
        }
    }
    if h > 24 || mi > 59 || s > 60 {
        return None;
    }
    Some(((h * 3600 + mi * 60 + s) * 1_000_000 + frac_us) as i64)
}

/// `Z`, `±HH[:MM]`, `±HHMM` or nothing; returns the offset in micros (local = UTC + offset).
fn zone(c: &mut Cursor<'_>) -> Option<i64> {
    if c.eat(b'Z') || c.eat(b'z') {
        return Some(0);
    }
    let sign = if c.eat(b'+') {
        1
    } else if c.eat(b'-') {
        -1
    } else {
        return Some(0);
    };
    let (h, _) = c.digits(2, 2)?;
    c.eat(b':');
    let m = c.digits(2, 2).map_or(0, |(m, _)| m);
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * ((h * 60 + m) * 60_000_000) as i64)
}

fn iso(s: &str) -> Option<i64> {
    let mut c = Cursor { b: s.as_bytes(), i: 0 };
    let (y, _) = c.digits(4, 4)?;
    if !c.eat(b'-') {
        return None;
    }
    let (m, _) = c.digits(2, 2)?;
    if !c.eat(b'-') {
        return None;
    }
    let (d, _) = c.digits(2, 2)?;
    let y = y as i64;
    if !valid_date(y, m, d) {
        return None;
    }
    let day = days_from_civil(y, m as u32, d as u32) * DAY_MICROS;
    if c.done() {
        return Some(day);
    }
    if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
        return None;
    }
    let tod = time_of_day(&mut c, 2)?;
    c.skip_spaces();
    let off = zone(&mut c)?;
    c.done().then_some(day + tod - off)
}

fn us(s: &str) -> Option<i64> {
    let mut c = Cursor { b: s.as_bytes(), i: 0 };
    let (m, _) = c.digits(1, 2)?;
    if !c.eat(b'/') {
        return None;
    }
    let (d, _) = c.digits(1, 2)?;
    if !c.eat(b'/') {
        return None;
    }
    let (y, _) = c.digits(4, 4)?;
    let y = y as i64;
    if !valid_date(y, m, d) {
        return None;
    }
    let day = days_from_civil(y, m as u32, d as u32) * DAY_MICROS;
    c.skip_spaces();
    if c.done() {
        return Some(day);
    }
    let mut tod = time_of_day(&mut c, 1)?;
    c.skip_spaces();
    let rest = &s[c.i..];
    let upper = rest.get(..2).map(|p| p.to_ascii_uppercase());
    if let Some(p) = upper.as_deref().filter(|p| *p == "AM" || *p == "PM") {
        let hour = tod / 3_600_000_000;
        if !(1..=12).contains(&hour) {
            return None;
        }
        let hours12 = hour % 12;
        tod -= (hour - hours12) * 3_600_000_000;
        if p == "PM" {
            tod += 12 * 3_600_000_000;
        }
        c.i += 2;
        c.skip_spaces();
    }
    let off = zone(&mut c)?;
    c.done().then_some(day + tod - off)
}

/// Parses a timestamp string (see the module docs).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() >= 5 && s.as_bytes()[4] == b'-' {
        iso(s)
    } else {
        us(s)
    }
}

/// Parses a time a person wrote (a console filter, a suppression's end): any form [`parse_timestamp`]
/// takes, or microseconds since the epoch. A bare date is its first microsecond, or with `end_of_day` its
/// last (so that "until 2026-12-20" covers that day).
pub fn parse_bound(text: &str, end_of_day: bool) -> Result<i64, String> {
    let text = text.trim();
    if let Some(t) = parse_timestamp(text) {
        let bare_date = text.len() == 10 && text.as_bytes()[4] == b'-';
        return Ok(if end_of_day && bare_date { t + DAY_MICROS - 1 } else { t });
    }
    text.parse::<i64>()
        .map_err(|_| format!("\"{text}\" is not a time (2026-11-30, 2026-11-30T08:00:00Z or microseconds)"))
}

/// Finds an ISO date-time inside a file name (`_` may stand for `:`).
pub fn parse_file_name_time(name: &str) -> Option<i64> {
    let b = name.as_bytes();
    for i in 0..b.len().saturating_sub(10) {
        let looks_like_date = b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 5..i + 7].iter().all(u8::is_ascii_digit)
            && b[i + 7] == b'-'
            && b[i + 8..i + 10].iter().all(u8::is_ascii_digit);
        if !looks_like_date {
            continue;
        }
        let end = b[i..]
            .iter()
            .position(|c| !(c.is_ascii_digit() || matches!(c, b'-' | b'_' | b':' | b'.' | b'T' | b'Z' | b'+')))
            .map_or(b.len(), |p| i + p);
        let mut candidate = name[i..end].replace('_', ":");
        // Trim trailing characters that belong to the extension or a separator (`.json`, `-`).
        while !candidate.is_empty() {
            if let Some(t) = parse_timestamp(&candidate) {
                return Some(t);
            }
            candidate.pop();
        }
    }
    None
}

/// The wall-clock time now, in micros since the epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Formats micros since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_micros(us: i64) -> String {
    let days = us.div_euclid(DAY_MICROS);
    let rem = us.rem_euclid(DAY_MICROS);
    // civil_from_days
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let secs = rem / 1_000_000;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z", secs / 3600, (secs / 60) % 60, secs % 60, rem % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: i64 = 1_659_312_236_000_000; // 2022-08-01T00:03:56Z

    #[test]
    fn a_bound_is_a_day_s_start_or_last_microsecond_a_time_or_microseconds() {
        let day = parse_timestamp("2022-08-01").unwrap();
        assert_eq!(parse_bound("2022-08-01", false), Ok(day));
        assert_eq!(parse_bound(" 2022-08-01 ", true), Ok(day + DAY_MICROS - 1));
        assert_eq!(parse_bound("2022-08-01T00:03:56Z", true), Ok(BASE), "a time is itself, end or not");
        assert_eq!(parse_bound("2022-08-01T00:03", false), Ok(BASE - 56_000_000));
        assert_eq!(parse_bound("1659312236000000", true), Ok(BASE));
        assert!(parse_bound("next week", true).unwrap_err().contains("\"next week\" is not a time"));
    }

    #[test]
    fn iso_variants_give_the_same_instant() {
        for s in [
            "2022-08-01T00:03:56Z",
            "2022-08-01T00:03:56",
            "2022-08-01 00:03:56",
            "2022-08-01T00:03:56.000Z",
            "2022-08-01T00:03:56.0000000Z",
            "2022-08-01T02:03:56+02:00",
            "2022-08-01T02:03:56+0200",
            "2022-07-31T19:03:56-05:00",
            "2022-08-01T00:03:56.000000000+00:00",
        ] {
            assert_eq!(parse_timestamp(s), Some(BASE), "{s}");
        }
        assert_eq!(parse_timestamp("2022-08-01T00:03:56.2070000Z"), Some(BASE + 207_000));
        assert_eq!(parse_timestamp("2022-08-01T00:03:56.123456789Z"), Some(BASE + 123_456));
        assert_eq!(parse_timestamp("2022-08-01T00:03:56.5Z"), Some(BASE + 500_000));
        assert_eq!(parse_timestamp("2022-08-01"), Some(BASE - 236_000_000));
    }

    #[test]
    fn us_variants() {
        assert_eq!(parse_timestamp("8/1/2022 12:03:56 AM"), Some(BASE));
        assert_eq!(parse_timestamp("8/1/2022 00:03:56"), Some(BASE));
        assert_eq!(parse_timestamp("08/01/2022 2:03:56 AM +02:00"), Some(BASE));
        assert_eq!(parse_timestamp("7/31/2022 7:03:56 PM -05:00"), Some(BASE));
        assert_eq!(parse_timestamp("8/1/2022 12:03:56 PM"), Some(BASE + 12 * 3_600_000_000));
        assert_eq!(parse_timestamp("8/1/2022 12:03 AM"), Some(BASE - 56_000_000));
    }

    #[test]
    fn garbage_is_refused() {
        for s in [
            "",
            "yesterday",
            "2022-13-01T00:00:00Z",
            "2022-02-30",
            "2022-08-01T25:00:00Z",
            "2022-08-01T00:03:56Zjunk",
            "13/1/2022 1:00:00",
            "8/1/2022 13:00:00 PM",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name_time("AZUREAD_2022-08-01T00_03_56.207Z.json"), Some(BASE + 207_000));
        assert_eq!(parse_file_name_time("DUO_2022-08-01T00_03_56.207Z.json.gz"), Some(BASE + 207_000));
        assert_eq!(parse_file_name_time("signins-2022-08-01.jsonl"), Some(BASE - 236_000_000));
        assert_eq!(parse_file_name_time("export.json"), None);
    }

    #[test]
    fn formatting_round_trips() {
        for us in [0, BASE, BASE + 207_000, -1_000_000, 951_782_400_000_000 /* 2000-02-29 */] {
            assert_eq!(parse_timestamp(&format_micros(us)), Some(us));
        }
        assert_eq!(format_micros(BASE), "2022-08-01T00:03:56.000000Z");
    }
}
