"""fp32 oracle: the gated delta rule step by step, in its literal transition-matrix form.

S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,  o_t = (s q_t) S_t
(ALGORITHMS.md 6).
g=None means alpha_t = 1 (DeltaNet). The state restarts from zero wherever segment_ids changes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.common.recurrence import fp32_inputs

_HI = jax.lax.Precision.HIGHEST


def naive_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, segment_ids, chunk_size=None):
    """Returns (o, final_state); chunk_size is ignored."""
    del chunk_size
    b, t, h, dk = q.shape
    f32 = jnp.float32
    out_dtype = q.dtype
    q, k, v, s0 = fp32_inputs(q, k, v, scale=scale, initial_state=initial_state)
    beta = beta.astype(f32)
    alpha = jnp.ones((b, t, h), f32) if g is None else jnp.exp(g.astype(f32))
    if segment_ids is None:
        reset = jnp.zeros((b, t), bool)
    else:
        change = segment_ids[:, 1:] != segment_ids[:, :-1]
        reset = jnp.concatenate([jnp.zeros((b, 1), bool), change], 1)
    eye = jnp.eye(dk, dtype=f32)

    def step(s, x):
        q_t, k_t, v_t, a_t, b_t, r_t = x
        s = jnp.where(r_t[:, None, None, None], 0.0, s)
        kk = jnp.einsum('BHI,BHJ->BHIJ', k_t, k_t, precision=_HI)
        transition = eye - b_t[..., None, None] * kk
        s = (a_t[..., None, None] * jnp.einsum('BHIJ,BHJV->BHIV', transition, s, precision=_HI)
             + b_t[..., None, None] * jnp.einsum('BHK,BHV->BHKV', k_t, v_t, precision=_HI))
        return s, jnp.einsum('BHK,BHKV->BHV', q_t, s, precision=_HI)

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, alpha, beta, reset))
    s_final, o = jax.lax.scan(step, s0, xs)
    return jnp.moveaxis(o, 0, 1).astype(out_dtype), s_final
