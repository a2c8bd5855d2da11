//! This machine's fully qualified name, as `hostname -f` finds it: the kernel's hostname, made
//! canonical through the resolver when it is not qualified already.

use std::ffi::{CStr, CString};

pub fn fqdn() -> String {
    let short = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    if short.contains('.') {
        return short;
    }
    canonical_name(&short).unwrap_or(short)
}

/// The resolver's canonical name for `host` (getaddrinfo with AI_CANONNAME).
fn canonical_name(host: &str) -> Option<String> {
    let node = CString::new(host).ok()?;
    // SAFETY: an all-zero addrinfo is the documented "no hints" value; we set only ai_flags.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_flags = libc::AI_CANONNAME;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: node and hints are valid for the call; on success `list` is freed below exactly once.
    let rc = unsafe { libc::getaddrinfo(node.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if rc != 0 || list.is_null() {
        return None;
    }
    // SAFETY: `list` is a valid result of getaddrinfo; ai_canonname is null or a C string it owns.
    let name = unsafe {
        let canon = (*list).ai_canonname;
        let name = (!canon.is_null()).then(|| CStr::from_ptr(canon).to_string_lossy().into_owned());
        libc::freeaddrinfo(list);
        name
    };
    name.filter(|n| !n.is_empty())
}
