"""Packed-sequence helpers: segment_ids [B, T] -> contiguous segment numbers and reset flags."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_resets(segment_ids: jax.Array) -> jax.Array:
  """[B, T] bool: True where a new segment starts (the id differs from the previous step's); never at t = 0."""
  change = segment_ids[:, 1:] != segment_ids[:, :-1]
  return jnp.concatenate([jnp.zeros_like(change[:, :1]), change], axis=1)


def segment_numbers(segment_ids: jax.Array | None, batch: int, length: int) -> jax.Array:
  """[B, T] int32 running count of segment starts (0 for the first segment of each row).

  Unlike the raw ids, these are distinct for two segments that reuse the same id (e.g. 1, 2, 1), so equality of
  numbers means "same contiguous segment".
  """
  if segment_ids is None:
    return jnp.zeros((batch, length), jnp.int32)
  return jnp.cumsum(segment_resets(segment_ids).astype(jnp.int32), axis=1)
