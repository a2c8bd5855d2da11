#!/usr/bin/env bash
# All tests, on a fresh machine: installs what they need (as root), builds, runs every test, and ends
# with one `tests: N passed, N failed, N skipped` line for the whole suite.
# Not root and something missing: prints the one install line to run, and stops.
# A test that cannot run here (not root, a tool missing) fails, unless TROOPS_TEST_ALLOW_SKIP=1:
# then it is skipped, and counted as skipped, not passed.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the end-to-end tests drive besides our binaries: git (pushes, fetches), sshd and ssh-keygen
# and the ssh client (a real sshd on 127.0.0.1), gpg (signed commits), setpriv (acting as a group
# member or another user), python3 (the server of examples/webapp), promtool from prometheus
# (the metrics and the example alert rules), chromium (the fleet page in a headless browser),
# tzdata (deploy windows in named time zones), haproxy (the balancer of examples/haproxy-pool),
# faketime (nodes whose clocks are ten minutes apart, for the disruption slots' leases).
packages=(git openssh-server openssh-client gnupg util-linux ca-certificates python3 prometheus chromium tzdata haproxy faketime)
commands=(git /usr/sbin/sshd ssh ssh-keygen gpg setpriv python3 promtool chromium /usr/sbin/haproxy faketime)
missing=()
for c in "${commands[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
[ -e /usr/share/zoneinfo/Europe/Berlin ] || missing+=(tzdata)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: missing ${missing[*]}; install them with:" >&2
        echo "  sudo apt-get install -y ${packages[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [ "$(id -u)" -ne 0 ] && [ "${TROOPS_TEST_ALLOW_SKIP:-}" != 1 ]; then
    echo "tests/run.sh: not root: the tests that need root will fail (TROOPS_TEST_ALLOW_SKIP=1 skips them)" >&2
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
(cargo build --workspace && cargo test --workspace) 2>&1 | tee "$log" || status=$?

# One line for the whole suite: cargo prints a result per test binary, the last of them for a crate
# with no doc tests ("0 passed"). A skipped test passed in cargo's count and wrote a line holding
# "troops-test: SKIPPED" to stderr (crates/troops-testkit/src/skip.rs), anywhere in a line of the
# log, since tests run in parallel: it counts as skipped instead.
awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed;/) p += $(i - 1); if ($i ~ /^failed;/) f += $(i - 1) } }
     { s += gsub(/troops-test: SKIPPED /, "&") }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p - s, f, s }' "$log"
exit "$status"
