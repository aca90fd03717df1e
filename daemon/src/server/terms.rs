//! Term alignment: finds the phrases of the imported terminology
//! (`answers.terms_dir`, written by `medgemmactl terms import`) in a
//! question and its answer, and names the standard term, code and system of
//! each. Longest match first, left to right; Latin phrases only between word
//! boundaries and regardless of case, Chinese phrases anywhere; no model
//! call. Without a terminology nothing is found and nothing fails.
//!
//! The tables are read inside the sandbox (the directory is a read-only
//! Landlock rule), in the background at startup and again when
//! `medgemmactl` asks (`POST /admin/terms/reload`).
//!
//! Owns: the phrase index and the matching rules. Must never: log the text
//! it searches, or keep it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use medgemma_protocol::status::TermsStatus;
use medgemma_protocol::terms::{TermEntry, is_word_char, list_tables, read_table};
use serde::Serialize;

/// Terms returned for one answer at most (a long answer names many).
pub const MAX_TERMS: usize = 40;

/// Codes shown for one phrase at most (one per system usually).
const MAX_SENSES: usize = 4;

/// One term found in a text, as the UI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FoundTerm {
    /// The words as they appear in the text.
    pub phrase: String,
    /// The standard term.
    pub preferred: String,
    /// The code.
    pub code: String,
    /// The system ("ICD-10", "ICD-11", "SNOMED CT").
    pub system: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sense {
    preferred: String,
    code: String,
    system: String,
}

/// The phrase index.
#[derive(Debug, Default)]
pub struct Terms {
    senses: HashMap<String, Vec<Sense>>,
    /// Phrase lengths (in characters) by first character, longest first.
    lengths: HashMap<char, Vec<usize>>,
    systems: Vec<String>,
}

impl Terms {
    /// No terminology.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads every table in `dir`; a table that cannot be read is left out
    /// and named in the returned problems.
    pub fn load(dir: &Path) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let tables = match list_tables(dir) {
            Ok(t) => t,
            Err(e) => return (Self::empty(), vec![e.to_string()]),
        };
        let mut entries = Vec::new();
        for (_, path) in tables {
            match read_table(&path) {
                Ok(t) => entries.extend(t.entries),
                Err(e) => problems.push(e.to_string()),
            }
        }
        (Self::from_entries(entries), problems)
    }

    /// An index over `entries`; a synonym without a preferred term takes
    /// the title its code has in another table.
    pub fn from_entries(entries: Vec<TermEntry>) -> Self {
        let mut titles: HashMap<(String, String), String> = HashMap::new();
        for e in entries.iter().filter(|e| !e.preferred.is_empty()) {
            titles
                .entry((e.system.clone(), e.code.clone()))
                .or_insert_with(|| e.preferred.clone());
        }
        let mut terms = Self::default();
        let mut systems = HashSet::new();
        for e in entries {
            let preferred = if e.preferred.is_empty() {
                titles
                    .get(&(e.system.clone(), e.code.clone()))
                    .cloned()
                    .unwrap_or_else(|| e.phrase.clone())
            } else {
                e.preferred
            };
            let Some(first) = e.phrase.chars().next() else {
                continue;
            };
            let senses = terms.senses.entry(e.phrase.clone()).or_default();
            // One code per system and phrase: the first table's.
            if senses.len() >= MAX_SENSES || senses.iter().any(|s| s.system == e.system) {
                continue;
            }
            systems.insert(e.system.clone());
            senses.push(Sense {
                preferred,
                code: e.code,
                system: e.system,
            });
            let len = e.phrase.chars().count();
            let lens = terms.lengths.entry(first).or_default();
            if !lens.contains(&len) {
                lens.push(len);
                lens.sort_unstable_by(|a, b| b.cmp(a));
            }
        }
        terms.systems = systems.into_iter().collect();
        terms.systems.sort();
        terms
    }

    /// Phrases known.
    pub fn len(&self) -> usize {
        self.senses.len()
    }

    /// Whether no terminology is loaded.
    pub fn is_empty(&self) -> bool {
        self.senses.is_empty()
    }

    /// What the status documents show.
    pub fn status(&self) -> TermsStatus {
        TermsStatus {
            phrases: self.len(),
            systems: self.systems.clone(),
        }
    }

    /// The terms in `text`, in order of first appearance, each phrase once.
    pub fn find(&self, text: &str) -> Vec<FoundTerm> {
        if self.is_empty() {
            return Vec::new();
        }
        // The text as the phrases are written: lower case, whitespace runs
        // as one space; `origin[i]` is the char index in the text.
        let chars: Vec<char> = text.chars().collect();
        let mut norm: Vec<char> = Vec::with_capacity(chars.len());
        let mut origin: Vec<usize> = Vec::with_capacity(chars.len());
        for (i, c) in chars.iter().enumerate() {
            if c.is_whitespace() {
                if norm.last().is_some_and(|l| *l != ' ') {
                    norm.push(' ');
                    origin.push(i);
                }
                continue;
            }
            let mut lower = c.to_lowercase();
            let l = match (lower.next(), lower.next()) {
                (Some(l), None) => l,
                _ => *c,
            };
            norm.push(l);
            origin.push(i);
        }
        let mut found = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut i = 0;
        let mut key = String::new();
        while i < norm.len() && found.len() < MAX_TERMS {
            let hit = self.lengths.get(&norm[i]).and_then(|lens| {
                lens.iter().find_map(|&len| {
                    let end = i + len;
                    if end > norm.len() {
                        return None;
                    }
                    if !boundary_ok(&norm, i, end) {
                        return None;
                    }
                    key.clear();
                    key.extend(&norm[i..end]);
                    self.senses.get(key.as_str()).map(|s| (end, s))
                })
            });
            match hit {
                Some((end, senses)) => {
                    let phrase: String = chars[origin[i]..=origin[end - 1]].iter().collect();
                    if seen.insert(norm[i..end].iter().collect()) {
                        for s in senses {
                            found.push(FoundTerm {
                                phrase: phrase.clone(),
                                preferred: s.preferred.clone(),
                                code: s.code.clone(),
                                system: s.system.clone(),
                            });
                        }
                    }
                    i = end;
                }
                None => i += 1,
            }
        }
        found.truncate(MAX_TERMS);
        found
    }
}

/// A phrase that starts (ends) with a Latin letter or digit must not
/// continue a word before (after) it.
fn boundary_ok(norm: &[char], start: usize, end: usize) -> bool {
    let starts_word = is_word_char(norm[start]);
    let ends_word = is_word_char(norm[end - 1]);
    let before = start.checked_sub(1).map(|i| norm[i]);
    let after = norm.get(end).copied();
    let continues_before = starts_word && before.is_some_and(is_word_char);
    let continues_after = ends_word && after.is_some_and(is_word_char);
    !(continues_before || continues_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(phrase: &str, preferred: &str, code: &str, system: &str) -> TermEntry {
        TermEntry {
            phrase: phrase.into(),
            preferred: preferred.into(),
            code: code.into(),
            system: system.into(),
        }
    }

    fn terms() -> Terms {
        Terms::from_entries(vec![
            entry(
                "myocardial infarction",
                "Acute myocardial infarction",
                "I21.9",
                "ICD-10",
            ),
            entry(
                "acute myocardial infarction",
                "Acute myocardial infarction",
                "I21.9",
                "ICD-10",
            ),
            entry("heart attack", "", "I21.9", "ICD-10"),
            entry("心梗", "急性心肌梗死", "I21.9", "ICD-10"),
            entry("急性心肌梗死", "急性心肌梗死", "I21.9", "ICD-10"),
            entry(
                "pneumonia",
                "Pneumonia, unspecified organism",
                "J18.9",
                "ICD-10",
            ),
            entry(
                "pneumonia",
                "Pneumonia (disorder)",
                "233604007",
                "SNOMED CT",
            ),
        ])
    }

    #[test]
    fn longest_match_wins_and_synonyms_take_the_codes_title() {
        let t = terms();
        let f = t.find("Was it an Acute  Myocardial\nInfarction or a heart attack?");
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].phrase, "Acute  Myocardial\nInfarction");
        assert_eq!(f[0].code, "I21.9");
        assert_eq!(f[1].phrase, "heart attack");
        assert_eq!(f[1].preferred, "Acute myocardial infarction");
    }

    #[test]
    fn chinese_matches_inside_text_and_latin_only_at_word_boundaries() {
        let t = terms();
        let f = t.find("胸痛一小时，是心梗吗？不是急性心肌梗死。");
        let phrases: Vec<&str> = f.iter().map(|t| t.phrase.as_str()).collect();
        assert_eq!(phrases, ["心梗", "急性心肌梗死"]);
        assert!(t.find("bronchopneumonias and pneumoniae").is_empty());
        let f = t.find("(pneumonia).");
        assert_eq!(f.len(), 2, "one per system: {f:?}");
        assert_eq!(f[1].system, "SNOMED CT");
    }

    #[test]
    fn each_phrase_once_and_nothing_without_a_terminology() {
        let t = terms();
        assert_eq!(t.find("heart attack? heart attack!").len(), 1);
        assert!(Terms::empty().find("heart attack").is_empty());
        let (empty, problems) = Terms::load(Path::new("/nonexistent/terms"));
        assert!(empty.is_empty() && problems.is_empty());
    }
}
