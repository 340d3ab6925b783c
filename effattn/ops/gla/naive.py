"""GLA oracle: the literal recurrence S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t, one step per t, fp32.

No chunking and no factorisation; matmuls at HIGHEST precision whatever the global setting.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.common.recurrence import fp32_inputs
from effattn.ops.gla._segments import segment_resets

_HI = jax.lax.Precision.HIGHEST


def gla_naive(q, k, v, g, *, scale: float, initial_state=None, segment_ids=None):
  """Returns (o [B,T,H,V] in q's dtype, final state [B,H,K,V] fp32)."""
  b, t = q.shape[:2]
  dtype = q.dtype
  q, k, v, s0 = fp32_inputs(q, k, v, scale=scale, initial_state=initial_state)
  g = g.astype(jnp.float32)
  resets = jnp.zeros((b, t), bool) if segment_ids is None else segment_resets(segment_ids)

  def step(s, i):
    s = jnp.where(resets[:, i, None, None, None], 0.0, s)  # a new segment starts from an empty state
    s = jnp.exp(g[:, i])[..., None] * s + k[:, i, :, :, None] * v[:, i, :, None, :]
    return s, jnp.einsum('BHK,BHKV->BHV', q[:, i], s, precision=_HI)

  s, o = jax.lax.scan(step, s0, jnp.arange(t))
  return jnp.moveaxis(o, 0, 1).astype(dtype), s
