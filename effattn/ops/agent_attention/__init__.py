"""agent_attention: Agent Attention (Han et al. 2024), with our causal adaptation (ALGORITHMS.md 7)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from effattn.ops.agent_attention.chunk import agent_attention_chunk
from effattn.ops.agent_attention.naive import agent_attention_naive, agent_attention_noncausal
from effattn.ops.agent_attention.recurrent import agent_attention_recurrent
from effattn.ops.common.checks import check_rank, check_shape
from effattn.ops.common.dispatch import ImplRegistry


def _auto_order(q, *args, **kwargs) -> list[str]:
    """The scan for one-token decoding, the chunk form otherwise."""
    del args, kwargs
    return ['recurrent', 'chunk'] if q.shape[1] == 1 else ['chunk', 'recurrent']


# Every impl: fn(q, k, v, agents, b1, b2, *, scale, initial_state, segment_ids, chunk_size)
#   -> (o fp32 [B, T, H, V], final state fp32 [B, H, n, V + 2]).
REGISTRY = ImplRegistry(
    'agent_attention',
    {
        'naive': agent_attention_naive,
        'recurrent': agent_attention_recurrent,
        'chunk': agent_attention_chunk,
    },
    _auto_order,
)


def state_shape(batch_size: int, num_heads: int, num_agents: int, v_dim: int) -> tuple:
    """Shape of the packed fp32 state: [B, H, n, V + 2] = (N [n, V], Z [n], running max m [n])."""
    return (batch_size, num_heads, num_agents, v_dim + 2)


def agent_attention(
    q: Float[Array, 'B T H K'],
    k: Float[Array, 'B T H K'],
    v: Float[Array, 'B T H V'],
    agents: Float[Array, 'H n K'],
    b1: Float[Array, 'H n'],
    b2: Float[Array, 'H n'],
    *,
    scale: float | None = None,
    causal: bool = True,
    initial_state: Float[Array, 'B H n V2'] | None = None,
    output_final_state: bool = False,
    segment_ids: Int[Array, 'B T'] | None = None,
    impl: str = 'auto',
    chunk_size: int = 64,
) -> tuple[Float[Array, 'B T H V'], Float[Array, 'B H n V2'] | None]:
    """Agent attention, Han et al. 2024 (arXiv 2312.08874) Sec. 3.2, Eq. 3, with learned agents.

    causal=True (our LM adaptation, ALGORITHMS.md 7): e_js = s a_j.k_s + b1_j,
    N_j(t) = sum_{s<=t} e^(e_js) v_s, Z_j(t) = sum_{s<=t} e^(e_js), p_t = softmax_j(s q_t.a_j + b2_j),
    o_t = sum_j p_tj N_j(t) / Z_j(t): a generalised linear attention with an n(V+2) state per head.
    causal=False (the paper's encoder form): V_A = softmax(s A K^T + b1) V over the whole sequence,
    O = softmax(s Q A^T + b2) V_A (one dense computation; impl, chunk_size and segment_ids unused,
    segment_ids must be None).

    Args:
      q, k: [B, T, H, K]; v: [B, T, H, V]; agents: [H, n, K] per-head agent tokens; b1, b2: [H, n]
        agent biases of the aggregation and the broadcast softmax.
      scale: None means K ** -0.5; multiplies both q.A and A.k.
      initial_state: packed fp32 [B, H, n, V + 2] = (N, Z, m) with N_true = N e^m, Z_true = Z e^m
        (Z = 0: empty). With segment_ids it feeds the first segment of each row only.
      output_final_state: also return the state after the last token (of the last segment).
      segment_ids: [B, T] int; the state resets wherever the id changes along a row.
      impl: 'auto' | 'naive' | 'recurrent' | 'chunk'.
      chunk_size: chunk length of impl='chunk'.

    Returns:
      (o [B, T, H, V] in q's dtype, final state fp32 [B, H, n, V + 2] or None).
    """
    check_rank('q', q, 4, '[B, T, H, K]')
    b, t, h, kd = q.shape
    check_shape('k', k, (b, t, h, kd), '[B, T, H, K]')
    check_rank('v', v, 4, '[B, T, H, V]')
    vd = v.shape[3]
    check_shape('v', v, (b, t, h, vd), '[B, T, H, V]')
    check_rank('agents', agents, 3, '[H, n, K]')
    n = agents.shape[1]
    check_shape('agents', agents, (h, n, kd), '[H, n, K]')
    check_shape('b1', b1, (h, n), '[H, n]')
    check_shape('b2', b2, (h, n), '[H, n]')
    check_shape('initial_state', initial_state, state_shape(b, h, n, vd), '[B, H, n, V + 2]')
    for name, x in (('q', q), ('k', k), ('v', v), ('agents', agents)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f'{name} must be a floating-point array; got dtype {x.dtype}')
    if segment_ids is not None:
        check_shape('segment_ids', segment_ids, (b, t), '[B, T]')
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f'segment_ids must be an integer array; got dtype {segment_ids.dtype}')
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive int; got {chunk_size!r}')
    scale = kd**-0.5 if scale is None else float(scale)
    if causal:
        o, ht = REGISTRY(
            impl,
            q,
            k,
            v,
            agents,
            b1,
            b2,
            scale=scale,
            initial_state=initial_state,
            segment_ids=segment_ids,
            chunk_size=chunk_size,
        )
    else:
        if segment_ids is not None:
            raise ValueError('agent_attention(causal=False) does not support segment_ids')
        if impl != 'auto' and impl not in REGISTRY.names:
            raise ValueError(
                f'agent_attention: unknown impl={impl!r}; supported: {["auto"] + REGISTRY.names}'
            )
        o, ht = agent_attention_noncausal(
            q, k, v, agents, b1, b2, scale=scale, initial_state=initial_state
        )
    return o.astype(q.dtype), (ht if output_final_state else None)


__all__ = ['REGISTRY', 'agent_attention', 'state_shape']
