"""Softmax and sigmoid attention split over `sequence` by all-gathering K and V (LASP-2H's softmax part).

Device r keeps its queries (global positions rL .. rL+L-1), all-gathers K, V and the segment ids of
the whole sequence, and attends with the mask of ALGORITHMS.md section 1 evaluated at global
positions (causal, window, sinks, segment ids). The gather is O(T) per device, unlike the linear
family's states; scores are formed densely for the local queries ([B, H, L, T] fp32), as the ops'
'naive' implementation does for the whole sequence, so the `impl` of the call is not used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from effattn.ops.sequence_parallel._common import AXIS, TOKENS, shard_over_sequence
from effattn.ops.softmax_attention._blockwise import attention_mask

f32 = jnp.float32


def _softmax_weights(s, mask):
    s = jnp.where(mask, s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # rows with no visible key give 0
    p = jnp.exp(s - m)
    den = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(den == 0, 1.0, den)


def _attend_gathered(q, k, v, seg, *, causal, scale, window, sinks, weights: Callable):
    """Local queries q [B, L, H, D] against the whole sequence's k, v, gathered here."""
    b, l, h, d = q.shape
    k = jax.lax.all_gather(k, AXIS, axis=1, tiled=True)  # [B, T, Hkv, D]
    v = jax.lax.all_gather(v, AXIS, axis=1, tiled=True)
    t, hkv = k.shape[1], k.shape[2]
    if seg is None:
        seg_q = seg_k = jnp.ones((b, 1), jnp.int32)
    else:
        seg_q, seg_k = seg, jax.lax.all_gather(seg, AXIS, axis=1, tiled=True)
    pos_q = jax.lax.axis_index(AXIS) * l + jnp.arange(l)
    mask = attention_mask(
        pos_q[:, None],
        jnp.arange(t)[None, :],
        seg_q[:, :, None],
        seg_k[:, None, :],
        causal=causal,
        window=window,
        sinks=sinks,
    )  # [B, L, T]
    qf = q.astype(f32).reshape(b, l, hkv, h // hkv, d) * scale
    s = jnp.einsum('BTNGD,BSND->BNGTS', qf, k.astype(f32))
    p = weights(s, mask[:, None, None])
    o = jnp.einsum('BNGTS,BSNE->BTNGE', p, v.astype(f32))
    return o.reshape(b, l, h, v.shape[-1]).astype(q.dtype)


def _sigmoid_weights(s, mask, bias):
    return jnp.where(mask, jax.nn.sigmoid(s + bias), 0.0)


def _shard_gathered(tokens: dict, whole: dict, weights: Callable, **attend):
    """_attend_gathered (with `attend`: causal, scale, window, sinks) on each device's share of
    tokens {q, k, v, segment_ids}; `whole` (unsplit arrays) reaches every shard, where
    weights(whole) is the (scores, mask) -> weights function."""

    def local(tokens, whole):
        args = (tokens['q'], tokens['k'], tokens['v'], tokens.get('segment_ids'))
        return _attend_gathered(*args, weights=weights(whole), **attend)

    return shard_over_sequence(local, tokens, whole, TOKENS)


def softmax_attention(registry, impl, q, k, v, *, causal, scale, window, sinks, segment_ids):
    del registry, impl
    tokens = {'q': q, 'k': k, 'v': v, 'segment_ids': segment_ids}
    attend = {'causal': causal, 'scale': scale, 'window': window, 'sinks': sinks}
    return _shard_gathered(tokens, {}, lambda whole: _softmax_weights, **attend)


def sigmoid_attention(registry, impl, q, k, v, *, causal, scale, bias, window, segment_ids):
    del registry, impl
    tokens = {'q': q, 'k': k, 'v': v, 'segment_ids': segment_ids}
    attend = {'causal': causal, 'scale': scale, 'window': window, 'sinks': None}
    weights = lambda whole: functools.partial(_sigmoid_weights, bias=whole['bias'])
    return _shard_gathered(tokens, {'bias': jnp.asarray(bias, f32)}, weights, **attend)
