"""How busy the machine is with work other than the course's.

Every timing a lesson measures shares the cores with whatever else runs: a
browser playing video, a build, another notebook's load. start() asks once,
while the stack is idle, and says so when other work takes a real part of the
CPU, naming the busiest processes, so that a claim that misses later is read
in that light rather than as the lesson being wrong.
"""
from __future__ import annotations

import os
import time

import psutil

BUSY_CORES = 0.5          # other work on more than half a core is worth a word


def busy_cores(seconds: float = 0.3) -> tuple[float, list[tuple[str, float]]]:
    """Cores in use over `seconds` (all processes), and the busiest ones as (name, cores)."""
    procs = []
    for proc in psutil.process_iter(["name"]):
        try:
            proc.cpu_percent(None)                   # the first call starts the process's interval
            procs.append(proc)
        except psutil.Error:
            pass
    psutil.cpu_percent(None)
    time.sleep(seconds)
    total = psutil.cpu_percent(None) / 100 * (psutil.cpu_count() or 1)
    busiest = []
    for proc in procs:
        try:
            share = proc.cpu_percent(None) / 100
        except psutil.Error:
            continue
        if share >= 0.05 and proc.pid != os.getpid():
            busiest.append((f"{proc.info['name']} (pid {proc.pid})", share))
    busiest.sort(key=lambda item: -item[1])
    return total, busiest[:3]


def busy_note(seconds: float = 0.3) -> str | None:
    """A sentence for the learner when other work takes more than BUSY_CORES now, else None."""
    total, busiest = busy_cores(seconds)
    if total < BUSY_CORES:
        return None
    cores = psutil.cpu_count() or 1
    who = ", ".join(f"{name} {share:.1f}" for name, share in busiest) or "no single process stands out"
    return (f"Note: other work is using {total:.1f} of this machine's {cores} cores while the stack is idle "
            f"(busiest, in cores: {who}). Every timing in this notebook competes with it: a measured claim "
            f"may miss. Close what you can, then re-run.")
