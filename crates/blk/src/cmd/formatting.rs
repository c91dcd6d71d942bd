//! qemu-img's `Formatting 'FILE', fmt=FMT key=value ...` line: every creation option the format knows, in the
//! order of qemu's option list, with the value given or qemu's default where it has one.
//!
//! qemu prints its merged option list (the format's options, then the `file` protocol's): sizes and numbers
//! given on the command line as parsed integers (`cluster_size=4k` prints `cluster_size=4096`), other values as
//! given, and options left out only when they have a default (`cluster_size=65536`, `extended_l2=off`, ...).

use blk_core::{parse_size_param, OptionPrint, FILE_FORMATTING_OPTIONS};
use blk_factory::CreateParams;

use super::display_path;

/// The line qemu-img create prints for `params`, whose virtual size is `size` (the given one, or the backing
/// file's).
pub fn formatting_line(params: &CreateParams, size: Option<u64>) -> String {
    let mut given: Vec<(String, String)> = params.options.clone();
    let mut set = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            if !given.iter().any(|(k, _)| k == key) {
                given.push((key.to_string(), value));
            }
        }
    };
    set("size", size.map(|s| s.to_string()));
    set("backing_file", params.backing_file.clone());
    set(
        "backing_fmt",
        params.backing_format.map(|f| f.name().to_string()),
    );

    let mut line = format!(
        "Formatting '{}', fmt={}",
        display_path(&params.path),
        params.format.name()
    );
    let own = params.format.descriptor().formatting_options();
    let protocol = FILE_FORMATTING_OPTIONS
        .iter()
        .filter(|o| !own.iter().any(|own| own.name == o.name));
    let mut printed: Vec<&str> = Vec::new();
    for option in own.iter().chain(protocol) {
        let name = option.name;
        let value = match given.iter().find(|(k, _)| k == name) {
            Some((_, text)) => Some(print_value(name, option.print, text)),
            None => option.default.map(str::to_string),
        };
        if let Some(value) = value {
            line.push_str(&format!(" {name}={value}"));
            printed.push(name);
        }
    }
    // Options qemu would not know (refused by the format anyway) go last, as given.
    for (key, value) in &given {
        if !printed.contains(&key.as_str()) {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    line
}

fn print_value(name: &str, print: OptionPrint, text: &str) -> String {
    let parsed = match print {
        OptionPrint::Size => parse_size_param(name, text).ok(),
        OptionPrint::Number => text.parse::<u64>().ok(),
        OptionPrint::Text => None,
    };
    parsed.map_or_else(|| text.to_string(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blk_factory::ImageFormat;

    fn format(name: &str) -> ImageFormat {
        name.parse().unwrap()
    }

    #[test]
    fn qcow2_defaults_and_given_values_in_qemus_order() {
        let mut params = CreateParams::new("x.qcow2", format("qcow2"), Some(1 << 30));
        params.options = vec![
            ("refcount_bits".into(), "1".into()),
            ("cluster_size".into(), "4k".into()),
        ];
        params.backing_file = Some("base.raw".into());
        params.backing_format = Some(ImageFormat::RAW);
        assert_eq!(
            formatting_line(&params, params.size),
            "Formatting 'x.qcow2', fmt=qcow2 cluster_size=4096 extended_l2=off compression_type=zlib \
             size=1073741824 backing_file=base.raw backing_fmt=raw lazy_refcounts=off refcount_bits=1"
        );
    }

    #[test]
    fn raw_and_vhdx_lists() {
        let mut params = CreateParams::new("x.raw", ImageFormat::RAW, Some(4096));
        params.options = vec![("preallocation".into(), "falloc".into())];
        assert_eq!(
            formatting_line(&params, params.size),
            "Formatting 'x.raw', fmt=raw size=4096 preallocation=falloc"
        );
        let params = CreateParams::new("x.vhdx", format("vhdx"), Some(1 << 20));
        assert_eq!(
            formatting_line(&params, params.size),
            "Formatting 'x.vhdx', fmt=vhdx size=1048576 log_size=1048576 block_size=0"
        );
    }
}
