"""Timing of GPU calls for the benchmark scripts (a sibling script module: ops_gpu.py, kernel_parts.py)."""

from __future__ import annotations

import statistics
import time


def time_call_batches(call, sync, *, target_s: float = 0.025, samples: int = 15, warmup: int = 3) -> list[float]:
  """Seconds per call of each of `samples` batches of calls lasting about target_s, synchronised after each
  batch only: a sync per call would add its launch and host round trip (~0.1-0.2 ms) to every call."""
  for _ in range(warmup):
    sync(call())
  t0 = time.perf_counter()
  sync(call())
  one = max(time.perf_counter() - t0, 1e-6)
  reps = max(1, min(200, int(target_s / one)))
  times = []
  for _ in range(samples):
    t0 = time.perf_counter()
    out = None
    for _ in range(reps):
      out = call()
    sync(out)
    times.append((time.perf_counter() - t0) / reps)
  return times


def time_calls(call, sync, **kwargs) -> float:
  """Median seconds per call (time_call_batches)."""
  return statistics.median(time_call_batches(call, sync, **kwargs))
