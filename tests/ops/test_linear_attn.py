"""linear_attn: every impl against the dense fp32 oracle (outputs, final state, all gradients)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import linear_op_checks as checks
import numpy as np
import pytest

from effattn.ops.linear_attn import linear_attn


class Case(checks.Case):
  id_tail = ('chunk',)


OP = checks.Op(linear_attn, gate=None, normalize=True)

CASES = [
    Case(2, 63, 2, 48, 60, normalize=False, h0=True, seg=False),   # T < chunk, non-power-of-2 D
    Case(2, 130, 2, 32, 48, normalize=True, h0=True, seg=True),    # boundary at the chunk edge 64
    Case(1, 130, 1, 60, 16, normalize=False, h0=False, seg=True),
    Case(2, 1, 2, 16, 16, normalize=True, h0=True, seg=False),     # one-token decoding
    Case(1, 63, 2, 16, 32, normalize=True, h0=False, seg=True, chunk=16),  # boundaries at 16, 32
]


class _LinearAttnTest:
  impl: str

  @pytest.mark.parametrize('case', CASES, ids=str)
  def test_matches_naive(self, case):
    checks.check_matches_naive(OP, case, self.impl)

  def test_bf16_forward(self):
    """Normalised forward on bf16-rounded inputs against the fp32 oracle on the same inputs."""
    checks.check_bf16_forward(OP, CASES[1], self.impl)

  @pytest.mark.parametrize('normalize', [False, True])
  def test_two_halves_equal_whole(self, normalize):
    case = Case(2, 130, 2, 32, 48, normalize=normalize, h0=True, seg=False)
    checks.check_two_halves_equal_whole(OP, case, self.impl, cut=65)  # equal halves: one compile


class TestRecurrent(_LinearAttnTest):
  impl = 'recurrent'


class TestChunk(_LinearAttnTest):
  impl = 'chunk'

  @pytest.mark.parametrize('normalize', [False, True])
  def test_long_bf16_finite(self, normalize):
    checks.check_long_bf16_chunk_finite(OP, normalize=normalize)


def test_normalized_state_layout():
  """With normalize, the state's last column is z = sum of k (ones-column convention)."""
  x, _, _ = checks.make_inputs(OP, Case(1, 9, 1, 4, 3, normalize=True, h0=False, seg=False))
  run = lambda q, k, v: linear_attn(q, k, v, output_final_state=True, normalize=True, impl='chunk')
  _, ht = jax.jit(run)(x['q'], x['k'], x['v'])
  assert ht.shape == (1, 1, 4, 4)
  np.testing.assert_allclose(ht[..., -1], jnp.sum(x['k'], axis=1), rtol=1e-6)


def test_bad_impl_raises():
  checks.check_bad_impl_raises(OP, CASES[3])


@pytest.mark.parametrize('bad, name', [
    ({'v': jnp.zeros((2, 2, 2, 16))}, 'v'),
    ({'k': jnp.zeros((2, 1, 2, 8))}, 'k'),
    ({'initial_state': jnp.zeros((2, 2, 16, 17))}, 'initial_state'),  # V+1 without normalize
    ({'initial_state': jnp.zeros((2, 2, 16, 16)), 'normalize': True}, 'initial_state'),
    ({'segment_ids': jnp.zeros((2, 2), jnp.int32)}, 'segment_ids'),
    ({'chunk_size': -1}, 'chunk_size'),
])
def test_bad_argument_raises(bad, name):
  checks.check_bad_argument_raises(OP, CASES[3], bad, name)
