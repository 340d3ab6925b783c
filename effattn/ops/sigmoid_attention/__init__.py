"""Sigmoid attention: causal / bidirectional, GQA, sliding window, packed segments."""

from __future__ import annotations

import math

from jaxtyping import Array, Float, Int

from effattn.ops.common.dispatch import ImplRegistry, default_backend
from effattn.ops.sigmoid_attention.chunk import sigmoid_attention_chunk
from effattn.ops.sigmoid_attention.naive import sigmoid_attention_naive
from effattn.ops.sigmoid_attention.pallas import sigmoid_attention_kernel
from effattn.ops.softmax_attention._checks import canonical_window, check_attention_args

DENSE_MAX_T = 1024  # on CPU the dense form is the fastest up to about here


def _auto_order(q, *args, **kwargs):
    if default_backend() == 'gpu':
        return ['kernel', 'chunk']
    return ['naive'] if q.shape[1] <= DENSE_MAX_T else ['chunk']


REGISTRY = ImplRegistry(
    'sigmoid_attention',
    {
        'naive': sigmoid_attention_naive,
        'chunk': sigmoid_attention_chunk,
        'kernel': sigmoid_attention_kernel,
    },
    _auto_order,
)


def sigmoid_attention(
    q: Float[Array, 'B T H K'],
    k: Float[Array, 'B T Hkv K'],
    v: Float[Array, 'B T Hkv V'],
    *,
    causal: bool = True,
    scale: float | None = None,
    bias: float | Float[Array, ''] | None = None,
    window: int | None = None,
    segment_ids: Int[Array, 'B T'] | None = None,
    impl: str = 'auto',
) -> Float[Array, 'B T H V']:
    """Sigmoid attention O = (sigma(s QK^T + b) * M) V (Ramapuram et al. 2024, arXiv 2409.04431).

    No normalisation over keys. bias=None means b = -log(T) of this call; a module that decodes
    token by token must pass the training length's -log(n) explicitly. The scalar bias may be a
    traced array (it gets a gradient). Mask M as in softmax_attention: (j <= t if causal) and
    (t - j < window, or |t - j| < window if not causal) and segment_ids[t] == segment_ids[j] != 0;
    rows with no visible key (segment id 0 = padding) give 0. o has q's dtype; fp32 inside.
    impl: 'auto' | 'naive' | 'chunk' | 'kernel' (Pallas flash kernel; GPU, or interpret mode on
    CPU; no segment_ids).
    """
    check_attention_args(q, k, v, window=window, segment_ids=segment_ids)
    if bias is not None and getattr(bias, 'ndim', 0) != 0:
        raise ValueError(f'bias must be a scalar; got shape {tuple(bias.shape)}')
    window, _ = canonical_window(q.shape[1], window)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    bias = -math.log(q.shape[1]) if bias is None else bias
    return REGISTRY(
        impl,
        q,
        k,
        v,
        causal=bool(causal),
        scale=scale,
        bias=bias,
        window=window,
        segment_ids=segment_ids,
    )
