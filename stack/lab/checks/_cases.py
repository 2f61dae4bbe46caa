"""Helpers shared by check functions: run the learner's function on cases, compare numbers,
and recognise the usual wrong turns so the hint fits the mistake."""
from __future__ import annotations

import math

from ..registry import Verdict


def close(a, b, rel: float = 1e-6) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def _diagnose(args, got, compare, wrong_turns) -> str | None:
    """The hint of the first known mistake that gives exactly the learner's answer on this case."""
    for mistake, hint in wrong_turns:
        try:
            if compare(got, mistake(*args)):
                return hint
        except Exception:  # noqa: BLE001 - a mistake model may not apply to every case
            continue
    return None


def first_mismatch(fn, cases, reference, compare=close, describe=repr, wrong_turns=()) -> Verdict:
    """Call fn(*args) for each case; the first answer unlike reference(*args) fails the check.

    `wrong_turns`: (mistaken_function, hint) pairs; when the learner's answer matches a
    mistake, the verdict carries that mistake's hint instead of the ladder's first rung.
    """
    if not callable(fn):
        return Verdict(False, "a function", fn, f"Pass the function itself (no parentheses), got {type(fn).__name__}.")
    for args in cases:
        expected, got = reference(*args), fn(*args)
        if not compare(got, expected):
            return Verdict(False, expected, got, f"Wrong for {describe(args)}.",
                           hint=_diagnose(args, got, compare, wrong_turns))
    return Verdict(True, detail=f"Right on all {len(cases)} cases.")
