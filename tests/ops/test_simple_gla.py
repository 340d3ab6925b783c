"""simple_gla: every impl against the dense fp32 oracle (outputs, final state, all gradients)."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effattn.ops.simple_gla import simple_gla
from effattn.ops.simple_gla.slopes import alibi_slopes, transnormer_g_gamma
from helpers import TOL, assert_close


class Case(NamedTuple):
  b: int
  t: int
  h: int
  k: int
  v: int
  n: float  # gate g = logsigmoid(x) / n
  h0: bool
  seg: bool
  chunk: int = 64

  def __str__(self):
    return (f'B{self.b}-T{self.t}-H{self.h}-K{self.k}-V{self.v}-n{self.n:g}'
            f'{"-h0" if self.h0 else ""}{"-seg" if self.seg else ""}-C{self.chunk}')


CASES = [
    Case(2, 63, 2, 48, 60, n=1, h0=True, seg=False),        # T < chunk, non-power-of-2 D
    Case(2, 130, 2, 32, 48, n=0.1, h0=False, seg=True),     # segment boundary at the chunk edge 64
    Case(1, 130, 1, 60, 16, n=16, h0=True, seg=True),
    Case(2, 1, 2, 16, 16, n=1, h0=True, seg=False),         # one-token decoding
    Case(1, 63, 2, 16, 32, n=0.1, h0=True, seg=True, chunk=16),  # many chunks, boundaries at 16, 32
]


def make_segments(b: int, t: int, chunk: int) -> np.ndarray:
  """Row 0: ids 1, 2 | 3 from the chunk edge, then a trailing padding segment 0.
  Row 1: leading padding 0, then ids 4, 5 (a boundary inside a chunk)."""
  ids = np.empty((b, t), np.int32)
  pad = max(t // 10, 1)
  ids[0] = 3
  ids[0, :chunk] = 2
  ids[0, :chunk // 2 + 3] = 1
  ids[0, t - pad:] = 0
  for r in range(1, b):
    ids[r] = 5
    ids[r, :t // 2 + 1] = 4
    ids[r, :5] = 0
  return ids


def make_inputs(case: Case, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  x = {'q': f32(case.b, case.t, case.h, case.k), 'k': f32(case.b, case.t, case.h, case.k),
       'v': f32(case.b, case.t, case.h, case.v)}
  x['g'] = jax.nn.log_sigmoid(f32(case.b, case.t, case.h)) / case.n
  if case.h0:
    x['h0'] = f32(case.b, case.h, case.k, case.v)
  cot = (f32(case.b, case.t, case.h, case.v), f32(case.b, case.h, case.k, case.v))
  seg = jnp.asarray(make_segments(case.b, case.t, case.chunk)) if case.seg else None
  return x, cot, seg


@functools.partial(jax.jit, static_argnames=('impl', 'chunk'))
def _run(x, cot, seg, *, impl, chunk):
  """(o, final_state, grads of sum(o*do) + sum(ht*dht) for every input)."""
  def f(x):
    return simple_gla(x['q'], x['k'], x['v'], x['g'], initial_state=x.get('h0'),
                      output_final_state=True, segment_ids=seg, impl=impl, chunk_size=chunk)
  (o, ht), vjp = jax.vjp(f, x)
  return o, ht, vjp(cot)[0]


@functools.lru_cache(maxsize=None)
def _reference(case: Case):
  x, cot, seg = make_inputs(case)
  return jax.device_get(_run(x, cot, seg, impl='naive', chunk=case.chunk))


@functools.lru_cache(maxsize=None)
def _run_g_gamma(impl: str):
  """Gradients of the constant-decay form (TransNormerLLM rates) for q, k, v, h0 and g_gamma."""
  case = CASES[1]
  x, cot, seg = make_inputs(case)
  x = {'q': x['q'], 'k': x['k'], 'v': x['v'], 'h0': cot[1] * 0.5}

  def loss(x, gamma):
    o, ht = simple_gla(x['q'], x['k'], x['v'], g_gamma=gamma, initial_state=x['h0'],
                       output_final_state=True, segment_ids=seg, impl=impl)
    return jnp.sum(o * cot[0]) + jnp.sum(ht * cot[1])
  return jax.device_get(jax.jit(jax.grad(loss, argnums=(0, 1)))(x, transnormer_g_gamma(case.h, 1, 4)))


@functools.lru_cache(maxsize=None)
def _run_bf16(impl: str):
  """Forward on bf16-rounded inputs: in bf16 for the impl, upcast to fp32 for 'naive'."""
  x, _, seg = make_inputs(CASES[2])
  dtype = jnp.float32 if impl == 'naive' else jnp.bfloat16
  x = {n: a.astype(jnp.bfloat16).astype(dtype) for n, a in x.items() if n != 'h0'}
  run = lambda x: simple_gla(x['q'], x['k'], x['v'], x['g'], output_final_state=True,
                             segment_ids=seg, impl=impl)
  return jax.jit(run)(x)


class _SimpleGLATest:
  impl: str

  @pytest.mark.parametrize('case', CASES, ids=str)
  def test_matches_naive(self, case):
    x, cot, seg = make_inputs(case)
    o, ht, grads = _run(x, cot, seg, impl=self.impl, chunk=case.chunk)
    o_ref, ht_ref, grads_ref = _reference(case)
    tol = TOL['float32']
    assert_close('o', o, o_ref, tol)
    assert_close('final_state', ht, ht_ref, tol)
    assert set(grads) == set(x)
    for name in x:
      assert_close(f'd{name}', grads[name], grads_ref[name], tol)

  def test_g_gamma(self):
    grads, dgamma = _run_g_gamma(self.impl)
    grads_ref, _ = _run_g_gamma('naive')
    for name in grads_ref:
      assert_close(f'd{name}', grads[name], grads_ref[name], TOL['float32'])
    np.testing.assert_array_equal(dgamma, 0.0)  # g_gamma is a buffer

  def test_bf16_forward(self):
    o, ht = _run_bf16(self.impl)
    o_ref, ht_ref = _run_bf16('naive')
    assert o.dtype == jnp.bfloat16 and ht.dtype == jnp.float32
    assert_close('o', o, o_ref, TOL['bfloat16'])
    assert_close('final_state', ht, ht_ref, TOL['bfloat16'])

  def test_two_halves_equal_whole(self):
    case = Case(2, 130, 2, 32, 48, n=1, h0=True, seg=False)
    x, _, _ = make_inputs(case)

    @jax.jit
    def run(q, k, v, g, h0):
      return simple_gla(q, k, v, g, initial_state=h0, output_final_state=True, impl=self.impl)

    o, ht = run(x['q'], x['k'], x['v'], x['g'], x['h0'])
    cut = 65  # equal halves: one compile
    first, second = ({n: a[:, sl] for n, a in x.items() if n != 'h0'}
                     for sl in (slice(None, cut), slice(cut, None)))
    o1, h1 = run(**first, h0=x['h0'])
    o2, h2 = run(**second, h0=h1)
    assert_close('o', jnp.concatenate([o1, o2], axis=1), o, TOL['float32'])
    assert_close('final_state', h2, ht, TOL['float32'])


class TestRecurrent(_SimpleGLATest):
  impl = 'recurrent'


class TestChunk(_SimpleGLATest):
  impl = 'chunk'

  @pytest.mark.slow(reason='forward only; tests/ops/test_long_sequence.py::test_chunk_finite_at_64k_bf16'
                    '[simple_gla-n0.1] and [-n16] check the same T = 65536 bf16 chunk run, forward and every gradient')
  @pytest.mark.parametrize('n', [0.1, 16])
  def test_long_bf16_finite(self, n):
    b, t, h, d = 1, 65536, 1, 16
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (b, t, h, d), jnp.bfloat16) for key in keys[:3])
    g = (jax.nn.log_sigmoid(jax.random.normal(keys[3], (b, t, h))) / n).astype(jnp.bfloat16)
    o, ht = jax.jit(lambda *a: simple_gla(*a, output_final_state=True, impl='chunk'))(q, k, v, g)
    assert bool(jnp.all(jnp.isfinite(o))) and bool(jnp.all(jnp.isfinite(ht)))


def test_auto_picks_recurrent_for_decoding_and_chunk_otherwise():
  from effattn.ops.simple_gla import REGISTRY
  from effattn.ops.simple_gla._checks import auto_order
  assert auto_order(jnp.zeros((1, 1, 1, 4)))[0] == 'recurrent'
  assert auto_order(jnp.zeros((1, 5, 1, 4)))[0] == 'chunk'
  assert {'naive', 'recurrent', 'chunk'} <= set(REGISTRY.names)


def test_bad_impl_raises():
  x, _, _ = make_inputs(CASES[3])
  with pytest.raises(ValueError, match='unknown impl'):
    simple_gla(x['q'], x['k'], x['v'], x['g'], impl='flash')


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
  x, _, _ = make_inputs(CASES[3])
  args = {'q': x['q'], 'k': x['k'], 'v': x['v'], 'g': x['g']} | bad
  q, k, v, g = (args.pop(n) for n in ('q', 'k', 'v', 'g'))
  with pytest.raises(ValueError, match=name):
    simple_gla(q, k, v, g, **args)


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
