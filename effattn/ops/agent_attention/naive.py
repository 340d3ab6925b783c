"""Dense fp32 agent attention: the oracle (O(T^2 n) memory), and the non-causal (encoder) form."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.agent_attention._common import (
    NEG_INF,
    agent_logits,
    empty_state,
    pack,
    rescale_merge,
    segment_runs,
    unpack,
)


def agent_attention_naive(
    q, k, v, agents, b1, b2, *, scale, initial_state=None, segment_ids=None, chunk_size=64
):
    """The exact causal definition, each (t, j) on its own: o_t = sum_j p_tj N_j(t) / Z_j(t).

    N_j(t) / Z_j(t) = softmax over the keys s <= t of the same segment (plus the initial state as
    one pseudo-key of logit m0 + log Z0 and value N0 / Z0, for the first segment) of e_js, times v.
    Returns (o fp32 [B, T, H, V], final state fp32 [B, H, n, V + 2]).
    """
    del chunk_size
    b, t, h, _ = q.shape
    vd, n = v.shape[-1], agents.shape[1]
    e = agent_logits(k, agents, b1, scale)  # [B, S, H, n]
    p = jax.nn.softmax(agent_logits(q, agents, b2, scale), axis=-1)  # [B, T, H, n]
    vf = v.astype(jnp.float32)
    runs = segment_runs(segment_ids, b, t)
    pos = jnp.arange(t)
    mask = (pos[None, :, None] >= pos[None, None, :]) & (runs[:, :, None] == runs[:, None, :])
    logits = jnp.where(mask[..., None, None], e[:, None], NEG_INF)  # [B, T, S, H, n]
    n0, z0, m0 = unpack(initial_state) if initial_state is not None else empty_state(b, h, n, vd)
    has0 = z0 > 0
    safe_z0 = jnp.where(has0, z0, 1.0)
    logit0 = jnp.where(has0, m0 + jnp.log(safe_z0), NEG_INF)  # [B, H, n]
    value0 = n0 / safe_z0[..., None]  # [B, H, n, V]
    first = runs == runs[:, :1]  # rows the initial state feeds
    logit0 = jnp.where(first[:, :, None, None], logit0[:, None], NEG_INF)  # [B, T, H, n]
    logits = jnp.concatenate([logit0[:, :, None], logits], axis=2)  # [B, T, 1 + S, H, n]
    w = jax.nn.softmax(logits, axis=2)
    agg = w[:, :, 0, ..., None] * value0[:, None] + jnp.einsum(
        'BTSHN,BSHV->BTHNV', w[:, :, 1:], vf
    )  # [B, T, H, n, V] = N_j(t) / Z_j(t)
    o = jnp.einsum('BTHN,BTHNV->BTHV', p, agg)
    # final state: the accumulators row T-1 sees, shifted by their max
    last = logits[:, -1]  # [B, 1 + S, H, n]
    m_f = jnp.max(last, axis=1)
    wf = jnp.exp(last - m_f[:, None])
    z_f = jnp.sum(wf, axis=1)
    n_f = wf[:, 0, ..., None] * value0 + jnp.einsum('BSHN,BSHV->BHNV', wf[:, 1:], vf)
    return o, pack(n_f, z_f, m_f)


def agent_attention_noncausal(q, k, v, agents, b1, b2, *, scale, initial_state=None):
    """Bidirectional agent attention (paper Eq. 3-4): V_A = softmax_s(s A K^T + b1) V over the whole
    sequence, O = softmax(s Q A^T + b2) V_A. An initial state joins the aggregation as extra keys.
    Returns (o fp32, aggregate state fp32 [B, H, n, V + 2], equal to the causal final state).
    """
    e = agent_logits(k, agents, b1, scale)  # [B, T, H, n]
    p = jax.nn.softmax(agent_logits(q, agents, b2, scale), axis=-1)
    m = jnp.max(e, axis=1)  # [B, H, n]
    w = jnp.exp(e - m[:, None])
    n_acc = jnp.einsum('BTHN,BTHV->BHNV', w, v.astype(jnp.float32))
    z = jnp.sum(w, axis=1)
    if initial_state is not None:
        n_acc, z, m = rescale_merge(*unpack(initial_state), n_acc, z, m)
    o = jnp.einsum('BTHN,BHNV->BTHV', p, n_acc / z[..., None])
    return o, pack(n_acc, z, m)
