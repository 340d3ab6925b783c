"""Timing of GPU calls for the benchmark scripts (a sibling script module: ops_gpu.py, kernel_parts.py)."""

from __future__ import annotations

import statistics
import time


def time_call_batches(call, sync, *, target_s: float = 0.1, samples: int = 15, warmup: int = 3) -> list[float]:
  """Seconds per call of each of `samples` batches of calls lasting about target_s, synchronised after each
  batch only: a sync per call would add its launch and host round trip (~0.1-0.2 ms) to every call.
  Each batch still starts on an idle device and waits for the host to dispatch its first call, and a call of many
  kernels dispatches slowly (jit arguments, a launch per kernel: ~0.3-0.4 ms before its first kernel runs for gla's
  fwd+bwd). H200, B=4 T=4096 H=16 D=128 bf16 fwd+bwd (benchmarks/README.md, twelfth session): gla's kernels
  2.504-2.508 ms per call in 25-ms batches (10 calls), 2.443-2.446 in 100-ms batches and 2.426-2.429 in 400-ms
  ones, against 2.442 ms of device busy time in the profiler; cuDNN softmax 2.20-2.25 at every length. Hence 100 ms:
  a steady stream of calls, as in training, within ~1% of the device time, for every implementation alike."""
  for _ in range(warmup):
    sync(call())
  t0 = time.perf_counter()
  sync(call())
  one = max(time.perf_counter() - t0, 1e-6)
  reps = max(1, min(1000, int(target_s / one)))
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
