//! `medgemmactl terms import | list | remove`: the terminology the daemon
//! aligns the terms of questions and answers with (`answers.terms_dir`,
//! format in `medgemma_protocol::terms`).
//!
//! Sources, as their publishers ship them (unzipped):
//!
//! - `icd11`: the WHO's ICD-11 MMS simple tabulation
//!   (`SimpleTabulation-ICD-11-MMS-<lang>.txt`, tab-separated, UTF-8 with a
//!   byte-order mark; columns found by their header names `Code` and
//!   `Title`; rows without a code, chapters and blocks, are skipped; the
//!   dashes that show a title's depth are removed).
//! - `icd10`: a code list, one code and its title per line: the CDC/CMS
//!   ICD-10-CM code file (`icd10cm-codes-<year>.txt`, code and title
//!   separated by spaces, codes without a dot: system "ICD-10-CM"), or a
//!   tab-separated `code TAB title` list such as China's national clinical
//!   edition exported from its spreadsheet (system "ICD-10").
//! - `snomed`: SNOMED CT RF2 description files
//!   (`sct2_Description_Snapshot-<lang>_<edition>_<date>.txt`): active
//!   fully specified names and synonyms of the concepts whose semantic tag
//!   is chosen (`--semantic-tags`); the preferred term from the language
//!   reference set when given (`--language-refset`), else the fully
//!   specified name without its tag. Licensed per country: never shipped.
//! - `synonyms`: the administrator's own phrases, `phrase TAB system TAB
//!   code [TAB preferred]` (`#` comments): colloquial Chinese and English
//!   (心梗, heart attack) mapped to a code of an imported system.
//!
//! Each import replaces its table atomically, then asks a running daemon
//! to read the tables again (`POST /admin/terms/reload`).
//!
//! Owns: reading the publishers' formats. Must never: fetch anything, or
//! write outside the terms directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use medgemma_protocol::admin::TERMS_RELOAD_ROUTE;
use medgemma_protocol::terms::{
    TABLE_EXTENSION, TermEntry, list_tables, normalize_phrase, read_table, write_table,
};

use crate::daemon_config::DaemonConfig;
use crate::{EXIT_OK, Report, status_cmd};

/// `terms …`.
#[derive(Debug, Subcommand)]
pub enum TermsCommand {
    /// Import a terminology file into the terms directory (replacing the table of the same name).
    Import(ImportArgs),
    /// List the imported tables.
    List,
    /// Remove an imported table.
    Remove {
        /// The table's name (as `terms list` shows it).
        name: String,
    },
}

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// WHO ICD-11 MMS simple tabulation (.txt, tab-separated).
    Icd11,
    /// An ICD-10 code list (ICD-10-CM code file, or code TAB title).
    Icd10,
    /// SNOMED CT RF2 description file.
    Snomed,
    /// The administrator's synonyms (phrase TAB system TAB code [TAB preferred]).
    Synonyms,
}

/// `terms import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// What the file is.
    #[arg(value_enum)]
    kind: Source,
    /// The file, as its publisher ships it (unzipped).
    file: PathBuf,
    /// The table's name (default: the kind, plus the language for ICD-11 and SNOMED CT).
    #[arg(long)]
    name: Option<String>,
    /// The system name shown beside the codes (default: ICD-11, ICD-10-CM or ICD-10, SNOMED CT).
    #[arg(long)]
    system: Option<String>,
    /// SNOMED CT: the description language to keep.
    #[arg(long, default_value = "en")]
    language: String,
    /// SNOMED CT: the language reference set (der2_cRefset_Language…) that marks preferred terms.
    #[arg(long)]
    language_refset: Option<PathBuf>,
    /// SNOMED CT: the semantic tags of the concepts to keep (comma-separated).
    #[arg(
        long,
        default_value = "disorder,finding,substance,clinical drug,medicinal product"
    )]
    semantic_tags: String,
    /// The terms directory (default: `answers.terms_dir` of the configuration).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs a `terms` subcommand.
pub fn run(config: &Path, cmd: &TermsCommand) -> Report {
    let cfg = match DaemonConfig::load(config) {
        Ok(c) => c,
        Err(e) => return Report::error(e.to_string()),
    };
    match cmd {
        TermsCommand::Import(a) => import(&cfg, a),
        TermsCommand::List => list(&cfg.terms_dir()),
        TermsCommand::Remove { name } => remove(&cfg, name),
    }
}

/// What an import read.
#[derive(Debug)]
struct Imported {
    entries: Vec<TermEntry>,
    system: String,
    rows: usize,
    version: Option<String>,
}

fn import(cfg: &DaemonConfig, a: &ImportArgs) -> Report {
    let dir = a.dir.clone().unwrap_or_else(|| cfg.terms_dir());
    let text = match read_text(&a.file) {
        Ok(t) => t,
        Err(e) => return Report::error(e),
    };
    let parsed = match a.kind {
        Source::Icd11 => icd11(&text, a.system.as_deref()),
        Source::Icd10 => icd10(&text, a.system.as_deref()),
        Source::Snomed => {
            let refset = match a.language_refset.as_deref().map(read_text).transpose() {
                Ok(r) => r,
                Err(e) => return Report::error(e),
            };
            snomed(
                &text,
                refset.as_deref(),
                &a.language,
                &a.semantic_tags,
                a.system.as_deref(),
            )
        }
        Source::Synonyms => synonyms(&text),
    };
    let imported = match parsed {
        Ok(i) => i,
        Err(e) => return Report::error(format!("{}: {e}", a.file.display())),
    };
    if imported.entries.is_empty() {
        return Report::error(format!(
            "{} holds no term this importer recognises as {:?}; check the file and the kind",
            a.file.display(),
            a.kind
        ));
    }
    let name = a.name.clone().unwrap_or_else(|| match a.kind {
        Source::Icd11 => format!("icd11-{}", language_of(&a.file).unwrap_or("en")),
        Source::Icd10 => "icd10".to_owned(),
        Source::Snomed => format!("snomed-{}", a.language),
        Source::Synonyms => "synonyms".to_owned(),
    });
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Report::error("--name must be letters, digits, '-' and '_'");
    }
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
    {
        return Report::error(format!("cannot create {}: {e}", dir.display()));
    }
    let path = dir.join(format!("{name}.{TABLE_EXTENSION}"));
    let sha = std::fs::read(&a.file)
        .map(|b| hex::encode(ring::digest::digest(&ring::digest::SHA256, &b)))
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut meta = vec![
        ("kind", format!("{:?}", a.kind).to_lowercase()),
        ("system", imported.system.clone()),
        (
            "source",
            a.file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        ("source_sha256", sha),
        ("source_rows", imported.rows.to_string()),
        ("imported_unix", now.to_string()),
    ];
    if let Some(v) = &imported.version {
        meta.push(("version", v.clone()));
    }
    if let Err(e) = write_table(&path, &meta, &imported.entries) {
        return Report::error(e.to_string());
    }
    let reload = reload_daemon(cfg);
    Report {
        code: EXIT_OK,
        text: format!(
            "imported {} phrases ({}) from {} into {}; {reload}",
            imported.entries.len(),
            imported.system,
            a.file.display(),
            path.display()
        ),
        json: serde_json::json!({
            "ok": true,
            "table": name,
            "path": path,
            "system": imported.system,
            "phrases": imported.entries.len(),
            "source_rows": imported.rows,
            "daemon": reload,
        }),
    }
}

/// Asks a running daemon to read the tables again; says what happened.
fn reload_daemon(cfg: &DaemonConfig) -> String {
    let socket = cfg.admin_socket();
    match UnixStream::connect(&socket) {
        Ok(stream) => {
            match status_cmd::request(
                stream,
                "POST",
                TERMS_RELOAD_ROUTE,
                Some(&serde_json::json!({})),
            ) {
                Ok(v) => format!(
                    "medgemmad now knows {} phrases",
                    v["phrases"].as_u64().unwrap_or(0)
                ),
                Err(e) => format!("medgemmad could not reload them ({e}); restart it"),
            }
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            "medgemmad is not running; it reads them when it starts".to_owned()
        }
        Err(e) => format!(
            "cannot reach medgemmad on {} ({e}); restart it to use the new terms",
            socket.display()
        ),
    }
}

fn list(dir: &Path) -> Report {
    let tables = match list_tables(dir) {
        Ok(t) => t,
        Err(e) => return Report::error(e.to_string()),
    };
    let mut text = String::new();
    let mut json = Vec::new();
    for (name, path) in tables {
        match read_table(&path) {
            Ok(t) => {
                let m = |k: &str| t.meta.get(k).cloned().unwrap_or_else(|| "-".to_owned());
                text.push_str(&format!(
                    "{name}: {} phrases, {} (from {})\n",
                    t.entries.len(),
                    m("system"),
                    m("source")
                ));
                json.push(serde_json::json!({
                    "name": name, "phrases": t.entries.len(), "meta": t.meta,
                }));
            }
            Err(e) => {
                text.push_str(&format!("{name}: UNREADABLE: {e}\n"));
                json.push(serde_json::json!({ "name": name, "error": e.to_string() }));
            }
        }
    }
    if json.is_empty() {
        text = format!(
            "no terminology in {} (import one with medgemmactl terms import)",
            dir.display()
        );
    }
    Report {
        code: EXIT_OK,
        text,
        json: serde_json::json!({ "ok": true, "dir": dir, "tables": json }),
    }
}

fn remove(cfg: &DaemonConfig, name: &str) -> Report {
    let dir = cfg.terms_dir();
    let path = dir.join(format!("{name}.{TABLE_EXTENSION}"));
    if name.contains('/') || !path.is_file() {
        return Report::error(format!(
            "there is no table {name:?} in {} (see medgemmactl terms list)",
            dir.display()
        ));
    }
    if let Err(e) = std::fs::remove_file(&path) {
        return Report::error(format!("cannot remove {}: {e}", path.display()));
    }
    let reload = reload_daemon(cfg);
    Report {
        code: EXIT_OK,
        text: format!("removed {}; {reload}", path.display()),
        json: serde_json::json!({ "ok": true, "removed": path, "daemon": reload }),
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{} is not UTF-8 text (save it as UTF-8)", path.display()))?;
    Ok(text.trim_start_matches('\u{feff}').to_owned())
}

/// `-zh` in `SimpleTabulation-ICD-11-MMS-zh.txt`.
fn language_of(path: &Path) -> Option<&'static str> {
    let stem = path.file_stem()?.to_str()?;
    let lang = stem.rsplit('-').next()?;
    ["en", "zh", "fr", "es", "ar", "ru"]
        .into_iter()
        .find(|l| *l == lang)
}

/// Adds `title` (and its variant without a trailing "unspecified" part) as
/// phrases of `code`, unless the phrase is taken (the first code keeps it).
fn add_title(
    out: &mut Vec<TermEntry>,
    seen: &mut HashSet<String>,
    title: &str,
    code: &str,
    system: &str,
) {
    let title = title.trim();
    let mut phrases = vec![title.to_owned()];
    for cut in [
        ", unspecified",
        ", not elsewhere classified",
        " NOS",
        "，未特指",
        "，其他",
    ] {
        if let Some(i) = title.find(cut) {
            phrases.push(title[..i].to_owned());
        }
    }
    for p in phrases {
        let Some(phrase) = normalize_phrase(&p) else {
            continue;
        };
        if seen.insert(phrase.clone()) {
            out.push(TermEntry {
                phrase,
                preferred: title.to_owned(),
                code: code.to_owned(),
                system: system.to_owned(),
            });
        }
    }
}

/// The WHO's ICD-11 MMS simple tabulation.
fn icd11(text: &str, system: Option<&str>) -> Result<Imported, String> {
    let system = system.unwrap_or("ICD-11");
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("the file is empty")?
        .split('\t')
        .map(str::trim)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!("no {name:?} column: this is not the WHO's ICD-11 MMS simple tabulation (SimpleTabulation-ICD-11-MMS-<language>.txt)")
            })
    };
    let (code_col, title_col) = (col("Code")?, col("Title")?);
    let version = header
        .iter()
        .find(|h| h.starts_with("Version"))
        .map(|h| (*h).to_owned());
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut rows = 0;
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        rows += 1;
        let (Some(code), Some(title)) = (f.get(code_col), f.get(title_col)) else {
            continue;
        };
        let code = code.trim();
        if code.is_empty() {
            continue; // chapters and blocks carry no code
        }
        // Depth dashes ("- - "), and the quotes a title with a comma may carry.
        let title = title
            .trim()
            .trim_matches('"')
            .trim_start_matches(['-', ' '])
            .trim_matches('"');
        add_title(&mut out, &mut seen, title, code, system);
    }
    Ok(Imported {
        entries: out,
        system: system.to_owned(),
        rows,
        version,
    })
}

/// Whether `code` looks like an ICD-10 code: a letter, two digits, then
/// optional further characters with or without a dot.
fn is_icd10_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() >= 3
        && b.len() <= 9
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && b[2].is_ascii_alphanumeric()
        && b[3..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.')
}

/// An ICD-10 code list: `CODE  Title` (ICD-10-CM code file) or `CODE TAB Title`.
fn icd10(text: &str, system: Option<&str>) -> Result<Imported, String> {
    let mut parsed: Vec<(String, String)> = Vec::new();
    let mut rows = 0;
    let mut dotted = false;
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        rows += 1;
        let (code, title) = match line.split_once('\t') {
            Some((c, t)) => (c.trim(), t.trim()),
            None => match line.split_once(char::is_whitespace) {
                Some((c, t)) => (c.trim(), t.trim()),
                None => continue,
            },
        };
        if !is_icd10_code(code) || title.is_empty() {
            continue; // a header or a note
        }
        dotted |= code.contains('.');
        parsed.push((code.to_owned(), title.to_owned()));
    }
    let system = system
        .unwrap_or(if dotted { "ICD-10" } else { "ICD-10-CM" })
        .to_owned();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (code, title) in parsed {
        // The CM file writes codes without their dot: I219 is I21.9.
        let code = if !code.contains('.') && code.len() > 3 {
            format!("{}.{}", &code[..3], &code[3..])
        } else {
            code
        };
        add_title(&mut out, &mut seen, &title, &code, &system);
    }
    Ok(Imported {
        entries: out,
        system,
        rows,
        version: None,
    })
}

/// One SNOMED CT concept's descriptions: (fully specified name, preferred
/// synonym, every synonym).
type Concept = (Option<String>, Option<String>, Vec<String>);

/// SNOMED CT's description type ids.
const FSN: &str = "900000000000003001";
const SYNONYM: &str = "900000000000013009";
/// The language reference set's "preferred" acceptability.
const PREFERRED: &str = "900000000000548007";

/// SNOMED CT RF2 descriptions.
fn snomed(
    text: &str,
    refset: Option<&str>,
    language: &str,
    tags: &str,
    system: Option<&str>,
) -> Result<Imported, String> {
    let system = system.unwrap_or("SNOMED CT");
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("the file is empty")?
        .split('\t')
        .collect();
    let col = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            format!("no {name:?} column: this is not an RF2 description file (sct2_Description_…)")
        })
    };
    let (id_c, active_c, concept_c, lang_c, type_c, term_c) = (
        col("id")?,
        col("active")?,
        col("conceptId")?,
        col("languageCode")?,
        col("typeId")?,
        col("term")?,
    );
    let preferred_ids: HashSet<&str> = match refset {
        Some(r) => {
            let mut rl = r.lines();
            let h: Vec<&str> = rl.next().unwrap_or("").split('\t').collect();
            let pos = |n: &str| h.iter().position(|x| x.trim() == n);
            let (Some(a), Some(rc), Some(acc)) = (
                pos("active"),
                pos("referencedComponentId"),
                pos("acceptabilityId"),
            ) else {
                return Err("the language reference set has no referencedComponentId/acceptabilityId columns (der2_cRefset_Language…)".to_owned());
            };
            rl.filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.get(a) == Some(&"1") && f.get(acc).map(|s| s.trim()) == Some(PREFERRED))
                    .then(|| f.get(rc).copied())
                    .flatten()
            })
            .collect()
        }
        None => HashSet::new(),
    };
    let wanted: HashSet<String> = tags.split(',').map(|t| t.trim().to_owned()).collect();
    let mut concepts: BTreeMap<String, Concept> = BTreeMap::new();
    let mut rows = 0;
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        rows += 1;
        let get = |i: usize| f.get(i).map(|s| s.trim()).unwrap_or("");
        if get(active_c) != "1" || get(lang_c) != language {
            continue;
        }
        let entry = concepts.entry(get(concept_c).to_owned()).or_default();
        let term = get(term_c).to_owned();
        match get(type_c) {
            FSN => entry.0 = Some(term),
            SYNONYM => {
                if preferred_ids.contains(get(id_c)) {
                    entry.1 = Some(term.clone());
                }
                entry.2.push(term);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (concept, (fsn, preferred, terms)) in concepts {
        let Some(fsn) = fsn else { continue };
        let (name, tag) = match fsn.rfind(" (") {
            Some(i) if fsn.ends_with(')') => (&fsn[..i], &fsn[i + 2..fsn.len() - 1]),
            _ => (fsn.as_str(), ""),
        };
        if !wanted.contains(tag) {
            continue;
        }
        let preferred = preferred.unwrap_or_else(|| name.to_owned());
        for t in std::iter::once(name.to_owned()).chain(terms) {
            let Some(phrase) = normalize_phrase(&t) else {
                continue;
            };
            if seen.insert(phrase.clone()) {
                out.push(TermEntry {
                    phrase,
                    preferred: preferred.clone(),
                    code: concept.clone(),
                    system: system.to_owned(),
                });
            }
        }
    }
    Ok(Imported {
        entries: out,
        system: system.to_owned(),
        rows,
        version: None,
    })
}

/// The administrator's synonyms.
fn synonyms(text: &str) -> Result<Imported, String> {
    let mut out = Vec::new();
    let mut systems: HashMap<String, usize> = HashMap::new();
    let mut rows = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        rows += 1;
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        let (phrase, system, code, preferred) = match f.as_slice() {
            [p, s, c] => (*p, *s, *c, ""),
            [p, s, c, pref] => (*p, *s, *c, *pref),
            _ => {
                return Err(format!(
                    "line {}: write phrase TAB system TAB code [TAB preferred term]",
                    i + 1
                ));
            }
        };
        let Some(phrase) = normalize_phrase(phrase) else {
            return Err(format!(
                "line {}: the phrase is too short or has no letters",
                i + 1
            ));
        };
        if system.is_empty() || code.is_empty() {
            return Err(format!(
                "line {}: the system and the code are required",
                i + 1
            ));
        }
        *systems.entry(system.to_owned()).or_default() += 1;
        out.push(TermEntry {
            phrase,
            preferred: preferred.to_owned(),
            code: code.to_owned(),
            system: system.to_owned(),
        });
    }
    let mut names: Vec<String> = systems.into_keys().collect();
    names.sort();
    Ok(Imported {
        entries: out,
        system: names.join(", "),
        rows,
        version: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/terms")
            .join(name);
        read_text(&path).unwrap()
    }

    fn find<'a>(entries: &'a [TermEntry], phrase: &str) -> Option<&'a TermEntry> {
        entries.iter().find(|e| e.phrase == phrase)
    }

    #[test]
    fn icd11_simple_tabulation_in_english_and_chinese() {
        let en = icd11(&fixture("SimpleTabulation-ICD-11-MMS-en.txt"), None).unwrap();
        let mi = find(&en.entries, "acute myocardial infarction").unwrap();
        assert_eq!((mi.code.as_str(), mi.system.as_str()), ("BA41", "ICD-11"));
        assert_eq!(
            mi.preferred, "Acute myocardial infarction",
            "depth dashes removed"
        );
        assert!(
            en.entries.iter().all(|e| !e.code.is_empty()),
            "chapter and block rows carry no code"
        );
        assert!(en.version.is_some());
        let zh = icd11(&fixture("SimpleTabulation-ICD-11-MMS-zh.txt"), None).unwrap();
        assert_eq!(find(&zh.entries, "急性心肌梗死").unwrap().code, "BA41");
        assert!(
            icd11("a\tb\n", None)
                .unwrap_err()
                .contains("simple tabulation")
        );
    }

    #[test]
    fn icd10_cm_codes_get_their_dot_and_plain_titles() {
        let cm = icd10(&fixture("icd10cm-codes-2025.txt"), None).unwrap();
        assert_eq!(cm.system, "ICD-10-CM");
        let mi = find(&cm.entries, "acute myocardial infarction").unwrap();
        assert_eq!(mi.code, "I21.9");
        assert_eq!(mi.preferred, "Acute myocardial infarction, unspecified");
        assert_eq!(find(&cm.entries, "pneumonia").unwrap().code, "J18.9");
        let zh = icd10(&fixture("icd10-clinical-zh.tsv"), None).unwrap();
        assert_eq!(zh.system, "ICD-10");
        assert_eq!(find(&zh.entries, "急性心肌梗死").unwrap().code, "I21.900");
    }

    #[test]
    fn snomed_keeps_active_descriptions_of_chosen_tags_with_the_preferred_term() {
        let text = fixture("sct2_Description_Snapshot-en_INT_20240101.txt");
        let tags = "disorder,finding,substance";
        let s = snomed(&text, None, "en", tags, None).unwrap();
        let ha = find(&s.entries, "heart attack").unwrap();
        assert_eq!(ha.code, "22298006");
        assert_eq!(ha.preferred, "Myocardial infarction", "FSN without its tag");
        assert!(
            find(&s.entries, "old inactive name").is_none(),
            "inactive rows are left out"
        );
        assert!(
            find(&s.entries, "heart structure").is_none(),
            "body structures are left out"
        );
        let refset = fixture("der2_cRefset_LanguageSnapshot-en_INT_20240101.txt");
        let s = snomed(&text, Some(&refset), "en", tags, None).unwrap();
        assert_eq!(
            find(&s.entries, "heart attack").unwrap().preferred,
            "Myocardial infarction"
        );
        assert_eq!(find(&s.entries, "amoxicillin").unwrap().code, "372687004");
    }

    #[test]
    fn synonyms_map_colloquial_phrases_and_name_bad_lines() {
        let s = synonyms(&fixture("synonyms.tsv")).unwrap();
        let xg = find(&s.entries, "心梗").unwrap();
        assert_eq!(
            (xg.code.as_str(), xg.system.as_str()),
            ("I21.9", "ICD-10-CM")
        );
        assert!(find(&s.entries, "heart attack").is_some());
        assert_eq!(
            synonyms("heart attack\tICD-10\n").unwrap_err(),
            "line 1: write phrase TAB system TAB code [TAB preferred term]"
        );
    }
}
