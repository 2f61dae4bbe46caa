"""Progress across labs: which checks passed and how many hints were taken, in one JSON file."""
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
        return json.loads(progress_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"checks": {}, "hints": {}}


def save(data: dict) -> None:
    path = progress_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def record_check(name: str, passed: bool) -> None:
    data = load()
    entry = data["checks"].setdefault(name, {"attempts": 0, "passed": False})
    entry["attempts"] += 1
    entry["last"] = "pass" if passed else "fail"
    entry["passed"] = entry["passed"] or passed
    entry["time"] = time.time()
    save(data)


def next_hint_level(name: str) -> int:
    data = load()
    level = data["hints"].get(name, 0) + 1
    data["hints"][name] = level
    save(data)
    return level
