"""Helpers shared by check functions: run the learner's function on cases, compare numbers."""
from __future__ import annotations

import math

from ..registry import Verdict


def close(a, b, rel: float = 1e-6) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def first_mismatch(fn, cases, reference, compare=close, describe=repr) -> Verdict:
    """Call fn(*args) for each case; the first answer unlike reference(*args) fails the check."""
    if not callable(fn):
        return Verdict(False, "a function", fn, f"Pass the function itself (no parentheses), got {type(fn).__name__}.")
    for args in cases:
        expected, got = reference(*args), fn(*args)
        if not compare(got, expected):
            return Verdict(False, expected, got, f"Wrong for {describe(args)}.")
    return Verdict(True, detail=f"Right on all {len(cases)} cases.")


def number_within(got, expected: float, rel: float, what: str) -> Verdict:
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        return Verdict(False, f"a number near {expected:g}", got, f"{what}: give a number.")
    if abs(got - expected) > rel * abs(expected):
        return Verdict(False, f"{expected:g} (within {rel:.0%})", got, f"{what}: off by {abs(got - expected) / expected:.0%}.")
    return Verdict(True, expected, got, f"{what}: {got:g}, within {rel:.0%} of {expected:g}.")
