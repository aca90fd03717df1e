//! Who is asking: accounts, login sessions, lockout, API tokens and the
//! single sign-on header (`[auth]`).
//!
//! - **accounts** (the default): the accounts file (`medgemmactl user`,
//!   read-only here, read again when it changes) holds Argon2id password
//!   hashes and SHA-256 hashes of API tokens. `POST /api/login` checks a
//!   password (a name that matches no account costs the same hash, so a
//!   name cannot be probed by timing), starts a session and sets the
//!   `mgd_session` cookie (`HttpOnly; SameSite=Strict; Path=/`, plus
//!   `Secure` when the page came through an https origin). A session ends
//!   at `POST /api/logout`, after `auth.idle_logout_secs` without an API
//!   request (reading `/api/status` does not count), or when its account is
//!   disabled or its password changes; a user's conversations are dropped
//!   when their last session ends. `auth.lockout_after_failures` wrong
//!   passwords in a row lock the name out for `auth.lockout_secs`, doubling
//!   with each lockout up to an hour (429 `locked_out` with
//!   `retry_after_s`). The OpenAI API takes `Authorization: Bearer` with a
//!   personal token instead of a session.
//! - **sso**: a reverse proxy on this host authenticates and names the
//!   user in `auth.sso_header`. The header is read only on connections
//!   whose peer (`SO_PEERCRED`) is `auth.sso_proxy_user`; from anyone else
//!   it is ignored. The name must be an enabled account; the "session"
//!   (for idle logout, counts and audit) is kept per account.
//! - **open**: nobody logs in; conversations belong to the browser's
//!   client-id cookie (development).
//!
//! Audited (pseudonymous account ids, never names): logins and failed
//! logins, lockouts, logouts with their reason, token use.
//!
//! Owns: credentials checks and sessions. Must never: log, return or keep a
//! password or a token (only their hashes are compared), or trust the SSO
//! header from any peer but the configured proxy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::header::{AUTHORIZATION, COOKIE, HeaderValue, SET_COOKIE};
use hyper::{HeaderMap, StatusCode};
use medgemma_audit::{ActorId, Event, LoginMethod, LogoutReason, Outcome};
use medgemma_protocol::accounts::{
    Account, AccountsFile, Role, parse_token, token_matches, verify_password,
};
use medgemma_protocol::config::{AuthMode, AuthSection};
use medgemma_protocol::status::{AccountsStatus, AuthStatus, UserSessions};

use super::http::ApiError;
use crate::audit_log::Auditor;
use crate::log;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "mgd_session";

/// Longest lockout, however often a name is locked out.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(3600);

/// Login sessions kept at once; beyond, the least recently used ends.
pub const MAX_SESSIONS: usize = 1024;

/// User names whose failed logins are remembered at once (memory bound;
/// names that are not locked out are forgotten first).
const MAX_TRACKED_NAMES: usize = 4096;

/// The actor of a failed login whose name matches no account.
pub const UNKNOWN_ACCOUNT: &str = "unknown-account";

/// Bytes of a session token (256 bits).
const SESSION_BYTES: usize = 32;

/// Who made a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The account's pseudonymous id (the audit actor).
    pub id: String,
    /// The user name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl User {
    /// The audit log's actor.
    pub fn actor(&self) -> ActorId {
        ActorId::new(&self.id).unwrap_or_else(|_| fixed(UNKNOWN_ACCOUNT))
    }

    /// Who owns this user's conversations.
    pub fn owner(&self) -> String {
        format!("account:{}", self.id)
    }
}

fn fixed(name: &str) -> ActorId {
    ActorId::new(name).unwrap_or_else(|_| unreachable!("fixed actor names are tokens"))
}

#[derive(Debug)]
struct Session {
    user: User,
    /// The account as the session began ([`account_stamp`]): any later
    /// change (a new password, disabled) ends a password session, even one
    /// in the same second as the login.
    account_changed: String,
    last_seen: Instant,
    method: LoginMethod,
}

impl Session {
    /// The account change stamp a session needs: a password session's
    /// stamp at login; an SSO session only needs the account enabled.
    fn valid_stamp(&self) -> Option<&str> {
        match self.method {
            LoginMethod::Password => Some(&self.account_changed),
            LoginMethod::Sso => None,
        }
    }
}

#[derive(Debug, Default)]
struct Failures {
    in_a_row: u32,
    lockouts: u32,
    locked_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Loaded {
    loaded: bool,
    file: AccountsFile,
    stamp: Option<(SystemTime, u64, u64)>,
    problem: Option<String>,
}

/// The outcome of a login attempt.
#[derive(Debug)]
pub enum LoginResult {
    /// Logged in: the cookie to set and who.
    Ok {
        /// The `Set-Cookie` value.
        cookie: HeaderValue,
        /// Who.
        user: User,
    },
    /// Refused.
    Refused(ApiError),
}

/// Accounts, sessions and lockouts of this process.
#[derive(Debug)]
pub struct Auth {
    mode: AuthMode,
    dir: PathBuf,
    idle: Duration,
    lockout_after: u32,
    lockout_base: Duration,
    sso_header: String,
    sso_uid: Option<u32>,
    accounts: RwLock<Loaded>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
}

/// What a session remembers of its account to notice a change: the time of
/// the last change and (hashed again) the password hash, which a new
/// password always changes (a fresh salt), so a change within the second of
/// a login is not missed.
fn account_stamp(a: &Account) -> String {
    sha256_hex(&format!(
        "{}\n{}",
        a.changed_unix,
        a.password.as_deref().unwrap_or("")
    ))
}

fn sha256_hex(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash that matches no password, checked when a name matches no
/// account, so that a wrong name costs what a wrong password costs.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut bytes = [0u8; 24];
        let _ = getrandom::fill(&mut bytes);
        let filler: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        medgemma_protocol::accounts::hash_password(&filler).unwrap_or_default()
    })
}

impl Auth {
    /// The `[auth]` section's rules; `sso_uid` is `auth.sso_proxy_user`'s uid.
    pub fn new(section: &AuthSection, sso_uid: Option<u32>) -> Self {
        let auth = Self {
            mode: section.mode,
            dir: section.accounts_dir.clone(),
            idle: Duration::from_secs(section.idle_logout_secs),
            lockout_after: section.lockout_after_failures.max(1),
            lockout_base: Duration::from_secs(section.lockout_secs),
            sso_header: section.sso_header.to_ascii_lowercase(),
            sso_uid,
            accounts: RwLock::new(Loaded::default()),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        };
        if auth.mode != AuthMode::Open {
            auth.refresh();
        }
        auth
    }

    /// `auth.mode`.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether a login is needed.
    pub fn required(&self) -> bool {
        self.mode != AuthMode::Open
    }

    /// The idle logout.
    pub fn idle_logout(&self) -> Duration {
        self.idle
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failures(&self) -> MutexGuard<'_, HashMap<String, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_accounts<T>(&self, f: impl FnOnce(&Loaded) -> T) -> T {
        f(&self.accounts.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the accounts file again if it changed; returns whether it did.
    pub fn refresh(&self) -> bool {
        let path = AccountsFile::path(&self.dir);
        let stamp = std::fs::metadata(&path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.modified().unwrap_or(UNIX_EPOCH), m.len(), m.ino())
        });
        if self.with_accounts(|l| l.loaded && l.stamp == stamp) {
            return false;
        }
        let loaded = match AccountsFile::read(&self.dir) {
            Ok(file) => {
                if file.accounts.is_empty() && self.mode != AuthMode::Open {
                    log::warn(format_args!(
                        "auth: no account in {}; create one with `medgemmactl user add NAME` (nobody can log in until then)",
                        self.dir.display()
                    ));
                }
                Loaded {
                    loaded: true,
                    file,
                    stamp,
                    problem: None,
                }
            }
            Err(e) => {
                log::error(format_args!("auth: {e}"));
                Loaded {
                    loaded: true,
                    file: AccountsFile::new(),
                    stamp,
                    problem: Some(e.to_string()),
                }
            }
        };
        *self.accounts.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        true
    }

    fn account_named(&self, name: &str) -> Option<Account> {
        self.with_accounts(|l| l.file.by_name(name).cloned())
    }

    /// The user of the login session in `headers` (or, in SSO mode, of the
    /// trusted header), if any. `touch` restarts its idle timer; ended
    /// sessions are closed (and audited) here.
    pub async fn session_user(
        &self,
        audit: &Arc<Auditor>,
        headers: &HeaderMap,
        peer_uid: Option<u32>,
        touch: bool,
        conversations: &super::conversations::Conversations,
    ) -> Option<User> {
        match self.mode {
            AuthMode::Open => None,
            AuthMode::Accounts => {
                let token = session_cookie(headers)?;
                // A disabled account or a new password ends its sessions at once.
                self.refresh();
                let key = sha256_hex(&token);
                let now = Instant::now();
                let ended = {
                    let mut sessions = self.sessions();
                    let s = sessions.get_mut(&key)?;
                    if now.duration_since(s.last_seen) >= self.idle {
                        Some(LogoutReason::Idle)
                    } else if !self.still_valid(&s.user, s.valid_stamp()) {
                        Some(LogoutReason::AccountChanged)
                    } else {
                        if touch {
                            s.last_seen = now;
                        }
                        return Some(s.user.clone());
                    }
                };
                if let Some(reason) = ended {
                    self.end(audit, &key, reason, conversations).await;
                }
                None
            }
            AuthMode::Sso => {
                let name = self.sso_name(headers, peer_uid)?;
                self.refresh();
                let account = self.account_named(&name)?;
                if !account.enabled || account.role != Role::Clinician {
                    return None;
                }
                let user = User {
                    id: account.id.clone(),
                    name: account.name.clone(),
                    role: account.role,
                };
                let key = format!("sso:{}", account.id);
                let now = Instant::now();
                let begun = {
                    let mut sessions = self.sessions();
                    match sessions.get_mut(&key) {
                        Some(s) => {
                            if touch {
                                s.last_seen = now;
                            }
                            false
                        }
                        None => {
                            sessions.insert(
                                key,
                                Session {
                                    user: user.clone(),
                                    account_changed: account_stamp(&account),
                                    last_seen: now,
                                    method: LoginMethod::Sso,
                                },
                            );
                            true
                        }
                    }
                };
                if begun {
                    self.record(
                        audit,
                        Event::Login {
                            actor: user.actor(),
                            method: LoginMethod::Sso,
                            outcome: Outcome::Ok,
                        },
                    )
                    .await;
                }
                Some(user)
            }
        }
    }

    /// The SSO header's user name, when the peer is the configured proxy.
    fn sso_name(&self, headers: &HeaderMap, peer_uid: Option<u32>) -> Option<String> {
        if self.sso_uid.is_none() || peer_uid != self.sso_uid {
            return None;
        }
        let value = headers.get(self.sso_header.as_str())?.to_str().ok()?;
        let name = value.trim().to_ascii_lowercase();
        medgemma_protocol::accounts::check_name(&name).ok()?;
        Some(name)
    }

    /// Whether an account still allows a session that saw the account's
    /// change stamp `stamp` (`None`: enabled is enough).
    fn still_valid(&self, user: &User, stamp: Option<&str>) -> bool {
        self.with_accounts(|l| {
            l.file
                .by_id(&user.id)
                .is_some_and(|a| a.enabled && stamp.is_none_or(|c| account_stamp(a) == c))
        })
    }

    /// `POST /api/login` with a name and a password.
    pub async fn login(
        &self,
        audit: &Arc<Auditor>,
        name: &str,
        password: &str,
        secure: bool,
    ) -> LoginResult {
        let refuse = |e| LoginResult::Refused(e);
        match self.mode {
            AuthMode::Open => {
                return refuse(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "Accounts are not enabled on this appliance; nobody needs to log in.",
                ));
            }
            AuthMode::Sso => {
                return refuse(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "sso_only",
                    "This appliance logs you in through the hospital's single sign-on; open it through the address your administrator gave.",
                ));
            }
            AuthMode::Accounts => {}
        }
        self.refresh();
        let name = name.trim().to_ascii_lowercase();
        let account = self.account_named(&name);
        let actor = account
            .as_ref()
            .and_then(|a| ActorId::new(&a.id).ok())
            .unwrap_or_else(|| fixed(UNKNOWN_ACCOUNT));
        if let Some(left) = self.locked_for(&name) {
            self.record(audit, login_event(&actor, Outcome::Rejected))
                .await;
            return refuse(locked_out(left));
        }
        let hash = account
            .as_ref()
            .and_then(|a| a.password.clone())
            .unwrap_or_else(|| dummy_hash().to_owned());
        let password = password.to_owned();
        // Argon2id takes tens of milliseconds: off the runtime's workers.
        let matches = tokio::task::block_in_place(|| verify_password(&hash, &password));
        let usable = account
            .as_ref()
            .is_some_and(|a| a.enabled && a.password.is_some());
        if !(matches && usable) {
            let locked = self.note_failure(&name);
            self.record(audit, login_event(&actor, Outcome::Rejected))
                .await;
            return match locked {
                Some(secs) => {
                    self.record(
                        audit,
                        Event::Lockout {
                            actor,
                            seconds: u32::try_from(secs.as_secs()).unwrap_or(u32::MAX),
                        },
                    )
                    .await;
                    refuse(locked_out(secs))
                }
                None => refuse(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "login_failed",
                    "The user name or the password is wrong.",
                )),
            };
        }
        let Some(account) = account else {
            unreachable!("usable implies an account");
        };
        if account.role != Role::Clinician {
            self.record(audit, login_event(&actor, Outcome::Rejected))
                .await;
            return refuse(role_not_allowed());
        }
        self.failures().entry(name).and_modify(|f| f.in_a_row = 0);
        let mut bytes = [0u8; SESSION_BYTES];
        if getrandom::fill(&mut bytes).is_err() {
            return refuse(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "random_source_failed",
                "The server could not start a session; tell the administrator.",
            ));
        }
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let user = User {
            id: account.id.clone(),
            name: account.name.clone(),
            role: account.role,
        };
        {
            let mut sessions = self.sessions();
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last_seen)
                    .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
            sessions.insert(
                sha256_hex(&token),
                Session {
                    user: user.clone(),
                    account_changed: account_stamp(&account),
                    last_seen: Instant::now(),
                    method: LoginMethod::Password,
                },
            );
        }
        self.record(audit, login_event(&actor, Outcome::Ok)).await;
        let attrs = if secure {
            "; Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "; Path=/; HttpOnly; SameSite=Strict"
        };
        match HeaderValue::from_str(&format!("{SESSION_COOKIE}={token}{attrs}")) {
            Ok(cookie) => LoginResult::Ok { cookie, user },
            Err(_) => refuse(ApiError::bad_request("The session could not be started.")),
        }
    }

    /// Seconds left of a lockout of `name`, if it is locked out.
    fn locked_for(&self, name: &str) -> Option<Duration> {
        let now = Instant::now();
        self.failures()
            .get(name)
            .and_then(|f| f.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Counts a wrong password; returns the lockout it causes, if any.
    fn note_failure(&self, name: &str) -> Option<Duration> {
        let mut map = self.failures();
        if map.len() >= MAX_TRACKED_NAMES && !map.contains_key(name) {
            let now = Instant::now();
            map.retain(|_, f| f.locked_until.is_some_and(|u| u > now) || f.lockouts > 0);
            if map.len() >= MAX_TRACKED_NAMES {
                map.clear();
            }
        }
        let f = map.entry(name.to_owned()).or_default();
        f.in_a_row += 1;
        if f.in_a_row < self.lockout_after {
            return None;
        }
        f.in_a_row = 0;
        f.lockouts += 1;
        let factor = 2u32.saturating_pow(f.lockouts.saturating_sub(1).min(16));
        let secs = self.lockout_base.saturating_mul(factor).min(MAX_LOCKOUT);
        f.locked_until = Some(Instant::now() + secs);
        Some(secs)
    }

    /// `POST /api/logout`: ends the session in `headers`, if any.
    pub async fn logout(
        &self,
        audit: &Arc<Auditor>,
        headers: &HeaderMap,
        peer_uid: Option<u32>,
        conversations: &super::conversations::Conversations,
    ) {
        let key = match self.mode {
            AuthMode::Open => return,
            AuthMode::Accounts => match session_cookie(headers) {
                Some(token) => sha256_hex(&token),
                None => return,
            },
            AuthMode::Sso => match self
                .sso_name(headers, peer_uid)
                .and_then(|n| self.account_named(&n))
            {
                Some(a) => format!("sso:{}", a.id),
                None => return,
            },
        };
        self.end(audit, &key, LogoutReason::Requested, conversations)
            .await;
    }

    /// Ends session `key`: audited, and the user's conversations dropped
    /// when it was their last session.
    async fn end(
        &self,
        audit: &Arc<Auditor>,
        key: &str,
        reason: LogoutReason,
        conversations: &super::conversations::Conversations,
    ) {
        let (user, last) = {
            let mut sessions = self.sessions();
            let Some(s) = sessions.remove(key) else {
                return;
            };
            let last = !sessions.values().any(|o| o.user.id == s.user.id);
            (s.user, last)
        };
        if last {
            let n = conversations.drop_owner(&user.owner());
            if n > 0 {
                log::info(format_args!(
                    "auth: a session ended ({reason:?}); dropped {n} conversation(s) of its user"
                ));
            }
        }
        self.record(
            audit,
            Event::Logout {
                actor: user.actor(),
                reason,
            },
        )
        .await;
    }

    /// Ends idle sessions and those of changed accounts (after reading the
    /// accounts file again if it changed); returns how many ended.
    pub async fn sweep(
        &self,
        audit: &Arc<Auditor>,
        conversations: &super::conversations::Conversations,
    ) -> usize {
        if self.mode == AuthMode::Open {
            return 0;
        }
        self.refresh();
        let now = Instant::now();
        let ended: Vec<(String, LogoutReason)> = self
            .sessions()
            .iter()
            .filter_map(|(k, s)| {
                if now.duration_since(s.last_seen) >= self.idle {
                    Some((k.clone(), LogoutReason::Idle))
                } else if !self.still_valid(&s.user, s.valid_stamp()) {
                    Some((k.clone(), LogoutReason::AccountChanged))
                } else {
                    None
                }
            })
            .collect();
        for (key, reason) in &ended {
            self.end(audit, key, *reason, conversations).await;
        }
        ended.len()
    }

    /// The user of an `Authorization: Bearer` token (OpenAI API), audited
    /// as token use. `Ok(None)` in open mode.
    pub async fn token_user(
        &self,
        audit: &Arc<Auditor>,
        headers: &HeaderMap,
    ) -> Result<Option<User>, ApiError> {
        if self.mode == AuthMode::Open {
            return Ok(None);
        }
        let invalid = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "This API needs a personal token: send Authorization: Bearer <token> (an administrator creates one with medgemmactl user token create).",
            )
        };
        let text = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(invalid)?;
        let (id, secret) = parse_token(text).ok_or_else(invalid)?;
        self.refresh();
        let found = self.with_accounts(|l| {
            l.file.accounts.iter().find_map(|a| {
                a.tokens
                    .iter()
                    .find(|t| t.id == id)
                    .filter(|t| token_matches(t, secret))
                    .map(|_| a.clone())
            })
        });
        let Some(account) = found.filter(|a| a.enabled) else {
            return Err(invalid());
        };
        if account.role != Role::Clinician {
            return Err(role_not_allowed());
        }
        let user = User {
            id: account.id.clone(),
            name: account.name.clone(),
            role: account.role,
        };
        let event = Event::TokenUse {
            actor: user.actor(),
            token: ActorId::new(id).map_err(|_| invalid())?,
        };
        if let Err(e) = audit.append_async(event).await {
            log::error(format_args!("audit: cannot record a token use: {e}"));
            return Err(super::chat::audit_error());
        }
        Ok(Some(user))
    }

    /// The auditor account of a token (the admin socket's audit routes).
    pub fn auditor_of_token(&self, headers: &HeaderMap) -> Option<User> {
        let text = headers
            .get(AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim();
        let (id, secret) = parse_token(text)?;
        self.refresh();
        self.with_accounts(|l| {
            l.file.accounts.iter().find_map(|a| {
                let ok = a.enabled
                    && a.role == Role::Auditor
                    && a.tokens
                        .iter()
                        .any(|t| t.id == id && token_matches(t, secret));
                ok.then(|| User {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    role: a.role,
                })
            })
        })
    }

    /// The status's `auth` part for a browser whose user is `user`.
    pub fn status(&self, user: Option<&User>) -> AuthStatus {
        AuthStatus {
            mode: self.mode.as_str().to_owned(),
            required: self.required(),
            user: user.map(|u| u.name.clone()),
            role: user.map(|u| u.role.as_str().to_owned()),
            idle_logout_s: self.idle.as_secs(),
        }
    }

    /// The admin status's accounts part: counts only.
    pub fn admin_status(&self) -> AccountsStatus {
        let mut per_user: HashMap<String, usize> = HashMap::new();
        for s in self.sessions().values() {
            *per_user.entry(s.user.name.clone()).or_default() += 1;
        }
        let mut sessions: Vec<UserSessions> = per_user
            .into_iter()
            .map(|(user, sessions)| UserSessions { user, sessions })
            .collect();
        sessions.sort_by(|a, b| a.user.cmp(&b.user));
        let (accounts, problem) =
            self.with_accounts(|l| (l.file.accounts.len(), l.problem.clone()));
        AccountsStatus {
            mode: self.mode.as_str().to_owned(),
            accounts,
            sessions,
            problem,
        }
    }

    /// Appends an audit record; a failure is logged (the request it belongs
    /// to has already been decided).
    async fn record(&self, audit: &Arc<Auditor>, event: Event) {
        if let Err(e) = audit.append_async(event).await {
            log::error(format_args!("audit: cannot record a login event: {e}"));
        }
    }

    /// The accounts directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn login_event(actor: &ActorId, outcome: Outcome) -> Event {
    Event::Login {
        actor: actor.clone(),
        method: LoginMethod::Password,
        outcome,
    }
}

fn locked_out(left: Duration) -> ApiError {
    let secs =
        u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "locked_out",
        format!("Too many failed logins; try again in {secs} s."),
    );
    e.retry_after = Some(secs);
    e.retry_after_s = Some(secs);
    e
}

fn role_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "role_not_allowed",
        "This account is an auditor account: it can export and verify the audit log, not ask questions.",
    )
}

/// The 401 of a UI API request without a live session.
pub fn login_required() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "login_required",
        "Your session has ended; log in again.",
    )
}

/// The session token from the `mgd_session` cookie, if well formed.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| {
            *name == SESSION_COOKIE
                && value.len() == SESSION_BYTES * 2
                && value.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|(_, value)| value.to_owned())
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("mgd_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
}

/// Appends [`clear_cookie`] to a response's headers.
pub fn clear_session(headers: &mut HeaderMap) {
    headers.append(SET_COOKIE, clear_cookie());
}
