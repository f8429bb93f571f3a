//! Pinned byte vectors: compare what this build encodes with what a vectors file holds, explain
//! every difference, and rewrite the file on request.
//!
//! Shared (through `#[path]`) by `protocol/tests/golden.rs`, `protocol/src/repair/golden_tests.rs`
//! and `enclave/tests/golden_records.rs`. A vectors file (`tests/golden/<name>.txt` of the crate
//! that includes this) holds one vector per line, `name hex`, after a `# comment` line saying what
//! it is; blank lines and other comments are ignored.
//!
//! A vector that changes is a wire or storage format change: old peers, old sealed records or old
//! signatures no longer match. If it is deliberate, bump `PROTOCOL_VERSION`
//! (protocol/src/lib.rs), set [`PINNED_VERSION`] to it and regenerate every vectors file with
//! `GOLDEN_UPDATE=1 cargo nextest run --locked --workspace --all-features -E 'test(golden)'`.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The `PROTOCOL_VERSION` every vectors file was made with (the `v` of every envelope in them).
pub const PINNED_VERSION: u16 = 3;

/// Set (to anything) to rewrite the vectors files with what this build encodes.
pub const UPDATE_VAR: &str = "GOLDEN_UPDATE";

/// The vectors of one file: what is pinned, and what this run produced.
pub struct Vectors {
    file: String,
    path: PathBuf,
    pinned: BTreeMap<String, Vec<u8>>,
    current: Vec<(String, String, Vec<u8>)>,
    problems: Vec<String>,
}

impl Vectors {
    /// Reads `tests/golden/<file>` of the crate being tested (absent: nothing pinned yet).
    pub fn open(file: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut pinned = BTreeMap::new();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .split_once(' ')
                .and_then(|(name, hex_text)| Some((name, hex::decode(hex_text.trim()).ok()?)));
            match parsed {
                Some((name, bytes)) => {
                    pinned.insert(name.to_owned(), bytes);
                }
                None => problems.push(format!("line {}: not `name hex`: {line}", i + 1)),
            }
        }
        Self {
            file: file.to_owned(),
            path,
            pinned,
            current: Vec::new(),
            problems,
        }
    }

    /// Records `bytes` as vector `name` (described by `comment`, one line) and returns the pinned
    /// bytes of that name, if any, for the caller to decode (the round trip).
    pub fn pin(&mut self, name: &str, comment: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()),
            "vector names are one word: {name:?}"
        );
        assert!(
            self.current.iter().all(|(n, _, _)| n != name),
            "vector {name} pinned twice"
        );
        assert!(!comment.contains('\n'), "the comment of {name} is one line");
        self.current
            .push((name.to_owned(), comment.to_owned(), bytes.to_vec()));
        self.pinned.get(name).cloned()
    }

    /// Records a failure that is not a byte difference (a pinned vector that does not decode back
    /// to its value, a variant without a vector).
    pub fn problem(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    /// The file's text as this build would pin it.
    fn render(&self) -> String {
        let mut out = format!(
            "# Golden vectors ({}), PROTOCOL_VERSION {PINNED_VERSION}. Generated: do not edit by hand.\n\
             # A changed line is a wire or storage format change: see protocol/tests/golden/pinned.rs.\n",
            self.file
        );
        for (name, comment, bytes) in &self.current {
            let _ = write!(out, "\n# {comment}\n{name} {}\n", hex::encode(bytes));
        }
        out
    }

    /// Fails with every difference (and the lines to paste), or rewrites the file when
    /// [`UPDATE_VAR`] is set.
    pub fn finish(self) {
        if std::env::var_os(UPDATE_VAR).is_some() {
            std::fs::create_dir_all(self.path.parent().expect("a directory"))
                .expect("create tests/golden");
            std::fs::write(&self.path, self.render()).expect("write the vectors file");
            return;
        }
        let mut report = String::new();
        for (name, _, bytes) in &self.current {
            match self.pinned.get(name) {
                None => {
                    let _ = writeln!(report, "  new (not pinned): {name}");
                }
                Some(old) if old != bytes => {
                    let _ = writeln!(
                        report,
                        "  changed: {name}\n    pinned: {}\n    now:    {}",
                        hex::encode(old),
                        hex::encode(bytes)
                    );
                }
                Some(_) => {}
            }
        }
        for name in self.pinned.keys() {
            if self.current.iter().all(|(n, _, _)| n != name) {
                let _ = writeln!(report, "  gone (pinned, no longer produced): {name}");
            }
        }
        for problem in &self.problems {
            let _ = writeln!(report, "  {problem}");
        }
        if report.is_empty() {
            return;
        }
        let fresh: String = self
            .current
            .iter()
            .filter(|(name, _, bytes)| self.pinned.get(name) != Some(bytes))
            .map(|(name, _, bytes)| format!("{name} {}\n", hex::encode(bytes)))
            .collect();
        panic!(
            "golden vectors of {} differ from what this build encodes:\n{report}\n\
             A changed vector is a wire or storage format change (old peers, sealed records or \
             signatures stop matching). If it is deliberate, bump PROTOCOL_VERSION \
             (protocol/src/lib.rs), set PINNED_VERSION in protocol/tests/golden/pinned.rs, and \
             regenerate: {UPDATE_VAR}=1 cargo nextest run --locked --workspace --all-features \
             -E 'test(golden)'\nor replace these lines in {}:\n{fresh}",
            self.file,
            self.path.display()
        );
    }
}
