"""linear_attn: every impl against the dense fp32 oracle (outputs, final state, all gradients)."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effattn.ops.linear_attn import linear_attn
from helpers import TOL, assert_close


class Case(NamedTuple):
  b: int
  t: int
  h: int
  k: int
  v: int
  normalize: bool
  h0: bool
  seg: bool
  chunk: int = 64

  def __str__(self):
    return (f'B{self.b}-T{self.t}-H{self.h}-K{self.k}-V{self.v}{"-norm" if self.normalize else ""}'
            f'{"-h0" if self.h0 else ""}{"-seg" if self.seg else ""}-C{self.chunk}')


CASES = [
    Case(2, 63, 2, 48, 60, normalize=False, h0=True, seg=False),   # T < chunk, non-power-of-2 D
    Case(2, 130, 2, 32, 48, normalize=True, h0=True, seg=True),    # boundary at the chunk edge 64
    Case(1, 130, 1, 60, 16, normalize=False, h0=False, seg=True),
    Case(2, 1, 2, 16, 16, normalize=True, h0=True, seg=False),     # one-token decoding
    Case(1, 63, 2, 16, 32, normalize=True, h0=False, seg=True, chunk=16),  # boundaries at 16, 32
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


def make_inputs(case: Case, seed: int = 0) -> tuple[dict, tuple, jax.Array | None]:
  """Random inputs; with normalize, q, k (and the state's z column) are positive like elu+1 features."""
  rng = np.random.default_rng(seed)
  f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  feat = (lambda x: jax.nn.elu(x) + 1.0) if case.normalize else (lambda x: x)
  state_v = case.v + 1 if case.normalize else case.v
  x = {'q': feat(f32(case.b, case.t, case.h, case.k)), 'k': feat(f32(case.b, case.t, case.h, case.k)),
       'v': f32(case.b, case.t, case.h, case.v)}
  if case.h0:
    h0 = f32(case.b, case.h, case.k, state_v)
    x['h0'] = h0.at[..., -1].set(jnp.abs(h0[..., -1])) if case.normalize else h0
  cot = (f32(case.b, case.t, case.h, case.v), f32(case.b, case.h, case.k, state_v))
  seg = jnp.asarray(make_segments(case.b, case.t, case.chunk)) if case.seg else None
  return x, cot, seg


@functools.partial(jax.jit, static_argnames=('impl', 'normalize', 'chunk'))
def _run(x, cot, seg, *, impl, normalize, chunk):
  """(o, final_state, grads of sum(o*do) + sum(ht*dht) for every input)."""
  def f(x):
    return linear_attn(x['q'], x['k'], x['v'], initial_state=x.get('h0'), output_final_state=True,
                       normalize=normalize, segment_ids=seg, impl=impl, chunk_size=chunk)
  (o, ht), vjp = jax.vjp(f, x)
  return o, ht, vjp(cot)[0]


@functools.lru_cache(maxsize=None)
def _reference(case: Case):
  x, cot, seg = make_inputs(case)
  return jax.device_get(_run(x, cot, seg, impl='naive', normalize=case.normalize, chunk=case.chunk))


@functools.lru_cache(maxsize=None)
def _run_bf16(impl: str):
  """Normalised forward on bf16-rounded inputs: in bf16 for the impl, upcast to fp32 for 'naive'."""
  x, _, seg = make_inputs(CASES[1])
  dtype = jnp.float32 if impl == 'naive' else jnp.bfloat16
  x = {n: a.astype(jnp.bfloat16).astype(dtype) for n, a in x.items() if n != 'h0'}
  run = lambda x: linear_attn(x['q'], x['k'], x['v'], output_final_state=True, normalize=True,
                              segment_ids=seg, impl=impl)
  return jax.jit(run)(x)


class _LinearAttnTest:
  impl: str

  @pytest.mark.parametrize('case', CASES, ids=str)
  def test_matches_naive(self, case):
    x, cot, seg = make_inputs(case)
    o, ht, grads = _run(x, cot, seg, impl=self.impl, normalize=case.normalize, chunk=case.chunk)
    o_ref, ht_ref, grads_ref = _reference(case)
    tol = TOL['float32']
    assert_close('o', o, o_ref, tol)
    assert_close('final_state', ht, ht_ref, tol)
    assert set(grads) == set(x)
    for name in x:
      assert_close(f'd{name}', grads[name], grads_ref[name], tol)

  def test_bf16_forward(self):
    o, ht = _run_bf16(self.impl)
    o_ref, ht_ref = _run_bf16('naive')
    assert o.dtype == jnp.bfloat16 and ht.dtype == jnp.float32
    assert_close('o', o, o_ref, TOL['bfloat16'])
    assert_close('final_state', ht, ht_ref, TOL['bfloat16'])

  @pytest.mark.parametrize('normalize', [False, True])
  def test_two_halves_equal_whole(self, normalize):
    case = Case(2, 130, 2, 32, 48, normalize=normalize, h0=True, seg=False)
    x, _, _ = make_inputs(case)

    @jax.jit
    def run(q, k, v, h0):
      return linear_attn(q, k, v, initial_state=h0, output_final_state=True, normalize=normalize,
                         impl=self.impl)

    o, ht = run(x['q'], x['k'], x['v'], x['h0'])
    cut = 65  # equal halves: one compile
    o1, h1 = run(x['q'][:, :cut], x['k'][:, :cut], x['v'][:, :cut], x['h0'])
    o2, h2 = run(x['q'][:, cut:], x['k'][:, cut:], x['v'][:, cut:], h1)
    assert_close('o', jnp.concatenate([o1, o2], axis=1), o, TOL['float32'])
    assert_close('final_state', h2, ht, TOL['float32'])


class TestRecurrent(_LinearAttnTest):
  impl = 'recurrent'


class TestChunk(_LinearAttnTest):
  impl = 'chunk'

  @pytest.mark.parametrize('normalize', [False, True])
  def test_long_bf16_finite(self, normalize):
    b, t, h, d = 1, 65536, 1, 16
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (b, t, h, d), jnp.bfloat16) for key in keys)
    if normalize:
      q, k = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
    run = lambda q, k, v: linear_attn(q, k, v, output_final_state=True, normalize=normalize,
                                      impl='chunk')
    o, ht = jax.jit(run)(q, k, v)
    assert bool(jnp.all(jnp.isfinite(o))) and bool(jnp.all(jnp.isfinite(ht)))


def test_normalized_state_layout():
  """With normalize, the state's last column is z = sum of k (ones-column convention)."""
  x, _, _ = make_inputs(Case(1, 9, 1, 4, 3, normalize=True, h0=False, seg=False))
  run = lambda q, k, v: linear_attn(q, k, v, output_final_state=True, normalize=True, impl='chunk')
  _, ht = jax.jit(run)(x['q'], x['k'], x['v'])
  assert ht.shape == (1, 1, 4, 4)
  np.testing.assert_allclose(ht[..., -1], jnp.sum(x['k'], axis=1), rtol=1e-6)


def test_bad_impl_raises():
  x, _, _ = make_inputs(CASES[3])
  with pytest.raises(ValueError, match='unknown impl'):
    linear_attn(x['q'], x['k'], x['v'], impl='flash')


@pytest.mark.parametrize('bad, name', [
    ({'v': jnp.zeros((2, 2, 2, 16))}, 'v'),
    ({'k': jnp.zeros((2, 1, 2, 8))}, 'k'),
    ({'initial_state': jnp.zeros((2, 2, 16, 17))}, 'initial_state'),  # V+1 without normalize
    ({'initial_state': jnp.zeros((2, 2, 16, 16)), 'normalize': True}, 'initial_state'),
    ({'segment_ids': jnp.zeros((2, 2), jnp.int32)}, 'segment_ids'),
    ({'chunk_size': -1}, 'chunk_size'),
])
def test_bad_argument_raises(bad, name):
  x, _, _ = make_inputs(CASES[3])
  args = {'q': x['q'], 'k': x['k'], 'v': x['v']} | bad
  q, k, v = (args.pop(n) for n in ('q', 'k', 'v'))
  with pytest.raises(ValueError, match=name):
    linear_attn(q, k, v, **args)
