//! Lays the code a daemon runs together in the release binary: the kernel maps a binary's code a
//! large folio at a time, so an idle daemon's resident memory follows how far apart the functions
//! it runs lie, not how few they are. `hot-symbols.txt` lists them (what `tests/bench/hot-symbols.sh`
//! saw a daemon run, under callgrind); lld places them first. A symbol the list names that the
//! binary no longer has is passed over; one it lacks just lies where it would have.

fn main() {
    println!("cargo:rerun-if-changed=hot-symbols.txt");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux_gnu = std::env::var("TARGET").is_ok_and(|t| t.ends_with("-linux-gnu"));
    if release && linux_gnu {
        let list =
            std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("hot-symbols.txt");
        println!("cargo:rustc-link-arg-bin=troops=-Wl,--symbol-ordering-file={}", list.display());
        println!("cargo:rustc-link-arg-bin=troops=-Wl,--no-warn-symbol-ordering");
    }
}
