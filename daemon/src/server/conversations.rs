//! Conversations held in memory between turns.
//!
//! A conversation is keyed by an unguessable id (128 bits from the OS random
//! source), holds its previous user and model turns with the reasoning trace
//! removed, and is forgotten after `server.session_idle_timeout_secs` without
//! a turn. At most one turn runs per conversation; its cancel flag lives here
//! so `POST /api/chat/cancel` and `DELETE /api/conversations/{id}` can stop it.
//!
//! A conversation started by a browser remembers the browser's client-id
//! cookie and answers "not found" to any other client, so a leaked id alone
//! is not enough to continue someone else's conversation from a browser.
//!
//! Owns: conversation text in memory. Must never: write it anywhere, log it,
//! or keep it past the idle timeout or a delete.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use medgemma_model::chat::Message;
use medgemma_model::image::RgbImage;

use crate::engine::KeptContext;

/// Conversations kept at once. Each holds at most one context of text (tens
/// of KiB), so this bounds memory; beyond it new conversations get a 503
/// until idle ones expire.
pub const MAX_CONVERSATIONS: usize = 512;

/// Bytes of randomness in an id (128 bits: unguessable, never reused).
const ID_BYTES: usize = 16;

/// Why a conversation could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    /// Unknown, expired, deleted, or another client's.
    #[error("this conversation does not exist or has expired; start a new conversation")]
    NotFound,
    /// A turn is already running.
    #[error("this conversation is still answering; wait for the answer or stop it first")]
    Busy,
    /// [`MAX_CONVERSATIONS`] reached.
    #[error("too many open conversations on this appliance; try again in a few minutes")]
    TooMany,
    /// The OS random source failed.
    #[error("the system random source failed; the service cannot create conversations")]
    Random,
}

impl ConversationError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "conversation_not_found",
            Self::Busy => "conversation_busy",
            Self::TooMany => "too_many_conversations",
            Self::Random => "random_source_failed",
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

#[derive(Debug)]
struct Conversation {
    /// Alternating user / assistant turns, reasoning removed.
    turns: Vec<Message>,
    last_used: Instant,
    /// The browser's client id, if a browser started it.
    client: Option<String>,
    /// The running turn's cancel flag.
    active: Option<Arc<AtomicBool>>,
    /// Its KV cache kept between turns; dropped with the conversation.
    kept: KeptContext,
    /// Images of its user turns: (index in `turns`, pixels), in memory only.
    images: Vec<(usize, Arc<RgbImage>)>,
}

/// A turn that [`Conversations::begin_turn`] admitted.
#[derive(Debug)]
pub struct Admitted {
    /// The conversation's id (new if none was given).
    pub id: String,
    /// Whether this turn created the conversation.
    pub created: bool,
    /// The previous turns.
    pub history: Vec<Message>,
    /// The conversation's kept KV cache (a shared handle).
    pub kept: KeptContext,
    /// The previous turns' images: (index in `history`, pixels).
    pub images: Vec<(usize, Arc<RgbImage>)>,
}

/// All conversations of this process.
#[derive(Debug)]
pub struct Conversations {
    map: Mutex<HashMap<String, Conversation>>,
    idle_timeout: Duration,
}

impl Conversations {
    /// An empty store forgetting conversations after `idle_timeout`.
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            idle_timeout,
        }
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

    /// Starts a turn: in conversation `id`, or in a new one when `id` is `None`.
    pub fn begin_turn(
        &self,
        id: Option<&str>,
        client: Option<&str>,
        cancel: Arc<AtomicBool>,
    ) -> Result<Admitted, ConversationError> {
        let now = Instant::now();
        let mut map = self.lock();
        match id {
            Some(id) => {
                let conv = map.get_mut(id).ok_or(ConversationError::NotFound)?;
                if self.expired(conv, now) || !same_client(conv.client.as_deref(), client) {
                    return Err(ConversationError::NotFound);
                }
                if conv.active.is_some() {
                    return Err(ConversationError::Busy);
                }
                conv.active = Some(cancel);
                conv.last_used = now;
                Ok(Admitted {
                    id: id.to_owned(),
                    created: false,
                    history: conv.turns.clone(),
                    kept: conv.kept.clone(),
                    images: conv.images.clone(),
                })
            }
            None => {
                if map.len() >= MAX_CONVERSATIONS {
                    map.retain(|_, c| !self.expired(c, now));
                    if map.len() >= MAX_CONVERSATIONS {
                        return Err(ConversationError::TooMany);
                    }
                }
                let id = random_id()?;
                let kept = KeptContext::new();
                map.insert(
                    id.clone(),
                    Conversation {
                        turns: Vec::new(),
                        last_used: now,
                        client: client.map(str::to_owned),
                        active: Some(cancel),
                        kept: kept.clone(),
                        images: Vec::new(),
                    },
                );
                Ok(Admitted {
                    id,
                    created: true,
                    history: Vec::new(),
                    kept,
                    images: Vec::new(),
                })
            }
        }
    }

    /// Ends a turn that produced `answer`: the user's message and the answer
    /// (reasoning already removed) join the history. An empty answer (stopped
    /// before any answer text) leaves the history as it was, so user and model
    /// turns keep alternating.
    pub fn finish_turn(&self, id: &str, user: Message, images: Vec<Arc<RgbImage>>, answer: String) {
        let mut map = self.lock();
        if let Some(conv) = map.get_mut(id) {
            conv.active = None;
            conv.last_used = Instant::now();
            if !answer.trim().is_empty() {
                let at = conv.turns.len();
                conv.images.extend(images.into_iter().map(|im| (at, im)));
                conv.turns.push(user);
                conv.turns.push(Message::assistant(answer));
            }
        }
    }

    /// Ends a turn without an answer; a conversation this turn created and
    /// that the client never learnt of (`forget_if_new`) is removed.
    pub fn abort_turn(&self, id: &str, forget_if_new: bool) {
        let mut map = self.lock();
        if let Some(conv) = map.get_mut(id) {
            conv.active = None;
            conv.last_used = Instant::now();
            if forget_if_new && conv.turns.is_empty() {
                map.remove(id);
            }
        }
    }

    /// Asks the running turn to stop; `Ok(false)` when none runs.
    pub fn cancel(&self, id: &str, client: Option<&str>) -> Result<bool, ConversationError> {
        let map = self.lock();
        let conv = map
            .get(id)
            .filter(|c| same_client(c.client.as_deref(), client))
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
    pub fn delete(&self, id: &str, client: Option<&str>) -> Result<(), ConversationError> {
        let mut map = self.lock();
        match map.get(id) {
            Some(c) if same_client(c.client.as_deref(), client) => {
                if let Some(flag) = &c.active {
                    flag.store(true, Ordering::Relaxed);
                }
                map.remove(id);
                Ok(())
            }
            _ => Err(ConversationError::NotFound),
        }
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

/// A conversation without a client id is anyone's; one with an id is its browser's.
fn same_client(owner: Option<&str>, client: Option<&str>) -> bool {
    match owner {
        None => true,
        Some(owner) => client == Some(owner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
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
    fn one_turn_at_a_time_and_history_alternates() {
        let store = Conversations::new(Duration::from_secs(60));
        let t = store.begin_turn(None, None, flag()).unwrap();
        assert_eq!(
            store.begin_turn(Some(&t.id), None, flag()).unwrap_err(),
            ConversationError::Busy
        );
        store.finish_turn(&t.id, Message::user("q"), Vec::new(), "a".into());
        let t2 = store.begin_turn(Some(&t.id), None, flag()).unwrap();
        assert_eq!(t2.history.len(), 2);
        // Stopped before any answer: history unchanged.
        store.finish_turn(&t.id, Message::user("q2"), Vec::new(), String::new());
        assert_eq!(
            store
                .begin_turn(Some(&t.id), None, flag())
                .unwrap()
                .history
                .len(),
            2
        );
    }

    #[test]
    fn another_browser_cannot_use_a_browser_conversation() {
        let store = Conversations::new(Duration::from_secs(60));
        let t = store.begin_turn(None, Some("c1"), flag()).unwrap();
        store.abort_turn(&t.id, false);
        assert_eq!(
            store
                .begin_turn(Some(&t.id), Some("c2"), flag())
                .unwrap_err(),
            ConversationError::NotFound
        );
        assert_eq!(
            store.begin_turn(Some(&t.id), None, flag()).unwrap_err(),
            ConversationError::NotFound
        );
        assert!(store.begin_turn(Some(&t.id), Some("c1"), flag()).is_ok());
    }

    #[test]
    fn idle_conversations_expire_but_running_ones_do_not() {
        let store = Conversations::new(Duration::from_millis(1));
        let idle = store.begin_turn(None, None, flag()).unwrap();
        store.abort_turn(&idle.id, false);
        let _running = store.begin_turn(None, None, flag()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn cancel_and_delete_set_the_flag() {
        let store = Conversations::new(Duration::from_secs(60));
        let f = flag();
        let t = store.begin_turn(None, None, Arc::clone(&f)).unwrap();
        assert!(store.cancel(&t.id, None).unwrap());
        assert!(f.load(Ordering::Relaxed));
        store.delete(&t.id, None).unwrap();
        assert_eq!(
            store.cancel(&t.id, None).unwrap_err(),
            ConversationError::NotFound
        );
    }
}
