"""What a failed up() put back, and what it could not: said with the original error, never swallowed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class RollbackReport:
    restored: list[str] = field(default_factory=list)
    failed: list[tuple[str, BaseException]] = field(default_factory=list)

    def attempt(self, what: str, step: Callable[[], object]) -> None:
        """Run one restoring step; a failure is recorded and the next step still runs."""
        try:
            step()
            self.restored.append(what)
        except Exception as exc:   # noqa: BLE001 - every failure is kept and reported
            self.failed.append((what, exc))

    def summary(self) -> str:
        lines = ["rolled back: " + ("; ".join(self.restored) if self.restored else "nothing needed restoring")]
        for what, exc in self.failed:
            lines.append(f"could NOT restore: {what}: {type(exc).__name__}: {exc}")
        if self.failed:
            lines.append("the stack may differ from its last applied topology: status() shows what runs, "
                         "up() tries again")
        return "\n".join(lines)

    def attach(self, exc: BaseException) -> None:
        """Add the summary to the error being raised (shown under its traceback)."""
        exc.add_note(self.summary())
