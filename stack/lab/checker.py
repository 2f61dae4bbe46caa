"""check(), hint() and progress(): the three calls a lab notebook makes."""
from __future__ import annotations

import html
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..course import progress_store
from .registry import CHECKS, Check, Verdict


PACKAGE_DIR = Path(__file__).resolve().parents[1]   # the `stack` package


def registry() -> dict[str, Check]:
    from . import checks  # noqa: F401 - importing registers every lab's checks
    return CHECKS


def _short(value, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class CheckResult:
    name: str
    title: str
    passed: bool
    expected: object
    got: object
    message: str
    hint: str | None

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        lines = [f"[{mark}] {self.name}: {self.title}", f"  {self.message}"]
        if not self.passed:
            lines += [f"  expected: {_short(self.expected)}", f"  got:      {_short(self.got)}"]
            if self.hint:
                lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color, mark = ("#1a7f37", "&#10004;") if self.passed else ("#cf222e", "&#10008;")
        rows = "" if self.passed else (
            f"<div><b>expected</b> <code>{html.escape(_short(self.expected))}</code></div>"
            f"<div><b>got</b> <code>{html.escape(_short(self.got))}</code></div>"
            + (f"<div><b>hint</b> {html.escape(self.hint)}</div>" if self.hint else ""))
        return (f'<div style="border-left:4px solid {color};padding:4px 10px;margin:4px 0">'
                f'<b style="color:{color}">{mark} {html.escape(self.name)}</b>: {html.escape(self.title)}'
                f"<div>{html.escape(self.message)}</div>{rows}</div>")


def _unknown(name: str) -> KeyError:
    known = ", ".join(sorted(registry()))
    return KeyError(f"no check named {name!r}: known checks are {known}")


_NO_ANSWER = object()


def check(name: str, answer=_NO_ANSWER) -> CheckResult:
    """Run the check `name` on your answer (a value or a function) and say at once how it went.

    A stack-state check takes no answer: `check("name")` measures the live stack as you left it.
    """
    checks = registry()
    if name not in checks:
        raise _unknown(name)
    spec = checks[name]
    stack_state = spec.solution_state is not None
    if stack_state and answer is not _NO_ANSWER:
        raise TypeError(f"check({name!r}) takes no answer: it measures the live stack. Change the stack "
                        f"(stack.apply(...)), then run check({name!r}).")
    if not stack_state and answer is _NO_ANSWER:
        raise TypeError(f"check({name!r}, answer) needs your answer as its second argument")
    return _judge(spec, (answer,) if not stack_state else ())


def _judge(spec: Check, args: tuple, skipped: bool = False) -> CheckResult:
    """Run one check, record the attempt (an inconclusive one as such, never as a pass), say how it went."""
    name = spec.name
    try:
        verdict = spec.run(*args)
    except NotImplementedError:
        verdict = Verdict(False, "your code", "NotImplementedError",
                          "Not written yet: replace `raise NotImplementedError` with your code.")
    except Exception as exc:  # noqa: BLE001 - the learner's code may fail in any way: say how
        where = traceback.extract_tb(exc.__traceback__)[-1]
        if Path(where.filename).resolve().is_relative_to(PACKAGE_DIR):
            # Raised inside the course's own code (the check, or the stack it drives).
            verdict = Verdict(False, "a working check", f"{type(exc).__name__}: {exc}",
                              f"The check could not run: {type(exc).__name__}: {exc} "
                              f"({Path(where.filename).name}, line {where.lineno}).", crashed=True)
        else:
            verdict = Verdict(False, "an answer", f"{type(exc).__name__}: {exc}",
                              f"Your code raised {type(exc).__name__} (line {where.lineno}): {exc}")
    if verdict.passed:
        message = verdict.detail or "Correct."
    else:
        message = verdict.detail or "Not yet."
    if verdict.inconclusive:
        message = "Inconclusive, not your fault: " + message
    progress_store.record_check(name, verdict.passed and not skipped, skipped=skipped,
                                inconclusive=verdict.inconclusive, crashed=verdict.crashed)
    first_hint = None
    if not verdict.passed:
        first_hint = verdict.hint or (spec.hints[0] if spec.hints else None)
    return CheckResult(name, spec.title, verdict.passed, verdict.expected, verdict.got, message, first_hint)


def solve(name: str, progress=print) -> CheckResult:
    """For a stack-state check: apply the solution's stack state so you can go on, then run the check.

    It counts as solved-by-skip in progress(), not as passed."""
    checks = registry()
    if name not in checks:
        raise _unknown(name)
    spec = checks[name]
    if spec.solution_state is None:
        raise ValueError(f"solve({name!r}) is only for checks that measure the live stack; "
                         f"for {name!r}, hint({name!r}) climbs the hint ladder")
    from .. import get_stack
    get_stack().apply(**spec.solution_state)
    if progress:
        progress(f"applied {spec.solution_state} to the stack")
    return _judge(spec, (), skipped=True)


@dataclass(frozen=True)
class Hint:
    name: str
    level: int
    total: int
    text: str

    def __repr__(self) -> str:
        return f"Hint {self.level}/{self.total} for {self.name}: {self.text}"

    def _repr_html_(self) -> str:
        return (f'<div style="border-left:4px solid #9a6700;padding:4px 10px"><b>Hint {self.level}/{self.total}'
                f"</b> for <code>{html.escape(self.name)}</code>: {html.escape(self.text)}</div>")


def hint(name: str) -> Hint:
    """The next hint for a check: each call climbs one rung, the last rung is nearly the answer."""
    checks = registry()
    if name not in checks:
        raise _unknown(name)
    hints = checks[name].hints
    level = min(progress_store.next_hint_level(name), len(hints))
    return Hint(name, level, len(hints), hints[level - 1])


@dataclass(frozen=True)
class Progress:
    rows: list  # (lab, name, title, passed, attempts, skipped)

    @property
    def passed(self) -> int:
        return sum(1 for row in self.rows if row[3])

    @property
    def all_passed(self) -> bool:
        return bool(self.rows) and self.passed == len(self.rows)

    def lab(self, lab: str) -> "Progress":
        return Progress([row for row in self.rows if row[0] == lab])

    def __repr__(self) -> str:
        lines = [f"{self.passed}/{len(self.rows)} checks pass"]
        lines += [f"  {'PASS' if ok else ('SKIP' if skip else '    ')} {lab:8} {name:28} {title}"
                  for lab, name, title, ok, _, skip in self.rows]
        if any(row[5] and not row[3] for row in self.rows):
            lines.append("  (SKIP: solved with solve(), not yet by you)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{html.escape(lab)}</td><td><code>{html.escape(name)}</code></td><td>{html.escape(title)}</td>"
            f"<td>{'&#10004;' if ok else ('skipped with solve()' if skip else ('&#10008;' if tries else ''))}</td></tr>"
            for lab, name, title, ok, tries, skip in self.rows)
        return (f"<b>{self.passed}/{len(self.rows)} checks pass</b><table><tr><th>lab</th><th>check</th>"
                f"<th>what</th><th></th></tr>{body}</table>")


def progress() -> Progress:
    data = progress_store.load()["checks"]
    rows = []
    for name, spec in sorted(registry().items(), key=lambda item: (item[1].lab, item[0])):
        entry = data.get(name, {})
        rows.append((spec.lab, name, spec.title, entry.get("passed", False), entry.get("attempts", 0),
                     entry.get("skipped", False)))
    return Progress(rows)
