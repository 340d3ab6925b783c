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
  python benchmarks/ops_gpu.py --ops gla --tune-ops gla --tune-budget-s 140   # gla's tune_candidates first
  python benchmarks/ops_gpu.py --ops gla,simple_gla --kernel-config gla:split_programs=0 \
      --kernel-config simple_gla:split_programs=0 --shapes scaling            # any KernelConfig field
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
import random
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effattn import ops
from effattn.ops.gated_delta_rule import pallas as gdr_pallas
from effattn.ops.gla import pallas as gla_pallas
from effattn.ops.simple_gla import pallas as sg_pallas
from effattn.ops.simple_gla import simple_gla

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_config_text  # noqa: E402  (a sibling script module)
from timing import time_calls  # noqa: E402  (a sibling script module)

SHAPES = ((4, 4096, 16, 128), (1, 8192, 96, 128), (2, 16384, 16, 128), (4, 2048, 16, 128), (8, 1024, 8, 64))
# fixed B*T = 65536: time per token from T = 2048 to 65536 (issue 6, criterion 3)
SCALING_SHAPES = ((32, 2048, 16, 128), (8, 8192, 16, 128), (2, 32768, 16, 128), (1, 65536, 16, 128))
QUICK_SHAPES = ((2, 1024, 4, 64),)
DEFAULT_OUT = Path(__file__).resolve().parent / 'results' / 'ops_gpu.json'
# KernelConfig class of each linear op's kernel (--kernel-config OP:fields)
KERNEL_CONFIGS = {'simple_gla': sg_pallas.KernelConfig, 'gla': gla_pallas.KernelConfig,
                  'delta_rule': gdr_pallas.KernelConfig, 'gated_delta_rule': gdr_pallas.KernelConfig}
LINEAR_OPS = ('simple_gla', 'gla', 'delta_rule', 'gated_delta_rule')
OPS = (*LINEAR_OPS, 'sigmoid', 'softmax_window')
# per op: effattn impls and baselines; 'softmax' = full causal softmax (cudnn, torch SDPA, XLA), once per shape
OP_IMPLS = {**{op: ('kernel', 'chunk', 'fla') for op in LINEAR_OPS},
            'sigmoid': ('kernel', 'chunk'), 'softmax_window': ('kernel', 'chunk', 'cudnn'),
            'softmax': ('cudnn', 'sdpa', 'xla')}


def version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


# ---------------------------------------------------------------------------------------------- timing

def jax_sync(x):
  jax.block_until_ready(x)


# ----------------------------------------------------------------------------------------------- inputs
# Every op: differentiable inputs from (B, T, H, D) and a seed, the effattn call, and FLA's Triton op.

def _normal(key, shape, dtype=jnp.bfloat16):
  return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _l2norm(x):
  x = x.astype(jnp.float32)
  return (x / jnp.linalg.norm(x, axis=-1, keepdims=True)).astype(jnp.bfloat16)


def jax_inputs(op: str, b, t, h, d, seed=0) -> tuple[dict, jax.Array]:
  """(inputs by name, in the op's argument order, and the output cotangent dO)."""
  keys = jax.random.split(jax.random.key(seed), 7)
  x = {'q': _normal(keys[0], (b, t, h, d)), 'k': _normal(keys[1], (b, t, h, d)),
       'v': _normal(keys[2], (b, t, h, d))}
  gate = lambda key, shape: jax.nn.log_sigmoid(jax.random.normal(key, shape, jnp.float32)) / 16
  if op == 'simple_gla':
    x['g'] = gate(keys[3], (b, t, h))
  elif op == 'gla':
    x['g'] = gate(keys[3], (b, t, h, d))
  elif op in ('delta_rule', 'gated_delta_rule'):
    x['q'], x['k'] = _l2norm(x['q']), _l2norm(x['k'])
    if op == 'gated_delta_rule':
      x['g'] = gate(keys[3], (b, t, h))
    x['beta'] = jax.nn.sigmoid(jax.random.normal(keys[4], (b, t, h), jnp.float32))
  return x, _normal(keys[5], (b, t, h, d))


def effattn_op(op: str, impl: str, window: int):
  """fn(**inputs) -> o for an effattn op and impl ('kernel' or 'chunk')."""
  if op == 'simple_gla':
    return lambda q, k, v, g: simple_gla(q, k, v, g, impl=impl)[0]
  if op == 'gla':
    return lambda q, k, v, g: ops.gla(q, k, v, g, impl=impl)[0]
  if op == 'delta_rule':
    return lambda q, k, v, beta: ops.delta_rule(q, k, v, beta, impl=impl)[0]
  if op == 'gated_delta_rule':
    return lambda q, k, v, g, beta: ops.gated_delta_rule(q, k, v, g, beta, impl=impl)[0]
  if op == 'sigmoid':
    return lambda q, k, v: ops.sigmoid_attention(q, k, v, causal=True, impl=impl)
  if op == 'softmax_window':
    return lambda q, k, v: ops.softmax_attention(q, k, v, causal=True, window=window, impl=impl)
  raise ValueError(f'unknown op {op!r}; known: {OPS}')


def softmax_op(impl: str, window: int = 0):
  """jax.nn.dot_product_attention (cudnn or xla), full causal or with a sliding window."""
  local = None if not window else (window - 1, 0)
  return lambda q, k, v, **_: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation=impl, local_window_size=local)


def jax_fns(fn, names: tuple[str, ...]):
  """(fwd(x), fwd_bwd(x, do)) jitted; fwd_bwd returns the output and its VJP with respect to every input, as a
  training step needs both: returning only the VJP would let XLA drop forward kernels whose outputs the backward
  does not read (a linear op's output sweep), and time less than a forward plus a backward."""
  def fwd(x):
    return fn(**x)

  def fwd_bwd(x, do):
    out, vjp = jax.vjp(lambda *a: fn(**dict(zip(names, a))), *(x[n] for n in names))
    return out, vjp(do)
  return jax.jit(fwd), jax.jit(fwd_bwd)


def time_jax_ms(fn, x: dict, do, mode: str) -> float:
  """Milliseconds per call of fn(**x) ('fwd') or of its VJP given do ('fwd_bwd'), jitted, compile excluded."""
  fwd, fwd_bwd = jax_fns(fn, tuple(x))
  return 1e3 * time_calls((lambda: fwd(x)) if mode == 'fwd' else (lambda: fwd_bwd(x, do)), jax_sync)


def rel_rms(a, b) -> float:
  a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  b = np.asarray(jnp.asarray(b, jnp.float32), np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------------------------------------- torch

def torch_op(op: str, impl: str):
  """fn(**inputs) -> o in torch, or None where there is no such baseline."""
  import torch
  if impl == 'sdpa':
    return lambda q, k, v, **_: torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
  if op == 'simple_gla':
    from fla.ops.simple_gla import chunk_simple_gla
    return lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g)[0]
  if op == 'gla':
    from fla.ops.gla import chunk_gla
    return lambda q, k, v, g: chunk_gla(q, k, v, g=g)[0]
  if op == 'delta_rule':
    from fla.ops.delta_rule import chunk_delta_rule
    return lambda q, k, v, beta: chunk_delta_rule(q, k, v, beta=beta)[0]
  if op == 'gated_delta_rule':
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    return lambda q, k, v, g, beta: chunk_gated_delta_rule(q, k, v, g=g, beta=beta)[0]
  return None


def torch_bench(op: str, impl: str, x: dict, do, mode: str) -> float:
  """The same inputs as the JAX run, copied to torch (bf16 stays bf16, fp32 gates stay fp32)."""
  import torch
  fn = torch_op(op, impl)
  if fn is None:
    raise NotImplementedError(f'no {impl} baseline for {op}')
  to_t = lambda a: torch.from_numpy(np.asarray(jnp.asarray(a, jnp.float32))).cuda().to(
      torch.bfloat16 if a.dtype == jnp.bfloat16 else torch.float32)
  tx, tdo = {n: to_t(a) for n, a in x.items()}, to_t(do)
  sync = lambda _: torch.cuda.synchronize()
  if mode == 'fwd':
    with torch.no_grad():
      return time_calls(lambda: fn(**tx), sync)
  for a in tx.values():
    a.requires_grad_(True)

  def step():
    for a in tx.values():
      a.grad = None
    fn(**tx).backward(tdo)
  return time_calls(step, sync)


# ----------------------------------------------------------------------------------------------- runs

def simple_gla_kernel_fn(cfg):
  return lambda q, k, v, g: sg_pallas.kernel_simple_gla(q, k, v, g, scale=q.shape[-1] ** -0.5, config=cfg)[0]


def tune(shape, budget_s: float, log) -> tuple[sg_pallas.KernelConfig, list[dict]]:
  """Times simple_gla kernel configurations at one shape; returns the fastest (forward, then backward)."""
  x, do = jax_inputs('simple_gla', *shape)
  rows = []
  start = time.perf_counter()
  base = sg_pallas.DEFAULT_CONFIG

  def run(cfg, what):
    if time.perf_counter() - start > budget_s:
      return None
    try:
      ms = time_jax_ms(simple_gla_kernel_fn(cfg), x, do, what)
    except Exception as e:  # noqa: BLE001  (a configuration Triton cannot compile: registers, shared memory)
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


FLASH_FWD_CONFIGS = ((128, 64, 8, 3), (128, 64, 4, 2), (128, 64, 8, 2), (128, 128, 8, 2), (128, 32, 4, 3),
                     (64, 64, 4, 3), (64, 128, 4, 2), (64, 64, 4, 2), (128, 64, 4, 3))
FLASH_BWD_CONFIGS = ((64, 64, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 8, 2), (128, 64, 8, 2),
                     (32, 64, 4, 2), (64, 32, 4, 2), (128, 128, 8, 1))


def tune_flash(op: str, shape, budget_s: float, window: int, log) -> tuple[object, list[dict]]:
  """Times flash-kernel configurations (block_q, block_k, warps, stages) of sigmoid or windowed softmax. For
  sigmoid the default (the Mosaic GPU forward on Hopper) competes with Triton-forward configurations."""
  from effattn.ops.softmax_attention import pallas as flash
  x, do = jax_inputs('softmax', *shape)
  start, rows = time.perf_counter(), []
  score = 'sigmoid' if op == 'sigmoid' else 'softmax'
  bias = -float(np.log(shape[1])) if score == 'sigmoid' else None

  def run(cfg, what):
    if time.perf_counter() - start > budget_s:
      return None
    fn = lambda q, k, v: flash.flash_attention(q, k, v, score=score, causal=True, scale=q.shape[-1] ** -0.5,
                                               window=None if score == 'sigmoid' else window, bias=bias,
                                               config=cfg)
    try:
      ms = time_jax_ms(fn, x, do, what)
    except Exception as e:  # noqa: BLE001  (a configuration Triton cannot compile)
      log(f'  tune {op} {what} {cfg}: failed: {type(e).__name__}: {str(e)[:200]}')
      ms = None
    rows.append({'op': op, 'mode': what, 'config': dataclasses.asdict(cfg), 'ms': ms})
    log(f'  tune {op} {what:7s} {ms if ms is None else round(ms, 3)} ms  {dataclasses.asdict(cfg)}')
    return ms

  best = (run(flash.DEFAULT_CONFIG, 'fwd'), flash.DEFAULT_CONFIG)
  triton = dataclasses.replace(flash.DEFAULT_CONFIG, sigmoid_forward='triton')  # the tiles below are Triton's
  if score == 'sigmoid':  # the Triton forward, then the score's math (MUFU ops per score), at the default tiles
    for math in ('rcp', 'newton', 'f16x2', 'ieee'):
      cfg = dataclasses.replace(triton, sigmoid_math=math)
      ms = run(cfg, 'fwd')
      if ms is not None and (best[0] is None or ms < best[0]):
        best = (ms, cfg)
  tiles_from = best[1] if best[1].sigmoid_forward == 'triton' else triton
  for bq, bk, w, st in FLASH_FWD_CONFIGS:
    cfg = dataclasses.replace(tiles_from, block_q=bq, block_k=bk, num_warps=w, num_stages=st)
    ms = run(cfg, 'fwd')
    if ms is not None and (best[0] is None or ms < best[0]):
      best = (ms, cfg)
  fcfg, best = best[1], (None, best[1])
  for bq, bk, w, st in FLASH_BWD_CONFIGS:
    cfg = dataclasses.replace(fcfg, block_q_bwd=bq, block_k_bwd=bk, num_warps_bwd=w, num_stages_bwd=st)
    ms = run(cfg, 'fwd_bwd')
    if ms is not None and (best[0] is None or ms < best[0]):
      best = (ms, cfg)
  return best[1], rows


def kernel_fn(op, cfg, window, configs=None):
  """The op's kernel: simple_gla at cfg, the other linear ops at configs[op] when given, else impl='kernel'."""
  if op == 'simple_gla':
    return simple_gla_kernel_fn(cfg)
  c = (configs or {}).get(op)
  if c is None:
    return effattn_op(op, 'kernel', window)
  if op == 'gla':
    return gla_pallas.benchmark_fn(c)
  scale = lambda q: q.shape[-1] ** -0.5
  if op == 'delta_rule':
    return lambda q, k, v, beta: gdr_pallas.kernel_gated_delta_rule(q, k, v, None, beta, scale=scale(q), config=c)[0]
  return lambda q, k, v, g, beta: gdr_pallas.kernel_gated_delta_rule(q, k, v, g, beta, scale=scale(q), config=c)[0]


def parse_kernel_configs(items: list[str]) -> dict:
  """['gla:num_warps=4,split_programs=0', ...] -> {op: KernelConfig}; repeated items of one op add up."""
  texts = {}
  for item in items:
    op, sep, text = item.partition(':')
    if not sep or op not in KERNEL_CONFIGS:
      raise SystemExit(f'--kernel-config: write OP:field=value,...; OP one of {", ".join(KERNEL_CONFIGS)}; '
                       f'got {item!r}')
    texts[op] = f'{texts[op]},{text}' if op in texts else text
  return {op: kernel_config_text.parse_config(KERNEL_CONFIGS[op], text, '--kernel-config')
          for op, text in texts.items()}


def tune_by_candidates(op: str, shape, budget_s: float, log, base=None) -> tuple[object, list[dict]]:
  """Times the op module's tune_candidates (gla): its 'fwd' list, then the 'fwd_bwd' list derived from the
  fastest, each list shuffled (fixed seed) and cut at budget_s / 2, so that a short budget samples all knobs."""
  module = {'gla': gla_pallas}[op]
  x, do = jax_inputs(op, *shape)
  rows = []

  def run(cfg, what):
    try:
      ms = time_jax_ms(module.benchmark_fn(cfg), x, do, what)
    except Exception as e:  # noqa: BLE001  (a configuration Triton cannot compile: registers, shared memory)
      log(f'  tune {op} {what}: failed: {type(e).__name__}: {str(e)[:200]}')
      ms = None
    changed = {k: v for k, v in dataclasses.asdict(cfg).items() if v != getattr(module.DEFAULT_CONFIG, k)}
    rows.append({'op': op, 'mode': what, 'config': dataclasses.asdict(cfg), 'ms': ms})
    log(f'  tune {op} {what:7s} {ms if ms is None else round(ms, 3)} ms  changed: {changed}')
    return ms

  best = base if base is not None else module.DEFAULT_CONFIG
  for what in ('fwd', 'fwd_bwd'):
    start = time.perf_counter()
    top = (run(best, what), best)
    candidates = module.tune_candidates(best)[what]
    random.Random(0).shuffle(candidates)
    for cfg in candidates:
      if time.perf_counter() - start > budget_s / 2:
        break
      ms = run(cfg, what)
      if ms is not None and (top[0] is None or ms < top[0]):
        top = (ms, cfg)
    best = top[1]
  return best, rows


def check_against_chunk(op, shape, cfg, window, configs=None) -> dict:
  """Relative RMS of the kernel's o and gradients against impl='chunk' (bf16 inputs)."""
  x, do = jax_inputs(op, *shape, seed=1)
  kf, kb = jax_fns(kernel_fn(op, cfg, window, configs), tuple(x))
  cf, cb = jax_fns(effattn_op(op, 'chunk', window), tuple(x))
  out = {'o': rel_rms(kf(x), cf(x))}
  for name, a, b in zip(x, kb(x, do)[1], cb(x, do)[1]):  # fwd_bwd returns (o, gradients)
    out[f'd{name}'] = rel_rms(a, b)
  return out


def bench_one(op, impl, shape, mode, x, do, cfg, args) -> float:
  """Milliseconds of one (op, impl, mode) at one shape."""
  if impl in ('fla', 'sdpa'):
    return 1e3 * torch_bench(op, impl, x, do, mode)
  if op == 'softmax' or (op == 'softmax_window' and impl in ('cudnn', 'xla')):
    fn = softmax_op(impl, args.window if op == 'softmax_window' else 0)
  elif impl == 'kernel':
    fn = kernel_fn(op, cfg, args.window, args.kernel_configs)
  else:
    fn = effattn_op(op, impl, args.window)
  return time_jax_ms(fn, x, do, mode)


def bench_shape(shape, ops_impls, cfg, args, log, on_row) -> None:
  """Times every (op, impl, mode) at one shape; on_row(row) stores each row as soon as it is measured."""
  b, t, h, _ = shape
  for op, impls in ops_impls:
    x, do = jax_inputs(op if op in LINEAR_OPS else 'softmax', *shape)
    for impl in impls:
      for mode in args.modes.split(','):
        row = {'op': op, 'shape': list(shape), 'impl': impl, 'mode': mode, 'ms': None, 'note': ''}
        try:
          if impl == 'xla' and b * h * t * t * 4 / 2**30 > args.xla_max_gib:
            row['note'] = f'skipped: T x T scores > {args.xla_max_gib} GiB'
          else:
            row['ms'] = bench_one(op, impl, shape, mode, x, do, cfg, args)
        except Exception as e:  # noqa: BLE001  (any failure becomes the row's note)
          row['note'] = f'{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}'
          if impl not in ('fla', 'sdpa'):
            traceback.print_exc()
        log(f'  {op:16s} {shape!s:22s} {impl:7s} {mode:8s} '
            f'{"-" if row["ms"] is None else format(row["ms"], ".3f"):>8s} ms {row["note"]}')
        on_row(row)


def row_op(r) -> str:
  """Rows of runs before --ops existed are simple_gla's (kernel, chunk, fla) or softmax's."""
  return r.get('op') or ('simple_gla' if r['impl'] in ('kernel', 'chunk', 'fla') else 'softmax')


def print_table(rows, shapes, window=None):
  def ms(op, shape, impl, mode):
    for r in rows:
      if row_op(r) == op and tuple(r['shape']) == tuple(shape) and r['impl'] == impl and r['mode'] == mode:
        return r['ms']
    return None
  fmt = lambda x: '-' if x is None else format(x, '.3f')
  ratio = lambda a, b: format(a / b, '.2f') if a and b else '-'
  ops_seen = [o for o in (*OPS, 'softmax') if any(row_op(r) == o for r in rows)]
  for op in ops_seen:
    if op == 'softmax':
      continue
    own = [i for i in ('kernel', 'chunk', 'fla', 'cudnn') if any(row_op(r) == op and r['impl'] == i for r in rows)]
    print(f'\n{op}' + (f' (window {window})' if op == 'softmax_window' else ''))
    print(f'{"B,T,H,D":>18s} {"mode":8s}' + ''.join(f'{i:>9s}' for i in own)
          + ''.join(f'{"sm." + i:>11s}' for i in ('cudnn', 'sdpa', 'xla'))
          + f'{"kern/fla":>9s}{"kern/chunk":>11s}{"kern/sm.cudnn":>14s}')
    for shape in shapes:
      for mode in ('fwd', 'fwd_bwd'):
        vals = [ms(op, shape, i, mode) for i in own]
        if all(v is None for v in vals):
          continue
        base = [ms('softmax', shape, i, mode) for i in ('cudnn', 'sdpa', 'xla')]
        kern = ms(op, shape, 'kernel', mode)
        print(f'{",".join(map(str, shape)):>18s} {mode:8s}' + ''.join(f'{fmt(v):>9s}' for v in vals)
              + ''.join(f'{fmt(v):>11s}' for v in base)
              + f'{ratio(kern, ms(op, shape, "fla", mode)):>9s}{ratio(kern, ms(op, shape, "chunk", mode)):>11s}'
              + f'{ratio(kern, base[0]):>14s}')
  # time per token of the kernels at a fixed B*T, H and D (issue 6, criterion 3: largest over smallest <= 1.3x)
  for op in ops_seen:
    for mode in ('fwd', 'fwd_bwd'):
      groups = {}
      for sh in shapes:
        if ms(op, sh, 'kernel', mode):
          groups.setdefault((sh[0] * sh[1], sh[2], sh[3]), []).append(sh)
      for (bt, h, d), group in groups.items():
        if len(group) < 2:
          continue
        per_tok = {sh[1]: ms(op, sh, 'kernel', mode) / bt for sh in sorted(group, key=lambda x: x[1])}
        lo, hi = min(per_tok.values()), max(per_tok.values())
        print(f'{op}: kernel {mode} time per token at B*T={bt}, H={h}, D={d} (largest / smallest {hi / lo:.2f}x): '
              + ', '.join(f'T={t}: {1e6 * v:.2f} ns ({v / lo:.2f}x)' for t, v in per_tok.items()))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='one small shape, no tuning')
  p.add_argument('--tune', action='store_true', help='time kernel configurations at the first shape first')
  p.add_argument('--tune-budget-s', type=float, default=150.0)
  p.add_argument('--tune-flash', default='', help='sigmoid and/or softmax_window: time flash-kernel configs first')
  p.add_argument('--tune-ops', default='',
                 help='gla: time its tune_candidates first (--tune-budget-s), use the fastest')
  p.add_argument('--kernel-config', action='append', default=[], metavar='OP:FIELD=VALUE,...',
                 help='a linear op\'s KernelConfig fields, e.g. gla:num_warps=4,split_programs=0 (repeatable)')
  p.add_argument('--ops', default='simple_gla', help=f'comma-separated, of {",".join(OPS)}, or "all"')
  p.add_argument('--impls', default='kernel,chunk,fla,cudnn,sdpa,xla',
                 help='restrict every op to these impls (softmax baselines: cudnn, sdpa, xla)')
  p.add_argument('--modes', default='fwd,fwd_bwd', help='fwd and/or fwd_bwd')
  p.add_argument('--window', type=int, default=512, help='softmax_window: keys per query, self included')
  p.add_argument('--xla-max-gib', type=float, default=8.0)
  p.add_argument('--budget-s', type=float, default=1e9, help='stop starting new shapes after this long')
  p.add_argument('--shapes', default=None,
                 help='e.g. 4x2048x16x128,8x1024x8x64, or "scaling" (B*T = 65536, T = 2048..65536); '
                      'default: the issue-6 set')
  p.add_argument('--table-from', nargs='+', type=Path, default=None,
                 help='print the table of these result files (rows merged) and exit')
  p.add_argument('--out', type=Path, default=DEFAULT_OUT)
  args = p.parse_args(argv)
  args.kernel_configs = parse_kernel_configs(args.kernel_config)
  if args.table_from:
    runs = [json.loads(f.read_text()) for f in args.table_from]
    rows = [r for run in runs for r in run['rows']]
    seen = list(dict.fromkeys(tuple(r['shape']) for r in rows))
    shapes = [s for s in SHAPES if s in seen] + [s for s in seen if s not in SHAPES]
    for f, run in zip(args.table_from, runs):
      m = run['meta']
      print(f'{f.name}: {m["device"]}, jax {m["versions"]["jax"]}, {m["date"]}, kernel config {run["config"]}')
    print_table(rows, shapes, runs[-1]['meta'].get('window'))
    return
  shapes = QUICK_SHAPES if args.quick else SHAPES
  if args.shapes == 'scaling':
    shapes = SCALING_SHAPES
  elif args.shapes:
    shapes = tuple(tuple(int(x) for x in s.split('x')) for s in args.shapes.split(','))
  ops_list = list(OPS) if args.ops == 'all' else [o for o in args.ops.split(',') if o]
  bad = set(ops_list) - set(OPS)
  if bad:
    raise SystemExit(f'--ops: unknown {sorted(bad)}; known: {", ".join(OPS)}')
  impls = [i for i in args.impls.split(',') if i]
  start = time.perf_counter()
  log = lambda s: print(s, flush=True)

  dev = jax.devices()[0]
  meta = {
      'command': ' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
      'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
      'device': getattr(dev, 'device_kind', str(dev)), 'backend': jax.default_backend(),
      'python': platform.python_version(),
      'versions': {n: version(n) for n in ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin',
                                           'torch', 'triton', 'fla-core', 'flash-linear-attention')},
      'dtype': 'bfloat16', 'causal': True, 'window': args.window,
      'inputs': 'q, k, v ~ N(0,1) bf16 (L2-normalised q, k for the delta rules); gates logsigmoid(N(0,1))/16 '
                'fp32 ([B,T,H], gla [B,T,H,K]); beta sigmoid(N(0,1)) fp32',
      'timing': 'median over 15 batches of back-to-back calls (~100 ms each; ~25 before 2026-12-04 s12) after 3 '
                'warm-up calls',
  }
  try:
    import torch
    meta['torch_device'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
  except Exception:  # noqa: BLE001  (torch absent or broken)
    impls = [i for i in impls if i not in ('fla', 'sdpa')]
  ops_impls = [(op, [i for i in OP_IMPLS[op] if i in impls]) for op in (*ops_list, 'softmax')]
  result = {'meta': meta, 'tune': [], 'config': None, 'check_vs_chunk': {}, 'rows': []}

  def save():
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))

  cfg = args.kernel_configs.pop('simple_gla', sg_pallas.DEFAULT_CONFIG)
  for op in [o for o in args.tune_ops.split(',') if o]:
    if op != 'gla':
      raise SystemExit(f'--tune-ops: only gla (simple_gla: --tune; sigmoid, softmax_window: --tune-flash); got {op!r}')
    log(f'tuning the {op} kernel at {shapes[0]} (budget {args.tune_budget_s:.0f} s)')
    best, tune_rows = tune_by_candidates(op, shapes[0], args.tune_budget_s, log, args.kernel_configs.get(op))
    result['tune'] += tune_rows
    args.kernel_configs[op] = best
    save()
  result['kernel_configs'] = {op: dataclasses.asdict(c) for op, c in args.kernel_configs.items()}
  if args.tune and not args.quick and 'simple_gla' in ops_list:
    log(f'tuning at {shapes[0]} (budget {args.tune_budget_s:.0f} s)')
    cfg, result['tune'] = tune(shapes[0], args.tune_budget_s, log)
  for op in [o for o in args.tune_flash.split(',') if o]:
    log(f'tuning the flash kernel for {op} at {shapes[0]} (budget {args.tune_budget_s:.0f} s)')
    best, tune_rows = tune_flash(op, shapes[0], args.tune_budget_s, args.window, log)
    result['tune'] += tune_rows
    result.setdefault('flash_config', {})[op] = dataclasses.asdict(best)
    log(f'  best {op}: {dataclasses.asdict(best)}')
    save()
  result['config'] = dataclasses.asdict(cfg)  # simple_gla's (the others' are in result['kernel_configs'])
  if 'simple_gla' in ops_list:
    log(f'simple_gla kernel config: {result["config"]}')
  save()
  for op in ops_list if 'kernel' in impls and 'chunk' in impls else ():
    try:
      rel = check_against_chunk(op, shapes[0], cfg, args.window, args.kernel_configs)
    except Exception as e:  # noqa: BLE001  (a missing kernel must not stop the timings)
      rel = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
    result['check_vs_chunk'][op] = {'shape': list(shapes[0]), 'rel_rms': rel}
    log(f'{op}: kernel vs chunk at {shapes[0]}: {rel}')
    save()
  for shape in shapes:
    if time.perf_counter() - start > args.budget_s:
      log(f'budget spent: skipping {shape}')
      continue
    bench_shape(shape, ops_impls, cfg, args, log, lambda row: (result['rows'].append(row), save()))
  result['meta']['wall_s'] = round(time.perf_counter() - start, 1)
  save()
  print(f'\n{meta["device"]}, jax {meta["versions"]["jax"]}, bf16 causal, ms (median):')
  print_table(result['rows'], shapes, args.window)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
