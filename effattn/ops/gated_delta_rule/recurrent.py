"""Recurrent (gated) delta rule: lax.scan over time, the decoding path (fast for T == 1).

S <- alpha_t S;  u = v_t - k_t S;  S <- S + beta_t k_t^T u;  o_t = (s q_t) S  (ALGORITHMS.md 6).
g=None means no decay. Gradients by autodiff through the scan.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.common.recurrence import fp32_inputs


def recurrent_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, segment_ids,
                               chunk_size=None):
    """Returns (o, final_state); chunk_size is ignored."""
    del chunk_size
    b = q.shape[0]
    f32 = jnp.float32
    out_dtype = q.dtype
    q, k, v, s0 = fp32_inputs(q, k, v, scale=scale, initial_state=initial_state)
    xs = {'q': q, 'k': k, 'v': v, 'beta': beta.astype(f32)}
    if g is not None:
        xs['g'] = g.astype(f32)
    if segment_ids is not None:
        xs['reset'] = jnp.concatenate(
            [jnp.zeros((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)

    def step(s, x):
        if 'reset' in x:
            s = jnp.where(x['reset'][:, None, None, None], 0.0, s)
        if 'g' in x:
            s = s * jnp.exp(x['g'])[..., None, None]
        u = x['v'] - jnp.einsum('BHK,BHKV->BHV', x['k'], s)
        s = s + jnp.einsum('BHK,BHV->BHKV', x['k'] * x['beta'][..., None], u)
        return s, jnp.einsum('BHK,BHKV->BHV', x['q'], s)

    s_final, o = jax.lax.scan(step, s0, jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), xs))
    return jnp.moveaxis(o, 0, 1).astype(out_dtype), s_final
