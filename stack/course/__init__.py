"""What lessons call: start() the stack at the lesson's topology, predict() before an experiment,
the experiments and their plots, then reveal() the gap between prediction and measurement."""
from .predictions import predict, reveal
from .start import reset, start

__all__ = ["predict", "reveal", "reset", "start"]
