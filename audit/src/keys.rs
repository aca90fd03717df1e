//! Keys: the initial key, the evolving per-record key, the key file that
//! holds it, and the content key that turns text into digests.
//!
//! Owns all secret material of the crate. Secrets never appear in `Debug`
//! output or errors. The evolving key moves forward only: from the key for
//! record `n` anyone can compute the keys for `n+1, n+2, …`, nobody can
//! compute the key for `n-1` (HKDF-SHA256 is one-way).
//!
//! Key schedule (all HKDF-SHA256 via `ring::hkdf`, salt [`HKDF_SALT`]):
//!
//! ```text
//! k_0      = initial key (32 random bytes, shown once to the administrator)
//! k_{n+1}  = HKDF(k_n, info = "medgemma-audit/v1 next")
//! mac_n    = HKDF(k_n, info = "medgemma-audit/v1 mac")   -- HMAC-SHA256 key of record n
//! ```
//!
//! Erasure is best effort: the old key is overwritten in place in memory and
//! replaced on disk by an atomic rename; copies in freed filesystem blocks,
//! SSD spare cells or swap are outside what a process can erase (see the
//! crate's threat model).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

use crate::error::AuditError;
use crate::event::Recovery;
use crate::types::{Digest, LogDay, Mac, Sha256, parse_hex32};

/// HKDF salt: a fixed domain-separation label (RFC 5869 §3.1 allows a
/// non-secret constant).
pub const HKDF_SALT: &[u8] = b"medgemma-audit/v1 key evolution";
const INFO_NEXT: &[u8] = b"medgemma-audit/v1 next";
const INFO_MAC: &[u8] = b"medgemma-audit/v1 mac";

/// Fills an array from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], AuditError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| AuditError::Random)?;
    Ok(out)
}

/// Overwrites a secret buffer. `black_box` keeps the compiler from dropping
/// the write as dead; this is best effort without `unsafe` volatile writes.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

/// The key the chain starts from. [`create_key`] returns it exactly once; the
/// administrator keeps it offline and gives it back to [`crate::verify`].
pub struct InitialKey([u8; 32]);

const DISPLAY_PREFIX: &str = "MGAK1";

impl InitialKey {
    /// The key for display and safekeeping: `MGAK1-` followed by eight groups
    /// of eight hex digits and one group of check digits (the first four
    /// bytes of the key's SHA-256), e.g. `MGAK1-0123abcd-…-9f8e7d6c`.
    #[must_use]
    pub fn display(&self) -> String {
        let mut s = String::from(DISPLAY_PREFIX);
        for chunk in self.0.chunks(4) {
            s.push('-');
            s.push_str(&hex::encode(chunk));
        }
        s.push('-');
        s.push_str(&hex::encode(&Sha256::of(&self.0).0[..4]));
        s
    }

    /// Parses what [`display`](Self::display) printed. Case, spaces and
    /// dashes are ignored; the check digits must match.
    ///
    /// # Errors
    /// [`AuditError::InvalidInitialKey`] when the text is not a key or a digit
    /// was mistyped (the error does not repeat the text).
    pub fn parse(text: &str) -> Result<Self, AuditError> {
        let compact: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        let digits = compact
            .strip_prefix(&DISPLAY_PREFIX.to_ascii_lowercase())
            .ok_or(AuditError::InvalidInitialKey {
                problem: "it does not start with MGAK1",
            })?;
        if digits.len() != 72 {
            return Err(AuditError::InvalidInitialKey {
                problem: "it does not have 72 hex digits after MGAK1",
            });
        }
        let mut key = [0u8; 32];
        let mut check = [0u8; 4];
        hex::decode_to_slice(&digits[..64], &mut key)
            .and_then(|()| hex::decode_to_slice(&digits[64..], &mut check))
            .map_err(|_| AuditError::InvalidInitialKey {
                problem: "it contains a character that is not a hex digit",
            })?;
        if Sha256::of(&key).0[..4] != check {
            wipe(&mut key);
            return Err(AuditError::InvalidInitialKey {
                problem: "the check digits do not match (a digit was mistyped)",
            });
        }
        Ok(Self(key))
    }
}

impl fmt::Debug for InitialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InitialKey(<secret>)")
    }
}

impl Drop for InitialKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// The chain key for one record (the state the writer keeps). Exposed for
/// verifiers and tests; it never leaves memory except in the key file.
pub struct EpochKey {
    seq: u64,
    secret: [u8; 32],
}

/// HKDF-Extract of a chain secret; both the next key and the MAC key are
/// expanded from it with different `info` labels.
fn extract(secret: &[u8; 32]) -> hkdf::Prk {
    hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret)
}

impl EpochKey {
    /// The key for record 0.
    #[must_use]
    pub fn from_initial(initial: &InitialKey) -> Self {
        Self {
            seq: 0,
            secret: initial.0,
        }
    }

    /// Reads the writer's current key from a key file (what an intruder who
    /// copies the key file gets).
    ///
    /// # Errors
    /// [`AuditError::KeyFile`] when it cannot be read,
    /// [`AuditError::KeyFileInvalid`] when it is damaged.
    pub fn from_key_file(path: &Path) -> Result<Self, AuditError> {
        Ok(KeyFile::read(path)?.key)
    }

    /// The sequence number of the record this key MACs.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Moves to the next record's key and overwrites this one.
    pub fn advance(&mut self) {
        let prk = extract(&self.secret);
        let mut next = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 255*32 limit, so expand and
        // fill cannot fail.
        if let Ok(okm) = prk.expand(&[INFO_NEXT], hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut next);
        }
        self.secret = next;
        wipe(&mut next);
        self.seq += 1;
    }

    /// Advances until the key is the one for record `seq` (no-op if already
    /// there; keys cannot go back).
    pub fn advance_to(&mut self, seq: u64) {
        while self.seq < seq {
            self.advance();
        }
    }

    fn mac_key(&self) -> hmac::Key {
        let prk = extract(&self.secret);
        match prk.expand(&[INFO_MAC], hmac::HMAC_SHA256) {
            Ok(okm) => okm.into(),
            // Unreachable (see `advance`); a key nobody can match is the safe
            // fallback.
            Err(_) => hmac::Key::new(hmac::HMAC_SHA256, &random_bytes::<32>().unwrap_or([0; 32])),
        }
    }

    /// HMAC-SHA256 of a record body under this record's MAC key.
    #[must_use]
    pub fn mac(&self, body: &[u8]) -> Mac {
        let tag = hmac::sign(&self.mac_key(), body);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Mac(out)
    }

    /// Checks a record body's MAC in constant time.
    #[must_use]
    pub fn verify_mac(&self, body: &[u8], mac: &Mac) -> bool {
        hmac::verify(&self.mac_key(), body, &mac.0).is_ok()
    }

    /// A non-secret fingerprint (first 8 bytes of SHA-256 of the key), to
    /// compare keys without revealing them.
    #[must_use]
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&Sha256::of(&self.secret).0[..8]);
        out
    }
}

impl fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EpochKey {{ seq: {}, secret: <secret> }}", self.seq)
    }
}

impl Drop for EpochKey {
    fn drop(&mut self) {
        wipe(&mut self.secret);
    }
}

/// Creates the key file for a new log and returns the initial key, to be
/// shown once to the administrator and kept offline.
///
/// The key file's directory should hold nothing else and be readable only by
/// the daemon's user; the file is created with mode 0600.
///
/// # Errors
/// [`AuditError::KeyFileExists`] if the file exists (a second setup must
/// never silently replace a running log's key); I/O errors as
/// [`AuditError::KeyFile`].
pub fn create_key(key_file: &Path) -> Result<InitialKey, AuditError> {
    if key_file.exists() {
        return Err(AuditError::KeyFileExists {
            path: key_file.to_path_buf(),
        });
    }
    let initial = InitialKey(random_bytes()?);
    let kf = KeyFile {
        key: EpochKey::from_initial(&initial),
        head: Mac::GENESIS,
        pending_cuts: Vec::new(),
    };
    let dir = open_parent_dir(key_file)?;
    kf.save(key_file, &dir, true)?;
    Ok(initial)
}

/// Opens the directory holding `path`, to fsync it after a rename.
pub(crate) fn open_parent_dir(path: &Path) -> Result<File, AuditError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent).map_err(|source| AuditError::KeyFile {
        path: parent.to_path_buf(),
        source,
    })
}

/// The writer's persistent state: the key for the next record, the MAC of
/// the last record, and cuts that still have to be logged.
///
/// Text format (one `name=value` per line, last line a checksum):
///
/// ```text
/// medgemma-audit key file v1
/// next_seq=<decimal>
/// key=<64 hex>
/// head=<64 hex>
/// cut=<YYYY-MM-DD> <offset> <len> <sha256 hex>     (zero or more)
/// check=<16 hex: first 8 bytes of SHA-256 of all lines above>
/// ```
#[derive(Debug)]
pub(crate) struct KeyFile {
    pub(crate) key: EpochKey,
    /// MAC of record `key.seq - 1` (genesis value when `key.seq == 0`).
    pub(crate) head: Mac,
    pub(crate) pending_cuts: Vec<Recovery>,
}

const KEY_FILE_MAGIC: &str = "medgemma-audit key file v1";

/// A key file's text; I/O errors as [`AuditError::KeyFile`].
fn read_key_text(path: &Path) -> Result<String, AuditError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|source| AuditError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(text)
}

impl KeyFile {
    pub(crate) fn read(path: &Path) -> Result<Self, AuditError> {
        let text = read_key_text(path)?;
        let invalid = |problem: &'static str| AuditError::KeyFileInvalid {
            path: path.to_path_buf(),
            problem,
        };
        let check_at = text
            .rfind("check=")
            .ok_or_else(|| invalid("no check line"))?;
        let (covered, check_line) = text.split_at(check_at);
        let want = hex::encode(&Sha256::of(covered.as_bytes()).0[..8]);
        if check_line.trim_end() != format!("check={want}") {
            return Err(invalid("checksum mismatch (damaged or edited)"));
        }
        let mut lines = covered.lines();
        if lines.next() != Some(KEY_FILE_MAGIC) {
            return Err(invalid("not an audit key file"));
        }
        let mut field = |name: &str| -> Result<&str, AuditError> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix('='))
                .ok_or_else(|| invalid("missing field"))
        };
        let seq: u64 = field("next_seq")?
            .parse()
            .map_err(|_| invalid("bad next_seq"))?;
        let secret = parse_hex32(field("key")?).ok_or_else(|| invalid("bad key"))?;
        let head = Mac(parse_hex32(field("head")?).ok_or_else(|| invalid("bad head"))?);
        let mut pending_cuts = Vec::new();
        for line in lines {
            let cut = line
                .strip_prefix("cut=")
                .and_then(parse_cut)
                .ok_or_else(|| invalid("bad cut line"))?;
            pending_cuts.push(cut);
        }
        Ok(Self {
            key: EpochKey { seq, secret },
            head,
            pending_cuts,
        })
    }

    fn render(&self) -> String {
        let mut s = format!(
            "{KEY_FILE_MAGIC}\nnext_seq={}\nkey={}\nhead={}\n",
            self.key.seq,
            hex::encode(self.key.secret),
            self.head.to_hex()
        );
        for cut in &self.pending_cuts {
            s.push_str(&format!(
                "cut={} {} {} {}\n",
                cut.file,
                cut.offset,
                cut.cut_len,
                cut.cut_sha256.to_hex()
            ));
        }
        let check = hex::encode(&Sha256::of(s.as_bytes()).0[..8]);
        s.push_str(&format!("check={check}\n"));
        s
    }

    /// Replaces the key file atomically: write `<name>.tmp`, fsync, rename
    /// over the old file, fsync the directory. `durable = false` skips the
    /// fsyncs (benchmarks only).
    pub(crate) fn save(&self, path: &Path, dir: &File, durable: bool) -> Result<(), AuditError> {
        let tmp = tmp_path(path);
        let err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| AuditError::KeyFile { path: p, source }
        };
        let mut text = self.render();
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err(&tmp))?;
            f.write_all(text.as_bytes()).map_err(err(&tmp))?;
            if durable {
                f.sync_all().map_err(err(&tmp))?;
            }
            std::fs::rename(&tmp, path).map_err(err(path))?;
            if durable {
                dir.sync_all().map_err(err(path))?;
            }
            Ok(())
        })();
        // Overwrite our copy of the rendered secret.
        let mut bytes = std::mem::take(&mut text).into_bytes();
        wipe(&mut bytes);
        result
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn parse_cut(s: &str) -> Option<Recovery> {
    let mut it = s.split(' ');
    let file = LogDay::parse(it.next()?)?;
    let offset = it.next()?.parse().ok()?;
    let cut_len = it.next()?.parse().ok()?;
    let cut_sha256 = Sha256(parse_hex32(it.next()?)?);
    if it.next().is_some() {
        return None;
    }
    Some(Recovery {
        file,
        offset,
        cut_len,
        cut_sha256,
    })
}

/// Computes the keyed digests of conversation text (input and output) with
/// the content key. The text itself is never stored; an auditor who holds
/// the content key and a transcript can recompute and compare.
///
/// The content key is separate from the chain key: it does not evolve (so
/// digests stay comparable over time) and it must not be derivable from the
/// log's keys.
pub struct ContentHasher {
    key: hmac::Key,
}

const CONTENT_KEY_MAGIC: &str = "medgemma-audit content key v1";

impl ContentHasher {
    /// Builds a hasher from raw key bytes (at least 32).
    ///
    /// # Errors
    /// [`AuditError::ContentKeyTooShort`] for fewer than 32 bytes.
    pub fn from_key_bytes(key: &[u8]) -> Result<Self, AuditError> {
        if key.len() < 32 {
            return Err(AuditError::ContentKeyTooShort);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }

    /// Loads the content key written by [`create_content_key`].
    ///
    /// # Errors
    /// I/O errors as [`AuditError::KeyFile`]; a damaged file as
    /// [`AuditError::KeyFileInvalid`].
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let text = read_key_text(path)?;
        let mut lines = text.lines();
        let mut key = match (
            lines.next(),
            lines.next().and_then(|l| l.strip_prefix("key=")),
        ) {
            (Some(CONTENT_KEY_MAGIC), Some(hex)) => {
                parse_hex32(hex).ok_or(AuditError::KeyFileInvalid {
                    path: path.to_path_buf(),
                    problem: "bad content key",
                })?
            }
            _ => {
                return Err(AuditError::KeyFileInvalid {
                    path: path.to_path_buf(),
                    problem: "not a content key file",
                });
            }
        };
        let hasher = Self::from_key_bytes(&key);
        wipe(&mut key);
        let mut bytes = text.into_bytes();
        wipe(&mut bytes);
        hasher
    }

    /// The keyed digest (HMAC-SHA256) of a text.
    #[must_use]
    pub fn hash(&self, text: &str) -> Digest {
        let tag = hmac::sign(&self.key, text.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Digest(out)
    }
}

impl fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentHasher(<secret>)")
    }
}

/// Creates a new random content key file (mode 0600) for
/// [`ContentHasher::load`]. Back it up: without it, digests in the log can no
/// longer be matched against transcripts (the chain still verifies).
///
/// # Errors
/// [`AuditError::KeyFileExists`] if the file exists; I/O errors as
/// [`AuditError::KeyFile`].
pub fn create_content_key(path: &Path) -> Result<(), AuditError> {
    let mut key: [u8; 32] = random_bytes()?;
    let mut text = format!("{CONTENT_KEY_MAGIC}\nkey={}\n", hex::encode(key));
    wipe(&mut key);
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                AuditError::KeyFileExists {
                    path: path.to_path_buf(),
                }
            } else {
                AuditError::KeyFile {
                    path: path.to_path_buf(),
                    source,
                }
            }
        });
    let mut bytes = std::mem::take(&mut text).into_bytes();
    wipe(&mut bytes);
    result?;
    let dir = open_parent_dir(path)?;
    dir.sync_all().map_err(|source| AuditError::KeyFile {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_key_display_round_trips_and_catches_typos() {
        let k = InitialKey(random_bytes().unwrap());
        let shown = k.display();
        assert_eq!(shown.len(), 5 + 9 * 9);
        let back = InitialKey::parse(&shown.to_lowercase().replace('-', " ")).unwrap();
        assert_eq!(back.0, k.0);
        // Change one key digit.
        let mut typo: Vec<char> = shown.chars().collect();
        typo[7] = if typo[7] == '0' { '1' } else { '0' };
        let typo: String = typo.into_iter().collect();
        assert!(InitialKey::parse(&typo).is_err());
        assert_eq!(format!("{k:?}"), "InitialKey(<secret>)");
    }

    #[test]
    fn keys_evolve_and_differ() {
        let k = InitialKey([7; 32]);
        let mut a = EpochKey::from_initial(&k);
        let m0 = a.mac(b"x");
        a.advance();
        assert_eq!(a.seq(), 1);
        assert_ne!(a.mac(b"x"), m0);
        let mut b = EpochKey::from_initial(&k);
        b.advance_to(1);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert!(b.verify_mac(b"x", &a.mac(b"x")));
    }
}
