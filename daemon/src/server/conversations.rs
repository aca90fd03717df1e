//! Conversations held in memory between turns.
//!
//! A conversation is keyed by an unguessable id (128 bits from the OS random
//! source) and holds its turns: each question with its answer, the answer's
//! reasoning trace (shown again when the conversation is opened from the
//! list, never sent back to the model) and the terms found in it; its
//! answer style; and the time of its last turn. It is forgotten after
//! `server.session_idle_timeout_secs` without a turn, when it is deleted,
//! and when its owner's last login session ends. At most one turn runs per
//! conversation; its cancel flag lives here so `POST /api/chat/cancel` and
//! `DELETE /api/conversations/{id}` can stop it.
//!
//! A conversation belongs to its owner: the account of a login session, or
//! (without accounts) the browser's client-id cookie. Anyone else gets "not
//! found", so a leaked id alone is not enough to read, continue, cancel or
//! delete someone else's conversation.
//!
//! One client cannot take what everyone shares: a browser session or
//! account keeps at most [`MAX_CONVERSATIONS_PER_CLIENT`] conversations and
//! runs at most [`MAX_RUNNING_PER_CLIENT`] turns at once (chat and API
//! together), and the connections of one peer (a local user id on the UI
//! socket) keep at most [`MAX_CONVERSATIONS_PER_PEER`]. A conversation
//! whose first request never started (cancelled while queued, refused by
//! the engine or the audit log) is forgotten at once.
//!
//! Owns: conversation text in memory. Must never: write it anywhere, log it,
//! or keep it past the idle timeout, a delete or its owner's logout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use medgemma_model::chat::Message;
use medgemma_model::image::RgbImage;
use medgemma_protocol::config::AnswerStyle;

use super::terms::FoundTerm;
use crate::engine::KeptContext;

/// Conversations kept at once. Each holds at most one context of text (tens
/// of KiB), so this bounds memory; beyond it new conversations get a 503
/// until idle ones expire.
pub const MAX_CONVERSATIONS: usize = 512;

/// Conversations one client (a browser session, an account) keeps at once.
pub const MAX_CONVERSATIONS_PER_CLIENT: usize = 32;

/// Conversations the connections of one peer keep at once: half of
/// [`MAX_CONVERSATIONS`], so one local program (or one proxy's clients)
/// cannot take every slot.
pub const MAX_CONVERSATIONS_PER_PEER: usize = MAX_CONVERSATIONS / 2;

/// Turns one client (a browser session, an account) runs at once: a
/// question and a regenerate in another tab; more only fills the shared
/// engine queue.
pub const MAX_RUNNING_PER_CLIENT: usize = 2;

/// Characters of the first question shown as a conversation's title.
pub const TITLE_CHARS: usize = 60;

/// Bytes of randomness in an id (128 bits: unguessable, never reused).
const ID_BYTES: usize = 16;

/// Why a conversation could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    /// Unknown, expired, deleted, or someone else's.
    #[error("this conversation does not exist or has expired; start a new conversation")]
    NotFound,
    /// A turn is already running.
    #[error("this conversation is still answering; wait for the answer or stop it first")]
    Busy,
    /// [`MAX_CONVERSATIONS`] reached.
    #[error("too many open conversations on this appliance; try again in a few minutes")]
    TooMany,
    /// A per-client limit reached ([`MAX_CONVERSATIONS_PER_CLIENT`],
    /// [`MAX_CONVERSATIONS_PER_PEER`], [`MAX_RUNNING_PER_CLIENT`]).
    #[error(
        "too many conversations or answers at once for this client; delete old conversations or wait for an answer to finish"
    )]
    ClientLimit,
    /// The OS random source failed.
    #[error("the system random source failed; the service cannot create conversations")]
    Random,
    /// `regenerate` without an answer to regenerate.
    #[error("there is no answer to regenerate in this conversation")]
    NothingToRegenerate,
    /// `replace_last` without a question to replace.
    #[error("there is no question to replace in this conversation")]
    NothingToReplace,
}

impl ConversationError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "conversation_not_found",
            Self::Busy => "conversation_busy",
            Self::TooMany => "too_many_conversations",
            Self::ClientLimit => "client_limit",
            Self::Random => "random_source_failed",
            Self::NothingToRegenerate | Self::NothingToReplace => "invalid_request",
        }
    }
}

/// A fresh random id: 32 lower-case hex digits.
pub fn random_id() -> Result<String, ConversationError> {
    let mut bytes = [0u8; ID_BYTES];
    getrandom::fill(&mut bytes).map_err(|_| ConversationError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `s` has the shape of an id from [`random_id`].
pub fn is_id(s: &str) -> bool {
    s.len() == ID_BYTES * 2
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The first 8 hex digits of an id: enough to follow a conversation in the
/// log, not enough to continue it.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A finished answer as the conversation keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The answer text (what the model sees again as history).
    pub content: String,
    /// The reasoning trace, shown when the conversation is opened again;
    /// never part of the history the model sees.
    pub reasoning: Option<String>,
    /// Terms found in the question and the answer.
    pub terms: Vec<FoundTerm>,
}

/// One question and its answer (none when it was lost to an error after a
/// regenerate began).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTurn {
    /// The question.
    pub user: String,
    /// The images sent with it (pixels at the vision tower's size, memory only).
    pub images: Vec<Arc<RgbImage>>,
    /// The answer.
    pub answer: Option<StoredAnswer>,
}

/// How a turn relates to the conversation's last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnMode {
    /// A new question.
    New,
    /// The last question again, replacing its answer.
    Regenerate,
    /// A new question replacing the last question and its answer.
    ReplaceLast,
}

/// What [`Conversations::begin_turn`] removed, given back by
/// [`Conversations::abort_turn`] when the turn never started.
#[derive(Debug)]
pub enum Undo {
    /// Nothing was removed.
    Nothing,
    /// The last turn's answer (regenerate).
    Answer(StoredAnswer),
    /// The last turn (replace).
    Turn(StoredTurn),
}

#[derive(Debug)]
struct Conversation {
    turns: Vec<StoredTurn>,
    last_used: Instant,
    updated_unix: u64,
    style: AnswerStyle,
    /// Who may use it; `None`: anyone (no owner was known).
    owner: Option<String>,
    /// The peer (uid on the UI socket) that created it.
    peer: Option<u32>,
    /// The running turn's cancel flag.
    active: Option<Arc<AtomicBool>>,
    /// Its KV cache kept between turns; dropped with the conversation.
    kept: KeptContext,
}

/// The history the model sees and its images: (index in the history, pixels).
type History = (Vec<Message>, Vec<(usize, Arc<RgbImage>)>);

impl Conversation {
    /// The history the model sees: answered turns, without reasoning, and
    /// each question's images.
    fn history(&self, upto: usize) -> History {
        let mut out = Vec::with_capacity(upto * 2);
        let mut images = Vec::new();
        for t in &self.turns[..upto] {
            if let Some(a) = t.answer.as_ref().filter(|a| !a.content.trim().is_empty()) {
                images.extend(t.images.iter().map(|im| (out.len(), Arc::clone(im))));
                out.push(Message::user(t.user.clone()));
                out.push(Message::assistant(a.content.clone()));
            }
        }
        (out, images)
    }
}

/// A turn that [`Conversations::begin_turn`] admitted.
#[derive(Debug)]
pub struct Admitted {
    /// The conversation's id (new if none was given).
    pub id: String,
    /// Whether this turn created the conversation.
    pub created: bool,
    /// The previous turns, as the model sees them.
    pub history: Vec<Message>,
    /// Their images: (index in `history`, pixels).
    pub history_images: Vec<(usize, Arc<RgbImage>)>,
    /// The images of the question when regenerating (the stored ones).
    pub question_images: Vec<Arc<RgbImage>>,
    /// The conversation's kept KV cache (a shared handle).
    pub kept: KeptContext,
    /// The question of this turn (the stored one when regenerating).
    pub question: String,
    /// The conversation's answer style.
    pub style: AnswerStyle,
    /// What to give back if the turn never starts.
    pub undo: Undo,
}

/// What [`Conversations::begin_turn`] is asked.
#[derive(Debug)]
pub struct TurnRequest<'a> {
    /// The conversation, or `None` for a new one.
    pub id: Option<&'a str>,
    /// Who asks.
    pub owner: Option<&'a str>,
    /// The connection's peer (uid on the UI socket), if known.
    pub peer: Option<u32>,
    /// The question (ignored when regenerating).
    pub message: String,
    /// New, regenerate or replace.
    pub mode: TurnMode,
    /// The style asked for (kept for the conversation), if any.
    pub style: Option<AnswerStyle>,
    /// The style of a new conversation without one asked for.
    pub default_style: AnswerStyle,
    /// The running turn's cancel flag.
    pub cancel: Arc<AtomicBool>,
}

/// A conversation in the list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Its id.
    pub id: String,
    /// The first question, cut to [`TITLE_CHARS`] characters.
    pub title: String,
    /// Questions asked.
    pub turns: usize,
    /// When its last turn ended (Unix seconds).
    pub updated_unix: u64,
    /// Its answer style.
    pub style: &'static str,
}

/// A conversation's content, to show or export.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// Its answer style.
    pub style: AnswerStyle,
    /// Its turns.
    pub turns: Vec<StoredTurn>,
}

/// All conversations of this process.
#[derive(Debug)]
pub struct Conversations {
    map: Mutex<HashMap<String, Conversation>>,
    idle_timeout: Duration,
    /// Turns running per client (owner), for [`MAX_RUNNING_PER_CLIENT`].
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// A running turn of one client, counted until dropped
/// ([`Conversations::start_running`]).
#[derive(Debug)]
pub struct Running {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    owner: Option<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&owner);
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Conversations {
    /// An empty store forgetting conversations after `idle_timeout`.
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            idle_timeout,
            running: Arc::default(),
        }
    }

    /// Counts a turn of `owner` as running until the returned guard is
    /// dropped; [`ConversationError::ClientLimit`] when the owner already
    /// runs [`MAX_RUNNING_PER_CLIENT`]. Callers without an owner are not
    /// counted (the engine queue bounds them).
    pub fn start_running(&self, owner: Option<&str>) -> Result<Running, ConversationError> {
        let Some(owner) = owner else {
            return Ok(Running {
                counts: Arc::clone(&self.running),
                owner: None,
            });
        };
        let mut counts = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(owner.to_owned()).or_insert(0);
        if *n >= MAX_RUNNING_PER_CLIENT {
            return Err(ConversationError::ClientLimit);
        }
        *n += 1;
        Ok(Running {
            counts: Arc::clone(&self.running),
            owner: Some(owner.to_owned()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Conversation>> {
        // A panic while holding the lock cannot leave a half-written entry
        // (every update is a single assignment), so a poisoned map is usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Conversations held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    fn expired(&self, c: &Conversation, now: Instant) -> bool {
        c.active.is_none() && now.duration_since(c.last_used) >= self.idle_timeout
    }

    /// Below `limit` conversations matching `same`, or
    /// [`ConversationError::ClientLimit`]. At the limit, the client's
    /// expired conversations and those without a question or a running turn
    /// (stopped before any answer: nothing to show in the list) make room
    /// first.
    fn make_room(
        &self,
        map: &mut HashMap<String, Conversation>,
        now: Instant,
        same: &dyn Fn(&Conversation) -> bool,
        limit: usize,
    ) -> Result<(), ConversationError> {
        let held = |map: &HashMap<String, Conversation>| map.values().filter(|c| same(c)).count();
        if held(map) < limit {
            return Ok(());
        }
        map.retain(|_, c| {
            !same(c) || !(self.expired(c, now) || (c.turns.is_empty() && c.active.is_none()))
        });
        if held(map) < limit {
            Ok(())
        } else {
            Err(ConversationError::ClientLimit)
        }
    }

    /// Starts a turn (see [`TurnRequest`]).
    pub fn begin_turn(&self, req: TurnRequest<'_>) -> Result<Admitted, ConversationError> {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(id) = req.id else {
            if req.mode != TurnMode::New {
                return Err(ConversationError::NotFound);
            }
            if map.len() >= MAX_CONVERSATIONS {
                map.retain(|_, c| !self.expired(c, now));
                if map.len() >= MAX_CONVERSATIONS {
                    return Err(ConversationError::TooMany);
                }
            }
            if let Some(owner) = req.owner {
                let mine = |c: &Conversation| c.owner.as_deref() == Some(owner);
                self.make_room(&mut map, now, &mine, MAX_CONVERSATIONS_PER_CLIENT)?;
            }
            if let Some(peer) = req.peer {
                let theirs = |c: &Conversation| c.peer == Some(peer);
                self.make_room(&mut map, now, &theirs, MAX_CONVERSATIONS_PER_PEER)?;
            }
            let id = random_id()?;
            let style = req.style.unwrap_or(req.default_style);
            let kept = KeptContext::new();
            map.insert(
                id.clone(),
                Conversation {
                    turns: Vec::new(),
                    last_used: now,
                    updated_unix: unix_now(),
                    style,
                    owner: req.owner.map(str::to_owned),
                    peer: req.peer,
                    active: Some(req.cancel),
                    kept: kept.clone(),
                },
            );
            return Ok(Admitted {
                id,
                created: true,
                history: Vec::new(),
                history_images: Vec::new(),
                question_images: Vec::new(),
                kept,
                question: req.message,
                style,
                undo: Undo::Nothing,
            });
        };
        let conv = map.get_mut(id).ok_or(ConversationError::NotFound)?;
        if self.expired(conv, now) || !same_owner(conv.owner.as_deref(), req.owner) {
            return Err(ConversationError::NotFound);
        }
        if conv.active.is_some() {
            return Err(ConversationError::Busy);
        }
        let (question, undo, upto) = match req.mode {
            TurnMode::New => (req.message, Undo::Nothing, conv.turns.len()),
            TurnMode::Regenerate => {
                let last = conv
                    .turns
                    .last_mut()
                    .ok_or(ConversationError::NothingToRegenerate)?;
                let answer = last
                    .answer
                    .take()
                    .ok_or(ConversationError::NothingToRegenerate)?;
                let question = last.user.clone();
                (question, Undo::Answer(answer), conv.turns.len() - 1)
            }
            TurnMode::ReplaceLast => {
                let last = conv
                    .turns
                    .pop()
                    .ok_or(ConversationError::NothingToReplace)?;
                (req.message, Undo::Turn(last), conv.turns.len())
            }
        };
        if let Some(style) = req.style {
            conv.style = style;
        }
        conv.active = Some(req.cancel);
        conv.last_used = now;
        let (history, history_images) = conv.history(upto);
        let question_images = match req.mode {
            TurnMode::Regenerate => conv
                .turns
                .last()
                .map(|t| t.images.clone())
                .unwrap_or_default(),
            TurnMode::New | TurnMode::ReplaceLast => Vec::new(),
        };
        Ok(Admitted {
            id: id.to_owned(),
            created: false,
            history,
            history_images,
            question_images,
            kept: conv.kept.clone(),
            question,
            style: conv.style,
            undo,
        })
    }

    /// Ends a turn that produced `answer`. A regenerated turn's answer
    /// replaces the old one; a new or replacing question joins the history
    /// with its answer. An empty answer (stopped before any answer text)
    /// leaves the history as it was, so questions and answers alternate.
    pub fn finish_turn(
        &self,
        id: &str,
        mode: TurnMode,
        question: String,
        images: Vec<Arc<RgbImage>>,
        answer: StoredAnswer,
    ) {
        let mut map = self.lock();
        let Some(conv) = map.get_mut(id) else {
            return;
        };
        conv.active = None;
        conv.last_used = Instant::now();
        conv.updated_unix = unix_now();
        if answer.content.trim().is_empty() {
            return;
        }
        match mode {
            TurnMode::Regenerate => match conv.turns.last_mut() {
                Some(last) => last.answer = Some(answer),
                None => conv.turns.push(StoredTurn {
                    user: question,
                    images,
                    answer: Some(answer),
                }),
            },
            TurnMode::New | TurnMode::ReplaceLast => conv.turns.push(StoredTurn {
                user: question,
                images,
                answer: Some(answer),
            }),
        }
    }

    /// Ends a turn without an answer. `undo` gives back what the turn
    /// removed (it never started); a conversation this turn created and
    /// that the client never learnt of (`forget_if_new`) is removed.
    pub fn abort_turn(&self, id: &str, forget_if_new: bool, undo: Undo) {
        let mut map = self.lock();
        if let Some(conv) = map.get_mut(id) {
            conv.active = None;
            conv.last_used = Instant::now();
            match undo {
                Undo::Nothing => {}
                Undo::Answer(a) => {
                    if let Some(last) = conv.turns.last_mut() {
                        last.answer = Some(a);
                    }
                }
                Undo::Turn(t) => conv.turns.push(t),
            }
            if forget_if_new && conv.turns.is_empty() {
                map.remove(id);
            }
        }
    }

    /// Asks the running turn to stop; `Ok(false)` when none runs.
    pub fn cancel(&self, id: &str, owner: Option<&str>) -> Result<bool, ConversationError> {
        let map = self.lock();
        let conv = map
            .get(id)
            .filter(|c| same_owner(c.owner.as_deref(), owner))
            .ok_or(ConversationError::NotFound)?;
        Ok(match &conv.active {
            Some(flag) => {
                flag.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        })
    }

    /// Stops any running turn and forgets the conversation.
    pub fn delete(&self, id: &str, owner: Option<&str>) -> Result<(), ConversationError> {
        let mut map = self.lock();
        match map.get(id) {
            Some(c) if same_owner(c.owner.as_deref(), owner) => {
                if let Some(flag) = &c.active {
                    flag.store(true, Ordering::Relaxed);
                }
                map.remove(id);
                Ok(())
            }
            _ => Err(ConversationError::NotFound),
        }
    }

    /// The owner's conversations with at least one question, newest first.
    pub fn list(&self, owner: Option<&str>) -> Vec<Summary> {
        let now = Instant::now();
        let map = self.lock();
        let mut out: Vec<Summary> = map
            .iter()
            .filter(|(_, c)| {
                !c.turns.is_empty() && !self.expired(c, now) && owner_is(c.owner.as_deref(), owner)
            })
            .map(|(id, c)| Summary {
                id: id.clone(),
                title: c.turns[0].user.chars().take(TITLE_CHARS).collect(),
                turns: c.turns.len(),
                updated_unix: c.updated_unix,
                style: c.style.as_str(),
            })
            .collect();
        out.sort_by(|a, b| b.updated_unix.cmp(&a.updated_unix).then(a.id.cmp(&b.id)));
        out
    }

    /// A conversation's content, for its owner.
    pub fn transcript(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Transcript, ConversationError> {
        let now = Instant::now();
        let map = self.lock();
        match map.get(id) {
            Some(c) if same_owner(c.owner.as_deref(), owner) && !self.expired(c, now) => {
                Ok(Transcript {
                    style: c.style,
                    turns: c.turns.clone(),
                })
            }
            _ => Err(ConversationError::NotFound),
        }
    }

    /// Stops and forgets every conversation of `owner` (its last login
    /// session ended); returns how many.
    pub fn drop_owner(&self, owner: &str) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, c| {
            let mine = c.owner.as_deref() == Some(owner);
            if mine && let Some(flag) = &c.active {
                flag.store(true, Ordering::Relaxed);
            }
            !mine
        });
        before - map.len()
    }

    /// Forgets every idle conversation past the timeout; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, c| !self.expired(c, now));
        before - map.len()
    }

    /// Stops every running turn (shutdown).
    pub fn cancel_all(&self) {
        for conv in self.lock().values() {
            if let Some(flag) = &conv.active {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// A conversation without an owner is anyone's; one with an owner is only its owner's.
fn same_owner(owner: Option<&str>, caller: Option<&str>) -> bool {
    match owner {
        None => true,
        Some(owner) => caller == Some(owner),
    }
}

/// For the list: only conversations that name this caller (an ownerless
/// conversation belongs to no list).
fn owner_is(owner: Option<&str>, caller: Option<&str>) -> bool {
    owner.is_some() && owner == caller
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    fn ask<'a>(
        id: Option<&'a str>,
        owner: Option<&'a str>,
        text: &str,
        mode: TurnMode,
    ) -> TurnRequest<'a> {
        TurnRequest {
            id,
            owner,
            peer: None,
            message: text.to_owned(),
            mode,
            style: None,
            default_style: AnswerStyle::Structured,
            cancel: flag(),
        }
    }

    fn answer(text: &str) -> StoredAnswer {
        StoredAnswer {
            content: text.to_owned(),
            reasoning: Some("thinking".into()),
            terms: Vec::new(),
        }
    }

    #[test]
    fn a_client_and_a_peer_keep_at_most_their_share() {
        let store = Conversations::new(Duration::from_secs(60));
        for _ in 0..MAX_CONVERSATIONS_PER_CLIENT {
            let t = store
                .begin_turn(ask(None, Some("c1"), "q", TurnMode::New))
                .unwrap();
            store.finish_turn(&t.id, TurnMode::New, t.question, Vec::new(), answer("a"));
        }
        assert_eq!(
            store
                .begin_turn(ask(None, Some("c1"), "q", TurnMode::New))
                .unwrap_err(),
            ConversationError::ClientLimit
        );
        // Another client is not affected; deleting one frees a place.
        store
            .begin_turn(ask(None, Some("c2"), "q", TurnMode::New))
            .unwrap();
        let first = store.list(Some("c1"))[0].id.clone();
        store.delete(&first, Some("c1")).unwrap();
        store
            .begin_turn(ask(None, Some("c1"), "q", TurnMode::New))
            .unwrap();

        // One peer, many clients: half of the store at most.
        let store = Conversations::new(Duration::from_secs(60));
        let owners: Vec<String> = (0..MAX_CONVERSATIONS_PER_PEER)
            .map(|i| format!("c{i}"))
            .collect();
        for owner in &owners {
            let mut r = ask(None, Some(owner), "q", TurnMode::New);
            r.peer = Some(1000);
            store.begin_turn(r).unwrap();
        }
        let mut r = ask(None, Some("new"), "q", TurnMode::New);
        r.peer = Some(1000);
        assert_eq!(
            store.begin_turn(r).unwrap_err(),
            ConversationError::ClientLimit
        );
        let mut r = ask(None, Some("new"), "q", TurnMode::New);
        r.peer = Some(1001);
        store.begin_turn(r).unwrap();
    }

    #[test]
    fn running_turns_per_client_are_counted_until_dropped() {
        let store = Conversations::new(Duration::from_secs(60));
        let a = store.start_running(Some("c1")).unwrap();
        let b = store.start_running(Some("c1")).unwrap();
        assert_eq!(
            store.start_running(Some("c1")).unwrap_err(),
            ConversationError::ClientLimit
        );
        let _other = store.start_running(Some("c2")).unwrap();
        let _anonymous: Vec<_> = (0..5).map(|_| store.start_running(None).unwrap()).collect();
        drop(a);
        let _c = store.start_running(Some("c1")).unwrap();
        drop(b);
        assert!(store.start_running(Some("c1")).is_ok());
    }

    #[test]
    fn ids_are_128_bit_hex_and_distinct() {
        let a = random_id().unwrap();
        let b = random_id().unwrap();
        assert!(is_id(&a) && is_id(&b));
        assert_ne!(a, b);
        assert!(!is_id("../etc"));
    }

    #[test]
    fn one_turn_at_a_time_and_history_alternates_without_reasoning() {
        let store = Conversations::new(Duration::from_secs(60));
        let t = store
            .begin_turn(ask(None, None, "q", TurnMode::New))
            .unwrap();
        assert_eq!(
            store
                .begin_turn(ask(Some(&t.id), None, "q", TurnMode::New))
                .unwrap_err(),
            ConversationError::Busy
        );
        store.finish_turn(&t.id, TurnMode::New, t.question, Vec::new(), answer("a"));
        let t2 = store
            .begin_turn(ask(Some(&t.id), None, "q2", TurnMode::New))
            .unwrap();
        assert_eq!(t2.history.len(), 2);
        assert_eq!(t2.history[1].content, "a", "no reasoning in the history");
        // Stopped before any answer: history unchanged.
        store.finish_turn(&t.id, TurnMode::New, "q2".into(), Vec::new(), answer(""));
        let t3 = store
            .begin_turn(ask(Some(&t.id), None, "q3", TurnMode::New))
            .unwrap();
        assert_eq!(t3.history.len(), 2);
    }

    #[test]
    fn a_questions_images_stay_with_it_in_the_history_and_for_regenerate() {
        let store = Conversations::new(Duration::from_secs(60));
        let img = |v: u8| {
            Arc::new(RgbImage {
                width: 1,
                height: 1,
                pixels: vec![v, v, v],
            })
        };
        let t = store
            .begin_turn(ask(None, Some("u"), "q1", TurnMode::New))
            .unwrap();
        let id = t.id.clone();
        store.finish_turn(
            &id,
            TurnMode::New,
            t.question,
            vec![img(1), img(2)],
            answer("a1"),
        );
        let t = store
            .begin_turn(ask(Some(&id), Some("u"), "q2", TurnMode::New))
            .unwrap();
        // Both images belong to the first question (history index 0).
        assert_eq!(t.history_images.len(), 2);
        assert!(t.history_images.iter().all(|(i, _)| *i == 0));
        assert_eq!(t.history_images[1].1.pixels, vec![2, 2, 2]);
        assert!(t.question_images.is_empty());
        store.finish_turn(&id, TurnMode::New, t.question, vec![img(3)], answer("a2"));
        // Regenerating the second question sends its own image again.
        let r = store
            .begin_turn(ask(Some(&id), Some("u"), "", TurnMode::Regenerate))
            .unwrap();
        assert_eq!(r.question_images.len(), 1);
        assert_eq!(r.question_images[0].pixels, vec![3, 3, 3]);
        assert_eq!(r.history_images.len(), 2);
        store.abort_turn(&id, false, r.undo);
        // Replacing it drops its image.
        let e = store
            .begin_turn(ask(Some(&id), Some("u"), "q2 new", TurnMode::ReplaceLast))
            .unwrap();
        assert!(e.question_images.is_empty());
        assert_eq!(e.history_images.len(), 2);
    }

    #[test]
    fn regenerate_and_replace_act_on_the_last_turn() {
        let store = Conversations::new(Duration::from_secs(60));
        let t = store
            .begin_turn(ask(None, Some("u"), "q1", TurnMode::New))
            .unwrap();
        let id = t.id.clone();
        store.finish_turn(&id, TurnMode::New, t.question, Vec::new(), answer("a1"));
        let t = store
            .begin_turn(ask(Some(&id), Some("u"), "q2", TurnMode::New))
            .unwrap();
        store.finish_turn(&id, TurnMode::New, t.question, Vec::new(), answer("a2"));

        let r = store
            .begin_turn(ask(Some(&id), Some("u"), "", TurnMode::Regenerate))
            .unwrap();
        assert_eq!(r.question, "q2");
        assert_eq!(
            r.history.len(),
            2,
            "the answer being replaced is not history"
        );
        // Refused before it started: the old answer comes back.
        store.abort_turn(&id, false, r.undo);
        let tr = store.transcript(&id, Some("u")).unwrap();
        assert_eq!(tr.turns[1].answer.as_ref().unwrap().content, "a2");
        let r = store
            .begin_turn(ask(Some(&id), Some("u"), "", TurnMode::Regenerate))
            .unwrap();
        store.finish_turn(
            &id,
            TurnMode::Regenerate,
            r.question,
            Vec::new(),
            answer("a2 again"),
        );
        let tr = store.transcript(&id, Some("u")).unwrap();
        assert_eq!(tr.turns.len(), 2);
        assert_eq!(tr.turns[1].answer.as_ref().unwrap().content, "a2 again");

        let e = store
            .begin_turn(ask(Some(&id), Some("u"), "q2 fixed", TurnMode::ReplaceLast))
            .unwrap();
        assert_eq!(e.history.len(), 2);
        store.finish_turn(
            &id,
            TurnMode::ReplaceLast,
            e.question,
            Vec::new(),
            answer("a3"),
        );
        let tr = store.transcript(&id, Some("u")).unwrap();
        assert_eq!(tr.turns.len(), 2);
        assert_eq!(tr.turns[1].user, "q2 fixed");
        assert_eq!(store.list(Some("u"))[0].title, "q1");
        assert_eq!(store.list(Some("u"))[0].turns, 2);
    }

    #[test]
    fn another_owner_cannot_see_or_use_a_conversation() {
        let store = Conversations::new(Duration::from_secs(60));
        let t = store
            .begin_turn(ask(None, Some("c1"), "q", TurnMode::New))
            .unwrap();
        store.finish_turn(&t.id, TurnMode::New, t.question, Vec::new(), answer("a"));
        for other in [Some("c2"), None] {
            assert_eq!(
                store
                    .begin_turn(ask(Some(&t.id), other, "q", TurnMode::New))
                    .unwrap_err(),
                ConversationError::NotFound
            );
            assert!(store.transcript(&t.id, other).is_err());
            assert!(store.cancel(&t.id, other).is_err());
            assert!(store.delete(&t.id, other).is_err());
            assert!(store.list(other).is_empty());
        }
        assert_eq!(store.list(Some("c1")).len(), 1);
        assert_eq!(store.drop_owner("c1"), 1);
        assert!(store.transcript(&t.id, Some("c1")).is_err());
    }

    #[test]
    fn idle_conversations_expire_but_running_ones_do_not() {
        let store = Conversations::new(Duration::from_millis(1));
        let idle = store
            .begin_turn(ask(None, None, "q", TurnMode::New))
            .unwrap();
        store.abort_turn(&idle.id, false, Undo::Nothing);
        let _running = store
            .begin_turn(ask(None, None, "q", TurnMode::New))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn cancel_and_delete_set_the_flag() {
        let store = Conversations::new(Duration::from_secs(60));
        let f = flag();
        let mut req = ask(None, None, "q", TurnMode::New);
        req.cancel = Arc::clone(&f);
        let t = store.begin_turn(req).unwrap();
        assert!(store.cancel(&t.id, None).unwrap());
        assert!(f.load(Ordering::Relaxed));
        store.delete(&t.id, None).unwrap();
        assert_eq!(
            store.cancel(&t.id, None).unwrap_err(),
            ConversationError::NotFound
        );
    }
}
