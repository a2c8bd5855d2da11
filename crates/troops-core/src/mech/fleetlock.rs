//! A FleetLock server (the protocol Zincati speaks; airlock serves it from etcd), for fleets that
//! already run one: `POST <base>/v1/pre-reboot` takes a slot of a group for a client id,
//! `POST <base>/v1/steady-state` gives it back, each with the header `fleet-lock-protocol: true`
//! and the body `{"client_params": {"id": ..., "group": ...}}`. Only a 200 is a yes; the server
//! says why not as `{"kind": ..., "value": ...}`. Locks are the server's to keep: they have no
//! lease, and a client takes the one it holds again (the protocol's locks are recursive).

use std::time::Duration;

use crate::model::url::Verify;

/// What is asked of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `pre-reboot`: take a slot.
    Lock,
    /// `steady-state`: give it back.
    Unlock,
}

/// The most of an answer read: an error object is a line or two.
const MAX_ANSWER: usize = 16 * 1024;

/// Asks the FleetLock server at `base` for `op` on behalf of client `id` in `group`; the error
/// says why not, in the server's words (escaped) where it gave any.
pub fn ask(base: &str, op: Op, id: &str, group: &str, timeout: Duration) -> Result<(), String> {
    let path = match op {
        Op::Lock => "v1/pre-reboot",
        Op::Unlock => "v1/steady-state",
    };
    let url = format!("{}/{path}", base.trim_end_matches('/'));
    let body = serde_json::json!({ "client_params": { "id": id, "group": group } }).to_string();
    let answer = crate::mech::http::post_json(
        &url,
        &Verify::System,
        &[("fleet-lock-protocol", "true")],
        body.as_bytes(),
        timeout,
        MAX_ANSWER,
    )
    .map_err(|e| format!("POST {url} failed: {e}"))?;
    if answer.status == 200 {
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct Refusal {
        kind: String,
        value: String,
    }
    let why = match serde_json::from_slice::<Refusal>(&answer.body) {
        Ok(r) => format!("{} ({}, {})", r.value, r.kind, answer.status),
        Err(_) => format!("it answered {}", answer.status),
    };
    Err(crate::model::shown::escape(&format!("{url}: {why}")).into_owned())
}
