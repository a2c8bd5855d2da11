#!/usr/bin/env bash
# What signed status costs: a status publish (`troops fleet --publish`) and `troops fleet` on a
# node whose status remote holds 1,000 hosts' documents, each signed by its host's key (keys/ of
# the deployed commit), timed with hyperfine for each troops binary given:
#
#   tests/bench/fleet-believe.sh LABEL=BINARY...     e.g. main=target/bench/troops-main
#
# `troops fleet` is timed twice: as a node runs it again (the newest believed documents are
# remembered, so nothing is verified again) and cold (`believed.json` removed first: every one of
# the 1,000 signatures verified). A binary that does not verify pays the removal only. The
# documents are made once, in a temp dir (1,000 ssh-keygen keys and `git commit-tree -S`: a minute).
# Needs git, ssh-keygen, hyperfine; run as root (the node's state dir is root's).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 LABEL=BINARY..." >&2; exit 2; }
HOSTS=${HOSTS:-1000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 HOME=$dir
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com
git init -q --bare -b main "$dir/status.git"
git init -q --bare -b main "$dir/mirror.git"
git init -q -b main "$dir/work"
mkdir -p "$dir/work/keys" "$dir/keys"
printf '[[step]]\nname = "a"\nrun = "true"\n' > "$dir/work/troops.toml"
now=$(date -u +%Y-%m-%dT%H:%M:%S.000Z)
commit=$(printf '%040d' 1)
echo "making $HOSTS hosts' keys and signed status documents" >&2
for i in $(seq 0 $((HOSTS - 1))); do
    host=$(printf 'host-%04d' "$i")
    ssh-keygen -q -t ed25519 -N '' -C "troops@$host" -f "$dir/keys/$host"
    cp "$dir/keys/$host.pub" "$dir/work/keys/$host.pub"
    doc=$(printf '{"schema":1,"host":"%s","version":"0.2.0","roles":["web"],"wave":null,"tip":"%s","deployed":"%s","state":"healthy","since":"%s","run":null,"hold":null,"quarantined":[],"checks":[],"heartbeat_seconds":3600,"updated_at":"%s"}' "$host" "$commit" "$commit" "$now" "$now")
    blob=$(printf '%s' "$doc" | git --git-dir "$dir/status.git" hash-object -w --stdin)
    tree=$(printf '100644 blob %s\tstatus.json\n' "$blob" | git --git-dir "$dir/status.git" mktree)
    signed=$(git --git-dir "$dir/status.git" -c gpg.format=ssh -c "user.signingKey=$dir/keys/$host" commit-tree -S "$tree" -m "$host: healthy")
    git --git-dir "$dir/status.git" update-ref "refs/troops/status/$host" "$signed"
done
git -C "$dir/work" add -A
git -C "$dir/work" commit -q -m "plan and $HOSTS keys"
git -C "$dir/work" push -q "$dir/mirror.git" main

args=()
for pair in "$@"; do
    label=${pair%%=*} bin=$(realpath "${pair#*=}")
    state=$dir/state-$label
    mkdir -p "$state"
    printf 'hostname = "host-0000"\nstatus_remote = "status"\n' > "$state/troops.toml"
    export TROOPS_STATE_DIR=$state TROOPS_CONFIG=$state/troops.toml
    "$bin" init --remote "origin=$dir/mirror.git" > /dev/null
    # The node signs as host-0000: its key is that host's.
    cp "$dir/keys/host-0000" "$state/ssh/id_ed25519"
    cp "$dir/keys/host-0000.pub" "$state/ssh/id_ed25519.pub"
    git --git-dir "$state/repo/main.git" remote add status "$dir/status.git"
    "$bin" pull > /dev/null
    "$bin" fleet > /dev/null
    echo "$label: $("$bin" fleet | tail -1)" >&2
    env="TROOPS_STATE_DIR=$state TROOPS_CONFIG=$state/troops.toml"
    args+=(-n "$label: troops fleet --publish" "env $env $bin fleet --publish")
    args+=(-n "$label: troops fleet" "env $env $bin fleet")
    args+=(-n "$label: troops fleet, cold" "sh -c 'rm -f $state/believed.json; exec env $env $bin fleet'")
done
hyperfine -N --warmup 2 --runs "${RUNS:-20}" --export-markdown /dev/stdout "${args[@]}" 2>/dev/null
