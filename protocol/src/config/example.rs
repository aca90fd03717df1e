//! The documented configuration file, generated from the schema: every
//! section and key with its doc comment, its default, its limit, and the
//! value the Debian package sets. `packaging/medgemmad.example.toml` is this
//! text (a test keeps it current; `medgemmactl config example` prints it),
//! and the package installs it as `/etc/medgemma/medgemmad.toml`.
//!
//! Owns: the layout of the example. Must never: describe a key in words
//! that are not its doc comment.

use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::{Config, resolve, schema};

/// Width of the comment lines.
const WIDTH: usize = 78;

/// The example file (see the module doc).
pub fn example_toml() -> String {
    let root = schema();
    let mut out = String::new();
    comment(&mut out, text(&root, "description"), "");
    let order = declaration_order();
    for (section, prop) in properties(&root, &root, &order) {
        let inner = order
            .iter()
            .find(|(k, _)| k == section)
            .map(|(_, o)| o.0.as_slice())
            .unwrap_or_default();
        let sec = resolve(&root, prop);
        out.push('\n');
        // The section's own doc (first line is its `[name]` title).
        let doc = text(sec, "description");
        let body = doc
            .split_once("\n\n")
            .map_or("", |(_, rest)| rest)
            .to_owned();
        out.push_str(&format!("[{section}]\n"));
        if !body.trim().is_empty() {
            comment(&mut out, body, "");
            out.push('\n');
        }
        for (key, field) in properties(&root, sec, inner) {
            // A field's own doc and default sit beside its `$ref`.
            let mut doc = text(field, "description");
            let field = if field.get("$ref").is_some() {
                field
            } else {
                resolve(&root, field)
            };
            if let Some(limit) = limit(field) {
                doc.push_str(&format!(" ({limit})"));
            }
            comment(&mut out, doc, "");
            let (value, active) = if let Some(v) = field.get("x-package") {
                (v.clone(), true)
            } else if let Some(v) = field.get("default").filter(|v| !v.is_null()) {
                (v.clone(), true)
            } else if let Some(v) = field
                .get("examples")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
            {
                // Required keys show their example; optional ones stay commented.
                (v.clone(), required(sec, key))
            } else {
                (Value::String(String::new()), false)
            };
            let line = format!("{key} = {}", toml_value(&value));
            if active {
                out.push_str(&line);
            } else {
                out.push_str("# ");
                out.push_str(&line);
            }
            out.push('\n');
        }
    }
    out
}

fn required(section: &Value, key: &str) -> bool {
    section
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|k| k == key))
}

/// The schema's properties in the order `order` gives (declaration order),
/// any others after them.
fn properties<'a>(
    root: &'a Value,
    schema: &'a Value,
    order: &[(String, Nested)],
) -> Vec<(&'a String, &'a Value)> {
    let mut props: Vec<(&String, &Value)> = resolve(root, schema)
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    let rank = |k: &str| order.iter().position(|(o, _)| o == k).unwrap_or(usize::MAX);
    props.sort_by_key(|(k, _)| rank(k));
    props
}

/// Keys of a JSON object in the order they appear, with their own keys.
type Keys = Vec<(String, Nested)>;

/// The fields of [`Config`] in declaration order: serde serialises a struct's
/// fields in the order they are declared, and a JSON text keeps that order
/// (a `serde_json::Value` would sort it).
fn declaration_order() -> Keys {
    let sample = Config::from_toml(
        "[model]\npath = \"/m\"\nlabel = \"m\"\ndemo = false\n",
        std::path::Path::new("sample"),
    );
    let Some(text) = sample.ok().and_then(|c| serde_json::to_string(&c).ok()) else {
        return Keys::new();
    };
    let mut de = serde_json::Deserializer::from_str(&text);
    de.deserialize_any(KeyOrder).unwrap_or_default()
}

/// Records the key order of JSON objects.
struct KeyOrder;

impl<'de> Visitor<'de> for KeyOrder {
    type Value = Keys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
        let mut keys = Keys::new();
        while let Some(key) = map.next_key::<String>()? {
            let inner = map.next_value::<Nested>()?;
            keys.push((key, inner));
        }
        Ok(keys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Keys, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Keys::new())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Keys, E> {
        Ok(Keys::new())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Keys, E> {
        Ok(Keys::new())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Keys, E> {
        Ok(Keys::new())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Keys, E> {
        Ok(Keys::new())
    }
    fn visit_str<E>(self, _: &str) -> Result<Keys, E> {
        Ok(Keys::new())
    }
    fn visit_unit<E>(self) -> Result<Keys, E> {
        Ok(Keys::new())
    }
}

/// A value whose nested key order is recorded.
#[derive(Debug, Default)]
struct Nested(Keys);

impl<'de> serde::Deserialize<'de> for Nested {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyOrder).map(Nested)
    }
}

fn text(schema: &Value, field: &str) -> String {
    schema
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// "1-32" or "32-131072 tokens", from the declared range.
fn limit(field: &Value) -> Option<String> {
    let min = field.get("minimum")?;
    let max = field.get("maximum")?;
    let unit = field
        .get("x-unit")
        .and_then(Value::as_str)
        .map(|u| format!(" {u}"))
        .unwrap_or_default();
    Some(format!("{min}-{max}{unit}"))
}

/// Writes `text` as `# ` lines wrapped at [`WIDTH`]; paragraphs (blank lines
/// in the doc comment) stay apart.
fn comment(out: &mut String, text: String, indent: &str) {
    for (i, para) in text.split("\n\n").enumerate() {
        let words: Vec<&str> = para.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if i > 0 {
            out.push_str(indent);
            out.push_str("#\n");
        }
        let mut line = String::new();
        for w in words {
            if !line.is_empty() && line.len() + 1 + w.len() > WIDTH - 2 - indent.len() {
                out.push_str(&format!("{indent}# {line}\n"));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(w);
        }
        if !line.is_empty() {
            out.push_str(&format!("{indent}# {line}\n"));
        }
    }
}

fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => toml::Value::String(s.clone()).to_string(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Null => "\"\"".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn the_example_parses_and_gives_the_package_layout() {
        let text = example_toml();
        let mut c = Config::from_toml(&text, Path::new("example.toml")).unwrap();
        c.normalize();
        c.check().unwrap();
        let d = crate::config::EngineSection::default();
        assert_eq!(c.engine, d, "the example's engine section is the defaults");
        assert_eq!(
            c.server.admin_socket.as_deref(),
            Some(Path::new(crate::paths::ADMIN_SOCKET))
        );
        assert_eq!(c.audit.dir, Path::new(crate::paths::AUDIT_DIR));
        assert_eq!(
            c.sandbox.cache_dir.as_deref(),
            Some(Path::new(crate::paths::CACHE_DIR))
        );
        assert_eq!(c.model.path, Path::new(crate::paths::MODEL_DIR));
        // Every key is documented.
        for key in [
            "context_length",
            "max_concurrent_generations",
            "queue_length",
            "session_idle_timeout_secs",
            "signing_key_file",
        ] {
            let lines: Vec<&str> = text.lines().collect();
            let at = lines
                .iter()
                .position(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("{key} is not in the example"));
            assert!(lines[at - 1].starts_with("# "), "{key} has no doc line");
        }
        assert!(
            text.contains("(1-32)\nmax_concurrent_generations = 1\n"),
            "{text}"
        );
        assert!(text.contains("# device = \"0\"\n"), "{text}");
    }

    /// `packaging/medgemmad.example.toml` is generated: regenerate it with
    /// `cargo run -p medgemmactl -- config example > packaging/medgemmad.example.toml`.
    #[test]
    fn the_packaged_example_is_current() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/medgemmad.example.toml");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == example_toml(),
            "{} is out of date with the configuration types: run `cargo run -p medgemmactl -- config example > packaging/medgemmad.example.toml`",
            path.display()
        );
    }
}
