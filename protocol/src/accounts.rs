//! The accounts file (`auth.accounts_dir/accounts.json`): who may log in,
//! with which role, and their personal API tokens. `medgemmactl user`
//! writes it (atomically, root only); the daemon reads it, read-only, and
//! reads it again when it changes.
//!
//! Passwords are stored as Argon2id PHC strings (the `argon2` crate's
//! defaults: 19 MiB, 2 passes, 1 lane, RFC 9106's second recommendation as
//! OWASP lists it); API tokens as the SHA-256 of their 256-bit secret (a
//! random secret needs no slow hash), compared in constant time. A token is
//! shown once, as `mgd_<token id>_<secret>`; the id lets the daemon find it
//! without comparing every hash.
//!
//! Each account has a stable pseudonymous id (`acct-` and 16 hex digits)
//! that the audit log records instead of the name; the names of the ids sit
//! beside the log in [`crate::paths::ACCOUNT_NAMES_FILE`] (an auditor
//! resolves them there; the log holds none).
//!
//! Owns: the accounts format, password and token hashing. Must never: hold
//! or print a password or a token secret (`Debug` shows neither hash), or
//! accept a name it cannot put in a log line unquoted.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The format tag of the accounts file.
pub const FORMAT: &str = "medgemma-accounts/1";

/// The accounts file's name inside `auth.accounts_dir`.
pub const ACCOUNTS_FILE: &str = "accounts.json";

/// Shortest password accepted (NIST SP 800-63B asks for at least 8).
pub const MIN_PASSWORD_CHARS: usize = 10;

/// Longest password accepted (the hash's input is bounded).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Longest user name.
pub const MAX_NAME_LEN: usize = 64;

/// Why the accounts file or a credential cannot be used. Messages carry
/// paths and names, never a password, a token or a hash.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The file cannot be read or written.
    #[error("cannot use the accounts file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not an accounts document.
    #[error(
        "the accounts file {path} is damaged ({reason}); restore it from a backup or recreate the accounts"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parser's explanation (no content).
        reason: String,
    },
    /// A user name breaks the rules.
    #[error(
        "a user name must be 1 to {MAX_NAME_LEN} characters of lower-case letters, digits and . _ - @ (got {len} characters)"
    )]
    BadName {
        /// Its length in characters.
        len: usize,
    },
    /// A password breaks the rules.
    #[error(
        "a password must have at least {MIN_PASSWORD_CHARS} characters and at most {MAX_PASSWORD_BYTES} bytes"
    )]
    BadPassword,
    /// The hash could not be computed.
    #[error("the password could not be hashed: {0}")]
    Hash(String),
    /// The OS random source failed.
    #[error("the system random source failed")]
    Random,
}

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Asks the model (UI and API).
    Clinician,
    /// Exports and verifies the audit log; cannot chat.
    Auditor,
}

impl Role {
    /// The role as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clinician => "clinician",
            Self::Auditor => "auditor",
        }
    }
}

/// The accounts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsFile {
    /// [`FORMAT`].
    pub format: String,
    /// Every account, disabled ones included (ids are never reused).
    pub accounts: Vec<Account>,
}

/// One account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Stable pseudonymous id (`acct-` + 16 hex digits), the audit log's actor.
    pub id: String,
    /// The login name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// A disabled account cannot log in or use its tokens.
    pub enabled: bool,
    /// Argon2id PHC string; none for an account that logs in through
    /// single sign-on only.
    pub password: Option<String>,
    /// When it was created (Unix seconds).
    pub created_unix: u64,
    /// When its password or state last changed: login sessions begun
    /// before are ended.
    pub changed_unix: u64,
    /// Personal API tokens.
    pub tokens: Vec<ApiToken>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("enabled", &self.enabled)
            .field("password", &self.password.as_ref().map(|_| "<hash>"))
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// A personal API token (its secret is not stored).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// `tok-` + 12 hex digits; part of the token string, and what the
    /// audit log records.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub sha256: String,
    /// When it was created (Unix seconds).
    pub created_unix: u64,
    /// A note from the administrator ("ward 3 scripts").
    pub label: Option<String>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("created_unix", &self.created_unix)
            .finish_non_exhaustive()
    }
}

impl AccountsFile {
    /// An empty accounts file.
    pub fn new() -> Self {
        Self {
            format: FORMAT.to_owned(),
            accounts: Vec::new(),
        }
    }

    /// The path of the file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(ACCOUNTS_FILE)
    }

    /// Reads the file in `dir`; a missing file (or directory) is no account.
    pub fn read(dir: &Path) -> Result<Self, AccountsError> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(source) => return Err(AccountsError::Io { path, source }),
        };
        let file: Self = serde_json::from_slice(&bytes).map_err(|e| AccountsError::Malformed {
            path: path.clone(),
            // serde_json's message names a position or a field, never a value.
            reason: format!("line {}, column {}", e.line(), e.column()),
        })?;
        if file.format != FORMAT {
            return Err(AccountsError::Malformed {
                path,
                reason: format!("format {:?}, expected {FORMAT:?}", file.format),
            });
        }
        Ok(file)
    }

    /// Writes the file into `dir` atomically (a temporary file, fsync,
    /// rename, fsync of the directory), mode 0640.
    pub fn write(&self, dir: &Path) -> Result<(), AccountsError> {
        let path = Self::path(dir);
        let tmp = dir.join(format!(".{ACCOUNTS_FILE}.tmp"));
        let io = |source| AccountsError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| AccountsError::Malformed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    /// The account called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// The account called `name`, to change.
    pub fn by_name_mut(&mut self, name: &str) -> Option<&mut Account> {
        self.accounts.iter_mut().find(|a| a.name == name)
    }

    /// The account with the pseudonymous id `id`.
    pub fn by_id(&self, id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

/// Checks a user name: 1 to [`MAX_NAME_LEN`] of `a-z 0-9 . _ - @`.
pub fn check_name(name: &str) -> Result<(), AccountsError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AccountsError::BadName {
            len: name.chars().count(),
        })
    }
}

/// Hashes a password with Argon2id (a fresh random salt).
pub fn hash_password(password: &str) -> Result<String, AccountsError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountsError::BadPassword);
    }
    // 16 random bytes, as RFC 9106 recommends for the salt.
    let mut bytes = [0u8; 16];
    getrandom(&mut bytes)?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| AccountsError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountsError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (constant time inside
/// the `argon2` crate). Any malformed hash is a mismatch.
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

fn random_hex<const N: usize>() -> Result<String, AccountsError> {
    let mut bytes = [0u8; N];
    getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn getrandom(bytes: &mut [u8]) -> Result<(), AccountsError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(bytes)
        .map_err(|_| AccountsError::Random)
}

/// A fresh pseudonymous account id: `acct-` and 16 hex digits (64 random bits).
pub fn new_account_id() -> Result<String, AccountsError> {
    Ok(format!("acct-{}", random_hex::<8>()?))
}

/// A fresh API token: what is stored, and the token string to show once.
pub fn new_token(
    label: Option<String>,
    now_unix: u64,
) -> Result<(ApiToken, String), AccountsError> {
    let id = format!("tok-{}", random_hex::<6>()?);
    let secret = random_hex::<32>()?;
    let token = ApiToken {
        sha256: sha256_hex(&secret),
        id: id.clone(),
        created_unix: now_unix,
        label,
    };
    Ok((token, format!("mgd_{id}_{secret}")))
}

/// Splits a token string into its id and secret; `None` when it is not one.
pub fn parse_token(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("mgd_")?;
    let (id, secret) = rest.rsplit_once('_')?;
    let id_ok =
        id.len() == 16 && id.starts_with("tok-") && id[4..].bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && secret_ok).then_some((id, secret))
}

/// Whether `secret` is the secret of `token` (constant time).
pub fn token_matches(token: &ApiToken, secret: &str) -> bool {
    let got = sha256_hex(secret);
    let (a, b) = (got.as_bytes(), token.sha256.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

/// One line of the names file beside the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameEntry {
    /// The pseudonymous id the log records.
    pub id: String,
    /// The user name.
    pub name: String,
    /// Since when (Unix seconds).
    pub since_unix: u64,
}

/// Appends `id`'s name to the names file in the audit directory (one JSON
/// line, `O_APPEND`, fsynced), unless the last entry for `id` already says so.
pub fn record_name(
    audit_dir: &Path,
    id: &str,
    name: &str,
    now_unix: u64,
) -> Result<(), AccountsError> {
    let path = audit_dir.join(crate::paths::ACCOUNT_NAMES_FILE);
    if read_names(audit_dir)?
        .iter()
        .rev()
        .find(|e| e.id == id)
        .is_some_and(|e| e.name == name)
    {
        return Ok(());
    }
    let io = |source| AccountsError::Io {
        path: path.clone(),
        source,
    };
    let entry = NameEntry {
        id: id.to_owned(),
        name: name.to_owned(),
        since_unix: now_unix,
    };
    let mut line = serde_json::to_vec(&entry).map_err(|e| AccountsError::Malformed {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(&path)
        .map_err(io)?;
    f.write_all(&line).and_then(|()| f.sync_data()).map_err(io)
}

/// Every entry of the names file, oldest first (none when it is missing).
pub fn read_names(audit_dir: &Path) -> Result<Vec<NameEntry>, AccountsError> {
    let path = audit_dir.join(crate::paths::ACCOUNT_NAMES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(AccountsError::Io { path, source }),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|_| AccountsError::Malformed {
                path: path.clone(),
                reason: format!("line {}", i + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse battery "));
        assert!(!verify_password("not a hash", "correct horse battery"));
        // Two hashes of one password differ (salt).
        assert_ne!(h, hash_password("correct horse battery").unwrap());
        assert!(matches!(
            hash_password("short"),
            Err(AccountsError::BadPassword)
        ));
    }

    #[test]
    fn tokens_are_shown_once_and_stored_hashed() {
        let (stored, shown) = new_token(Some("scripts".into()), 1).unwrap();
        let (id, secret) = parse_token(&shown).unwrap();
        assert_eq!(id, stored.id);
        assert!(!serde_json::to_string(&stored).unwrap().contains(secret));
        assert!(token_matches(&stored, secret));
        let mut wrong = secret.to_owned();
        wrong.replace_range(0..1, if secret.starts_with('0') { "1" } else { "0" });
        assert!(!token_matches(&stored, &wrong));
        assert!(parse_token("mgd_tok-123_abc").is_none());
        assert!(parse_token("Bearer x").is_none());
        assert!(!format!("{stored:?}").contains(&stored.sha256));
    }

    #[test]
    fn names_are_checked() {
        for ok in ["dr.li", "nurse_7", "a@ward3", "x"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "Dr.Li", "li wei", "a/b", &"a".repeat(65), "李"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_file_round_trips_and_the_names_file_appends() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AccountsFile::read(dir.path()).unwrap().accounts.is_empty());
        let mut file = AccountsFile::new();
        file.accounts.push(Account {
            id: new_account_id().unwrap(),
            name: "dr.li".into(),
            role: Role::Clinician,
            enabled: true,
            password: Some(hash_password("a long enough password").unwrap()),
            created_unix: 1,
            changed_unix: 1,
            tokens: vec![],
        });
        file.write(dir.path()).unwrap();
        let back = AccountsFile::read(dir.path()).unwrap();
        assert_eq!(back, file);
        assert!(!format!("{back:?}").contains("argon2"));
        let id = &back.accounts[0].id;
        record_name(dir.path(), id, "dr.li", 1).unwrap();
        record_name(dir.path(), id, "dr.li", 2).unwrap();
        let names = read_names(dir.path()).unwrap();
        assert_eq!(names.len(), 1, "an unchanged name is written once");
        assert_eq!(names[0].name, "dr.li");
    }
}
