"""Accuracy of the delta rules' Pallas kernel per KernelConfig: relative RMS error against the fp32 naive oracle
of o, the final state and every gradient, to weigh a faster configuration against DESIGN.md's tolerance (5e-3
for bf16 inputs) before making it a default.

Cases (bf16, K = V = 128, T = 1000, initial state, q and k L2-normalised, beta = sigmoid(x)): gates
g = logsigmoid(x) / n for n in --gates ('none' = DeltaNet, no gate), B = 1, H = 2. On a GPU the kernel runs
through Triton (TF32 where the configuration asks for it); elsewhere in interpret mode (slow; small --seq-len).

  python benchmarks/kernel_precision.py --configs default,bwd_storage=input,bwd_storage=input+bwd_dots=bf16
  python benchmarks/kernel_precision.py --gates none,1 --seq-len 1000 --out results/delta_precision.json

--configs: ','-separated configurations, each '+'-separated field=value pairs of KernelConfig ('default' alone:
the defaults). Prints one line per (case, configuration): the worst quantity and every error.
--emulate-tf32 (the default off a GPU): the kernels' TF32 dots (fp32 operands of bf16 inputs, _kernel_common._wide)
round their operands to TF32 (10 mantissa bits, to nearest even) first, as the GPU's tensor cores do, so that a
CPU run screens a configuration before any GPU time is spent.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_config_text import parse_config  # noqa: E402

from effattn.ops.gated_delta_rule import _kernel_common  # noqa: E402
from effattn.ops.gated_delta_rule.naive import naive_gated_delta_rule  # noqa: E402
from effattn.ops.gated_delta_rule.pallas import KernelConfig, kernel_gated_delta_rule  # noqa: E402

TOLERANCE = 5e-3  # DESIGN.md, bf16 inputs


def rel_rms(got, ref) -> float:
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  denom = np.linalg.norm(ref.ravel())
  err = np.linalg.norm((got - ref).ravel())
  return float(err / denom) if denom else float(err)


def round_to_tf32(x):
  """fp32 x rounded to TF32 (the top 10 of fp32's 23 mantissa bits, to nearest even), still stored as fp32."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  bits = (bits + jnp.uint32(0x0FFF) + ((bits >> 13) & jnp.uint32(1))) & jnp.uint32(0xFFFFE000)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def emulate_tf32():
  """Patches _kernel_common._wide so that its dots of bf16 inputs see TF32-rounded operands (fp32 inputs keep
  IEEE dots). Returns a function that undoes the patch."""
  wide = _kernel_common._wide

  def tf32_wide(a, b, ca, cb, ctx):
    if ctx.fp32:
      return wide(a, b, ca, cb, ctx)
    return wide(round_to_tf32(a), round_to_tf32(b), ca, cb, ctx)
  _kernel_common._wide = tf32_wide
  return lambda: setattr(_kernel_common, '_wide', wide)


def make_inputs(t: int, gate: float | None, d: int = 128, b: int = 1, h: int = 2, seed: int = 0):
  """bf16 q, k, v; fp32 g (absent for DeltaNet), beta, h0; cotangents (dO bf16, d final state fp32)."""
  rng = np.random.default_rng(seed)
  f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  l2 = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  x = {'q': l2(f32(b, t, h, d)).astype(jnp.bfloat16), 'k': l2(f32(b, t, h, d)).astype(jnp.bfloat16),
       'v': f32(b, t, h, d).astype(jnp.bfloat16), 'beta': jax.nn.sigmoid(f32(b, t, h)), 'h0': f32(b, h, d, d)}
  if gate is not None:
    x['g'] = jax.nn.log_sigmoid(f32(b, t, h)) / gate
  return x, (f32(b, t, h, d).astype(jnp.bfloat16), f32(b, h, d, d))


def outputs_and_grads(fn, x, cot):
  def f(x):
    return fn(x['q'], x['k'], x['v'], x.get('g'), x['beta'], scale=x['q'].shape[-1] ** -0.5,
              initial_state=x['h0'])
  (o, ht), vjp = jax.vjp(f, x)
  return {'o': o, 'final_state': ht} | {'d' + n: g for n, g in vjp((cot[0].astype(o.dtype), cot[1]))[0].items()}


def errors(x, cot, config) -> dict[str, float]:
  kernel = lambda *a, **kw: kernel_gated_delta_rule(*a, config=config, **kw)
  naive = lambda *a, **kw: naive_gated_delta_rule(*a, segment_ids=None, **kw)
  got = jax.jit(lambda x, cot: outputs_and_grads(kernel, x, cot))(x, cot)
  up = ({n: v.astype(jnp.float32) for n, v in x.items()}, tuple(c.astype(jnp.float32) for c in cot))
  ref = jax.jit(lambda x, cot: outputs_and_grads(naive, x, cot))(*up)
  return {n: rel_rms(got[n], ref[n]) for n in ref}


def parse_configs(text: str) -> dict[str, KernelConfig]:
  out = {}
  for item in text.split(','):
    out[item] = KernelConfig() if item == 'default' else parse_config(KernelConfig, item.replace('+', ','),
                                                                       '--configs')
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--configs', default='default')
  p.add_argument('--gates', default='1,0.1,16,none', help="n of g = logsigmoid(x) / n, or 'none' (DeltaNet)")
  p.add_argument('--seq-len', type=int, default=1000)
  p.add_argument('--head-dim', type=int, default=128)
  p.add_argument('--out', default=None, help='also write the rows as JSON')
  p.add_argument('--emulate-tf32', default=None, choices=('on', 'off'),
                 help='round the TF32 dots\' operands (default: on off a GPU, off on one)')
  a = p.parse_args(argv)
  configs = parse_configs(a.configs)
  tf32 = (a.emulate_tf32 or ('off' if jax.default_backend() == 'gpu' else 'on')) == 'on'
  undo = emulate_tf32() if tf32 else (lambda: None)
  try:
    rows = _run_cases(a, configs)
  finally:
    undo()
  if a.out:
    meta = {'device': jax.devices()[0].device_kind, 'jax': jax.__version__, 'seq_len': a.seq_len,
            'head_dim': a.head_dim, 'tolerance': TOLERANCE, 'emulate_tf32': tf32}
    with open(a.out, 'w') as f:
      json.dump({'meta': meta, 'rows': rows}, f, indent=1)
  return rows


def _run_cases(a, configs):
  rows = []
  for gate_text in a.gates.split(','):
    gate = None if gate_text == 'none' else float(gate_text)
    x, cot = make_inputs(a.seq_len, gate, a.head_dim)
    for name, cfg in configs.items():
      errs = errors(x, cot, cfg)
      worst = max(errs, key=errs.get)
      rows.append({'gate': gate_text, 'config': name, 'worst': worst, 'errors': errs,
                   'within_tolerance': errs[worst] < TOLERANCE})
      print(f'gate {gate_text:5s} {name:40s} worst {worst:12s} {errs[worst]:.2e}'
            f'{"" if errs[worst] < TOLERANCE else "  OVER " + str(TOLERANCE)}  '
            + ' '.join(f'{n}={e:.1e}' for n, e in errs.items()), flush=True)
  return rows


if __name__ == '__main__':
  main()
