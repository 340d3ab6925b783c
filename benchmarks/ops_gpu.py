"""GPU timing of simple_gla: effattn's Pallas kernel vs its pure-JAX chunk form vs softmax attention and FLA.

For each shape (B, T, H, D), bf16, causal, and each implementation, the median time of warmed-up runs of
the forward and of the forward+backward (the VJP of every input, dg included, given a random dO; compile
excluded, block_until_ready / torch.cuda.synchronize around each batch of calls):
  kernel      effattn simple_gla impl='kernel' (ops/simple_gla/pallas.py), data-dependent g [B,T,H]
  chunk       effattn simple_gla impl='chunk' (pure JAX, custom VJP)
  cudnn, xla  jax.nn.dot_product_attention(is_causal=True) softmax attention (xla: only where the T x T
              scores fit, see --xla-max-gib)
  fla         flash-linear-attention chunk_simple_gla (Triton, PyTorch), when importable
  sdpa        torch scaled_dot_product_attention(is_causal=True) softmax, when torch imports
Before the table, --tune times kernel configurations (tile widths, warps, pipeline stages, fused or split
backward) at the first shape and the table then uses the fastest. The run also checks, at the first
shape, that the kernel's outputs and gradients equal the chunk form's (relative RMS).

  python benchmarks/ops_gpu.py --tune --out benchmarks/results/ops_gpu.json
  python benchmarks/ops_gpu.py --quick          # one small shape, smoke run
  python benchmarks/ops_gpu.py --table-from benchmarks/results/ops_gpu*.json   # table of stored runs
On the lent GPU machine (wheels from ../shared/tools/device-wheels.sh --baselines, carried as .whl):
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; \\
  PYTHONPATH=/tmp/site:$PWD python3 benchmarks/ops_gpu.py --tune --out $OUT/ops_gpu.json
"""

from __future__ import annotations

import os

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # leave GPU memory to torch too

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effattn.ops.simple_gla import simple_gla  # noqa: E402
from effattn.ops.simple_gla import pallas as sg_pallas  # noqa: E402

SHAPES = ((4, 4096, 16, 128), (1, 8192, 96, 128), (2, 16384, 16, 128), (4, 2048, 16, 128), (8, 1024, 8, 64))
QUICK_SHAPES = ((2, 1024, 4, 64),)
DEFAULT_OUT = Path(__file__).resolve().parent / 'results' / 'ops_gpu.json'
IMPLS = ('kernel', 'chunk', 'fla', 'cudnn', 'sdpa', 'xla')


def version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


# ---------------------------------------------------------------------------------------------- timing

def time_calls(call, sync, *, target_s: float = 0.025, samples: int = 15, warmup: int = 3) -> float:
  """Median seconds per call: batches of calls lasting about target_s each, synchronised after each batch."""
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
  return statistics.median(times)


def jax_sync(x):
  jax.block_until_ready(x)


# ----------------------------------------------------------------------------------------------- inputs

def jax_inputs(b, t, h, d, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  q, k, v, do = (jax.random.normal(key, (b, t, h, d), jnp.bfloat16) for key in keys[:4])
  g = jax.nn.log_sigmoid(jax.random.normal(keys[4], (b, t, h), jnp.float32)) / 16
  return q, k, v, g, do


def jax_fns(impl: str, cfg=None):
  """(fwd(q, k, v, g), fwd_bwd(q, k, v, g, do)) as jitted functions; None if impl is not a JAX one."""
  if impl in ('kernel', 'chunk'):
    if impl == 'kernel' and cfg is not None:
      def op(q, k, v, g):
        return sg_pallas.kernel_simple_gla(q, k, v, g, scale=q.shape[-1] ** -0.5, config=cfg)[0]
    else:
      def op(q, k, v, g):
        return simple_gla(q, k, v, g, impl=impl)[0]
    args = (0, 1, 2, 3)
  elif impl in ('cudnn', 'xla'):
    def op(q, k, v, g):
      del g
      return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
    args = (0, 1, 2)
  else:
    return None

  def fwd_bwd(q, k, v, g, do):
    xs = (q, k, v, g)
    diff = tuple(xs[i] for i in args)

    def f(*d):
      full = list(xs)
      for i, a in zip(args, d):
        full[i] = a
      return op(*full)
    _, vjp = jax.vjp(f, *diff)
    return vjp(do)
  return jax.jit(op), jax.jit(fwd_bwd)


def rel_rms(a, b) -> float:
  a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  b = np.asarray(jnp.asarray(b, jnp.float32), np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------------------------------------- torch

def torch_bench(impl: str, shape, mode: str) -> float:
  import torch
  b, t, h, d = shape
  dev = 'cuda'
  gen = torch.Generator(device=dev).manual_seed(0)
  rnd = lambda *s: torch.randn(*s, device=dev, generator=gen, dtype=torch.bfloat16)
  q, k, v, do = rnd(b, t, h, d), rnd(b, t, h, d), rnd(b, t, h, d), rnd(b, t, h, d)
  g = torch.nn.functional.logsigmoid(torch.randn(b, t, h, device=dev, generator=gen)) / 16
  if impl == 'fla':
    from fla.ops.simple_gla import chunk_simple_gla
    def op(q, k, v, g):
      return chunk_simple_gla(q, k, v, g=g)[0]
    leaves = [q, k, v, g]
  else:  # sdpa: [B, H, T, D]
    def op(q, k, v, g):
      return torch.nn.functional.scaled_dot_product_attention(
          q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
    leaves = [q, k, v]
  sync = lambda _: torch.cuda.synchronize()
  if mode == 'fwd':
    with torch.no_grad():
      return time_calls(lambda: op(q, k, v, g), sync)
  for x in leaves:
    x.requires_grad_(True)

  def step():
    for x in leaves:
      x.grad = None
    op(q, k, v, g).backward(do)
  return time_calls(step, sync)


# ----------------------------------------------------------------------------------------------- runs

def tune(shape, budget_s: float, log) -> tuple[sg_pallas.KernelConfig, list[dict]]:
  """Times kernel configurations at one shape; returns the fastest (forward, then backward) and all rows."""
  q, k, v, g, do = jax_inputs(*shape)
  rows = []
  start = time.perf_counter()
  base = sg_pallas.DEFAULT_CONFIG

  def run(cfg, what):
    if time.perf_counter() - start > budget_s:
      return None
    fwd, fwd_bwd = jax_fns('kernel', cfg)
    try:
      if what == 'fwd':
        ms = 1e3 * time_calls(lambda: fwd(q, k, v, g), jax_sync)
      else:
        ms = 1e3 * time_calls(lambda: fwd_bwd(q, k, v, g, do), jax_sync)
    except Exception as e:  # a configuration Triton cannot compile (registers, shared memory)
      log(f'  tune {what} {cfg}: failed: {type(e).__name__}: {str(e)[:200]}')
      ms = None
    rows.append({'mode': what, 'config': dataclasses.asdict(cfg), 'ms': ms})
    log(f'  tune {what:7s} {ms if ms is None else round(ms, 3)} ms  {dataclasses.asdict(cfg)}')
    return ms

  best_fwd = (run(base, 'fwd'), base)
  for bv, warps, stages in ((64, 8, 3), (32, 8, 2), (32, 4, 2), (64, 4, 2), (32, 8, 3), (64, 8, 1),
                            (32, 4, 3), (32, 8, 1), (64, 4, 3)):
    cfg = dataclasses.replace(base, block_v=bv, num_warps=warps, num_stages=stages)
    ms = run(cfg, 'fwd')
    if ms is not None and (best_fwd[0] is None or ms < best_fwd[0]):
      best_fwd = (ms, cfg)
  fcfg = best_fwd[1]
  best = (run(fcfg, 'fwd_bwd'), fcfg)
  for fuse, stages, bk in ((False, 2, 64), (True, 3, 64), (True, 2, 32), (False, 2, 32), (False, 3, 64),
                           (True, 3, 32)):
    cfg = dataclasses.replace(fcfg, fuse_bwd=fuse, num_stages_bwd=stages, block_k_bwd=bk, block_v_bwd=bk)
    ms = run(cfg, 'fwd_bwd')
    if ms is not None and (best[0] is None or ms < best[0]):
      best = (ms, cfg)
  run(dataclasses.replace(best[1], precise_dg=False), 'fwd_bwd')  # what the precise gate terms cost
  return best[1], rows


def check_against_chunk(shape, cfg) -> dict:
  """Relative RMS of the kernel's o and gradients against impl='chunk' (bf16 inputs)."""
  q, k, v, g, do = jax_inputs(*shape, seed=1)
  kf, kb = jax_fns('kernel', cfg)
  cf, cb = jax_fns('chunk')
  out = {'o': rel_rms(kf(q, k, v, g), cf(q, k, v, g))}
  for name, a, b in zip(('dq', 'dk', 'dv', 'dg'), kb(q, k, v, g, do), cb(q, k, v, g, do)):
    out[name] = rel_rms(a, b)
  return out


def bench_shape(shape, impls, cfg, args, log) -> list[dict]:
  b, t, h, d = shape
  rows = []
  q, k, v, g, do = jax_inputs(*shape)
  for impl in impls:
    for mode in ('fwd', 'fwd_bwd'):
      row = {'shape': list(shape), 'impl': impl, 'mode': mode, 'ms': None, 'note': ''}
      try:
        if impl == 'xla' and b * h * t * t * 4 / 2**30 > args.xla_max_gib:
          row['note'] = f'skipped: T x T scores > {args.xla_max_gib} GiB'
        elif impl in ('fla', 'sdpa'):
          row['ms'] = 1e3 * torch_bench(impl, shape, mode)
        else:
          fwd, fwd_bwd = jax_fns(impl, cfg if impl == 'kernel' else None)
          call = (lambda: fwd(q, k, v, g)) if mode == 'fwd' else (lambda: fwd_bwd(q, k, v, g, do))
          row['ms'] = 1e3 * time_calls(call, jax_sync)
      except Exception as e:
        row['note'] = f'{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}'
        if impl not in ('fla', 'sdpa'):
          traceback.print_exc()
      log(f'  {str(shape):22s} {impl:7s} {mode:8s} '
          f'{"-" if row["ms"] is None else format(row["ms"], ".3f"):>8s} ms {row["note"]}')
      rows.append(row)
  return rows


def print_table(rows, shapes, impls):
  def ms(shape, impl, mode):
    for r in rows:
      if tuple(r['shape']) == tuple(shape) and r['impl'] == impl and r['mode'] == mode:
        return r['ms']
    return None
  head = f'{"B,T,H,D":>18s} {"mode":8s}' + ''.join(f'{i:>9s}' for i in impls) + f'{"kern/fla":>10s}{"kern/chunk":>11s}'
  print(head)
  for shape in shapes:
    for mode in ('fwd', 'fwd_bwd'):
      vals = [ms(shape, i, mode) for i in impls]
      line = f'{",".join(map(str, shape)):>18s} {mode:8s}' + ''.join(
          f'{"-" if x is None else format(x, ".3f"):>9s}' for x in vals)
      kern, fla, chunk = ms(shape, 'kernel', mode), ms(shape, 'fla', mode), ms(shape, 'chunk', mode)
      line += f'{format(kern / fla, ".2f") if kern and fla else "-":>10s}'
      line += f'{format(kern / chunk, ".2f") if kern and chunk else "-":>11s}'
      print(line)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='one small shape, no tuning')
  p.add_argument('--tune', action='store_true', help='time kernel configurations at the first shape first')
  p.add_argument('--tune-budget-s', type=float, default=150.0)
  p.add_argument('--impls', default=','.join(IMPLS))
  p.add_argument('--xla-max-gib', type=float, default=8.0)
  p.add_argument('--budget-s', type=float, default=1e9, help='stop starting new shapes after this long')
  p.add_argument('--shapes', default=None, help='e.g. 4x2048x16x128,8x1024x8x64 (default: the issue-6 set)')
  p.add_argument('--table-from', nargs='+', type=Path, default=None,
                 help='print the table of these result files (rows merged) and exit')
  p.add_argument('--out', type=Path, default=DEFAULT_OUT)
  args = p.parse_args(argv)
  if args.table_from:
    runs = [json.loads(f.read_text()) for f in args.table_from]
    rows = [r for run in runs for r in run['rows']]
    seen = [tuple(r['shape']) for r in rows]
    shapes = [s for s in SHAPES if s in seen] + sorted({s for s in seen if s not in SHAPES})
    for f, run in zip(args.table_from, runs):
      m = run['meta']
      print(f'{f.name}: {m["device"]}, jax {m["versions"]["jax"]}, {m["date"]}, kernel config {run["config"]}')
    print_table(rows, shapes, [i for i in IMPLS if any(r['impl'] == i for r in rows)])
    return
  shapes = QUICK_SHAPES if args.quick else SHAPES
  if args.shapes:
    shapes = tuple(tuple(int(x) for x in s.split('x')) for s in args.shapes.split(','))
  impls = [i for i in args.impls.split(',') if i]
  start = time.perf_counter()
  log = lambda s: print(s, flush=True)

  dev = jax.devices()[0]
  meta = {
      'command': ' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'device': getattr(dev, 'device_kind', str(dev)), 'backend': jax.default_backend(),
      'python': platform.python_version(),
      'versions': {n: version(n) for n in ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin',
                                           'torch', 'triton', 'fla-core', 'flash-linear-attention')},
      'dtype': 'bfloat16', 'causal': True, 'gate': 'logsigmoid(N(0,1))/16, [B,T,H]',
      'timing': 'median over 15 batches of back-to-back calls (~25 ms each) after 3 warm-up calls',
  }
  try:
    import torch
    meta['torch_device'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
  except Exception:  # torch absent
    impls = [i for i in impls if i not in ('fla', 'sdpa')]
  result = {'meta': meta, 'tune': [], 'config': None, 'check_vs_chunk': None, 'rows': []}

  def save():
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))

  cfg = sg_pallas.DEFAULT_CONFIG
  if args.tune and not args.quick:
    log(f'tuning at {shapes[0]} (budget {args.tune_budget_s:.0f} s)')
    cfg, result['tune'] = tune(shapes[0], args.tune_budget_s, log)
  result['config'] = dataclasses.asdict(cfg)
  log(f'kernel config: {result["config"]}')
  save()
  if 'kernel' in impls and 'chunk' in impls:
    result['check_vs_chunk'] = {'shape': list(shapes[0]), 'rel_rms': check_against_chunk(shapes[0], cfg)}
    log(f'kernel vs chunk at {shapes[0]}: {result["check_vs_chunk"]["rel_rms"]}')
    save()
  for shape in shapes:
    if time.perf_counter() - start > args.budget_s:
      log(f'budget spent: skipping {shape}')
      continue
    result['rows'] += bench_shape(shape, impls, cfg, args, log)
    save()
  result['meta']['wall_s'] = round(time.perf_counter() - start, 1)
  save()
  print(f'\n{meta["device"]}, jax {meta["versions"]["jax"]}, bf16 causal, ms (median):')
  print_table(result['rows'], shapes, impls)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
