//! What `troops fleet exports` shows: every node's exports from its status document, one row a
//! (host, name), narrowed to one name or to the hosts of one role, with how fresh the news is.

use serde::Serialize;

use crate::fleet::View;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Export {
    pub host: String,
    pub roles: Vec<String>,
    pub name: String,
    pub value: String,
    pub age_seconds: Option<u64>,
    pub stale: bool,
}

/// The exports of the nodes of `view`, sorted by host then name; only `name`'s, and only of
/// hosts with `role`, when given.
pub fn exports(view: &View, name: Option<&str>, role: Option<&str>) -> Vec<Export> {
    let mut found: Vec<Export> = view
        .nodes
        .iter()
        .filter(|row| role.is_none_or(|role| row.doc.roles.iter().any(|r| r == role)))
        .flat_map(|row| {
            row.doc.exports.iter().filter(move |(n, _)| name.is_none_or(|name| name == n.as_str())).map(
                move |(n, value)| Export {
                    host: row.doc.host.clone(),
                    roles: row.doc.roles.clone(),
                    name: n.clone(),
                    value: value.clone(),
                    age_seconds: row.age_seconds,
                    stale: row.stale,
                },
            )
        })
        .collect();
    found.sort_by(|a, b| (&a.host, &a.name).cmp(&(&b.host, &b.name)));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Row;
    use troops_core::model::status::{State, StatusDoc};

    fn row(host: &str, role: &str, exports: &[(&str, &str)]) -> Row {
        let doc = serde_json::json!({
            "schema": 1, "host": host, "version": "0", "roles": [role], "wave": null, "tip": null,
            "deployed": null, "state": "healthy", "since": null, "run": null, "hold": null,
            "quarantined": [], "heartbeat_seconds": 60, "updated_at": "2026-01-01T00:00:00.000Z",
            "exports": exports.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        });
        let doc: StatusDoc = serde_json::from_value(doc).unwrap();
        assert_eq!(doc.state, State::Healthy);
        Row { doc, wave_index: None, behind: None, age_seconds: Some(5), stale: false }
    }

    #[test]
    fn by_name_and_role() {
        let view = View {
            branch: "main".into(),
            tip: None,
            waves: vec![],
            nodes: vec![
                row("app-2", "app", &[("addr", "10.0.0.2:80"), ("key", "k2")]),
                row("app-1", "app", &[("addr", "10.0.0.1:80")]),
                row("lb-1", "lb", &[("addr", "10.0.0.9:443")]),
            ],
            refused: vec![],
            fleet_rollbacks: vec![],
            summary: String::new(),
        };
        let hosts = |e: Vec<Export>| e.iter().map(|e| format!("{}:{}", e.host, e.name)).collect::<Vec<_>>();
        assert_eq!(hosts(exports(&view, None, None)), ["app-1:addr", "app-2:addr", "app-2:key", "lb-1:addr"]);
        assert_eq!(hosts(exports(&view, Some("addr"), Some("app"))), ["app-1:addr", "app-2:addr"]);
        assert_eq!(hosts(exports(&view, Some("key"), None)), ["app-2:key"]);
        assert!(exports(&view, None, Some("db")).is_empty());
    }
}
