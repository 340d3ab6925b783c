"""Chunking helpers for chunkwise-parallel ops (ALGORITHMS.md section 0).

Padding rules: k = v = 0 and g = 0 (log 1) in the padded tail, so that padding never decays or
changes the state; padded segment ids repeat the last real id so no spurious boundary is created.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pad_to_multiple(x: jax.Array, multiple: int, axis: int = 1, value=0) -> jax.Array:
    """Pads `axis` of x up to a multiple of `multiple` with `value`."""
    t = x.shape[axis]
    pad = (-t) % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def pad_segment_ids(segment_ids: jax.Array, multiple: int) -> jax.Array:
    """Pads [B, T] segment ids by repeating the last id (no new boundary inside the padding)."""
    t = segment_ids.shape[1]
    pad = (-t) % multiple
    if pad == 0:
        return segment_ids
    tail = jnp.repeat(segment_ids[:, -1:], pad, axis=1)
    return jnp.concatenate([segment_ids, tail], axis=1)


def to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, T, ...] -> [B, N, C, ...] with T = N * C (T must already be padded)."""
    b, t = x.shape[:2]
    return x.reshape(b, t // chunk, chunk, *x.shape[2:])


def from_chunks(x: jax.Array) -> jax.Array:
    """[B, N, C, ...] -> [B, N * C, ...]."""
    b, n, c = x.shape[:3]
    return x.reshape(b, n * c, *x.shape[3:])


def chunk_local_cumsum(g: jax.Array, chunk: int, reverse: bool = False) -> jax.Array:
    """Inclusive cumulative sum of log gates that restarts every `chunk` steps, in fp32.

    g: [B, T, ...] with T a multiple of `chunk`. Never take exp of a *global* cumsum of log gates:
    exp(-sum g) overflows fp32 after ~88 nats; chunk-local sums keep |G| <= chunk * max|g|.
    """
    gc = to_chunks(g.astype(jnp.float32), chunk)
    if reverse:
        out = jnp.flip(jnp.cumsum(jnp.flip(gc, 2), axis=2), 2)
    else:
        out = jnp.cumsum(gc, axis=2)
    return from_chunks(out)
