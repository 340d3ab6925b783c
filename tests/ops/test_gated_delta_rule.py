"""gated_delta_rule: every impl against the fp32 naive oracle (output, final state, gradients)."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effattn.ops.gated_delta_rule import gated_delta_rule
from helpers import TOL, assert_close


class Case(NamedTuple):
    b: int
    t: int
    h: int
    k: int
    v: int
    n: float          # gate extreme: g = logsigmoid(x) / n
    h0: bool          # with initial_state
    seg: bool         # packed segment_ids
    chunk: int = 64

    @property
    def id(self) -> str:
        s = f'B{self.b}-T{self.t}-H{self.h}-K{self.k}-V{self.v}-n{self.n:g}'
        s += '-h0' if self.h0 else ''
        s += '-seg' if self.seg else ''
        return s + (f'-C{self.chunk}' if self.chunk != 64 else '')


CASES = [
    Case(2, 63, 2, 48, 60, 1.0, True, False),
    Case(1, 130, 2, 60, 48, 16.0, False, False),
    Case(2, 130, 1, 48, 60, 0.1, True, True),
    Case(2, 130, 2, 48, 60, 1.0, False, True),
    Case(1, 1, 2, 48, 60, 1.0, True, False),
    Case(2, 63, 1, 32, 32, 16.0, True, True, chunk=16),
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
        'g': np.asarray(jax.nn.log_sigmoid(r.standard_normal((b, t, h)))) / case.n,
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
    """(o, final_state) and the gradients of sum(o*do) + sum(ht*dht) w.r.t. q, k, v, g, beta, h0."""
    do, dht = cts

    def loss(q, k, v, g, beta, h0):
        o, ht = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                 segment_ids=x['seg'], impl=impl, chunk_size=chunk)
        return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(ht * dht), (o, ht)

    args = tuple(x[n] for n in ('q', 'k', 'v', 'g', 'beta', 'h0'))
    (_, out), grads = jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True)(*args)
    return out, dict(zip(('dq', 'dk', 'dv', 'dg', 'dbeta', 'dh0'), grads))


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
        case = CASES[2]
        x, _ = make_inputs(case, dtype=jnp.bfloat16)
        run = jax.jit(functools.partial(gated_delta_rule, output_final_state=True, impl=self.impl))
        o, ht = run(x['q'], x['k'], x['v'], x['g'], x['beta'], initial_state=x['h0'],
                    segment_ids=x['seg'])
        f32 = lambda a: a.astype(jnp.float32)
        naive = jax.jit(functools.partial(gated_delta_rule, output_final_state=True, impl='naive'))
        o_ref, ht_ref = naive(f32(x['q']), f32(x['k']), f32(x['v']), f32(x['g']), f32(x['beta']),
                              initial_state=x['h0'], segment_ids=x['seg'])
        assert o.dtype == jnp.bfloat16
        assert_close('o', o, o_ref, TOL['bfloat16'])
        assert_close('final_state', ht, ht_ref, TOL['bfloat16'])

    def test_two_halves_equal_whole(self):
        case = CASES[1]
        x, _ = make_inputs(case)
        op = jax.jit(functools.partial(gated_delta_rule, output_final_state=True, impl=self.impl))
        run = lambda sl, h0: op(x['q'][:, sl], x['k'][:, sl], x['v'][:, sl], x['g'][:, sl],
                                x['beta'][:, sl], initial_state=h0)
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
                      '[gated_delta_rule-n0.1] and [-n16] check the same T = 65536 bf16 chunk run at both gate '
                      'extremes, betas near 0 or 1, forward and every gradient')
    def test_long_bf16_extreme_gates_finite(self):
        t, h, d = 65536, 3, 32
        r = np.random.default_rng(1)
        l2 = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
        n = np.array([0.1, 1.0, 16.0])  # one gate extreme per head
        bf = lambda a: jnp.asarray(a, jnp.bfloat16)
        q, k = bf(l2(r.standard_normal((1, t, h, d)))), bf(l2(r.standard_normal((1, t, h, d))))
        v = bf(r.standard_normal((1, t, h, d)))
        g = bf(np.asarray(jax.nn.log_sigmoid(r.standard_normal((1, t, h)))) / n)
        beta = bf(1 / (1 + np.exp(-r.standard_normal((1, t, h)))))
        o, ht = jax.jit(functools.partial(gated_delta_rule, output_final_state=True, impl='chunk'))(
            q, k, v, g, beta)
        assert bool(jnp.all(jnp.isfinite(o.astype(jnp.float32))))
        assert bool(jnp.all(jnp.isfinite(ht)))


def test_auto_dispatch_matches_naive():
    for case in (CASES[4], CASES[0]):  # T == 1 goes to recurrent, T > 1 to chunk
        x, _ = make_inputs(case)
        args = (x['q'], x['k'], x['v'], x['g'], x['beta'])
        auto = jax.jit(functools.partial(gated_delta_rule, impl='auto'))
        o, _ = auto(*args, initial_state=x['h0'])
        o_ref, _ = reference(case)[0]
        assert_close('o', o, o_ref, TOL['float32'])


def test_final_state_none_by_default():
    x, _ = make_inputs(CASES[4])
    _, ht = gated_delta_rule(x['q'], x['k'], x['v'], x['g'], x['beta'], impl='recurrent')
    assert ht is None


def test_unknown_impl_raises():
    x, _ = make_inputs(CASES[4])
    with pytest.raises(ValueError, match='supported'):
        gated_delta_rule(x['q'], x['k'], x['v'], x['g'], x['beta'], impl='fused')


@pytest.mark.parametrize('name', ['q', 'k', 'v', 'g', 'beta', 'initial_state', 'segment_ids'])
def test_wrong_shape_raises(name):
    x, _ = make_inputs(CASES[4])
    kwargs = {'q': x['q'], 'k': x['k'], 'v': x['v'], 'g': x['g'], 'beta': x['beta'],
              'initial_state': x['h0'], 'segment_ids': jnp.ones((1, 1), jnp.int32)}
    good = kwargs[name]
    # q: wrong rank; the others: a wrong size on axis 1 (T, or H for initial_state).
    bad = good[0] if name == 'q' else jnp.concatenate([good, good], axis=1)
    kwargs[name] = bad
    with pytest.raises(ValueError, match=f'^{name} '):
        gated_delta_rule(kwargs.pop('q'), kwargs.pop('k'), kwargs.pop('v'), kwargs.pop('g'),
                         kwargs.pop('beta'), **kwargs)
