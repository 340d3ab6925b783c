"""softmax_attention: every impl against the dense fp32 oracle on o, dq, dk, dv."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import softmax_family_checks as checks
from helpers import TOL, assert_close

import importlib

sa_mod = importlib.import_module('effattn.ops.softmax_attention')  # the package, not the function
from effattn.ops.softmax_attention import softmax_attention
from effattn.ops.softmax_attention._blockwise import attention_mask, tile_schedule
from effattn.ops.softmax_attention.chunk import softmax_attention_chunk


# (B, T, H, Hkv, K, V, options); options may hold 'seg': True for packed segment ids.
CASES = {
    'B1-T1-H2-K48-V48': (1, 1, 2, 2, 48, 48, {}),
    'B2-T63-H2-K48-V48-W100': (2, 63, 2, 2, 48, 48, {'window': 100}),  # W > T: plain causal
    'B1-T63-H2-K48-V48-sinks4': (1, 63, 2, 2, 48, 48, {'sinks': 4}),  # no window: sinks change nothing
    'B1-T130-H4kv2-K48-V60': (1, 130, 4, 2, 48, 60, {}),
    'B1-T130-H4kv2-K60-V60-noncausal-scale2': (1, 130, 4, 2, 60, 60, {'causal': False, 'scale': 2.0}),
    'B1-T130-H2-K48-V48-W1': (1, 130, 2, 2, 48, 48, {'window': 1}),
    'B1-T130-H4kv2-K48-V48-W17': (1, 130, 4, 2, 48, 48, {'window': 17}),
    'B1-T130-H2-K48-V48-W17-sinks4': (1, 130, 2, 2, 48, 48, {'window': 17, 'sinks': 4}),
    'B2-T130-H2-K48-V48-seg': (2, 130, 2, 2, 48, 48, {'seg': True}),
    'B2-T130-H4kv2-K60-V48-noncausal-W9-seg': (2, 130, 4, 2, 60, 48, {'causal': False, 'window': 9, 'seg': True}),
    'B2-T130-H2-K48-V48-W17-sinks3-seg': (2, 130, 2, 2, 48, 48, {'window': 17, 'sinks': 3, 'seg': True}),
}


FAMILY = checks.Family(softmax_attention, CASES)


class SoftmaxAttentionBase(checks.matches_naive_base(FAMILY)):
    def expect_zero(self, case: str, name: str) -> bool:
        # one visible key: the softmax is constantly 1, so dq = dk = 0 up to rounding.
        return CASES[case][6].get('window') == 1 and name in ('dq', 'dk')


class TestChunk(SoftmaxAttentionBase):
    fn = functools.partial(softmax_attention, impl='chunk')


class TestChunkSmallBlocks(SoftmaxAttentionBase):
    """Many tiles per row: blocks of 32 queries x 16 keys (edges, windows, sinks cross tiles)."""

    dtypes = ('float32',)

    def supports(self, case, dtype):
        if CASES[case][1] < 130:
            pytest.skip('kept to T=130 cases for test time (T=130 is no multiple of either block)')
        return True

    @staticmethod
    def fn(q, k, v, *, segment_ids=None, causal=True, scale=None, window=None, sinks=None):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return softmax_attention_chunk(q, k, v, causal=causal, scale=scale, window=window,
                                       sinks=sinks, segment_ids=segment_ids, block_q=32, block_k=16)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cudnn needs a GPU')
class TestCudnn(SoftmaxAttentionBase):
    fn = functools.partial(softmax_attention, impl='cudnn')
    dtypes = ('bfloat16',)
    backend_may_reject = True

    def supports(self, case, dtype):
        _, t, _, _, d, e, opts = CASES[case]
        windowed = opts.get('window', t) < t
        return (
            d == e
            and d % 8 == 0
            and not opts.get('seg')
            and not (windowed and (opts.get('sinks') or opts.get('causal') is False))
        )


def test_padding_rows_are_zero():
    checks.check_padding_rows_are_zero(FAMILY, 'B2-T130-H2-K48-V48-seg')


@pytest.mark.parametrize('t,bq,bk', [(130, 32, 16), (63, 16, 32), (1, 8, 8), (200, 64, 64)])
@pytest.mark.parametrize(
    'opts',
    [
        {},
        {'causal': False},
        {'window': 1},
        {'window': 17},
        {'window': 17, 'sinks': 20},
        {'causal': False, 'window': 5},
    ],
    ids=lambda o: '-'.join(f'{k}{v}' for k, v in o.items()) or 'causal',
)
def test_tile_schedule_covers_mask(t, bq, bk, opts):
    """Every visible (t, j) lies in a scheduled tile, each tile once; causal tiles are paired."""
    causal, window, sinks = opts.get('causal', True), opts.get('window'), opts.get('sinks')
    pos = np.arange(t)
    mask = np.broadcast_to(
        attention_mask(pos[:, None], pos[None, :], 1, 1, causal=causal, window=window, sinks=sinks),
        (t, t),
    )
    sched = tile_schedule(t, bq, bk, causal=causal, window=window, sinks=sinks)
    tiles = list(zip(sched.qidx[sched.valid].tolist(), sched.kidx[sched.valid].tolist()))
    assert len(tiles) == len(set(tiles))
    needed = {(i // bq, j // bk) for i, j in zip(*np.nonzero(mask))}
    assert needed <= set(tiles)
    # lanes never share a query block within a step (the state scatter needs unique indices)
    assert all(len(set(row)) == len(row) for row in sched.qidx.tolist())
    nq, nk = -(-t // bq), -(-t // bk)
    if causal and window is None and nq > 2:
        assert sched.valid.size < nq * nk  # paired lanes beat one lane per query block


def test_chunk_memory_is_linear():
    checks.check_chunk_memory_is_linear(softmax_attention)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_auto_dispatch(dtype):
    """Off GPU: 'cudnn' refuses, auto is dense up to T=1024; on GPU: cudnn first, fp32 falls back."""
    (q, k, v, _, _), _ = FAMILY.make_inputs('B1-T130-H4kv2-K48-V48-W17', jnp.dtype(dtype))
    if jax.default_backend() == 'gpu':
        assert sa_mod._auto_order(q) == ['cudnn', 'chunk']
    else:
        with pytest.raises(NotImplementedError):
            softmax_attention(q, k, v, impl='cudnn')
        assert sa_mod._auto_order(q) == ['naive']
        assert sa_mod._auto_order(jnp.zeros((1, 2048, 1, 8))) == ['chunk']
    ref = softmax_attention(*(x.astype(jnp.float32) for x in (q, k, v)), window=17, impl='naive')
    got = jax.jit(functools.partial(softmax_attention, window=17))(q, k, v)
    assert_close('auto', got, ref, TOL[dtype])


def test_bad_impl_raises():
    checks.check_bad_impl_raises(FAMILY, 'B1-T1-H2-K48-V48', 'flash')


def test_bad_shapes_raise():
    q, kv = checks.check_bad_shapes_raise(softmax_attention)
    with pytest.raises(ValueError, match='v must'):
        softmax_attention(q, kv, jnp.zeros((1, 7, 2, 16)))
    with pytest.raises(ValueError, match='window'):
        softmax_attention(q, kv, kv, window=0)
    with pytest.raises(ValueError, match='q must'):
        softmax_attention(q[0], kv, kv)
