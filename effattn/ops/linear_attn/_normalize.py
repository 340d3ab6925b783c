"""Normalised linear attention on top of an un-normalised core, by the ones-column trick (ALGORITHMS.md section 3).

Appending a ones column to v makes the core carry z = sum_j k_j in the state's last column and return
the denominator q·z in the output's last column; o = num / (q·z + EPS). The state is then [B,H,K,V+1].
"""
from __future__ import annotations

import jax.numpy as jnp

EPS = 1e-6  # added to the denominator q·z (q scaled); guards rows whose features give q·z = 0


def run_core(core, q, k, v, *, normalize, scale, initial_state, segment_ids, chunk_size):
  """core: a simple_gla impl (q, k, v, g, ...) -> (o fp32, ht); run with g = None (no decay)."""
  if normalize:
    v = jnp.concatenate([v, jnp.ones_like(v[..., :1])], axis=-1)
  o, ht = core(q, k, v, None, scale=scale, initial_state=initial_state, segment_ids=segment_ids,
               chunk_size=chunk_size)
  if normalize:
    o = o[..., :-1] / (o[..., -1:] + EPS)
  return o, ht
