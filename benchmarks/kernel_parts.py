"""GPU timing of each piece of a linear-attention Pallas kernel (gla, delta rules), to see where its time goes.

Pieces, from each op's _bench.benchmark_parts:
  gated_delta_rule, delta_rule (effattn/ops/gated_delta_rule/_bench.py): 'wy' (WY/UT-transform kernel),
    'fwd_state' (forward state sweep given W, U), 'fwd_state_store' (the same, also writing the chunk
    states, as under grad), 'fwd' (whole forward), 'bwd_state' (reverse state-gradient sweep), 'bwd_chunk'
    (the backward after that sweep; 'bwd_xla' in result files before 2026-12-02 evening), 'bwd_dqk' and
    'bwd_wy' (its two kernels; the split backward, the default), 'fwd_bwd'.
  gla (effattn/ops/gla/_bench.py): 'gates' (chunk cumsums), 'intra_fwd', 'fwd_sweep', 'fwd', 'intra_bwd',
    'bwd_sweeps', 'bwd_sweeps_o', 'dg', 'fwd_bwd', 'fwd_bwd_o' (the _o pieces: no d final_state, as in training).
Median over --reps batches of calls (each ~100 ms since 2026-12-04's twelfth session, ~25 before; synchronised
once; timing.py) after 3 warm-up calls; compile excluded (reported as the first call's time, which since
2026-12-03 also computes the piece's inputs: pieces are built lazily, so --parts / --tune compile only what they
time). Before 2026-12-02 late each call was synchronised (+0.1-0.2 ms).

  python benchmarks/kernel_parts.py                          # gated_delta_rule, B=4 T=4096 H=16 D=128 bf16
  python benchmarks/kernel_parts.py --op gla
  python benchmarks/kernel_parts.py --op gla --parts fwd,fwd_bwd --config default --config bwd_states=true
  python benchmarks/kernel_parts.py --op delta_rule --config split_o=true,block_v=32,num_warps=4,num_stages=2
  python benchmarks/kernel_parts.py --tune fwd_state          # every tune_candidates config of one piece
  python benchmarks/kernel_parts.py --op delta_rule --parts bwd_chunk --config bwd_split=false --ablate dk_role
  python benchmarks/kernel_parts.py --op delta_rule --parts bwd_chunk --config bwd_dots=tf32   # or mixed, bf16

--ablate (delta rules; diagnostic: the gradients it gives are wrong) changes the backward before timing:
dq_role or dk_role skips that role's programs in the fused per-chunk kernel (_bwd_kernel.py, under
--config bwd_split=false; each chunk has one of each), bf16_dots makes every TF32 dot (fp32 operands) of the
backward kernels a bf16 one; the time saved is what the part costs. gla: gla_dq_role, gla_dk_role or gla_dv_role
skips that role's programs in the backward sweeps (_sweeps.py):
  python benchmarks/kernel_parts.py --op gla --parts bwd_sweeps_o --ablate gla_dq_role
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from effattn.ops.gated_delta_rule import _bench as delta_bench
from effattn.ops.gated_delta_rule import _bwd_kernel, _kernel_common
from effattn.ops.gated_delta_rule import pallas as delta_pallas
from effattn.ops.gla import _bench as gla_bench
from effattn.ops.gla import _sweeps as gla_sweeps
from effattn.ops.gla import pallas as gla_pallas

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_config_text  # noqa: E402  (a sibling script module)
from timing import time_call_batches  # noqa: E402  (a sibling script module)

OPS = ('gated_delta_rule', 'delta_rule', 'gla')
PARTS = {'gated_delta_rule': 'wy,fwd_state,fwd_state_store,fwd,bwd_state,bwd_chunk,bwd_dqk,bwd_wy,fwd_bwd',
         'gla': 'gates,intra_fwd,fwd_sweep,fwd,intra_bwd,bwd_sweeps,bwd_sweeps_o,dg,fwd_bwd,fwd_bwd_o'}
PARTS['delta_rule'] = PARTS['gated_delta_rule']
GLA_FORWARD_PARTS = ('gates', 'intra_fwd', 'fwd_sweep', 'fwd')
ABLATIONS = ('dq_role', 'dk_role', 'bf16_dots', 'gla_dq_role', 'gla_dk_role', 'gla_dv_role')


def config_class(op: str):
  return gla_pallas.KernelConfig if op == 'gla' else delta_pallas.KernelConfig


def parse_config(text: str | None, op: str = 'gated_delta_rule'):
  """'block_v=32,split_o=true' -> the op's KernelConfig with those fields; unknown fields are an error."""
  return kernel_config_text.parse_config(config_class(op), text)


def parts_of(op: str, shape, dtype, config):
  b, t, h, d = shape
  if op == 'gla':
    return gla_bench.benchmark_parts(b, t, h, d, dtype, config=config)
  return delta_bench.benchmark_parts(b, t, h, d, dtype, gated=op == 'gated_delta_rule', config=config)


def candidates(op: str, part: str, config) -> list:
  """KernelConfigs worth timing for one piece (the op's tune_candidates)."""
  if op == 'gla':
    return gla_pallas.tune_candidates(config or gla_pallas.DEFAULT_CONFIG)[
        'fwd' if part in GLA_FORWARD_PARTS else 'fwd_bwd']
  lists = delta_bench.tune_candidates(config)
  if part not in lists:
    raise SystemExit(f'--tune: no candidates for {part!r}; pieces with some: {", ".join(lists)}')
  return lists[part]


def ablate(what: str) -> None:
  """Patches the delta rules' per-chunk backward kernel module, or gla's backward sweeps, for --ablate (before
  any tracing)."""
  if what in ('dq_role', 'dk_role'):
    setattr(_bwd_kernel, f'_{what}', lambda *args, **kwargs: None)
  elif what in ('gla_dq_role', 'gla_dk_role', 'gla_dv_role'):
    setattr(gla_sweeps, what[3:], lambda *args, **kwargs: None)
  elif what == 'bf16_dots':
    _kernel_common._wide = _kernel_common._dot
  else:
    raise SystemExit(f'--ablate: unknown {what!r}; known: {", ".join(ABLATIONS)}')


def time_part(fn, reps: int) -> dict:
  """Median and min ms per call over `reps` batches of calls synchronised per batch (timing.py); the first call
  (compile) apart. Result files before 2026-12-02 late synchronised after every call (+0.1-0.2 ms each)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = time_call_batches(fn, jax.block_until_ready, samples=reps)
  return {'ms': 1e3 * statistics.median(times), 'min_ms': 1e3 * min(times), 'first_call_s': first}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('shape', nargs='*', type=int, default=[4, 4096, 16, 128], help='B T H D')
  p.add_argument('--op', default='gated_delta_rule', choices=OPS)
  p.add_argument('--nogate', action='store_true', help='the same as --op delta_rule')
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--parts', default=None, help='comma-separated pieces (default: all of the op\'s)')
  p.add_argument('--config', action='append', default=None,
                 help='KernelConfig fields, e.g. block_v=32,num_warps=4; repeat it to time each configuration in '
                      'turn in one process ("default": no overrides)')
  p.add_argument('--tune', default=None, help='one piece: time it at every tune_candidates config')
  p.add_argument('--ablate', default='', help=f'comma-separated, of {", ".join(ABLATIONS)} (diagnostic)')
  p.add_argument('--reps', type=int, default=20)
  p.add_argument('--out', default=None, help='also write the rows as JSON')
  a = p.parse_args(argv)
  op = 'delta_rule' if a.nogate else a.op
  if len(a.shape) != 4:
    raise SystemExit(f'shape: give B T H D (4 integers); got {a.shape}')
  texts = a.config or [None]
  cfgs = [parse_config(None if text == 'default' else text, op) for text in texts]  # all checked before timing
  dtype = jnp.dtype(a.dtype)
  names = (a.parts or PARTS[op]).split(',')
  unknown = sorted(set(names + ([a.tune] if a.tune else [])) - set(PARTS[op].split(',')))
  if unknown:
    raise SystemExit(f'--parts / --tune: {op} has no piece {unknown}; pieces: {PARTS[op]}')
  if any(w.startswith('gla_') != (op == 'gla') for w in filter(None, a.ablate.split(','))):
    raise SystemExit('--ablate: gla_* for gla, the others for the delta rules')
  if a.tune and len(cfgs) > 1:
    raise SystemExit('--tune: give at most one --config (the base of the candidates)')
  roles = {'dq_role', 'dk_role'} & set(a.ablate.split(','))
  if roles and any(getattr(cfg or config_class(op)(), 'bwd_split', False) for cfg in cfgs):
    raise SystemExit(f'--ablate {",".join(sorted(roles))}: a role of the fused per-chunk kernel; '
                     'add --config bwd_split=false')
  for what in filter(None, a.ablate.split(',')):
    ablate(what)
  b, t, h, d = a.shape
  print(f'{op} B={b} T={t} H={h} D={d} {a.dtype} {jax.devices()[0].device_kind}', flush=True)
  rows = []

  def save():  # after every row, so that a run cut off by a time limit keeps what it timed
    if a.out:
      meta = {'op': op, 'shape': [b, t, h, d], 'dtype': a.dtype, 'gated': op == 'gated_delta_rule',
              'device': jax.devices()[0].device_kind, 'jax': jax.__version__,
              'config': dataclasses.asdict(cfgs[0] or config_class(op)()), 'ablate': a.ablate}
      with open(a.out, 'w') as f:
        json.dump({'meta': meta, 'rows': rows}, f, indent=1)

  if a.tune:
    for c in candidates(op, a.tune, cfgs[0]):
      try:
        row = time_part(parts_of(op, a.shape, dtype, c)[a.tune], a.reps)
      except Exception as e:  # noqa: BLE001  (a configuration Triton cannot compile)
        row = {'ms': None, 'error': f'{type(e).__name__}: {str(e)[:200]}'}
      rows.append({'part': a.tune, 'config': dataclasses.asdict(c), **row})
      print(f'{a.tune:16s} {row["ms"] if row["ms"] is None else round(row["ms"], 3)} ms  {c}', flush=True)
      save()
  for text, cfg in ([] if a.tune else zip(texts, cfgs)):
    if len(cfgs) > 1:
      print(f'-- config {text or "default"}', flush=True)
    parts = parts_of(op, a.shape, dtype, cfg)
    for name in names:
      if name not in parts:
        print(f'{name:16s} not in this configuration (bwd_dqk, bwd_wy: the split backward only)', flush=True)
        continue
      try:
        row = time_part(parts[name], a.reps)
      except Exception as e:  # noqa: BLE001  (one configuration failing to compile leaves the others' rows)
        if len(cfgs) == 1:
          raise
        row = {'ms': None, 'error': f'{type(e).__name__}: {str(e)[:200]}'}
        print(f'{name:16s} failed: {row["error"]}', flush=True)
      else:
        print(f'{name:16s} {row["ms"]:8.3f} ms  (min {row["min_ms"]:.3f}, first call {row["first_call_s"]:.1f} s)',
              flush=True)
      rows.append({'part': name, 'config_text': text or 'default', **row})
      save()
  save()


if __name__ == '__main__':
  main()
