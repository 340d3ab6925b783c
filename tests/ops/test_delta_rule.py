"""delta_rule: every impl against the fp32 naive oracle (output, final state, gradients)."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effattn.ops.delta_rule import delta_rule
from helpers import TOL, assert_close


class Case(NamedTuple):
    b: int
    t: int
    h: int
    k: int
    v: int
    h0: bool          # with initial_state
    seg: bool         # packed segment_ids
    chunk: int = 64

    @property
    def id(self) -> str:
        s = f'B{self.b}-T{self.t}-H{self.h}-K{self.k}-V{self.v}'
        s += '-h0' if self.h0 else ''
        s += '-seg' if self.seg else ''
        return s + (f'-C{self.chunk}' if self.chunk != 64 else '')


CASES = [
    Case(2, 63, 2, 48, 60, True, False),
    Case(1, 130, 2, 60, 48, False, False),
    Case(2, 130, 1, 48, 60, True, True),
    Case(1, 1, 2, 48, 60, True, False),
    Case(2, 63, 1, 32, 32, False, True, chunk=16),
]


def packed_segment_ids(b: int, t: int, chunk: int) -> np.ndarray:
    """Several segments per row, a boundary exactly at a chunk edge, padding segments (id 0)."""
    seg = np.ones((b, t), np.int32)
    for row in range(b):
        cuts = sorted({min(t, c) for c in (7 + 3 * row, chunk, chunk + 9, (3 * t) // 4)})
        for i, c in enumerate(cuts):
            seg[row, c:] = i + 2
        seg[row, t - 5:] = 0  # right padding
    if b > 1:
        seg[1, :3] = 0  # left padding in row 1
    return seg


def make_inputs(case: Case, dtype=jnp.float32, seed: int = 0):
    r = np.random.default_rng(seed)
    l2 = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    b, t, h = case.b, case.t, case.h
    x = {
        'q': l2(r.standard_normal((b, t, h, case.k))),
        'k': l2(r.standard_normal((b, t, h, case.k))),
        'v': r.standard_normal((b, t, h, case.v)),
        'beta': 1 / (1 + np.exp(-r.standard_normal((b, t, h)))),
    }
    x = {name: jnp.asarray(a, dtype) for name, a in x.items()}
    h0 = r.standard_normal((b, h, case.k, case.v))
    x['h0'] = jnp.asarray(h0, jnp.float32) if case.h0 else None
    x['seg'] = jnp.asarray(packed_segment_ids(b, t, case.chunk)) if case.seg else None
    cts = (jnp.asarray(r.standard_normal((b, t, h, case.v)), jnp.float32),
           jnp.asarray(r.standard_normal((b, h, case.k, case.v)), jnp.float32))
    return x, cts


@functools.partial(jax.jit, static_argnames=('impl', 'chunk'))
def loss_and_grads(x, cts, *, impl, chunk):
    """(o, final_state) and the gradients of sum(o*do) + sum(ht*dht) w.r.t. q, k, v, beta, h0."""
    do, dht = cts

    def loss(q, k, v, beta, h0):
        o, ht = delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True,
                           segment_ids=x['seg'], impl=impl, chunk_size=chunk)
        return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(ht * dht), (o, ht)

    args = tuple(x[n] for n in ('q', 'k', 'v', 'beta', 'h0'))
    (_, out), grads = jax.value_and_grad(loss, argnums=tuple(range(5)), has_aux=True)(*args)
    return out, dict(zip(('dq', 'dk', 'dv', 'dbeta', 'dh0'), grads))


@functools.lru_cache(maxsize=None)
def reference(case: Case):
    return loss_and_grads(*make_inputs(case), impl='naive', chunk=case.chunk)


class _Base:
    impl: str

    @pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
    def test_matches_naive_fp32(self, case):
        (o, ht), grads = loss_and_grads(*make_inputs(case), impl=self.impl, chunk=case.chunk)
        (o_ref, ht_ref), grads_ref = reference(case)
        tol = TOL['float32']
        assert_close('o', o, o_ref, tol)
        assert_close('final_state', ht, ht_ref, tol)
        for name, ref in grads_ref.items():
            if ref is not None:
                assert_close(name, grads[name], ref, tol)

    def test_bf16_forward(self):
        """bf16 inputs against the fp32 naive result on the same (bf16-rounded) inputs."""
        x, _ = make_inputs(CASES[2], dtype=jnp.bfloat16)
        run = jax.jit(functools.partial(delta_rule, output_final_state=True, impl=self.impl))
        o, ht = run(x['q'], x['k'], x['v'], x['beta'], initial_state=x['h0'],
                    segment_ids=x['seg'])
        f32 = lambda a: a.astype(jnp.float32)
        naive = jax.jit(functools.partial(delta_rule, output_final_state=True, impl='naive'))
        o_ref, ht_ref = naive(f32(x['q']), f32(x['k']), f32(x['v']), f32(x['beta']),
                              initial_state=x['h0'], segment_ids=x['seg'])
        assert o.dtype == jnp.bfloat16
        assert_close('o', o, o_ref, TOL['bfloat16'])
        assert_close('final_state', ht, ht_ref, TOL['bfloat16'])

    def test_two_halves_equal_whole(self):
        x, _ = make_inputs(CASES[1])
        op = jax.jit(functools.partial(delta_rule, output_final_state=True, impl=self.impl))
        run = lambda sl, h0: op(x['q'][:, sl], x['k'][:, sl], x['v'][:, sl], x['beta'][:, sl],
                                initial_state=h0)
        o, ht = run(slice(None), None)
        o1, h1 = run(slice(0, 70), None)
        o2, h2 = run(slice(70, None), h1)
        assert_close('o', jnp.concatenate([o1, o2], 1), o, TOL['float32'])
        assert_close('final_state', h2, ht, TOL['float32'])


class TestRecurrent(_Base):
    impl = 'recurrent'


class TestChunk(_Base):
    impl = 'chunk'

    @pytest.mark.slow(reason='forward only; tests/ops/test_long_sequence.py::test_chunk_finite_at_64k_bf16'
                      '[delta_rule] checks the same T = 65536 bf16 chunk run with betas near 0 or 1, forward and '
                      'every gradient')
    def test_long_bf16_extreme_beta_finite(self):
        t, h, d = 65536, 2, 32
        r = np.random.default_rng(1)
        l2 = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
        bf = lambda a: jnp.asarray(a, jnp.bfloat16)
        q, k = bf(l2(r.standard_normal((1, t, h, d)))), bf(l2(r.standard_normal((1, t, h, d))))
        v = bf(r.standard_normal((1, t, h, d)))
        beta = bf(1 / (1 + np.exp(-8 * r.standard_normal((1, t, h)))))  # mostly near 0 or 1
        o, ht = jax.jit(functools.partial(delta_rule, output_final_state=True, impl='chunk'))(
            q, k, v, beta)
        assert bool(jnp.all(jnp.isfinite(o.astype(jnp.float32))))
        assert bool(jnp.all(jnp.isfinite(ht)))


def test_auto_dispatch_matches_naive():
    for case in (CASES[3], CASES[0]):  # T == 1 goes to recurrent, T > 1 to chunk
        x, _ = make_inputs(case)
        auto = jax.jit(functools.partial(delta_rule, impl='auto'))
        o, _ = auto(x['q'], x['k'], x['v'], x['beta'], initial_state=x['h0'])
        o_ref, _ = reference(case)[0]
        assert_close('o', o, o_ref, TOL['float32'])


def test_final_state_none_by_default():
    x, _ = make_inputs(CASES[3])
    _, ht = delta_rule(x['q'], x['k'], x['v'], x['beta'], impl='recurrent')
    assert ht is None


def test_unknown_impl_raises():
    x, _ = make_inputs(CASES[3])
    with pytest.raises(ValueError, match='supported'):
        delta_rule(x['q'], x['k'], x['v'], x['beta'], impl='fused')


@pytest.mark.parametrize('name', ['q', 'k', 'v', 'beta', 'initial_state', 'segment_ids'])
def test_wrong_shape_raises(name):
    x, _ = make_inputs(CASES[3])
    kwargs = {'q': x['q'], 'k': x['k'], 'v': x['v'], 'beta': x['beta'],
              'initial_state': x['h0'], 'segment_ids': jnp.ones((1, 1), jnp.int32)}
    good = kwargs[name]
    # q: wrong rank; the others: a wrong size on axis 1 (T, or H for initial_state).
    bad = good[0] if name == 'q' else jnp.concatenate([good, good], axis=1)
    kwargs[name] = bad
    with pytest.raises(ValueError, match=f'^{name} '):
        delta_rule(kwargs.pop('q'), kwargs.pop('k'), kwargs.pop('v'), kwargs.pop('beta'), **kwargs)
