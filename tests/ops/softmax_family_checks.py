"""Checks shared by tests/ops/test_softmax_attention.py and test_sigmoid_attention.py: every impl of a
dense-score attention op against its fp32 naive oracle on o, dq, dk, dv, padding rows, chunk memory.

Each test file names its op and cases (`Family`), derives its per-impl test classes from
matches_naive_base(family) and calls the other checks from its own tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOL, assert_close


def segments(b: int, t: int) -> np.ndarray:
    """Packed rows: boundaries at 32 (a block edge for 32-row blocks) and 70, padding 0 at the
    end of row 0 and at the start of row 1."""
    seg = np.zeros((b, t), np.int32)
    seg[0, :32], seg[0, 32:70], seg[0, 70 : t - 10] = 1, 2, 3
    if b > 1:
        seg[1, 5:64], seg[1, 64:] = 4, 5
    return seg


class Family:
    """An attention op (its public function) and its named cases {name: (B, T, H, Hkv, K, V, options)};
    options may hold 'seg': True for packed segment ids, the others are keyword arguments of the op."""

    def __init__(self, op: Callable, cases: dict):
        self.op, self.cases = op, cases
        self.naive = functools.partial(op, impl='naive')

    def make_inputs(self, case: str, dtype):
        b, t, h, hkv, d, e, opts = self.cases[case]
        ks = jax.random.split(jax.random.PRNGKey(sum(map(ord, case))), 4)
        q = jax.random.normal(ks[0], (b, t, h, d), jnp.float32).astype(dtype)
        k = jax.random.normal(ks[1], (b, t, hkv, d), jnp.float32).astype(dtype)
        v = jax.random.normal(ks[2], (b, t, hkv, e), jnp.float32).astype(dtype)
        do = jax.random.normal(ks[3], (b, t, h, e), jnp.float32).astype(dtype)
        seg = jnp.asarray(segments(b, t)) if opts.get('seg') else None
        kw = tuple(sorted((key, val) for key, val in opts.items() if key != 'seg'))
        return (q, k, v, do, seg), kw


@functools.partial(jax.jit, static_argnums=(0, 6))
def fwd_bwd(fn, q, k, v, do, seg, kw):
    o, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, segment_ids=seg, **dict(kw)), q, k, v)
    return (o, *vjp(do))


@functools.cache
def reference(family: Family, case: str, dtype):
    """fp32 naive result on the (possibly bf16-rounded) inputs."""
    (q, k, v, do, seg), kw = family.make_inputs(case, dtype)
    up = [x.astype(jnp.float32) for x in (q, k, v, do)]
    return [np.asarray(x) for x in fwd_bwd(family.naive, *up, seg, kw)]


def matches_naive_base(family: Family) -> type:
    """The base class of a file's per-impl test classes, which set `fn` (the impl as
    fn(q, k, v, *, segment_ids, **options)) and may narrow `dtypes`, `supports` and `expect_zero`."""

    class MatchesNaive:
        fn = None
        dtypes = ('float32', 'bfloat16')
        backend_may_reject = False

        def supports(self, case: str, dtype: str) -> bool:
            """False: the impl must raise NotImplementedError on this case."""
            return True

        def expect_zero(self, case: str, name: str) -> bool:
            """True: the gradient `name` is zero in exact arithmetic (checked as max |g| < 1e-4)."""
            return False

        @pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
        @pytest.mark.parametrize('case', list(family.cases))
        def test_matches_naive(self, case, dtype):
            if dtype not in self.dtypes:
                pytest.skip(f'{dtype} not tested for this impl')
            args, kw = family.make_inputs(case, jnp.dtype(dtype))
            if not self.supports(case, dtype):
                with pytest.raises(NotImplementedError):
                    fwd_bwd(self.fn, *args, kw)
                return
            try:
                got = fwd_bwd(self.fn, *args, kw)
            except NotImplementedError as e:  # only where the backend itself rejects a shape (cuDNN: T=1)
                if self.backend_may_reject:
                    pytest.skip(str(e)[:200])
                raise
            assert got[0].dtype == jnp.dtype(dtype)
            for name, g, r in zip(('o', 'dq', 'dk', 'dv'), got, reference(family, case, jnp.dtype(dtype))):
                if self.expect_zero(case, name):
                    assert np.max(np.abs(np.asarray(g, np.float32))) < 1e-4, name
                    continue
                assert_close(f'{case} {name}', g, r, TOL[dtype])

    return MatchesNaive


def check_padding_rows_are_zero(family: Family, case: str) -> None:
    """Output and dq rows of padding tokens (segment id 0) are exactly zero, naive and chunk."""
    (q, k, v, do, seg), kw = family.make_inputs(case, jnp.float32)
    for impl in ('naive', 'chunk'):
        o, dq, _, _ = fwd_bwd(functools.partial(family.op, impl=impl), q, k, v, do, seg, kw)
        pad = np.asarray(seg) == 0
        assert np.all(np.asarray(o)[pad] == 0) and np.all(np.asarray(dq)[pad] == 0), impl


def check_chunk_memory_is_linear(op: Callable) -> None:
    """Compiled temporaries of chunk fwd+bwd stay far below one dense T x T fp32 score matrix."""
    t = 4096
    x = jax.ShapeDtypeStruct((1, t, 1, 32), jnp.float32)

    def loss(q, k, v):
        return jnp.sum(op(q, k, v, impl='chunk') ** 2)

    mem = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile().memory_analysis()
    assert mem.temp_size_in_bytes < t * t * 4 / 4, mem.temp_size_in_bytes  # ~8 MiB vs 64 MiB


def check_bad_impl_raises(family: Family, case: str, impl: str) -> None:
    """An impl the op does not have: ValueError naming 'chunk' among the supported ones."""
    (q, k, v, _, _), _ = family.make_inputs(case, jnp.float32)
    with pytest.raises(ValueError, match='chunk'):
        family.op(q, k, v, impl=impl)


def check_bad_shapes_raise(op: Callable) -> tuple[jax.Array, jax.Array]:
    """k's head dim differs from q's; q's heads not a multiple of k's; segment_ids of the wrong shape.
    Returns the well-formed q [1, 8, 4, 16] and k = v [1, 8, 2, 16] used, for the op's own checks."""
    q = jnp.zeros((1, 8, 4, 16))
    kv = jnp.zeros((1, 8, 2, 16))
    with pytest.raises(ValueError, match='k must'):
        op(q, jnp.zeros((1, 8, 2, 8)), kv)
    with pytest.raises(ValueError, match='multiple'):
        op(q, jnp.zeros((1, 8, 3, 16)), jnp.zeros((1, 8, 3, 16)))
    for seg in (jnp.zeros((2, 8), jnp.int32), jnp.zeros((1, 7), jnp.int32)):
        with pytest.raises(ValueError, match='segment_ids'):
            op(q, kv, kv, segment_ids=seg)
    return q, kv
