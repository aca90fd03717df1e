//! The on-disk form of one record and of the daily file names.
//!
//! A record is one JSON object on one line, fields in a fixed order:
//!
//! ```text
//! {"v":1,"seq":7,"ts":"2025-03-01T08:15:02.123456Z","boot":"…","event":"answer",…,"prev":"<64 hex>","mac":"<64 hex>"}
//! ```
//!
//! The *body* is the same object without `,"mac":…`; the MAC is computed over
//! the body's exact bytes, and the body contains `prev`, the MAC of the record
//! before. Parsing is strict: a line is accepted only if re-serialising the
//! parsed record reproduces its bytes exactly, so whitespace, field order,
//! unknown fields and alternative spellings are all rejected. This module does
//! no I/O and never puts record bytes into an error.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::types::{BootId, LogDay, Mac, Timestamp, parse_hex32};

/// Record format version written in every record's `v` field.
pub(crate) const RECORD_VERSION: u32 = 1;

/// `,"mac":"` + 64 hex + `"}` + `\n`.
const MAC_SUFFIX_LEN: usize = 8 + 64 + 2 + 1;

#[derive(Serialize)]
struct BodyRef<'a> {
    v: u32,
    seq: u64,
    ts: Timestamp,
    boot: &'a BootId,
    #[serde(flatten)]
    event: &'a Event,
    prev: Mac,
}

/// A parsed, canonical record.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Record {
    pub(crate) v: u32,
    pub(crate) seq: u64,
    pub(crate) ts: Timestamp,
    pub(crate) boot: BootId,
    #[serde(flatten)]
    pub(crate) event: Event,
    pub(crate) prev: Mac,
}

/// Serialises the MAC-covered body of a record.
pub(crate) fn body_bytes(
    seq: u64,
    ts: Timestamp,
    boot: &BootId,
    event: &Event,
    prev: Mac,
) -> Vec<u8> {
    let body = BodyRef {
        v: RECORD_VERSION,
        seq,
        ts,
        boot,
        event,
        prev,
    };
    // Serialising plain typed fields into a Vec cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The full line (with trailing newline) for a body and its MAC.
pub(crate) fn line_bytes(body: &[u8], mac: &Mac) -> Vec<u8> {
    let mut line = Vec::with_capacity(body.len() + MAC_SUFFIX_LEN);
    line.extend_from_slice(body.strip_suffix(b"}").unwrap_or(body));
    line.extend_from_slice(b",\"mac\":\"");
    line.extend_from_slice(mac.to_hex().as_bytes());
    line.extend_from_slice(b"\"}\n");
    line
}

/// Why a line is not a valid record. Never carries the line's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineError {
    /// The line does not end with a newline (a torn write).
    Torn,
    /// Not a record of this format at all.
    Malformed,
    /// Parsed, but its bytes are not the canonical serialisation.
    NotCanonical,
    /// A record of another format version.
    Version,
}

/// A line split into its MAC-covered body, its MAC and the parsed record.
#[derive(Debug)]
pub(crate) struct ParsedLine {
    pub(crate) body: Vec<u8>,
    pub(crate) mac: Mac,
    pub(crate) record: Record,
}

/// Parses one line (including its trailing `\n`) strictly.
pub(crate) fn parse_line(line: &[u8]) -> Result<ParsedLine, LineError> {
    if line.last() != Some(&b'\n') {
        return Err(LineError::Torn);
    }
    if line.len() < MAC_SUFFIX_LEN + 2 {
        return Err(LineError::Malformed);
    }
    let split = line.len() - MAC_SUFFIX_LEN;
    let (head, suffix) = line.split_at(split);
    if !suffix.starts_with(b",\"mac\":\"") || !suffix.ends_with(b"\"}\n") {
        return Err(LineError::Malformed);
    }
    let mac_hex = std::str::from_utf8(&suffix[8..72]).map_err(|_| LineError::Malformed)?;
    let mac = Mac(parse_hex32(mac_hex).ok_or(LineError::Malformed)?);
    let mut body = Vec::with_capacity(head.len() + 1);
    body.extend_from_slice(head);
    body.push(b'}');
    let record: Record = serde_json::from_slice(&body).map_err(|_| LineError::Malformed)?;
    if record.v != RECORD_VERSION {
        return Err(LineError::Version);
    }
    let canonical = body_bytes(
        record.seq,
        record.ts,
        &record.boot,
        &record.event,
        record.prev,
    );
    if canonical != body {
        return Err(LineError::NotCanonical);
    }
    Ok(ParsedLine { body, mac, record })
}

/// Prefix and suffix of a daily log file name: `audit-YYYY-MM-DD.jsonl`.
const FILE_PREFIX: &str = "audit-";
const FILE_SUFFIX: &str = ".jsonl";

/// The file name for a day's records.
pub(crate) fn file_name(day: LogDay) -> String {
    format!("{FILE_PREFIX}{day}{FILE_SUFFIX}")
}

/// The day a log file name stands for, if it is one.
pub(crate) fn parse_file_name(name: &str) -> Option<LogDay> {
    let date = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    let day = LogDay::parse(date)?;
    // Only the canonical spelling counts (LogDay::parse is already strict).
    (file_name(day) == name).then_some(day)
}

/// Lists a directory's log files, oldest first.
pub(crate) fn list_log_files(
    dir: &std::path::Path,
) -> std::io::Result<Vec<(LogDay, std::path::PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(day) = name.to_str().and_then(parse_file_name)
            && entry.file_type()?.is_file()
        {
            files.push((day, entry.path()));
        }
    }
    files.sort_by_key(|(day, _)| *day);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Outcome, ShutdownReason};
    use crate::types::ModelFingerprint;

    fn sample(event: &Event) -> Vec<u8> {
        let boot = BootId::new("b00t").unwrap();
        let ts = Timestamp::from_system_time(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        )
        .unwrap();
        let body = body_bytes(3, ts, &boot, event, Mac([1; 32]));
        line_bytes(&body, &Mac([2; 32]))
    }

    #[test]
    fn lines_round_trip() {
        for event in [
            Event::Shutdown {
                reason: ShutdownReason::Signal,
            },
            Event::ModelLoad {
                model: ModelFingerprint::new("m1").unwrap(),
                latency_ms: 5,
                outcome: Outcome::Ok,
            },
        ] {
            let line = sample(&event);
            let parsed = parse_line(&line).unwrap();
            assert_eq!(parsed.record.event, event);
            assert_eq!(parsed.mac, Mac([2; 32]));
            assert_eq!(parsed.record.seq, 3);
        }
    }

    #[test]
    fn non_canonical_lines_are_rejected() {
        let line = sample(&Event::Shutdown {
            reason: ShutdownReason::Signal,
        });
        let text = String::from_utf8(line).unwrap();
        let spaced = text.replacen("\"seq\":3", "\"seq\": 3", 1);
        assert_eq!(
            parse_line(spaced.as_bytes()).unwrap_err(),
            LineError::NotCanonical
        );
        let extra = text.replacen("\"v\":1,", "\"v\":1,\"note\":\"hi\",", 1);
        assert_eq!(
            parse_line(extra.as_bytes()).unwrap_err(),
            LineError::NotCanonical
        );
        let torn = &text.as_bytes()[..text.len() - 1];
        assert_eq!(parse_line(torn).unwrap_err(), LineError::Torn);
    }

    #[test]
    fn file_names() {
        let day = LogDay::parse("2025-03-01").unwrap();
        assert_eq!(file_name(day), "audit-2025-03-01.jsonl");
        assert_eq!(parse_file_name("audit-2025-03-01.jsonl"), Some(day));
        assert_eq!(parse_file_name("audit-2025-3-01.jsonl"), None);
        assert_eq!(parse_file_name("audit-2025-03-01.jsonl.tmp"), None);
    }
}
