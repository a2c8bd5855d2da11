"""Samples a running process once a second: sample.py PID SECONDS.

Prints one line: the median and max resident memory (VmRSS) in MiB, the median of its anonymous
part (RssAnon) in MiB, CPU use in percent of one core (all threads, live or gone), and voluntary
context switches per second of the threads alive at both ends (threads that come and go within a
cycle are not counted)."""
import os
import sys
import time

pid, seconds = sys.argv[1], int(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")


def cpu():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime of the whole process


def status(key, path=f"/proc/{pid}/status"):
    for line in open(path):
        if line.startswith(key + ":"):
            return int(line.split()[1])


def switches():
    counts = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            counts[task] = status("voluntary_ctxt_switches", f"/proc/{pid}/task/{task}/status")
        except FileNotFoundError:
            pass
    return counts


def median(values):
    return sorted(values)[len(values) // 2]


c0, s0, t0 = cpu(), switches(), time.monotonic()
rss, anon = [], []
for _ in range(seconds):
    time.sleep(1)
    rss.append(status("VmRSS"))
    anon.append(status("RssAnon"))
c1, s1, t1 = cpu(), switches(), time.monotonic()
woke = sum(s1[t] - s0[t] for t in s1 if t in s0)
print(median(rss) / 1024, max(rss) / 1024, median(anon) / 1024, 100 * (c1 - c0) / (t1 - t0), woke / (t1 - t0))
