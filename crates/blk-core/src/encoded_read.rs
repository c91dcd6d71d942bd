//! Reads of encoded (compressed) data for [`MappedQueue`](crate::MappedQueue), through a small cache of read
//! windows.
//!
//! The encoded bytes of a [`ReadMapping::Encoded`](crate::ReadMapping::Encoded) piece are read by the backend
//! into a queue-owned, aligned buffer (valid under O_DIRECT whatever the encoded data's offset), then decoded on
//! the worker pool. Compressed clusters are small and packed one after another, so a guest reading sequentially
//! would send one small host read per cluster: when a piece continues where the previous one ended, the queue
//! reads a whole window ([`READ_AHEAD`]) and serves the following pieces from it, without host I/O. Pieces whose
//! bytes lie in a window still being read wait for it. Buffers of evicted windows are reused.
//!
//! The cache lives as long as the queue and holds only bytes of compressed clusters that were referenced when
//! they were read: guest writes never rewrite a compressed cluster in place (they allocate a new cluster), so a
//! window cannot go stale while the clusters it served stay referenced.

use std::sync::Arc;

use crate::buffer::{total_len_mut, IoBufMut};
use crate::direct_io::{Bounce, DirectIoAlignment};
use crate::error::{Error, ErrorKind, Result};

/// How much a sequential reader's window reads at once.
pub(crate) const READ_AHEAD: u64 = 256 << 10;

/// How far after the previous piece's end a piece may start and still count as sequential.
const SEQUENTIAL_GAP: u64 = 4096;

/// Windows kept once read (the oldest ready one is evicted beyond this).
const MAX_READY_WINDOWS: usize = 8;

/// One encoded piece of a guest request, waiting for its bytes or being decoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncodedPiece {
    /// The guest request's slot.
    pub(crate) slot: u32,
    /// Where the piece starts within the request.
    pub(crate) start: u64,
    /// Guest bytes of the piece.
    pub(crate) len: u64,
    /// Host offset of the encoded bytes.
    pub(crate) offset: u64,
    /// Encoded bytes.
    pub(crate) host_len: usize,
    /// Size of the decoded unit.
    pub(crate) decoded_len: usize,
    /// Where the piece starts in the decoded unit.
    pub(crate) skip: usize,
    /// The mapper's codec value.
    pub(crate) codec: u64,
}

/// A piece's encoded bytes, ready to decode: `buffer[data_start..data_start + host_len]`.
#[derive(Debug)]
pub(crate) struct DecodeInput {
    pub(crate) buffer: Arc<Bounce>,
    pub(crate) data_start: usize,
    pub(crate) piece: EncodedPiece,
}

/// What to do for a piece.
pub(crate) enum Placement {
    /// Its bytes are cached: decode now.
    Ready(DecodeInput),
    /// Its bytes are being read: it waits (nothing to do).
    Waiting,
    /// Read this window (one host read of `buffer.len()` bytes at `offset`), then [`EncodedReads::completed`].
    Read {
        index: u32,
        offset: u64,
        buffer: IoBufMut<'static>,
    },
}

#[derive(Debug)]
struct Window {
    file: usize,
    start: u64,
    len: u64,
    buffer: Arc<Bounce>,
    ready: bool,
    waiting: Vec<EncodedPiece>,
    last_use: u64,
}

/// The windows of one queue.
#[derive(Debug, Default)]
pub(crate) struct EncodedReads {
    windows: Vec<Option<Window>>,
    spare: Vec<Bounce>,
    /// Where the last piece's encoded bytes lay (file, start, end): a piece starting inside that range or just
    /// after it is sequential (recorded sizes of compressed clusters are rounded up, so ranges overlap a little).
    last: Option<(usize, u64, u64)>,
    tick: u64,
}

impl EncodedReads {
    /// Places `piece` (host file `file`): served from a window, waiting for one, or needing a new one. `None` when
    /// the sizes do not fit in memory (a mapper bug: mappers cap them).
    pub(crate) fn place(
        &mut self,
        file: usize,
        piece: EncodedPiece,
        alignment: Option<DirectIoAlignment>,
    ) -> Option<Placement> {
        self.tick += 1;
        let end = piece.offset.checked_add(piece.host_len as u64)?;
        let sequential = self.last.is_some_and(|(f, start, last_end)| {
            f == file
                && piece.offset > start
                && piece.offset <= last_end.saturating_add(SEQUENTIAL_GAP)
        });
        self.last = Some((file, piece.offset, end));
        let tick = self.tick;
        for w in self.windows.iter_mut().flatten() {
            if w.file == file && w.start <= piece.offset && end <= w.start + w.len {
                w.last_use = tick;
                if !w.ready {
                    w.waiting.push(piece);
                    return Some(Placement::Waiting);
                }
                let data_start = usize::try_from(piece.offset - w.start).ok()?;
                return Some(Placement::Ready(DecodeInput {
                    buffer: Arc::clone(&w.buffer),
                    data_start,
                    piece,
                }));
            }
        }
        let (memory, block) = alignment.map_or((64, 1), |a| {
            (
                (a.memory.max(64) as usize).next_power_of_two(),
                u64::from(a.offset.max(1)).next_power_of_two(),
            )
        });
        let start = piece.offset / block * block;
        let wanted = if sequential {
            end.max(start.checked_add(READ_AHEAD)?)
        } else {
            end
        };
        let window_end = wanted.div_ceil(block).checked_mul(block)?;
        let len = window_end - start;
        let mut buffer = self.spare.pop().unwrap_or_else(|| Bounce::new(0, memory));
        buffer.reuse(usize::try_from(len).ok()?, memory);
        let mut buffer = Arc::new(buffer);
        let bytes = Arc::get_mut(&mut buffer)?.bytes_mut();
        // SAFETY: the bytes live on the heap storage of the window's buffer, which this table owns until the
        // window's read completed (`completed`); the `Arc` is not cloned before then, moving it does not move
        // the heap storage, and nothing else touches the bytes meanwhile.
        let target = unsafe { IoBufMut::from_raw_parts(bytes.as_mut_ptr(), bytes.len()) };
        self.evict();
        let window = Window {
            file,
            start,
            len,
            buffer,
            ready: false,
            waiting: vec![piece],
            last_use: tick,
        };
        let index = match self.windows.iter().position(Option::is_none) {
            Some(i) => {
                self.windows[i] = Some(window);
                i
            }
            None => {
                self.windows.push(Some(window));
                self.windows.len() - 1
            }
        };
        Some(Placement::Read {
            index: u32::try_from(index).ok()?,
            offset: start,
            buffer: target,
        })
    }

    /// A window's read finished with `result` (bytes read, or the errno): the pieces that waited for it, with
    /// their input when it succeeded. A failed window is dropped.
    pub(crate) fn completed(
        &mut self,
        index: u32,
        result: std::result::Result<u64, i32>,
    ) -> (Vec<EncodedPiece>, Option<Arc<Bounce>>, u64) {
        let Some(entry) = self.windows.get_mut(index as usize) else {
            return (Vec::new(), None, 0);
        };
        let Some(w) = entry.as_mut() else {
            return (Vec::new(), None, 0);
        };
        let waiting = std::mem::take(&mut w.waiting);
        let start = w.start;
        match result {
            Ok(n) => {
                if let Some(buffer) = Arc::get_mut(&mut w.buffer) {
                    // Bytes past the end of the host file read as zeros.
                    let bytes = buffer.bytes_mut();
                    let n = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
                    bytes[n..].fill(0);
                }
                w.ready = true;
                (waiting, Some(Arc::clone(&w.buffer)), start)
            }
            Err(_) => {
                *entry = None;
                (waiting, None, start)
            }
        }
    }

    /// Drops the least recently used ready windows beyond [`MAX_READY_WINDOWS`], keeping their buffers when
    /// no decode still uses them.
    fn evict(&mut self) {
        loop {
            let ready = self.windows.iter().flatten().filter(|w| w.ready).count();
            if ready < MAX_READY_WINDOWS {
                return;
            }
            let oldest = self
                .windows
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.as_ref().filter(|w| w.ready).map(|w| (w.last_use, i)))
                .min();
            let Some((_, i)) = oldest else { return };
            if let Some(w) = self.windows[i].take() {
                if let Ok(buffer) = Arc::try_unwrap(w.buffer) {
                    self.spare.push(buffer);
                }
            }
        }
    }
}

/// Copies an encoded piece's guest bytes, `skip` bytes into its `decoded` unit, to `out` (as many as `out`
/// holds); returns how many. Both engines finish an encoded read with this.
pub(crate) fn copy_decoded(decoded: &[u8], skip: usize, out: &[IoBufMut<'_>]) -> Result<u64> {
    let len = total_len_mut(out);
    let bytes = usize::try_from(len)
        .ok()
        .and_then(|len| decoded.get(skip..skip.checked_add(len)?))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::CorruptImage,
                "an encoded piece reaches past its decoded unit",
            )
        })?;
    let mut at = 0;
    for buf in out {
        at += buf.copy_from(&bytes[at..]);
    }
    Ok(len)
}
