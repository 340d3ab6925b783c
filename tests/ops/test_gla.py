"""GLA: recurrent and chunk against the fp32 naive step loop (outputs, final state and all gradients)."""
from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effattn.ops.gla import _auto_order, gla
from helpers import TOL, OpCase, assert_close

IMPLS = ['recurrent', 'chunk']


class Case(OpCase):
  """Cases use b, t, h, k, v, n (always set), h0, seg (packed segment_ids, '-packed' in the id) and chunk;
  '-C{chunk}' ends the id where chunk != 64."""
  seg_id = '-packed'

  @property
  def id(self):
    return str(self) + (f'-C{self.chunk}' if self.chunk != 64 else '')


def _segments(b, t):
  """Several segments per row: a boundary exactly at the chunk edge 64, one at 63 (a one-token segment reusing an
  earlier id), padding runs (id 0) in the middle and at the end, an id reused after padding."""
  assert t == 130
  rows = [[1] * 20 + [2] * 44 + [3] * 40 + [0] * 26,
          [1] * 30 + [2] * 33 + [1] * 1 + [4] * 36 + [0] * 10 + [4] * 20]
  return jnp.asarray(np.array(rows[:b], np.int32))


def _inputs(c: Case, seed=0):
  r = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
  q, k, v = f(c.b, c.t, c.h, c.k), f(c.b, c.t, c.h, c.k), f(c.b, c.t, c.h, c.v)
  g = jax.nn.log_sigmoid(f(c.b, c.t, c.h, c.k)) / c.n
  h0 = f(c.b, c.h, c.k, c.v) if c.h0 else None
  seg = _segments(c.b, c.t) if c.seg else None
  do, dht = f(c.b, c.t, c.h, c.v), f(c.b, c.h, c.k, c.v)
  return (q, k, v, g, h0), seg, do, dht


@functools.partial(jax.jit, static_argnames=('impl', 'chunk_size'))
def _fwd_bwd(args, seg, do, dht, impl, chunk_size=64):
  def loss(args):
    q, k, v, g, h0 = args
    o, ht = gla(q, k, v, g, initial_state=h0, output_final_state=True, segment_ids=seg, impl=impl,
                chunk_size=chunk_size)
    return jnp.sum(o * do) + jnp.sum(ht * dht), (o, ht)
  (_, (o, ht)), grads = jax.value_and_grad(loss, has_aux=True)(args)
  return o, ht, grads


@functools.lru_cache(maxsize=None)
def _reference(c: Case):
  args, seg, do, dht = _inputs(c)
  return _fwd_bwd(args, seg, do, dht, impl='naive')


def _assert_matches_naive(c: Case, impl: str):
  args, seg, do, dht = _inputs(c)
  o, ht, grads = _fwd_bwd(args, seg, do, dht, impl=impl, chunk_size=c.chunk)
  o_ref, ht_ref, grads_ref = _reference(c)
  tol = TOL['float32']
  assert_close('o', o, o_ref, tol)
  assert_close('final_state', ht, ht_ref, tol)
  for name, a, b in zip(['dq', 'dk', 'dv', 'dg', 'd initial_state'], grads, grads_ref):
    if b is None:
      assert a is None
    else:
      assert_close(name, a, b, tol)


CASES = [
    Case(2, 63, 2, 48, 60, n=1.0),
    Case(2, 1, 2, 48, 60, n=1.0, h0=True),
    *[Case(1, 130, 2, 48, 60, n=n, h0=True) for n in (0.1, 1.0, 16.0)],
    *[Case(2, 130, 1, 32, 16, n=n, h0=True, seg=True) for n in (0.1, 1.0)],
]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', CASES, ids=lambda c: c.id)
def test_matches_naive(case, impl):
  _assert_matches_naive(case, impl)


@pytest.mark.parametrize('case', [Case(2, 130, 1, 32, 16, n=1.0, h0=True, seg=True, chunk=cs)
                                  for cs in (16, 32)], ids=lambda c: c.id)
def test_chunk_sizes(case):
  _assert_matches_naive(case, 'chunk')


@pytest.mark.parametrize('impl', IMPLS)
def test_bf16_forward(impl):
  c = Case(1, 130, 2, 48, 60, n=1.0, h0=True)
  (q, k, v, g, h0), _, _, _ = _inputs(c)
  q, k, v, g = (x.astype(jnp.bfloat16) for x in (q, k, v, g))
  run = jax.jit(functools.partial(gla, output_final_state=True, impl=impl))
  o, ht = run(q, k, v, g, initial_state=h0)
  o_ref, ht_ref = jax.jit(functools.partial(gla, output_final_state=True, impl='naive'))(
      *(x.astype(jnp.float32) for x in (q, k, v, g)), initial_state=h0)
  assert o.dtype == jnp.bfloat16 and ht.dtype == jnp.float32
  assert_close('o', o, o_ref, TOL['bfloat16'])
  assert_close('final_state', ht, ht_ref, TOL['bfloat16'])


@pytest.mark.parametrize('impl', IMPLS)
def test_two_halves_equal_whole(impl):
  c = Case(1, 130, 2, 48, 60, n=1.0, h0=True)
  (q, k, v, g, h0), _, _, _ = _inputs(c)
  run = jax.jit(functools.partial(gla, output_final_state=True, impl=impl))
  o, ht = run(q, k, v, g, initial_state=h0)
  cut = 70  # not a chunk edge
  o1, h1 = run(q[:, :cut], k[:, :cut], v[:, :cut], g[:, :cut], initial_state=h0)
  o2, h2 = run(q[:, cut:], k[:, cut:], v[:, cut:], g[:, cut:], initial_state=h1)
  assert_close('o', jnp.concatenate([o1, o2], axis=1), o, TOL['float32'])
  assert_close('final_state', h2, ht, TOL['float32'])


@pytest.mark.slow(reason='forward only; tests/ops/test_long_sequence.py::test_chunk_finite_at_64k_bf16[gla-n0.1] '
                  'and [gla-n16] check the same T = 65536 bf16 chunk run with bf16 gates, forward and every gradient')
def test_long_bf16_extreme_gates_finite():
  t = 65536
  r = np.random.default_rng(1)
  f = lambda *s: jnp.asarray(r.standard_normal(s), jnp.bfloat16)
  q, k, v, x = f(1, t, 1, 16), f(1, t, 1, 16), f(1, t, 1, 16), f(1, t, 1, 16)
  run = jax.jit(lambda g: gla(q, k, v, g, output_final_state=True, impl='chunk'))
  for n in (0.1, 16.0):
    o, ht = run((jax.nn.log_sigmoid(x.astype(jnp.float32)) / n).astype(jnp.bfloat16))
    assert bool(jnp.all(jnp.isfinite(o))) and bool(jnp.all(jnp.isfinite(ht))), f'n={n}'


def test_final_state_only_when_asked():
  (q, k, v, g, _), _, _, _ = _inputs(Case(1, 1, 1, 8, 8, n=1.0))
  assert gla(q, k, v, g, impl='recurrent')[1] is None


def test_auto_order(monkeypatch):
  """Off GPU ('kernel' comes first on GPU: test_gla_kernel.py)."""
  monkeypatch.setattr(importlib.import_module('effattn.ops.gla'), 'default_backend', lambda: 'cpu')
  one, many = jnp.zeros((1, 1, 1, 8)), jnp.zeros((1, 5, 1, 8))
  assert _auto_order(one)[0] == 'recurrent'
  assert _auto_order(many)[0] == 'chunk'


def test_bad_impl():
  (q, k, v, g, _), _, _, _ = _inputs(Case(1, 1, 1, 8, 8, n=1.0))
  with pytest.raises(ValueError, match='naive'):
    gla(q, k, v, g, impl='flash')


@pytest.mark.parametrize('name', ['k', 'v', 'g', 'initial_state', 'segment_ids'])
def test_wrong_shape_names_argument(name):
  (q, k, v, g, _), _, _, _ = _inputs(Case(1, 4, 2, 8, 6, n=1.0))
  kw = dict(k=k, v=v, g=g, initial_state=jnp.zeros((1, 2, 8, 6)), segment_ids=jnp.ones((1, 4), jnp.int32))
  kw[name] = jnp.zeros((3, 5, 7) if name != 'initial_state' else (1, 2, 8, 7))
  with pytest.raises(ValueError, match=name):
    gla(q, kw['k'], kw['v'], kw['g'], initial_state=kw['initial_state'], segment_ids=kw['segment_ids'])
