//! Sorting the rows' results into identical, documented difference and unexpected difference, and printing
//! the summary.

use std::collections::BTreeMap;

use super::runner::RowResult;
use super::table::Row;

/// What a row's result means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Both programs did the same.
    Identical,
    /// They differ, and the row is marked as a documented difference.
    Documented,
    /// They differ, and nothing says why: a bug (or an undocumented difference).
    Unexpected,
}

/// One row with its class.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The row.
    pub row: &'a Row,
    /// Its result.
    pub result: &'a RowResult,
    /// Its class.
    pub class: Class,
}

/// The classified results of a run.
#[derive(Debug)]
pub struct Report<'a> {
    entries: Vec<Entry<'a>>,
    reasons: &'a BTreeMap<String, String>,
}

impl<'a> Report<'a> {
    /// Classifies `results` (in the order of `rows`).
    pub fn new(
        rows: &'a [Row],
        results: &'a [RowResult],
        reasons: &'a BTreeMap<String, String>,
    ) -> Self {
        let entries = rows
            .iter()
            .zip(results)
            .map(|(row, result)| {
                let class = match (result.differences.is_empty(), &row.difference) {
                    (true, _) => Class::Identical,
                    (false, Some(_)) => Class::Documented,
                    (false, None) => Class::Unexpected,
                };
                Entry { row, result, class }
            })
            .collect();
        Report { entries, reasons }
    }

    /// How many rows are in `class`.
    pub fn count(&self, class: Class) -> usize {
        self.entries.iter().filter(|e| e.class == class).count()
    }

    /// Rows marked as documented differences that now run identically (their marker can go).
    pub fn stale_markers(&self) -> impl Iterator<Item = &Entry<'a>> {
        self.entries
            .iter()
            .filter(|e| e.class == Class::Identical && e.row.difference.is_some())
    }

    /// Prints the unexpected differences with their diffs, the documented ones by reason, and the counts.
    pub fn print(&self, verbose: bool) {
        for entry in &self.entries {
            let show = verbose || entry.class == Class::Unexpected;
            if !show {
                continue;
            }
            let label = match entry.class {
                Class::Identical => "identical",
                Class::Documented => "documented",
                Class::Unexpected => "UNEXPECTED",
            };
            println!("\n[{label}] line {}: {}", entry.row.line, entry.row.text);
            for difference in &entry.result.differences {
                println!("  {difference}");
            }
            if verbose {
                print!("{}", entry.result.transcript);
            }
        }
        let mut by_reason: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for entry in self.entries.iter().filter(|e| e.class == Class::Documented) {
            if let Some(key) = &entry.row.difference {
                by_reason.entry(key).or_default().push(entry.row.line);
            }
        }
        if !by_reason.is_empty() {
            println!("\ndocumented differences:");
            for (key, lines) in &by_reason {
                let reason = self.reasons.get(*key).map_or("", String::as_str);
                println!("  {key} ({} rows, lines {lines:?}): {reason}", lines.len());
            }
        }
        for entry in self.stale_markers() {
            println!(
                "note: line {} is marked `=> {}` but now runs identically",
                entry.row.line,
                entry.row.difference.as_deref().unwrap_or("")
            );
        }
        let unexpected: Vec<&Entry<'a>> = self
            .entries
            .iter()
            .filter(|e| e.class == Class::Unexpected)
            .collect();
        if !unexpected.is_empty() {
            println!("\nunexpected differences (line: row -- first difference):");
            for entry in unexpected {
                let first = entry.result.differences.first().map_or("", String::as_str);
                println!(
                    "  {}: {} -- {}",
                    entry.row.line,
                    entry.row.text,
                    first.lines().next().unwrap_or("")
                );
            }
        }
        let total = self.entries.len();
        let identical = self.count(Class::Identical);
        let percent = if total == 0 {
            100.0
        } else {
            100.0 * identical as f64 / total as f64
        };
        println!(
            "\nparity: {total} rows: {identical} identical ({percent:.1}%), {} documented differences, {} unexpected differences",
            self.count(Class::Documented),
            self.count(Class::Unexpected)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parity::table::parse_table;

    #[test]
    fn classes() {
        let rows = parse_table("img info a\nimg info b => k\nimg info c\nimg info d => k").unwrap();
        let differ = RowResult {
            differences: vec!["exit code".to_string()],
            transcript: String::new(),
        };
        let results = [
            RowResult::default(),
            differ.clone(),
            differ,
            RowResult::default(),
        ];
        let reasons = BTreeMap::from([("k".to_string(), "why".to_string())]);
        let report = Report::new(&rows, &results, &reasons);
        assert_eq!(report.count(Class::Identical), 2);
        assert_eq!(report.count(Class::Documented), 1);
        assert_eq!(report.count(Class::Unexpected), 1);
        assert_eq!(report.stale_markers().count(), 1);
    }
}
