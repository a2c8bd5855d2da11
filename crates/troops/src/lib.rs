//! The library half of the `troops` package: only the command-line definition, [`cli`]. The
//! binary parses with it, and `packaging/gen` renders the man pages and shell completions from the
//! very same clap structs at package-build time, so the product binary carries no generator code
//! and the docs cannot drift from the flags. `cli` must keep depending on nothing but clap and
//! troops-core: the rest of the binary (commands, daemon) is not part of this library.

pub mod cli;
