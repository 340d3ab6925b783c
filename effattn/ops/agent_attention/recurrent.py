"""Step-by-step agent attention (lax.scan over tokens): the decoding path."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.agent_attention._common import (
    agent_logits,
    effective_max,
    empty_state,
    pack,
    segment_runs,
    unpack,
)


def agent_attention_recurrent(
    q, k, v, agents, b1, b2, *, scale, initial_state=None, segment_ids=None, chunk_size=64
):
    """Per token: m' = max(m, e_t); N = N e^(m-m') + e^(e_t-m') v_t; Z likewise; o_t = p_t (N / Z).

    The state resets (to empty) wherever the segment id changes. Z >= 1 after every update (the
    term at the max contributes e^0), so no division guard is needed. Autodiff through the scan.
    """
    del chunk_size
    b, t, h, _ = q.shape
    vd, n = v.shape[-1], agents.shape[1]
    e = agent_logits(k, agents, b1, scale)
    p = jax.nn.softmax(agent_logits(q, agents, b2, scale), axis=-1)
    runs = segment_runs(segment_ids, b, t)
    reset = jnp.concatenate([jnp.zeros((b, 1), bool), runs[:, 1:] != runs[:, :-1]], axis=1)
    state0 = unpack(initial_state) if initial_state is not None else empty_state(b, h, n, vd)

    def step(carry, xs):
        n_acc, z, m = carry
        e_t, p_t, v_t, reset_t = xs  # [B, H, n], [B, H, n], [B, H, V], [B]
        keep = ~reset_t[:, None, None]
        z = jnp.where(keep, z, 0.0)
        n_acc = jnp.where(keep[..., None], n_acc, 0.0)
        m_eff = effective_max(z, m)
        m_new = jnp.maximum(m_eff, e_t)
        alpha, beta = jnp.exp(m_eff - m_new), jnp.exp(e_t - m_new)
        n_acc = n_acc * alpha[..., None] + beta[..., None] * v_t[:, :, None, :]
        z = z * alpha + beta
        o_t = jnp.einsum('BHN,BHNV->BHV', p_t / z, n_acc)
        return (n_acc, z, m_new), o_t

    xs = (
        jnp.moveaxis(e, 1, 0),
        jnp.moveaxis(p, 1, 0),
        jnp.moveaxis(v.astype(jnp.float32), 1, 0),
        jnp.moveaxis(reset, 1, 0),
    )
    final, o = jax.lax.scan(step, state0, xs)
    return jnp.moveaxis(o, 0, 1), pack(*final)
