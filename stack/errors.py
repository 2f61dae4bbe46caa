"""Errors the stack raises. Each message says what was wrong and what to do."""


class StackError(RuntimeError):
    """Base class: something about the stack could not be done."""


class TopologyError(ValueError, StackError):
    """A topology field has a value that is not allowed."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")


class BinaryNotFoundError(StackError):
    """A server binary could not be found in any of the places checked."""


class PortInUseError(StackError):
    """A port the stack needs is already bound by another process."""


class ServiceFailedError(StackError):
    """A service did not start or did not become healthy in time."""


class UnknownServiceError(ValueError, StackError):
    """A service name that the stack does not run."""

    def __init__(self, value, allowed: list[str], field: str = "service"):
        self.field, self.value, self.allowed = field, value, list(allowed)
        choices = ", ".join(map(repr, self.allowed)) if self.allowed else "none (nothing runs: call up() first)"
        super().__init__(f"{field}={value!r} is not allowed: one of {choices}. Nothing was changed.")
