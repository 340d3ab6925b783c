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

import jax
import jax.numpy as jnp
import linear_op_checks as checks
import numpy as np
import pytest
from helpers import TOL, assert_close

from effattn.ops.common import sequence_split
from effattn.ops.simple_gla import simple_gla
from effattn.ops.simple_gla.naive import naive_simple_gla
from effattn.ops.simple_gla.pallas import KernelConfig, kernel_simple_gla
from effattn.ops.simple_gla.slopes import transnormer_g_gamma

ON_GPU = jax.default_backend() == 'gpu'
simple_gla_mod = importlib.import_module('effattn.ops.simple_gla')  # the package, not the function
pallas_mod = importlib.import_module('effattn.ops.simple_gla.pallas')


class Case(checks.Case):
  id_tail = ('chunk', 'dtype')


OP = checks.Op(simple_gla, gate='head')  # g = logsigmoid(x) / n

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
    Case(8, 520, 16, 128, 128, n=1, h0=True, dtype='bfloat16'),  # B*H = 128: 128-wide value tiles (block_v_for)
]


def _check(case: Case, fn):
  checks.check_against_oracle(OP, case, fn, naive_simple_gla, chunk=case.chunk)


@pytest.mark.parametrize('case', CASES, ids=str)
def test_matches_naive(case):
  _check(case, kernel_simple_gla)


def test_three_backward_launches_and_small_tiles():
  """fuse_bwd=False and narrow tiles: several key / value tiles per head (partial gate terms summed);
  slow gates over several chunks of 32."""
  cfg = KernelConfig(block_v=16, block_k_bwd=16, block_v_bwd=32, fuse_bwd=False)
  _check(Case(1, 130, 1, 60, 48, n=16, h0=True, chunk=32), functools.partial(kernel_simple_gla, config=cfg))


def test_wide_value_tiles():
  """block_v = 128 (the default on GPU for 16-bit inputs at large B * H or with the split): one value tile."""
  cfg = KernelConfig(block_v=128)
  _check(Case(1, 70, 1, 32, 128, n=1, h0=True, chunk=32, dtype='bfloat16'),
         functools.partial(kernel_simple_gla, config=cfg))


@pytest.mark.parametrize('case', [Case(1, 256, 2, 32, 32, n=1, h0=True, chunk=16),
                                  Case(2, 256, 1, 16, 48, n=0.1, h0=False, chunk=32, dtype='bfloat16')], ids=str)
def test_sequence_split_matches_naive(case, monkeypatch):
  """Long-T / small-batch path (ops/common/sequence_split.py): 4 segments from the program target, run as
  batch rows and stitched by the segment-state scan; outputs, final state and every gradient exact. Segment
  states by the XLA einsum (the default is the block_states kernel, next test), summed over sub-blocks of 16 rows
  (1024 outside tests) so that the sum is exercised."""
  monkeypatch.setattr(sequence_split, '_SUB_BLOCK', 16)
  cfg = KernelConfig(split_programs=4 * case.b * case.h, split_min_len=32, split_states='xla')
  _check(case, functools.partial(kernel_simple_gla, config=cfg))


@pytest.mark.parametrize('states', ['kernel', 'kernel_fold'])
def test_sequence_split_with_kernel_segment_states(states):
  """KernelConfig(split_states='kernel' or 'kernel_fold'): the segment states by block_states (sub-blocks of 16
  rows here, split_sub_block, so that their sum is exercised; 'kernel_fold': the decays folded into k)."""
  case = Case(1, 128, 2, 32, 32, n=1, h0=True, chunk=16)
  cfg = KernelConfig(split_programs=4 * case.b * case.h, split_min_len=32, split_states=states, split_sub_block=16)
  _check(case, functools.partial(kernel_simple_gla, config=cfg))
  x, _, _ = checks.make_inputs(OP, case)
  # 2 segments of 64 rows (one block each at chunk 64): block_states computes the first segment's state only; the
  # kernel's run of the last segment gives the final state
  jaxpr = str(jax.make_jaxpr(lambda x: kernel_simple_gla(x['q'], x['k'], x['v'], x['g'], scale=0.1,
                                                          initial_state=x['h0'], config=cfg))(x))
  assert 'name=block_states' in jaxpr and 'f32[1,1,2,32,32] = pallas_call' in jaxpr
  for split in (4 * case.b * case.h, 0):  # named whether or not this call splits
    bad = KernelConfig(split_programs=split, split_min_len=32, split_states='einsum')
    with pytest.raises(ValueError, match="split_states must be one of 'kernel', 'kernel_fold', 'xla'; got 'einsum'"):
      kernel_simple_gla(x['q'], x['k'], x['v'], x['g'], scale=1.0, chunk_size=16, config=bad)


def test_g_gamma_through_the_public_op():
  """Constant decay (TransNormerLLM rates): grads of q, k, v, h0 match naive; g_gamma gets none."""
  case = Case(2, 100, 4, 32, 32, n=1, h0=True)
  x, cot, _ = checks.make_inputs(OP, case)

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


def test_value_tile_width_by_shape(monkeypatch):
  """KernelConfig.block_v None: 128-wide value tiles on GPU for 16-bit inputs unless they leave SMs idle without a
  sequence split (timed on the H200, 132 SMs); 64 elsewhere; an explicit block_v wins."""
  monkeypatch.setattr(pallas_mod, 'sm_count', lambda: 132)
  width = lambda b, t, h=16, vp=128, dtype=jnp.bfloat16, backend='gpu', cfg=KernelConfig(): cfg.block_v_for(
      b, h, t, vp, 64, dtype, backend)
  assert width(32, 2048) == 128 and width(8, 8192) == 128      # >= half a wave of 128-wide programs
  assert width(4, 4096) == 64                                   # 64 wide programs, no split at 64
  assert width(2, 32768) == 128 and width(1, 65536) == 128      # the split fills the SMs
  assert width(32, 2048, dtype=jnp.float32) == 64 and width(32, 2048, backend='cpu') == 64
  assert width(32, 2048, vp=64) == 64 and width(32, 2048, cfg=KernelConfig(block_v=32)) == 32


def test_segment_ids_not_implemented_and_auto_falls_back(monkeypatch):
  checks.check_segment_ids_not_implemented_and_auto_falls_back(OP, simple_gla_mod, monkeypatch)


def test_unsupported_chunk_size_or_head_dim_raises_not_implemented():
  x, _, _ = checks.make_inputs(OP, Case(1, 8, 1, 16, 16, n=1, h0=False))
  with pytest.raises(NotImplementedError, match='chunk_size'):
    simple_gla(x['q'], x['k'], x['v'], x['g'], impl='kernel', chunk_size=48)
  with pytest.raises(NotImplementedError, match='head dims'):
    simple_gla(x['q'], x['k'], jnp.zeros((1, 8, 1, 192)), x['g'], impl='kernel')


@pytest.mark.skipif(not ON_GPU, reason='T = 65536: GPU only')
@pytest.mark.parametrize('n', [0.1, 16])
def test_long_bf16_finite(n):
  checks.check_long_bf16_kernel_finite(OP, n, d=64)


@pytest.mark.skipif(not ON_GPU, reason='native Triton kernel: GPU only (interpret mode is too slow here)')
@pytest.mark.parametrize('case', GPU_CASES, ids=str)
def test_matches_naive_gpu_shapes(case):
  _check(case, kernel_simple_gla)
