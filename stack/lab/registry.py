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
    hint: str | None = None   # the hint that fits this failure (else the ladder's first rung)
    inconclusive: bool = False   # the machine was too busy to measure: not the learner's fault
    crashed: bool = False        # the course's own code raised: the check could not judge at all


@dataclass(frozen=True)
class Check:
    name: str
    lab: str
    title: str
    run: Callable[..., Verdict]
    hints: tuple[str, ...] = field(default_factory=tuple)
    needs_stack: bool = False
    # Stack-state checks: what solve() applies so a stuck learner can go on.
    solution_state: dict | None = None


CHECKS: dict[str, Check] = {}


def check_definition(name: str, lab: str, title: str, hints: tuple[str, ...], needs_stack: bool = False,
                     solution_state: dict | None = None):
    """Decorator: register `fn(answer) -> Verdict` as the check `name`.

    A stack-state check (`solution_state` given) takes no answer: it reads the live
    stack the learner changed, and `solve(name)` applies `solution_state` to it.
    """
    def register(fn):
        if name in CHECKS:
            raise ValueError(f"check {name!r} is defined twice")
        CHECKS[name] = Check(name, lab, title, fn, tuple(hints), needs_stack or solution_state is not None,
                             solution_state)
        return fn
    return register
