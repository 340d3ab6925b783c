"""GPU timing of each piece of the (gated) delta-rule Pallas kernel, to see where its time goes.

Pieces (effattn/ops/gated_delta_rule/_bench.py, benchmark_parts): 'wy' (WY/UT-transform kernel), 'fwd_state'
(forward state sweep given W, U), 'fwd_state_store' (the same, also writing the chunk states, as under grad),
'fwd' (whole forward), 'bwd_state' (reverse state-gradient sweep), 'bwd_xla' (the per-chunk backward kernel;
the name is historical: it was fp32 XLA), 'fwd_bwd' (the whole VJP). Median of --reps calls after 3 warm-up
calls, block_until_ready around each call; compile excluded (reported as the first call's time).

  python benchmarks/delta_parts.py                          # gated_delta_rule, B=4 T=4096 H=16 D=128 bf16
  python benchmarks/delta_parts.py --nogate --config split_o=true,block_v=32,num_warps=4,num_stages=2
  python benchmarks/delta_parts.py --tune fwd_state          # every tune_candidates config of one piece
  python benchmarks/delta_parts.py --nogate --parts bwd_xla --ablate dk_role   # what one role of it costs

--ablate (diagnostic: the gradients it gives are wrong) changes the per-chunk backward kernel
(_bwd_kernel.py) before timing: dq_role or dk_role skips that role's programs (each chunk has one of
each), bf16_dots makes its TF32 dots (fp32 operands) bf16 ones; the time saved is what the part costs.
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

from effattn.ops.gated_delta_rule import _bwd_kernel, _kernel_common
from effattn.ops.gated_delta_rule._bench import benchmark_parts, tune_candidates
from effattn.ops.gated_delta_rule.pallas import KernelConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_config_text  # noqa: E402  (a sibling script module)

PARTS = 'wy,fwd_state,fwd_state_store,fwd,bwd_state,bwd_xla,fwd_bwd'
ABLATIONS = ('dq_role', 'dk_role', 'bf16_dots')


def ablate(what: str) -> None:
  """Patches the per-chunk backward kernel's module for --ablate (before any tracing)."""
  if what in ('dq_role', 'dk_role'):
    setattr(_bwd_kernel, f'_{what}', lambda *args, **kwargs: None)
  elif what == 'bf16_dots':
    _bwd_kernel._wide = _kernel_common._dot
  else:
    raise SystemExit(f'--ablate: unknown {what!r}; known: {", ".join(ABLATIONS)}')


def parse_config(text: str | None) -> KernelConfig | None:
  """'block_v=32,split_o=true' -> KernelConfig(block_v=32, split_o=True); unknown fields are an error."""
  return kernel_config_text.parse_config(KernelConfig, text)


def time_part(fn, reps: int) -> dict:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  for _ in range(3):
    jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return {'ms': 1e3 * statistics.median(times), 'min_ms': 1e3 * min(times), 'first_call_s': first}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('shape', nargs='*', type=int, default=[4, 4096, 16, 128], help='B T H D')
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--nogate', action='store_true', help='delta_rule (no gate) instead of gated_delta_rule')
  p.add_argument('--parts', default=PARTS)
  p.add_argument('--config', default=None, help='KernelConfig fields, e.g. block_v=32,num_warps=4')
  p.add_argument('--tune', default=None, help='one piece: time it at every tune_candidates config')
  p.add_argument('--ablate', default='', help=f'comma-separated, of {", ".join(ABLATIONS)} (diagnostic)')
  p.add_argument('--reps', type=int, default=20)
  p.add_argument('--out', default=None, help='also write the rows as JSON')
  a = p.parse_args()
  b, t, h, d = a.shape
  cfg, dtype, gated = parse_config(a.config), jnp.dtype(a.dtype), not a.nogate
  for what in filter(None, a.ablate.split(',')):
    ablate(what)
  print(f'{"gated_delta_rule" if gated else "delta_rule"} B={b} T={t} H={h} D={d} {a.dtype} '
        f'{jax.devices()[0].device_kind}', flush=True)
  rows = []
  if a.tune:
    for c in tune_candidates(cfg)[a.tune]:
      try:
        row = time_part(benchmark_parts(b, t, h, d, dtype, gated=gated, config=c)[a.tune], a.reps)
      except Exception as e:  # noqa: BLE001  (a configuration Triton cannot compile)
        row = {'ms': None, 'error': f'{type(e).__name__}: {str(e)[:200]}'}
      rows.append({'part': a.tune, 'config': dataclasses.asdict(c), **row})
      print(f'{a.tune:16s} {row["ms"] if row["ms"] is None else round(row["ms"], 3)} ms  {c}', flush=True)
  else:
    parts = benchmark_parts(b, t, h, d, dtype, gated=gated, config=cfg)
    for name in a.parts.split(','):
      row = time_part(parts[name], a.reps)
      rows.append({'part': name, **row})
      print(f'{name:16s} {row["ms"]:8.3f} ms  (min {row["min_ms"]:.3f}, first call {row["first_call_s"]:.1f} s)',
            flush=True)
  if a.out:
    meta = {'shape': [b, t, h, d], 'dtype': a.dtype, 'gated': gated, 'device': jax.devices()[0].device_kind,
            'jax': jax.__version__, 'config': dataclasses.asdict(cfg or KernelConfig()), 'ablate': a.ablate}
    with open(a.out, 'w') as f:
      json.dump({'meta': meta, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
