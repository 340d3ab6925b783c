"""Key/value cache for decoding softmax-family attention one token at a time.

Layout: `sinks` sink slots (the first tokens, StreamingLLM; Xiao et al. 2024) followed by a ring of R
slots holding the most recent tokens, R = window for sliding-window attention (memory O(sinks +
window), so generation can run past the training length), else R = max_len. Keys are stored after
RoPE at their absolute positions, so decoding equals the dense masked forward exactly
(ALGORITHMS.md section 1).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def init_kv_cache(
    batch_size: int,
    max_len: int,
    num_kv_heads: int,
    k_dim: int,
    v_dim: int,
    dtype,
    *,
    window: int = 0,
    sinks: int = 0,
) -> dict[str, jax.Array]:
    slots = sinks + (window if window else max_len)
    return {
        'k': jnp.zeros((batch_size, slots, num_kv_heads, k_dim), dtype),
        'v': jnp.zeros((batch_size, slots, num_kv_heads, v_dim), dtype),
    }


def _write(buf: jax.Array, x: jax.Array, slot: jax.Array) -> jax.Array:
    zero = jnp.zeros((), jnp.int32)
    return jax.lax.dynamic_update_slice(buf, x.astype(buf.dtype), (zero, slot, zero, zero))


def append(
    cache: dict[str, jax.Array], k: jax.Array, v: jax.Array, position: jax.Array, *, sinks: int = 0
) -> dict[str, jax.Array]:
    """Writes k, v [B, 1, Hkv, D] of the token at `position` (scalar int) into its ring slot, and
    into its sink slot while position < sinks."""
    pos = jnp.asarray(position, jnp.int32)
    ring = cache['k'].shape[1] - sinks
    out = {}
    for name, x in (('k', k), ('v', v)):
        buf = _write(cache[name], x, sinks + pos % ring)
        if sinks:
            sink_slot = jnp.minimum(pos, sinks - 1)
            old = jax.lax.dynamic_slice_in_dim(buf, sink_slot, 1, axis=1)
            buf = _write(buf, jnp.where(pos < sinks, x.astype(buf.dtype), old), sink_slot)
        out[name] = buf
    return out


def visible(position: jax.Array, slots: int, sinks: int) -> jax.Array:
    """[slots] bool: which cache slots the query at `position` sees.

    Sink slot i holds token i (visible once written); ring slot r holds the latest token
    j_r = p - ((p - r) mod R), visible when j_r >= sinks (earlier tokens are served by sink slots, so
    nothing is counted twice). Together: j <= p and (p - j < window or j < sinks).
    """
    ring = slots - sinks
    sink_ok = jnp.arange(sinks) <= position
    r = jnp.arange(ring)
    j = position - (position - r) % ring
    return jnp.concatenate([sink_ok, (j >= sinks) & (j >= 0)])


def attend_cache(
    q: jax.Array,
    cache: dict[str, jax.Array],
    position: jax.Array,
    *,
    scale: float,
    sinks: int,
    weights_fn: Callable[[jax.Array, jax.Array], jax.Array],
) -> jax.Array:
    """o [B, 1, H, Dv] for one query q [B, 1, H, D] against the cache, in fp32.

    weights_fn(scores [B, Hkv, G, 1, S], mask [S]) -> weights of the same shape (softmax or sigmoid).
    """
    b, _, h, d = q.shape
    hkv = cache['k'].shape[2]
    qg = q.astype(jnp.float32).reshape(b, 1, hkv, h // hkv, d)
    scores = jnp.einsum('BQNGD,BSND->BNGQS', qg, cache['k'].astype(jnp.float32)) * scale
    mask = visible(position, cache['k'].shape[1], sinks)
    w = weights_fn(scores, mask)
    o = jnp.einsum('BNGQS,BSNV->BQNGV', w, cache['v'].astype(jnp.float32))
    return o.reshape(b, 1, h, -1)
