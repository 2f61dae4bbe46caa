"""Lab checks that answer at once: what was expected, what came back, and a hint.

    from stack.lab import check, hint, progress
    check("percentile", percentile)     # runs the check named "percentile" on your function
    hint("percentile")                  # the next hint on the ladder, one more each call
    progress()                          # which checks pass, across every lab
    check("capacity_plan")              # a stack-state check: measures the live stack as you left it
    solve("capacity_plan")              # stuck? apply the solution's stack state (counted as skipped)
    reset()                             # the stack back to this lab's starting topology
    predict("name", 300)                # commit a prediction before an experiment
"""
from ..course.predictions import predict, reveal
from ..course.start import reset, start
from .checker import CheckResult, check, hint, progress, registry, solve

__all__ = ["check", "hint", "progress", "registry", "solve", "reset", "start", "predict", "reveal",
           "CheckResult"]
