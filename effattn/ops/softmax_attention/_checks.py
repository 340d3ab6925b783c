"""Argument checks and canonical forms shared by the softmax-family ops (softmax, sigmoid)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from effattn.ops.common.checks import check_rank, check_shape


def check_attention_args(
    q: jax.Array, k: jax.Array, v: jax.Array, *, window, segment_ids, sinks=None
) -> None:
    """Raises ValueError naming the argument when shapes or options are inconsistent."""
    check_rank('q', q, 4, '[B, T, H, K]')
    check_rank('k', k, 4, '[B, T, Hkv, K]')
    check_rank('v', v, 4, '[B, T, Hkv, V]')
    b, t, h, d = q.shape
    if k.shape[:2] != (b, t) or k.shape[3] != d:
        raise ValueError(
            f'k must have shape [B, T, Hkv, K] = ({b}, {t}, Hkv, {d}) to match q '
            f'{tuple(q.shape)}; got {tuple(k.shape)}'
        )
    hkv = k.shape[2]
    if hkv == 0 or h % hkv:
        raise ValueError(
            f'the number of query heads H={h} (q {tuple(q.shape)}) must be a multiple of '
            f'the number of kv heads Hkv={hkv} (k {tuple(k.shape)})'
        )
    if v.shape[:3] != (b, t, hkv):
        raise ValueError(
            f'v must have shape [B, T, Hkv, V] = ({b}, {t}, {hkv}, V) to match k '
            f'{tuple(k.shape)}; got {tuple(v.shape)}'
        )
    if segment_ids is not None:
        check_shape('segment_ids', segment_ids, (b, t), '[B, T]')
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f'segment_ids must be integer; got dtype {segment_ids.dtype}')
    if window is not None and (not isinstance(window, (int, np.integer)) or window < 1):
        raise ValueError(
            f'window must be a positive int (keys kept, self included) or None; got {window!r}'
        )
    if sinks is not None and (not isinstance(sinks, (int, np.integer)) or sinks < 0):
        raise ValueError(f'sinks must be a non-negative int or None; got {sinks!r}')


def canonical_window(t: int, window: int | None, sinks: int | None = None):
    """Python ints, minus options that change nothing: window >= T keeps every key, and sinks only
    matter with a window."""
    window = None if window is None or window >= t else int(window)
    if window is None or not sinks:
        sinks = None
    return window, None if sinks is None else int(sinks)
