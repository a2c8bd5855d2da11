//! The one error type of the core library. Every error names its subject (file, remote, commit,
//! step) and knows which exit code class it belongs to, so binaries map errors in one place.

use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad node config: the file, the line and what is wrong with which key.
    #[error("{}:{line}: {message}", path.display())]
    Config { path: PathBuf, line: usize, message: String },
    /// Bad plan: the file, line and column.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Plan { path: PathBuf, line: usize, column: usize, message: String },
    /// Other bad input from the user (an unknown revision, a malformed argument).
    #[error("{0}")]
    Input(String),
    /// A git operation failed; `context` says on what.
    #[error("{context}: {}", source.message())]
    Git { context: String, source: git2::Error },
    /// An I/O operation failed; `context` names the path or process.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// The environment failed in a way that has no underlying error value.
    #[error("{0}")]
    Env(String),
    /// A commit this node may not run (its signature is refused): the commit and why.
    #[error("{0}")]
    Refused(String),
}

/// The exit code classes of the SPEC (1, "a run failed", is a result, not an error; a refused
/// commit shares its code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Exit 1: the node refuses what it was asked to run (like a failed run, a "no").
    Refused,
    /// Exit 2: usage, config, plan.
    Input,
    /// Exit 3: git, network, IO, lock.
    Environment,
}

impl Error {
    pub fn class(&self) -> Class {
        match self {
            Error::Config { .. } | Error::Plan { .. } | Error::Input(_) => Class::Input,
            Error::Git { .. } | Error::Io { .. } | Error::Env(_) => Class::Environment,
            Error::Refused(_) => Class::Refused,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self.class() {
            Class::Refused => 1,
            Class::Input => 2,
            Class::Environment => 3,
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// An I/O error on a path, with a verb: "reading /x: No such file".
    pub fn path(verb: &str, path: &Path, source: io::Error) -> Error {
        Error::io(format!("{verb} {}", path.display()), source)
    }

    pub fn git(context: impl Into<String>, source: git2::Error) -> Error {
        Error::Git { context: context.into(), source }
    }
}

/// Adds a subject to lower-level errors: `fs::read(p).ctx(|| format!("reading {p}"))`.
pub trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, io::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

impl<T> Context<T> for std::result::Result<T, git2::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::git(context(), e))
    }
}

impl<T> Context<T> for std::result::Result<T, nix::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), io::Error::from(e)))
    }
}

/// Line and column (1-based) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

/// The text of a config or plan file, `path`: bytes that are not UTF-8 are bad input (exit 2),
/// named by the line of the first bad byte.
pub fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..valid].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::Input(format!("{}:{line}: not UTF-8 text (byte {valid} is not valid UTF-8)", path.display()))
    })
}

/// Deserializes TOML `text`; a syntax or type error becomes `err(span, message)`, the message in
/// one line and naming the key it concerns (serde names an unknown key, but not the key of a value
/// of the wrong type).
pub fn from_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    err: impl Fn(std::ops::Range<usize>, String) -> Error,
) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().replace('\n', "; ");
        let message = match key_at(text, span.start) {
            Some(key) if !message.contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(&key))) => {
                format!("`{key}`: {message}")
            }
            _ => message,
        };
        err(span, message)
    })
}

/// The dotted name of the key whose name or value covers byte `offset` of `text`, if any.
fn key_at(text: &str, offset: usize) -> Option<String> {
    fn find(table: &toml_edit::Table, offset: usize, prefix: &str) -> Option<String> {
        let covers = |span: Option<std::ops::Range<usize>>| span.is_some_and(|s| s.contains(&offset));
        table.iter().find_map(|(key, item)| {
            let name = format!("{prefix}{key}");
            let inner = format!("{name}.");
            match item {
                toml_edit::Item::Table(t) => find(t, offset, &inner),
                toml_edit::Item::ArrayOfTables(a) => a.iter().find_map(|t| find(t, offset, &inner)),
                _ => (covers(item.span()) || covers(table.key(key).and_then(|k| k.span()))).then_some(name),
            }
        })
    }
    find(toml_edit::ImDocument::parse(text).ok()?.as_table(), offset, "")
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn line_col_is_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\n", 99), (2, 1));
    }
}
