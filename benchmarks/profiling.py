"""Device time per kernel from jax's profiler (shared by kernel_profile.py and train_throughput.py).

profile(call, iters, warmup) runs call() under jax.profiler.trace(create_perfetto_trace=True) and reads the
trace's device events: CUPTI kernel records on the GPU's stream threads. On CPU there are none (empty result).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile
import time

import jax

DEVICE_PREFIX = '/device:GPU'
# Kernel name prefixes of effattn's own Pallas / Mosaic GPU kernels (their pallas_call `name=`), then the others.
EFFATTN_KERNELS = ('gla_', 'gated_delta_rule_', 'simple_gla_', 'block_states', 'sigmoid_attention', 'softmax_attention',
                   'flash', 'entry_mosaic_gpu')
CATEGORIES = (('effattn kernels', lambda n: n.startswith(EFFATTN_KERNELS)),
              ('cuDNN attention', lambda n: 'cudnn' in n.lower()),
              ('matmuls', lambda n: any(s in n.lower() for s in ('gemm', 'xmma', 'nvjet', 'cutlass', 'dot'))),
              ('memcpy / memset', lambda n: n.startswith(('Memcpy', 'Memset'))),
              ('other XLA (elementwise, reductions, optimizer)', lambda n: True))


def device_kernel_times(events: list[dict], iters: int, device_prefix: str = DEVICE_PREFIX) -> dict:
  """{'kernels': [{name, calls, us}] per iteration, longest first, 'busy_us', 'threads'} from Chrome-trace
  events. Only complete ('X') events on the device's stream threads count; where a device has no thread named
  'Stream ...', all of its threads do (the XLA Ops / Modules lines of some jax versions repeat the kernels)."""
  procs = {e['pid']: e.get('args', {}).get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  threads = {(e['pid'], e['tid']): e.get('args', {}).get('name', '') for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  pids = {p for p, n in procs.items() if n.startswith(device_prefix)}
  streams = {key for key, n in threads.items() if key[0] in pids and n.startswith('Stream')}
  keep = (lambda e: (e['pid'], e.get('tid')) in streams) if streams else (lambda e: e['pid'] in pids)
  total, calls = collections.Counter(), collections.Counter()
  spans = []
  for e in events:
    if e.get('ph') == 'X' and e.get('pid') in pids and keep(e):
      total[e['name']] += float(e.get('dur', 0.0))
      calls[e['name']] += 1
      spans.append((float(e['ts']), float(e['ts']) + float(e.get('dur', 0.0)), e['name']))
  kernels = [{'name': n, 'calls': calls[n] / iters, 'us': us / iters} for n, us in total.most_common()]
  used = sorted({threads.get(k, '') for k in streams} if streams else
                {n for (p, _), n in threads.items() if p in pids})
  return {'kernels': kernels, 'busy_us': sum(total.values()) / iters, 'threads': used, **idle_gaps(spans, iters)}


def idle_gaps(spans: list[tuple[float, float, str]], iters: int, within_us: float = 100.0) -> dict:
  """Device idle time between consecutive kernels, per iteration: 'idle_us' sums the gaps shorter than within_us
  (launch latency inside a call; longer gaps are the host or the profiler between calls), 'idle_after' the five
  kernels most often followed by such a gap, with their mean gap. Overlapping kernels (several streams) count no
  gap."""
  spans.sort()
  idle, after, end = 0.0, collections.defaultdict(list), None
  for (s0, e0, name), (s1, _, _) in zip(spans, spans[1:]):
    end = e0 if end is None else max(end, e0)
    gap = s1 - end
    if 0.0 < gap < within_us:
      idle += gap
      after[name].append(gap)
  top = sorted(after.items(), key=lambda kv: -sum(kv[1]))[:5]
  return {'idle_us': idle / max(iters, 1),
          'idle_after': [{'name': n, 'gaps': len(g) / iters, 'mean_us': sum(g) / len(g)} for n, g in top]}


def categories(kernels: list[dict]) -> dict[str, float]:
  """Microseconds per iteration by kind of kernel (CATEGORIES, first match), largest first."""
  out = collections.Counter()
  for k in kernels:
    out[next(name for name, match in CATEGORIES if match(k['name']))] += k['us']
  return dict(out.most_common())


def read_trace(logdir: str) -> list[dict]:
  paths = sorted(glob.glob(os.path.join(logdir, '**', 'perfetto_trace.json.gz'), recursive=True))
  if not paths:
    raise SystemExit(f'no perfetto_trace.json.gz under {logdir}: the profiler wrote no trace')
  with gzip.open(paths[-1]) as f:
    data = json.load(f)
  return data['traceEvents'] if isinstance(data, dict) else data


def profile(call, iters: int, warmup: int = 0) -> dict:
  """device_kernel_times of `iters` calls of call() (after `warmup` untraced ones), plus 'wall_us_traced' per
  call (the profiler's own overhead included) and 'categories'."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  with tempfile.TemporaryDirectory() as logdir:
    t0 = time.perf_counter()
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      for _ in range(iters):
        out = call()
      jax.block_until_ready(out)
    wall = time.perf_counter() - t0
    result = device_kernel_times(read_trace(logdir), iters)
  result['wall_us_traced'] = 1e6 * wall / iters
  result['categories'] = categories(result['kernels'])
  return result
