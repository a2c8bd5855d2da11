//! The one error type of the core library. Every error names its subject (file, remote, commit,
//! step) and knows which exit code class it belongs to, so binaries map errors in one place.

use std::io;
use std::path::{Path, PathBuf};

use crate::model::names::short;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad node config: the file, line and column, and what is wrong with which key.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Config { path: PathBuf, line: usize, column: usize, message: String },
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
    /// A commit this node may not run: the commit, and why (its signature, or that of a commit
    /// under it, is refused).
    #[error("refusing to run {}: {reason}; nothing ran", short(.commit))]
    Refused { commit: git2::Oid, reason: String },
    /// The daemon did the work and it ended in this error, told over the control socket.
    #[error("{message}")]
    Daemon { exit: Exit, message: String },
}

/// The SPEC's exit codes, the only place their numbers are written: every command, the hook and
/// the daemon's answers over its socket exit with one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Exit {
    /// 0: done, or nothing to do.
    Success,
    /// 1: a run failed, a failed commit waits for its retry, or the node refuses ("no").
    Failed,
    /// 2: bad input: usage, config, plan.
    Input,
    /// 3: the environment failed: git, network, IO, lock.
    Environment,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Input => 2,
            Exit::Environment => 3,
        }
    }

    /// Success when `ok`, else failed (a "no" of a command like `has-role`).
    pub fn ok_if(ok: bool) -> Exit {
        if ok {
            Exit::Success
        } else {
            Exit::Failed
        }
    }
}

impl From<Exit> for u8 {
    fn from(exit: Exit) -> u8 {
        exit.code()
    }
}

impl TryFrom<u8> for Exit {
    type Error = String;

    fn try_from(code: u8) -> std::result::Result<Exit, String> {
        [Exit::Success, Exit::Failed, Exit::Input, Exit::Environment]
            .into_iter()
            .find(|e| e.code() == code)
            .ok_or_else(|| format!("{code} is not an exit code of troops"))
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> std::process::ExitCode {
        std::process::ExitCode::from(exit.code())
    }
}

impl Error {
    /// The exit code this error ends a command with (a refused commit is a "no", like a failed run).
    pub fn exit(&self) -> Exit {
        match self {
            Error::Config { .. } | Error::Plan { .. } | Error::Input(_) => Exit::Input,
            Error::Git { .. } | Error::Io { .. } | Error::Env(_) => Exit::Environment,
            Error::Refused { .. } => Exit::Failed,
            Error::Daemon { exit, .. } => *exit,
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
    use super::{line_col, Error, Exit};

    #[test]
    fn a_refused_commit_is_named_short_and_is_a_no() {
        let commit = git2::Oid::from_str("2fcbae4df3f5a1b2c3d4e5f60718293a4b5c6d7e").unwrap();
        let e = Error::Refused { commit, reason: "commit 0123456789ab is not signed".into() };
        assert_eq!(
            e.to_string(),
            "refusing to run 2fcbae4df3f5: commit 0123456789ab is not signed; nothing ran"
        );
        assert_eq!(e.exit(), Exit::Failed);
    }

    #[test]
    fn line_col_is_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\n", 99), (2, 1));
    }
}
