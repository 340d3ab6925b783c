"""Gated delta rule (Gated DeltaNet)."""
from __future__ import annotations

from jaxtyping import Array, Float, Int

from effattn.ops.gated_delta_rule._api import check_args, make_registry

REGISTRY = make_registry('gated_delta_rule', gated=True)


def gated_delta_rule(
    q: Float[Array, 'B T H K'], k: Float[Array, 'B T H K'], v: Float[Array, 'B T H V'],
    g: Float[Array, 'B T H'], beta: Float[Array, 'B T H'], *,
    scale: float | None = None,
    initial_state: Float[Array, 'B H K V'] | None = None,
    output_final_state: bool = False,
    segment_ids: Int[Array, 'B T'] | None = None,
    impl: str = 'auto',
    chunk_size: int = 64,
) -> tuple[Float[Array, 'B T H V'], Float[Array, 'B H K V'] | None]:
    """Gated DeltaNet (Yang et al. 2025): S_t = a_t (I - b_t k_t^T k_t) S_{t-1} + b_t k_t^T v_t.

    g = log a_t <= 0 (log-space scalar decay per head), beta in (0, 1); q, k must be L2-normalised
    per head by the caller. o_t = (scale q_t) S_t, scale defaulting to K ** -0.5. Returns
    (o [B, T, H, V] in q's dtype, final_state [B, H, K, V] fp32 or None).

    segment_ids [B, T] (int, 0 = padding): the state restarts from zero wherever the id changes;
    initial_state feeds the first segment of each row only, and final_state is the state at the
    end of the row (of its last segment, padding included: padding tokens run through the
    recurrence like any segment, so their outputs are finite but meaningless; mask them).

    impl: 'auto' (recurrent for T == 1; else 'kernel' on GPU when it applies, then chunk), 'naive',
    'recurrent', 'chunk' (chunk_size rows per chunk; see chunk.py for its custom VJP) or 'kernel'
    (Pallas, Triton lowering on GPU, interpret mode elsewhere; no segment_ids; see pallas.py).
    """
    check_args(q, k, v, g, beta, initial_state, segment_ids, chunk_size)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    o, final_state = REGISTRY(impl, q, k, v, g, beta, scale=scale, initial_state=initial_state,
                              segment_ids=segment_ids, chunk_size=chunk_size)
    return o, (final_state if output_final_state else None)
