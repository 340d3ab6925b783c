"""Dense fp32 oracle for simple_gla: O = (QK^T ⊙ D) V with D_ij = exp(sum_{j<l<=i} g_l) (ALGORITHMS.md section 4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.simple_gla._segments import segment_resets

_HI = jax.lax.Precision.HIGHEST


def naive_simple_gla(q, k, v, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64):
  """Returns (o fp32 [B,T,H,V], final_state fp32 [B,H,K,V]). g None means no decay. chunk_size is unused."""
  del chunk_size
  b, t, h, _ = q.shape
  q = q.astype(jnp.float32) * scale
  k, v = k.astype(jnp.float32), v.astype(jnp.float32)
  gh = (jnp.zeros((b, t, h)) if g is None else g.astype(jnp.float32)).transpose(0, 2, 1)  # [B,H,T]
  # Log decay from j to i summed term by term (a "segment sum"): no cancellation as in G_i - G_j.
  idx = jnp.arange(t)
  later = idx[:, None] > idx[None, :]
  segsum = jnp.cumsum(jnp.where(later, gh[..., :, None], 0.0), axis=-2)  # [B,H,T,T]
  nb = jnp.cumsum(segment_resets(segment_ids, b, t), axis=1)  # segment index of each token
  mask = (idx[:, None] >= idx[None, :]) & (nb[:, :, None] == nb[:, None, :])[:, None]
  decay = jnp.where(mask, jnp.exp(jnp.where(mask, segsum, 0.0)), 0.0)
  scores = jnp.einsum('BIHK,BJHK->BHIJ', q, k, precision=_HI) * decay
  o = jnp.einsum('BHIJ,BJHV->BIHV', scores, v, precision=_HI)

  # Last segment's tokens decayed to the end of the row: sum_{l>j} g_l, an exclusive reverse cumsum.
  rest = jnp.flip(jnp.cumsum(jnp.flip(gh, -1), axis=-1), -1)
  rest = jnp.concatenate([rest[..., 1:], jnp.zeros_like(rest[..., :1])], axis=-1)
  last = (nb == nb[:, -1:])[:, None]  # [B,1,T]
  w = jnp.where(last, jnp.exp(rest), 0.0).transpose(0, 2, 1)[..., None]  # [B,T,H,1]
  ht = jnp.einsum('BJHK,BJHV->BHKV', k * w, v, precision=_HI)
  if initial_state is not None:
    h0 = initial_state.astype(jnp.float32)
    first = (nb == 0)[:, None]
    wq = jnp.where(first, jnp.exp(jnp.cumsum(gh, axis=-1)), 0.0).transpose(0, 2, 1)[..., None]
    o = o + jnp.einsum('BIHK,BHKV->BIHV', q * wq, h0, precision=_HI)
    carry = jnp.where(nb[:, -1] == 0, 1.0, 0.0)[:, None] * jnp.exp(jnp.sum(gh, axis=-1))  # [B,H]
    ht = ht + carry[..., None, None] * h0
  return o, ht
