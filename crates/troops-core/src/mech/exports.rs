//! A node's exports on disk: what a run's steps wrote to `$TROOPS_EXPORTS` (`runs/<id>/exports/`,
//! a fresh directory each run), read as files someone else wrote (no symlinks, regular files only,
//! each read up to its bound), and the last good run's, kept in `<state>/exports.json` for the
//! status document. A directory that breaks a rule is an error naming the file: the run fails, and
//! the node goes on publishing the last good exports.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::error::Result;
use crate::model::exports::{self, Exports};
use crate::model::node::Node;

/// `runs/<id>/exports/`: where run `id`'s steps write their exports.
pub fn dir(node: &Node, run: u64) -> PathBuf {
    node.runs().dir(run).join("exports")
}

/// Makes run `id`'s exports directory, empty.
pub fn make_dir(node: &Node, run: u64) -> Result<PathBuf> {
    let dir = dir(node, run);
    crate::mech::modes::dir_all(&dir, 0o755)?;
    Ok(dir)
}

/// What the files in `dir` say, or why they cannot be exports ("`addr`: is not UTF-8").
pub fn collect(dir: &Path) -> std::result::Result<Exports, String> {
    let names = crate::mech::fs_safe::list(dir, Path::new("")).map_err(|e| e.to_string())?;
    let mut found = Exports::new();
    for name in names {
        let name = name.to_str().ok_or_else(|| format!("{:?}: a name is UTF-8", name))?.to_owned();
        if let Some(problem) = exports::name_problem(&name) {
            return Err(format!("`{}`: the name {problem}", crate::model::shown::escape(&name)));
        }
        let bytes = crate::mech::fs_safe::read(dir, Path::new(&name), exports::MAX_VALUE as u64)
            .map_err(|e| format!("`{name}`: {e}"))?
            .ok_or_else(|| format!("`{name}`: it went away while it was read"))?;
        let value = exports::value(bytes).map_err(|problem| format!("`{name}` {problem}"))?;
        found.insert(name, value);
    }
    match exports::total_problem(&found) {
        Some(problem) => Err(problem),
        None => Ok(found),
    }
}

/// The exports of the last run that succeeded here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub run: u64,
    pub exports: Exports,
}

impl StateFile for Kept {
    const WHAT: &'static str = "the node's exports";
    const SCHEMA: u32 = 1;
    /// A node's exports are at most 64 KiB, escaped as JSON at most six times that.
    const MAX_BYTES: u64 = 1 << 20;
    const MODE: u32 = 0o644;
}

/// `<state>/exports.json`.
fn path(node: &Node) -> PathBuf {
    node.state_dir.join("exports.json")
}

/// Keeps `exports`, of run `run` that succeeded.
pub fn keep(node: &Node, run: u64, exports: Exports) -> Result<()> {
    state_file::save(&path(node), &Kept { run, exports })
}

/// The exports of the last run that succeeded, if any did.
pub fn kept(node: &Node) -> Result<Option<Kept>> {
    state_file::load(&path(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_exports_is_read_or_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(collect(d).unwrap(), Exports::new());
        std::fs::write(d.join("addr"), "127.0.0.1:8001\n").unwrap();
        std::fs::write(d.join("key.pub"), "ssh-ed25519 AAAA").unwrap();
        let found = collect(d).unwrap();
        assert_eq!(found.get("addr").map(String::as_str), Some("127.0.0.1:8001\n"));
        assert_eq!(found.len(), 2);
        let refused = |setup: &dyn Fn(&Path), want: &str| {
            let dir = tempfile::tempdir().unwrap();
            setup(dir.path());
            let got = collect(dir.path()).unwrap_err();
            assert!(got.contains(want), "{got:?} lacks {want:?}");
        };
        refused(&|d| std::fs::write(d.join("a b"), "x").unwrap(), "`a b`: the name has ' '");
        refused(
            &|d| std::fs::write(d.join("big"), vec![b'x'; 5000]).unwrap(),
            "`big`: big is larger than 4096 bytes",
        );
        refused(&|d| std::fs::write(d.join("bin"), [0xff, 0xfe]).unwrap(), "`bin` is not UTF-8");
        refused(&|d| std::os::unix::fs::symlink("/etc/shadow", d.join("link")).unwrap(), "`link`");
        refused(&|d| std::fs::create_dir(d.join("sub")).unwrap(), "`sub`");
        refused(
            &|d| (0..20).for_each(|i| std::fs::write(d.join(format!("v{i}")), vec![b'x'; 4000]).unwrap()),
            "over the 65536",
        );
    }
}
