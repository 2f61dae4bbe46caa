"""How a stack change reports its steps, on every backend: a `progress` callback, and the timed
notes of one change ("[ 0.71s] stopped app-4"), which up() also returns as its list of what it did."""
from __future__ import annotations

import time
from typing import Callable

Progress = Callable[[str], None]


def quiet(_message: str) -> None:
    pass


def recorder(say: Progress, done: list[str] | None = None) -> tuple[list[str], Progress]:
    """(done, note): note(message) keeps the line in `done` (a new list, or the one given) and says it
    with the seconds since now."""
    started = time.monotonic()
    done = [] if done is None else done

    def note(message: str) -> None:
        done.append(message)
        say(f"[{time.monotonic() - started:5.2f}s] {message}")
    return done, note
