"""Dense fp32 oracle for linear_attn: O = (QK^T ⊙ M) V, optionally / ((QK^T ⊙ M) 1 + eps) (ALGORITHMS.md section 3)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.linear_attn._normalize import EPS
from effattn.ops.simple_gla._segments import segment_resets

_HI = jax.lax.Precision.HIGHEST


def naive_linear_attn(q, k, v, *, scale, initial_state=None, segment_ids=None, normalize=False,
                      chunk_size=64):
  """Returns (o fp32, final_state fp32 [B,H,K,V], or [B,H,K,V+1] with z last when normalize). chunk_size unused."""
  del chunk_size
  b, t, h, _ = q.shape
  vd = v.shape[-1]
  q = q.astype(jnp.float32) * scale
  k, v = k.astype(jnp.float32), v.astype(jnp.float32)
  nb = jnp.cumsum(segment_resets(segment_ids, b, t), axis=1)  # segment index of each token
  idx = jnp.arange(t)
  mask = (idx[:, None] >= idx[None, :]) & (nb[:, :, None] == nb[:, None, :])[:, None]  # [B,1,T,T]
  scores = jnp.where(mask, jnp.einsum('BIHK,BJHK->BHIJ', q, k, precision=_HI), 0.0)
  num = jnp.einsum('BHIJ,BJHV->BIHV', scores, v, precision=_HI)
  den = jnp.sum(scores, axis=-1).transpose(0, 2, 1)  # [B,T,H]
  last = (nb == nb[:, -1:]).astype(jnp.float32)[:, :, None, None]
  s_t = jnp.einsum('BJHK,BJHV->BHKV', k * last, v, precision=_HI)
  z_t = jnp.sum(k * last, axis=1)  # [B,H,K]
  if initial_state is not None:
    h0 = initial_state.astype(jnp.float32)
    first = (nb == 0).astype(jnp.float32)[:, :, None, None]
    qf = q * first
    num = num + jnp.einsum('BIHK,BHKV->BIHV', qf, h0[..., :vd], precision=_HI)
    keep = (nb[:, -1] == 0).astype(jnp.float32)[:, None, None, None]
    s_t = s_t + keep * h0[..., :vd]
    if normalize:
      den = den + jnp.einsum('BIHK,BHK->BIH', qf, h0[..., vd], precision=_HI)
      z_t = z_t + keep[..., 0] * h0[..., vd]
  if not normalize:
    return num, s_t
  return num / (den[..., None] + EPS), jnp.concatenate([s_t, z_t[..., None]], axis=-1)
