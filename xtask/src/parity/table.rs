//! The suite's data files: the table of command lines (`xtask/parity/table.txt`), the fixture recipe
//! (`xtask/parity/fixtures.txt`) and the documented differences (`xtask/parity/differences.txt`).
//!
//! A table line is `img ARGS...` (run as `qemu-img ARGS` and `blk ARGS`) or `io ARGS...` (run as
//! `qemu-io ARGS` and `blk io ARGS`), with words split as a shell would (`'...'`, `"..."`, `\`), optionally
//! followed by `=> KEY`: the row is a documented difference whose reason is `KEY`'s line in the differences
//! file. `#` starts a comment line; blank lines are skipped.

use std::collections::BTreeMap;

/// Which pair of programs a row runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `qemu-img ARGS` against `blk ARGS`.
    Img,
    /// `qemu-io ARGS` against `blk io ARGS`.
    Io,
}

/// One command line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The line number in the table file (1-based), for messages.
    pub line: usize,
    /// The row as written, without its `=> KEY` marker.
    pub text: String,
    /// Which programs run it.
    pub tool: Tool,
    /// The arguments after the program name (`{dir}` still unexpanded).
    pub args: Vec<String>,
    /// The documented difference this row shows, if any.
    pub difference: Option<String>,
}

impl Row {
    /// The qemu program and its arguments.
    pub fn qemu_command(&self) -> (&'static str, Vec<String>) {
        match self.tool {
            Tool::Img => ("qemu-img", self.args.clone()),
            Tool::Io => ("qemu-io", self.args.clone()),
        }
    }

    /// Whether `filter` is part of the row as written (its text, or `=> KEY`).
    pub fn matches(&self, filter: &str) -> bool {
        self.text.contains(filter)
            || self
                .difference
                .as_ref()
                .is_some_and(|key| format!("=> {key}").contains(filter))
    }

    /// blk's arguments (the program is the blk binary).
    pub fn blk_args(&self) -> Vec<String> {
        match self.tool {
            Tool::Img => self.args.clone(),
            Tool::Io => std::iter::once("io".to_string())
                .chain(self.args.iter().cloned())
                .collect(),
        }
    }
}

/// Splits `line` into words as a POSIX shell does for quotes and backslashes (no expansions).
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated '".to_string()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated \"".to_string()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated \"".to_string()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Lines that carry content: `(line number, text)` without comments and blank lines.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Parses the table file.
pub fn parse_table(text: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (line, content) in content_lines(text) {
        let (command, difference) = match content.rsplit_once("=>") {
            Some((command, key)) => (command.trim(), Some(key.trim().to_string())),
            None => (content, None),
        };
        if difference.as_deref() == Some("") {
            return Err(format!("table line {line}: `=>` without a difference key"));
        }
        let mut words = split_words(command).map_err(|e| format!("table line {line}: {e}"))?;
        if words.is_empty() {
            return Err(format!("table line {line}: no command"));
        }
        let tool = match words.remove(0).as_str() {
            "img" => Tool::Img,
            "io" => Tool::Io,
            other => {
                return Err(format!(
                    "table line {line}: the tool is `img` or `io`, not `{other}`"
                ))
            }
        };
        rows.push(Row {
            line,
            text: command.to_string(),
            tool,
            args: words,
            difference,
        });
    }
    Ok(rows)
}

/// Parses the differences file: `KEY = reason` lines.
pub fn parse_differences(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (line, content) in content_lines(text) {
        let (key, reason) = content
            .split_once('=')
            .ok_or_else(|| format!("differences line {line}: expected `KEY = reason`"))?;
        let (key, reason) = (key.trim(), reason.trim());
        if key.is_empty() || reason.is_empty() {
            return Err(format!(
                "differences line {line}: both a key and a reason are needed"
            ));
        }
        if map.insert(key.to_string(), reason.to_string()).is_some() {
            return Err(format!("differences line {line}: `{key}` is listed twice"));
        }
    }
    Ok(map)
}

/// One step of the fixture recipe: a program and its arguments, and whether a failing exit status is expected
/// (a line starting with `!`, e.g. `qemu-io ... -c abort` leaving a dirty image behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureStep {
    /// The line number in the fixtures file.
    pub line: usize,
    /// Program and arguments.
    pub words: Vec<String>,
    /// Whether the step may exit non-zero.
    pub may_fail: bool,
}

/// Parses the fixture recipe: one command per line.
pub fn parse_fixtures(text: &str) -> Result<Vec<FixtureStep>, String> {
    content_lines(text)
        .map(|(line, content)| {
            let (may_fail, command) = match content.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, content),
            };
            let words = split_words(command).map_err(|e| format!("fixtures line {line}: {e}"))?;
            if words.is_empty() {
                return Err(format!("fixtures line {line}: no command"));
            }
            Ok(FixtureStep {
                line,
                words,
                may_fail,
            })
        })
        .collect()
}

/// Every row's difference key must be listed in the differences file, and every listed key used.
pub fn check_keys(rows: &[Row], differences: &BTreeMap<String, String>) -> Result<(), String> {
    for row in rows {
        if let Some(key) = &row.difference {
            if !differences.contains_key(key) {
                return Err(format!(
                    "table line {}: difference `{key}` is not in differences.txt",
                    row.line
                ));
            }
        }
    }
    for key in differences.keys() {
        if !rows.iter().any(|r| r.difference.as_ref() == Some(key)) {
            return Err(format!("differences.txt: `{key}` is used by no table row"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(
            split_words(r#"-c "read -P 0x11 0 4k" 'a b' c\ d e"#).unwrap(),
            ["-c", "read -P 0x11 0 4k", "a b", "c d", "e"]
        );
        assert_eq!(split_words(r#"x "" y"#).unwrap(), ["x", "", "y"]);
        assert!(split_words("'open").is_err());
    }

    #[test]
    fn rows_and_markers() {
        let rows = parse_table("# comment\n\nimg info a.qcow2\nio -c 'read 0 1' a.raw => timing\n")
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].tool, Tool::Img);
        assert_eq!(rows[0].line, 3);
        assert_eq!(rows[1].blk_args(), ["io", "-c", "read 0 1", "a.raw"]);
        assert_eq!(rows[1].difference.as_deref(), Some("timing"));
        assert!(rows[1].matches("=> tim") && rows[1].matches("read 0") && !rows[0].matches("=>"));
        assert!(parse_table("cp a b").is_err());
        assert!(parse_table("img info =>").is_err());
    }

    #[test]
    fn differences_need_reasons_and_use() {
        let d = parse_differences("a = because\n# x\nb = why").unwrap();
        assert_eq!(d["b"], "why");
        assert!(parse_differences("a =").is_err());
        assert!(parse_differences("a = x\na = y").is_err());
        let rows = parse_table("img info x => a\nimg info y => b").unwrap();
        assert!(check_keys(&rows, &d).is_ok());
        assert!(check_keys(&rows[..1], &d).is_err());
    }

    #[test]
    fn fixture_steps() {
        let steps = parse_fixtures("qemu-img create -f raw a 1M\n!qemu-io -c abort b").unwrap();
        assert!(!steps[0].may_fail && steps[1].may_fail);
        assert_eq!(steps[1].words[0], "qemu-io");
    }
}
