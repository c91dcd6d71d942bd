//! The creation options a format accepts, described for `-o help`.

/// One option of `create -o key=value`, as qemu-img lists it under "Supported options:".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptionInfo {
    /// The key, e.g. `preallocation`.
    pub name: &'static str,
    /// The value's type as qemu-img shows it: `size`, `str`, `bool (on/off)`, `num`.
    pub value_type: &'static str,
    /// One line of help.
    pub help: &'static str,
}

impl CreateOptionInfo {
    /// The line qemu-img prints for the option: `  name=<type>` padded to 22 columns, ` - `, the help.
    ///
    /// ```
    /// let o = blk_core::CreateOptionInfo { name: "size", value_type: "size", help: "Virtual disk size" };
    /// assert_eq!(o.help_line(), "  size=<size>            - Virtual disk size");
    /// ```
    pub fn help_line(&self) -> String {
        let key = format!("{}=<{}>", self.name, self.value_type);
        format!("  {key:<22} - {}", self.help)
    }
}
