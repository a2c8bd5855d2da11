//! `troops runs` and `troops log`: the run history and one run's output.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use troops_core::model::names::short;
use troops_core::model::node::Node;
use troops_core::Error;

use crate::cli::LogArgs;

pub fn runs(node: &Node, json: bool) -> Result<ExitCode> {
    node.repo()?; // a wrong --state-dir is an error, not an empty history
    let history = node.runs().all()?;
    let latest = history.records.last().map(|r| r.id);
    for skipped in &history.unreadable {
        eprintln!("troops: warning: {skipped}");
    }
    if let Some(others) = super::status::others(&history.others) {
        eprintln!("troops: note: {others}");
    }
    let records: Vec<_> = history
        .records
        .into_iter()
        .map(|r| if Some(r.id) == latest { troops_core::mech::runs::as_it_stands(node, r) } else { r })
        .collect();
    if json {
        writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&records)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemTime::now();
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.status.to_string(),
                r.trigger.to_string(),
                short(r.commit),
                r.started_at.to_string(),
                r.wall_time(now).map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["RUN", "STATUS", "TRIGGER", "COMMIT", "STARTED", "DURATION", "ERROR"].map(String::from);
    // Each column as wide as its widest cell; numbers (RUN, DURATION) aligned right; ERROR, the
    // last, unpadded.
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().chain([&header]).map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut stdout = std::io::stdout().lock();
    for row in [&header].into_iter().chain(&rows) {
        let cells: Vec<String> = (0..6)
            .map(|c| match c {
                0 | 5 => format!("{:>w$}", row[c], w = widths[c]),
                _ => format!("{:<w$}", row[c], w = widths[c]),
            })
            .collect();
        writeln!(stdout, "{}", format!("{}  {}", cells.join("  "), row[6]).trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn log(node: &Node, args: LogArgs) -> Result<ExitCode> {
    let runs = node.runs();
    let id = match args.id {
        Some(id) => id,
        None => *runs
            .ids()?
            .last()
            .ok_or_else(|| Error::Input(format!("no runs yet in {}", node.state_dir.display())))?,
    };
    // A run whose record is corrupt still has its output; only a run that never was is an error.
    let readable = match runs.load(id) {
        Ok(_) => true,
        Err(e) if runs.ids()?.contains(&id) => {
            eprintln!("troops: warning: {e}");
            false
        }
        Err(e) => return Err(e.into()),
    };
    let path = runs.log_path(id);
    // A member's run folder may hold anything at that name: never wait on a FIFO there.
    let mut file = troops_core::mech::files::open(&path, std::fs::OpenOptions::new().read(true))
        .map_err(|e| Error::path("opening", &path, e))?;
    // Streamed, not read whole: a log can be large.
    let mut stdout = std::io::stdout().lock();
    loop {
        std::io::copy(&mut file, &mut stdout)?;
        stdout.flush()?;
        if !args.follow || !readable {
            return Ok(ExitCode::SUCCESS);
        }
        if !troops_core::mech::runs::as_it_stands(node, runs.load(id)?).status.unfinished() {
            // The run may have written its end between our read and the check.
            std::io::copy(&mut file, &mut stdout)?;
            stdout.flush()?;
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
