"""Checks shared by tests/ops/test_delta_rule.py and test_gated_delta_rule.py: every impl of a delta rule
against its fp32 naive oracle (output, final state, gradients), split runs, dispatch and argument errors.

Each test file names its op (`Op`: the function and its gate inputs after q, k, v) and its cases, derives
its TestRecurrent / TestChunk from impl_test_base(...) and calls the other checks from its own tests.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOL, OpCase, assert_close


class Op(NamedTuple):
    fn: Callable               # delta_rule or gated_delta_rule
    gates: tuple[str, ...]     # gate inputs after q, k, v in call order: ('beta',) or ('g', 'beta')

    @property
    def names(self) -> tuple[str, ...]:
        """The positional inputs in call order."""
        return ('q', 'k', 'v', *self.gates)


class Case(OpCase):
    """Cases use b, t, h, k, v, h0, seg, chunk and, for ops with a gate g, n; '-C{chunk}' ends the id
    where chunk != 64."""

    @property
    def id(self) -> str:
        return str(self) + (f'-C{self.chunk}' if self.chunk != 64 else '')


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


def gate(name: str, r: np.random.Generator, shape, n, beta_scale: float = 1.0) -> np.ndarray:
    """A random gate: 'g' = logsigmoid(x) / n (n broadcasts over the last axis), 'beta' = sigmoid(beta_scale x)."""
    if name == 'g':
        return np.asarray(jax.nn.log_sigmoid(r.standard_normal(shape))) / n
    return 1 / (1 + np.exp(-beta_scale * r.standard_normal(shape)))


def make_inputs(op: Op, case: Case, dtype=jnp.float32, seed: int = 0):
    """{q, k, v, gates (in dtype), h0 (fp32 or None), seg (or None)} and the cotangents (do, dht), fp32.
    q, k are L2-normalised; g = logsigmoid(x) / case.n, beta = sigmoid(x)."""
    r = np.random.default_rng(seed)
    l2 = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    b, t, h = case.b, case.t, case.h
    x = {
        'q': l2(r.standard_normal((b, t, h, case.k))),
        'k': l2(r.standard_normal((b, t, h, case.k))),
        'v': r.standard_normal((b, t, h, case.v)),
    }
    x.update((name, gate(name, r, (b, t, h), case.n)) for name in op.gates)
    x = {name: jnp.asarray(a, dtype) for name, a in x.items()}
    h0 = r.standard_normal((b, h, case.k, case.v))
    x['h0'] = jnp.asarray(h0, jnp.float32) if case.h0 else None
    x['seg'] = jnp.asarray(packed_segment_ids(b, t, case.chunk)) if case.seg else None
    cts = (jnp.asarray(r.standard_normal((b, t, h, case.v)), jnp.float32),
           jnp.asarray(r.standard_normal((b, h, case.k, case.v)), jnp.float32))
    return x, cts


@functools.partial(jax.jit, static_argnames=('op', 'impl', 'chunk'))
def loss_and_grads(x, cts, *, op, impl, chunk):
    """(o, final_state) and the gradients of sum(o*do) + sum(ht*dht) w.r.t. q, k, v, the gates and h0."""
    do, dht = cts
    names = (*op.names, 'h0')

    def loss(*args):
        *xs, h0 = args
        o, ht = op.fn(*xs, initial_state=h0, output_final_state=True,
                      segment_ids=x['seg'], impl=impl, chunk_size=chunk)
        return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(ht * dht), (o, ht)

    args = tuple(x[n] for n in names)
    (_, out), grads = jax.value_and_grad(loss, argnums=tuple(range(len(names))), has_aux=True)(*args)
    return out, dict(zip((f'd{n}' for n in names), grads))


@functools.lru_cache(maxsize=None)
def reference(op: Op, case: Case):
    return loss_and_grads(*make_inputs(op, case), op=op, impl='naive', chunk=case.chunk)


def check_matches_naive_fp32(op: Op, case: Case, impl: str) -> None:
    (o, ht), grads = loss_and_grads(*make_inputs(op, case), op=op, impl=impl, chunk=case.chunk)
    (o_ref, ht_ref), grads_ref = reference(op, case)
    tol = TOL['float32']
    assert_close('o', o, o_ref, tol)
    assert_close('final_state', ht, ht_ref, tol)
    for name, ref in grads_ref.items():
        if ref is not None:
            assert_close(name, grads[name], ref, tol)


def check_bf16_forward(op: Op, case: Case, impl: str) -> None:
    """bf16 inputs against the fp32 naive result on the same (bf16-rounded) inputs."""
    x, _ = make_inputs(op, case, dtype=jnp.bfloat16)
    run = jax.jit(functools.partial(op.fn, output_final_state=True, impl=impl))
    o, ht = run(*(x[n] for n in op.names), initial_state=x['h0'], segment_ids=x['seg'])
    naive = jax.jit(functools.partial(op.fn, output_final_state=True, impl='naive'))
    o_ref, ht_ref = naive(*(x[n].astype(jnp.float32) for n in op.names), initial_state=x['h0'],
                          segment_ids=x['seg'])
    assert o.dtype == jnp.bfloat16
    assert_close('o', o, o_ref, TOL['bfloat16'])
    assert_close('final_state', ht, ht_ref, TOL['bfloat16'])


def check_two_halves_equal_whole(op: Op, case: Case, impl: str, cut: int = 70) -> None:
    x, _ = make_inputs(op, case)
    run_op = jax.jit(functools.partial(op.fn, output_final_state=True, impl=impl))
    run = lambda sl, h0: run_op(*(x[n][:, sl] for n in op.names), initial_state=h0)
    o, ht = run(slice(None), None)
    o1, h1 = run(slice(0, cut), None)
    o2, h2 = run(slice(cut, None), h1)
    assert_close('o', jnp.concatenate([o1, o2], 1), o, TOL['float32'])
    assert_close('final_state', h2, ht, TOL['float32'])


def impl_test_base(op: Op, cases: list[Case], *, bf16_case: Case, halves_case: Case) -> type:
    """The base class of a file's per-impl test classes (which set `impl`): every case against naive in
    fp32, the bf16 forward on bf16_case, two halves against the whole on halves_case."""

    class ImplTests:
        impl: str

        @pytest.mark.parametrize('case', cases, ids=[c.id for c in cases])
        def test_matches_naive_fp32(self, case):
            check_matches_naive_fp32(op, case, self.impl)

        def test_bf16_forward(self):
            """bf16 inputs against the fp32 naive result on the same (bf16-rounded) inputs."""
            check_bf16_forward(op, bf16_case, self.impl)

        def test_two_halves_equal_whole(self):
            check_two_halves_equal_whole(op, halves_case, self.impl)

    return ImplTests


def check_long_bf16_chunk_finite(op: Op, h: int, n=None, beta_scale: float = 1.0, t: int = 65536,
                                 d: int = 32) -> None:
    """The chunk impl's forward at T = t in bf16 (B = 1, H = h, K = V = d) is finite: gates as gate(...)."""
    r = np.random.default_rng(1)
    l2 = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    bf = lambda a: jnp.asarray(a, jnp.bfloat16)
    q, k = bf(l2(r.standard_normal((1, t, h, d)))), bf(l2(r.standard_normal((1, t, h, d))))
    v = bf(r.standard_normal((1, t, h, d)))
    gates = [bf(gate(name, r, (1, t, h), n, beta_scale)) for name in op.gates]
    o, ht = jax.jit(functools.partial(op.fn, output_final_state=True, impl='chunk'))(q, k, v, *gates)
    assert bool(jnp.all(jnp.isfinite(o.astype(jnp.float32))))
    assert bool(jnp.all(jnp.isfinite(ht)))


def check_auto_dispatch_matches_naive(op: Op, cases) -> None:
    for case in cases:
        x, _ = make_inputs(op, case)
        auto = jax.jit(functools.partial(op.fn, impl='auto'))
        o, _ = auto(*(x[n] for n in op.names), initial_state=x['h0'])
        o_ref, _ = reference(op, case)[0]
        assert_close('o', o, o_ref, TOL['float32'])


def check_final_state_none_by_default(op: Op, case: Case) -> None:
    x, _ = make_inputs(op, case)
    _, ht = op.fn(*(x[n] for n in op.names), impl='recurrent')
    assert ht is None


def check_unknown_impl_raises(op: Op, case: Case) -> None:
    x, _ = make_inputs(op, case)
    with pytest.raises(ValueError, match='supported'):
        op.fn(*(x[n] for n in op.names), impl='fused')


def check_wrong_shape_raises(op: Op, case: Case, name: str) -> None:
    """name (a positional input, 'initial_state' or 'segment_ids') with a wrong shape: a ValueError
    whose message starts with the name."""
    x, _ = make_inputs(op, case)
    kwargs = {n: x[n] for n in op.names}
    kwargs |= {'initial_state': x['h0'], 'segment_ids': jnp.ones((1, 1), jnp.int32)}
    good = kwargs[name]
    # q: wrong rank; the others: a wrong size on axis 1 (T, or H for initial_state).
    bad = good[0] if name == 'q' else jnp.concatenate([good, good], axis=1)
    kwargs[name] = bad
    args = [kwargs.pop(n) for n in op.names]
    with pytest.raises(ValueError, match=f'^{name} '):
        op.fn(*args, **kwargs)
