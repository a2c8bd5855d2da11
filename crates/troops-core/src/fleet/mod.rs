//! A fleet without a coordinator: every node publishes its status to a ref of its own on a shared
//! remote, reads everybody's back with its fetches, and holds a pulled commit until the earlier
//! rollout waves report it healthy. git is the only bus.

pub mod publish;
pub mod rollout;
pub mod sightings;
pub mod status;
pub mod view;
pub mod waves;
