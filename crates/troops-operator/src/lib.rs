//! troops-operator: what a person runs in a clone of the deploy repo, apart from what a node
//! runs: `troops push` (which hosts, and what each push said), the secrets tooling (encrypt,
//! edit, rekey, check), the fleet as the status refs tell it (`troops fleet`, a table or a
//! page), and signed orders to the fleet (`troops freeze`, `unfreeze`, `approve`). It builds on troops-core's model and mechanisms; no node code imports it.

pub mod exports;
pub mod fleet;
pub mod orders;
pub mod page;
pub mod push;
pub mod secrets;
