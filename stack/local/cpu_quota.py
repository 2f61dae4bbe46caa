"""Per-replica CPU quotas with Linux cgroups (what docker's `cpus: "0.5"` does).

cgroup v2 (modern laptops): write "quota period" to cpu.max. cgroup v1 (some
servers and containers): cpu.cfs_quota_us / cpu.cfs_period_us. Both need
permission to create cgroups (root, or a delegated subtree). Where there is no
way, `support()` says why in plain words, and the course falls back to the
concurrency model (app.concurrency), labelled as such.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..quota import Support

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def support() -> Support:
    if not ROOT.exists():
        return Support(False, "none", "this system has no /sys/fs/cgroup (macOS or Windows)")
    v2_controllers = ROOT / "cgroup.controllers"
    if v2_controllers.exists() and "cpu" in v2_controllers.read_text().split():
        layout, base = "v2", ROOT
    elif (ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        layout, base = "v1", ROOT / "cpu"
    else:
        return Support(False, "none", "the cpu controller is not mounted here")
    if not os.access(base, os.W_OK):
        return Support(False, layout, f"this user may not create cgroups under {base} (run as root)")
    return Support(True, layout, "")


def _group(name: str, layout: str) -> Path:
    return (ROOT if layout == "v2" else ROOT / "cpu") / "scalelab" / name


def set_quota(name: str, pid: int, cores: float | None) -> None:
    """Put `pid` in cgroup `name` limited to `cores` CPUs (None lifts the limit)."""
    info = support()
    if cores is None and not info.available:
        return
    info.require()
    group = _group(name, info.layout)
    if info.layout == "v2":
        # Children of a v2 group only get the cpu controller if the parent delegates it.
        for parent in (ROOT, group.parent):
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text("+cpu")
    group.mkdir(parents=True, exist_ok=True)
    quota = -1 if cores is None else max(1000, int(cores * PERIOD_US))
    if info.layout == "v2":
        (group / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {PERIOD_US}")
    else:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    (group / "cgroup.procs").write_text(str(pid))


def remove(name: str) -> None:
    """Delete the group once its process has exited (a cgroup with members cannot be removed)."""
    info = support()
    if info.layout == "none":
        return
    group = _group(name, info.layout)
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
