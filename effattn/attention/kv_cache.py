"""Key/value cache for decoding softmax-family attention one token at a time."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def init_kv_cache(
    batch_size: int, max_len: int, num_kv_heads: int, k_dim: int, v_dim: int, dtype
) -> dict[str, jax.Array]:
    return {
        'k': jnp.zeros((batch_size, max_len, num_kv_heads, k_dim), dtype),
        'v': jnp.zeros((batch_size, max_len, num_kv_heads, v_dim), dtype),
    }


def append(
    cache: dict[str, jax.Array], k: jax.Array, v: jax.Array, position: jax.Array
) -> dict[str, jax.Array]:
    """Writes k, v [B, 1, Hkv, D] at slot `position` (a scalar int)."""
    zero = jnp.zeros((), jnp.int32)
    pos = jnp.asarray(position, jnp.int32)
    return {
        'k': jax.lax.dynamic_update_slice(
            cache['k'], k.astype(cache['k'].dtype), (zero, pos, zero, zero)
        ),
        'v': jax.lax.dynamic_update_slice(
            cache['v'], v.astype(cache['v'].dtype), (zero, pos, zero, zero)
        ),
    }


def visible(position: jax.Array, max_len: int, window: int, sinks: int) -> jax.Array:
    """[max_len] bool: which cached keys the query at `position` sees (causal, window, sinks)."""
    j = jnp.arange(max_len)
    ok = j <= position
    if window:
        ok &= (position - j < window) | (j < sinks)
    return ok


def attend_cache(
    q: jax.Array,
    cache: dict[str, jax.Array],
    position: jax.Array,
    *,
    scale: float,
    window: int,
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
    mask = visible(position, cache['k'].shape[1], window, sinks)
    w = weights_fn(scores, mask)
    o = jnp.einsum('BNGQS,BSNV->BQNGV', w, cache['v'].astype(jnp.float32))
    return o.reshape(b, 1, h, -1)
