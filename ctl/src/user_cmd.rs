//! `medgemmactl user add | disable | enable | passwd | list | token`: the
//! accounts of the appliance (`auth.accounts_dir/accounts.json`, format in
//! `medgemma_protocol::accounts`).
//!
//! No account and no password exist until an administrator makes one here
//! (or in `setup --user`). A password is typed twice on the terminal, with
//! echo off, or read from standard input (`--password-stdin`, for scripts);
//! it is hashed with Argon2id before anything is written and never shown,
//! logged or stored. An API token is shown once, when it is made; only its
//! SHA-256 is kept.
//!
//! Every change is written atomically under an exclusive lock, the account's
//! name is noted beside the audit log (the log records only the
//! pseudonymous id), and the change is recorded in the audit log: through
//! the daemon while it runs (which then reads the accounts again and ends
//! the sessions of a disabled account at once), else directly.
//!
//! Owns: account administration. Must never: print a password or a stored
//! hash, or print a token after the command that made it.

use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use clap::{Args, Subcommand, ValueEnum};
use medgemma_audit::{AccountChangeKind, ActorId, Event};
use medgemma_protocol::accounts::{
    Account, AccountsFile, Role, check_name, hash_password, new_account_id, new_token, record_name,
};
use medgemma_protocol::admin::{ACCOUNT_EVENT_ROUTE, AccountEvent};

use crate::daemon_config::DaemonConfig;
use crate::{EXIT_OK, Report, audit_cmd};

/// `user …`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account (the password is asked for twice, or read with --password-stdin).
    Add(AddArgs),
    /// Disable an account: it can no longer log in or use its tokens; its sessions end.
    Disable {
        /// The user name.
        name: String,
    },
    /// Enable a disabled account again.
    Enable {
        /// The user name.
        name: String,
    },
    /// Set an account's password (its login sessions end).
    Passwd {
        /// The user name.
        name: String,
        /// Read the password from standard input (one line) instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the accounts (never a password or a token).
    List,
    /// Personal API tokens (Authorization: Bearer) for scripts and OpenAI clients.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `user token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for an account and show it once.
    Create {
        /// The user name.
        name: String,
        /// A note to recognise it by ("ward 3 scripts").
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a token (its id as `user token list` shows it).
    Revoke {
        /// The user name.
        name: String,
        /// The token's id (tok-…).
        id: String,
    },
    /// List an account's tokens (ids and dates, never the tokens).
    List {
        /// The user name.
        name: String,
    },
}

/// A role, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Asks the model.
    Clinician,
    /// Exports and verifies the audit log.
    Auditor,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Clinician => Role::Clinician,
            RoleArg::Auditor => Role::Auditor,
        }
    }
}

/// `user add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The user name: lower-case letters, digits and . _ - @.
    pub name: String,
    /// What the account may do.
    #[arg(long, value_enum, default_value = "clinician")]
    pub role: RoleArg,
    /// Read the password from standard input (one line) instead of the terminal.
    #[arg(long, conflicts_with = "no_password")]
    pub password_stdin: bool,
    /// No password: the account logs in through single sign-on only.
    #[arg(long)]
    pub no_password: bool,
}

/// Runs a `user` subcommand.
pub fn run(config: &Path, cmd: &UserCommand) -> Report {
    let cfg = match DaemonConfig::load(config) {
        Ok(c) => c,
        Err(e) => return Report::error(e.to_string()),
    };
    let result = match cmd {
        UserCommand::Add(a) => add(&cfg, a),
        UserCommand::Disable { name } => set_enabled(&cfg, name, false),
        UserCommand::Enable { name } => set_enabled(&cfg, name, true),
        UserCommand::Passwd {
            name,
            password_stdin,
        } => passwd(&cfg, name, *password_stdin),
        UserCommand::List => list(&cfg),
        UserCommand::Token(TokenCommand::Create { name, label }) => {
            token_create(&cfg, name, label.clone())
        }
        UserCommand::Token(TokenCommand::Revoke { name, id }) => token_revoke(&cfg, name, id),
        UserCommand::Token(TokenCommand::List { name }) => token_list(&cfg, name),
    };
    result.unwrap_or_else(Report::error)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads a password: from standard input (one line), or twice from the
/// terminal with echo off.
pub fn read_password(stdin: bool) -> Result<String, String> {
    if stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    let first = prompt_hidden("New password: ")?;
    let second = prompt_hidden("The same password again: ")?;
    if first != second {
        return Err("the two passwords differ; nothing was changed".to_owned());
    }
    Ok(first)
}

/// One line from the terminal with echo off.
fn prompt_hidden(prompt: &str) -> Result<String, String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).map_err(|_| {
        "standard input is not a terminal: type the password on a terminal, or give --password-stdin".to_owned()
    })?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| e.to_string())?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Changes the accounts file under an exclusive lock: reads it, calls
/// `change`, writes it back (owner root, group the daemon's, mode 0640).
fn edit<T>(
    cfg: &DaemonConfig,
    change: impl FnOnce(&mut AccountsFile) -> Result<T, String>,
) -> Result<T, String> {
    let dir = cfg.auth().accounts_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock_path = dir.join(".lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))?;
    let mut file = AccountsFile::read(&dir).map_err(|e| e.to_string())?;
    let out = change(&mut file)?;
    file.write(&dir).map_err(|e| e.to_string())?;
    give_to_daemon(cfg, &dir)?;
    Ok(out)
}

/// Lets the daemon's group read the accounts (the daemon's user owns the
/// audit directory): root keeps ownership, the group reads.
fn give_to_daemon(cfg: &DaemonConfig, dir: &Path) -> Result<(), String> {
    let me = std::fs::metadata("/proc/self").map_err(|e| e.to_string())?;
    let Ok(audit) = std::fs::metadata(&cfg.audit().dir) else {
        return Ok(());
    };
    if me.uid() != 0 {
        return Ok(());
    }
    for p in [dir.to_path_buf(), AccountsFile::path(dir)] {
        std::os::unix::fs::chown(&p, Some(0), Some(audit.gid()))
            .map_err(|e| format!("cannot give {} to the daemon's group: {e}", p.display()))?;
    }
    Ok(())
}

/// Notes the name beside the audit log and records the change in it.
fn audited(
    cfg: &DaemonConfig,
    account: &Account,
    change: AccountChangeKind,
) -> Result<String, String> {
    let audit_dir = cfg.audit().dir;
    record_name(&audit_dir, &account.id, &account.name, now_unix()).map_err(|e| e.to_string())?;
    let name = serde_json::to_value(change)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let body = serde_json::to_value(AccountEvent {
        account: account.id.clone(),
        change: name,
    })
    .map_err(|e| e.to_string())?;
    let id = ActorId::new(&account.id).map_err(|e| e.to_string())?;
    audit_cmd::record(cfg, &audit_dir, ACCOUNT_EVENT_ROUTE, &body, |actor| {
        Event::AccountChange {
            actor,
            account: id,
            change,
        }
    })
    .map(str::to_owned)
    .map_err(|e| {
        format!("the accounts file was changed, but the change could not be recorded in the audit log: {e}")
    })
}

/// Creates an account; returns it. (Also `setup --user`.)
pub fn add_account(
    cfg: &DaemonConfig,
    name: &str,
    role: Role,
    password: Option<&str>,
) -> Result<(Account, String), String> {
    check_name(name).map_err(|e| e.to_string())?;
    let hash = password
        .map(hash_password)
        .transpose()
        .map_err(|e| e.to_string())?;
    let now = now_unix();
    let account = edit(cfg, |file| {
        if file.by_name(name).is_some() {
            return Err(format!(
                "an account named {name:?} exists already (medgemmactl user list)"
            ));
        }
        let account = Account {
            id: new_account_id().map_err(|e| e.to_string())?,
            name: name.to_owned(),
            role,
            enabled: true,
            password: hash,
            created_unix: now,
            changed_unix: now,
            tokens: Vec::new(),
        };
        file.accounts.push(account.clone());
        Ok(account)
    })?;
    let how = audited(cfg, &account, AccountChangeKind::Created)?;
    Ok((account, how))
}

fn add(cfg: &DaemonConfig, a: &AddArgs) -> Result<Report, String> {
    check_name(&a.name).map_err(|e| e.to_string())?;
    let password = if a.no_password {
        None
    } else {
        Some(read_password(a.password_stdin)?)
    };
    let (account, how) = add_account(cfg, &a.name, a.role.into(), password.as_deref())?;
    Ok(Report {
        code: EXIT_OK,
        text: format!(
            "created {} ({}, id {}{}); recorded in the audit log {how}",
            account.name,
            account.role.as_str(),
            account.id,
            if password.is_none() {
                ", single sign-on only"
            } else {
                ""
            }
        ),
        json: serde_json::json!({
            "ok": true, "name": account.name, "id": account.id,
            "role": account.role.as_str(), "recorded": how,
        }),
    })
}

fn set_enabled(cfg: &DaemonConfig, name: &str, enabled: bool) -> Result<Report, String> {
    let account = edit(cfg, |file| {
        let a = file
            .by_name_mut(name)
            .ok_or_else(|| format!("there is no account named {name:?}"))?;
        a.enabled = enabled;
        a.changed_unix = now_unix();
        Ok(a.clone())
    })?;
    let change = if enabled {
        AccountChangeKind::Enabled
    } else {
        AccountChangeKind::Disabled
    };
    let how = audited(cfg, &account, change)?;
    Ok(Report {
        code: EXIT_OK,
        text: format!(
            "{} is {}; recorded in the audit log {how}",
            account.name,
            if enabled {
                "enabled"
            } else {
                "disabled (its sessions end)"
            }
        ),
        json: serde_json::json!({ "ok": true, "name": account.name, "enabled": enabled, "recorded": how }),
    })
}

fn passwd(cfg: &DaemonConfig, name: &str, stdin: bool) -> Result<Report, String> {
    if AccountsFile::read(&cfg.auth().accounts_dir)
        .map_err(|e| e.to_string())?
        .by_name(name)
        .is_none()
    {
        return Err(format!("there is no account named {name:?}"));
    }
    let password = read_password(stdin)?;
    let hash = hash_password(&password).map_err(|e| e.to_string())?;
    let account = edit(cfg, |file| {
        let a = file
            .by_name_mut(name)
            .ok_or_else(|| format!("there is no account named {name:?}"))?;
        a.password = Some(hash);
        a.changed_unix = now_unix();
        Ok(a.clone())
    })?;
    let how = audited(cfg, &account, AccountChangeKind::PasswordChanged)?;
    Ok(Report {
        code: EXIT_OK,
        text: format!(
            "the password of {} is set (its login sessions end); recorded in the audit log {how}",
            account.name
        ),
        json: serde_json::json!({ "ok": true, "name": account.name, "recorded": how }),
    })
}

fn list(cfg: &DaemonConfig) -> Result<Report, String> {
    let file = AccountsFile::read(&cfg.auth().accounts_dir).map_err(|e| e.to_string())?;
    let mut text = String::new();
    let mut rows = Vec::new();
    for a in &file.accounts {
        text.push_str(&format!(
            "{:<24} {:<10} {:<9} {} tokens  id {}\n",
            a.name,
            a.role.as_str(),
            if a.enabled { "enabled" } else { "DISABLED" },
            a.tokens.len(),
            a.id
        ));
        rows.push(serde_json::json!({
            "name": a.name, "id": a.id, "role": a.role.as_str(), "enabled": a.enabled,
            "password": a.password.is_some(), "tokens": a.tokens.len(),
            "created_unix": a.created_unix,
        }));
    }
    if rows.is_empty() {
        text = "no account yet: create one with medgemmactl user add NAME".to_owned();
    }
    Ok(Report {
        code: EXIT_OK,
        text,
        json: serde_json::json!({ "ok": true, "accounts": rows }),
    })
}

fn token_create(cfg: &DaemonConfig, name: &str, label: Option<String>) -> Result<Report, String> {
    let (account, shown, id) = edit(cfg, |file| {
        let a = file
            .by_name_mut(name)
            .ok_or_else(|| format!("there is no account named {name:?}"))?;
        let (token, shown) = new_token(label, now_unix()).map_err(|e| e.to_string())?;
        let id = token.id.clone();
        a.tokens.push(token);
        Ok((a.clone(), shown, id))
    })?;
    let how = audited(cfg, &account, AccountChangeKind::TokenCreated)?;
    Ok(Report {
        code: EXIT_OK,
        text: format!(
            "token {id} for {} (shown once; keep it like a password):\n\n    {shown}\n\nUse it as Authorization: Bearer <token>, e.g. openai.OpenAI(api_key=...). Recorded in the audit log {how}.",
            account.name
        ),
        json: serde_json::json!({
            "ok": true, "name": account.name, "id": id, "token": shown,
            "notice": "shown once: only its hash is kept", "recorded": how,
        }),
    })
}

fn token_revoke(cfg: &DaemonConfig, name: &str, id: &str) -> Result<Report, String> {
    let account = edit(cfg, |file| {
        let a = file
            .by_name_mut(name)
            .ok_or_else(|| format!("there is no account named {name:?}"))?;
        let before = a.tokens.len();
        a.tokens.retain(|t| t.id != id);
        if a.tokens.len() == before {
            return Err(format!(
                "{name} has no token {id:?} (medgemmactl user token list {name})"
            ));
        }
        Ok(a.clone())
    })?;
    let how = audited(cfg, &account, AccountChangeKind::TokenRevoked)?;
    Ok(Report {
        code: EXIT_OK,
        text: format!(
            "revoked token {id} of {}; recorded in the audit log {how}",
            account.name
        ),
        json: serde_json::json!({ "ok": true, "name": account.name, "revoked": id, "recorded": how }),
    })
}

fn token_list(cfg: &DaemonConfig, name: &str) -> Result<Report, String> {
    let file = AccountsFile::read(&cfg.auth().accounts_dir).map_err(|e| e.to_string())?;
    let a = file
        .by_name(name)
        .ok_or_else(|| format!("there is no account named {name:?}"))?;
    let mut text = String::new();
    for t in &a.tokens {
        text.push_str(&format!(
            "{}  created {}  {}\n",
            t.id,
            t.created_unix,
            t.label.as_deref().unwrap_or("")
        ));
    }
    if a.tokens.is_empty() {
        text = format!("{name} has no token");
    }
    let rows: Vec<_> = a
        .tokens
        .iter()
        .map(
            |t| serde_json::json!({ "id": t.id, "created_unix": t.created_unix, "label": t.label }),
        )
        .collect();
    Ok(Report {
        code: EXIT_OK,
        text,
        json: serde_json::json!({ "ok": true, "name": name, "tokens": rows }),
    })
}
