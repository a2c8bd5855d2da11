//! A test that cannot run here (not root, a tool missing, the machine not as it needs) fails: a
//! test that returns early passes in cargo's count, and a suite that passes that way proves
//! nothing. Only a run that allows skips explicitly (`TROOPS_TEST_ALLOW_SKIP=1`) skips such a
//! test, and the test then says so on stderr in a line `tests/run.sh` counts.
//!
//! The line is written to the process's stderr directly, not through `eprintln!`, which the test
//! harness captures and shows only for failing tests.

use std::io::Write;

/// Set to `1`, a test that cannot run here is skipped (and counted) instead of failing.
pub const ALLOW_SKIP: &str = "TROOPS_TEST_ALLOW_SKIP";

/// What a skipped test prints on stderr, then its name and why; `tests/run.sh` counts these.
pub const SKIPPED: &str = "troops-test: SKIPPED";

/// Whether the test can go on: true when `can_run`. Otherwise it fails here, naming `why`, unless
/// the run allows skips: then it prints the skip line and returns false, and the test must return
/// (or leave out the part that cannot run).
#[must_use = "a test that cannot run must return when this is false"]
pub fn require(can_run: bool, why: &str) -> bool {
    if can_run {
        return true;
    }
    // The test harness names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("this test").to_owned();
    if std::env::var(ALLOW_SKIP).as_deref() != Ok("1") {
        panic!(
            "{test} cannot run here: {why}. Run it as root on a machine set up by tests/run.sh, or \
             set {ALLOW_SKIP}=1 to count it as skipped"
        );
    }
    let line = format!("{SKIPPED} {test}: {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    false
}

/// [`require`]s root, for `what` (a test that gives the node to a group, acts as another user...).
#[must_use = "a test that cannot run must return when this is false"]
pub fn require_root(what: &str) -> bool {
    require(nix::unistd::geteuid().is_root(), &format!("{what} needs root"))
}

/// [`require`]s `tool` as an executable file on PATH, for `what`.
#[must_use = "a test that cannot run must return when this is false"]
pub fn require_tool(tool: &str, what: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    require(found, &format!("{what} needs {tool}, which is not on PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Set in the child runs of the test below: it then plays a test that cannot run.
    const CHILD: &str = "TROOPS_TESTKIT_SKIP_CHILD";
    const NAME: &str = "skip::tests::a_test_that_cannot_run_fails_unless_the_run_allows_skips";
    const MISSING: &str = "troops-testkit-no-such-tool";

    /// This test, run again in a child with `allow` as the allow variable (unset when None).
    fn child(allow: Option<&str>) -> (bool, String) {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args(["--exact", NAME]).env(CHILD, "1");
        match allow {
            Some(value) => command.env(ALLOW_SKIP, value),
            None => command.env_remove(ALLOW_SKIP),
        };
        let out = command.output().unwrap();
        // The harness shows a failed test's panic on stdout; the skip line goes to stderr.
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said.into_owned())
    }

    #[test]
    fn a_test_that_cannot_run_fails_unless_the_run_allows_skips() {
        if std::env::var_os(CHILD).is_some() {
            if require_tool(MISSING, "this test") {
                panic!("a missing tool let the test go on");
            }
            return;
        }
        // Not allowed, or allowed by anything but exactly 1 (a careless `=yes`, `=0`, empty): fails.
        for allow in [None, Some(""), Some("0"), Some("yes"), Some("1 ")] {
            let (passed, said) = child(allow);
            assert!(!passed, "{allow:?}: the test passed:\n{said}");
            let why = format!("{NAME} cannot run here: this test needs {MISSING}, which is not on PATH");
            assert!(said.contains(&why), "{allow:?}:\n{said}");
            assert!(!said.contains(SKIPPED), "{allow:?}: counted as skipped:\n{said}");
        }
        // Allowed: it passes in cargo's count, and says on a line of its own that it skipped.
        let (passed, said) = child(Some("1"));
        assert!(passed, "{said}");
        let line = format!("{SKIPPED} {NAME}: this test needs {MISSING}, which is not on PATH");
        assert_eq!(said.lines().filter(|l| *l == line).count(), 1, "no line {line:?} in:\n{said}");
    }

    #[test]
    fn a_tool_on_path_lets_the_test_go_on() {
        assert!(require_tool("sh", "this test"));
    }
}
