"""The busy-machine note: measured with a real process burning a core."""
from __future__ import annotations

import subprocess
import sys
import time

from stack.course import machine


def test_a_process_burning_a_core_is_measured_and_named():
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        total, busiest = machine.busy_cores(0.5)
        note = machine.busy_note(0.5)
    finally:
        burner.kill()
        burner.wait()
    assert total >= 0.6, total                           # a whole core, give or take a busy machine
    assert any(f"pid {burner.pid}" in name and share >= 0.5 for name, share in busiest), busiest
    assert note is not None and f"pid {burner.pid}" in note and "cores" in note, note
