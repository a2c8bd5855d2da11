#!/usr/bin/env bash
# Benchmarks troops against the raw git/shell floor and ansible-pull on the same work, side by
# side, medians of several runs (hyperfine), and prints a markdown table for BENCHMARKS.md:
#
#   tests/bench/run.sh [--quick] [--out FILE] [CASE...]
#
# CASE: pull, plan, push, checkout, idle, hostile, health, probe (default: all eight, in that order).
# It builds release binaries, installs ansible-core from PyPI into target/bench/venv (reused; pin
# with BENCH_ANSIBLE=ansible-core==X), and needs hyperfine (installed with apt-get when run as
# root). Everything happens in a temp dir, with loopback file remotes, no root-owned paths and no
# user git config. Progress goes to stderr, the table to stdout (and to FILE with --out).
# --quick: few runs and a 10 s idle window, to check the harness end to end (numbers not kept).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

QUICK=0 OUT="" CASES=()
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --out) OUT=$2; shift ;;
        pull | plan | push | checkout | idle | hostile | health | probe) CASES+=("$1") ;;
        *) echo "usage: tests/bench/run.sh [--quick] [--out FILE] [pull|plan|push|checkout|idle|hostile|health|probe]..." >&2; exit 2 ;;
    esac
    shift
done
[ ${#CASES[@]} -gt 0 ] || CASES=(pull plan push checkout idle hostile health probe)
# hyperfine runs: the fast cases, the checkout of 20,000 files, ansible (seconds per run).
if [ $QUICK = 1 ]; then FAST=5 SLOW=3 ANSIBLE=2 IDLE=10; else FAST=30 SLOW=10 ANSIBLE=7 IDLE=60; fi
FILES=${BENCH_FILES:-20000}
ANSIBLE_PKG=${BENCH_ANSIBLE:-ansible-core==2.19.14}

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

# --- setup -------------------------------------------------------------------------------------

need_hyperfine() {
    command -v hyperfine >/dev/null && return
    if [ "$(id -u)" = 0 ]; then
        say "installing hyperfine (Debian package)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >&2 ||
            { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >&2; }
    else
        echo "tests/bench/run.sh needs hyperfine: sudo apt-get install hyperfine" >&2
        exit 3
    fi
}

need_packages() {
    if [ "$(id -u)" = 0 ]; then
        say "installing $* (Debian packages)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 ||
            { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; }
    else
        echo "tests/bench/run.sh needs $*: sudo apt-get install $*" >&2
        exit 3
    fi
}

need_ansible() {
    VENV=$ROOT/target/bench/venv
    if ! "$VENV/bin/python" -c 'import ansible' 2>/dev/null || [ "$("$VENV/bin/pip" freeze 2>/dev/null | grep -i '^ansible-core==')" != "$ANSIBLE_PKG" ]; then
        say "installing $ANSIBLE_PKG into $VENV (PyPI)"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q "$ANSIBLE_PKG" >&2
    fi
    # The modules run with the venv's python, not whatever `python3` discovery finds first.
    export ANSIBLE_PYTHON_INTERPRETER=$VENV/bin/python ANSIBLE_NOCOLOR=1
    PY=$VENV/bin/python
}

build() {
    say "building release binaries"
    cargo build --release --quiet --workspace --bins >&2
    export PATH="$ROOT/target/release:$PATH"
    if [[ " ${CASES[*]} " == *" hostile "* ]]; then
        say "building the end-to-end tests in release (case 6)"
        E2E=$(cargo test --release --no-run -p troops-e2e --test e2e 2>&1 | tee /dev/fd/2 |
            sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1)
        E2E=$ROOT/$E2E
    fi
}

sandbox() {
    W=$(mktemp -d "${TMPDIR:-/tmp}/troops-bench.XXXXXX")
    export HOME=$W/home GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
    export GIT_AUTHOR_NAME=Bench GIT_AUTHOR_EMAIL=bench@example.com GIT_COMMITTER_NAME=Bench GIT_COMMITTER_EMAIL=bench@example.com
    export ANSIBLE_LOCAL_TEMP=$W/home/.ansible/tmp ANSIBLE_HOME=$W/home/.ansible
    unset TROOPS_STATE_DIR TROOPS_CONFIG SSH_AUTH_SOCK
    mkdir -p "$HOME"
    DAEMON=""
    trap cleanup EXIT
}

cleanup() {
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    [ -n "${BENCH_KEEP:-}" ] && { echo "bench files kept in $W" >&2; return; }
    rm -rf "$W"
}

# A node in $W/$1 with config $2 (TOML text); sets TROOPS_STATE_DIR and TROOPS_CONFIG. The rest of
# the arguments go to `troops init`.
node() {
    local dir=$W/$1 config=$2
    shift 2
    mkdir -p "$dir"
    export TROOPS_STATE_DIR=$dir/state TROOPS_CONFIG=$dir/troops.toml
    printf 'hostname = "bench-1"\n%b' "$config" > "$TROOPS_CONFIG"
    troops init "$@" >/dev/null
}

# A deploy repo at $W/$1 (a bare repo, branch main) holding a plan of $2 steps `true`, plus the
# files of $3 (a directory to copy in, optional).
deploy_repo() {
    local src=$W/$1.src
    git init -q -b main "$src"
    for i in $(seq "$2"); do printf '[[step]]\nname = "step-%s"\nrun = "true"\n\n' "$i"; done > "$src/troops.toml"
    [ -n "${3:-}" ] && cp -r "$3/." "$src/"
    git -C "$src" add -A && git -C "$src" commit -q -m "plan of $2 steps"
    git clone -q --bare "$src" "$W/$1.git"
}

# --- measuring ---------------------------------------------------------------------------------

# hyperfine NAME RUNS [hyperfine args and commands]: results in $W/NAME.json, in command order.
bench() {
    local name=$1 runs=$2
    shift 2
    local warmup=$(( runs > 10 ? 3 : 1 ))
    hyperfine -N --style basic --warmup "$warmup" --runs "$runs" --export-json "$W/$name.json" "$@" >&2
}

# The median of command $2 (0-based) of bench $1, in ms.
median() {
    "$PY" -c 'import json,sys; print("%.3f" % (1000 * json.load(open(sys.argv[1]))["results"][int(sys.argv[2])]["median"]))' "$W/$1.json" "$2"
}

calc() { "$PY" -c "print($1)"; }

# How a duration in ms reads: "8.4 ms", "1.92 s".
ms() { "$PY" -c 'import sys; v=float(sys.argv[1]); print("%.2f s" % (v/1000) if abs(v) >= 1000 else "%.1f ms" % v)' "$1"; }

ROWS=()
# row CASE COMPARISON RATIO TROOPS OTHER GOAL VERDICT
row() {
    local line="|" cell
    for cell in "$@"; do line+=" $cell |"; done
    ROWS+=("$line")
}
verdict() { if [ "$(calc "int(bool($1))")" = 1 ]; then echo "**met**"; else echo "**missed**"; fi; }

# --- the cases ---------------------------------------------------------------------------------

# Case 1's node, which case 5 reuses: 3 mirrors of a one-step plan, deployed.
pull_node() {
    deploy_repo pull 1
    # ansible-pull's playbook, beside the plan in the same repo.
    printf -- '- hosts: localhost\n  gather_facts: false\n  tasks:\n    - command: "true"\n' > "$W/pull.src/local.yml"
    git -C "$W/pull.src" add -A && git -C "$W/pull.src" commit -q -m playbook
    for i in 1 2 3; do git clone -q --bare "$W/pull.src" "$W/mirror$i.git"; done
    node pull-node 'interval = "1s"\njitter = "0s"\n' --remote "m1=$W/mirror1.git" --remote "m2=$W/mirror2.git" --remote "m3=$W/mirror3.git"
    troops pull >/dev/null # the first pull deploys; from now on nothing changes
    PULL_NODE=$TROOPS_STATE_DIR PULL_CONFIG=$TROOPS_CONFIG
}

# 1. No-change pull of 3 remotes: troops pull vs git fetch --all vs ansible-pull -o.
case_pull() {
    say "1. no-change pull of 3 remotes"
    pull_node
    git clone -q --bare "$W/pull.src" "$W/peer.git"
    for i in 1 2 3; do git --git-dir="$W/peer.git" remote add "m$i" "$W/mirror$i.git"; done
    git --git-dir="$W/peer.git" fetch -q --all
    "$VENV/bin/ansible-pull" -U "file://$W/mirror1.git" -d "$W/ansible-pull" -i localhost, -c local >/dev/null 2>&1 # first checkout
    bench pull "$FAST" "troops pull" "git --git-dir=$W/peer.git fetch --all --quiet"
    bench pull-ansible "$ANSIBLE" "$VENV/bin/ansible-pull -U file://$W/mirror1.git -d $W/ansible-pull -i localhost, -c local -o"
    local t g a
    t=$(median pull 0) g=$(median pull 1) a=$(median pull-ansible 0)
    row "1. no-change pull, 3 remotes" "troops pull / git fetch --all" "$(calc "'%.2fx' % ($t/$g)")" "$(ms "$t")" "$(ms "$g")" "≤ 1.0x" "$(verdict "$t <= $g")"
    row "" "troops pull / ansible-pull -o (1 remote: it follows one URL)" "$(calc "'%.3fx' % ($t/$a)")" "$(ms "$t")" "$(ms "$a")" "" ""
}

# 2. A plan of 20 trivial steps: troops deploy vs the same 20 `sh -c true` in a shell loop vs
# ansible-pull with 20 `command: "true"` tasks (no fact gathering: its best case).
case_plan() {
    say "2. a plan of 20 trivial steps"
    local playbook
    playbook=$W/plan20.playbook
    mkdir -p "$playbook"
    { printf -- '- hosts: localhost\n  gather_facts: false\n  tasks:\n'; for i in $(seq 20); do printf '    - name: step-%s\n      command: "true"\n' "$i"; done; } > "$playbook/local.yml"
    deploy_repo plan20 20 "$playbook"
    node plan-node "" --remote "origin=$W/plan20.git"
    troops pull >/dev/null
    "$VENV/bin/ansible-pull" -U "file://$W/plan20.git" -d "$W/ansible-plan" -i localhost, -c local >/dev/null 2>&1
    bench plan "$FAST" "troops deploy" "sh -c 'for i in \$(seq 20); do sh -c true; done'"
    bench plan-ansible "$ANSIBLE" "$VENV/bin/ansible-pull -U file://$W/plan20.git -d $W/ansible-plan -i localhost, -c local"
    local t s a
    t=$(median plan 0) s=$(median plan 1) a=$(median plan-ansible 0)
    row "2. 20 trivial steps" "troops deploy − shell loop" "$(calc "'+%.1f ms (%.2fx; %.1f ms a step)' % ($t-$s, $t/$s, ($t-$s)/20)")" "$(ms "$t")" "$(ms "$s")" "≤ +50 ms" "$(verdict "$t - $s <= 50")"
    row "" "troops deploy / ansible-pull, 20 command tasks" "$(calc "'%.3fx' % ($t/$a)")" "$(ms "$t")" "$(ms "$a")" "" ""
}

# 3. git push of a new commit to a node with a one-step plan (the hook runs the plan in-process,
# then again with the daemon running it) vs the same push to a repo with no hooks.
case_push() {
    say "3. push deploy of a one-step plan"
    deploy_repo push 1
    node push-node 'interval = "1h"\njitter = "0s"\n'
    for target in hooked plain; do git clone -q "$W/push.git" "$W/push-$target"; done
    git -C "$W/push-hooked" push -q "$TROOPS_STATE_DIR/repo/main.git" main 2>/dev/null # the first deploy
    git clone -q --bare "$W/push.git" "$W/plain.git"
    git --git-dir="$W/plain.git" config receive.denyNonFastForwards true
    git --git-dir="$W/plain.git" config receive.denyDeletes true
    rm -f "$W"/plain.git/hooks/*
    local node=$TROOPS_STATE_DIR/repo/main.git
    local commit="git -C $W/push-%s commit -q --allow-empty -m next"
    bench push "$FAST" \
        --prepare "$(printf "$commit" hooked)" "git -C $W/push-hooked push -q $node main" \
        --prepare "$(printf "$commit" plain)" "git -C $W/push-plain push -q $W/plain.git main"
    start_daemon push
    bench push-daemon "$FAST" --prepare "$(printf "$commit" hooked)" "git -C $W/push-hooked push -q $node main"
    stop_daemon
    local h p d
    h=$(median push 0) p=$(median push 1) d=$(median push-daemon 0)
    row "3. push deploy, one step" "hook runs it − plain push" "$(calc "'+%.1f ms (%.2fx)' % ($h-$p, $h/$p)")" "$(ms "$h")" "$(ms "$p")" "≤ +50 ms" "$(verdict "$h - $p <= 50")"
    row "" "daemon runs it − plain push" "$(calc "'+%.1f ms (%.2fx)' % ($d-$p, $d/$p)")" "$(ms "$d")" "$(ms "$p")" "≤ +50 ms" "$(verdict "$d - $p <= 50")"
}

start_daemon() {
    troops daemon 2>"$W/$1-daemon.log" &
    DAEMON=$!
    wait_for_socket
}

wait_for_socket() {
    for _ in $(seq 100); do [ -S "$TROOPS_STATE_DIR/troops.sock" ] && return; sleep 0.05; done
    echo "the daemon did not start; see $W" >&2
    exit 3
}

stop_daemon() {
    kill -TERM "$DAEMON"
    wait "$DAEMON" || true
    DAEMON=""
}

# 4. Checkout cost per run on a repo of $FILES files: what `troops deploy` of a one-step plan takes
# beyond the same on a one-file repo, vs what `git worktree add` takes beyond the same on the
# one-file repo. Removing the previous checkout is done beforehand for both (hyperfine --prepare);
# the last row shows troops as it runs, emptying work/ itself.
case_checkout() {
    say "4. checkout cost per run, $FILES files"
    local files=$W/files
    "$PY" - "$files" "$FILES" <<'PY'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
for i in range(count):
    d = os.path.join(root, "d%03d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%03d.txt" % (i % 100)), "w") as f:
        f.write("".join(rng.choice("abcdefghijklmnopqrstuvwxyz \n") for _ in range(rng.randint(64, 1024))))
PY
    deploy_repo big 1 "$files"
    deploy_repo tiny 1
    node big-node "" --remote "origin=$W/big.git"
    troops pull >/dev/null
    local big_state=$TROOPS_STATE_DIR big_config=$TROOPS_CONFIG
    node tiny-node "" --remote "origin=$W/tiny.git"
    troops pull >/dev/null
    local tiny_state=$TROOPS_STATE_DIR tiny_config=$TROOPS_CONFIG
    local wt=$W/worktree
    bench checkout "$SLOW" \
        --prepare "sh -c 'rm -rf $big_state/work/*'" "troops --state-dir $big_state --config $big_config deploy" \
        --prepare "sh -c 'rm -rf $tiny_state/work/*'" "troops --state-dir $tiny_state --config $tiny_config deploy" \
        --prepare "sh -c 'rm -rf $wt && git --git-dir=$W/big.git worktree prune'" "git --git-dir=$W/big.git worktree add -q --detach $wt main" \
        --prepare "sh -c 'rm -rf $wt && git --git-dir=$W/tiny.git worktree prune'" "git --git-dir=$W/tiny.git worktree add -q --detach $wt main" \
        --prepare true "troops --state-dir $big_state --config $big_config deploy"
    local tb tt gb gt ta
    tb=$(median checkout 0) tt=$(median checkout 1) gb=$(median checkout 2) gt=$(median checkout 3) ta=$(median checkout 4)
    row "4. checkout, $FILES files" "troops (deploy − deploy of 1 file) / git (worktree add − same of 1 file)" "$(calc "'%.2fx' % (($tb-$tt)/($gb-$gt))")" "$(ms "$(calc "$tb-$tt")")" "$(ms "$(calc "$gb-$gt")")" "≤ 1.2x" "$(verdict "($tb-$tt) <= 1.2*($gb-$gt)")"
    row "" "whole commands: troops deploy / git worktree add" "$(calc "'%.2fx' % ($tb/$gb)")" "$(ms "$tb")" "$(ms "$gb")" "" ""
    row "" "troops deploy as it runs (it also removes the last checkout) / git worktree add" "$(calc "'%.2fx' % ($ta/$gb)")" "$(ms "$ta")" "$(ms "$gb")" "" ""
}

# 5. The idle daemon of case 1's node (3 remotes, 1 s interval, nothing changes): resident memory
# and CPU over $IDLE seconds, and how often it wakes up; then, with nothing due for an hour,
# whether it sleeps.
case_idle() {
    [ -n "${PULL_NODE:-}" ] || pull_node
    say "5. idle daemon, 3 remotes, 1 s interval, ${IDLE} s"
    export TROOPS_STATE_DIR=$PULL_NODE TROOPS_CONFIG=$PULL_CONFIG
    local rss rss_max anon cpu wakeups
    start_daemon idle
    sleep 5 # started, first cycles done
    read -r rss rss_max anon cpu wakeups < <("$PY" "$ROOT/tests/bench/sample.py" "$DAEMON" "$IDLE")
    stop_daemon
    row "5. idle daemon, 3 remotes, 1 s" "resident memory, median of ${IDLE} samples (max; anonymous part)" "" "$(calc "'%.1f MiB (%.1f; %.1f)' % ($rss, $rss_max, $anon)")" "" "< 10 MiB" "$(verdict "$rss_max < 10")"
    row "" "CPU, all threads (per 1 s cycle)" "" "$(calc "'%.2f %% (%.1f ms)' % ($cpu, $cpu * 10)")" "" "" ""
    row "" "wake-ups of the daemon's threads (its loop and blocking pool)" "" "$(calc "'%.1f /s' % $wakeups")" "" "" ""

    # The same node with metrics on: the /metrics listener, scraped once a second (Prometheus
    # scrapes every 15 s or more), and the textfile rewritten after every cycle.
    say "5. idle daemon with metrics on (/metrics scraped every 1 s, textfile), ${IDLE} s"
    local port scraper
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    { cat "$PULL_CONFIG"; printf '[metrics]\nlisten = "127.0.0.1:%s"\ntextfile = "%s"\n' "$port" "$W/troops.prom"; } > "$W/idle-metrics.toml"
    export TROOPS_CONFIG=$W/idle-metrics.toml
    start_daemon idle-metrics
    "$PY" - "$port" $((IDLE + 10)) <<'PY' &
import sys, time, urllib.request
end = time.time() + int(sys.argv[2])
while time.time() < end:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read()
    except OSError:
        pass
    time.sleep(1)
PY
    scraper=$!
    sleep 5
    read -r rss rss_max anon cpu wakeups < <("$PY" "$ROOT/tests/bench/sample.py" "$DAEMON" "$IDLE")
    kill "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null || true
    stop_daemon
    row "" "with metrics on (/metrics scraped every 1 s, textfile): resident memory, median (max; anonymous part)" "" "$(calc "'%.1f MiB (%.1f; %.1f)' % ($rss, $rss_max, $anon)")" "" "< 10 MiB" "$(verdict "$rss_max < 10")"
    row "" "with metrics on: CPU, all threads (per 1 s cycle)" "" "$(calc "'%.2f %% (%.1f ms)' % ($cpu, $cpu * 10)")" "" "" ""
    export TROOPS_CONFIG=$PULL_CONFIG

    local quiet=10
    say "5. idle daemon with nothing due (interval 1 h), ${quiet} s"
    printf 'hostname = "bench-1"\ninterval = "1h"\n' > "$W/idle-1h.toml"
    export TROOPS_CONFIG=$W/idle-1h.toml
    start_daemon idle-1h
    sleep 3
    read -r rss rss_max anon cpu wakeups < <("$PY" "$ROOT/tests/bench/sample.py" "$DAEMON" "$quiet")
    stop_daemon
    row "" "with nothing due (interval 1 h): wake-ups over ${quiet} s; resident memory" "" "$(calc "'%d; %.1f MiB' % ($wakeups * $quiet, $rss)")" "" "0" "$(verdict "$wakeups == 0")"

    # Drift watch: a node whose deployed plan rechecks one HTTP check (a static server on
    # loopback), pulls once an hour; every 1 s (what one recheck costs) and every 1 min (the goal).
    mkdir -p "$W/recheck-www" && echo ok > "$W/recheck-www/health"
    "$PY" -u -m http.server --bind 127.0.0.1 --directory "$W/recheck-www" 0 > "$W/recheck-www.log" 2>&1 &
    local server=$! hport=""
    for _ in $(seq 100); do hport=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$W/recheck-www.log" | head -1); [ -n "$hport" ] && break; sleep 0.05; done
    [ -n "$hport" ] || { echo "the health server did not start" >&2; kill "$server"; exit 3; }
    local every window
    for every in 1s 1m; do
        window=$([ "$every" = 1s ] && echo "$IDLE" || echo $((IDLE + 70)))
        say "5. idle daemon with a recheck of one HTTP check every $every, ${window} s"
        git init -q -b main "$W/recheck-$every.src"
        printf '[health]\nrecheck = "%s"\n[[step]]\nname = "step"\nrun = "true"\n[[check]]\nname = "web"\nhttp = "http://127.0.0.1:%s/health"\nexpect = "ok"\n' "$every" "$hport" > "$W/recheck-$every.src/troops.toml"
        git -C "$W/recheck-$every.src" add -A && git -C "$W/recheck-$every.src" commit -q -m "rechecked plan"
        git clone -q --bare "$W/recheck-$every.src" "$W/recheck-$every.git"
        node "recheck-$every-node" 'interval = "1h"\n' --remote "origin=$W/recheck-$every.git"
        troops pull >/dev/null
        start_daemon "recheck-$every"
        sleep 3
        read -r rss rss_max anon cpu wakeups < <("$PY" "$ROOT/tests/bench/sample.py" "$DAEMON" "$window")
        stop_daemon
        if [ "$every" = 1s ]; then
            row "" "with a recheck of one HTTP check every 1 s: resident memory, median (max); CPU per recheck" "" "$(calc "'%.1f MiB (%.1f); %.1f ms' % ($rss, $rss_max, $cpu * 10)")" "" "< 10 MiB" "$(verdict "$rss_max < 10")"
        else
            row "" "with a recheck of one HTTP check every 1 min: resident memory, median (max; anonymous part)" "" "$(calc "'%.1f MiB (%.1f; %.1f)' % ($rss, $rss_max, $anon)")" "" "< 10 MiB" "$(verdict "$rss_max < 10")"
        fi
    done
    kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true
    export TROOPS_CONFIG=$PULL_CONFIG TROOPS_STATE_DIR=$PULL_NODE
}

# 7. Health and rollback. (a) What one HTTP check that passes at once adds to a run: troops deploy
# of a one-step plan with the check (against a static server on loopback) minus the same plan
# without it. (b) troops rollback of a release (switch `current` back, run its one activate step
# `true`) minus that step alone, `sh -c true`; each rollback is prepared by a person's deploy of
# the newer commit (which lifts its quarantine).
case_health() {
    say "7. health checks and rollback"
    mkdir -p "$W/www"
    echo ok > "$W/www/health"
    "$PY" -u -m http.server --bind 127.0.0.1 --directory "$W/www" 0 > "$W/www.log" 2>&1 &
    local server=$! port=""
    for _ in $(seq 100); do port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$W/www.log" | head -1); [ -n "$port" ] && break; sleep 0.05; done
    [ -n "$port" ] || { echo "the health server did not start" >&2; kill "$server"; exit 3; }
    local step='[[step]]\nname = "step"\nrun = "true"\n'
    local check="[[check]]\nname = \"web\"\nhttp = \"http://127.0.0.1:$port/health\"\nexpect = \"ok\"\n"
    local plain checked
    for variant in plain checked; do
        git init -q -b main "$W/$variant.src"
        if [ $variant = plain ]; then printf "$step" > "$W/$variant.src/troops.toml"; else printf "$step$check" > "$W/$variant.src/troops.toml"; fi
        git -C "$W/$variant.src" add -A && git -C "$W/$variant.src" commit -q -m "$variant"
        node "$variant-node" "" --remote "origin=$W/$variant.src"
        troops pull >/dev/null
        printf -v "$variant" '%s' "troops --state-dir $TROOPS_STATE_DIR --config $TROOPS_CONFIG deploy"
    done
    bench health "$FAST" "$checked" "$plain"
    kill "$server"

    git init -q -b main "$W/release.src"
    printf '[release]\nkeep = 3\n\n[[step]]\nname = "build"\nrun = "true"\n\n[[step]]\nname = "activate"\nphase = "activate"\nrun = "true"\n' > "$W/release.src/troops.toml"
    git -C "$W/release.src" add -A && git -C "$W/release.src" commit -q -m first
    local first second
    first=$(git -C "$W/release.src" rev-parse HEAD)
    node release-node "" --remote "origin=$W/release.src"
    troops pull >/dev/null
    git -C "$W/release.src" commit -q --allow-empty -m second
    second=$(git -C "$W/release.src" rev-parse HEAD)
    troops pull >/dev/null
    bench rollback "$FAST" --prepare "troops deploy --commit $second" "troops rollback --to $first" \
        --prepare true "sh -c true"
    local c p r s
    c=$(median health 0) p=$(median health 1) r=$(median rollback 0) s=$(median rollback 1)
    row "7. health and rollback" "deploy with one passing HTTP check − without" "$(calc "'%+.1f ms' % ($c-$p)")" "$(ms "$c")" "$(ms "$p")" "≤ +20 ms" "$(verdict "$c - $p <= 20")"
    row "" "troops rollback of a release (switch + 1 activate step) − the step alone" "$(calc "'%+.1f ms' % ($r-$s)")" "$(ms "$r")" "$(ms "$s")" "≤ +100 ms" "$(verdict "$r - $s <= 100")"
}

# 8. A no-change poll of one HTTP mirror as users run one (tests/fleet/nginx.sh: nginx serving the
# repo's files with ETags and 304s, `git http-backend` behind fcgiwrap for smart requests), over
# http and over https (a certificate for 127.0.0.1 from a CA made here with openssl, ECDSA P-256,
# which the node trusts as the system store by SSL_CERT_FILE, and its git by http.sslCAInfo):
# `troops pull` (its probe answered 304, no fetch) against `git fetch` of the same mirror. What
# it costs the mirror is tests/fleet/run.sh's to measure (BENCHMARKS.md, "Fleet scale").
case_probe() {
    say "8. no-change poll of an HTTP mirror (nginx), http and https"
    [ -x /usr/sbin/nginx ] && [ -x /usr/sbin/fcgiwrap ] && command -v openssl >/dev/null || need_packages nginx fcgiwrap openssl
    local t=$W/tls www=$W/www-git
    mkdir -p "$t" "$www"
    deploy_repo probe 1
    git clone -q --bare "$W/probe.src" "$www/deploy.git"
    git --git-dir "$www/deploy.git" update-server-info
    # nginx.sh runs its servers in the fleet harness' cgroup; here they just run.
    in_cgroup() { exec "$@"; }
    # shellcheck source=tests/fleet/nginx.sh
    . "$ROOT/tests/fleet/nginx.sh"
    test_ca "$t"
    export SSL_CERT_FILE=$t/ca.pem GIT_SSL_CAINFO=$t/ca.pem
    local servers=() scheme port commands=()
    for scheme in http https; do
        port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        if [ $scheme = http ]; then
            start_nginx "$W/nginx-$scheme" "$www" "$port"
        else
            start_nginx "$W/nginx-$scheme" "$www" "$port" "$t/server.pem" "$t/server.key" "$t/ca.pem"
        fi
        servers+=("${SERVERS[@]}")
        node "probe-$scheme" "" --remote "origin=$scheme://127.0.0.1:$port/deploy.git"
        git --git-dir "$TROOPS_STATE_DIR/repo/main.git" config http.sslCAInfo "$t/ca.pem"
        troops pull >/dev/null # deploys; from now on each pull is a probe answered 304
        troops pull >/dev/null
        git clone -q --bare "$scheme://127.0.0.1:$port/deploy.git" "$W/peer-$scheme.git"
        commands+=("troops --state-dir $TROOPS_STATE_DIR --config $TROOPS_CONFIG pull" "git --git-dir=$W/peer-$scheme.git fetch --quiet origin")
    done
    bench probe "$FAST" "${commands[@]}"
    # fcgiwrap's workers outlive their parent: they go first, then nginx (which ends its own).
    local pid
    for pid in "${servers[@]}"; do kill $(pgrep -P "$pid") "$pid" 2>/dev/null || true; done
    local th gh ts gs
    th=$(median probe 0) gh=$(median probe 1) ts=$(median probe 2) gs=$(median probe 3)
    row "8. no-change poll of an HTTP mirror (nginx)" "http: troops pull (probe, 304) / git fetch" "$(calc "'%.2fx' % ($th/$gh)")" "$(ms "$th")" "$(ms "$gh")" "" ""
    row "" "https: troops pull (probe, 304) / git fetch" "$(calc "'%.2fx' % ($ts/$gs)")" "$(ms "$ts")" "$(ms "$gs")" "" ""
    row "" "troops pull: https − http (the TLS handshake, and reading the CA store)" "$(calc "'%+.1f ms' % ($ts-$th)")" "$(ms "$ts")" "$(ms "$th")" "" ""
}

# --- the table ---------------------------------------------------------------------------------

# 6. The hostile minute (tests/e2e/hostile.rs, built in release): pushes with pushers that stop
# reading, pull deploys beside a remote that never answers, garbage, idle and stalled socket
# clients, all at once; the slowest `troops status` and the daemon's largest resident memory.
case_hostile() {
    say "6. the hostile minute (the e2e test, release build)"
    local seconds=60 line
    [ $QUICK = 1 ] && seconds=15
    TROOPS_HOSTILE_SECONDS=$seconds "$E2E" --exact hostile::a_hostile_minute_leaves_the_daemon_serving_small_and_exact \
        --nocapture > "$W/hostile.out" 2>&1 || { cat "$W/hostile.out" >&2; return 1; }
    line=$(grep '^hostile:' "$W/hostile.out")
    # "hostile: N pushes, slowest status 48.0ms, largest RSS 23260 KiB (8636 KiB anonymous)"
    read -r pushes status rss anon < <("$PY" -c '
import re, sys
m = re.search(r"hostile: (\d+) pushes, slowest status ([\d.]+)(ms|s|µs), largest RSS (\d+) KiB \((\d+) KiB", sys.argv[1])
scale = {"ms": 1, "s": 1000, "µs": 0.001}[m.group(3)]
print(m.group(1), float(m.group(2)) * scale, int(m.group(4)) / 1024, int(m.group(5)) / 1024)' "$line")
    row "6. hostile minute (${seconds} s, $pushes pushes)" "slowest \`troops status\`" "" "$(ms "$status")" "" "< 1 s" "$(verdict "$status < 1000")"
    row "" "daemon's largest resident memory (anonymous part)" "" "$(calc "'%.1f MiB (%.1f)' % ($rss, $anon)")" "" "< 20 MiB" "$(verdict "$rss < 20")"
}

machine() {
    local cpu
    cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
    printf '%s, %s cores, %s MiB RAM, Linux %s, %s; load average %s at the start, %s at the end\n' \
        "${cpu:-unknown CPU}" "$(nproc)" "$(($(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) / 1024))" "$(uname -r)" \
        "$(df -PT "$W" | awk 'NR==2 {print $2}') temp dir" "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'troops %s, %s, hyperfine %s, ansible-core %s (Python %s), %s\n' \
        "$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates Cargo.lock || echo '+changes')" \
        "$(git --version)" "$(hyperfine --version | cut -d' ' -f2)" "$("$PY" -c 'import ansible.release as r; print(r.__version__)')" \
        "$("$PY" -c 'import platform; print(platform.python_version())')" "$(date -u +%Y-%m-%dT%H:%MZ)"
}

report() {
    echo "| case | comparison | ratio | troops | other | goal | |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Medians of $FAST runs ($SLOW for case 4, $ANSIBLE for ansible-pull) after warm-up, from \`tests/bench/run.sh\`."
    echo
    machine | sed 's/^/Machine: /;2s/^Machine: /\nVersions: /'
}

main() {
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    need_hyperfine
    build
    sandbox
    need_ansible
    local c
    for c in "${CASES[@]}"; do "case_$c"; done
    if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
}

main
