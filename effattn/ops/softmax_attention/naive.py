"""Dense masked softmax attention in fp32: the oracle (O(T^2) memory)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.softmax_attention._blockwise import attention_mask


def dense_mask(bsz: int, t: int, segment_ids, *, causal, window, sinks) -> jax.Array:
    """[B, 1, 1, T, T] boolean mask (broadcasts over kv heads and query groups)."""
    seg = jnp.ones((bsz, t), jnp.int32) if segment_ids is None else segment_ids
    pos = jnp.arange(t)
    m = attention_mask(
        pos[:, None],
        pos[None, :],
        seg[:, :, None],
        seg[:, None, :],
        causal=causal,
        window=window,
        sinks=sinks,
    )
    return m[:, None, None]


def softmax_attention_naive(q, k, v, *, causal, scale, window, sinks, segment_ids):
    bsz, t, h, d = q.shape
    hkv = k.shape[2]
    qf = q.astype(jnp.float32).reshape(bsz, t, hkv, h // hkv, d) * scale
    s = jnp.einsum('BTNGD,BSND->BNGTS', qf, k.astype(jnp.float32))
    mask = dense_mask(bsz, t, segment_ids, causal=causal, window=window, sinks=sinks)
    s = jnp.where(mask, s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # rows with no visible key
    p = jnp.exp(s - m)
    den = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(den == 0, 1.0, den)
    o = jnp.einsum('BNGTS,BSNE->BTNGE', p, v.astype(jnp.float32))
    return o.reshape(bsz, t, h, v.shape[-1]).astype(q.dtype)
