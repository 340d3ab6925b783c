"""GLA as a lax.scan over time (the decoding path): S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.common.recurrence import fp32_inputs
from effattn.ops.gla._segments import segment_resets


def _step(s, xs):
  q_t, k_t, v_t, g_t, reset_t = xs  # [B,H,K], [B,H,K], [B,H,V], [B,H,K], [B]
  s = jnp.where(reset_t[:, None, None, None], 0.0, s)
  s = jnp.exp(g_t)[..., None] * s + jnp.einsum('BHK,BHV->BHKV', k_t, v_t)
  return s, jnp.einsum('BHK,BHKV->BHV', q_t, s)


def gla_recurrent(q, k, v, g, *, scale: float, initial_state=None, segment_ids=None):
  """Returns (o [B,T,H,V] in q's dtype, final state [B,H,K,V] fp32). Autodiff through the scan gives the gradients."""
  b, t = q.shape[:2]
  dtype = q.dtype
  q, k, v, s0 = fp32_inputs(q, k, v, scale=scale, initial_state=initial_state)
  g = g.astype(jnp.float32)
  resets = jnp.zeros((b, t), bool) if segment_ids is None else segment_resets(segment_ids)
  xs = (q, k, v, g, resets)
  if t == 1:  # one decoding step: no scan
    s, o = _step(s0, tuple(x[:, 0] for x in xs))
    return o[:, None].astype(dtype), s
  s, o = jax.lax.scan(_step, s0, tuple(jnp.moveaxis(x, 1, 0) for x in xs))
  return jnp.moveaxis(o, 0, 1).astype(dtype), s
