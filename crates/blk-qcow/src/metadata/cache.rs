//! A write-back LRU cache of metadata clusters (L2 tables, refcount blocks), keyed by host offset.
//!
//! Lookups hash the offset into an index (no allocation); each slot holds one table's bytes. The owner writes
//! dirty slots back (in dependency order) before they are evicted: see `Metadata`.
//!
//! Sizes: the L2 cache holds at most `Qcow2OpenOptions::l2_cache_size` bytes of tables (default 32 MiB, QEMU's
//! maximum default; at least 2 tables), the refcount-block cache a quarter as many blocks (at least 4).

use std::collections::HashMap;

/// One cached table.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Host offset of the table.
    pub(crate) offset: u64,
    /// The table's bytes (one cluster).
    pub(crate) data: Box<[u8]>,
    /// Whether it differs from the disk.
    pub(crate) dirty: bool,
    last_use: u64,
}

/// The cache.
#[derive(Debug)]
pub(crate) struct TableCache {
    capacity: usize,
    slots: Vec<Slot>,
    index: HashMap<u64, usize>,
    tick: u64,
    /// The slot of the last lookup: checked (by its offset) before hashing, as consecutive requests mostly hit
    /// the same table.
    last: usize,
}

impl TableCache {
    /// A cache of at most `capacity` tables (at least 2).
    pub(crate) fn new(capacity: usize) -> TableCache {
        TableCache {
            capacity: capacity.max(2),
            slots: Vec::new(),
            index: HashMap::new(),
            tick: 0,
            last: 0,
        }
    }

    /// The slot holding the table at `offset`, marking it used.
    pub(crate) fn lookup(&mut self, offset: u64) -> Option<usize> {
        let slot = match self.slots.get(self.last) {
            Some(s) if s.offset == offset => self.last,
            _ => {
                let slot = *self.index.get(&offset)?;
                self.last = slot;
                slot
            }
        };
        self.tick += 1;
        if let Some(s) = self.slots.get_mut(slot) {
            s.last_use = self.tick;
        }
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

    /// The least recently used slot.
    pub(crate) fn victim(&self) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.last_use)
            .map(|(i, _)| i)
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
        self.tick += 1;
        let slot = Slot {
            offset,
            data,
            dirty,
            last_use: self.tick,
        };
        match replace.filter(|&r| r < self.slots.len()) {
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
        }
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
            self.slots.swap_remove(slot);
            if let Some(moved) = self.slots.get(slot) {
                self.index.insert(moved.offset, slot);
            }
        }
    }

    /// Drops every table (dirty ones included: flush first).
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
    }
}
