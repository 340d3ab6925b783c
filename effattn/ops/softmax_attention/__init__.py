"""Softmax attention: causal or not, GQA, sliding window, attention sinks, packed segments."""

from __future__ import annotations

from jaxtyping import Array, Float, Int

from effattn.ops.common.dispatch import ImplRegistry, default_backend
from effattn.ops.softmax_attention._checks import canonical_window, check_attention_args
from effattn.ops.softmax_attention.chunk import softmax_attention_chunk
from effattn.ops.softmax_attention.cudnn import softmax_attention_cudnn
from effattn.ops.softmax_attention.naive import softmax_attention_naive
from effattn.ops.softmax_attention.pallas import softmax_attention_kernel

DENSE_MAX_T = 1024  # on CPU the dense form is the fastest up to about here


def _auto_order(q, *args, window=None, sinks=None, **kwargs):
    if default_backend() == 'gpu':
        # cuDNN first, also for causal sliding windows without sinks (its band-limited window ran 1.1-1.3x
        # faster than the Pallas kernel on the H200, benchmarks/README.md); it raises NotImplementedError for
        # sinks and non-causal windows, which the Pallas kernel (band-limited loops) then serves.
        return ['cudnn', 'kernel', 'chunk'] if window or sinks else ['cudnn', 'chunk']
    return ['naive'] if q.shape[1] <= DENSE_MAX_T else ['chunk']


REGISTRY = ImplRegistry(
    'softmax_attention',
    {
        'naive': softmax_attention_naive,
        'chunk': softmax_attention_chunk,
        'cudnn': softmax_attention_cudnn,
        'kernel': softmax_attention_kernel,
    },
    _auto_order,
)


def softmax_attention(
    q: Float[Array, 'B T H K'],
    k: Float[Array, 'B T Hkv K'],
    v: Float[Array, 'B T Hkv V'],
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    sinks: int | None = None,
    segment_ids: Int[Array, 'B T'] | None = None,
    impl: str = 'auto',
) -> Float[Array, 'B T H V']:
    """Softmax attention O = softmax(s QK^T + mask) V (Vaswani et al. 2017, Eq. 1; FA-2 Alg. 1).

    Query head h uses kv head h // (H / Hkv) (GQA). Key j is visible from query t when
    (j <= t if causal) and (t - j < window, or |t - j| < window if not causal, or j < sinks) and
    segment_ids[t] == segment_ids[j] != 0; `window=W` keeps W keys including self, `sinks=n`
    keeps the first n keys visible besides the window (StreamingLLM; no effect without a window).
    Rows with no visible key (segment id 0 = padding) give 0. o has q's dtype; softmax in fp32.
    impl: 'auto' | 'naive' | 'chunk' | 'cudnn' (GPU, bf16/fp16, no sinks or segment_ids) |
    'kernel' (Pallas flash kernel, band-limited; GPU, or interpret mode on CPU; no segment_ids).
    """
    check_attention_args(q, k, v, window=window, segment_ids=segment_ids, sinks=sinks)
    window, sinks = canonical_window(q.shape[1], window, sinks)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return REGISTRY(
        impl,
        q,
        k,
        v,
        causal=bool(causal),
        scale=scale,
        window=window,
        sinks=sinks,
        segment_ids=segment_ids,
    )
