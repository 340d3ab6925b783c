"""Pieces the agent_attention impls share: agent logits, the packed state, segment runs.

The state of one (b, h) is (N [n, V], Z [n], m [n]) packed as one fp32 array [..., n, V + 2]
(N in [..., :V], Z in [..., V], m in [..., V + 1]). It stands for the accumulators
N_true = N e^m, Z_true = Z e^m of ALGORITHMS.md section 7; m is only a shift (running max), so two
states with equal N / Z and log Z + m are the same state. Z == 0 means empty (m is then ignored).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf
Z_FLOOR = 1e-30  # guards Z_t in the chunk form when in-chunk terms underflow (ALGORITHMS.md 7)


def agent_logits(x: jax.Array, agents: jax.Array, bias: jax.Array, scale: float) -> jax.Array:
    """s * x_t . a_j + bias_j in fp32: x [B, T, H, K], agents [H, n, K], bias [H, n] -> [B, T, H, n]."""
    xf = x.astype(jnp.float32) * scale
    return jnp.einsum('BTHK,HNK->BTHN', xf, agents.astype(jnp.float32)) + bias.astype(jnp.float32)


def unpack(state: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, H, n, V + 2] -> (N [B, H, n, V], Z [B, H, n], m [B, H, n]), fp32."""
    state = state.astype(jnp.float32)
    return state[..., :-2], state[..., -2], state[..., -1]


def pack(n_acc: jax.Array, z: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.concatenate([n_acc, z[..., None], m[..., None]], axis=-1).astype(jnp.float32)


def empty_state(b: int, h: int, n: int, vd: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    return (
        jnp.zeros((b, h, n, vd), jnp.float32),
        jnp.zeros((b, h, n), jnp.float32),
        jnp.zeros((b, h, n), jnp.float32),
    )


def effective_max(z: jax.Array, m: jax.Array) -> jax.Array:
    """The state's shift, -inf for an empty state (so that exp(m - m') = 0 drops it)."""
    return jnp.where(z > 0, m, NEG_INF)


def segment_runs(segment_ids: jax.Array | None, b: int, t: int) -> jax.Array:
    """[B, T] int32 index of the run of equal ids each token belongs to (zeros without segments)."""
    if segment_ids is None:
        return jnp.zeros((b, t), jnp.int32)
    change = segment_ids[:, 1:] != segment_ids[:, :-1]
    change = jnp.concatenate([jnp.zeros_like(change[:, :1]), change], axis=1)
    return jnp.cumsum(change.astype(jnp.int32), axis=1)


def rescale_merge(n_a, z_a, m_a, n_b, z_b, m_b):
    """Sum of two states (a may be empty; b is not): shift to the larger max, add."""
    m_a = effective_max(z_a, m_a)
    m_new = jnp.maximum(m_a, m_b)
    alpha, beta = jnp.exp(m_a - m_new), jnp.exp(m_b - m_new)
    return n_a * alpha[..., None] + n_b * beta[..., None], z_a * alpha + z_b * beta, m_new
