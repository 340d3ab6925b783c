"""Per-kernel GPU time of one op call, from jax's profiler: where an op's milliseconds go, kernel by kernel,
measured inside the whole call (no piece timed on its own, so no per-call host overhead in small pieces).

Runs the op (ops_gpu.py's inputs and kernels, bf16) --warmup times, then --iters times under
jax.profiler.trace(create_perfetto_trace=True), reads the trace's device events (CUPTI kernel records on the
GPU's stream threads) and prints, per kernel name, calls and microseconds per iteration and the share of the
device time; plus the device busy time and the wall time per iteration. Pallas kernels carry their `name=`
(gla_intra_fwd, ...); XLA's own kernels their fusion names.

  python benchmarks/kernel_profile.py --op gla --mode fwd                  # B=4 T=4096 H=16 D=128
  python benchmarks/kernel_profile.py --op gla --mode fwd_bwd 8 8192 12 64 --kernel-config gla:intra_width=32
  python benchmarks/kernel_profile.py --op softmax --impl cudnn --mode fwd --out /tmp/p.json
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ops_gpu  # noqa: E402  (a sibling script module)

DEVICE_PREFIX = '/device:GPU'


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
  for e in events:
    if e.get('ph') == 'X' and e.get('pid') in pids and keep(e):
      total[e['name']] += float(e.get('dur', 0.0))
      calls[e['name']] += 1
  kernels = [{'name': n, 'calls': calls[n] / iters, 'us': us / iters} for n, us in total.most_common()]
  used = sorted({threads.get(k, '') for k in streams} if streams else
                {n for (p, _), n in threads.items() if p in pids})
  return {'kernels': kernels, 'busy_us': sum(total.values()) / iters, 'threads': used}


def read_trace(logdir: str) -> list[dict]:
  paths = sorted(glob.glob(os.path.join(logdir, '**', 'perfetto_trace.json.gz'), recursive=True))
  if not paths:
    raise SystemExit(f'no perfetto_trace.json.gz under {logdir}: the profiler wrote no trace')
  with gzip.open(paths[-1]) as f:
    data = json.load(f)
  return data['traceEvents'] if isinstance(data, dict) else data


def op_call(op: str, impl: str, shape, mode: str, configs: dict, window: int):
  """A zero-argument callable running one (op, impl, mode) call at shape, jitted and with its inputs."""
  b, t, h, d = shape
  x, do = ops_gpu.jax_inputs('sigmoid' if op == 'softmax' else op, b, t, h, d)
  if op == 'softmax':
    x = {n: x[n] for n in ('q', 'k', 'v')}
    fn = ops_gpu.softmax_op(impl, window)
  elif impl == 'kernel':
    fn = ops_gpu.kernel_fn(op, configs.get(op), window, configs)
  else:
    fn = ops_gpu.effattn_op(op, impl, window)
  fwd, fwd_bwd = ops_gpu.jax_fns(fn, tuple(x))
  return (lambda: fwd(x)) if mode == 'fwd' else (lambda: fwd_bwd(x, do))


def profile(call, iters: int, warmup: int) -> dict:
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
  result['wall_us_traced'] = 1e6 * wall / iters  # includes the profiler's own overhead
  return result


def print_table(result: dict, log=print) -> None:
  busy = result['busy_us'] or 1.0
  log(f'{"kernel":60s} {"calls":>6s} {"us":>9s} {"share":>6s}')
  for k in result['kernels']:
    log(f'{k["name"][:60]:60s} {k["calls"]:>6.1f} {k["us"]:>9.1f} {100 * k["us"] / busy:>5.1f}%')
  log(f'device busy {result["busy_us"]:.1f} us per iteration; wall (traced) {result["wall_us_traced"]:.1f} us; '
      f'threads: {", ".join(result["threads"]) or "none"}')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('shape', nargs='*', type=int, default=[4, 4096, 16, 128], help='B T H D')
  p.add_argument('--op', default='gla', choices=(*ops_gpu.OPS, 'softmax'))
  p.add_argument('--impl', default='kernel', help="kernel, chunk (effattn ops) or cudnn, xla (--op softmax)")
  p.add_argument('--mode', default='fwd', choices=('fwd', 'fwd_bwd'))
  p.add_argument('--kernel-config', action='append', default=[], help='OP:field=value,... (as ops_gpu.py)')
  p.add_argument('--window', type=int, default=0, help='softmax_window / softmax: window size')
  p.add_argument('--iters', type=int, default=10)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--out', default=None, help='also write the result as JSON')
  args = p.parse_args(argv)
  if len(args.shape) != 4:
    raise SystemExit(f'shape: give B T H D; got {args.shape}')
  if args.op == 'softmax' and args.impl not in ('cudnn', 'xla'):
    raise SystemExit(f"--op softmax: --impl must be cudnn or xla; got {args.impl!r}")
  configs = ops_gpu.parse_kernel_configs(args.kernel_config)
  call = op_call(args.op, args.impl, tuple(args.shape), args.mode, configs, args.window)
  result = profile(call, args.iters, args.warmup)
  result['meta'] = {'op': args.op, 'impl': args.impl, 'mode': args.mode, 'shape': args.shape,
                    'kernel_config': args.kernel_config, 'device': jax.devices()[0].device_kind,
                    'jax': jax.__version__, 'date': time.strftime('%Y-%m-%d')}
  print(f'{args.op} ({args.impl}) {args.mode} at {"x".join(map(str, args.shape))}, {result["meta"]["device"]}:')
  print_table(result)
  if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
  return result


if __name__ == '__main__':
  main()
