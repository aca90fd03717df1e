//! Typed record fields: identifiers, digests, MACs and timestamps.
//!
//! Owns every value that can appear in a record. There is deliberately no
//! free-form string here: identifiers are short tokens (`[A-Za-z0-9_-]{1,64}`),
//! digests and MACs are 32-byte values written as hex, and times are UTC
//! timestamps with a fixed layout. Text from a conversation therefore has no
//! field it could be put in. Errors about a rejected value name the field and
//! the length, never the value, because the value may be patient text.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::AuditError;

/// Longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

fn is_token(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

macro_rules! token_id {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        ///
        /// Always 1 to 64 characters from `A-Z a-z 0-9 _ -`.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` as a short opaque token.
            ///
            /// # Errors
            /// [`AuditError::InvalidId`] when `s` is empty, longer than 64
            /// bytes or contains another character (the error never repeats
            /// `s`).
            pub fn new(s: &str) -> Result<Self, AuditError> {
                if is_token(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(AuditError::InvalidId { field: $field, len: s.len() })
                }
            }

            /// The token as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                if is_token(&s) {
                    Ok(Self(s.into_owned()))
                } else {
                    Err(D::Error::custom(concat!("invalid ", $field)))
                }
            }
        }
    };
}

token_id!(
    /// The authenticated user or API client that caused the event.
    ActorId,
    "user or client id"
);
token_id!(
    /// One conversation (chat session) on the appliance.
    ConversationId,
    "conversation id"
);
token_id!(
    /// Identifies the exact model weights, e.g. the hex SHA-256 of the
    /// checkpoint (64 characters) or a shorter release tag.
    ModelFingerprint,
    "model fingerprint"
);
token_id!(
    /// Identifies one run of the daemon, so records from different starts
    /// can be told apart even when the clock is wrong.
    BootId,
    "boot id"
);

impl BootId {
    /// A fresh random boot id (128 bits, hex).
    ///
    /// # Errors
    /// [`AuditError::Random`] when the operating system's random source fails.
    pub fn random() -> Result<Self, AuditError> {
        let bytes: [u8; 16] = crate::keys::random_bytes()?;
        Ok(Self(hex::encode(bytes)))
    }
}

/// A 32-byte value written as 64 lowercase hex digits.
fn ser_hex32<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 64];
    hex::encode_to_slice(bytes, &mut buf).map_err(serde::ser::Error::custom)?;
    // Hex digits are ASCII, so this cannot fail.
    s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
}

fn de_hex32<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse_hex32(&s).ok_or_else(|| D::Error::custom("expected 64 lowercase hex digits"))
}

/// Parses exactly 64 lowercase hex digits (the only form the log writes).
pub(crate) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

macro_rules! hex32_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub(crate) [u8; 32]);

        impl $name {
            /// The value as 64 lowercase hex digits.
            #[must_use]
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                ser_hex32(&self.0, s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                de_hex32(d).map(Self)
            }
        }
    };
}

hex32_type!(
    /// HMAC-SHA256 of a conversation text under the content key (see
    /// [`crate::ContentHasher`]). Only a `ContentHasher` can make one, so a
    /// digest field can never carry the text itself.
    Digest
);
hex32_type!(
    /// HMAC-SHA256 of one record (and, through its `prev` field, of the
    /// whole chain before it) under that record's epoch key.
    Mac
);
hex32_type!(
    /// SHA-256 of bytes the log does not keep (for example a cut torn tail).
    Sha256
);

impl Mac {
    /// The `prev` value of the very first record of a log.
    pub(crate) const GENESIS: Mac = Mac([0u8; 32]);
}

impl Sha256 {
    pub(crate) fn of(bytes: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }
}

/// A UTC instant with microsecond precision, written as RFC 3339 with a fixed
/// layout: `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always 27 characters).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    micros: u64,
}

const MICROS_PER_DAY: u64 = 86_400_000_000;

impl Timestamp {
    /// Converts a system time; times before 1970 are rejected.
    ///
    /// # Errors
    /// [`AuditError::ClockBeforeEpoch`] for times before 1970-01-01.
    pub fn from_system_time(t: SystemTime) -> Result<Self, AuditError> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| AuditError::ClockBeforeEpoch)?;
        let micros = u64::try_from(d.as_micros()).map_err(|_| AuditError::ClockBeforeEpoch)?;
        Ok(Self { micros })
    }

    /// Microseconds since 1970-01-01T00:00:00Z.
    #[must_use]
    pub fn unix_micros(self) -> u64 {
        self.micros
    }

    /// The instant as a system time.
    #[must_use]
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.micros)
    }

    /// The UTC day this instant falls on.
    #[must_use]
    pub fn day(self) -> LogDay {
        LogDay(self.micros / MICROS_PER_DAY)
    }

    fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 27
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'.'
            || b[26] != b'Z'
        {
            return None;
        }
        let day = LogDay::parse(&s[..10])?;
        let num = |r: std::ops::Range<usize>| -> Option<u64> {
            let part = &b[r];
            if !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(
                part.iter()
                    .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')),
            )
        };
        let (h, m, sec, frac) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
        if h > 23 || m > 59 || sec > 59 {
            return None;
        }
        let micros = day.0 * MICROS_PER_DAY + ((h * 60 + m) * 60 + sec) * 1_000_000 + frac;
        Some(Self { micros })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let in_day = self.micros % MICROS_PER_DAY;
        let secs = in_day / 1_000_000;
        write!(
            f,
            "{}T{:02}:{:02}:{:02}.{:06}Z",
            self.day(),
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            in_day % 1_000_000
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| D::Error::custom("invalid timestamp"))
    }
}

/// A UTC calendar day (days since 1970-01-01); one log file per day.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogDay(pub(crate) u64);

impl LogDay {
    /// Days since 1970-01-01.
    #[must_use]
    pub fn days_since_epoch(self) -> u64 {
        self.0
    }

    /// Parses `YYYY-MM-DD` (a real calendar date, year 1970 to 9999).
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 10
            || b[4] != b'-'
            || b[7] != b'-'
            || !b
                .iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| {
            b[r].iter()
                .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'))
        };
        let (y, m, d) = (num(0..4), num(5..7), num(8..10));
        if y < 1970 || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return None;
        }
        let days = days_from_civil(y, m, d);
        // Reject dates like 2025-02-30 by converting back.
        (civil_from_days(days) == (y, m, d)).then_some(Self(days))
    }
}

impl fmt::Display for LogDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl fmt::Debug for LogDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for LogDay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| D::Error::custom("invalid date"))
    }
}

// Calendar conversion for days since 1970 (proleptic Gregorian), after Howard
// Hinnant's `days_from_civil` / `civil_from_days`
// (https://howardhinnant.github.io/date_algorithms.html), restricted to
// years >= 1970 so everything stays unsigned.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: u64) -> (u64, u64, u64) {
    let z = z + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A software version as three numbers, written `MAJOR.MINOR.PATCH`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SoftwareVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl SoftwareVersion {
    /// Parses `MAJOR.MINOR.PATCH` (digits only, e.g. `env!("CARGO_PKG_VERSION")`
    /// without pre-release suffix).
    ///
    /// # Errors
    /// [`AuditError::InvalidVersion`] for anything else.
    pub fn parse(s: &str) -> Result<Self, AuditError> {
        let mut it = s.split('.').map(|p| {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                p.parse::<u32>().ok()
            }
        });
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) => Ok(Self {
                major,
                minor,
                patch,
            }),
            _ => Err(AuditError::InvalidVersion),
        }
    }
}

impl fmt::Display for SoftwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for SoftwareVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SoftwareVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let v = Self::parse(&s).map_err(|_| D::Error::custom("invalid version"))?;
        // Only the canonical spelling (no leading zeros) round-trips.
        if v.to_string() == s {
            Ok(v)
        } else {
            Err(D::Error::custom("invalid version"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_and_is_fixed_width() {
        for micros in [
            0u64,
            1,
            86_399_999_999,
            1_700_000_000_123_456,
            253_402_300_799_999_999,
        ] {
            let t = Timestamp { micros };
            let s = t.to_string();
            assert_eq!(s.len(), 27, "{s}");
            assert_eq!(Timestamp::parse(&s), Some(t));
        }
        assert_eq!(
            Timestamp {
                micros: 1_700_000_000_123_456
            }
            .to_string(),
            "2023-11-14T22:13:20.123456Z"
        );
        assert!(Timestamp::parse("2023-02-29T00:00:00.000000Z").is_none());
        assert!(Timestamp::parse("2024-02-29T24:00:00.000000Z").is_none());
        assert!(Timestamp::parse("2024-02-29T23:00:00.000000Z").is_some());
    }

    #[test]
    fn ids_reject_text_without_echoing_it() {
        assert!(ActorId::new("nurse-17_a").is_ok());
        let err = ActorId::new("Jane Doe").unwrap_err().to_string();
        assert!(!err.contains("Jane"), "{err}");
        assert!(ConversationId::new("").is_err());
        assert!(ConversationId::new(&"a".repeat(65)).is_err());
        assert!(ConversationId::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn version_is_canonical() {
        assert_eq!(
            SoftwareVersion::parse("0.1.0").unwrap().to_string(),
            "0.1.0"
        );
        assert!(SoftwareVersion::parse("0.1").is_err());
        assert!(SoftwareVersion::parse("0.1.0-rc1").is_err());
    }
}
