"""Dense masked sigmoid attention in fp32: the oracle (O(T^2) memory)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.softmax_attention.naive import dense_mask


def sigmoid_attention_naive(q, k, v, *, causal, scale, bias, window, segment_ids):
    bsz, t, h, d = q.shape
    hkv = k.shape[2]
    qf = q.astype(jnp.float32).reshape(bsz, t, hkv, h // hkv, d) * scale
    s = jnp.einsum('BTNGD,BSND->BNGTS', qf, k.astype(jnp.float32))
    mask = dense_mask(bsz, t, segment_ids, causal=causal, window=window, sinks=None)
    p = jnp.where(mask, jax.nn.sigmoid(s + jnp.asarray(bias, jnp.float32)), 0.0)
    o = jnp.einsum('BNGTS,BSNE->BTNGE', p, v.astype(jnp.float32))
    return o.reshape(bsz, t, h, v.shape[-1]).astype(q.dtype)
