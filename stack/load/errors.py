"""The one error the load generator raises for bad input."""
from __future__ import annotations

from ..errors import StackError


class LoadSpecError(ValueError, StackError):
    """A load setting has a value that is not allowed; names field, value and what is."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")


def number_in(field: str, value, low: float, high: float, *, low_open: bool = False) -> None:
    """Raise LoadSpecError unless `value` is a real number within the bounds."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        allowed = (f"a number greater than {low:g} and at most {high:g}" if low_open
                   else f"a number from {low:g} to {high:g}")
        raise LoadSpecError(field, value, allowed)


def int_in(field: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LoadSpecError(field, value, f"an integer from {low} to {high}")


def one_of(field: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise LoadSpecError(field, value, "one of " + ", ".join(map(repr, allowed)))
