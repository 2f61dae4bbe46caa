"""Progress across lessons and labs, in one JSON file: which checks passed (or were skipped
with solve()), how many hints were taken, and the predictions committed before experiments."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def progress_path() -> Path:
    env = os.environ.get("SCALELAB_PROGRESS")
    return Path(env) if env else Path.home() / ".scalelab" / "progress.json"


def load() -> dict:
    try:
        data = json.loads(progress_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    for section in ("checks", "hints", "predictions"):
        data.setdefault(section, {})
    return data


def save(data: dict) -> None:
    path = progress_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def record_check(name: str, passed: bool, skipped: bool = False, inconclusive: bool = False,
                 crashed: bool = False) -> None:
    """One attempt at a check; `skipped`: solve() applied the solution, so it counts as solved-by-skip;
    `inconclusive`: the machine was too busy to measure (an attempt, neither pass nor the learner's fail);
    `crashed`: the course's own code raised, so nothing was judged (recorded as "error")."""
    data = load()
    entry = data["checks"].setdefault(name, {"attempts": 0, "passed": False})
    entry["attempts"] += 1
    entry["last"] = ("skip" if skipped else "error" if crashed else "inconclusive" if inconclusive
                     else "pass" if passed else "fail")
    if skipped:
        entry["skipped"] = True
    elif passed:
        entry["passed"] = True
    entry["time"] = time.time()
    save(data)


def record_prediction(name: str, value, unit: str, at: float) -> None:
    data = load()
    data["predictions"][name] = {"value": value, "unit": unit, "at": at}
    save(data)


def forget_prediction(name: str) -> None:
    data = load()
    if data["predictions"].pop(name, None) is not None:
        save(data)


def next_hint_level(name: str) -> int:
    data = load()
    level = data["hints"].get(name, 0) + 1
    data["hints"][name] = level
    save(data)
    return level
