"""Inputs of the step-by-step linear recurrences (the naive oracles and lax.scan paths of gla and the
(gated) delta rule): fp32 operands, q already multiplied by scale, and the fp32 initial state."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def fp32_inputs(
    q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, initial_state: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(scale * q, k, v) in fp32 and the initial state [B, H, K, V] in fp32 (zeros when None)."""
    b, _, h, dk = q.shape
    f32 = jnp.float32
    if initial_state is None:
        s0 = jnp.zeros((b, h, dk, v.shape[-1]), f32)
    else:
        s0 = initial_state.astype(f32)
    return q.astype(f32) * scale, k.astype(f32), v.astype(f32), s0
