"""Where checks are declared: one small function per check, with its hint ladder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Verdict:
    """What a check function returns: pass/fail, and what it compared."""
    passed: bool
    expected: object = None
    got: object = None
    detail: str = ""          # one sentence on what was tried, e.g. the failing input


@dataclass(frozen=True)
class Check:
    name: str
    lab: str
    title: str
    run: Callable[..., Verdict]
    hints: tuple[str, ...] = field(default_factory=tuple)
    needs_stack: bool = False


CHECKS: dict[str, Check] = {}


def check_definition(name: str, lab: str, title: str, hints: tuple[str, ...], needs_stack: bool = False):
    """Decorator: register `fn(answer) -> Verdict` as the check `name`."""
    def register(fn):
        if name in CHECKS:
            raise ValueError(f"check {name!r} is defined twice")
        CHECKS[name] = Check(name, lab, title, fn, tuple(hints), needs_stack)
        return fn
    return register
