//! The ground floor: what troops knows and says, as plain data that reads and checks itself (the
//! node config, the plan, run records and their times, status documents, names, limits, errors).
//! Nothing here touches a repo, a process or the network, and nothing here names a floor above.

pub mod ask;
pub mod config;
pub mod error;
pub mod exports;
pub mod fleet;
pub mod host;
pub mod limits;
pub mod names;
pub mod node;
pub mod orders;
pub mod plan;
pub mod records;
pub mod roles;
pub mod shown;
pub mod slot;
pub mod status;
pub mod time;
pub mod url;
