"""Every lab check rejects the starter code and accepts the solution, run in a real kernel."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from stack.lab import registry
from stack.lab.make_labs import main as make_labs

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted(p.name for p in (ROOT / "labs").glob("*.ipynb"))


def run_notebook(path: Path, progress_file: Path) -> dict:
    """Execute a notebook in a fresh kernel; return the progress it recorded."""
    nb = nbformat.read(path, as_version=4)
    previous = os.environ.get("SCALELAB_PROGRESS")
    os.environ["SCALELAB_PROGRESS"] = str(progress_file)   # the kernel inherits it
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ["SCALELAB_PROGRESS"] = previous or ""
    return json.loads(progress_file.read_text())["checks"]


def lab_checks(lab_file: str) -> set[str]:
    lab = "lab" + lab_file[:2]
    return {name for name, spec in registry().items() if spec.lab == lab}


def test_labs_are_generated_from_the_solutions():
    assert make_labs(["--check"]) == 0


def test_every_lab_has_at_least_four_checks_with_hint_ladders():
    assert LABS, "no labs found"
    for lab in LABS:
        checks = lab_checks(lab)
        assert len(checks) >= 4, (lab, checks)
        text = (ROOT / "labs" / lab).read_text()
        for name in checks:
            assert f'check(\\"{name}\\"' in text, f"{lab} never runs check {name!r}"
            assert len(registry()[name].hints) >= 2


@pytest.mark.parametrize("lab", LABS)
def test_starter_is_rejected_by_every_check(lab, tmp_path):
    recorded = run_notebook(ROOT / "labs" / lab, tmp_path / "progress.json")
    for name in lab_checks(lab):
        assert recorded[name]["attempts"] >= 1, f"{name} was never checked"
        assert recorded[name]["passed"] is False, f"{name} accepted the starter code"


@pytest.mark.parametrize("lab", LABS)
def test_solution_passes_every_check(lab, tmp_path):
    recorded = run_notebook(ROOT / "solutions" / lab, tmp_path / "progress.json")
    for name in lab_checks(lab):
        assert recorded[name]["passed"] is True, f"{name} rejected the solution"
