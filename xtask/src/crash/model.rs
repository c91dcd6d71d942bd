//! The model of a crashing image: for every sector, what a read may return now, and what it may return after
//! the writer is killed (the value the last completed flush made durable, or any value written since).
//!
//! Writes, zero writes and discards are applied when the writer *announces* them (they may or may not have
//! happened when it dies); a flush's acknowledgement (`A`) makes the current values the only ones allowed.
//! A discard may leave the old data, zeros, or the backing file's data. Growing (QCOW2) adds zero sectors; the
//! size after a crash is the last acknowledged one or any size asked for since.

use super::stamp::{classify, Value, SECTOR};

/// One event of the writer's protocol (see [`super::worker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `W id offset len`.
    Write {
        /// The write's id (its stamp).
        id: u32,
        /// Guest byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `Z offset len`.
    Zero {
        /// Guest byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `D offset len`.
    Discard {
        /// Guest byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `F`.
    Flush,
    /// `G size`.
    Grow {
        /// The new virtual size.
        size: u64,
    },
    /// `A`.
    Ack,
    /// `E message`.
    Failed(String),
    /// `X`.
    Done,
}

impl Event {
    /// Parses one complete line; `None` for anything else (such as a line cut short).
    pub fn parse(line: &str) -> Option<Event> {
        let mut words = line.split_whitespace();
        let tag = words.next()?;
        let mut n = || words.next().and_then(|w| w.parse::<u64>().ok());
        Some(match tag {
            "W" => Event::Write {
                id: u32::try_from(n()?).ok()?,
                offset: n()?,
                len: n()?,
            },
            "Z" => Event::Zero {
                offset: n()?,
                len: n()?,
            },
            "D" => Event::Discard {
                offset: n()?,
                len: n()?,
            },
            "F" => Event::Flush,
            "G" => Event::Grow { size: n()? },
            "A" => Event::Ack,
            "E" => Event::Failed(line.get(2..).unwrap_or("").to_string()),
            "X" => Event::Done,
            _ => return None,
        })
    }
}

/// A sector that read back as something the model does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Its guest byte offset.
    pub offset: u64,
    /// What was read.
    pub found: Value,
    /// What was allowed.
    pub allowed: Vec<Value>,
}

/// What reading an image back after a crash found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// A size the model does not allow: (found, allowed).
    pub bad_size: Option<(u64, Vec<u64>)>,
    /// Sectors holding what they may not (their count may be large; the first few are kept).
    pub mismatched: u64,
    /// Of those, sectors an unacknowledged write was writing that hold neither its data nor the old data,
    /// nor zeros (a write torn inside a sector, or data of another place): a real disk never tears a sector.
    pub torn: u64,
    /// The first mismatched sectors.
    pub examples: Vec<Mismatch>,
    /// Distinct writes a completed flush covered whose data is missing from a sector (the sector holds
    /// neither it nor a later write's data).
    pub lost_writes: u64,
}

impl Verdict {
    /// Whether everything read back as allowed.
    pub fn ok(&self) -> bool {
        self.bad_size.is_none() && self.mismatched == 0
    }
}

/// The model of one image across writer runs and kills.
#[derive(Debug, Clone)]
pub struct Model {
    /// Per sector: what a read returns now.
    now: Vec<Vec<Value>>,
    /// Per sector: what a read may return after a crash.
    after_crash: Vec<Vec<Value>>,
    /// Sector ranges changed since the last acknowledgement.
    touched: Vec<(usize, usize)>,
    /// Per sector: whether it changed since the last acknowledgement.
    pending: Vec<bool>,
    /// The id after the last write announced.
    next_id: u32,
    /// Writes with smaller ids were covered by a completed flush.
    acked_below: u32,
    /// The size now.
    size: u64,
    /// The sizes allowed after a crash.
    sizes_after_crash: Vec<u64>,
    /// Per sector: whether the backing file's sector is non-zero (empty without a backing file).
    backing_data: Vec<bool>,
}

fn add(set: &mut Vec<Value>, value: Value) {
    if !set.contains(&value) {
        set.push(value);
    }
}

impl Model {
    /// A new image of `size` bytes over a backing file whose non-zero sectors `backing_data` marks.
    pub fn new(size: u64, backing_data: Vec<bool>) -> Model {
        let sectors = (size / SECTOR) as usize;
        let initial: Vec<Vec<Value>> = (0..sectors)
            .map(|s| vec![Self::backing_value(&backing_data, s)])
            .collect();
        Model {
            pending: vec![false; sectors],
            next_id: 0,
            acked_below: 0,
            after_crash: initial.clone(),
            now: initial,
            touched: Vec::new(),
            size,
            sizes_after_crash: vec![size],
            backing_data,
        }
    }

    fn backing_value(backing_data: &[bool], sector: usize) -> Value {
        if backing_data.get(sector).copied().unwrap_or(false) {
            Value::Backing
        } else {
            Value::Zero
        }
    }

    fn sectors(&self, offset: u64, len: u64) -> (usize, usize) {
        let end = ((offset + len) / SECTOR).min(self.now.len() as u64);
        ((offset / SECTOR) as usize, end as usize)
    }

    fn change(&mut self, offset: u64, len: u64, mut f: impl FnMut(usize, &mut Vec<Value>)) {
        let (start, end) = self.sectors(offset, len);
        for s in start..end {
            self.pending[s] = true;
            f(s, &mut self.now[s]);
            for v in self.now[s].clone() {
                add(&mut self.after_crash[s], v);
            }
        }
        self.touched.push((start, end));
    }

    /// Applies one announced event.
    pub fn apply(&mut self, event: &Event) {
        match *event {
            Event::Write { id, offset, len } => {
                self.next_id = self.next_id.max(id.saturating_add(1));
                self.change(offset, len, |_, now| *now = vec![Value::Stamp(id)])
            }
            Event::Zero { offset, len } => {
                self.change(offset, len, |_, now| *now = vec![Value::Zero])
            }
            Event::Discard { offset, len } => {
                let backing = self.backing_data.clone();
                self.change(offset, len, |s, now| {
                    add(now, Value::Zero);
                    add(now, Self::backing_value(&backing, s));
                })
            }
            Event::Grow { size } => {
                let sectors = (size / SECTOR) as usize;
                let old = self.now.len();
                if sectors > old {
                    self.now.resize(sectors, vec![Value::Zero]);
                    self.after_crash.resize(sectors, vec![Value::Zero]);
                    self.pending.resize(sectors, true);
                }
                self.size = size;
                if !self.sizes_after_crash.contains(&size) {
                    self.sizes_after_crash.push(size);
                }
            }
            Event::Ack => {
                for (start, end) in std::mem::take(&mut self.touched) {
                    for s in start..end {
                        self.after_crash[s] = self.now[s].clone();
                        self.pending[s] = false;
                    }
                }
                self.sizes_after_crash = vec![self.size];
                self.acked_below = self.next_id;
            }
            Event::Flush | Event::Failed(_) | Event::Done => {}
        }
    }

    /// Checks an image read back after a crash (`data`: the whole disk, raw; `backing`: the backing file's
    /// contents, raw) and makes what was read the model's new state.
    pub fn verify(&mut self, data: &[u8], backing: &[u8]) -> Verdict {
        let mut verdict = Verdict::default();
        let size = data.len() as u64;
        if !self.sizes_after_crash.contains(&size) {
            verdict.bad_size = Some((size, self.sizes_after_crash.clone()));
        }
        let sectors = (size / SECTOR) as usize;
        let mut lost = std::collections::BTreeSet::new();
        let mut observed = Vec::with_capacity(sectors);
        for (s, sector) in data.chunks(SECTOR as usize).take(sectors).enumerate() {
            let at = s as u64 * SECTOR;
            let under = backing.get(at as usize..(at + SECTOR) as usize);
            let found = classify(sector, at, under);
            if let Some(allowed) = self.after_crash.get(s) {
                if !allowed.contains(&found) {
                    verdict.mismatched += 1;
                    let pending = self.pending.get(s).copied().unwrap_or(false);
                    if pending && matches!(found, Value::Garbage | Value::Misplaced(_)) {
                        verdict.torn += 1;
                        if verdict.examples.len() < 4 {
                            verdict.examples.push(Mismatch {
                                offset: at,
                                found,
                                allowed: allowed.clone(),
                            });
                        }
                        observed.push(vec![found]);
                        continue;
                    }
                    if verdict.examples.len() < 4 {
                        verdict.examples.push(Mismatch {
                            offset: at,
                            found,
                            allowed: allowed.clone(),
                        });
                    }
                    for v in allowed {
                        match v {
                            Value::Stamp(id) if *id < self.acked_below => {
                                lost.insert(*id);
                            }
                            _ => {}
                        }
                    }
                }
            }
            observed.push(vec![found]);
        }
        verdict.lost_writes = lost.len() as u64;
        self.pending = vec![false; observed.len()];
        self.acked_below = self.next_id;
        self.after_crash = observed.clone();
        self.now = observed;
        self.touched.clear();
        self.size = size;
        self.sizes_after_crash = vec![size];
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::super::stamp::fill;
    use super::*;

    fn image(model_size: usize, writes: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut data = vec![0u8; model_size];
        let mut buf = Vec::new();
        for &(id, offset, len) in writes {
            fill(&mut buf, id, offset, len);
            data[offset as usize..(offset + len) as usize].copy_from_slice(&buf);
        }
        data
    }

    #[test]
    fn events_parse() {
        assert_eq!(
            Event::parse("W 3 512 1024"),
            Some(Event::Write {
                id: 3,
                offset: 512,
                len: 1024
            })
        );
        assert_eq!(Event::parse("A"), Some(Event::Ack));
        assert_eq!(Event::parse("W 3 51"), None);
        assert_eq!(
            Event::parse("E open: x"),
            Some(Event::Failed("open: x".into()))
        );
    }

    #[test]
    fn a_flushed_write_must_survive_an_unflushed_one_may_not() {
        let mut model = Model::new(8192, Vec::new());
        model.apply(&Event::parse("W 1 0 1024").unwrap());
        model.apply(&Event::Flush);
        model.apply(&Event::Ack);
        model.apply(&Event::parse("W 2 512 512").unwrap());
        // The second write may or may not be there.
        assert!(model
            .clone()
            .verify(&image(8192, &[(1, 0, 1024)]), &[])
            .ok());
        assert!(model
            .clone()
            .verify(&image(8192, &[(1, 0, 1024), (2, 512, 512)]), &[])
            .ok());
        // The first one must.
        let v = model.clone().verify(&image(8192, &[]), &[]);
        assert_eq!((v.mismatched, v.lost_writes, v.torn), (2, 1, 0));
        // Garbage where an unflushed write was going is a torn write, not a lost one.
        let mut torn = image(8192, &[(1, 0, 1024)]);
        torn[600] ^= 0xff;
        let v = model.clone().verify(&torn, &[]);
        assert_eq!((v.mismatched, v.lost_writes, v.torn), (1, 0, 1));
        // A discarded sector may read as zeros or as before; a short image is a wrong size.
        model.apply(&Event::parse("D 0 512").unwrap());
        assert!(model
            .clone()
            .verify(&image(8192, &[(1, 512, 512)]), &[])
            .ok());
        assert!(model.verify(&image(4096, &[]), &[]).bad_size.is_some());
    }

    #[test]
    fn growing_is_durable_once_acknowledged() {
        let mut model = Model::new(4096, Vec::new());
        model.apply(&Event::Grow { size: 8192 });
        assert!(model.clone().verify(&[0; 4096], &[]).ok());
        model.apply(&Event::Ack);
        assert!(!model.clone().verify(&[0; 4096], &[]).ok());
        assert!(model.verify(&[0; 8192], &[]).ok());
    }
}
