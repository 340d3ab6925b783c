"""Gated linear attention with per-channel decay (GLA)."""
from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from effattn.ops.common.checks import check_rank, check_same_shape, check_shape
from effattn.ops.common.dispatch import ImplRegistry, default_backend
from effattn.ops.gla.chunk import gla_chunk
from effattn.ops.gla.naive import gla_naive
from effattn.ops.gla.pallas import kernel_gla
from effattn.ops.gla.recurrent import gla_recurrent

__all__ = ['gla', 'REGISTRY']


def _naive(q, k, v, g, *, scale, initial_state, segment_ids, chunk_size):
  del chunk_size
  return gla_naive(q, k, v, g, scale=scale, initial_state=initial_state, segment_ids=segment_ids)


def _recurrent(q, k, v, g, *, scale, initial_state, segment_ids, chunk_size):
  del chunk_size
  return gla_recurrent(q, k, v, g, scale=scale, initial_state=initial_state, segment_ids=segment_ids)


def _auto_order(q, *args, **kwargs):
  """The scan for one-token decoding, else the Pallas kernel first on GPU (it raises NotImplementedError for
  segment_ids and falls through), then the chunk form."""
  if q.shape[1] == 1:
    return ['recurrent', 'chunk']
  return ['kernel', 'chunk', 'recurrent'] if default_backend() == 'gpu' else ['chunk', 'recurrent']


REGISTRY = ImplRegistry('gla', {'naive': _naive, 'recurrent': _recurrent, 'chunk': gla_chunk, 'kernel': kernel_gla},
                        _auto_order)


def _check(q, k, v, g, initial_state, segment_ids, chunk_size):
  check_rank('q', q, 4, '[B, T, H, K]')
  check_same_shape('q', q, 'k', k)
  check_same_shape('k', k, 'g', g)
  check_rank('v', v, 4, '[B, T, H, V]')
  b, t, h, dk = q.shape
  if v.shape[:3] != (b, t, h):
    raise ValueError(f'v must have shape [B, T, H, V] with B, T, H = {(b, t, h)} as in q; got {tuple(v.shape)}')
  check_shape('initial_state', initial_state, (b, h, dk, v.shape[3]), '[B, H, K, V]')
  check_shape('segment_ids', segment_ids, (b, t), '[B, T]')
  if segment_ids is not None and not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f'segment_ids must be an integer array; got dtype {segment_ids.dtype}')
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f'chunk_size must be a positive int; got {chunk_size!r}')


def gla(q: Float[Array, 'B T H K'], k: Float[Array, 'B T H K'], v: Float[Array, 'B T H V'],
        g: Float[Array, 'B T H K'], *, scale: float | None = None,
        initial_state: Float[Array, 'B H K V'] | None = None, output_final_state: bool = False,
        segment_ids: Int[Array, 'B T'] | None = None, impl: str = 'auto', chunk_size: int = 64,
        ) -> tuple[Float[Array, 'B T H V'], Float[Array, 'B H K V'] | None]:
  """GLA, Yang et al. 2024 (arXiv 2312.06635) Eq. 3: S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t.

  g holds log decays (<= 0) per key channel. q is multiplied by scale (default K ** -0.5) first.
  segment_ids: packed sequences, 0 = padding; the state restarts wherever the id changes from one step to the
  next (a padding run is a segment of its own). initial_state feeds the first segment of each row only; the
  returned final state is the state at the end of the row, i.e. of its last segment.
  impl: 'auto' | 'naive' | 'recurrent' | 'chunk' | 'kernel' (Pallas, Triton lowering on GPU, interpret mode
  elsewhere; no segment_ids; 'auto' takes it on GPU). chunk_size applies to 'chunk' only. Returns (o in q's dtype,
  final_state [B, H, K, V] fp32 or None unless output_final_state).
  """
  _check(q, k, v, g, initial_state, segment_ids, chunk_size)
  if scale is None:
    scale = q.shape[-1] ** -0.5
  o, final_state = REGISTRY(impl, q, k, v, g, scale=scale, initial_state=initial_state,
                            segment_ids=segment_ids, chunk_size=chunk_size)
  return o, (final_state if output_final_state else None)
