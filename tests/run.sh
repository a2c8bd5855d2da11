#!/usr/bin/env bash
# All tests, on a fresh machine: installs what they need (as root), builds, runs every test, and ends
# with one `tests: N passed, N failed` line for the whole suite.
# Not root and something missing: prints the one install line to run, and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the end-to-end tests drive besides our binaries: git (pushes, fetches), sshd and ssh-keygen
# and the ssh client (a real sshd on 127.0.0.1), gpg (signed commits), setpriv (acting as a group
# member or another user), python3 (the server of examples/webapp), promtool from prometheus
# (the metrics and the example alert rules).
packages=(git openssh-server openssh-client gnupg util-linux ca-certificates python3 prometheus)
commands=(git /usr/sbin/sshd ssh ssh-keygen gpg setpriv python3 promtool)
missing=()
for c in "${commands[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
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

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
(cargo build --workspace && cargo test --workspace) 2>&1 | tee "$log" || status=$?

# One line for the whole suite: cargo prints a result per test binary, the last of them for a crate
# with no doc tests ("0 passed").
awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed;/) p += $(i - 1); if ($i ~ /^failed;/) f += $(i - 1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
