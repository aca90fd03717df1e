//! Reading the configuration: the main file, then its drop-ins
//! (`medgemmad.d/*.toml` beside it, in name order), merged key by key, then
//! deserialised strictly into [`Config`]; and writing the drop-in that
//! `medgemmactl setup` owns.
//!
//! Owns: which files make up the configuration and how they combine. Must
//! never: accept a key that no field declares, or a drop-in it cannot name.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};
use crate::paths;

/// A configuration and the files it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The merged, strictly parsed configuration (not yet checked).
    pub config: Config,
    /// The main file, then each drop-in read, in order.
    pub files: Vec<PathBuf>,
}

impl Config {
    /// Parses one TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Reads `path` and the drop-ins beside it ([`paths::drop_in_dir`]); a
    /// drop-in overrides the keys it sets and leaves the others. Each file
    /// must be valid TOML on its own; the merged whole must be a valid
    /// configuration (an unknown key in a drop-in is refused, naming it).
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let mut files = vec![path.to_owned()];
        let mut merged = read_table(path)?;
        for drop_in in drop_ins(path)? {
            let table = read_table(&drop_in)?;
            merge(&mut merged, table);
            files.push(drop_in);
        }
        let named = if files.len() == 1 {
            path.to_owned()
        } else {
            PathBuf::from(
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" + "),
            )
        };
        let config = toml::Value::Table(merged)
            .try_into::<Config>()
            .map_err(|e| ConfigError::Parse {
                path: named,
                message: e.to_string().trim_end().to_owned(),
            })?;
        Ok(Loaded { config, files })
    }

    /// The TOML of the keys `keys` (dotted, e.g. `engine.backend`) of this
    /// configuration: what `medgemmactl setup` writes into its drop-in, so
    /// that its choices take effect without touching the admin's main file.
    pub fn to_drop_in(&self, keys: &[&str], header: &str) -> Result<String, ConfigError> {
        let full = toml::Table::try_from(self)
            .map_err(|e| ConfigError::invalid("(configuration)", e.to_string()))?;
        let mut out = toml::Table::new();
        for key in keys {
            let (section, name) = key.split_once('.').unwrap_or(("", key));
            let Some(value) = full
                .get(section)
                .and_then(toml::Value::as_table)
                .and_then(|t| t.get(name))
            else {
                continue; // an unset optional key: nothing to write
            };
            let slot = out
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = slot {
                t.insert(name.to_owned(), value.clone());
            }
        }
        let body = toml::to_string(&out)
            .map_err(|e| ConfigError::invalid("(configuration)", e.to_string()))?;
        Ok(format!("{header}{body}"))
    }

    /// The whole configuration as TOML (every key, defaults included).
    pub fn to_toml(&self, header: &str) -> Result<String, ConfigError> {
        let body = toml::to_string(self)
            .map_err(|e| ConfigError::invalid("(configuration)", e.to_string()))?;
        Ok(format!("{header}{body}"))
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// The `*.toml` files of the drop-in directory, in name order; none when the
/// directory does not exist.
fn drop_ins(config: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = paths::drop_in_dir(config);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read {
            path: dir.clone(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".toml") && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Overlays `top` on `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendChoice;

    const MAIN: &str = "[model]\npath = \"/srv/m.gguf\"\nlabel = \"Ward 3\"\ndemo = false\n\n[engine]\nbackend = \"cpu\"\nqueue_length = 4\n";

    #[test]
    fn drop_ins_override_key_by_key_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("medgemmad.toml");
        std::fs::write(&main, MAIN).unwrap();
        let d = dir.path().join("medgemmad.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("50-setup.toml"),
            "[engine]\nbackend = \"auto\"\nmax_concurrent_generations = 8\n",
        )
        .unwrap();
        std::fs::write(d.join("90-local.toml"), "[engine]\nbackend = \"cuda\"\n").unwrap();
        std::fs::write(d.join("README"), "not read").unwrap();
        let loaded = Config::load(&main).unwrap();
        let e = &loaded.config.engine;
        assert_eq!(e.backend, BackendChoice::Cuda);
        assert_eq!(e.max_concurrent_generations, 8);
        assert_eq!(e.queue_length, 4, "keys a drop-in does not set are kept");
        assert_eq!(loaded.config.model.label, "Ward 3");
        assert_eq!(loaded.files.len(), 3);

        std::fs::write(d.join("60-typo.toml"), "[engine]\nqueue_lenght = 3\n").unwrap();
        let err = Config::load(&main).unwrap_err();
        assert!(err.to_string().contains("queue_lenght"), "{err}");
        assert!(err.to_string().contains("60-typo.toml"), "{err}");
    }

    #[test]
    fn setup_writes_only_its_keys_and_they_read_back() {
        let mut c = Config::from_toml(MAIN, Path::new("m.toml")).unwrap();
        c.engine.backend = BackendChoice::Auto;
        c.engine.max_concurrent_generations = 8;
        c.model.pins_file = Some("/var/lib/medgemma/model.pins.json".into());
        let text = c
            .to_drop_in(
                &[
                    "engine.backend",
                    "engine.max_concurrent_generations",
                    "model.pins_file",
                    "model.tokenizer_path",
                ],
                "# written by setup\n",
            )
            .unwrap();
        assert!(text.starts_with("# written by setup\n"));
        assert!(!text.contains("queue_length"), "{text}");
        assert!(
            !text.contains("tokenizer_path"),
            "unset keys are left out: {text}"
        );
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["engine"]["backend"].as_str(), Some("auto"));
        assert_eq!(
            table["engine"]["max_concurrent_generations"].as_integer(),
            Some(8)
        );
        let whole = c.to_toml("").unwrap();
        assert_eq!(Config::from_toml(&whole, Path::new("w.toml")).unwrap(), c);
    }

    #[test]
    fn the_decode_graph_is_on_unless_turned_off() {
        let c = Config::from_toml(MAIN, Path::new("m.toml")).unwrap();
        assert!(c.engine.decode_graph, "on by default");
        let off = Config::from_toml(
            &MAIN.replace("[engine]\n", "[engine]\ndecode_graph = false\n"),
            Path::new("m.toml"),
        )
        .unwrap();
        assert!(!off.engine.decode_graph);
        let err = Config::from_toml(
            &MAIN.replace("[engine]\n", "[engine]\ndecode_graph = \"no\"\n"),
            Path::new("m.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("decode_graph"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = Config::from_toml(&format!("{MAIN}queue_lenght = 3\n"), Path::new("c.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("queue_lenght"), "{err}");
    }
}
