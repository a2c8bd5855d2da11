//! The node's JSON state files (`rollout.json`, `remotes.json`, `sightings.json`, `ledger.json`,
//! `releases.json`, `probes.json`, `seen.json`, `refused.json`, `metrics/counters.json`), kept one
//! way. What must stay true:
//! - a file is read as `files` reads what someone else may have put there: never through a
//!   symlink, never waiting on a FIFO, and up to its bound only;
//! - a missing file is "none yet"; one that is there but is no regular file, is over its bound, is
//!   not JSON, is not of its layout or is of a newer one is an error naming the file, and the
//!   reader decides what that means for it;
//! - a file is replaced whole (`files::replace`), with its mode, synced to disk unless it is an
//!   observation the next cycle writes anew ([`StateFile::DURABILITY`]);
//! - a file says which layout it has (`"schema": N`, beside its fields), so a newer troops can
//!   change one and still read the old. A file without a `schema` number is of schema 1: what
//!   troops wrote before state files had one (a `schema` that is no number is an entry of such a
//!   file, which may be a map: of remotes, say, one of them named "schema").

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::mech::files;
use crate::model::error::{Error, Result};

/// A state file's contents: a JSON object of named fields (none of them `schema`), in the layout
/// [`StateFile::SCHEMA`].
pub trait StateFile: Serialize + DeserializeOwned {
    /// What the file holds, for errors: "a ledger".
    const WHAT: &'static str;
    /// The layout this troops writes. A file of an older one is read by [`StateFile::upgrade`];
    /// one of a newer one is refused.
    const SCHEMA: u32;
    /// More than any such file troops writes: a larger one is not troops', and is not read.
    const MAX_BYTES: u64;
    /// The file's permissions, exactly.
    const MODE: u32;
    /// Whether the file must survive a crash of the machine as written: most must (a ledger, a
    /// release index); what the next pull cycle writes anew need not, and saves a disk flush.
    const DURABILITY: files::Durability = files::Durability::Synced;

    /// This state from a file of the older layout `schema` (its `schema` taken out). A file type
    /// that never changed its layout has no older one: a file that says it has is refused.
    fn upgrade(schema: u64, old: Value) -> std::result::Result<Self, String> {
        let _ = old;
        Err(unknown(schema))
    }
}

/// Why a file of `schema`, older than any troops wrote, is not read.
pub fn unknown(schema: u64) -> String {
    format!("schema {schema} is not one troops wrote")
}

/// `StateFile::upgrade` for a file that was a bare map at schema 1 and keeps it in a field of its
/// own since (`wrap`), beside the schema: in a bare map, a key "schema" is one more entry.
pub fn from_bare_map<V: DeserializeOwned, T>(
    schema: u64,
    old: Value,
    wrap: impl FnOnce(std::collections::BTreeMap<String, V>) -> T,
) -> std::result::Result<T, String> {
    match schema {
        1 => serde_json::from_value(old).map(wrap).map_err(|e| e.to_string()),
        _ => Err(unknown(schema)),
    }
}

/// The state in the file at `path`; `None` when there is none yet.
pub fn load<T: StateFile>(path: &Path) -> Result<Option<T>> {
    load_believed(path, |_| true)
}

/// [`load`], going by the file only when `believe` says yes to its owner's uid (taken from what was
/// opened); a file of anybody else is none.
pub fn load_believed<T: StateFile>(path: &Path, believe: impl Fn(u32) -> bool) -> Result<Option<T>> {
    let file = match files::open(path, std::fs::OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::path("reading", path, e)),
    };
    let owner = file.metadata().map_err(|e| Error::path("reading", path, e))?.uid();
    if !believe(owner) {
        return Ok(None);
    }
    let bytes = files::read_at_most(file, T::MAX_BYTES).map_err(|e| Error::path("reading", path, e))?;
    parse(&bytes).map(Some).map_err(|why| Error::Env(format!("{} is not {}: {why}", path.display(), T::WHAT)))
}

/// The state in `bytes`, read by its schema.
fn parse<T: StateFile>(bytes: &[u8]) -> std::result::Result<T, String> {
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(fields) = &mut value else { return Err("not a JSON object".into()) };
    let schema = match fields.get("schema").and_then(Value::as_u64) {
        None => 1,
        Some(n) => {
            fields.remove("schema");
            n
        }
    };
    if schema > u64::from(T::SCHEMA) {
        return Err(format!(
            "it has schema {schema}, written by a newer troops; this one reads up to schema {}",
            T::SCHEMA
        ));
    }
    if schema < u64::from(T::SCHEMA) {
        return T::upgrade(schema, value);
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Replaces the file at `path` with `state`, in this troops' layout, atomically and with its mode.
pub fn save<T: StateFile>(path: &Path, state: &T) -> Result<()> {
    #[derive(Serialize)]
    struct Versioned<'a, T> {
        schema: u32,
        #[serde(flatten)]
        state: &'a T,
    }
    let json = serde_json::to_vec_pretty(&Versioned { schema: T::SCHEMA, state })
        .unwrap_or_else(|e| panic!("{} serializes: {e}", T::WHAT));
    files::replace(path, &json, T::MODE, T::DURABILITY)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use serde::Deserialize;

    use super::*;

    /// A state file whose layout changed once: schema 1 was a bare map of notes.
    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Notes {
        notes: BTreeMap<String, String>,
    }

    impl StateFile for Notes {
        const WHAT: &'static str = "a file of notes";
        const SCHEMA: u32 = 2;
        const MAX_BYTES: u64 = 1000;
        const MODE: u32 = 0o640;

        fn upgrade(schema: u64, old: Value) -> std::result::Result<Notes, String> {
            match schema {
                1 => serde_json::from_value(old).map(|notes| Notes { notes }).map_err(|e| e.to_string()),
                _ => Err(unknown(schema)),
            }
        }
    }

    fn notes(pairs: &[(&str, &str)]) -> Notes {
        Notes { notes: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn a_state_round_trips_with_its_schema_and_mode_and_missing_is_none_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.json");
        assert_eq!(load::<Notes>(&path).unwrap(), None);
        save(&path, &notes(&[("a", "x")])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\n  \"schema\": 2,\n  \"notes\": {"), "{text}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(load::<Notes>(&path).unwrap(), Some(notes(&[("a", "x")])));
    }

    #[test]
    fn an_old_unversioned_file_loads_as_schema_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.json");
        std::fs::write(&path, "{\"a\": \"x\", \"b\": \"y\"}").unwrap();
        assert_eq!(load::<Notes>(&path).unwrap(), Some(notes(&[("a", "x"), ("b", "y")])));
        // A `schema` that is no number is an entry of the old bare map, not a version.
        std::fs::write(&path, "{\"schema\": \"z\"}").unwrap();
        assert_eq!(load::<Notes>(&path).unwrap(), Some(notes(&[("schema", "z")])));
        std::fs::write(&path, "{\"schema\": 1, \"a\": \"w\"}").unwrap();
        assert_eq!(load::<Notes>(&path).unwrap(), Some(notes(&[("a", "w")])));
    }

    #[test]
    fn a_symlink_a_fifo_a_huge_file_garbage_or_a_newer_schema_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.json");
        let shown = path.display().to_string();
        let real = dir.path().join("real.json");
        std::fs::write(&real, "{\"schema\": 2, \"notes\": {}}").unwrap();
        let cases: [(&dyn Fn(), &str); 8] = [
            (&|| std::os::unix::fs::symlink(&real, &path).unwrap(), "a symlink, not a regular file"),
            // No writer ever opens the FIFO: a blocking open would never return.
            (
                &|| nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap(),
                "a FIFO, not a regular file",
            ),
            (&|| std::fs::write(&path, vec![b' '; 1001]).unwrap(), "larger than 1000 bytes"),
            (&|| std::fs::write(&path, "{\"notes\": {\"a\"").unwrap(), "is not a file of notes: not JSON"),
            (&|| std::fs::write(&path, "[1, 2]").unwrap(), "is not a file of notes: not a JSON object"),
            (
                &|| std::fs::write(&path, "{\"schema\": 2, \"notes\": 7}").unwrap(),
                "is not a file of notes: invalid type: integer `7`",
            ),
            (
                &|| std::fs::write(&path, "{\"schema\": 3, \"notes\": {}}").unwrap(),
                "is not a file of notes: it has schema 3, written by a newer troops; this one reads up to schema 2",
            ),
            (
                &|| std::fs::write(&path, "{\"schema\": 0}").unwrap(),
                "is not a file of notes: schema 0 is not one troops wrote",
            ),
        ];
        for (plant, why) in cases {
            plant();
            let e = load::<Notes>(&path).unwrap_err().to_string();
            assert!(e.contains(&shown) && e.contains(why), "{why}: {e}");
            std::fs::remove_file(&path).unwrap();
        }
        // The one a symlink pointed at is as it was; saving replaces the symlink itself.
        std::os::unix::fs::symlink(&real, &path).unwrap();
        save(&path, &notes(&[("b", "y")])).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "{\"schema\": 2, \"notes\": {}}");
    }

    #[test]
    fn a_file_of_someone_not_believed_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.json");
        save(&path, &notes(&[("a", "x")])).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(load_believed::<Notes>(&path, |uid| uid != me).unwrap(), None);
        assert_eq!(load_believed::<Notes>(&path, |uid| uid == me).unwrap(), Some(notes(&[("a", "x")])));
    }
}
