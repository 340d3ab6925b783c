"""simple_gla: every impl against the dense fp32 oracle (outputs, final state, all gradients)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import linear_op_checks as checks
import numpy as np
import pytest

from effattn.ops.simple_gla import simple_gla
from effattn.ops.simple_gla.slopes import alibi_slopes, transnormer_g_gamma
from helpers import TOL, assert_close


class Case(checks.Case):
  id_tail = ('chunk',)


OP = checks.Op(simple_gla, gate='head')

CASES = [
    Case(2, 63, 2, 48, 60, n=1, h0=True, seg=False),        # T < chunk, non-power-of-2 D
    Case(2, 130, 2, 32, 48, n=0.1, h0=False, seg=True),     # segment boundary at the chunk edge 64
    Case(1, 130, 1, 60, 16, n=16, h0=True, seg=True),
    Case(2, 1, 2, 16, 16, n=1, h0=True, seg=False),         # one-token decoding
    Case(1, 63, 2, 16, 32, n=0.1, h0=True, seg=True, chunk=16),  # many chunks, boundaries at 16, 32
]


@functools.lru_cache(maxsize=None)
def _run_g_gamma(impl: str):
  """Gradients of the constant-decay form (TransNormerLLM rates) for q, k, v, h0 and g_gamma."""
  case = CASES[1]
  x, cot, seg = checks.make_inputs(OP, case)
  x = {'q': x['q'], 'k': x['k'], 'v': x['v'], 'h0': cot[1] * 0.5}

  def loss(x, gamma):
    o, ht = simple_gla(x['q'], x['k'], x['v'], g_gamma=gamma, initial_state=x['h0'],
                       output_final_state=True, segment_ids=seg, impl=impl)
    return jnp.sum(o * cot[0]) + jnp.sum(ht * cot[1])
  return jax.device_get(jax.jit(jax.grad(loss, argnums=(0, 1)))(x, transnormer_g_gamma(case.h, 1, 4)))


class _SimpleGLATest:
  impl: str

  @pytest.mark.parametrize('case', CASES, ids=str)
  def test_matches_naive(self, case):
    checks.check_matches_naive(OP, case, self.impl)

  def test_g_gamma(self):
    grads, dgamma = _run_g_gamma(self.impl)
    grads_ref, _ = _run_g_gamma('naive')
    for name in grads_ref:
      assert_close(f'd{name}', grads[name], grads_ref[name], TOL['float32'])
    np.testing.assert_array_equal(dgamma, 0.0)  # g_gamma is a buffer

  def test_bf16_forward(self):
    """Forward on bf16-rounded inputs against the fp32 oracle on the same inputs."""
    checks.check_bf16_forward(OP, CASES[2], self.impl)

  def test_two_halves_equal_whole(self):
    case = Case(2, 130, 2, 32, 48, n=1, h0=True, seg=False)
    checks.check_two_halves_equal_whole(OP, case, self.impl, cut=65)  # equal halves: one compile


class TestRecurrent(_SimpleGLATest):
  impl = 'recurrent'


class TestChunk(_SimpleGLATest):
  impl = 'chunk'

  @pytest.mark.slow(reason='forward only; tests/ops/test_long_sequence.py::test_chunk_finite_at_64k_bf16'
                    '[simple_gla-n0.1] and [-n16] check the same T = 65536 bf16 chunk run, forward and every gradient')
  @pytest.mark.parametrize('n', [0.1, 16])
  def test_long_bf16_finite(self, n):
    checks.check_long_bf16_chunk_finite(OP, n=n)


def test_auto_picks_recurrent_for_decoding_and_chunk_otherwise():
  from effattn.ops.simple_gla import REGISTRY
  from effattn.ops.simple_gla._checks import auto_order
  assert auto_order(jnp.zeros((1, 1, 1, 4)))[0] == 'recurrent'
  assert auto_order(jnp.zeros((1, 5, 1, 4)))[0] == 'chunk'
  assert {'naive', 'recurrent', 'chunk'} <= set(REGISTRY.names)


def test_bad_impl_raises():
  checks.check_bad_impl_raises(OP, CASES[3])


@pytest.mark.parametrize('bad, name', [
    ({'v': jnp.zeros((2, 2, 2, 16))}, 'v'),
    ({'k': jnp.zeros((2, 1, 2, 8))}, 'k'),
    ({'g': jnp.zeros((2, 1, 3))}, 'g'),
    ({'initial_state': jnp.zeros((2, 2, 16, 8))}, 'initial_state'),
    ({'segment_ids': jnp.zeros((2, 2), jnp.int32)}, 'segment_ids'),
    ({'segment_ids': jnp.zeros((2, 1), jnp.float32)}, 'segment_ids'),
    ({'g': None, 'g_gamma': jnp.zeros((3,))}, 'g_gamma'),
    ({'g': None}, 'exactly one of g'),
    ({'g_gamma': jnp.zeros((2,))}, 'exactly one of g'),
    ({'chunk_size': 0}, 'chunk_size'),
])
def test_bad_argument_raises(bad, name):
  checks.check_bad_argument_raises(OP, CASES[3], bad, name)


def test_alibi_slopes_hand_values():
  np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -i for i in range(1, 9)], rtol=1e-15)
  # H = 6: slopes of 4 heads (2^-2, 2^-4, 2^-6, 2^-8), then every other slope of 8 heads: 2^-1, 2^-3.
  np.testing.assert_allclose(alibi_slopes(6), [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125],
                             rtol=1e-15)
  # H = 12: 2^-1 .. 2^-8, then 16-head slopes 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
  np.testing.assert_allclose(
      alibi_slopes(12)[8:], [0.7071067811865476, 0.3535533905932738, 0.1767766952966369,
                             0.08838834764831845], rtol=1e-15)


def test_transnormer_g_gamma_hand_values():
  s = np.array([0.25, 0.0625, 0.015625, 0.00390625])  # alibi_slopes(4): 2^(-8(h+1)/4) = 2^(-2(h+1))
  np.testing.assert_allclose(transnormer_g_gamma(4, 0, 3), -s * 1.00001, rtol=1e-7)
  np.testing.assert_allclose(transnormer_g_gamma(4, 1, 3), -s * 0.50001, rtol=1e-7)
  np.testing.assert_allclose(transnormer_g_gamma(4, 2, 3), -s * 0.00001, rtol=1e-6)
  np.testing.assert_allclose(transnormer_g_gamma(4, 0, 1), -s * 1.00001, rtol=1e-7)
  assert transnormer_g_gamma(4, 0, 3).dtype == jnp.float32
  with pytest.raises(ValueError, match='layer_idx'):
    transnormer_g_gamma(4, 3, 3)
