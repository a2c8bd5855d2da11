//! What a node is now, read from disk without taking anything: the one view `troops status`, the
//! published status document, the metrics and systemd hear from, so they never disagree.

use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::status::{state_of, Quarantine, RunSummary, State, StatusDoc, SCHEMA};

/// This node's document now, from disk.
pub fn status_doc(node: &Node) -> Result<StatusDoc> {
    let repo = node.repo()?;
    let tip = repo.tip()?;
    let deployed = repo.deployed()?;
    let host = node.config.hostname();
    let last = node.runs().latest()?;
    let hold = crate::node::rollout::load_hold(node)?;
    let roles: Vec<String> = match node.roles(None) {
        Ok(roles) => roles.into_iter().collect(),
        Err(_) => node.config.roles.clone(),
    };
    let wave = tip
        .and_then(|tip| crate::node::rollout::rollout_at(&repo, tip))
        .map(|rollout| crate::policy::waves::wave_of(&host, &rollout).name);
    let (state, since) = state_of(last.as_ref(), deployed, tip, hold.as_ref());
    let quarantined = repo
        .all_quarantined()?
        .into_iter()
        .map(|q| Quarantine { commit: q.commit.to_string(), reason: q.reason })
        .collect();
    let checks = last.as_ref().map(|r| r.checks.clone()).unwrap_or_default();
    Ok(StatusDoc {
        schema: SCHEMA,
        host,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        roles,
        wave,
        tip: tip.map(|c| c.to_string()),
        deployed: deployed.map(|c| c.to_string()),
        state,
        since,
        run: last.map(|r| RunSummary {
            id: r.id,
            commit: r.commit,
            trigger: r.trigger,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            error: r.error,
        }),
        hold: hold.filter(|_| state == State::Held),
        quarantined,
        checks,
        heartbeat_seconds: node.config.status_heartbeat.as_secs(),
        updated_at: crate::model::records::now(),
    })
}
