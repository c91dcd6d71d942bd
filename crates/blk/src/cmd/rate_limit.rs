//! `convert -r RATE`: qemu-img's rate limit on the guest data copied, in bytes per second.
//!
//! Only data that is read and written counts (ranges that read as zeros cost nothing, as in qemu-img); the copy
//! sleeps whenever it is ahead of `RATE` bytes per second since it started, allowing one 100 ms slice of burst
//! as qemu's `ratelimit` does.

use std::cell::Cell;
use std::time::{Duration, Instant};

use blk_core::Result;

use super::parse_size_arg;

/// The burst qemu's rate limiter allows before it starts delaying: one slice of 100 ms.
const SLICE: Duration = Duration::from_millis(100);

/// A rate limit in bytes per second over the data copied so far.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: u64,
    start: Instant,
    copied: Cell<u64>,
}

impl RateLimit {
    /// Parses `-r RATE` (a size with qemu's suffixes, up to `INT64_MAX`, with qemu-img's messages); `None`
    /// or 0 means no limit.
    pub fn parse(text: Option<&str>) -> Result<Option<RateLimit>> {
        let Some(text) = text else {
            return Ok(None);
        };
        let rate = parse_size_arg("rate limit", text)?;
        Ok((rate > 0).then(|| RateLimit {
            bytes_per_second: rate,
            start: Instant::now(),
            copied: Cell::new(0),
        }))
    }

    /// Accounts `bytes` more data, sleeping first when the copy is ahead of the rate.
    pub fn pace(&self, bytes: u64) {
        let copied = self.copied.get().saturating_add(bytes);
        self.copied.set(copied);
        let due = Duration::from_secs_f64(copied as f64 / self.bytes_per_second as f64);
        let elapsed = self.start.elapsed() + SLICE;
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_qemu_img() {
        assert!(RateLimit::parse(None).unwrap().is_none());
        assert!(RateLimit::parse(Some("0")).unwrap().is_none());
        assert_eq!(
            RateLimit::parse(Some("1M"))
                .unwrap()
                .unwrap()
                .bytes_per_second,
            1 << 20
        );
        assert_eq!(
            RateLimit::parse(Some("1X")).unwrap_err().to_string(),
            "Invalid rate limit specified: '1X'."
        );
        assert_eq!(
            RateLimit::parse(Some("-5")).unwrap_err().to_string(),
            "Invalid rate limit specified. Must be between 0 and 9223372036854775807."
        );
    }
}
