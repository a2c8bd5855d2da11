#!/usr/bin/env bash
# Writes crates/troops/hot-symbols.txt: the functions of the release `troops` binary that a daemon
# runs (start, pull cycles against three remotes, /metrics scraped, `troops status` asked, a
# pushed commit deployed), as callgrind sees them. crates/troops/build.rs hands the list to lld,
# which lays those functions together, so that an idle daemon's code pages are few (BENCHMARKS.md,
# goal 5). Run it after changes that move much code (a new dependency, a new subsystem of the
# daemon); a list that is out of date costs memory, never correctness. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
command -v valgrind >/dev/null || { echo "hot-symbols.sh: needs valgrind (apt install valgrind)" >&2; exit 2; }
cargo build --release --quiet -p troops
BIN=$ROOT/target/release/troops
W=$(mktemp -d "${TMPDIR:-/tmp}/troops-hot.XXXXXX")
trap 'pkill -TERM -f "callgrind.*$W" 2>/dev/null || true; rm -rf "$W"' EXIT
export HOME=$W GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=h GIT_AUTHOR_EMAIL=h@example.com GIT_COMMITTER_NAME=h GIT_COMMITTER_EMAIL=h@example.com
git init -q -b main "$W/src"
printf '[[step]]\nname = "a"\nrun = "true"\n' > "$W/src/troops.toml"
git -C "$W/src" add -A && git -C "$W/src" commit -qm a
for r in a b c; do git clone -q --bare "$W/src" "$W/$r.git"; done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'hostname = "hot"\ninterval = "1s"\n[metrics]\nlisten = "127.0.0.1:%s"\ntextfile = "%s/t.prom"\n' "$port" "$W" > "$W/c.toml"
T=("$BIN" --state-dir "$W/s" --config "$W/c.toml")
"${T[@]}" init --remote "a=$W/a.git" --remote "b=$W/b.git" --remote "c=$W/c.git" >/dev/null
"${T[@]}" pull >/dev/null
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$W/cg.out" "${T[@]}" daemon >"$W/vg.log" 2>&1 &
for _ in $(seq 120); do [ -S "$W/s/troops.sock" ] && break; sleep 0.5; done
[ -S "$W/s/troops.sock" ] || { echo "hot-symbols.sh: the daemon did not start under valgrind:" >&2; cat "$W/vg.log" >&2; exit 3; }
sleep 3
for _ in 1 2 3; do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/metrics', timeout=30).read()"
    "${T[@]}" status >/dev/null
    sleep 1
done
echo more >> "$W/src/f" && git -C "$W/src" add -A && git -C "$W/src" commit -qm b && git -C "$W/src" push -q "$W/a.git" main
sleep 8
pkill -TERM -f "callgrind.*$W"
for _ in $(seq 60); do pgrep -f "callgrind.*$W" >/dev/null || break; sleep 0.5; done
python3 - "$W/cg.out" "$BIN" "$ROOT/crates/troops/hot-symbols.txt" <<'PY'
import re, subprocess, sys
out, binary, dest = sys.argv[1:]
seen = set()
for line in open(out, errors="replace"):
    m = re.match(r"c?fn=\(\d+\) (.+)$", line.rstrip("\n"))
    if m:
        seen.add(m.group(1))
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
code = {p[2] for p in (l.split() for l in nm.splitlines()) if len(p) == 3 and p[1] in "tTwW"}
hot = sorted(seen & code)
open(dest, "w").write("\n".join(hot) + "\n")
print(f"hot-symbols.sh: {len(hot)} of the binary's {len(code)} functions ran; written to {dest}")
PY
