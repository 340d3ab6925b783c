"""agent_attention: recurrent and chunk against the dense fp32 oracle (outputs, final state, all
gradients), state carrying, segments, and the non-causal (encoder) form against its dense formula."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOL, OpCase, assert_close

from effattn.ops.agent_attention import agent_attention


class Case(OpCase):
    """Cases use b, t, h, k, v, n (the number of agents, an int), h0, seg and chunk."""
    id_tail = ('chunk',)


CASES = [
    Case(2, 1, 2, 16, 16, 4, h0=True, seg=False),  # one-token decoding
    Case(2, 63, 2, 48, 60, 5, h0=True, seg=False),  # T < chunk, non-power-of-2 D
    Case(1, 130, 2, 16, 24, 8, h0=False, seg=False),  # T not a multiple of the chunk
    Case(2, 130, 1, 16, 12, 3, h0=True, seg=True, chunk=16),  # boundaries inside / at chunk edges
]


def make_segments(b: int, t: int) -> np.ndarray:
    """Row 0: ids 1 | 2 (at 40) | 3 (at 64, a chunk edge). Row 1: 4, then 0-padding from 2t/3."""
    ids = np.empty((b, t), np.int32)
    ids[0] = 3
    ids[0, :64] = 2
    ids[0, :40] = 1
    for r in range(1, b):
        ids[r] = 4
        ids[r, 2 * t // 3 :] = 0
    return ids


def make_inputs(case: Case, seed: int = 0):
    rng = np.random.default_rng(seed)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    b, t, h, k, v, n = case.b, case.t, case.h, case.k, case.v, case.n
    x = {
        'q': f32(b, t, h, k),
        'k': 2.0 * f32(b, t, h, k),  # sharper aggregation softmaxes
        'v': f32(b, t, h, v),
        'agents': f32(h, n, k),
        'b1': f32(h, n),
        'b2': f32(h, n),
    }
    if case.h0:
        z0 = jnp.abs(f32(b, h, n, 1)) + 0.5
        x['h0'] = jnp.concatenate([f32(b, h, n, v), z0, f32(b, h, n, 1)], axis=-1)
    cot = (f32(b, t, h, v), f32(b, h, n, v), f32(b, h, n))
    seg = jnp.asarray(make_segments(b, t)) if case.seg else None
    return x, cot, seg


def canonical(state):
    """The representation-free content of a state: (N / Z, log Z + m)."""
    n_acc, z, m = state[..., :-2], state[..., -2], state[..., -1]
    return n_acc / z[..., None], jnp.log(z) + m


@functools.partial(jax.jit, static_argnames=('impl', 'chunk'))
def _run(x, cot, seg, *, impl, chunk):
    """(o, canonical final state, grads of sum(o*do) + <canonical(ht), dht> for every input)."""

    def f(x):
        o, ht = agent_attention(
            x['q'], x['k'], x['v'], x['agents'], x['b1'], x['b2'],
            initial_state=x.get('h0'), output_final_state=True, segment_ids=seg, impl=impl,
            chunk_size=chunk,
        )  # fmt: skip
        return o, canonical(ht)

    (o, ht), vjp = jax.vjp(f, x)
    return o, ht, vjp((cot[0], (cot[1], cot[2])))[0]


@functools.cache
def _reference(case: Case):
    x, cot, seg = make_inputs(case)
    return jax.device_get(_run(x, cot, seg, impl='naive', chunk=case.chunk))


class _AgentAttentionTest:
    impl: str

    @pytest.mark.parametrize('case', CASES, ids=str)
    def test_matches_naive(self, case):
        x, cot, seg = make_inputs(case)
        o, ht, grads = _run(x, cot, seg, impl=self.impl, chunk=case.chunk)
        o_ref, ht_ref, grads_ref = _reference(case)
        tol = TOL['float32']
        assert_close('o', o, o_ref, tol)
        assert_close('final N/Z', ht[0], ht_ref[0], tol)
        assert_close('final log Z + m', ht[1], ht_ref[1], tol)
        assert set(grads) == set(x)
        for name in x:
            assert_close(f'd{name}', grads[name], grads_ref[name], tol)

    def test_two_halves_carrying_state(self):
        """Running [0, 70) then [70, 130) from the carried state equals one run over [0, 130)."""
        x, _, _ = make_inputs(Case(2, 130, 2, 16, 24, 6, h0=True, seg=False))
        args = lambda sl: (
            x['q'][:, sl],
            x['k'][:, sl],
            x['v'][:, sl],
            x['agents'],
            x['b1'],
            x['b2'],
        )
        run = jax.jit(
            functools.partial(
                agent_attention, output_final_state=True, impl=self.impl, chunk_size=32
            )
        )
        o, ht = run(*args(slice(None)), initial_state=x['h0'])
        o1, h1 = run(*args(slice(0, 70)), initial_state=x['h0'])
        o2, h2 = run(*args(slice(70, None)), initial_state=h1)
        assert_close('o', jnp.concatenate([o1, o2], axis=1), o, TOL['float32'])
        for a, b in zip(canonical(h2), canonical(ht)):
            assert_close('final state', a, b, TOL['float32'])


class TestRecurrent(_AgentAttentionTest):
    impl = 'recurrent'


class TestChunk(_AgentAttentionTest):
    impl = 'chunk'


def test_naive_is_the_definition():
    """The oracle against a per-(t, j) loop of the causal definition in ALGORITHMS.md 7 (numpy fp64)."""
    x, _, _ = make_inputs(Case(1, 9, 1, 4, 3, 2, h0=False, seg=False))
    o, _ = agent_attention(
        x['q'], x['k'], x['v'], x['agents'], x['b1'], x['b2'], scale=0.7, impl='naive'
    )
    q, k, v, a, b1, b2 = (
        np.asarray(x[n], np.float64) for n in ('q', 'k', 'v', 'agents', 'b1', 'b2')
    )
    ref = np.zeros((9, 3))
    for t in range(9):
        logits = 0.7 * q[0, t, 0] @ a[0].T + b2[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        for j in range(2):
            e = np.exp(0.7 * k[0, : t + 1, 0] @ a[0, j] + b1[0, j])
            ref[t] += p[j] * (e @ v[0, : t + 1, 0]) / e.sum()
    np.testing.assert_allclose(np.asarray(o[0, :, 0]), ref, rtol=1e-5, atol=1e-6)


def test_large_logits_stay_finite_and_exact():
    """Keys whose scores jump by ~200 nats inside a chunk (beyond the one-shift form's slack)."""
    x, _, _ = make_inputs(Case(1, 40, 1, 8, 8, 3, h0=False, seg=False))
    k = x['k'].at[:, 20:].multiply(60.0)
    args = (x['q'], k, x['v'], x['agents'], x['b1'], x['b2'])
    run = jax.jit(agent_attention, static_argnames=('impl', 'chunk_size'))
    ref, _ = run(*args, impl='naive')
    for impl in ('recurrent', 'chunk'):
        o, _ = run(*args, impl=impl, chunk_size=16)
        assert_close(f'{impl} o', o, ref, TOL['float32'])


def test_chunk_rowwise_shift_path(monkeypatch):
    """The per-row-shift outputs of the chunk form (taken when scores spread beyond the slack),
    forced on everywhere: outputs, state and all gradients against the oracle, with segments."""
    from effattn.ops.agent_attention import chunk

    monkeypatch.setattr(chunk, 'SHIFT_SLACK', -jnp.inf)
    case = CASES[-1]
    x, cot, seg = make_inputs(case)
    fresh = jax.jit(_run.__wrapped__, static_argnames=('impl', 'chunk'))  # traced after the patch
    o, ht, grads = fresh(x, cot, seg, impl='chunk', chunk=case.chunk)
    o_ref, ht_ref, grads_ref = _reference(case)
    tol = TOL['float32']
    assert_close('o', o, o_ref, tol)
    assert_close('final N/Z', ht[0], ht_ref[0], tol)
    for name in x:
        assert_close(f'd{name}', grads[name], grads_ref[name], tol)


def test_non_causal_matches_dense_formula():
    """causal=False: O = softmax(s Q A^T + b2) softmax(s A K^T + b1) V over the whole sequence."""
    x, _, _ = make_inputs(Case(2, 37, 2, 16, 12, 5, h0=False, seg=False))
    s = 16**-0.5

    def dense(x):
        agg = jax.nn.softmax(jnp.einsum('HNK,BTHK->BHNT', x['agents'], x['k']) * s
                             + x['b1'][None, :, :, None], axis=-1)  # fmt: skip
        va = jnp.einsum('BHNT,BTHV->BHNV', agg, x['v'])
        p = jax.nn.softmax(jnp.einsum('BTHK,HNK->BTHN', x['q'], x['agents']) * s + x['b2'], -1)
        return jnp.einsum('BTHN,BHNV->BTHV', p, va)

    def op(x):
        return agent_attention(x['q'], x['k'], x['v'], x['agents'], x['b1'], x['b2'], causal=False)[
            0
        ]

    assert_close('o', jax.jit(op)(x), jax.jit(dense)(x), TOL['float32'])
    do = jax.random.normal(jax.random.PRNGKey(0), (2, 37, 2, 12))
    g = jax.jit(jax.grad(lambda x: jnp.sum(op(x) * do)))(x)
    g_ref = jax.jit(jax.grad(lambda x: jnp.sum(dense(x) * do)))(x)
    for name in x:
        assert_close(f'd{name}', g[name], g_ref[name], TOL['float32'])
    # its aggregate state is the causal final state
    _, ht_nc = agent_attention(*(x[n] for n in ('q', 'k', 'v', 'agents', 'b1', 'b2')),
                               causal=False, output_final_state=True)  # fmt: skip
    _, ht = agent_attention(*(x[n] for n in ('q', 'k', 'v', 'agents', 'b1', 'b2')),
                            output_final_state=True, impl='naive')  # fmt: skip
    for a, b in zip(canonical(ht_nc), canonical(ht)):
        assert_close('state', a, b, TOL['float32'])


def test_bad_arguments_name_them():
    x, _, _ = make_inputs(Case(1, 5, 2, 8, 8, 3, h0=False, seg=False))
    args = [x[n] for n in ('q', 'k', 'v', 'agents', 'b1', 'b2')]
    with pytest.raises(ValueError, match='agents'):
        agent_attention(*args[:3], x['agents'][:, :, :4], *args[4:])
    with pytest.raises(ValueError, match='initial_state'):
        agent_attention(*args, initial_state=jnp.zeros((1, 2, 3, 8)))
    with pytest.raises(ValueError, match='impl'):
        agent_attention(*args, impl='kernel')
