//! A run's record, as `run.json` holds it and every reader takes it: who asked, which commit, how
//! each step and check went, and how the run ended; and what an unfinished record becomes when
//! its owner is gone. The files themselves are `mech::runs`'.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Push,
    Pull,
    Manual,
    Retry,
    /// The last good commit, run again after a commit failed with `on_failure = "rollback"`.
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// The steps are done; the health checks are under way (and the soak).
    Checking,
    Succeeded,
    Failed,
    Interrupted,
    /// Failed, and the last good commit was run again (`rolled_back_by`).
    RolledBack,
}

impl RunStatus {
    /// Still under way (or its owner died and nobody has noticed yet).
    pub fn unfinished(self) -> bool {
        matches!(self, RunStatus::Running | RunStatus::Checking)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    TimedOut,
    /// Ended because troops was asked to stop (daemon SIGTERM, Ctrl-C of `troops deploy`).
    Interrupted,
    NotRun,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub status: StepStatus,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
}

/// One health check of a run: how it ended (or stands), after how many probes, and why it last failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub name: String,
    pub status: CheckStatus,
    pub probes: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Probing, not passed yet.
    Pending,
    /// Passed, and kept passing so far (the soak is under way).
    Passing,
    Passed,
    Failed,
    /// Cannot be probed on this host (a `unit` check without systemd); does not fail the run.
    Skipped,
    /// The run ended before the check started.
    NotRun,
}

/// The version of the `run.json` layout: 2 added `schema`, `checks`, `rollback_of` and
/// `rolled_back_by`, the statuses `checking` and `rolled_back` and the trigger `rollback`.
pub const SCHEMA: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`SCHEMA`] when written; records of troops 0.1 have none (1).
    #[serde(default = "schema_1")]
    pub schema: u32,
    pub id: u64,
    pub trigger: Trigger,
    pub commit: String,
    pub previous_commit: Option<String>,
    pub host: String,
    pub roles: Vec<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: RunStatus,
    pub error: Option<String>,
    pub steps: Vec<StepRecord>,
    #[serde(default)]
    pub checks: Vec<CheckRecord>,
    /// For a rollback run: the run whose failure it undoes.
    #[serde(default)]
    pub rollback_of: Option<u64>,
    /// For a run that failed and was rolled back: the rollback run.
    #[serde(default)]
    pub rolled_back_by: Option<u64>,
}

fn schema_1() -> u32 {
    1
}

impl RunRecord {
    /// How long the run took, from its start to its end, checks and soak included (to `now` while
    /// it is under way); `None` when a time on record is not one.
    pub fn wall_time(&self, now: std::time::SystemTime) -> Option<std::time::Duration> {
        let time = |text: &str| humantime::parse_rfc3339_weak(text).ok();
        let end = match &self.finished_at {
            Some(end) => time(end)?,
            None if self.status.unfinished() => now,
            None => return None,
        };
        end.duration_since(time(&self.started_at)?).ok()
    }
}

#[cfg(test)]
impl RunRecord {
    /// A run of `commit` for unit tests: pulled on web-1, started at "start", ended at "end" unless
    /// `status` is unfinished, no steps; change what a test needs.
    pub fn for_test(id: u64, commit: &str, status: RunStatus) -> RunRecord {
        RunRecord {
            schema: SCHEMA,
            id,
            trigger: Trigger::Pull,
            commit: commit.to_owned(),
            previous_commit: None,
            host: "web-1".into(),
            roles: Vec::new(),
            started_at: "start".into(),
            finished_at: (!status.unfinished()).then(|| "end".into()),
            status,
            error: None,
            steps: Vec::new(),
            checks: Vec::new(),
            rollback_of: None,
            rolled_back_by: None,
        }
    }
}

macro_rules! display_as_serde {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let json = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
                f.write_str(json.as_str().unwrap_or_default())
            }
        }
    )*};
}
display_as_serde!(Trigger, RunStatus, StepStatus, CheckStatus);

pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// What an unfinished record becomes when its owner is gone: a run that died in its steps is
/// `interrupted` (and is run again); one that died during its health checks `failed` them
/// (SPEC: the checks are treated as failed), so its commit's `on_failure` applies.
pub fn abandon(record: &mut RunRecord) {
    match record.status {
        RunStatus::Running => {
            record.status = RunStatus::Interrupted;
            record.error.get_or_insert_with(|| "the process running it died".to_owned());
        }
        RunStatus::Checking => {
            record.status = RunStatus::Failed;
            record.error = Some("troops died during the health checks; they count as failed".to_owned());
            for check in &mut record.checks {
                if matches!(check.status, CheckStatus::Pending | CheckStatus::Passing) {
                    check.status = CheckStatus::Failed;
                    check.last_error.get_or_insert_with(|| "troops died while probing".to_owned());
                }
            }
        }
        _ => {}
    }
}
