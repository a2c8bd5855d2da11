//! `troops push`, the operator's fan-out, without processes: which hosts a push goes to and at
//! which git URL (the plan's roles' exact `hosts` and its `[hosts]` table), and what one host's
//! `git push` output says happened there. Pure, so every rule is tested here; the command runs the
//! pushes.

use troops_core::model::error::{Error, Result};
use troops_core::model::plan::Plan;

/// Where a node's repo is when `[hosts]` does not say (the SPEC's default state dir).
pub const DEFAULT_REPO_PATH: &str = "/var/lib/troops/repo/main.git";

/// One host a push goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    /// `[hosts]`'s URL, or `<host>:/var/lib/troops/repo/main.git` (ssh with the operator's config).
    pub url: String,
}

/// The hosts a push goes to, in order (the first are the canaries), and what the operator should
/// know about the choice (roles whose `match` globs name hosts no push can enumerate).
#[derive(Debug)]
pub struct Selection {
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

/// The hosts of `plan` to push to: those named in `hosts` (in that order), then the hosts of each
/// of `roles` as the plan lists them; with neither, every role's hosts in the plan's order. A host
/// is named once, at its first place. An unknown role or host is bad input, as is a named role
/// with only `match`, or a selection of no host at all.
pub fn select(plan: &Plan, roles: &[String], hosts: &[String]) -> Result<Selection> {
    let mut names: Vec<&str> = Vec::new();
    let mut notes = Vec::new();
    for host in hosts {
        if let Some(problem) = troops_core::model::plan::hosts::host_problem(host) {
            return Err(Error::Input(format!("--host {host:?} {problem}")));
        }
        if !known_host(plan, host) {
            return Err(Error::Input(format!(
                "--host {host}: no role of the plan names it (in `hosts` or `match`) and [hosts] has no address for it"
            )));
        }
        names.push(host);
    }
    let everything = roles.is_empty() && hosts.is_empty();
    let chosen: Vec<&troops_core::model::plan::Role> = if everything {
        plan.roles.iter().collect()
    } else {
        roles
            .iter()
            .map(|name| {
                plan.roles.iter().find(|r| &r.name == name).ok_or_else(|| {
                    let known: Vec<&str> = plan.roles.iter().map(|r| r.name.as_str()).collect();
                    Error::Input(format!(
                        "--role {name}: the plan has no such role (it has: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    for role in chosen {
        let globs: Vec<&str> = role.patterns.iter().map(glob::Pattern::as_str).collect();
        if role.hosts.is_empty() && !everything {
            return Err(Error::Input(format!(
                "--role {}: the role names its hosts only by `match` ({}), which cannot be listed; \
                 name them with --host or in the role's `hosts`",
                role.name,
                globs.join(", ")
            )));
        }
        if !globs.is_empty() {
            notes.push(format!(
                "role `{}`: hosts it has by `match` ({}) cannot be listed and are not pushed to; name them with --host",
                role.name,
                globs.join(", ")
            ));
        }
        names.extend(role.hosts.iter().map(String::as_str));
    }
    let mut targets: Vec<Target> = Vec::new();
    for name in names {
        if targets.iter().all(|t| t.host != name) {
            targets.push(Target { host: name.to_owned(), url: url(plan, name) });
        }
    }
    if targets.is_empty() {
        return Err(Error::Input(
            "no host to push to: no role of the plan lists hosts by name (`hosts`); name them with --host"
                .into(),
        ));
    }
    Ok(Selection { targets, notes })
}

/// Whether the plan knows `host`: a role lists or matches it, or `[hosts]` has its address.
fn known_host(plan: &Plan, host: &str) -> bool {
    plan.hosts.contains_key(host)
        || plan
            .roles
            .iter()
            .any(|r| r.hosts.iter().any(|h| h == host) || r.patterns.iter().any(|p| p.matches(host)))
}

fn url(plan: &Plan, host: &str) -> String {
    plan.hosts.get(host).cloned().unwrap_or_else(|| format!("{host}:{DEFAULT_REPO_PATH}"))
}

/// What one host's push came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node ran the pushed commit: run `run` ended `status`; `detail` is the rest of the
    /// node's summary line (what failed, how many steps ran).
    Ran { run: u64, status: String, detail: String },
    /// The branch moved to a commit the node had deployed already, by run `run` if it said so.
    AlreadyDeployed { run: Option<u64> },
    /// Nothing moved: the node had the commit.
    UpToDate,
    /// The node (pre-receive: non-fast-forward, signature) or git refused the push, and why.
    Refused(String),
    /// The push moved a ref, but the node ran nothing or said nothing about a run: why.
    NoRun(String),
    /// The push did not reach the node's repo (ssh, network, no such repo): git's complaint.
    Unreachable(String),
    /// The push took longer than the per-host timeout and was killed.
    TimedOut,
    /// The operator stopped `troops push` while this push was under way.
    Interrupted,
    /// Never pushed, and why (a canary failed first, the operator stopped `troops push`).
    NotPushed(String),
}

impl Outcome {
    /// Whether the host is where the operator wanted it: deployed, or already there.
    pub fn is_ok(&self) -> bool {
        match self {
            Outcome::Ran { status, .. } => status == "succeeded",
            Outcome::AlreadyDeployed { .. } | Outcome::UpToDate => true,
            _ => false,
        }
    }

    /// The run id for the table, if the node named one.
    pub fn run(&self) -> Option<u64> {
        match self {
            Outcome::Ran { run, .. } => Some(*run),
            Outcome::AlreadyDeployed { run } => *run,
            _ => None,
        }
    }

    /// A few words for the table's result column.
    pub fn word(&self) -> String {
        match self {
            Outcome::Ran { status, .. } => status.replace('_', " "),
            Outcome::AlreadyDeployed { .. } => "deployed already".into(),
            Outcome::UpToDate => "up to date".into(),
            Outcome::Refused(_) => "refused".into(),
            Outcome::NoRun(_) => "pushed, no run".into(),
            Outcome::Unreachable(_) => "unreachable".into(),
            Outcome::TimedOut => "timed out".into(),
            Outcome::Interrupted => "interrupted".into(),
            Outcome::NotPushed(_) => "not pushed".into(),
        }
    }

    /// Why, for the table's last column (empty when the result says it all).
    pub fn detail(&self) -> &str {
        match self {
            Outcome::Ran { detail, .. } => detail,
            Outcome::Refused(why)
            | Outcome::NoRun(why)
            | Outcome::Unreachable(why)
            | Outcome::NotPushed(why) => why,
            Outcome::TimedOut => "killed; the node may still be running the push's run",
            Outcome::Interrupted => "stopped; the node may still be running the push's run",
            Outcome::AlreadyDeployed { .. } | Outcome::UpToDate => "",
        }
    }
}

/// What a finished `git push --porcelain` said: `stdout` is its porcelain ref report, `stderr`
/// git's messages and the node's (`remote: ` lines), `exited_ok` its exit status.
pub fn classify(exited_ok: bool, stdout: &str, stderr: &str) -> Outcome {
    let remote: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("remote: ")).map(clean).collect();
    // Porcelain: "<flag>\t<from>:<to>\t<summary>"; `!` rejected, `=` up to date.
    let report = stdout.lines().find_map(|l| {
        let mut fields = l.splitn(3, '\t');
        let flag = fields.next()?;
        let _refs = fields.next()?;
        Some((flag, fields.next().unwrap_or_default()))
    });
    match report {
        Some(("!", summary)) => {
            let troops = remote.iter().rev().find(|l| l.starts_with("troops: refusing"));
            Outcome::Refused(troops.map_or_else(|| summary.to_owned(), |l| (*l).to_owned()))
        }
        Some(("=", _)) => Outcome::UpToDate,
        Some(_) => ran(&remote).unwrap_or_else(|| {
            let said = remote.iter().rev().find(|l| l.starts_with("troops: ") && l.ends_with("nothing runs"));
            Outcome::NoRun(said.map_or_else(
                || "the node said nothing of a run (is troops-hook its post-receive hook?)".into(),
                |l| (*l).to_owned(),
            ))
        }),
        None if exited_ok => Outcome::Unreachable("git push reported no ref".into()),
        None => Outcome::Unreachable(complaint(stderr)),
    }
}

/// The run the push started, from troops' summary of it. A step can print a line that looks like
/// one ("troops: run 9 succeeded: ..."), so the last such line counts, which is troops' own: a
/// run's summary ("troops: run 4 failed: ...") comes after everything its steps print, on a line
/// of its own, and after it the node says only what happened next, in lines of other forms; but
/// when a rollback ran after it, whose steps print after that summary, the node ends with a line
/// on the pushed run that comes after them ("troops: run 4 failed; rolled back to abc by run 5,
/// which succeeded (troops log 5)"). Else the node's "deployed already" line.
fn ran(remote: &[&str]) -> Option<Outcome> {
    let summary = remote.iter().rev().find_map(|l| {
        let rest = l.strip_prefix("troops: run ")?;
        let (id, rest) = rest.split_once(' ')?;
        let (status, detail) = rest.split_at(rest.find([':', ';'])?);
        let detail = &detail[1..];
        let word = !status.is_empty() && status.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        Some(Outcome::Ran {
            run: id.parse().ok()?,
            status: word.then(|| status.to_owned())?,
            detail: detail.trim().to_owned(),
        })
    });
    summary.or_else(|| {
        let line = remote.iter().find(|l| l.starts_with("troops: ") && l.contains(" is deployed already"))?;
        let run = line.split_once(" by run ").and_then(|(_, r)| r.split(' ').next()?.parse().ok());
        Some(Outcome::AlreadyDeployed { run })
    })
}

/// git's complaint about a push that went nowhere, in one line without its boilerplate advice.
fn complaint(stderr: &str) -> String {
    troops_core::mech::git::complaint(stderr).unwrap_or_else(|| "git push failed and said nothing".into())
}

/// A line as git relays it, without the padding or clear-to-end-of-line it appends to remote lines.
pub fn clean(line: &str) -> &str {
    line.trim_end_matches("\x1b[K").trim_end()
}

/// One host's preview of a push (`troops push --preview`), as its node showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPreview {
    /// The preview's lines, as the node wrote them.
    pub text: String,
    pub runs: Vec<String>,
    pub skipped: Vec<String>,
    pub held: Vec<String>,
}

/// The preview in what a push to `refs/troops/preview` said (`stderr`: the node's `remote: `
/// lines), if the node showed one.
pub fn preview_of(stderr: &str) -> Option<HostPreview> {
    let mark = troops_core::node::receive::PREVIEW_MARK;
    let lines: Vec<String> = stderr
        .lines()
        .filter_map(|l| clean(l).strip_prefix("remote: ")?.strip_prefix(mark))
        .map(|l| troops_core::model::shown::escape(l).into_owned())
        .collect();
    lines.first().filter(|l| l.starts_with("commit "))?;
    let named = |verb: &str| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(verb))
            .filter(|rest| !rest.starts_with("check "))
            .filter_map(|rest| Some(rest.split_once(": ")?.0.to_owned()))
            .collect()
    };
    Some(HostPreview {
        runs: named("run  "),
        skipped: named("skip "),
        held: lines.iter().filter_map(|l| l.strip_prefix("held: ")).map(str::to_owned).collect(),
        text: lines.join("\n"),
    })
}

/// Every host's preview as Markdown, ready to paste into a pull request: a table (host, steps that
/// run, steps skipped, holds), then each host's whole preview, folded. `hosts`: each host and its
/// preview, or why it has none. Every word a node wrote is its own: kept out of the table's syntax.
pub fn preview_markdown(what: &str, hosts: &[(String, std::result::Result<HostPreview, String>)]) -> String {
    let cell = |text: &str| text.replace('|', "\\|").replace(['\n', '\r'], " ");
    let list = |items: &[String]| if items.is_empty() { "-".to_owned() } else { cell(&items.join(", ")) };
    let mut out = format!(
        "### troops preview of {}\n\n| host | runs | skipped | held |\n|---|---|---|---|\n",
        cell(what)
    );
    for (host, preview) in hosts {
        match preview {
            Ok(p) => out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                cell(host),
                list(&p.runs),
                list(&p.skipped),
                list(&p.held)
            )),
            Err(why) => out.push_str(&format!("| {} | no preview: {} | | |\n", cell(host), cell(why))),
        }
    }
    for (host, preview) in hosts {
        if let Ok(p) = preview {
            let fence = "```";
            // A node's text cannot end the fence early: its own fences are spaced apart.
            let text = p.text.replace(fence, "` ` `");
            out.push_str(&format!(
                "\n<details><summary>{}</summary>\n\n{fence}\n{text}\n{fence}\n</details>\n",
                cell(host).replace('<', "&lt;")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn plan(text: &str) -> Plan {
        Plan::parse(Path::new("troops.toml"), text, None).unwrap()
    }

    const PLAN: &str = "[roles.web]\nhosts = [\"web-2\", \"web-1\"]\n[roles.db]\nhosts = [\"db-1\"]\nmatch = [\"db-*\"]\n\
                        [roles.cache]\nmatch = [\"cache-*\"]\n\
                        [hosts]\nweb-1 = \"root@10.0.0.5:/srv/troops/repo/main.git\"\nspare = \"/tmp/spare.git\"\n";

    fn hosts(selection: &Selection) -> Vec<&str> {
        selection.targets.iter().map(|t| t.host.as_str()).collect()
    }

    #[test]
    fn every_listed_host_in_plan_order_with_its_address() {
        let plan = plan(PLAN);
        let all = select(&plan, &[], &[]).unwrap();
        assert_eq!(hosts(&all), ["web-2", "web-1", "db-1"]);
        assert_eq!(all.targets[1].url, "root@10.0.0.5:/srv/troops/repo/main.git");
        assert_eq!(all.targets[0].url, "web-2:/var/lib/troops/repo/main.git");
        assert_eq!(all.notes.len(), 2, "{:?}", all.notes);
        assert!(
            all.notes[1].contains("role `cache`: hosts it has by `match` (cache-*) cannot"),
            "{:?}",
            all.notes
        );
    }

    #[test]
    fn named_hosts_come_first_then_roles_each_host_once() {
        let plan = plan(PLAN);
        let some = select(&plan, &["web".into(), "db".into()], &["db-1".into(), "cache-7".into()]).unwrap();
        assert_eq!(hosts(&some), ["db-1", "cache-7", "web-2", "web-1"]);
        assert_eq!(hosts(&select(&plan, &[], &["spare".into()]).unwrap()), ["spare"]);
        assert_eq!(select(&plan, &[], &["spare".into()]).unwrap().targets[0].url, "/tmp/spare.git");
    }

    #[test]
    fn unknown_names_and_unlistable_roles_are_bad_input() {
        let plan = plan(PLAN);
        let error = |roles: &[&str], hosts: &[&str]| {
            let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let e = select(&plan, &owned(roles), &owned(hosts)).unwrap_err();
            assert!(matches!(e, Error::Input(_)), "{e}");
            e.to_string()
        };
        assert!(error(&[], &["web-9"]).starts_with("--host web-9: no role"));
        assert!(error(&["api"], &[])
            .starts_with("--role api: the plan has no such role (it has: web, db, cache)"));
        assert!(error(&["cache"], &[]).contains("only by `match` (cache-*)"));
        assert!(error(&[], &["-oProxyCommand=x"]).contains("starts with `-`"));
        let none = select(&self::plan("[roles.x]\nmatch = [\"x-*\"]\n"), &[], &[]).unwrap_err();
        assert!(none.to_string().starts_with("no host to push to"), "{none}");
    }

    #[test]
    fn bad_host_addresses_are_placed_in_the_plan() {
        let error = |text: &str| Plan::parse(Path::new("troops.toml"), text, None).unwrap_err().to_string();
        assert!(
            error("[hosts]\nweb-1 = \"-oProxyCommand=x\"\n").starts_with("troops.toml:2:9: [hosts]: `web-1`")
        );
        assert!(error("[hosts]\nweb-1 = \"\"\n").contains("is empty"));
        assert!(error("[hosts]\nweb-1 = \"a\\tb\"\n").contains("has a control character (\\u{9})"));
        assert!(error("[hosts]\n\"-x\" = \"a\"\n").starts_with("troops.toml:2:1: [hosts]: host \"-x\""));
        assert!(error("[hosts]\nweb-1 = 5\n").starts_with("troops.toml:2:9:"));
    }

    #[test]
    fn a_run_is_read_from_the_nodes_last_summary_line_not_a_steps_imitation() {
        let stdout = "To /n.git\n \trefs/heads/main:refs/heads/main\tabc..def\nDone\n";
        let stderr = "remote: troops: run 4 (push) of abc on web-1 [web]: 0 of 1 steps        \n\
                      remote: troops: run 4 succeeded: what a step printed\n\
                      remote: troops: run 4 failed: step `x` failed (exit 1); 1 of 1 steps ran in 0.1s (troops log 4)\x1b[K\n\
                      remote: troops: quarantined abc (run 4: step `x` failed (exit 1))\n";
        let outcome = classify(true, stdout, stderr);
        assert_eq!((outcome.run(), outcome.word(), outcome.is_ok()), (Some(4), "failed".into(), false));
        assert_eq!(outcome.detail(), "step `x` failed (exit 1); 1 of 1 steps ran in 0.1s (troops log 4)");
        // A rollback followed: its steps may imitate anything; the node's last line tells.
        let rolled = format!(
            "{stderr}remote: troops: rolling back to 012, the last good commit: x\n\
             remote: troops: run 5 (rollback) of 012 on web-1 [web]: 1 of 1 steps\n\
             remote: troops: run 4 succeeded: what the rollback's step printed\n\
             remote: troops: run 5 succeeded: 1 of 1 steps ran in 0.1s (troops log 5)\n\
             remote: troops: run 4 failed; rolled back to 012 by run 5, which succeeded (troops log 5)\n"
        );
        let outcome = classify(true, stdout, &rolled);
        assert_eq!((outcome.run(), outcome.word(), outcome.is_ok()), (Some(4), "failed".into(), false));
        assert_eq!(outcome.detail(), "rolled back to 012 by run 5, which succeeded (troops log 5)");
        let ok = classify(
            true,
            stdout,
            "remote: troops: run 7 failed: a step's words\nremote: troops: run 7 succeeded: 1 of 1 steps ran in 0.1s (troops log 7)\n",
        );
        assert_eq!((ok.run(), ok.is_ok()), (Some(7), true));
        let rolled = classify(true, stdout, "remote: troops: run 8 rolled_back: x\n");
        assert_eq!((rolled.word(), rolled.is_ok()), ("rolled back".into(), false));
        let already = classify(
            true,
            stdout,
            "remote: troops: abc, the tip of refs/heads/main, is deployed already by run 3 (troops log 3); nothing runs\n",
        );
        assert_eq!(already, Outcome::AlreadyDeployed { run: Some(3) });
        let other = classify(true, stdout, "remote: troops: refs/heads/x is not refs/heads/main, the branch this node deploys; nothing runs\n");
        assert!(
            matches!(&other, Outcome::NoRun(why) if why.contains("the branch this node deploys")),
            "{other:?}"
        );
        assert!(matches!(classify(true, stdout, ""), Outcome::NoRun(_)));
    }

    #[test]
    fn refusals_up_to_date_and_unreachable_nodes_are_told_apart() {
        let rejected = "To /n.git\n!\trefs/heads/main:refs/heads/main\t[remote rejected] (pre-receive hook declined)\nDone\n";
        let refused = classify(
            false,
            rejected,
            "remote: troops: refusing non-fast-forward update of refs/heads/main (a does not descend from b)        \n",
        );
        assert_eq!(
            refused,
            Outcome::Refused(
                "troops: refusing non-fast-forward update of refs/heads/main (a does not descend from b)"
                    .into()
            )
        );
        let plain = "To /n.git\n!\trefs/heads/main:refs/heads/main\t[rejected] (fetch first)\nDone\n";
        assert_eq!(
            classify(false, plain, "hint: ...\n"),
            Outcome::Refused("[rejected] (fetch first)".into())
        );
        assert_eq!(
            classify(true, "To /n.git\n=\trefs/heads/main:refs/heads/main\t[up to date]\nDone\n", ""),
            Outcome::UpToDate
        );
        let gone = classify(
            false,
            "",
            "ssh: connect to host 10.0.0.5 port 22: Connection refused\nfatal: Could not read from remote repository.\n\n\
             Please make sure you have the correct access rights\nand the repository exists.\n",
        );
        assert_eq!(
            gone,
            Outcome::Unreachable("ssh: connect to host 10.0.0.5 port 22: Connection refused".into())
        );
        assert!(!gone.is_ok() && !Outcome::NotPushed(String::new()).is_ok() && Outcome::UpToDate.is_ok());
    }

    #[test]
    fn a_preview_is_read_from_the_nodes_marked_lines_and_kept_out_of_the_tables_syntax() {
        let stderr = "remote: troops: preview | commit abc on web-1 [web]: 1 file changed since def (deployed)      \n\
                      remote: step output that is not marked\n\
                      remote: troops: preview | run  nginx: every host; changed: nginx/a\n\
                      remote: troops: preview |   | a | pipe and ``` a fence\n\
                      remote: troops: preview | skip app|x: every host; no change under app since def\n\
                      remote: troops: preview | run  check up: every host\n\
                      remote: troops: preview | held: wave 2 of 2 (later): waiting\x1b[K\n\
                      remote: troops: refusing refs/troops/preview: a preview only; nothing moved\n";
        let preview = preview_of(stderr).unwrap();
        assert_eq!(
            (&preview.runs[..], &preview.skipped[..]),
            (&["nginx".to_owned()][..], &["app|x".to_owned()][..])
        );
        assert_eq!(preview.held, ["wave 2 of 2 (later): waiting"]);
        assert_eq!(preview.text.lines().count(), 6, "{}", preview.text);
        let markdown = preview_markdown(
            "main",
            &[("web-1".into(), Ok(preview)), ("web-2".into(), Err("unreachable: no such repo".into()))],
        );
        assert!(
            markdown.contains("| web-1 | nginx | app\\|x | wave 2 of 2 (later): waiting |\n"),
            "{markdown}"
        );
        assert!(markdown.contains("| web-2 | no preview: unreachable: no such repo | | |\n"), "{markdown}");
        assert_eq!(markdown.matches("```").count(), 2, "the node's fence is broken up:\n{markdown}");
        assert!(preview_of("remote: troops: refusing refs/troops/preview: nothing moved\n").is_none());
        // A node's control bytes are escaped, not relayed.
        let hostile = preview_of("remote: troops: preview | commit abc \x1b]0;title\x07 on x\n").unwrap();
        assert!(!hostile.text.contains('\x1b'), "{:?}", hostile.text);
    }
}
