#!/usr/bin/env bash
# A complete local troops scenario in a temp dir, with no root and no network: a node, a push
# deploy, a pull deploy (by hand and by the daemon), then status, runs and a log.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --workspace
export PATH="$PWD/target/debug:$PATH"

demo=$(mktemp -d "${TMPDIR:-/tmp}/troops-demo.XXXXXX")
export TROOPS_STATE_DIR="$demo/node" TROOPS_CONFIG="$demo/troops.toml" HOME="$demo/home"
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=Demo GIT_AUTHOR_EMAIL=demo@example.com GIT_COMMITTER_NAME=Demo GIT_COMMITTER_EMAIL=demo@example.com
mkdir -p "$HOME"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
daemon=""
trap '[ -n "$daemon" ] && kill "$daemon" 2>/dev/null; echo; echo "demo files: $demo"' EXIT

say "a node named web-1 that follows the mirror $demo/mirror.git"
printf 'hostname = "web-1"\ninterval = "1s"\njitter = "0s"\n' > "$TROOPS_CONFIG"
git init -q --bare -b main "$demo/mirror.git"
troops init --remote "mirror=$demo/mirror.git"

say "the deploy repo: a plan with roles"
git init -q -b main "$demo/deploy"
cd "$demo/deploy"
cat > troops.toml <<'PLAN'
[roles.web]
match = ["web-*"]

[roles.db]
hosts = ["db-1"]

[[step]]
name = "hello"
run = "echo hello from $TROOPS_HOST, roles $TROOPS_ROLES, commit $TROOPS_COMMIT"

[[step]]
name = "web-config"
roles = ["web"]
script = "steps/web.sh"

[[step]]
name = "database"
roles = ["db"]
run = "echo this never runs on web-1"
PLAN
mkdir -p steps
printf '#!/bin/sh\necho "writing the web config (trigger: $TROOPS_TRIGGER)"\ntroops has-role web && echo "yes, this host is web"\n' > steps/web.sh
chmod +x steps/web.sh
git add -A && git commit -q -m "first plan"

say "push deploy: git push to the node runs the plan and streams it back"
git push "$TROOPS_STATE_DIR/repo/main.git" main

say "what this host runs, and why (troops deploy --dry-run)"
troops deploy --dry-run

say "pull deploy: a commit on the mirror, then troops pull"
echo "v2" > VERSION && git add -A && git commit -q -m "v2"
git push -q "$demo/mirror.git" main
troops pull

say "the daemon: it notices a new commit on the mirror by itself"
troops daemon 2>"$demo/daemon.log" &
daemon=$!
echo "v3" > VERSION && git commit -q -am "v3"
git push -q "$demo/mirror.git" main
want=$(git rev-parse HEAD)
for _ in $(seq 100); do
    [ "$(git --git-dir="$TROOPS_STATE_DIR/repo/main.git" rev-parse -q --verify refs/troops/deployed)" = "$want" ] && break
    sleep 0.1
done
kill -TERM "$daemon"; wait "$daemon" || true; daemon=""
sed 's/^/  daemon: /' "$demo/daemon.log"

say "troops status"
troops status
say "troops runs"
troops runs
say "troops log (the latest run)"
troops log
