"""Segment resets for packed sequences (ALGORITHMS.md section 0), shared by simple_gla and linear_attn."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_resets(segment_ids: jax.Array | None, batch: int, length: int) -> jax.Array:
  """[B, T] int32: 1 where the segment id differs from the previous token's, else 0.

  Position 0 never resets, so initial_state feeds the first segment of each row. Ids need not be
  unique along a row: only changes matter (padding id 0 is a segment like any other).
  """
  if segment_ids is None:
    return jnp.zeros((batch, length), jnp.int32)
  change = (segment_ids[:, 1:] != segment_ids[:, :-1]).astype(jnp.int32)
  return jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), change], axis=1)
