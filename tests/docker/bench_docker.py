"""Figures for the Docker backend, repeated for medians (not part of any test run).

    DOCKER_HOST=unix:///run/scalelab-docker/docker.sock .venv/bin/python tests/docker/bench_docker.py [--runs 3]

(start the tier's engine first: `bash stack/scripts/docker-tier.sh start`; stop it after:
`bash stack/scripts/docker-tier.sh stop`). Measures, from built images: cold up (fresh
volumes: initdb + seed + pg_basebackup) and warm up to every service healthy; scale
4->6 and 6->4; strategy, TTL and replica-delay changes; down; and the CPU the engine
spends on health checks while the stack idles.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stack.docker import DockerStack  # noqa: E402
from stack.ports import port_is_free  # noqa: E402
from stack.topology import Topology  # noqa: E402


def free_base(start: int = 26800) -> int:
    for base in range(start, 60000, 64):
        if all(port_is_free(p) for p in range(base, base + 32)):
            return base
    raise RuntimeError("no free ports")


def engine_cpu_seconds() -> float:
    """CPU (self + reaped children) of the engine's processes: dockerd, containerd, shims."""
    pids = subprocess.run(["pgrep", "-f", "dockerd --data-root|containerd"], capture_output=True,
                          text=True).stdout.split()
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])     # utime stime cutime cstime
        except (FileNotFoundError, IndexError):
            pass
    return total / 100


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="scalelab-bench-"))
    stack = DockerStack(tmp / "state")
    topology = Topology(base_port=free_base())

    def timed(name, fn, *a, **kw):
        started = time.monotonic()
        fn(*a, **kw)
        figures.setdefault(name, []).append(time.monotonic() - started)

    try:
        stack.build(progress=print)
        for _ in range(args.runs):
            timed("up cold (fresh volumes), s", stack.up, topology)
            timed("down, s", stack.down)
            timed("up warm (kept volumes), s", stack.up, topology)
            for _ in range(2):
                timed("scale 4->6, s", stack.apply, replicas=6)
                timed("scale 6->4, s", stack.apply, replicas=4)
                timed("strategy change, s", stack.apply, strategy="round_robin")
                timed("strategy change, s", stack.apply, strategy="least_conn")
                timed("TTL change, s", stack.apply, ttl_s=30)
                timed("TTL change, s", stack.apply, ttl_s=300)
                timed("replica delay change, s", stack.apply, replica_delay_ms=500)
                timed("replica delay change, s", stack.apply, replica_delay_ms=0)
            stack.down(purge=True)
        stack.up(topology)
        time.sleep(6)
        before, started = engine_cpu_seconds(), time.monotonic()
        time.sleep(30)
        idle = (engine_cpu_seconds() - before) / (time.monotonic() - started)
        figures["engine CPU while idle (health checks), cores"] = [idle]
    finally:
        stack.down(purge=True)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {name: {"median": round(statistics.median(v), 3), "max": round(max(v), 3), "n": len(v)}
               for name, v in figures.items()}
    for name, s in summary.items():
        print(f"{name:48} median {s['median']:7.3f}   max {s['max']:7.3f}   (n={s['n']})")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
