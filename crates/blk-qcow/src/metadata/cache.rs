//! A write-back cache of metadata clusters (L2 tables, refcount blocks), keyed by host offset, evicted by the
//! clock algorithm.
//!
//! Lookups check the calling thread's last hit, then hash the offset into an index (no allocation); each slot
//! holds one table's bytes. A hit is a `&self` operation: it sets the slot's reference bit only when the bit
//! is clear, so repeated hits on a table write no shared cache line and may run under the metadata lock's read side (see `metadata`). Eviction sweeps
//! a clock hand over the slots, clearing reference bits, and takes the first slot whose bit was clear; the slot
//! most recently looked up or inserted with the exclusive lock is never the victim while another slot exists,
//! so a caller may use two tables at once. The owner writes dirty slots back (in dependency order) before they
//! are evicted: see `Metadata`.
//!
//! Sizes: the L2 cache holds at most `Qcow2OpenOptions::l2_cache_size` bytes of tables (default 32 MiB, QEMU's
//! maximum default; at least 2 tables), the refcount-block cache a quarter as many blocks (at least 4).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// This thread's last hit: (the cache's address, the table's offset, its slot). Checked before hashing, as
    /// consecutive requests mostly hit the same table; it is the thread's own, so keeping it writes nothing
    /// shared. A stale hint (another cache at the same address, a slot since replaced) fails the check of the
    /// slot's offset and costs one hash.
    static LAST_HIT: Cell<(usize, u64, usize)> = const { Cell::new((0, 0, 0)) };
}

/// One cached table.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Host offset of the table.
    pub(crate) offset: u64,
    /// The table's bytes (one cluster).
    pub(crate) data: Box<[u8]>,
    /// Whether it differs from the disk.
    pub(crate) dirty: bool,
    /// The clock's reference bit: set by hits, cleared by the sweeping hand.
    referenced: AtomicBool,
}

/// The cache.
#[derive(Debug)]
pub(crate) struct TableCache {
    capacity: usize,
    slots: Vec<Slot>,
    index: HashMap<u64, usize>,
    /// Where the next eviction sweep starts.
    hand: usize,
    /// The slot last looked up or inserted with exclusive access: never the victim while another exists.
    recent: usize,
}

impl TableCache {
    /// A cache of at most `capacity` tables (at least 2).
    pub(crate) fn new(capacity: usize) -> TableCache {
        TableCache {
            capacity: capacity.max(2),
            slots: Vec::new(),
            index: HashMap::new(),
            hand: 0,
            recent: 0,
        }
    }

    /// The slot holding the table at `offset`, marking it referenced: the hit path, for shared access. The
    /// reference bit is written only when it is clear.
    pub(crate) fn lookup(&self, offset: u64) -> Option<usize> {
        let me = self as *const TableCache as usize;
        let (cache, last_offset, last_slot) = LAST_HIT.get();
        let hinted = cache == me
            && last_offset == offset
            && self
                .slots
                .get(last_slot)
                .is_some_and(|s| s.offset == offset);
        let slot = if hinted {
            last_slot
        } else {
            let slot = *self.index.get(&offset)?;
            LAST_HIT.set((me, offset, slot));
            slot
        };
        if let Some(s) = self.slots.get(slot) {
            if !s.referenced.load(Ordering::Relaxed) {
                s.referenced.store(true, Ordering::Relaxed);
            }
        }
        Some(slot)
    }

    /// [`lookup`](TableCache::lookup) with exclusive access: the slot found is also kept from the next eviction.
    pub(crate) fn lookup_mut(&mut self, offset: u64) -> Option<usize> {
        let slot = self.lookup(offset)?;
        self.recent = slot;
        Some(slot)
    }

    /// The slot's table.
    pub(crate) fn data(&self, slot: usize) -> &[u8] {
        self.slots.get(slot).map_or(&[][..], |s| &s.data[..])
    }

    /// The slot's table for modification; marks it dirty.
    pub(crate) fn data_mut(&mut self, slot: usize) -> &mut [u8] {
        match self.slots.get_mut(slot) {
            Some(s) => {
                s.dirty = true;
                &mut s.data[..]
            }
            None => &mut [],
        }
    }

    /// Whether the cache is full (an insert would evict [`victim`](TableCache::victim)).
    pub(crate) fn is_full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// The slot to evict next: the clock hand sweeps on from where it stopped, clearing reference bits, and
    /// stops at the first slot whose bit was clear (after at most one full turn every bit is clear). The most
    /// recently used slot is skipped while another exists.
    pub(crate) fn victim(&mut self) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        // Two turns at most: the first clears every bit it passes.
        for _ in 0..2 * n + 1 {
            let at = self.hand % n;
            self.hand = (at + 1) % n;
            if at == self.recent && n > 1 {
                continue;
            }
            let referenced = self
                .slots
                .get(at)
                .is_some_and(|s| s.referenced.swap(false, Ordering::Relaxed));
            if !referenced {
                return Some(at);
            }
        }
        // Not reached: the first turn cleared every bit but `recent`'s (which is skipped).
        Some(if self.recent == 0 && n > 1 { 1 } else { 0 })
    }

    /// The slot (for writing it back).
    pub(crate) fn slot(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot)
    }

    /// Marks a slot clean after it was written back.
    pub(crate) fn mark_clean(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.dirty = false;
        }
    }

    /// Inserts a table, replacing slot `replace` (which must be clean) when given.
    pub(crate) fn insert(
        &mut self,
        offset: u64,
        data: Box<[u8]>,
        dirty: bool,
        replace: Option<usize>,
    ) -> usize {
        let slot = Slot {
            offset,
            data,
            dirty,
            referenced: AtomicBool::new(true),
        };
        let at = match replace.filter(|&r| r < self.slots.len()) {
            Some(r) => {
                let old = std::mem::replace(&mut self.slots[r], slot);
                self.index.remove(&old.offset);
                self.index.insert(offset, r);
                r
            }
            None => {
                self.slots.push(slot);
                let r = self.slots.len() - 1;
                self.index.insert(offset, r);
                r
            }
        };
        self.recent = at;
        at
    }

    /// Slots that are dirty.
    pub(crate) fn dirty_slots(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].dirty)
            .collect()
    }

    /// Whether any slot is dirty.
    pub(crate) fn has_dirty(&self) -> bool {
        self.slots.iter().any(|s| s.dirty)
    }

    /// Drops the table at `offset` without writing it back (it was freed).
    pub(crate) fn forget(&mut self, offset: u64) {
        if let Some(slot) = self.index.remove(&offset) {
            let last = self.slots.len().saturating_sub(1);
            self.slots.swap_remove(slot);
            if let Some(moved) = self.slots.get(slot) {
                self.index.insert(moved.offset, slot);
            }
            // The moved slot keeps its protection from eviction.
            if self.recent == last {
                self.recent = slot;
            }
        }
    }

    /// Drops every table (dirty ones included: flush first).
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
        self.hand = 0;
        self.recent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::TableCache;

    fn table(byte: u8) -> Box<[u8]> {
        vec![byte; 8].into_boxed_slice()
    }

    #[test]
    fn the_victim_is_never_the_table_just_used() {
        let mut cache = TableCache::new(2);
        let a = cache.insert(0x10000, table(1), false, None);
        let b = cache.insert(0x20000, table(2), false, None);
        // Both referenced; `b` was inserted last, then `a` is looked up with exclusive access.
        assert_eq!(cache.lookup_mut(0x10000), Some(a));
        for _ in 0..4 {
            assert_eq!(cache.victim(), Some(b));
        }
        assert_eq!(cache.lookup_mut(0x20000), Some(b));
        assert_eq!(cache.victim(), Some(a));
    }

    #[test]
    fn shared_hits_keep_a_table_from_the_next_sweep() {
        let mut cache = TableCache::new(3);
        for (i, offset) in [0x10000u64, 0x20000, 0x30000].into_iter().enumerate() {
            cache.insert(offset, table(i as u8), false, None);
        }
        // A sweep clears every reference bit but the recent slot's and picks the first clear one.
        let first = cache.victim();
        assert!(matches!(first, Some(0 | 1)));
        // A hit on the other old table, through the shared path, protects it from the next sweep.
        let other = if first == Some(0) { 0x20000 } else { 0x10000 };
        let hit = cache.lookup(other);
        assert!(hit.is_some());
        let next = cache.victim();
        assert_ne!(next, hit);
        assert_ne!(next, Some(2));
    }

    #[test]
    fn forget_and_replace_keep_the_index_right() {
        let mut cache = TableCache::new(2);
        cache.insert(0x10000, table(1), false, None);
        cache.insert(0x20000, table(2), false, None);
        cache.forget(0x10000);
        let moved = cache.lookup(0x20000).unwrap();
        assert_eq!(cache.data(moved)[0], 2);
        assert_eq!(cache.lookup(0x10000), None);
        let victim = cache.victim();
        let c = cache.insert(0x30000, table(3), false, victim.filter(|_| cache.is_full()));
        assert_eq!(cache.data(c)[0], 3);
        assert_eq!(cache.data(cache.lookup(0x20000).unwrap())[0], 2);
    }
}
