//! The second floor: how troops touches the world, one mechanism a module (git and the node
//! repo, files kept safe and atomic, locks, processes and their supervisor, the network, the
//! control socket, signatures, secrets, metrics). Each does what it is told; none decides what a
//! node should do next.

pub mod background;
pub mod believe;
pub mod control;
pub mod drift;
pub mod env;
pub mod exports;
pub mod fetch;
pub mod files;
pub mod fleetlock;
pub mod fs_safe;
pub mod git;
pub mod http;
pub mod ledger;
pub mod lock;
pub mod mask;
pub mod metrics;
pub mod modes;
pub mod notify;
pub mod output;
pub mod pause;
pub mod probe;
pub mod reboot;
pub mod recorded;
pub mod releases;
pub mod remotes;
pub mod repo;
pub mod report;
pub mod runner;
pub mod runs;
pub mod secrets;
pub mod sightings;
pub mod signals;
pub mod slot_record;
pub mod slots;
pub mod ssh;
pub mod state_file;
pub mod statusrefs;
pub mod supervise;
pub mod trust;
pub mod verify;
