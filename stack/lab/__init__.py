"""Lab checks that answer at once: what was expected, what came back, and a hint.

    from stack.lab import check, hint, progress
    check("percentile", percentile)     # runs the check named "percentile" on your function
    hint("percentile")                  # the next hint on the ladder, one more each call
    progress()                          # which checks pass, across every lab
"""
from .checker import CheckResult, check, hint, progress, registry

__all__ = ["check", "hint", "progress", "registry", "CheckResult"]
