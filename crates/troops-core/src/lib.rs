//! troops-core: everything a node does, synchronously, in four floors that import only downward:
//! `model` (what troops knows: config, plan, records, names, limits), `mech` (how it touches the
//! world: git, files, processes, signatures, secrets, the network), `policy` (pure decisions: what
//! runs now, which wave goes, where the branch moves) and `node` (a node's work in order: a run in
//! phases, a pull, a push's checks, publishing its status). The binaries (`troops`,
//! `troops-hook`) are thin shells around it; only the daemon adds an async runtime on top.

pub mod mech;
pub mod model;
pub mod node;
pub mod policy;

pub use model::error::{Error, Exit, Result};
