"""simple_gla: linear attention with a scalar decay per head (ALGORITHMS.md section 4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from effattn.ops.common.checks import check_shape
from effattn.ops.common.dispatch import ImplRegistry, default_backend
from effattn.ops.simple_gla._checks import auto_order, check_qkv, check_segments_and_chunk
from effattn.ops.simple_gla.chunk import chunk_simple_gla
from effattn.ops.simple_gla.naive import naive_simple_gla
from effattn.ops.simple_gla.pallas import kernel_simple_gla
from effattn.ops.simple_gla.recurrent import recurrent_simple_gla
from effattn.ops.simple_gla.slopes import alibi_slopes, transnormer_g_gamma


def _auto_order(q, *args, **kwargs) -> list[str]:
  """'auto': the Pallas kernel first on GPU (it raises NotImplementedError for segment_ids and falls
  through to the next), then auto_order's scan-for-decoding / chunk choice."""
  order = auto_order(q, *args, **kwargs)
  return ['kernel', *order] if q.shape[1] > 1 and default_backend() == 'gpu' else order


# Every impl: fn(q, k, v, g | None, *, scale, initial_state, segment_ids, chunk_size) -> (o fp32, ht fp32)
# ('kernel' returns o in q's dtype).
REGISTRY = ImplRegistry('simple_gla', {
    'naive': naive_simple_gla,
    'recurrent': recurrent_simple_gla,
    'chunk': chunk_simple_gla,
    'kernel': kernel_simple_gla,
}, _auto_order)


def simple_gla(
    q: Float[Array, 'B T H K'],
    k: Float[Array, 'B T H K'],
    v: Float[Array, 'B T H V'],
    g: Float[Array, 'B T H'] | None = None,
    *,
    g_gamma: Float[Array, 'H'] | None = None,  # noqa: F821  (a jaxtyping shape, not a name)
    scale: float | None = None,
    initial_state: Float[Array, 'B H K V'] | None = None,
    output_final_state: bool = False,
    segment_ids: Int[Array, 'B T'] | None = None,
    impl: str = 'auto',
    chunk_size: int = 64,
) -> tuple[Float[Array, 'B T H V'], Float[Array, 'B H K V'] | None]:
  """Scalar-decay linear attention, RetNet (Sun et al. 2023) eq. 1 with A = exp(g_t) I:
  S_t = e^{g_t} S_{t-1} + k_t^T v_t, o_t = q_t S_t.

  Args:
    q, k, v: [B, T, H, K], [B, T, H, K], [B, T, H, V]. q is multiplied by `scale` first.
    g: [B, T, H] data-dependent log decay (<= 0; positive values are not checked and may overflow).
    g_gamma: [H] constant log decay per head (Lightning Attention / TransNormerLLM / RetNet; see
      slopes.transnormer_g_gamma). A buffer: it receives no gradient. Give exactly one of g, g_gamma.
    scale: None means K ** -0.5 (TransNormer uses scale=1).
    initial_state: [B, H, K, V], the state before the first token; with segment_ids it feeds the
      first segment of each row only.
    output_final_state: also return the fp32 state after the last token of each row (that is, of the
      row's last segment, whatever its id, padding included).
    segment_ids: [B, T] int, packed sequences: the state resets wherever the id changes along a row.
      Id 0 (padding) is a segment like any other; its outputs are meaningless, mask them.
    impl: 'auto', 'naive', 'recurrent', 'chunk' ('chunk' uses a hand-derived custom VJP) or 'kernel'
      (Pallas, Triton lowering on GPU, interpret mode elsewhere; no segment_ids). 'auto' takes
      'kernel' on GPU.
    chunk_size: chunk length C of impl='chunk'.

  Returns:
    (o [B, T, H, V] in q's dtype, final_state [B, H, K, V] float32 or None).
  """
  b, t, h, kd, vd = check_qkv(q, k, v)
  if (g is None) == (g_gamma is None):
    raise ValueError('simple_gla: give exactly one of g [B, T, H] (data-dependent decay) and '
                     f'g_gamma [H] (constant decay); got g={None if g is None else tuple(g.shape)}, '
                     f'g_gamma={None if g_gamma is None else tuple(g_gamma.shape)}')
  check_shape('g', g, (b, t, h), '[B, T, H]')
  check_shape('g_gamma', g_gamma, (h,), '[H]')
  check_shape('initial_state', initial_state, (b, h, kd, vd), '[B, H, K, V]')
  check_segments_and_chunk(segment_ids, chunk_size, b, t)
  if g_gamma is not None:
    g = jnp.broadcast_to(jax.lax.stop_gradient(g_gamma).astype(jnp.float32), (b, t, h))
  scale = kd ** -0.5 if scale is None else scale
  o, ht = REGISTRY(impl, q, k, v, g, scale=scale, initial_state=initial_state,
                   segment_ids=segment_ids, chunk_size=chunk_size)
  return o.astype(q.dtype), (ht if output_final_state else None)


__all__ = ['simple_gla', 'REGISTRY', 'alibi_slopes', 'transnormer_g_gamma']
