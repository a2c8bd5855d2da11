#!/usr/bin/env bash
# The fleet benchmark (issue 17): N troops daemons on this machine, each with its own state dir and
# config, polling ONE mirror, and what that costs the mirror. Not part of the test suite.
#
#   tests/fleet/run.sh [--nodes N] [--interval 2s] [--jitter 2s] [--window SECONDS]
#                      [--transport http|https|ssh] [--server nginx|python] [--probe-trust DURATION]
#                      [--bin PATH]
#
# The mirror is a bare repo (the repo keeps `info/refs` fresh with receive.updateServerInfo)
# served over HTTP, static files with ETags and 304s first and `git http-backend` for smart
# requests, by --server: `nginx` (the default when /usr/sbin/nginx and /usr/sbin/fcgiwrap are
# installed: a private nginx with http-backend behind a private fcgiwrap, see tests/fleet/nginx.sh)
# or `python` (tests/fleet/mirror.py); over HTTPS by the same nginx (`--transport https`, nginx
# only) with a certificate for 127.0.0.1 signed by a CA made for the run (openssl, ECDSA P-256),
# which the nodes trust as a host trusts a private CA: git by `http.sslCAInfo` in the node repo's
# config, the probe by the system store that SSL_CERT_FILE names; or over SSH by a private sshd
# on 127.0.0.1 (MaxStartups
# raised so that no connection is dropped, and an empty ~/.bashrc: see below). It measures, and
# prints as one markdown table row:
#   - mirror CPU per no-change poll: the CPU time of a cgroup that holds the mirror's servers and
#     everything they start (nginx and its workers, fcgiwrap and the http-backends it leaves to the
#     kernel to reap, the Python server, sshd and its sessions, upload-pack), over a window with no
#     commits, divided by the polls served in it (HTTP: the server's request counts; SSH:
#     "Accepted publickey" lines in sshd's log). The window is one `probe_trust` and one period
#     long unless --window says otherwise, so that it holds every node's forced fetch (a real
#     fetch at least every `probe_trust`) and not only probes;
#   - the same for plain `git fetch` from a clone over the same transport, 100 times in a row;
#   - polls and real fetches per second served in the window;
#   - total daemon memory: the sum of Pss (and of Rss) of every daemon;
#   - the time from a push to the mirror to all N nodes deployed, against interval + jitter.
# probe_trust defaults to as many intervals as the product's default does (30m over 60s: 30), and
# --jitter to a sixth of the interval (10s over 60s). It needs root: for the cgroup, and to raise
# fs.inotify.max_user_instances (see below).
# Everything lives in a temp dir (kept with KEEP=1); progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

NODES=10 INTERVAL=2s JITTER="" WINDOW="" TRANSPORT=http TRUST="" BIN=$ROOT/target/release/troops SERVER_KIND=python
[ -x /usr/sbin/nginx ] && [ -x /usr/sbin/fcgiwrap ] && SERVER_KIND=nginx
while [ $# -gt 0 ]; do
    case $1 in
        --nodes) NODES=$2; shift ;;
        --interval) INTERVAL=$2; shift ;;
        --jitter) JITTER=$2; shift ;;
        --window) WINDOW=$2; shift ;;
        --transport) TRANSPORT=$2; shift ;;
        --server) SERVER_KIND=$2; shift ;;
        --probe-trust) TRUST=$2; shift ;;
        --bin) BIN=$(realpath "$2"); shift ;;
        *) echo "usage: tests/fleet/run.sh [--nodes N] [--interval D] [--jitter D] [--window S] [--transport http|https|ssh] [--server nginx|python] [--probe-trust D] [--bin PATH]" >&2; exit 2 ;;
    esac
    shift
done
secs() { python3 -c "import re,sys; v=sys.argv[1]; print(float(v[:-2])/1000 if v.endswith('ms') else float(v.rstrip('s')))" "$1"; }
[ -n "$JITTER" ] || JITTER="$(python3 -c "print(int($(secs "$INTERVAL") * 1000 / 6))")ms"
[ -n "$TRUST" ] || TRUST="$(python3 -c "print(int($(secs "$INTERVAL") * 30))")s"
PERIOD=$(python3 -c "print($(secs "$INTERVAL") + $(secs "$JITTER"))")
[ -n "$WINDOW" ] || WINDOW=$(python3 -c "import math; print(math.ceil($(secs "$TRUST") + $PERIOD))")
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p troops (or pass --bin)" >&2; exit 2; }
say() { printf '== %s\n' "$*" >&2; }

TMP=$(mktemp -d /tmp/troops-fleet.XXXXXX)
# The mirror's cgroup (v2, or v1's cpuacct): its CPU time counts every process in it, reaped by a
# parent or not.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG=/sys/fs/cgroup/troops-fleet-$$
    mirror_cpu() { awk '$1 == "usage_usec" { print $2 / 1e6 }' "$CG/cpu.stat"; }
else
    CG=/sys/fs/cgroup/cpuacct/troops-fleet-$$
    mirror_cpu() { awk '{ print $1 / 1e9 }' "$CG/cpuacct.usage"; }
fi
mkdir "$CG" || { echo "cannot make the mirror's cgroup $CG: run as root" >&2; exit 2; }
# Runs a mirror server in the mirror's cgroup; call it in the background (`in_cgroup CMD &`), so
# that it replaces the subshell and $! is the server.
in_cgroup() { echo "$BASHPID" >"$CG/cgroup.procs" && exec "$@"; }
PIDS=()
cleanup() {
    kill "${PIDS[@]}" $(cat "$CG/cgroup.procs" 2>/dev/null) 2>/dev/null || true
    wait 2>/dev/null || true
    while [ -s "$CG/cgroup.procs" ]; do kill -9 $(cat "$CG/cgroup.procs") 2>/dev/null || true; sleep 0.1; done
    rmdir "$CG"
    [ -n "${INSTANCES_WERE:-}" ] && echo "$INSTANCES_WERE" >"$INSTANCES"
    [ "${KEEP:-0}" = 1 ] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT
export HOME=$TMP/home GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=fleet GIT_AUTHOR_EMAIL=fleet@example.com GIT_COMMITTER_NAME=fleet GIT_COMMITTER_EMAIL=fleet@example.com
mkdir -p "$HOME" "$TMP/mirror" "$TMP/nodes"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the mirror ---------------------------------------------------------------------------------
MIRROR=$TMP/mirror/deploy.git
git init -q --bare -b main "$MIRROR"
git --git-dir "$MIRROR" config receive.updateServerInfo true
git init -q -b main "$TMP/work"
printf '[[step]]\nname = "hello"\nrun = "echo deployed $TROOPS_COMMIT"\n' >"$TMP/work/troops.toml"
git -C "$TMP/work" add -A && git -C "$TMP/work" commit -qm plan
git -C "$TMP/work" push -q "$MIRROR" main
FIRST=$(git -C "$TMP/work" rev-parse HEAD)

CA=""
case $TRANSPORT in
https)
    [ "$SERVER_KIND" = nginx ] || { echo "--transport https needs nginx (Debian nginx, fcgiwrap)" >&2; exit 2; }
    command -v openssl >/dev/null || { echo "--transport https needs openssl (Debian openssl)" >&2; exit 2; }
    T=$TMP/tls PORT=$(free_port)
    mkdir -p "$T"
    test_ca "$T"
    CA=$T/ca.pem URL=https://127.0.0.1:$PORT/deploy.git
    # The harness' own `git fetch` baseline trusts the CA by GIT_SSL_CAINFO; the daemons' probes
    # by SSL_CERT_FILE (as the system store), their git fetches by their repo's config (below).
    export GIT_SSL_CAINFO=$CA SSL_CERT_FILE=$CA
    # shellcheck source=tests/fleet/nginx.sh
    . "$ROOT/tests/fleet/nginx.sh"
    start_nginx "$TMP/nginx" "$TMP/mirror" "$PORT" "$T/server.pem" "$T/server.key" "$CA" # sets SERVERS, defines polls
    ;;
http)
    PORT=$(free_port)
    URL=http://127.0.0.1:$PORT/deploy.git
    case $SERVER_KIND in
    python)
        in_cgroup python3 "$ROOT/tests/fleet/mirror.py" "$TMP/mirror" "$PORT" &
        SERVERS=("$!")
        until curl -sf "http://127.0.0.1:$PORT/_stats" >/dev/null; do sleep 0.1; done
        # Polls: probes of info/refs (each poll of a node opens with one); fetches: smart GETs.
        polls() { curl -sf "http://127.0.0.1:$PORT/_stats" | python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["static_200"]+c["static_304"], c["smart_get"])'; }
        ;;
    nginx)
        # shellcheck source=tests/fleet/nginx.sh
        . "$ROOT/tests/fleet/nginx.sh"
        start_nginx "$TMP/nginx" "$TMP/mirror" "$PORT" # sets SERVERS, defines polls
        ;;
    *) echo "--server is nginx or python" >&2; exit 2 ;;
    esac
    ;;
ssh)
    D=$TMP/sshd PORT=$(free_port)
    mkdir -p "$D" /run/sshd
    ssh-keygen -q -t ed25519 -N "" -f "$D/host" && ssh-keygen -q -t ed25519 -N "" -f "$D/client"
    cp "$D/client.pub" "$D/authorized_keys"
    cat >"$D/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $PORT
HostKey $D/host
AuthorizedKeysFile $D/authorized_keys
PidFile $D/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 2000
PrintMotd no
LogLevel INFO
EOF
    # sshd runs each session as `$SHELL -c git-upload-pack ...`, and bash then reads the login
    # user's ~/.bashrc: that file's cost is the user's, not SSH's (pyenv's init is 110 ms here).
    # sshd gets a private mount namespace in which ~/.bashrc is empty, when it can.
    if [ -f ~root/.bashrc ] && [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
        in_cgroup unshare -m sh -c 'mount --bind /dev/null ~root/.bashrc && exec /usr/sbin/sshd "$@"' sshd \
            -D -f "$D/sshd_config" -E "$D/log" &
    else
        in_cgroup /usr/sbin/sshd -D -f "$D/sshd_config" -E "$D/log" &
    fi
    SERVERS=("$!")
    URL=ssh://$(id -un)@127.0.0.1:$PORT$MIRROR
    until grep -q "Server listening" "$D/log" 2>/dev/null; do sleep 0.1; done
    echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$D/host.pub")" >"$D/known_hosts"
    export GIT_SSH_COMMAND="ssh -F /dev/null -i $D/client -o UserKnownHostsFile=$D/known_hosts -o BatchMode=yes"
    polls() { local n; n=$(grep -c "Accepted publickey" "$D/log" || true); echo "$n $n"; }
    ;;
*) echo "--transport is http, https or ssh" >&2; exit 2 ;;
esac
PIDS+=("${SERVERS[@]}")

# --- plain git fetch over the same transport ----------------------------------------------------
say "baseline: 100 no-change \`git fetch\` over $TRANSPORT"
git clone -q "$URL" "$TMP/plain"
before=$(mirror_cpu)
for _ in $(seq 100); do git -C "$TMP/plain" fetch -q origin; done
PLAIN_MS=$(python3 -c "print(round(($(mirror_cpu) - $before) * 1000 / 100, 2))")
say "plain git fetch: ${PLAIN_MS} ms of mirror CPU per fetch"

# --- the fleet ----------------------------------------------------------------------------------
say "starting $NODES nodes (interval $INTERVAL, jitter $JITTER, probe_trust $TRUST)"
# Every daemon watches its config and repo with one inotify instance, and a user gets 128 by
# default (fs.inotify.max_user_instances): past that, a daemon stops at start with EMFILE. A real
# node runs one daemon; here one user runs them all, so the harness raises the limit (as root).
INSTANCES=/proc/sys/fs/inotify/max_user_instances
if [ "$(cat $INSTANCES)" -lt $((NODES + 64)) ]; then
    say "raising $INSTANCES from $(cat $INSTANCES) to $((NODES + 64))"
    INSTANCES_WERE=$(cat $INSTANCES) # set back on exit
    echo $((NODES + 64)) >$INSTANCES || { echo "cannot raise $INSTANCES: run as root, or fewer nodes" >&2; exit 2; }
fi
start_node() {
    local n=$1 dir=$TMP/nodes/$1
    mkdir -p "$dir"
    printf 'hostname = "node-%s"\ninterval = "%s"\njitter = "%s"\nprobe_trust = "%s"\n' \
        "$n" "$INTERVAL" "$JITTER" "$TRUST" >"$dir/troops.toml"
    TROOPS_STATE_DIR=$dir/state TROOPS_CONFIG=$dir/troops.toml "$BIN" init --remote=origin="$URL" >/dev/null
    [ -n "$CA" ] && git --git-dir "$dir/state/repo/main.git" config http.sslCAInfo "$CA"
    if [ "$TRANSPORT" = ssh ]; then
        cat "$dir/state/ssh/id_ed25519.pub" >>"$D/authorized_keys"
        cp "$D/known_hosts" "$dir/state/ssh/known_hosts"
    fi
}
for n in $(seq "$NODES"); do start_node "$n"; done
unset GIT_SSH_COMMAND
STARTED=$(date +%s.%N)
for n in $(seq "$NODES"); do
    dir=$TMP/nodes/$n
    TROOPS_STATE_DIR=$dir/state TROOPS_CONFIG=$dir/troops.toml TROOPS_LOG=warn \
        "$BIN" daemon >"$dir/daemon.log" 2>&1 &
    PIDS+=("$!")
done
DAEMONS=("${PIDS[@]:${#SERVERS[@]}}")

deployed() { # how many nodes deployed commit $1
    local c=0 n tip
    for n in $(seq "$NODES"); do
        tip=""
        read -r tip 2>/dev/null <"$TMP/nodes/$n/state/repo/main.git/refs/troops/deployed" || true
        [ "$tip" = "$1" ] && c=$((c + 1))
    done
    echo $c
}
wait_all() { # waits until every node deployed $1; sets TIMES to the seconds since $2 to half, 90%, all
    local limit=$3 done=0 half="" most=""
    until [ "$done" = "$NODES" ]; do
        if [ "$(python3 -c "print(int($(date +%s.%N) - $2 > $limit))")" = 1 ]; then
            echo "only $done of $NODES nodes deployed ${1:0:12} after ${limit}s; kept $TMP" >&2
            KEEP=1
            exit 1
        fi
        sleep 0.2
        done=$(deployed "$1")
        [ -z "$half" ] && [ $((done * 2)) -ge "$NODES" ] && half=$(date +%s.%N)
        [ -z "$most" ] && [ $((done * 10)) -ge $((NODES * 9)) ] && most=$(date +%s.%N)
    done
    TIMES=$(python3 -c "print(*(round(t - $2, 1) for t in ($half, $most, $(date +%s.%N))))")
}
wait_all "$FIRST" "$STARTED" 600
say "first deploy on half, 90% and all: $TIMES s"

# Settle one period (every node has probed once with a validator), then a window with no change.
sleep "$PERIOD"
read -r polls0 fetches0 < <(polls)
cpu0=$(mirror_cpu)
sleep "$WINDOW"
read -r polls1 fetches1 < <(polls)
cpu1=$(mirror_cpu)
POLLS=$((polls1 - polls0)) FETCHES=$((fetches1 - fetches0))
POLL_MS=$(python3 -c "print(round(($cpu1 - $cpu0) * 1000 / max($POLLS, 1), 2))")
say "window ${WINDOW}s: $POLLS polls, $FETCHES real fetches, $(python3 -c "print(round($cpu1 - $cpu0, 2))") s of mirror CPU"

PSS=0 RSS=0
for pid in "${DAEMONS[@]}"; do
    read -r p r < <(awk '/^Pss:/ {p=$2} /^Rss:/ {r=$2} END {print p, r}' "/proc/$pid/smaps_rollup")
    PSS=$((PSS + p)) RSS=$((RSS + r))
done

echo change >"$TMP/work/note" && git -C "$TMP/work" add -A && git -C "$TMP/work" commit -qm change
SECOND=$(git -C "$TMP/work" rev-parse HEAD)
PUSHED=$(date +%s.%N)
git -C "$TMP/work" push -q "$MIRROR" main
wait_all "$SECOND" "$PUSHED" 600
read -r HALF MOST ALL <<<"$TIMES"
say "commit to deployed on half, 90% and all: $HALF $MOST $ALL s (interval + jitter: $PERIOD s)"

# | transport | nodes | interval + jitter | troops | git fetch | ratio | polls/s | fetches/s | Pss (per node) | Rss | deployed on half / 90% / all | all / period |
LABEL=$TRANSPORT
[ "$TRANSPORT" != ssh ] && LABEL="$TRANSPORT ($SERVER_KIND)"
python3 - "$LABEL" "$NODES" "$INTERVAL" "$JITTER" "$POLL_MS" "$PLAIN_MS" "$POLLS" "$FETCHES" "$WINDOW" "$PSS" "$RSS" "$ALL" "$PERIOD" "$HALF" "$MOST" <<'EOF'
import sys
t, n, i, j, poll, plain, polls, fetches, window, pss, rss, all_, period, half, most = sys.argv[1:]
n, poll, plain, polls, fetches, window, pss, rss, all_, period = int(n), float(poll), float(plain), int(polls), int(fetches), int(window), int(pss), int(rss), float(all_), float(period)
print(f"| {t} | {n:,} | {i} + {j} | {poll:.2f} ms | {plain:.2f} ms | {poll / plain:.2f}x | {polls / window:.1f} | {fetches / window:.1f} "
      f"| {pss / 1024:,.0f} MiB ({pss / n / 1024:.1f}) | {rss / 1024:,.0f} MiB | {half} / {most} / {all_:.1f} s | {all_ / period:.2f}x |")
EOF
