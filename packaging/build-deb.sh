#!/usr/bin/env bash
# Builds the troops Debian package and prints its path on the last line of stdout.
#   1. release binaries of troops and troops-hook;
#   2. man pages and shell completions, rendered from the clap definition by packaging/gen into
#      packaging/generated/ (not committed: they are build products);
#   3. `cargo deb --no-build`, with what [package.metadata.deb] in crates/troops/Cargo.toml says:
#      the binaries, systemd/ units, the example /etc/troops/troops.toml, the maintainer scripts
#      of packaging/debian/ merged with cargo-deb's systemd fragments.
# Needs cargo-deb (`cargo install cargo-deb --locked`), and dpkg-dev for the library dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb" >&2
    cargo install cargo-deb --locked --version '^3.8' >&2
fi

cargo build --release --locked -p troops -p troops-hook >&2
rm -rf packaging/generated
cargo run --release --locked --quiet -p troops-gen -- packaging/generated >&2

# cargo-deb prints the path of the package it wrote as its last line.
cargo deb -p troops --no-build --locked "$@" | tail -n 1
