"""Step-by-step linear_attn: the decoding path (simple_gla's scan without decay)."""
from __future__ import annotations

from effattn.ops.linear_attn._normalize import run_core
from effattn.ops.simple_gla.recurrent import recurrent_simple_gla


def recurrent_linear_attn(q, k, v, *, scale, initial_state=None, segment_ids=None, normalize=False,
                          chunk_size=64):
  """S_t = S_{t-1} + k_t^T v_t, o_t = q_t S_t (ones column for normalize). Autodiff through lax.scan."""
  return run_core(recurrent_simple_gla, q, k, v, normalize=normalize, scale=scale,
                  initial_state=initial_state, segment_ids=segment_ids, chunk_size=chunk_size)
