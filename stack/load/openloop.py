"""The open loop's requests on the fast client: no task per request while a connection is idle.

A task, its coroutines and a Future per request cost the open loop about half
its CPU; sent with FastClient.send_now(), a request is one small object that
the connection reports to. When every connection is busy (or none is open
yet) the request goes through FastClient.send() in a task, which waits for one.
"""
from __future__ import annotations

from .clients import classify
from .recorder import Recorder


class Scheduled:
    """One open-loop request's outcome, recorded with its latency from the intended send time."""

    __slots__ = ("rec", "label", "intended")

    def __init__(self, rec: Recorder, label: str, intended: float):
        self.rec, self.label, self.intended = rec, label, intended

    def set_result(self, outcome) -> None:
        status, replica, _, done_at = outcome
        self.rec.response(self.label, status, replica, done_at - self.intended)

    def set_exception(self, exc: BaseException) -> None:
        self.rec.failure(self.label, classify(exc), exc)
