//! The bitmaps as `qemu-img info` lists them.

use blk_core::InfoValue;

use crate::bitmaps::directory::{Bitmap, FLAG_AUTO, FLAG_IN_USE};

/// The bitmaps as qemu-img's format-specific `bitmaps` list: `{name, granularity, flags}` each, flags as
/// `in-use` / `auto`.
pub(crate) fn info_value(bitmaps: &[Bitmap]) -> InfoValue {
    InfoValue::List(
        bitmaps
            .iter()
            .map(|b| {
                let mut flags = Vec::new();
                if b.flags & FLAG_IN_USE != 0 {
                    flags.push(InfoValue::String("in-use".to_string()));
                }
                if b.flags & FLAG_AUTO != 0 {
                    flags.push(InfoValue::String("auto".to_string()));
                }
                InfoValue::Map(vec![
                    ("name".to_string(), InfoValue::String(b.name.clone())),
                    ("granularity".to_string(), InfoValue::U64(b.granularity)),
                    ("flags".to_string(), InfoValue::List(flags)),
                ])
            })
            .collect(),
    )
}
