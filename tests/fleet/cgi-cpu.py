#!/usr/bin/python3 -S
"""Runs `git http-backend` as a CGI for fcgiwrap and appends the CPU seconds it used to $CPU_LOG.

fcgiwrap ignores SIGCHLD, so the CGIs it runs are reaped by the kernel and their CPU never lands
in any /proc cutime: this wrapper waits for http-backend (which waits for upload-pack) and writes
down its rusage, so the fleet harness can add it to nginx's and fcgiwrap's own CPU. This
process's own CPU (Python's start) is not counted: a real mirror runs http-backend directly.
"""

import os
import sys

pid = os.fork()
if pid == 0:
    os.execv("/usr/lib/git-core/git-http-backend", ["git-http-backend"])
_, status, usage = os.wait4(pid, 0)
with open(os.environ["CPU_LOG"], "a") as log:
    log.write(f"{usage.ru_utime + usage.ru_stime:.6f}\n")
sys.exit(os.waitstatus_to_exitcode(status))
