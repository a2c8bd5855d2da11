//! What a node tells its peers (`$TROOPS_EXPORTS/<name>`, published in its status document): the
//! rules a name and a value must keep, in one place, so the node that writes them and every reader
//! agree. Bounded so a node's document stays small and a peer's values stay printable: a name of
//! letters, digits and `_.-`; a value of UTF-8 text without NUL, at most [`MAX_VALUE`] bytes; all
//! of a node's at most [`MAX_TOTAL`] bytes and [`MAX_COUNT`] names.

use std::collections::BTreeMap;

/// A node's exports, by name.
pub type Exports = BTreeMap<String, String>;

/// The most bytes one value may have.
pub const MAX_VALUE: usize = 4 * 1024;
/// The most bytes all of a node's names and values may have together.
pub const MAX_TOTAL: usize = 64 * 1024;
/// The most exports a node may have.
pub const MAX_COUNT: usize = 256;
/// The longest name.
pub const MAX_NAME: usize = 128;

/// Why `name` cannot name an export, if it cannot.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Some(format!("is not 1 to {MAX_NAME} characters long"));
    }
    if name.starts_with('.') {
        return Some("starts with a dot (a hidden or temporary file)".into());
    }
    let bad = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
    bad.map(|c| format!("has {c:?}; a name has letters, digits and `_.-` only"))
}

/// `bytes` as an export's value, or why it cannot be one.
pub fn value(bytes: Vec<u8>) -> Result<String, String> {
    if bytes.len() > MAX_VALUE {
        return Err(format!("is {} bytes, over the {MAX_VALUE} a value may have", bytes.len()));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| format!("is not UTF-8 (at byte {})", e.utf8_error().valid_up_to()))?;
    match text.contains('\0') {
        true => Err("has a NUL byte".into()),
        false => Ok(text),
    }
}

/// Why `exports` together are too much for one node, if they are.
pub fn total_problem(exports: &Exports) -> Option<String> {
    if exports.len() > MAX_COUNT {
        return Some(format!("{} exports, over the {MAX_COUNT} a node may have", exports.len()));
    }
    let total: usize = exports.iter().map(|(k, v)| k.len() + v.len()).sum();
    (total > MAX_TOTAL).then(|| format!("{total} bytes of exports, over the {MAX_TOTAL} a node may have"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_values_and_totals() {
        for good in ["addr", "ADDR_2", "pub.key", "a-b", "x"] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for bad in ["", ".tmp", "a b", "a/b", "é", "a:b", &"n".repeat(MAX_NAME + 1)] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(value(b"127.0.0.1:8080\n".to_vec()).unwrap(), "127.0.0.1:8080\n");
        assert_eq!(value("ünïcode".as_bytes().to_vec()).unwrap(), "ünïcode");
        assert_eq!(value(vec![b'a'; MAX_VALUE]).unwrap().len(), MAX_VALUE);
        assert!(value(vec![b'a'; MAX_VALUE + 1]).unwrap_err().contains("over the 4096"));
        assert!(value(vec![b'a', 0xff]).unwrap_err().contains("not UTF-8 (at byte 1)"));
        assert!(value(vec![b'a', 0]).unwrap_err().contains("NUL"));
        let many: Exports = (0..20).map(|i| (format!("v{i}"), "x".repeat(MAX_VALUE))).collect();
        assert!(total_problem(&many).unwrap().contains("over the 65536"));
        let count: Exports = (0..=MAX_COUNT).map(|i| (format!("v{i}"), String::new())).collect();
        assert!(total_problem(&count).unwrap().contains("257 exports"));
        assert_eq!(total_problem(&Exports::new()), None);
    }
}
