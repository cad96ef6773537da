//! Text forms shared by the log formats: timestamps, UUIDs and Duo-style keys.

use std::fmt;

use chrono::{DateTime, Datelike, Timelike};

/// 100-nanosecond ticks per second (Azure timestamps have 7 fraction digits).
pub(crate) const TICKS_PER_SEC: i64 = 10_000_000;

/// How a [`Ts`] is written.
#[derive(Clone, Copy)]
pub(crate) enum TsStyle {
    /// `2026-10-01T08:15:02.1234567Z`
    Ticks7Z,
    /// `2026-10-01T08:15:02.1234567+00:00`
    Ticks7Offset,
    /// `2026-10-01T08:15:02.123456+00:00`
    Micros6Offset,
    /// `2026-10-01T08_15_02.123Z` (file names: no colons)
    FileMillis,
}

/// A UTC instant in ticks since the Unix epoch, written in one of the [`TsStyle`]s.
pub(crate) struct Ts(pub(crate) i64, pub(crate) TsStyle);

impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(TICKS_PER_SEC);
        let frac = self.0.rem_euclid(TICKS_PER_SEC);
        let Some(dt) = DateTime::from_timestamp(secs, 0) else {
            return Err(fmt::Error);
        };
        let (y, mo, d, h, mi, s) = (dt.year(), dt.month(), dt.day(), dt.hour(), dt.minute(), dt.second());
        match self.1 {
            TsStyle::Ticks7Z => write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:07}Z"),
            TsStyle::Ticks7Offset => write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:07}+00:00"),
            TsStyle::Micros6Offset => {
                write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}+00:00", frac / 10)
            }
            TsStyle::FileMillis => write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}_{mi:02}_{s:02}.{:03}Z", frac / 10_000),
        }
    }
}

impl serde::Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A 128-bit id written as a lowercase UUID (`8-4-4-4-12` hex digits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) struct Uuid(pub(crate) u128);

impl Uuid {
    /// Shapes random bits as a version-4 UUID.
    pub(crate) fn v4(bits: u128) -> Uuid {
        Uuid((bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

impl serde::Serialize for Uuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// 64-bit FNV-1a: a stable hash of fixed strings (application ids do not depend on the seed).
pub(crate) fn fnv1a(text: &str, salt: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A stable UUID derived from a name.
pub(crate) fn name_uuid(name: &str) -> Uuid {
    Uuid::v4((u128::from(fnv1a(name, 1)) << 64) | u128::from(fnv1a(name, 2)))
}

/// A Duo-style key: `prefix` followed by 18 upper-case letters and digits drawn from `bits`.
pub(crate) fn duo_key(prefix: &str, mut bits: u128) -> String {
    const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut key = String::with_capacity(20);
    key.push_str(prefix);
    for _ in 0..18 {
        key.push(char::from(ALPHABET[(bits % 36) as usize]));
        bits /= 36;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_style() {
        // 2026-10-01T08:15:02.1234567Z
        let t = 1_790_842_502 * TICKS_PER_SEC + 1_234_567;
        assert_eq!(Ts(t, TsStyle::Ticks7Z).to_string(), "2026-10-01T08:15:02.1234567Z");
        assert_eq!(Ts(t, TsStyle::Ticks7Offset).to_string(), "2026-10-01T08:15:02.1234567+00:00");
        assert_eq!(Ts(t, TsStyle::Micros6Offset).to_string(), "2026-10-01T08:15:02.123456+00:00");
        assert_eq!(Ts(t, TsStyle::FileMillis).to_string(), "2026-10-01T08_15_02.123Z");
    }

    #[test]
    fn uuids_are_version_4_and_well_formed() {
        let u = Uuid::v4(u128::MAX).to_string();
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let z = Uuid::v4(0).to_string();
        assert_eq!(z, "00000000-0000-4000-8000-000000000000");
        assert_ne!(name_uuid("Salesforce"), name_uuid("Workday"));
        assert_eq!(name_uuid("Salesforce"), name_uuid("Salesforce"));
    }

    #[test]
    fn duo_keys_have_twenty_characters() {
        let k = duo_key("DU", 12345678901234567890);
        assert_eq!(k.len(), 20);
        assert!(k.starts_with("DU"));
        assert!(k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
    }
}
