"""linear_attn: causal linear attention on feature-mapped q, k (ALGORITHMS.md section 3)."""
from __future__ import annotations

from jaxtyping import Array, Float, Int

from effattn.ops.common.checks import check_shape
from effattn.ops.common.dispatch import ImplRegistry
from effattn.ops.linear_attn._normalize import EPS
from effattn.ops.linear_attn.chunk import chunk_linear_attn
from effattn.ops.linear_attn.naive import naive_linear_attn
from effattn.ops.linear_attn.recurrent import recurrent_linear_attn
from effattn.ops.simple_gla._checks import auto_order, check_qkv, check_segments_and_chunk

# Every impl: fn(q, k, v, *, scale, initial_state, segment_ids, normalize, chunk_size) -> (o fp32, ht fp32).
REGISTRY = ImplRegistry('linear_attn', {
    'naive': naive_linear_attn,
    'recurrent': recurrent_linear_attn,
    'chunk': chunk_linear_attn,
}, auto_order)


def linear_attn(
    q: Float[Array, 'B T H K'],
    k: Float[Array, 'B T H K'],
    v: Float[Array, 'B T H V'],
    *,
    scale: float | None = None,
    initial_state: Float[Array, 'B H K Vs'] | None = None,
    output_final_state: bool = False,
    normalize: bool = False,
    segment_ids: Int[Array, 'B T'] | None = None,
    impl: str = 'auto',
    chunk_size: int = 64,
) -> tuple[Float[Array, 'B T H V'], Float[Array, 'B H K Vs'] | None]:
  """Causal linear attention, Katharopoulos et al. 2020 ("Transformers are RNNs") Sec. 3.3.1, eqs. 8-10.

  S_t = S_{t-1} + k_t^T v_t, o_t = q_t S_t; with normalize, z_t = z_{t-1} + k_t and
  o_t = q_t S_t / (q_t·z_t + 1e-6).

  Args:
    q, k: [B, T, H, K] already passed through the feature map (K is the feature dim); v: [B, T, H, V].
      q is multiplied by `scale` first, also when normalising (as fla does; it cancels except in eps).
    scale: None means K ** -0.5.
    initial_state: [B, H, K, V], or with normalize [B, H, K, V+1] whose last column is z (the
      ones-column convention: the state of v extended by a column of ones). With segment_ids it feeds
      the first segment of each row only.
    output_final_state: also return the fp32 state after the last token of each row (of its last
      segment), in the same layout as initial_state ([B, H, K, V+1] with z last when normalize).
    normalize: divide by q·z + 1e-6 (eps guards feature maps such as relu that can give q·z = 0).
    segment_ids: [B, T] int, packed sequences: the state resets wherever the id changes along a row.
      Id 0 (padding) is a segment like any other; its outputs are meaningless, mask them.
    impl: 'auto', 'naive', 'recurrent' or 'chunk' ('chunk' uses a hand-derived custom VJP).
    chunk_size: chunk length C of impl='chunk'.

  Returns:
    (o [B, T, H, V] in q's dtype, final_state float32 or None).
  """
  b, t, h, kd, vd = check_qkv(q, k, v)
  state_v = vd + 1 if normalize else vd
  check_shape('initial_state', initial_state, (b, h, kd, state_v),
              '[B, H, K, V+1] (z last, normalize=True)' if normalize else '[B, H, K, V]')
  check_segments_and_chunk(segment_ids, chunk_size, b, t)
  scale = kd ** -0.5 if scale is None else scale
  o, ht = REGISTRY(impl, q, k, v, scale=scale, initial_state=initial_state, segment_ids=segment_ids,
                   normalize=normalize, chunk_size=chunk_size)
  return o.astype(q.dtype), (ht if output_final_state else None)


__all__ = ['linear_attn', 'REGISTRY', 'EPS']
