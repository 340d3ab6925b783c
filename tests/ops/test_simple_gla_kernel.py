"""simple_gla impl='kernel' (Pallas) against the dense fp32 oracle: outputs, final state, all gradients.

On CPU the kernel runs in Pallas interpret mode (tiny shapes: each case compiles in seconds); on a GPU
it runs natively through the Triton lowering, and the GPU-only tests add real head sizes and T = 65536.
Tolerances are DESIGN.md's (relative RMS): 1e-5 in fp32 (the kernel's fp32 dots are IEEE, not TF32:
Precision.HIGHEST), 5e-3 in bf16 (bf16 operands, fp32 accumulation, bf16 output). The shared test base
in test_simple_gla.py is not reused: most of its cases use segment_ids, which the kernel does not take.
"""
from __future__ import annotations

import functools
import importlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOL, assert_close, assert_matches_oracle, upcast

from effattn.ops.common import sequence_split
from effattn.ops.simple_gla import simple_gla
from effattn.ops.simple_gla.naive import naive_simple_gla
from effattn.ops.simple_gla.pallas import KernelConfig, kernel_simple_gla
from effattn.ops.simple_gla.slopes import transnormer_g_gamma

ON_GPU = jax.default_backend() == 'gpu'
simple_gla_mod = importlib.import_module('effattn.ops.simple_gla')  # the package, not the function


class Case(NamedTuple):
  b: int
  t: int
  h: int
  k: int
  v: int
  n: float  # gate g = logsigmoid(x) / n
  h0: bool
  chunk: int = 64
  dtype: str = 'float32'

  def __str__(self):
    return (f'B{self.b}-T{self.t}-H{self.h}-K{self.k}-V{self.v}-n{self.n:g}'
            f'{"-h0" if self.h0 else ""}-C{self.chunk}-{self.dtype}')


CASES = [
    Case(2, 63, 2, 48, 60, n=1, h0=True),               # T < chunk, non-power-of-2 D (padded to 64)
    Case(1, 130, 2, 32, 48, n=0.1, h0=False),           # fast gates, T not a multiple of the chunk
    Case(1, 63, 2, 16, 32, n=0.1, h0=True, chunk=16),   # many chunks of 16
    Case(2, 1, 2, 16, 16, n=1, h0=True),                # one token
    Case(1, 130, 2, 64, 64, n=1, h0=True, dtype='bfloat16'),
    Case(1, 130, 1, 48, 32, n=0.1, h0=True, dtype='bfloat16'),
]
GPU_CASES = [
    Case(2, 1000, 2, 128, 128, n=1, h0=True, dtype='bfloat16'),
    Case(1, 1000, 3, 128, 64, n=0.1, h0=True, dtype='bfloat16'),
    Case(1, 777, 2, 128, 128, n=16, h0=True),
]


def make_inputs(case: Case, seed: int = 0):
  """Inputs (q, k, v in case.dtype; g, h0 fp32) and cotangents (do in case.dtype, dht fp32)."""
  rng = np.random.default_rng(seed)
  dt = jnp.dtype(case.dtype)
  f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  x = {'q': f32(case.b, case.t, case.h, case.k).astype(dt), 'k': f32(case.b, case.t, case.h, case.k).astype(dt),
       'v': f32(case.b, case.t, case.h, case.v).astype(dt)}
  x['g'] = jax.nn.log_sigmoid(f32(case.b, case.t, case.h)) / case.n
  if case.h0:
    x['h0'] = f32(case.b, case.h, case.k, case.v)
  cot = (f32(case.b, case.t, case.h, case.v).astype(dt), f32(case.b, case.h, case.k, case.v))
  return x, cot


@functools.partial(jax.jit, static_argnames=('fn', 'chunk'))
def _run(x, cot, *, fn, chunk):
  """(o, final_state, grads of sum(o*do) + sum(ht*dht) for every input); inputs upcast for 'naive'."""
  def f(x):
    return fn(x['q'], x['k'], x['v'], x['g'], scale=x['q'].shape[-1] ** -0.5,
              initial_state=x.get('h0'), chunk_size=chunk)
  (o, ht), vjp = jax.vjp(f, x)
  return o, ht, vjp((cot[0].astype(o.dtype), cot[1]))[0]


def _check(case: Case, fn, tol=None):
  x, cot = make_inputs(case)
  got = _run(x, cot, fn=fn, chunk=case.chunk)
  ref = _run(*upcast(x, cot), fn=naive_simple_gla, chunk=case.chunk)
  assert_matches_oracle(got, ref, x, TOL[case.dtype] if tol is None else tol)


@pytest.mark.parametrize('case', CASES, ids=str)
def test_matches_naive(case):
  _check(case, kernel_simple_gla)


def test_three_backward_launches_and_small_tiles():
  """fuse_bwd=False and narrow tiles: several key / value tiles per head (partial gate terms summed);
  slow gates over several chunks of 32."""
  cfg = KernelConfig(block_v=16, block_k_bwd=16, block_v_bwd=32, fuse_bwd=False)
  _check(Case(1, 130, 1, 60, 48, n=16, h0=True, chunk=32), functools.partial(kernel_simple_gla, config=cfg))


@pytest.mark.parametrize('case', [Case(1, 256, 2, 32, 32, n=1, h0=True, chunk=16),
                                  Case(2, 256, 1, 16, 48, n=0.1, h0=False, chunk=32, dtype='bfloat16')], ids=str)
def test_sequence_split_matches_naive(case, monkeypatch):
  """Long-T / small-batch path (ops/common/sequence_split.py): 4 segments from the program target, run as
  batch rows and stitched by the segment-state scan; outputs, final state and every gradient exact. Segment
  states summed over sub-blocks of 16 rows (1024 outside tests) so that the sum is exercised."""
  monkeypatch.setattr(sequence_split, '_SUB_BLOCK', 16)
  cfg = KernelConfig(split_programs=4 * case.b * case.h, split_min_len=32)
  _check(case, functools.partial(kernel_simple_gla, config=cfg))


def test_sequence_split_with_kernel_segment_states(monkeypatch):
  """KernelConfig(split_states='kernel'): the segment states by block_states (sub-blocks of 16 rows here)."""
  monkeypatch.setattr(sequence_split, '_SUB_BLOCK', 16)
  case = Case(1, 128, 2, 32, 32, n=1, h0=True, chunk=16)
  cfg = KernelConfig(split_programs=4 * case.b * case.h, split_min_len=32, split_states='kernel')
  _check(case, functools.partial(kernel_simple_gla, config=cfg))
  x, _ = make_inputs(case)
  for split in (4 * case.b * case.h, 0):  # named whether or not this call splits
    bad = KernelConfig(split_programs=split, split_min_len=32, split_states='einsum')
    with pytest.raises(ValueError, match="split_states must be 'kernel' or 'xla'; got 'einsum'"):
      kernel_simple_gla(x['q'], x['k'], x['v'], x['g'], scale=1.0, chunk_size=16, config=bad)


def test_g_gamma_through_the_public_op():
  """Constant decay (TransNormerLLM rates): grads of q, k, v, h0 match naive; g_gamma gets none."""
  case = Case(2, 100, 4, 32, 32, n=1, h0=True)
  x, cot = make_inputs(case)

  def loss(x, gamma, impl):
    o, ht = simple_gla(x['q'], x['k'], x['v'], g_gamma=gamma, initial_state=x['h0'],
                       output_final_state=True, impl=impl)
    return jnp.sum(o * cot[0]) + jnp.sum(ht * cot[1])
  gamma = transnormer_g_gamma(case.h, 1, 4)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  (grads, dgamma), (grads_ref, _) = grad(x, gamma, 'kernel'), grad(x, gamma, 'naive')
  for name in ('q', 'k', 'v', 'h0'):
    assert_close(f'd{name}', grads[name], grads_ref[name], TOL['float32'])
  np.testing.assert_array_equal(dgamma, 0.0)


def test_segment_ids_not_implemented_and_auto_falls_back(monkeypatch):
  x, _ = make_inputs(Case(1, 40, 1, 16, 16, n=1, h0=False))
  seg = jnp.asarray(np.repeat([[1, 2]], 20, axis=1))
  with pytest.raises(NotImplementedError, match='segment_ids'):
    simple_gla(x['q'], x['k'], x['v'], x['g'], segment_ids=seg, impl='kernel')
  monkeypatch.setattr(simple_gla_mod, 'default_backend', lambda: 'gpu')  # 'auto' as on a GPU
  assert simple_gla_mod._auto_order(x['q'])[0] == 'kernel'
  assert simple_gla_mod._auto_order(x['q'][:, :1])[0] == 'recurrent'
  o, _ = simple_gla(x['q'], x['k'], x['v'], x['g'], segment_ids=seg, impl='auto')
  o_ref, _ = simple_gla(x['q'], x['k'], x['v'], x['g'], segment_ids=seg, impl='chunk')
  np.testing.assert_array_equal(o, o_ref)


def test_unsupported_chunk_size_or_head_dim_raises_not_implemented():
  x, _ = make_inputs(Case(1, 8, 1, 16, 16, n=1, h0=False))
  with pytest.raises(NotImplementedError, match='chunk_size'):
    simple_gla(x['q'], x['k'], x['v'], x['g'], impl='kernel', chunk_size=48)
  with pytest.raises(NotImplementedError, match='head dims'):
    simple_gla(x['q'], x['k'], jnp.zeros((1, 8, 1, 192)), x['g'], impl='kernel')


@pytest.mark.skipif(not ON_GPU, reason='T = 65536: GPU only')
@pytest.mark.parametrize('n', [0.1, 16])
def test_long_bf16_finite(n):
  b, t, h, d = 1, 65536, 2, 64
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (b, t, h, d), jnp.bfloat16) for key in keys[:3])
  g = jax.nn.log_sigmoid(jax.random.normal(keys[3], (b, t, h))) / n

  def loss(q, k, v, g):
    o, ht = simple_gla(q, k, v, g, output_final_state=True, impl='kernel')
    return jnp.sum(o.astype(jnp.float32)) + jnp.sum(ht), (o, ht)
  grads, (o, ht) = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, g)
  for a in (o, ht, *grads):
    assert bool(jnp.all(jnp.isfinite(a.astype(jnp.float32))))


@pytest.mark.skipif(not ON_GPU, reason='native Triton kernel: GPU only (interpret mode is too slow here)')
@pytest.mark.parametrize('case', GPU_CASES, ids=str)
def test_matches_naive_gpu_shapes(case):
  _check(case, kernel_simple_gla)
