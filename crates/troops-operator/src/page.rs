//! The fleet as one HTML page (`troops fleet --html`, `troops fleet serve`), made from the view the
//! table is made from (`fleet::View`), so the two never disagree: hosts by wave, each state in
//! colour and in words, how far behind each is, holds and why, quarantined commits, the newest
//! failures with their checks' errors, when each host last reported. One self-contained document:
//! inline CSS, no script, nothing fetched from elsewhere; it reads as a table on a wide screen and
//! as cards on a phone.
//!
//! Every word a node wrote is shown as the terminal shows it (control characters and bidirectional
//! overrides written out, `shown::escape`), then HTML-escaped: a status document can neither add
//! markup nor make a line read other than it says.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use troops_core::model::names::short;
use troops_core::model::records::CheckStatus;
use troops_core::model::status::State;

use crate::fleet::{age, Row, View};

/// What the page says besides the view: when and from where it was read.
pub struct Context<'a> {
    /// When the status refs were read.
    pub at: SystemTime,
    /// Where they were fetched from: a remote's name or a URL.
    pub remote: &'a str,
    /// Why the last fetch failed, when it did: the page then shows the documents fetched before.
    pub fetch_error: Option<&'a str>,
    /// How often the page reloads itself (`troops fleet serve`); `None`: a file, which does not.
    pub reload: Option<Duration>,
}

/// The most failures listed in "Newest failures"; the rest are counted.
const FAILURES_SHOWN: usize = 10;

/// The states in the order the page counts them, worst first.
const STATES: [State; 12] = [
    State::Failed,
    State::RolledBack,
    State::Drifted,
    State::Paused,
    State::Frozen,
    State::Held,
    State::Other,
    State::WaitingSlot,
    State::Deploying,
    State::Soaking,
    State::Idle,
    State::Healthy,
];

pub fn render(view: &View, context: &Context) -> String {
    let mut page = String::with_capacity(16 * 1024 + view.nodes.len() * 600);
    head(&mut page, view, context);
    header(&mut page, view, context);
    failures(&mut page, view);
    quarantined(&mut page, view);
    for group in waves(view) {
        wave(&mut page, view, &group);
    }
    if !view.refused.is_empty() {
        page.push_str("<section class=\"box\"><h2>Status documents not believed</h2><ul>");
        for bad in &view.refused {
            let _ = write!(
                page,
                "<li><code>{}</code>: {}: {}</li>",
                html(&bad.reference),
                bad.reason,
                html(&bad.detail)
            );
        }
        page.push_str("</ul></section>");
    }
    page.push_str("</main></body></html>\n");
    page
}

/// A peer's (or anyone's) words, fit to put in an element or a quoted attribute.
pub fn html(text: &str) -> String {
    let shown = troops_core::model::shown::escape(text);
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The CSS class of a state: `st-healthy`, `st-rolled_back`.
fn class(state: State) -> &'static str {
    match state {
        State::Idle => "st-idle",
        State::Deploying => "st-deploying",
        State::Soaking => "st-soaking",
        State::Healthy => "st-healthy",
        State::Failed => "st-failed",
        State::RolledBack => "st-rolled_back",
        State::Held => "st-held",
        // Not what was deployed any more: a warning, like a hold, not a failure.
        State::Drifted | State::Paused | State::Frozen => "st-held",
        // A run or a reboot under way, or waiting its turn.
        State::WaitingSlot | State::Rebooting => "st-deploying",
        State::Other => "st-other",
    }
}

fn head(page: &mut String, view: &View, context: &Context) {
    let reload = context.reload.map_or(String::new(), |every| {
        format!("<meta http-equiv=\"refresh\" content=\"{}\">", every.as_secs().max(1))
    });
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{reload}\
         <title>Fleet: {} on {}</title><style>{CSS}</style></head><body><main>",
        view.nodes.len(),
        html(&view.branch)
    );
}

fn header(page: &mut String, view: &View, context: &Context) {
    let tip =
        view.tip.as_deref().map_or("unknown here".into(), |t| format!("<code>{}</code>", html(&short(t))));
    let _ = write!(
        page,
        "<header><h1>Fleet <span class=\"muted\">{} hosts</span></h1>\
         <p class=\"muted\">branch <b>{}</b> at {tip} · read {} from {} ",
        view.nodes.len(),
        html(&view.branch),
        humantime::format_rfc3339_seconds(context.at),
        html(context.remote),
    );
    if let Some(every) = context.reload {
        let _ = write!(page, "· reloads every {}", humantime::format_duration(every));
    }
    let _ = write!(page, "</p><p id=\"summary\" class=\"summary\">{}</p>", html(&view.summary));
    if let Some(error) = context.fetch_error {
        let _ = write!(
            page,
            "<p class=\"problem\" role=\"alert\">The status refs could not be fetched from {}: {}. \
             Shown: those fetched before.</p>",
            html(context.remote),
            html(error)
        );
    }
    page.push_str("<p class=\"tally\">");
    for state in STATES {
        let count = view.nodes.iter().filter(|r| r.doc.state == state).count();
        if count > 0 {
            let _ = write!(page, "<span class=\"chip {}\">{count} {}</span> ", class(state), state);
        }
    }
    let stale = view.nodes.iter().filter(|r| r.stale).count();
    if stale > 0 {
        let _ = write!(page, "<span class=\"chip stale\">{stale} stale</span>");
    }
    page.push_str("</p></header>");
}

/// Hosts that failed or rolled back, newest first, with every check that failed and why.
fn failures(page: &mut String, view: &View) {
    let mut failed: Vec<&Row> = view.nodes.iter().filter(|r| r.doc.state.reports_failure()).collect();
    if failed.is_empty() {
        return;
    }
    // Newest first by when the state began, as the node says; what it does not say, last.
    failed.sort_by_key(|r| std::cmp::Reverse(r.doc.since.clone().unwrap_or_default()));
    let _ = write!(page, "<section id=\"failures\" class=\"box bad\"><h2>Newest failures</h2>");
    for row in failed.iter().take(FAILURES_SHOWN) {
        let doc = &row.doc;
        let commit = doc.failed_commit().map_or("-".into(), |c| html(&short(c.to_string())));
        let run = doc.run.as_ref().map_or(String::new(), |r| format!(" · run {}", r.id));
        let _ = write!(
            page,
            "<article class=\"failure\" data-host=\"{host}\">\
             <h3>{host} <span class=\"chip {}\">{}</span></h3>\
             <p class=\"muted\">commit <code>{commit}</code>{run} · since {}</p>",
            class(doc.state),
            doc.state,
            html(doc.since.as_deref().unwrap_or("?")),
            host = html(&doc.host),
        );
        let checks: Vec<_> =
            doc.checks.iter().filter(|c| c.status == CheckStatus::Failed || c.last_error.is_some()).collect();
        // The run's error, unless it only repeats a check's, which is listed below it.
        let repeats =
            |why: &str| checks.iter().filter_map(|c| c.last_error.as_deref()).any(|e| why.contains(e));
        match doc.failure() {
            Some(why) if !repeats(why) => {
                let _ = write!(page, "<p class=\"error\">{}</p>", html(why));
            }
            Some(_) => {}
            None if checks.is_empty() => page.push_str("<p class=\"muted\">Its document gives no error.</p>"),
            None => {}
        }
        if !checks.is_empty() {
            page.push_str("<ul class=\"checks\">");
            for check in checks {
                let _ = write!(
                    page,
                    "<li><b>check {}</b> ({}, {} probe{}): <span class=\"error\">{}</span></li>",
                    html(&check.name),
                    check_status(check.status),
                    check.probes,
                    if check.probes == 1 { "" } else { "s" },
                    html(check.last_error.as_deref().unwrap_or("no error recorded"))
                );
            }
            page.push_str("</ul>");
        }
        page.push_str("</article>");
    }
    if failed.len() > FAILURES_SHOWN {
        let _ = write!(
            page,
            "<p class=\"muted\">and {} more, in their waves below</p>",
            failed.len() - FAILURES_SHOWN
        );
    }
    page.push_str("</section>");
}

fn check_status(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Pending => "pending",
        CheckStatus::Passing => "passing",
        CheckStatus::Passed => "passed",
        CheckStatus::Failed => "failed",
        CheckStatus::Skipped => "skipped",
        CheckStatus::NotRun => "not run",
    }
}

/// Every commit some host quarantined, with why and where.
fn quarantined(page: &mut String, view: &View) {
    let mut commits: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for row in &view.nodes {
        for q in &row.doc.quarantined {
            commits.entry(&q.commit).or_default().entry(&q.reason).or_default().push(&row.doc.host);
        }
    }
    if commits.is_empty() {
        return;
    }
    page.push_str("<section id=\"quarantined\" class=\"box\"><h2>Quarantined commits</h2><ul>");
    for (commit, reasons) in commits {
        let _ = write!(page, "<li><code>{}</code><ul>", html(&short(commit)));
        for (reason, hosts) in reasons {
            let _ = write!(
                page,
                "<li>{} <span class=\"muted\">on {}</span></li>",
                html(reason),
                hosts_list(&hosts)
            );
        }
        page.push_str("</ul></li>");
    }
    page.push_str("</ul></section>");
}

/// "web-1, web-2 and 3 more".
fn hosts_list(hosts: &[&str]) -> String {
    const SHOWN: usize = 8;
    let named: Vec<String> = hosts.iter().take(SHOWN).map(|h| html(h)).collect();
    match hosts.len().saturating_sub(SHOWN) {
        0 => named.join(", "),
        more => format!("{} and {more} more", named.join(", ")),
    }
}

/// One wave's hosts, in the view's order.
struct Group<'a> {
    /// "Wave 2 of 3: early", or what stands for it when no rollout is known; HTML, escaped.
    title: String,
    rows: Vec<&'a Row>,
}

/// The view's rows by wave (they come sorted by wave): the plan's waves at the tip, each even when
/// empty, then any host no wave places.
fn waves(view: &View) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = view
        .waves
        .iter()
        .enumerate()
        .map(|(i, name)| Group {
            title: format!("Wave {} of {}: {}", i + 1, view.waves.len(), html(name)),
            rows: view.nodes.iter().filter(|r| r.wave_index == Some(i)).collect(),
        })
        .collect();
    let unplaced: Vec<&Row> =
        view.nodes.iter().filter(|r| r.wave_index.is_none_or(|i| i >= view.waves.len())).collect();
    if !unplaced.is_empty() || groups.is_empty() {
        let title = match (&view.tip, groups.is_empty()) {
            (None, _) => "Hosts (no branch tip here to place them in waves)",
            (Some(_), true) => "Hosts (the plan at the tip has no rollout waves)",
            (Some(_), false) => "Hosts in no wave",
        };
        groups.push(Group { title: title.into(), rows: unplaced });
    }
    groups
}

fn wave(page: &mut String, view: &View, group: &Group) {
    let held: Vec<&Row> = group.rows.iter().copied().filter(|r| r.doc.state == State::Held).collect();
    let marks = if held.is_empty() { "" } else { " held" };
    let _ = write!(page, "<section class=\"wave{marks}\"><h2>{}", group.title);
    if !held.is_empty() {
        let _ =
            write!(page, " <span class=\"chip st-held\">held: {} of {}</span>", held.len(), group.rows.len());
    }
    page.push_str("</h2>");
    if group.rows.is_empty() {
        page.push_str("<p class=\"muted\">No host here has published its status.</p></section>");
        return;
    }
    // The share of each state, as a bar whose parts say their counts.
    page.push_str("<div class=\"bar\">");
    for state in STATES {
        let count = group.rows.iter().filter(|r| r.doc.state == state).count();
        if count > 0 {
            let _ = write!(
                page,
                "<span class=\"{}\" style=\"flex-grow:{count}\" title=\"{count} {state}\">{count}</span>",
                class(state)
            );
        }
    }
    page.push_str("</div>");
    // Why it is held, once per reason however many hosts give it.
    let mut reasons: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for row in &held {
        if let Some(hold) = &row.doc.hold {
            reasons.entry(&hold.why).or_default().push(&row.doc.host);
        }
    }
    if !reasons.is_empty() {
        page.push_str("<ul class=\"holds\">");
        for (why, hosts) in reasons {
            let _ =
                write!(page, "<li>{} <span class=\"muted\">({})</span></li>", html(why), hosts_list(&hosts));
        }
        page.push_str("</ul>");
    }
    page.push_str(
        "<table><thead><tr><th>Host</th><th>State</th><th>Deployed</th><th>Behind</th>\
         <th>Reported</th><th>Roles</th><th>Note</th></tr></thead><tbody>",
    );
    for row in &group.rows {
        host(page, view, row);
    }
    page.push_str("</tbody></table></section>");
}

fn host(page: &mut String, view: &View, row: &Row) {
    let doc = &row.doc;
    let state = match (doc.diverged.is_some(), row.stale) {
        (false, false) => doc.state.to_string(),
        (true, false) => format!("{}, diverged", doc.state),
        (false, true) => format!("{}, stale", doc.state),
        (true, true) => format!("{}, diverged, stale", doc.state),
    };
    let deployed =
        doc.deployed.as_deref().map_or("-".into(), |d| format!("<code>{}</code>", html(&short(d))));
    let behind = match row.behind {
        Some(0) => "up to date".into(),
        Some(n) => format!("{n} behind"),
        None => "?".into(),
    };
    let reported = row.age_seconds.map_or("?".into(), |s| format!("{} ago", age(Duration::from_secs(s))));
    let roles = html(&doc.roles.join(", "));
    let note = match &doc.diverged {
        Some(diverged) => html(&diverged.sentence(&view.branch)),
        None if !doc.drift.is_empty() => html(&format!("drifted: {}", doc.drift.join("; "))),
        None if doc.paused.is_some() => html(doc.paused.as_deref().unwrap_or_default()),
        None if doc.frozen.is_some() => html(doc.frozen.as_deref().unwrap_or_default()),
        None if doc.approval.is_some() => {
            html(&format!("tip waits: {}", doc.approval.as_deref().unwrap_or_default()))
        }
        None if doc.window.is_some() => {
            html(&format!("tip waits: {}", doc.window.as_deref().unwrap_or_default()))
        }
        None if doc.state.reports_failure() => html(doc.failure().unwrap_or("no error in its document")),
        None => String::new(),
    };
    let _ = write!(
        page,
        "<tr class=\"{}{}\" data-host=\"{host}\"><td data-label=\"Host\"><b>{host}</b></td>\
         <td data-label=\"State\"><span class=\"chip {}\">{}</span></td>\
         <td data-label=\"Deployed\">{deployed}</td><td data-label=\"Behind\">{behind}</td>\
         <td data-label=\"Reported\" title=\"{}\">{reported}</td><td data-label=\"Roles\">{roles}</td>\
         <td data-label=\"Note\" class=\"note\">{note}</td></tr>",
        class(doc.state),
        if row.stale { " stale" } else { "" },
        class(doc.state),
        html(&state),
        html(&doc.updated_at),
        host = html(&doc.host),
    );
}

/// The page's style: readable at a hundred hosts (compact rows, sticky headers, the same columns
/// in every wave) and on a phone (below 700px, each row a card of labelled lines). Every state
/// has its colour and its word.
const CSS: &str = "\
    :root{--ok:#1a7f37;--ok-bg:#dafbe1;--bad:#cf222e;--bad-bg:#ffebe9;--held:#9a6700;--held-bg:#fff8c5;\
    --busy:#0969da;--busy-bg:#ddf4ff;--idle:#57606a;--idle-bg:#eaeef2;--line:#d0d7de}\
    *{box-sizing:border-box}\
    body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
    color:#1f2328;background:#f6f8fa}\
    main{max-width:1200px;margin:0 auto;padding:12px}\
    h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:0 0 8px}h3{font-size:15px;margin:0 0 4px}\
    code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}\
    .muted{color:#57606a;font-weight:normal}\
    .summary{font-size:15px;overflow-wrap:anywhere}\
    .problem{background:var(--bad-bg);border:1px solid var(--bad);padding:8px;border-radius:6px;\
    overflow-wrap:anywhere}\
    .box,.wave{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px;margin:12px 0}\
    .box.bad{border-color:var(--bad)}\
    .wave.held{border-left:6px solid var(--held)}\
    .chip{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;\
    white-space:nowrap}\
    .chip.st-healthy,.bar .st-healthy{background:var(--ok-bg);color:var(--ok)}\
    .chip.st-failed,.chip.st-rolled_back,.bar .st-failed,.bar .st-rolled_back{\
    background:var(--bad-bg);color:var(--bad)}\
    .chip.st-held,.bar .st-held{background:var(--held-bg);color:var(--held)}\
    .chip.st-deploying,.chip.st-soaking,.bar .st-deploying,.bar .st-soaking{\
    background:var(--busy-bg);color:var(--busy)}\
    .chip.st-idle,.chip.st-other,.bar .st-idle,.bar .st-other,.chip.stale{\
    background:var(--idle-bg);color:var(--idle)}\
    .bar{display:flex;height:18px;border-radius:4px;overflow:hidden;margin:4px 0 8px;\
    font-size:11px;font-weight:600}\
    .bar span{display:flex;align-items:center;justify-content:center;min-width:18px}\
    .holds{margin:0 0 8px;padding-left:20px}\
    .failure{border-top:1px solid var(--line);padding:8px 0}.failure:first-of-type{border-top:0}\
    .error{color:var(--bad)}.checks{margin:4px 0;padding-left:20px}\
    .holds li,.error,th,td{overflow-wrap:anywhere}\
    table{width:100%;border-collapse:collapse;table-layout:fixed}\
    th:nth-child(1){width:13%}th:nth-child(2),th:nth-child(3),th:nth-child(6){width:12%}\
    th:nth-child(4),th:nth-child(5){width:9%}\
    th{position:sticky;top:0;background:#fff;text-align:left;font-size:12px;color:#57606a;\
    border-bottom:1px solid var(--line)}\
    th,td{padding:3px 8px;vertical-align:top}\
    tbody tr{border-bottom:1px solid #eaeef2}\
    tr.st-failed,tr.st-rolled_back{background:var(--bad-bg)}\
    tr.stale td{color:#8c959f}\
    @media (max-width:700px){\
    main{padding:6px}\
    table,thead,tbody{display:block}thead{display:none}\
    tbody tr{display:grid;grid-template-columns:1fr 1fr;gap:0 8px;border:1px solid var(--line);\
    border-radius:6px;margin:6px 0;padding:4px 8px;background:#fff}\
    tr.st-failed,tr.st-rolled_back{border-color:var(--bad)}\
    td{display:block;padding:1px 0}td:empty{display:none}.note{grid-column:1/-1}\
    td::before{content:attr(data-label) ' ';color:#57606a;font-size:11px}\
    td[data-label=Host]::before,td[data-label=State]::before,td[data-label=Note]::before{content:none}}\
";

#[cfg(test)]
mod tests {
    use super::*;
    use troops_core::model::status::{Hold, Quarantine, RunSummary, StatusDoc};

    const MARKUP: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&";

    fn row(host: &str, state: State, wave_index: Option<usize>) -> Row {
        let commit = "1".repeat(40);
        Row {
            doc: StatusDoc {
                schema: 1,
                host: host.into(),
                version: "0.2.0".into(),
                roles: vec!["web".into()],
                wave: None,
                tip: Some(commit.clone()),
                deployed: Some(commit),
                state,
                since: Some("2026-01-01T00:00:00.000Z".into()),
                run: None,
                hold: None,
                diverged: None,
                drift: vec![],
                paused: None,
                window: None,
                exports: Default::default(),
                frozen: None,
                approval: None,
                slot: None,
                reboot: None,
                quarantined: vec![],
                checks: vec![],
                heartbeat_seconds: 3600,
                updated_at: "2026-01-01T00:00:00.000Z".into(),
            },
            wave_index,
            behind: Some(0),
            age_seconds: Some(42),
            stale: false,
        }
    }

    fn view(nodes: Vec<Row>, waves: &[&str]) -> View {
        let summary = crate::fleet::summary(&nodes);
        View {
            branch: "main".into(),
            tip: Some("1".repeat(40)),
            waves: waves.iter().map(|w| w.to_string()).collect(),
            nodes,
            refused: vec![],
            fleet_rollbacks: vec![],
            summary,
        }
    }

    fn context() -> Context<'static> {
        Context { at: SystemTime::UNIX_EPOCH, remote: "status", fetch_error: None, reload: None }
    }

    /// Every peer-written string of a document carries markup; none of it may reach the page as markup.
    #[test]
    fn a_hostile_status_document_adds_no_markup() {
        let mut hostile = row(&format!("evil{MARKUP}"), State::Failed, Some(0));
        let doc = &mut hostile.doc;
        let commit = git2::Oid::from_str(&"1".repeat(40)).unwrap();
        doc.roles = vec![MARKUP.into()];
        doc.wave = Some(MARKUP.into());
        doc.deployed = Some(MARKUP.into());
        doc.since = Some(MARKUP.into());
        doc.updated_at = MARKUP.into();
        doc.run = Some(RunSummary {
            id: 7,
            commit,
            trigger: troops_core::model::records::Trigger::Pull,
            status: troops_core::model::records::RunStatus::Failed,
            started_at: troops_core::model::time::Timestamp::now(),
            finished_at: None,
            error: Some(MARKUP.into()),
        });
        doc.quarantined = vec![Quarantine { commit: MARKUP.into(), reason: MARKUP.into() }];
        doc.checks = vec![troops_core::model::records::CheckRecord {
            name: MARKUP.into(),
            status: CheckStatus::Failed,
            probes: 3,
            last_error: Some(MARKUP.into()),
        }];
        let mut held = row("held-1", State::Held, Some(1));
        held.doc.hold = Some(Hold {
            commit: MARKUP.into(),
            wave: MARKUP.into(),
            why: MARKUP.into(),
            until: None,
            halted: true,
            since: MARKUP.into(),
        });
        let mut view = view(vec![hostile, held], &[MARKUP, "rest"]);
        view.branch = MARKUP.into();
        view.refused = vec![troops_core::mech::believe::Refused {
            host: MARKUP.into(),
            reference: MARKUP.into(),
            commit: None,
            reason: troops_core::mech::believe::Reason::Misnamed,
            detail: MARKUP.into(),
        }];
        let page = render(&view, &Context { fetch_error: Some(MARKUP), remote: MARKUP, ..context() });

        for markup in ["<script", "<img", "onerror=alert(2)>", "\"'&\""] {
            assert!(!page.contains(markup), "{markup:?} reached the page:\n{page}");
        }
        let escaped =
            "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;&quot;&#39;&amp;";
        // The host, roles, wave name, branch, since, hold, run error, quarantine, check name and
        // error, the refused ref and its reason, and the fetch error: each is there, as text.
        assert!(page.matches(escaped).count() >= 12, "{page}");
        // The only tags are the page's own.
        let tags: std::collections::BTreeSet<&str> = page
            .split('<')
            .skip(1)
            .map(|t| t.split([' ', '>', '/']).next().unwrap())
            .filter(|t| !t.is_empty())
            .collect();
        let own = [
            "!DOCTYPE", "article", "b", "body", "code", "div", "h1", "h2", "h3", "head", "header", "html",
            "li", "main", "meta", "p", "section", "span", "style", "table", "tbody", "td", "th", "thead",
            "title", "tr", "ul",
        ];
        assert_eq!(tags, own.into_iter().collect(), "{page}");
    }

    #[test]
    fn control_characters_and_bidi_overrides_show_as_the_terminal_shows_them() {
        assert_eq!(html("a\u{1b}[2J\nb\u{202e}c<"), "a\\u{1b}[2J\\nb\\u{202e}c&lt;");
    }

    #[test]
    fn hosts_go_by_wave_and_a_held_wave_is_marked_with_its_reasons_once() {
        let mut nodes = vec![row("web-1", State::Healthy, Some(0))];
        for i in 2..5 {
            let mut held = row(&format!("web-{i}"), State::Held, Some(1));
            held.doc.hold = Some(Hold {
                commit: "2".repeat(40),
                wave: "wave 2 of 2 (rest)".into(),
                why: "222222222222 failed on web-1 (canary); held until a newer commit".into(),
                until: None,
                halted: true,
                since: "2026-01-01T00:00:00.000Z".into(),
            });
            nodes.push(held);
        }
        let page = render(&view(nodes, &["canary", "rest"]), &context());
        let canary = page.find("Wave 1 of 2: canary").unwrap();
        let rest = page.find("<section class=\"wave held\"><h2>Wave 2 of 2: rest").unwrap();
        assert!(canary < page.find("data-host=\"web-1\"").unwrap(), "{page}");
        assert!(rest < page.find("data-host=\"web-2\"").unwrap(), "{page}");
        assert!(page.contains("held: 3 of 3"), "{page}");
        assert_eq!(page.matches("held until a newer commit").count(), 1, "{page}");
        assert!(page.contains("(web-2, web-3, web-4)"), "{page}");
    }

    #[test]
    fn a_page_of_a_hundred_hosts_has_every_host_once_and_stays_small() {
        let nodes: Vec<Row> =
            (0..100).map(|i| row(&format!("web-{i:03}"), State::Healthy, Some(i % 3))).collect();
        let page = render(&view(nodes, &["canary", "early", "rest"]), &context());
        for i in 0..100 {
            assert_eq!(page.matches(&format!("data-host=\"web-{i:03}\"")).count(), 1);
        }
        assert!(page.len() < 100 * 1024, "{} bytes", page.len());
    }

    #[test]
    fn a_served_page_reloads_itself_and_a_failed_fetch_is_said() {
        let context =
            Context { reload: Some(Duration::from_secs(10)), fetch_error: Some("timed out"), ..context() };
        let page = render(&view(vec![], &[]), &context);
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"10\">"), "{page}");
        assert!(page.contains("could not be fetched from status: timed out"), "{page}");
        assert!(page.contains("no node has published its status"), "{page}");
    }
}
