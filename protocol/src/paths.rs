//! The well-known paths of an installed appliance: one place for what the
//! Debian package, the systemd units, the configuration's defaults and
//! `medgemmactl` must agree on.
//!
//! The packaged units (`packaging/systemd/`) spell the same paths; a test in
//! this crate reads them and fails when one drifts.
//!
//! Owns: the paths of the package layout. Must never: hold a path of a
//! patient's data (there is none on disk).

/// The daemon's configuration file (a conffile of the package).
pub const CONFIG_FILE: &str = "/etc/medgemma/medgemmad.toml";

/// Drop-in files read after the configuration file, in name order
/// (`<config file without .toml>.d/*.toml`, e.g. `medgemmad.d/50-setup.toml`).
pub const DROP_IN_SUFFIX: &str = ".d";

/// The drop-in that `medgemmactl setup` writes its choices into.
pub const SETUP_DROP_IN: &str = "50-setup.toml";

/// The system prompt shipped as a conffile.
pub const SYSTEM_PROMPT_FILE: &str = "/etc/medgemma/system-prompt.txt";

/// The answer-style presets (conffiles): `<style>.<language>.txt`.
pub const STYLES_DIR: &str = "/etc/medgemma/styles";

/// The terminology `medgemmactl terms import` writes (read-only for the daemon).
pub const TERMS_DIR: &str = "/var/lib/medgemma/terms";

/// The accounts file's directory (`medgemmactl user`; read-only for the daemon).
pub const ACCOUNTS_DIR: &str = "/var/lib/medgemma/accounts";

/// The file beside the audit log that maps the pseudonymous account ids of
/// the records to user names (the log itself holds no names).
pub const ACCOUNT_NAMES_FILE: &str = "account-names.jsonl";

/// Where hospital IT copies the model (the configuration's example).
pub const MODEL_DIR: &str = "/srv/medgemma/medgemma-1.5-4b-it";

/// The UI socket (`medgemmad.socket` binds it; the loopback proxy reaches it).
pub const UI_SOCKET: &str = "/run/medgemma/ui.sock";

/// The admin socket (`medgemmad-admin.socket`; 0660, group [`ADMIN_GROUP`]).
pub const ADMIN_SOCKET: &str = "/run/medgemma-admin/admin.sock";

/// The group allowed on the admin socket besides root.
pub const ADMIN_GROUP: &str = "medgemma-admin";

/// The service user (from the package's sysusers.d file).
pub const SERVICE_USER: &str = "medgemma";

/// State: keys and pins.
pub const STATE_DIR: &str = "/var/lib/medgemma";

/// The audit log (kept when the package is removed).
pub const AUDIT_DIR: &str = "/var/log/medgemma";

/// The evolving audit chain key.
pub const AUDIT_KEY_FILE: &str = "/var/lib/medgemma/audit-key/current";

/// The content key (HMACs of questions and answers).
pub const CONTENT_KEY_FILE: &str = "/var/lib/medgemma/audit-key/content";

/// The Ed25519 export signing key (read by `medgemmactl audit export` only).
pub const SIGNING_KEY_FILE: &str = "/var/lib/medgemma/export-key/signing.pk8";

/// The pins of the model files written by `medgemmactl setup`.
pub const PINS_FILE: &str = "/var/lib/medgemma/model.pins.json";

/// The daemon's writable state directory (`sandbox.state_dir`).
pub const SANDBOX_STATE_DIR: &str = "/var/lib/medgemma/state";

/// GPU kernel caches (`sandbox.cache_dir`).
pub const CACHE_DIR: &str = "/var/cache/medgemma";

/// The loopback port the browser uses.
pub const LISTEN_PORT: u16 = 6006;

/// The drop-in directory of a configuration file: `/etc/medgemma/medgemmad.toml`
/// → `/etc/medgemma/medgemmad.d`.
pub fn drop_in_dir(config: &std::path::Path) -> std::path::PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    config.with_file_name(format!("{stem}{DROP_IN_SUFFIX}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn unit(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/systemd")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_packaged_units_spell_the_same_paths() {
        let admin = unit("medgemmad-admin.socket");
        assert!(
            admin.contains(&format!("ListenStream={ADMIN_SOCKET}\n")),
            "medgemmad-admin.socket"
        );
        assert!(admin.contains(&format!("SocketGroup={ADMIN_GROUP}\n")));
        let ui = unit("medgemmad.socket");
        assert!(
            ui.contains(&format!("ListenStream={UI_SOCKET}\n")),
            "medgemmad.socket"
        );
        let service = unit("medgemmad.service");
        assert!(service.contains(&format!("--config {CONFIG_FILE}")));
        assert!(service.contains(&format!("User={SERVICE_USER}\n")));
        assert!(service.contains(&format!("WorkingDirectory={CACHE_DIR}\n")));
        let proxy = unit("medgemma-proxy.socket");
        assert!(proxy.contains(&format!("127.0.0.1:{LISTEN_PORT}")));
    }

    #[test]
    fn drop_ins_sit_beside_the_file() {
        assert_eq!(
            drop_in_dir(Path::new(CONFIG_FILE)),
            Path::new("/etc/medgemma/medgemmad.d")
        );
    }
}
