"""Chunkwise linear_attn: simple_gla's chunk form without decay (hand-derived custom VJP there)."""
from __future__ import annotations

from effattn.ops.linear_attn._normalize import run_core
from effattn.ops.simple_gla.chunk import chunk_simple_gla


def chunk_linear_attn(q, k, v, *, scale, initial_state=None, segment_ids=None, normalize=False,
                      chunk_size=64):
  """O_c = Q_c S_c + (Q_c K_c^T ⊙ M) V_c, S_{c+1} = S_c + K_c^T V_c; normalize via the ones column."""
  return run_core(chunk_simple_gla, q, k, v, normalize=normalize, scale=scale,
                  initial_state=initial_state, segment_ids=segment_ids, chunk_size=chunk_size)
