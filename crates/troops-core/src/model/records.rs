//! A run's record, as `run.json` holds it and every reader takes it: who asked, which commit, how
//! each step and check went, and how the run ended; and what an unfinished record becomes when
//! its owner is gone. The files themselves are `mech::runs`'. A record holds a commit id and
//! times, written as they always were (40 hex digits, RFC 3339 with milliseconds): a `run.json`
//! whose commit or time is not one is no record (`mech::runs::Unreadable`).

use git2::Oid;
use serde::{Deserialize, Serialize};

use crate::model::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Push,
    Pull,
    Manual,
    Retry,
    /// The last good commit, run again after a commit failed with `on_failure = "rollback"`.
    Rollback,
    /// The deployed commit, run again because a recheck found the host drifted from it
    /// (`[health] on_drift = "redeploy"`): a corrective run, counted apart.
    Drift,
    /// The deployed commit, run again because the peers' exports it watches changed
    /// (`[[watch]]`): `fleet_changes` in its record says which.
    Fleet,
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
    /// Not run, since nothing under its `paths` changed (`policy::paths`); `skipped` says so.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub status: StepStatus,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// Why a step was skipped: "no change under nginx/** since abc1234".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
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
    #[serde(with = "commit_id")]
    pub commit: Oid,
    /// The commit the host was left with: the deployed one, or for a rollback the one that failed.
    #[serde(default, with = "commit_id::option")]
    pub previous_commit: Option<Oid>,
    pub host: String,
    pub roles: Vec<String>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
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
    /// How the peers' exports this host watches differ from what the run that deployed the
    /// commit before saw (`policy::watch`): why a `fleet` run runs, and news for any other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet_changes: Vec<String>,
}

fn schema_1() -> u32 {
    1
}

impl RunRecord {
    /// How long the run took, from its start to its end, checks and soak included (to `now` while
    /// it is under way); `None` when a time on record is not one.
    pub fn wall_time(&self, now: std::time::SystemTime) -> Option<std::time::Duration> {
        let end = match self.finished_at {
            Some(end) => end.time(),
            None if self.status.unfinished() => now,
            None => return None,
        };
        end.duration_since(self.started_at.time()).ok()
    }
}

/// Commit ids in records and status documents, as git writes them (40 hex digits): `git2::Oid`
/// has no serde of its own, and its parser would take a prefix ("c") for a whole id.
pub mod commit_id {
    use git2::Oid;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(commit: &Oid, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(commit)
    }

    /// `text` as a whole commit id, if it is one.
    pub fn parse(text: &str) -> Option<Oid> {
        let whole = text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit());
        whole.then(|| Oid::from_str(text).ok()).flatten()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Oid, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).ok_or_else(|| {
            de::Error::invalid_value(de::Unexpected::Str(&text), &"a commit id (40 hex digits)")
        })
    }

    /// The same, for a commit that may be missing (`null`).
    pub mod option {
        use git2::Oid;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(commit: &Option<Oid>, serializer: S) -> Result<S::Ok, S::Error> {
            match commit {
                Some(commit) => super::serialize(commit, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Oid>, D::Error> {
            #[derive(Deserialize)]
            struct Id(#[serde(with = "super")] Oid);
            Ok(Option::<Id>::deserialize(deserializer)?.map(|Id(commit)| commit))
        }
    }
}

#[cfg(test)]
impl RunRecord {
    /// When every run of [`RunRecord::for_test`] started, and (a second later) ended.
    pub const TEST_START: &str = "2020-01-01T00:00:00.000Z";
    pub const TEST_END: &str = "2020-01-01T00:00:01.000Z";

    /// A run of `commit` (hex, a prefix padded with zeros) for unit tests: pulled on web-1,
    /// started at [`RunRecord::TEST_START`], ended at [`RunRecord::TEST_END`] unless `status` is
    /// unfinished, no steps; change what a test needs.
    pub fn for_test(id: u64, commit: &str, status: RunStatus) -> RunRecord {
        RunRecord {
            schema: SCHEMA,
            id,
            trigger: Trigger::Pull,
            commit: Oid::from_str(commit).expect("a commit id in hex"),
            previous_commit: None,
            host: "web-1".into(),
            roles: Vec::new(),
            started_at: RunRecord::TEST_START.parse().expect("a time"),
            finished_at: (!status.unfinished()).then(|| RunRecord::TEST_END.parse().expect("a time")),
            status,
            error: None,
            steps: Vec::new(),
            checks: Vec::new(),
            rollback_of: None,
            rolled_back_by: None,
            fleet_changes: Vec::new(),
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

/// Now, as the state files that keep their times as text write it (the ledger, the remotes'
/// fetches, the rollout's hold, the status document): like a record's [`Timestamp`].
pub fn now() -> String {
    Timestamp::now().to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as troops 0.2 wrote it (`serde_json::to_string_pretty`), every field set.
    const WRITTEN: &str = r#"{
  "schema": 2,
  "id": 7,
  "trigger": "rollback",
  "commit": "2fcbae4df3f5a1b2c3d4e5f60718293a4b5c6d7e",
  "previous_commit": "0123456789abcdef0123456789abcdef01234567",
  "host": "web-1",
  "roles": [
    "web"
  ],
  "started_at": "2024-05-01T12:00:00.123Z",
  "finished_at": "2024-05-01T12:00:04.560Z",
  "status": "succeeded",
  "error": null,
  "steps": [
    {
      "name": "build",
      "status": "succeeded",
      "exit_code": 0,
      "duration_ms": 4100
    }
  ],
  "checks": [
    {
      "name": "web",
      "status": "passed",
      "probes": 2,
      "last_error": "connection refused"
    }
  ],
  "rollback_of": 6,
  "rolled_back_by": null
}"#;

    #[test]
    fn a_record_reads_typed_and_writes_back_the_same_bytes() {
        let record: RunRecord = serde_json::from_str(WRITTEN).unwrap();
        assert_eq!(record.commit.to_string(), "2fcbae4df3f5a1b2c3d4e5f60718293a4b5c6d7e");
        assert_eq!(record.previous_commit.unwrap().to_string(), "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(
            record.wall_time(std::time::SystemTime::now()),
            Some(std::time::Duration::from_millis(4437))
        );
        assert_eq!(serde_json::to_string_pretty(&record).unwrap(), WRITTEN);
    }

    #[test]
    fn a_record_of_troops_0_1_reads() {
        let old = r#"{"id": 3, "trigger": "push", "commit": "2fcbae4df3f5a1b2c3d4e5f60718293a4b5c6d7e",
            "previous_commit": null, "host": "web-1", "roles": [], "started_at": "2020-01-01T00:00:00Z",
            "finished_at": "2020-01-01T00:00:01Z", "status": "failed", "error": "step `x` failed (exit 1)",
            "steps": []}"#;
        let record: RunRecord = serde_json::from_str(old).unwrap();
        assert_eq!((record.schema, record.previous_commit, record.rollback_of), (1, None, None));
        assert_eq!(record.started_at.to_string(), RunRecord::TEST_START);
        assert_eq!(record.finished_at.map(|t| t.to_string()).as_deref(), Some(RunRecord::TEST_END));
        // Without `previous_commit` at all, as without a value.
        let bare = old.replace(r#""previous_commit": null,"#, "");
        assert_eq!(serde_json::from_str::<RunRecord>(&bare).unwrap().previous_commit, None);
    }

    #[test]
    fn a_record_whose_commit_or_time_is_none_is_no_record() {
        for (field, bad, says) in [
            ("commit", "\"c\"", "expected a commit id (40 hex digits)"),
            (
                "commit",
                "\"2fcbae4df3f5a1b2c3d4e5f60718293a4b5c6dzz\"",
                "expected a commit id (40 hex digits)",
            ),
            (
                "commit",
                "\"2fcbae4df3f5a1b2c3d4e5f60718293a4b5c6d7e0\"",
                "expected a commit id (40 hex digits)",
            ),
            ("previous_commit", "\"HEAD\"", "expected a commit id (40 hex digits)"),
            ("previous_commit", "7", "expected a string"),
            ("started_at", "\"now\"", "expected an RFC 3339 time"),
            ("finished_at", "\"2024-05-01T25:00:00Z\"", "expected an RFC 3339 time"),
        ] {
            let text =
                WRITTEN.replacen(&format!("\"{field}\": "), &format!("\"{field}\": {bad}, \"was\": "), 1);
            let e = serde_json::from_str::<RunRecord>(&text).unwrap_err().to_string();
            assert!(e.contains(says), "{field} {bad}: {e}");
        }
    }

    #[test]
    fn a_new_record_writes_its_times_to_the_millisecond() {
        let mut record = RunRecord::for_test(1, "c", RunStatus::Succeeded);
        record.started_at = Timestamp::now();
        let json = serde_json::to_value(&record).unwrap();
        let started = json["started_at"].as_str().unwrap();
        assert_eq!((started.len(), &started[19..20], &started[23..]), (24, ".", "Z"), "{started}");
        assert_eq!(serde_json::from_value::<RunRecord>(json).unwrap(), record);
    }
}
