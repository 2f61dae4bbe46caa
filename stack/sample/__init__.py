"""Sampling the running stack into a time series (see sampler.Sampler)."""
from .model import CacheSample, PoolerSample, PostgresSample, ReplicaSample, Sample
from .sampler import Sampler, samples_frame

__all__ = ["Sampler", "Sample", "ReplicaSample", "CacheSample", "PostgresSample", "PoolerSample",
           "samples_frame"]
