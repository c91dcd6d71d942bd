//! The creation options a format accepts: described for `-o help`, and the value rules qemu-img applies to
//! all formats (booleans, the size given once).

use crate::error::{Error, ErrorKind, Result};

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

/// How qemu prints a creation option's value on its `Formatting ...` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionPrint {
    /// A byte count: printed as an integer when given (`cluster_size=4k` prints `cluster_size=4096`).
    Size,
    /// A plain number: printed as an integer when given.
    Number,
    /// Printed as given.
    Text,
}

/// One option of qemu's option list for a format, as `qemu-img create` prints it on its `Formatting ...` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormattingOption {
    /// The key, e.g. `cluster_size`.
    pub name: &'static str,
    /// How a given value prints.
    pub print: OptionPrint,
    /// What qemu prints when the option is not given (`None`: the option is left out).
    pub default: Option<&'static str>,
}

impl FormattingOption {
    /// An option printed as `print`, with qemu's printed `default`.
    pub const fn new(
        name: &'static str,
        print: OptionPrint,
        default: Option<&'static str>,
    ) -> FormattingOption {
        FormattingOption {
            name,
            print,
            default,
        }
    }
}

/// The `file` protocol's options, which qemu appends to every format's list on the `Formatting ...` line.
pub const FILE_FORMATTING_OPTIONS: &[FormattingOption] = &[
    FormattingOption::new("size", OptionPrint::Size, None),
    FormattingOption::new("nocow", OptionPrint::Text, None),
    FormattingOption::new("preallocation", OptionPrint::Text, None),
    FormattingOption::new("extent_size_hint", OptionPrint::Size, None),
];

/// Parses a boolean creation option as qemu does: `on`/`yes`/`true`/`y` or `off`/`no`/`false`/`n`.
///
/// ```
/// assert_eq!(blk_core::parse_bool_param("nocow", "on").unwrap(), true);
/// let err = blk_core::parse_bool_param("nocow", "maybe").unwrap_err();
/// assert_eq!(err.to_string(), "Parameter 'nocow' expects 'on' or 'off'");
/// ```
pub fn parse_bool_param(name: &str, value: &str) -> Result<bool> {
    match value {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("Parameter '{name}' expects 'on' or 'off'"),
        )),
    }
}

/// The virtual size of a new image from the positional size argument and the `size` option, which qemu-img
/// accepts once only ("The image size must be specified only once"); `None` when neither is given.
///
/// ```
/// assert_eq!(blk_core::single_size(Some(1), None).unwrap(), Some(1));
/// assert_eq!(blk_core::single_size(None, None).unwrap(), None);
/// assert!(blk_core::single_size(Some(1), Some(2)).is_err());
/// ```
pub fn single_size(positional: Option<u64>, option: Option<u64>) -> Result<Option<u64>> {
    match (positional, option) {
        (Some(_), Some(_)) => Err(Error::new(
            ErrorKind::InvalidInput,
            "The image size must be specified only once",
        )),
        (size, None) | (None, size) => Ok(size),
    }
}
