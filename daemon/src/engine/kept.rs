//! A conversation's KV cache kept between its turns (`engine.keep_context`),
//! so a follow-up question prefills only its new tokens.
//!
//! Owns: the ownership rule and the memory cap. The conversation owns its
//! [`KeptContext`] (the only strong handle besides its running request);
//! the engine keeps only weak handles in a [`KeptLedger`], oldest first, and
//! empties the oldest when the kept caches together would pass the cap. So a
//! kept cache is freed when its conversation is deleted, idles out or its
//! user logs out, and can never outlive it.
//! Must never: hold a strong handle in the engine, or keep a cache for a
//! request that has no conversation (the OpenAI API is stateless).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use medgemma_model::generate::ConversationCache;

/// The cache and its size in bytes.
type Slot = Mutex<Option<(ConversationCache, u64)>>;

/// A conversation's kept cache: a shared slot, empty until a turn ends.
/// Clones share the slot; the conversation holds one, its running request
/// another.
#[derive(Debug, Clone, Default)]
pub struct KeptContext(Arc<Slot>);

impl KeptContext {
    /// An empty slot for a new conversation.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(slot: &Slot) -> MutexGuard<'_, Option<(ConversationCache, u64)>> {
        // Every update is one assignment, so a poisoned slot is whole.
        slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the kept cache out (the turn that continues it owns it now).
    pub fn take(&self) -> Option<ConversationCache> {
        Self::lock(&self.0).take().map(|(c, _)| c)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        Self::lock(&self.0).as_ref().map_or(0, |(_, b)| *b)
    }
}

/// The engine's view of every kept cache: weak handles, oldest first, and
/// the cap on their total size.
#[derive(Debug, Default)]
pub struct KeptLedger {
    cap: u64,
    kept: VecDeque<Weak<Slot>>,
}

impl KeptLedger {
    /// A ledger that keeps at most `cap` bytes (0: keeps nothing).
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            kept: VecDeque::new(),
        }
    }

    /// The cap in bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Kept caches alive now and their bytes (dead handles are dropped).
    pub fn usage(&mut self) -> (usize, u64) {
        self.kept.retain(|w| w.strong_count() > 0);
        let bytes = self
            .kept
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| KeptContext::lock(&s).as_ref().map_or(0, |(_, b)| *b))
            .sum();
        (self.kept.len(), bytes)
    }

    /// Puts `cache` (of `bytes`) into `into`, emptying the oldest other kept
    /// caches while the total and `reserved` (running turns' prompt caches
    /// bound for the ledger, [`KeptLedger::reserve`]) would pass the cap; a
    /// cache that does not fit beside `reserved` alone is not kept. Returns
    /// whether it was kept.
    pub fn keep(
        &mut self,
        into: &KeptContext,
        cache: ConversationCache,
        bytes: u64,
        reserved: u64,
    ) -> bool {
        // This slot's previous entry (it was taken at the turn's start).
        self.kept
            .retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&into.0)));
        if bytes == 0 || cache.is_empty() || !self.reserve(bytes.saturating_add(reserved)) {
            return false;
        }
        *KeptContext::lock(&into.0) = Some((cache, bytes));
        self.kept.push_back(Arc::downgrade(&into.0));
        true
    }

    /// Makes room for `bytes` more beside the kept caches, emptying the
    /// oldest while the total would pass the cap: the running turns' caches
    /// kept as they were after their prompts (they hold memory from their
    /// first decode step and end up here). `false`, emptying nothing,
    /// where `bytes` alone passes the cap.
    pub fn reserve(&mut self, bytes: u64) -> bool {
        if bytes > self.cap {
            return false;
        }
        let (_, mut used) = self.usage();
        while used.saturating_add(bytes) > self.cap {
            let Some(oldest) = self.kept.pop_front() else {
                break;
            };
            if let Some(slot) = oldest.upgrade()
                && let Some((_, b)) = KeptContext::lock(&slot).take()
            {
                used = used.saturating_sub(b);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `ConversationCache::default()` is empty, so the ledger's arithmetic is
    // tested through `KeptContext` slots filled by hand.
    fn fill(k: &KeptContext, bytes: u64) {
        *KeptContext::lock(&k.0) = Some((ConversationCache::default(), bytes));
    }

    // The cap itself (eviction of the oldest) is tested with real caches in
    // `engine::model::tests`.
    #[test]
    fn an_empty_cache_is_not_kept() {
        let mut ledger = KeptLedger::new(100);
        let k = KeptContext::new();
        assert!(!ledger.keep(&k, ConversationCache::default(), 10, 0));
        assert_eq!(k.bytes(), 0);
        assert_eq!(ledger.usage(), (0, 0));
    }

    #[test]
    fn a_dropped_conversation_frees_its_entry() {
        let mut ledger = KeptLedger::new(100);
        let a = KeptContext::new();
        fill(&a, 60);
        ledger.kept.push_back(Arc::downgrade(&a.0));
        assert_eq!(ledger.usage(), (1, 60));
        drop(a);
        assert_eq!(ledger.usage(), (0, 0));
    }

    /// Room for running turns' prompt caches empties the oldest kept caches
    /// first, only as many as needed, and none where the room asked for
    /// passes the cap alone.
    #[test]
    fn reserving_room_empties_the_oldest_kept_caches_first() {
        let mut ledger = KeptLedger::new(100);
        let (a, b) = (KeptContext::new(), KeptContext::new());
        for (k, n) in [(&a, 40), (&b, 30)] {
            fill(k, n);
            ledger.kept.push_back(Arc::downgrade(&k.0));
        }
        assert!(ledger.reserve(30), "70 + 30 fits");
        assert_eq!((a.bytes(), b.bytes()), (40, 30));
        assert!(!ledger.reserve(101), "past the cap alone");
        assert_eq!(ledger.usage(), (2, 70), "nothing emptied in vain");
        assert!(ledger.reserve(31));
        assert_eq!((a.bytes(), b.bytes()), (0, 30), "the oldest goes first");
        assert!(ledger.reserve(100));
        assert_eq!(ledger.usage(), (0, 0));
    }

    #[test]
    fn taking_the_cache_leaves_the_slot_empty() {
        let a = KeptContext::new();
        fill(&a, 5);
        let shared = a.clone();
        assert!(shared.take().is_some());
        assert_eq!(a.bytes(), 0);
        assert!(a.take().is_none());
    }
}
