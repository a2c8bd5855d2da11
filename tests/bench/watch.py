"""Measures how the daemon watches its config file and branch ref, for one or more troops binaries
side by side (built from different commits, say):

    python3 tests/bench/watch.py [--seconds N] [--moves N] LABEL=PATH/TO/troops...

For each binary, in a temp dir with its own HOME and no git config: the idle daemon with nothing
due (interval 1 h) sampled once a second for N seconds (resident and anonymous memory, threads,
voluntary context switches of all its threads); the same at a 1 s interval with three file
remotes, nothing changing (what wakes it per cycle); then how long it takes to notice a moved
branch (`git update-ref` of the node's branch to its "branch ref moved" debug line) and an edited
config file (an append to it, to "config reloaded"), from the daemon's log timestamps. Prints a
markdown table, one column per binary."""
import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=int, default=60, help="length of each idle sample")
parser.add_argument("--moves", type=int, default=20, help="branch moves and config edits timed")
parser.add_argument("binaries", nargs="+", metavar="LABEL=PATH")
args = parser.parse_args()


def git(*argv, **kw):
    return subprocess.run(["git", *argv], check=True, capture_output=True, text=True, **kw).stdout.strip()


def status(pid, key, path=None):
    for line in open(path or f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])


def switches(pid):
    counts = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            counts[task] = status(pid, "voluntary_ctxt_switches", f"/proc/{pid}/task/{task}/status")
        except FileNotFoundError:
            pass  # a thread that ended while listing
    return counts


def watcher_thread(pid):
    """The thread notify reads inotify on, if any."""
    for task in os.listdir(f"/proc/{pid}/task"):
        if open(f"/proc/{pid}/task/{task}/comm").read().startswith("notify"):
            return task


def sample(pid, seconds):
    """Memory, threads, and wake-ups of the threads alive at both ends (not the per-remote fetch
    threads, which live within a cycle), over `seconds`."""
    s0, watcher = switches(pid), watcher_thread(pid)
    rss, anon, threads = [], [], []
    for _ in range(seconds):
        time.sleep(1)
        rss.append(status(pid, "VmRSS"))
        anon.append(status(pid, "RssAnon"))
        threads.append(status(pid, "Threads"))
    s1 = switches(pid)
    return {
        "rss": statistics.median(rss) / 1024,
        "rss_max": max(rss) / 1024,
        "anon": statistics.median(anon) / 1024,
        "threads": max(threads),
        "wakeups": sum(n - s0[task] for task, n in s1.items() if task in s0),
        "watcher_wakeups": s1[watcher] - s0[watcher] if watcher in s0 and watcher in s1 else 0,
    }


class Daemon:
    def __init__(self, binary, env, log):
        self.log_path = log
        self.proc = subprocess.Popen([binary, "daemon"], env=env, stderr=open(log, "w"), stdin=subprocess.DEVNULL)
        socket = os.path.join(env["TROOPS_STATE_DIR"], "troops.sock")
        self.wait(lambda: os.path.exists(socket), "the daemon's socket")

    def lines(self, text):
        return [line for line in open(self.log_path) if text in line]

    def wait(self, cond, what, limit=10):
        end = time.monotonic() + limit
        while not cond():
            if time.monotonic() > end or self.proc.poll() is not None:
                sys.exit(f"waited in vain for {what}; see {self.log_path}")
            time.sleep(0.01)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


STAMP = re.compile(r"^(\S+Z)\s")


def logged_at(line):
    return datetime.datetime.fromisoformat(STAMP.match(line).group(1)).timestamp()


def measure(binary, work):
    home = os.path.join(work, "home")
    os.makedirs(home)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TROOPS_", "GIT_", "SSH_")) and k != "NOTIFY_SOCKET"
    }
    env.update(HOME=home, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", TROOPS_LOG="debug")
    for who in ("AUTHOR", "COMMITTER"):
        env.update({f"GIT_{who}_NAME": "Bench", f"GIT_{who}_EMAIL": "bench@example.com"})
    src = os.path.join(work, "src")
    git("init", "-q", "-b", "main", src)
    with open(os.path.join(src, "troops.toml"), "w") as f:
        f.write('[[step]]\nname = "one"\nrun = "true"\n')
    git("-C", src, "add", "-A", env=env)
    git("-C", src, "commit", "-q", "-m", "plan", env=env)
    mirrors = []
    for i in range(3):
        mirrors.append(os.path.join(work, f"mirror{i}.git"))
        git("clone", "-q", "--bare", src, mirrors[-1], env=env)
    state, config = os.path.join(work, "state"), os.path.join(work, "troops.toml")
    env.update(TROOPS_STATE_DIR=state, TROOPS_CONFIG=config)

    def write_config(interval):
        with open(config, "w") as f:
            f.write(f'hostname = "bench-1"\ninterval = "{interval}"\njitter = "0s"\n')

    write_config("1s")
    remotes = [a for i, m in enumerate(mirrors) for a in ("--remote", f"m{i}={m}")]
    subprocess.run([binary, "init", *remotes], env=env, check=True, capture_output=True)
    subprocess.run([binary, "pull"], env=env, check=True, capture_output=True)
    repo = os.path.join(state, "repo", "main.git")
    figures = {}

    # Nothing changes, a cycle a second: what each cycle wakes.
    daemon = Daemon(binary, env, os.path.join(work, "busy.log"))
    time.sleep(3)
    busy = sample(daemon.proc.pid, args.seconds)
    daemon.stop()

    # Nothing due: the daemon pulls once at its start, then the next cycle is an hour away.
    write_config("1h")
    daemon = Daemon(binary, env, os.path.join(work, "idle.log"))
    time.sleep(3)
    idle = sample(daemon.proc.pid, args.seconds)
    figures["resident memory, median (max; anonymous), MiB"] = "%.2f (%.2f; %.2f)" % (
        idle["rss"], idle["rss_max"], idle["anon"])
    figures["threads"] = str(idle["threads"])
    figures[f"wake-ups in {args.seconds} s, nothing due (1 h interval)"] = str(idle["wakeups"])
    figures["wake-ups a second, 1 s interval, 3 remotes, nothing moves (of notify's thread)"] = "%.1f (%.1f)" % (
        busy["wakeups"] / args.seconds, busy["watcher_wakeups"] / args.seconds)
    figures["resident memory at a 1 s interval, median, MiB"] = "%.2f" % busy["rss"]

    # Branch moves: commits the node already has, so each move runs the one-step plan.
    for i in range(args.moves):
        git("-C", src, "commit", "-q", "--allow-empty", "-m", f"move {i}", env=env)
    git("--git-dir", repo, "fetch", "-q", src, "main:refs/bench/main", env=env)
    commits = git("--git-dir", repo, "rev-list", "--reverse", "HEAD..refs/bench/main").split()
    latencies, git_times = [], []
    for i, commit in enumerate(commits, 1):
        before = time.time()
        git("--git-dir", repo, "update-ref", "refs/heads/main", commit, env=env)
        git_times.append(1000 * (time.time() - before))
        daemon.wait(lambda: len(daemon.lines("branch ref moved")) >= i, "the branch move")
        latencies.append(1000 * (logged_at(daemon.lines("branch ref moved")[i - 1]) - before))
        daemon.wait(lambda: len(daemon.lines("run finished")) >= i, "the run")
        time.sleep(0.1)
    figures["branch move noticed, from the start of `git update-ref`, median (max), ms"] = "%.1f (%.1f)" % (
        statistics.median(latencies), max(latencies))
    figures["`git update-ref` itself, median, ms"] = "%.1f" % statistics.median(git_times)

    latencies = []
    for i in range(1, args.moves + 1):
        before = time.time()
        with open(config, "a") as f:
            f.write(f"# edit {i}\n")
        daemon.wait(lambda: len(daemon.lines("config reloaded")) >= i, "the reload")
        latencies.append(1000 * (logged_at(daemon.lines("config reloaded")[i - 1]) - before))
        time.sleep(0.1)
    figures["config edit noticed, median (max), ms"] = "%.1f (%.1f)" % (statistics.median(latencies), max(latencies))
    extra = len(daemon.lines("config reloaded")) - args.moves
    figures["reloads beyond one per edit"] = str(extra)
    daemon.stop()
    return figures


def main():
    load = open("/proc/loadavg").read().split()[:3]
    results = {}
    for spec in args.binaries:
        label, _, binary = spec.partition("=")
        work = tempfile.mkdtemp(prefix="troops-watch-bench.")
        print(f"== {label}: {binary}", file=sys.stderr)
        try:
            results[label] = measure(os.path.abspath(binary), work)
        finally:
            if os.environ.get("BENCH_KEEP"):
                print(f"kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work)
    labels = list(results)
    print("| | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for key in results[labels[0]]:
        print(f"| {key} | " + " | ".join(results[label][key] for label in labels) + " |")
    print()
    print(f"Load average {' '.join(load)} at the start, {' '.join(open('/proc/loadavg').read().split()[:3])} at the end; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}.")


main()
