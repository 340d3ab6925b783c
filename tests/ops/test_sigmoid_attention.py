"""sigmoid_attention: every impl against the dense fp32 oracle on o, dq, dk, dv (and d bias)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import softmax_family_checks as checks
from helpers import assert_close

import importlib

sg_mod = importlib.import_module('effattn.ops.sigmoid_attention')  # the package, not the function
from effattn.ops.sigmoid_attention import sigmoid_attention
from effattn.ops.sigmoid_attention.chunk import sigmoid_attention_chunk


# (B, T, H, Hkv, K, V, options); options may hold 'seg': True for packed segment ids.
CASES = {
    'B1-T1-H2-K48-V48': (1, 1, 2, 2, 48, 48, {}),
    'B2-T63-H2-K48-V48-W100': (2, 63, 2, 2, 48, 48, {'window': 100}),  # W > T: plain causal
    'B1-T130-H4kv2-K48-V60': (1, 130, 4, 2, 48, 60, {}),
    'B1-T130-H4kv2-K60-V60-noncausal-bias0': (1, 130, 4, 2, 60, 60, {'causal': False, 'bias': 0.0}),
    'B1-T130-H2-K48-V48-W1': (1, 130, 2, 2, 48, 48, {'window': 1}),
    'B1-T130-H4kv2-K48-V48-W17-scale2': (1, 130, 4, 2, 48, 48, {'window': 17, 'scale': 2.0}),
    'B2-T130-H2-K48-V48-seg': (2, 130, 2, 2, 48, 48, {'seg': True}),
    'B2-T130-H4kv2-K60-V48-noncausal-W9-seg': (2, 130, 4, 2, 60, 48, {'causal': False, 'window': 9, 'seg': True}),
}


FAMILY = checks.Family(sigmoid_attention, CASES)
SigmoidAttentionBase = checks.matches_naive_base(FAMILY)


class TestChunk(SigmoidAttentionBase):
    fn = functools.partial(sigmoid_attention, impl='chunk')


class TestChunkSmallBlocks(SigmoidAttentionBase):
    """Many tiles per row: blocks of 32 queries x 16 keys (boundaries and windows across tiles)."""

    dtypes = ('float32',)

    @staticmethod
    def fn(q, k, v, *, segment_ids=None, causal=True, scale=None, bias=None, window=None):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        bias = -math.log(q.shape[1]) if bias is None else bias
        return sigmoid_attention_chunk(q, k, v, causal=causal, scale=scale, bias=bias, window=window,
                                       segment_ids=segment_ids, block_q=32, block_k=16)


def test_tiny_example_by_hand():
    """T=2, causal, default scale and bias, checked against the formula in numpy."""
    q = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    k = np.array([[1.0, 0.5], [-0.5, 1.5]], np.float32)
    v = np.array([[1.0, 2.0, -1.0], [0.5, -3.0, 4.0]], np.float32)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))
    s, b = 2**-0.5, -np.log(2.0)
    want = np.stack(
        [
            sig(s * q[0] @ k[0] + b) * v[0],
            sig(s * q[1] @ k[0] + b) * v[0] + sig(s * q[1] @ k[1] + b) * v[1],
        ]
    )
    for impl in ('naive', 'chunk'):
        got = sigmoid_attention(
            jnp.asarray(q)[None, :, None],
            jnp.asarray(k)[None, :, None],
            jnp.asarray(v)[None, :, None],
            impl=impl,
        )
        np.testing.assert_allclose(
            np.asarray(got)[0, :, 0], want, rtol=1e-6, atol=1e-6, err_msg=impl
        )


def test_default_bias_is_minus_log_t():
    (q, k, v, _, _), _ = FAMILY.make_inputs('B2-T63-H2-K48-V48-W100', jnp.float32)
    for impl in ('naive', 'chunk'):
        assert_close(
            impl,
            sigmoid_attention(q, k, v, impl=impl),
            sigmoid_attention(q, k, v, bias=-math.log(63), impl=impl),
            1e-7,
        )
    with pytest.raises(AssertionError):
        assert_close(
            'bias 0',
            sigmoid_attention(q, k, v, bias=0.0, impl='naive'),
            sigmoid_attention(q, k, v, impl='naive'),
            1e-2,
        )


def test_bias_gradient():
    (q, k, v, do, seg), _ = FAMILY.make_inputs('B2-T130-H2-K48-V48-seg', jnp.float32)

    @functools.partial(jax.jit, static_argnums=0)
    def dbias(impl, bias):
        return jax.grad(
            lambda b: jnp.sum(sigmoid_attention(q, k, v, bias=b, segment_ids=seg, impl=impl) * do)
        )(bias)

    assert_close(
        'd bias', dbias('chunk', jnp.float32(-2.0)), dbias('naive', jnp.float32(-2.0)), 1e-5
    )


def test_padding_rows_are_zero():
    checks.check_padding_rows_are_zero(FAMILY, 'B2-T130-H2-K48-V48-seg')


def test_chunk_memory_is_linear():
    checks.check_chunk_memory_is_linear(sigmoid_attention)


def test_auto_order():
    q = jnp.zeros((1, 2048, 1, 8))
    if jax.default_backend() == 'gpu':
        assert sg_mod._auto_order(q) == ['kernel', 'chunk']
    else:
        assert sg_mod._auto_order(q[:, :1024]) == ['naive'] and sg_mod._auto_order(q) == ['chunk']


def test_bad_impl_raises():
    checks.check_bad_impl_raises(FAMILY, 'B1-T1-H2-K48-V48', 'cudnn')


def test_bad_shapes_raise():
    q, kv = checks.check_bad_shapes_raise(sigmoid_attention)
    with pytest.raises(ValueError, match='bias'):
        sigmoid_attention(q, kv, kv, bias=jnp.zeros((8,)))
