"""Step-by-step simple_gla (lax.scan over time): the decoding path (ALGORITHMS.md section 4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.simple_gla._segments import segment_resets


def recurrent_simple_gla(q, k, v, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64):
  """S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t. Returns (o fp32, final_state fp32).

  g None means no decay (linear attention). chunk_size is unused (shared impl signature).
  Gradients: autodiff through the scan.
  """
  del chunk_size
  b, t, h, kd = q.shape
  vd = v.shape[-1]
  time_major = lambda x: jnp.moveaxis(x.astype(jnp.float32), 1, 0)
  g = jnp.zeros((b, t, h)) if g is None else g
  h0 = (jnp.zeros((b, h, kd, vd), jnp.float32) if initial_state is None
        else initial_state.astype(jnp.float32))
  resets = segment_resets(segment_ids, b, t).T  # [T,B]

  def step(state, x):
    q_t, k_t, v_t, g_t, r_t = x
    state = jnp.where(r_t[:, None, None, None] > 0, 0.0, state) * jnp.exp(g_t)[..., None, None]
    state = state + jnp.einsum('BHK,BHV->BHKV', k_t, v_t)
    return state, jnp.einsum('BHK,BHKV->BHV', q_t, state)

  xs = (time_major(q) * scale, time_major(k), time_major(v), time_major(g), resets)
  ht, o = jax.lax.scan(step, h0, xs)
  return jnp.moveaxis(o, 0, 1), ht
