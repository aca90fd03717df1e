//! The terminology store (`answers.terms_dir`): what `medgemmactl terms
//! import` writes and the daemon reads to align the terms of a question and
//! its answer with standard ones.
//!
//! One table per imported source, `<name>.tsv`, UTF-8: comment lines
//! (`# key: value`, the first one [`TABLE_FORMAT`]) describing the source,
//! then one line per phrase, `phrase TAB preferred TAB code TAB system`.
//! The phrase is what is looked for in the text (lower-cased when it is
//! ASCII; Chinese as written); the preferred term, the code and the system
//! are what the UI shows. A synonyms table may leave `preferred` empty: the
//! daemon then takes the title of that code from the other tables.
//!
//! Owns: the store's layout and the rules a phrase follows. Must never:
//! hold anything but terminology (no patient text reaches this directory).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The first line of every table.
pub const TABLE_FORMAT: &str = "# medgemma-terms/1";

/// A table's file extension.
pub const TABLE_EXTENSION: &str = "tsv";

/// Longest phrase kept, in characters (longer titles are never typed).
pub const MAX_PHRASE_CHARS: usize = 120;

/// Shortest ASCII phrase kept: two-letter abbreviations match too much text.
pub const MIN_ASCII_PHRASE: usize = 3;

/// One phrase and what it stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TermEntry {
    /// The words looked for ([`normalize_phrase`] applied).
    pub phrase: String,
    /// The standard term (empty in a synonyms table: the code's title).
    pub preferred: String,
    /// The code ("I21.9", "BA41.Z", "22298006").
    pub code: String,
    /// The system ("ICD-10", "ICD-11", "SNOMED CT").
    pub system: String,
}

/// A table as read back: its description and its entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// `# key: value` lines (source file, version, import time, ...).
    pub meta: BTreeMap<String, String>,
    /// The phrases.
    pub entries: Vec<TermEntry>,
}

/// Why a table cannot be used. Messages name the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum TermsError {
    /// The file cannot be read or written.
    #[error("cannot use the terminology file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `phrase TAB preferred TAB code TAB system`.
    #[error(
        "{path} line {line} is not a terminology line; import the source again with medgemmactl terms import"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// The phrase as it is looked for: whitespace collapsed, ASCII lower-cased,
/// trimmed; `None` when nothing useful is left (too short, too long, only
/// digits and punctuation).
pub fn normalize_phrase(text: &str) -> Option<String> {
    let collapsed = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    let chars = collapsed.chars().count();
    let letters = collapsed.chars().filter(|c| c.is_alphabetic()).count();
    let ascii = collapsed.is_ascii();
    let long_enough = if ascii {
        chars >= MIN_ASCII_PHRASE
    } else {
        chars >= 2
    };
    (long_enough && chars <= MAX_PHRASE_CHARS && letters > 0 && !collapsed.contains('\t'))
        .then_some(collapsed)
}

/// Whether `c` is part of a word for the ASCII boundary rule: a phrase of
/// Latin letters matches only between non-word characters ("mi" never in
/// "mild"); Chinese has no spaces, so its phrases match anywhere.
pub fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// Writes a table atomically (temporary file, fsync, rename), mode 0644.
pub fn write_table(
    path: &Path,
    meta: &[(&str, String)],
    entries: &[TermEntry],
) -> Result<(), TermsError> {
    let io = |source| TermsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut text = String::with_capacity(entries.len() * 64);
    text.push_str(TABLE_FORMAT);
    text.push('\n');
    for (k, v) in meta {
        let v = v.replace(['\n', '\r'], " ");
        text.push_str(&format!("# {k}: {v}\n"));
    }
    for e in entries {
        for field in [&e.phrase, &e.preferred, &e.code, &e.system] {
            text.push_str(&field.replace(['\t', '\n', '\r'], " "));
            text.push('\t');
        }
        text.pop();
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a table.
pub fn read_table(path: &Path) -> Result<Table, TermsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TermsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut table = Table::default();
    for (i, line) in text.lines().enumerate() {
        if i == 0 {
            if line != TABLE_FORMAT {
                return Err(TermsError::Malformed {
                    path: path.to_owned(),
                    line: 1,
                });
            }
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            if let Some((k, v)) = meta.split_once(": ") {
                table.meta.insert(k.to_owned(), v.to_owned());
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [phrase, preferred, code, system] = f.as_slice() else {
            return Err(TermsError::Malformed {
                path: path.to_owned(),
                line: i + 1,
            });
        };
        if phrase.is_empty() || code.is_empty() || system.is_empty() {
            return Err(TermsError::Malformed {
                path: path.to_owned(),
                line: i + 1,
            });
        }
        table.entries.push(TermEntry {
            phrase: (*phrase).to_owned(),
            preferred: (*preferred).to_owned(),
            code: (*code).to_owned(),
            system: (*system).to_owned(),
        });
    }
    Ok(table)
}

/// The tables in `dir`, by name (file stem), in name order; a missing
/// directory has none.
pub fn list_tables(dir: &Path) -> Result<Vec<(String, PathBuf)>, TermsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TermsError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) == Some(TABLE_EXTENSION)
            && path.is_file()
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            out.push((stem.to_owned(), path));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_are_normalized() {
        assert_eq!(
            normalize_phrase("  Acute  Myocardial\tinfarction ").as_deref(),
            Some("acute myocardial infarction")
        );
        assert_eq!(normalize_phrase("心梗").as_deref(), Some("心梗"));
        assert_eq!(normalize_phrase("MI"), None, "too short");
        assert_eq!(normalize_phrase("12.5"), None, "no letters");
        assert_eq!(normalize_phrase(&"a".repeat(121)), None);
    }

    #[test]
    fn tables_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("icd10.tsv");
        let entries = vec![TermEntry {
            phrase: "heart attack".into(),
            preferred: "Acute myocardial infarction".into(),
            code: "I21.9".into(),
            system: "ICD-10".into(),
        }];
        write_table(&path, &[("source", "fixture.txt".into())], &entries).unwrap();
        let t = read_table(&path).unwrap();
        assert_eq!(t.entries, entries);
        assert_eq!(t.meta["source"], "fixture.txt");
        assert_eq!(
            list_tables(dir.path()).unwrap(),
            [("icd10".to_owned(), path)]
        );
        std::fs::write(
            dir.path().join("bad.tsv"),
            "# medgemma-terms/1\nonly\ttwo\n",
        )
        .unwrap();
        assert!(matches!(
            read_table(&dir.path().join("bad.tsv")),
            Err(TermsError::Malformed { line: 2, .. })
        ));
    }
}
