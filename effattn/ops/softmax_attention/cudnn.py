"""cuDNN flash attention through jax.nn.dot_product_attention(implementation='cudnn'), GPU only.

Raises NotImplementedError for calls cuDNN cannot express (so that 'auto' falls back to 'chunk'):
non-GPU backend, fp32 inputs, segment_ids, sinks with an effective window, non-causal windows,
a value head dim different from the key head dim, and whatever jax's own cuDNN checks reject.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.common.dispatch import default_backend
from effattn.ops.softmax_attention._checks import canonical_window


def softmax_attention_cudnn(q, k, v, *, causal, scale, window, sinks, segment_ids):
    if default_backend() != 'gpu':
        raise NotImplementedError(f'cudnn needs the GPU backend, not {default_backend()!r}')
    if q.dtype not in (jnp.bfloat16, jnp.float16) or not q.dtype == k.dtype == v.dtype:
        raise NotImplementedError(
            f'cudnn needs bf16/fp16 q, k, v of one dtype; got {q.dtype}, {k.dtype}, {v.dtype}'
        )
    if segment_ids is not None:
        raise NotImplementedError('cudnn path does not take segment_ids')
    if v.shape[-1] != k.shape[-1]:
        raise NotImplementedError(
            f'cudnn path needs equal key/value head dims; got {k.shape[-1]} and {v.shape[-1]}'
        )
    window, sinks = canonical_window(q.shape[1], window, sinks)
    if window is not None and (sinks or not causal):
        raise NotImplementedError('cudnn expresses only causal sliding windows without sinks')
    try:
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            scale=scale,
            is_causal=causal,
            local_window_size=None if window is None else (window - 1, 0),
            implementation='cudnn',
        )
    except (NotImplementedError, ValueError, RuntimeError) as e:
        raise NotImplementedError(f'cudnn rejected the call: {e}') from e
