"""Argument checks shared by simple_gla and linear_attn (errors name the argument and its shape)."""
from __future__ import annotations

import jax.numpy as jnp

from effattn.ops.common.checks import check_rank, check_shape


def check_qkv(q, k, v) -> tuple[int, int, int, int, int]:
  """Checks q, k [B,T,H,K] and v [B,T,H,V]; returns (B, T, H, K, V)."""
  check_rank('q', q, 4, '[B, T, H, K]')
  b, t, h, kd = q.shape
  check_shape('k', k, (b, t, h, kd), '[B, T, H, K]')
  check_rank('v', v, 4, '[B, T, H, V]')
  check_shape('v', v, (b, t, h, v.shape[3]), '[B, T, H, V]')
  for name, x in (('q', q), ('k', k), ('v', v)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'{name} must be a floating-point array; got dtype {x.dtype}')
  return b, t, h, kd, v.shape[3]


def check_segments_and_chunk(segment_ids, chunk_size, b: int, t: int) -> None:
  if segment_ids is not None:
    check_shape('segment_ids', segment_ids, (b, t), '[B, T]')
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f'segment_ids must be an integer array; got dtype {segment_ids.dtype}')
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f'chunk_size must be a positive int; got {chunk_size!r}')


def auto_order(q, *args, **kwargs) -> list[str]:
  """'auto' policy: the scan for one-token decoding, the chunk form otherwise."""
  del args, kwargs
  return ['recurrent', 'chunk'] if q.shape[1] == 1 else ['chunk', 'recurrent']
