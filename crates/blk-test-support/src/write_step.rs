//! Scripted writes done the same way by qemu-io and by blk, so the two images can be compared.

use blk_core::DiskFile;

/// One write of a script: qemu-io's command and what a [`DiskFile`] does for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// `len` bytes of `byte` at `offset` (`write -P byte offset len`).
    Pattern {
        /// Where the write starts.
        offset: u64,
        /// How many bytes it writes.
        len: u64,
        /// The byte written.
        byte: u8,
    },
    /// Zeros, without unmapping (`write -z offset len`).
    Zero {
        /// Where the zeros start.
        offset: u64,
        /// How many bytes are zeroed.
        len: u64,
    },
    /// A discard (`discard offset len`): afterwards the range reads as zeros.
    Discard {
        /// Where the discard starts.
        offset: u64,
        /// How many bytes are discarded.
        len: u64,
    },
}

/// The reference script of the QEMU comparisons on a 16 MiB image: aligned and unaligned data, zeros, a
/// discard inside data, a write in the last MiB.
pub const REFERENCE_WRITES: &[WriteStep] = &[
    WriteStep::Pattern {
        offset: 0,
        len: 128 << 10,
        byte: 0xa7,
    },
    WriteStep::Pattern {
        offset: 2 << 20,
        len: 512,
        byte: 0x5c,
    },
    WriteStep::Pattern {
        offset: 6_295_040,
        len: 9 << 10,
        byte: 0x3e,
    },
    WriteStep::Zero {
        offset: 7 << 20,
        len: 64 << 10,
    },
    WriteStep::Pattern {
        offset: 9 << 20,
        len: 512 << 10,
        byte: 0x81,
    },
    WriteStep::Discard {
        offset: 9_502_720,
        len: 128 << 10,
    },
    WriteStep::Pattern {
        offset: 12_581_376,
        len: 3 << 10,
        byte: 0xf0,
    },
];

impl WriteStep {
    /// The step's `(offset, len)`.
    pub fn range(&self) -> (u64, u64) {
        match *self {
            WriteStep::Pattern { offset, len, .. }
            | WriteStep::Zero { offset, len }
            | WriteStep::Discard { offset, len } => (offset, len),
        }
    }

    /// The step as a qemu-io command.
    pub fn qemu_command(&self) -> String {
        match *self {
            WriteStep::Pattern { offset, len, byte } => {
                format!("write -P {byte:#x} {offset} {len}")
            }
            WriteStep::Zero { offset, len } => format!("write -z {offset} {len}"),
            WriteStep::Discard { offset, len } => format!("discard {offset} {len}"),
        }
    }

    /// Does the step on `disk`, as qemu-io does it (its `write -z` without `-u` does not unmap).
    pub fn apply(&self, disk: &dyn DiskFile) {
        match *self {
            WriteStep::Pattern { offset, len, byte } => disk
                .write_all_at(offset, &vec![byte; len as usize])
                .unwrap(),
            WriteStep::Zero { offset, len } => disk.write_zeroes(offset, len, false).unwrap(),
            WriteStep::Discard { offset, len } => disk.discard(offset, len).unwrap(),
        }
    }
}

/// `steps` as qemu-io commands.
pub fn qemu_io_commands(steps: &[WriteStep]) -> Vec<String> {
    steps.iter().map(WriteStep::qemu_command).collect()
}

/// Does `steps` on `disk` in order, then flushes it.
pub fn replay(disk: &dyn DiskFile, steps: &[WriteStep]) {
    for step in steps {
        step.apply(disk);
    }
    disk.flush().unwrap();
}

/// What a disk of `size` bytes that was all zeros holds after `steps` (discarded ranges read as zeros).
pub fn model(size: u64, steps: &[WriteStep]) -> Vec<u8> {
    let mut model = vec![0u8; size as usize];
    for step in steps {
        let (offset, len) = step.range();
        let byte = match *step {
            WriteStep::Pattern { byte, .. } => byte,
            WriteStep::Zero { .. } | WriteStep::Discard { .. } => 0,
        };
        model[offset as usize..(offset + len) as usize].fill(byte);
    }
    model
}
