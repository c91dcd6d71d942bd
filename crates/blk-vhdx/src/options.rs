//! Open and create options: [`VhdxOpenOptions`], [`VhdxCreateOptions`] and qemu-img's `-o` keys for vhdx.

use std::sync::Arc;

use blk_core::{
    parse_bool_param, parse_size_param, single_size, CreateOptionInfo, HostOpenOptions,
    ImageOpener, Operation, Result,
};

use crate::error::invalid_input;
use crate::header::MIB;
use crate::metadata::{MAX_BLOCK_SIZE, MAX_DISK_SIZE};

/// How to open a VHDX image.
#[derive(Debug, Clone)]
pub struct VhdxOpenOptions {
    /// Host file options (read-only, O_DIRECT, locking).
    pub host: HostOpenOptions,
    /// Opens a differencing image's parent (read-only, format `vhdx`); the default refuses.
    pub opener: Arc<dyn ImageOpener>,
    /// Open for `check`: BAT problems are reported by [`ImageAdmin::check`](blk_core::ImageAdmin::check) instead of
    /// failing the open (QEMU's `BDRV_O_CHECK`). Default off.
    pub check_mode: bool,
    /// How deep in a differencing chain this image sits (0 for the image the user named).
    pub depth: u32,
}

impl VhdxOpenOptions {
    /// Options with `host` and `opener`, not in check mode, at depth 0.
    pub fn new(host: HostOpenOptions, opener: Arc<dyn ImageOpener>) -> VhdxOpenOptions {
        VhdxOpenOptions {
            host,
            opener,
            check_mode: false,
            depth: 0,
        }
    }
}

/// qemu-img's `subformat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// Blocks allocated on first write.
    #[default]
    Dynamic,
    /// All blocks allocated at creation.
    Fixed,
}

/// What a new VHDX image looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxCreateOptions {
    /// Guest-visible size (rounded up to 512 bytes); `None` takes the parent's size.
    pub size: Option<u64>,
    /// Dynamic or fixed.
    pub subformat: Subformat,
    /// Block size in bytes; 0 chooses by size as QEMU does.
    pub block_size: u64,
    /// Log size in bytes (a multiple of 1 MiB).
    pub log_size: u64,
    /// Mark new blocks ZERO rather than NOT_PRESENT (QEMU's default, on).
    pub block_state_zero: bool,
    /// The parent of a differencing image, as recorded in it.
    pub backing_file: Option<String>,
    /// The parent's format (must be `vhdx` when given).
    pub backing_fmt: Option<String>,
    /// Logical sector size, 512 (QEMU's only choice) or 4096. Not a qemu-img option.
    pub logical_sector_size: u32,
    /// Physical sector size, 512 or 4096. Not a qemu-img option.
    pub physical_sector_size: u32,
}

impl Default for VhdxCreateOptions {
    fn default() -> VhdxCreateOptions {
        VhdxCreateOptions {
            size: None,
            subformat: Subformat::Dynamic,
            block_size: 0,
            log_size: MIB,
            block_state_zero: true,
            backing_file: None,
            backing_fmt: None,
            logical_sector_size: 512,
            physical_sector_size: 512,
        }
    }
}

/// The options `create -f vhdx -o ...` accepts, in qemu-img's `-o help` order and words.
pub static CREATE_OPTIONS: &[CreateOptionInfo] = &[
    CreateOptionInfo { name: "block_size", value_type: "size", help: "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size." },
    CreateOptionInfo { name: "block_state_zero", value_type: "bool (on/off)", help: "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic." },
    CreateOptionInfo { name: "log_size", value_type: "size", help: "Log size; min 1MB." },
    CreateOptionInfo { name: "size", value_type: "size", help: "Virtual disk size; max of 64TB." },
    CreateOptionInfo { name: "subformat", value_type: "str", help: "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'." },
];

/// qemu's boolean option values, with this format's error context.
fn parse_bool(name: &str, value: &str) -> Result<bool> {
    parse_bool_param(name, value).map_err(|e| invalid_input(e.message()))
}

fn size_param(key: &str, value: &str) -> Result<u64> {
    parse_size_param(key, value).map_err(|e| {
        e.with_format(crate::FORMAT_NAME)
            .with_operation(Operation::Create)
    })
}

impl VhdxCreateOptions {
    /// Parses qemu-img's `-o` options for vhdx (`size`, `subformat`, `block_size`, `log_size`,
    /// `block_state_zero`, plus `backing_file`/`backing_fmt` the CLI passes for `-b`/`-F`). Block and log sizes
    /// are rounded up to 1 MiB and the block size capped at 256 MiB, as qemu-img does; a block size that is
    /// then not a power of two fails ("Block size must be a power of two"), as does a size over 64 TiB.
    ///
    /// ```
    /// use blk_vhdx::{Subformat, VhdxCreateOptions};
    /// let o = [("subformat".to_string(), "fixed".to_string()), ("block_size".to_string(), "1M".to_string())];
    /// let parsed = VhdxCreateOptions::from_key_values(Some(64 << 20), &o).unwrap();
    /// assert_eq!(parsed.subformat, Subformat::Fixed);
    /// assert_eq!(parsed.block_size, 1 << 20);
    /// let err = VhdxCreateOptions::from_key_values(Some(1), &[("foo".into(), "1".into())]).unwrap_err();
    /// assert_eq!(err.kind(), blk_core::ErrorKind::InvalidInput);
    /// ```
    pub fn from_key_values(
        size: Option<u64>,
        options: &[(String, String)],
    ) -> Result<VhdxCreateOptions> {
        let mut out = VhdxCreateOptions::default();
        let mut option_size = None;
        for (key, value) in options {
            match key.as_str() {
                "size" => option_size = Some(size_param(key, value)?),
                "subformat" => {
                    out.subformat = match value.as_str() {
                        "dynamic" => Subformat::Dynamic,
                        "fixed" => Subformat::Fixed,
                        _ => {
                            return Err(invalid_input(format!(
                                "Parameter 'subformat' does not accept value '{value}'"
                            )))
                        }
                    }
                }
                "block_size" => out.block_size = size_param(key, value)?,
                "log_size" => out.log_size = size_param(key, value)?,
                "block_state_zero" => out.block_state_zero = parse_bool(key, value)?,
                "backing_file" => out.backing_file = Some(value.clone()),
                "backing_fmt" => out.backing_fmt = Some(value.clone()),
                _ => return Err(invalid_input(format!("Invalid parameter '{key}'"))),
            }
        }
        out.size = single_size(size, option_size).map_err(|e| invalid_input(e.message()))?;
        if out.size.is_none() && out.backing_file.is_none() {
            return Err(invalid_input("Image creation needs a size parameter"));
        }
        out.normalize()?;
        Ok(out)
    }

    /// qemu-img's rounding and checks of sizes.
    pub(crate) fn normalize(&mut self) -> Result<()> {
        if let Some(size) = self.size {
            if size > MAX_DISK_SIZE {
                return Err(invalid_input("Image size too large; max of 64TB"));
            }
            self.size = Some(size.div_ceil(512) * 512);
        }
        self.block_size = self.block_size.div_ceil(MIB) * MIB;
        self.block_size = self.block_size.min(u64::from(MAX_BLOCK_SIZE));
        if self.block_size != 0 && !self.block_size.is_power_of_two() {
            return Err(invalid_input("Block size must be a power of two"));
        }
        self.log_size = self.log_size.max(1).div_ceil(MIB) * MIB;
        if self.log_size > u64::from(u32::MAX) / MIB * MIB {
            return Err(invalid_input("Log size must be smaller than 4 GB"));
        }
        if let Some(fmt) = &self.backing_fmt {
            if fmt != "vhdx" {
                return Err(invalid_input(format!(
                    "a VHDX differencing image needs a vhdx parent, not '{fmt}'"
                )));
            }
        }
        if self.backing_file.is_some() && self.subformat == Subformat::Fixed {
            return Err(invalid_input("a differencing image cannot be fixed"));
        }
        for s in [self.logical_sector_size, self.physical_sector_size] {
            if s != 512 && s != 4096 {
                return Err(invalid_input(format!(
                    "sector size {s} is neither 512 nor 4096"
                )));
            }
        }
        Ok(())
    }

    /// The block size QEMU chooses for `size` when none is given.
    pub fn auto_block_size(size: u64) -> u64 {
        if size > 32 << 40 {
            64 * MIB
        } else if size > 100 << 30 {
            32 * MIB
        } else if size > 1 << 30 {
            16 * MIB
        } else {
            8 * MIB
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn qemu_rounding_and_messages() {
        let o = VhdxCreateOptions::from_key_values(
            Some(1000),
            &kv(&[("block_size", "512M"), ("log_size", "1000")]),
        )
        .unwrap();
        assert_eq!(o.size, Some(1024));
        assert_eq!(o.block_size, 256 << 20);
        assert_eq!(o.log_size, 1 << 20);
        let e =
            VhdxCreateOptions::from_key_values(Some(1), &kv(&[("block_size", "3M")])).unwrap_err();
        assert!(
            e.to_string().contains("Block size must be a power of two"),
            "{e}"
        );
        let e = VhdxCreateOptions::from_key_values(Some(65 << 40), &[]).unwrap_err();
        assert!(e.to_string().contains("Image size too large; max of 64TB"));
        let e =
            VhdxCreateOptions::from_key_values(Some(1), &kv(&[("subformat", "foo")])).unwrap_err();
        assert!(e.to_string().contains("does not accept value 'foo'"));
        assert!(VhdxCreateOptions::from_key_values(None, &[]).is_err());
        assert_eq!(VhdxCreateOptions::auto_block_size(64 << 20), 8 << 20);
        assert_eq!(VhdxCreateOptions::auto_block_size(2 << 30), 16 << 20);
        assert_eq!(VhdxCreateOptions::auto_block_size(200 << 30), 32 << 20);
        assert_eq!(VhdxCreateOptions::auto_block_size(33 << 40), 64 << 20);
    }
}
