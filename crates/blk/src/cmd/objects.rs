//! `--object secret,id=ID,data=STRING|file=PATH[,format=raw|base64]`: qemu's secret objects, parsed and
//! validated with qemu's messages and kept in one store for the run, where opening an image looks them up by id
//! (`encrypt.key-secret=ID`). A secret's bytes are never printed: its `Debug` shows the id only.
//!
//! Other object types (`iothread`, `throttle-group`, ...) are refused: blk has no use for them.

use std::sync::OnceLock;

use blk_core::{Error, ErrorKind, Result};

use super::option_list::{split_option_list, OptionItem};

/// The `--object` option of the subcommands qemu-img takes it on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ObjectArgs {
    /// Define an object: `secret,id=ID,data=STRING` or `secret,id=ID,file=PATH`, with `format=raw` (the
    /// default) or `format=base64`; images name the secret by its id (`encrypt.key-secret=ID`).
    #[arg(long = "object", value_name = "OBJECTDEF")]
    pub objects: Vec<String>,
}

/// A secret defined on the command line.
#[derive(Clone)]
// Its bytes are handed to the image formats that need a key (QCOW2's LUKS encryption, `encrypt.key-secret`)
// as a `blk_core::Secret`, zeroed when the last copy is dropped.
pub struct Secret {
    id: String,
    bytes: blk_core::Secret,
}

impl Secret {
    /// The secret's id.
    #[cfg(test)]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret's bytes (decoded when it was given as base64).
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        self.bytes.bytes()
    }

    /// The bytes, to hand to a format.
    pub fn value(&self) -> blk_core::Secret {
        self.bytes.clone()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The secrets of this run, defined once before the subcommand runs.
static SECRETS: OnceLock<Vec<Secret>> = OnceLock::new();

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// Parses and validates every `--object` definition, in order, and keeps the secrets for [`secret`]. Called
/// once, before the subcommand runs.
pub fn define(definitions: &[String]) -> Result<()> {
    let mut secrets: Vec<Secret> = Vec::new();
    for definition in definitions {
        let secret = parse_secret(definition, &secrets)?;
        if secrets.iter().any(|s| s.id == secret.id) {
            return Err(invalid(format!(
                "attempt to add duplicate property '{}' to object (type 'container')",
                secret.id
            )));
        }
        secrets.push(secret);
    }
    // Formats that name a secret by id (QCOW2's `encrypt.key-secret` at create) look it up there.
    for secret in &secrets {
        blk_core::Secret::define(&secret.id, secret.value());
    }
    // A second call (only tests run the CLI twice in one process) keeps the first run's secrets.
    let _ = SECRETS.set(secrets);
    Ok(())
}

/// The secret defined with `id`, or qemu's `No secret with id 'ID'`.
pub fn secret(id: &str) -> Result<Secret> {
    SECRETS
        .get()
        .and_then(|all| all.iter().find(|s| s.id == id))
        .cloned()
        .ok_or_else(|| invalid(format!("No secret with id '{id}'")))
}

/// Whether `id` is a QOM identifier: letters, digits, `-`, `.`, `_`, starting with a letter.
fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn parse_secret(definition: &str, defined: &[Secret]) -> Result<Secret> {
    let items = split_option_list(definition, Some("qom-type"))
        .map_err(|item| invalid(format!("Invalid parameter '{item}'")))?;
    let mut qom_type = None;
    let (mut id, mut data, mut file, mut format, mut keyid) = (None, None, None, None, None);
    for OptionItem { key, value } in items {
        let slot = match key.as_str() {
            "qom-type" => &mut qom_type,
            "id" => &mut id,
            "data" => &mut data,
            "file" => &mut file,
            "format" => &mut format,
            "keyid" => &mut keyid,
            // The initialization vector only matters with `keyid`.
            "iv" => continue,
            _ => return Err(invalid(format!("Parameter '{key}' is unexpected"))),
        };
        *slot = Some(value);
    }
    let qom_type = qom_type.ok_or_else(|| invalid("Parameter 'qom-type' is missing"))?;
    if qom_type != "secret" {
        return Err(invalid(format!(
            "Parameter 'qom-type' does not accept value '{qom_type}'"
        )));
    }
    let id = id.ok_or_else(|| invalid("Parameter 'id' is missing"))?;
    if !is_identifier(&id) {
        return Err(invalid(
            "Parameter 'id' expects an identifier\n\
             Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
        ));
    }
    let base64 = match format.as_deref() {
        None | Some("raw") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid(format!(
                "Parameter 'format' does not accept value '{other}'"
            )))
        }
    };
    if let Some(keyid) = keyid {
        if !defined.iter().any(|s| s.id == keyid) {
            return Err(invalid(format!("No secret with id '{keyid}'")));
        }
        return Err(invalid(format!(
            "secret '{id}': secrets encrypted with another secret (keyid) are not supported"
        )));
    }
    let raw = match (data, file) {
        (Some(_), Some(_)) => return Err(invalid("'file' and 'data' are mutually exclusive")),
        (None, None) => return Err(invalid("Either 'file' or 'data' must be provided")),
        (Some(data), None) => data.into_bytes(),
        (None, Some(path)) => std::fs::read(&path).map_err(|e| {
            let reason = std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO));
            invalid(format!(
                "Unable to read {path}: Failed to open file \u{201c}{path}\u{201d}: {}",
                strerror(&reason)
            ))
        })?,
    };
    let raw = blk_core::Secret::new(raw);
    let bytes = if base64 {
        blk_core::Secret::new(decode_base64(raw.bytes())?)
    } else {
        raw
    };
    Ok(Secret { id, bytes })
}

/// The C library's text for an I/O error, without Rust's ` (os error N)` suffix.
fn strerror(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

/// Decodes base64 as glib does for qemu: the standard alphabet in groups of four characters, `=` padding the
/// last group, an incomplete last group dropped; any other character is refused with qemu's message.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 3);
    let mut group = [0u8; 4];
    let mut filled = 0;
    let mut padding = 0;
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                0
            }
            _ => return Err(invalid("Base64 data contains invalid characters")),
        };
        group[filled] = v;
        filled += 1;
        if filled == 4 {
            let bits = group.iter().fold(0u32, |acc, &v| (acc << 6) | u32::from(v));
            let bytes = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
            out.extend_from_slice(&bytes[..3usize.saturating_sub(padding.min(2))]);
            filled = 0;
            padding = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(definition: &str) -> std::result::Result<Secret, String> {
        parse_secret(definition, &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn secrets_parse_as_qemu_parses_them() {
        let s = parse("secret,id=s0,data=p,,w").unwrap();
        assert_eq!((s.id(), s.bytes()), ("s0", &b"p,w"[..]));
        let s = parse("qom-type=secret,id=s0,data=cHc=,format=base64").unwrap();
        assert_eq!(s.bytes(), b"pw");
        // glib drops an incomplete last group: qemu then sees an empty secret.
        assert_eq!(
            parse("secret,id=s0,data=cHc,format=base64")
                .unwrap()
                .bytes(),
            b""
        );
        assert_eq!(
            parse("secret,id=s0,data=cA==,format=base64")
                .unwrap()
                .bytes(),
            b"p"
        );
        assert!(!format!("{s:?}").contains("pw"), "no secret in Debug");
        for (definition, message) in [
            (",", "Invalid parameter ''"),
            ("id=s,data=x", "Parameter 'qom-type' is missing"),
            ("bogus,id=x", "Parameter 'qom-type' does not accept value 'bogus'"),
            ("secret,data=x", "Parameter 'id' is missing"),
            ("secret,id=s0", "Either 'file' or 'data' must be provided"),
            ("secret,id=s0,data=a,file=b", "'file' and 'data' are mutually exclusive"),
            ("secret,id=s0,data=a,zz=1", "Parameter 'zz' is unexpected"),
            ("secret,id=s0,data=a,format=hex", "Parameter 'format' does not accept value 'hex'"),
            ("secret,id=s0,data=c*Hc,format=base64", "Base64 data contains invalid characters"),
            ("secret,id=s0,data=a,keyid=k", "No secret with id 'k'"),
            (
                "secret,id=s0,file=/nonexistent/x",
                "Unable to read /nonexistent/x: Failed to open file \u{201c}/nonexistent/x\u{201d}: No such file or directory",
            ),
        ] {
            assert_eq!(parse(definition).unwrap_err(), message, "{definition}");
        }
        assert!(parse("secret,id=1s,data=x")
            .unwrap_err()
            .starts_with("Parameter 'id' expects an identifier\n"));
    }
}
