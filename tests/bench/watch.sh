#!/usr/bin/env bash
# Compares how the daemon of each REV (a commit; default HEAD) watches its config file and branch
# ref: memory, threads and wake-ups of the idle daemon, and how soon it notices a change. It builds
# `troops` in release mode for each REV (its source from `git archive`, in target/bench/, sharing
# target/ so only the troops crates compile again) and runs tests/bench/watch.py on them; the
# markdown table goes to stdout:
#
#   tests/bench/watch.sh [--seconds N] [--moves N] [REV...]
#
# The daemon must log "branch ref moved" at debug level, which it does since the commit that
# added this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

OPTS=() REVS=()
while [ $# -gt 0 ]; do
    case $1 in
        --seconds | --moves) OPTS+=("$1" "$2"); shift ;;
        -*) echo "usage: tests/bench/watch.sh [--seconds N] [--moves N] [REV...]" >&2; exit 2 ;;
        *) REVS+=("$1") ;;
    esac
    shift
done
[ ${#REVS[@]} -gt 0 ] || REVS=(HEAD)

BINARIES=()
for rev in "${REVS[@]}"; do
    commit=$(git rev-parse --short "$rev^{commit}")
    src=$ROOT/target/bench/src-$commit
    if [ ! -d "$src" ]; then
        mkdir -p "$src"
        git archive "$commit" | tar -x -C "$src"
    fi
    echo "building troops at $commit ($rev)" >&2
    CARGO_TARGET_DIR=$ROOT/target cargo build --release --quiet --manifest-path "$src/Cargo.toml" -p troops --bin troops >&2
    cp "$ROOT/target/release/troops" "$ROOT/target/bench/troops-$commit"
    label=$commit
    [ "$(git rev-parse --short "$rev")" = "$commit" ] || label="$rev ($commit)"
    BINARIES+=("$label=$ROOT/target/bench/troops-$commit")
done
python3 tests/bench/watch.py "${OPTS[@]}" "${BINARIES[@]}"
