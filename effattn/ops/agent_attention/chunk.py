"""Chunkwise-parallel agent attention (ALGORITHMS.md section 7, chunk form with a running max).

Everything inside a chunk is computed for all chunks at once; only the small state (N [n, V], Z [n],
m [n] per head) is carried across chunks by a lax.scan, whose chunk summaries are shifted by the
chunk-wide key max mu_c. Outputs of chunk c, with the state (N, Z, m) at its start and a shift
m' >= m: alpha = e^(m - m'), E~ = e^(E - m'), Z_t = alpha Z + cumsum_t E~, P = softmax(s Q A^T + b2),
W = P / Z_t, O_c = alpha W N + (W E~^T ⊙ M) V_c. Any shift is exact (it cancels in N / Z).
ALGORITHMS.md uses m' = max(m, mu_c), which depends on later keys of the chunk (outputs then
change in the last bit when future tokens change) and underflows a row's terms when a later key
of the chunk scores far higher. Here m' = max(m, e of the chunk's first key) (see _outputs); when a
key of the chunk exceeds it by more than SHIFT_SLACK = 60 nats (e^60 is far from fp32 overflow),
all chunks switch (lax.cond) to a shift per row (_outputs_rowwise, O(C^2 n) per chunk), exact for
any spread of scores. Z_t is floored at 1e-30 (a much larger earlier key can underflow a row).
Packed segments: the intra mask also requires equal runs, the carried state feeds only the rows of
the run that continues from the previous chunk, and the state after a chunk holds only the keys of
the chunk's last run (plus the carried state when that run continues it).
Backward: autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.agent_attention._common import (
    NEG_INF,
    Z_FLOOR,
    agent_logits,
    effective_max,
    empty_state,
    pack,
    segment_runs,
    unpack,
)
from effattn.ops.common.chunking import from_chunks, pad_segment_ids, pad_to_multiple, to_chunks

SHIFT_SLACK = 60.0  # nats a key may exceed the one-shift form's shift before rows get their own


def agent_attention_chunk(
    q, k, v, agents, b1, b2, *, scale, initial_state=None, segment_ids=None, chunk_size=64
):
    b, t, h, _ = q.shape
    vd, n = v.shape[-1], agents.shape[1]
    c = min(chunk_size, t)
    e = agent_logits(k, agents, b1, scale)  # [B, T, H, n]
    p = jax.nn.softmax(agent_logits(q, agents, b2, scale), axis=-1)
    runs = segment_runs(segment_ids, b, t)
    valid = jnp.ones((b, t), bool)
    e = to_chunks(pad_to_multiple(e, c, value=NEG_INF), c)  # [B, Nc, C, H, n]; padding -inf
    p = to_chunks(pad_to_multiple(p, c), c)
    vf = to_chunks(pad_to_multiple(v.astype(jnp.float32), c), c)  # [B, Nc, C, H, V]
    runs = to_chunks(pad_segment_ids(runs, c), c)  # [B, Nc, C]
    valid = to_chunks(pad_to_multiple(valid, c, value=False), c)

    prev_run = jnp.concatenate([runs[:, :1, 0], runs[:, :-1, -1]], axis=1)  # run before the chunk
    last_run = runs[:, :, -1]
    carry_ok = runs == prev_run[:, :, None]  # [B, Nc, C] rows fed by the carried state
    cont = last_run == prev_run  # [B, Nc] the state after the chunk includes the carried one
    tri = jnp.tril(jnp.ones((c, c), bool))
    mask = tri & (runs[:, :, :, None] == runs[:, :, None, :])  # [B, Nc, C(t), C(s)]

    # chunk summaries for the carried state, shifted by the chunk-wide max mu
    mu = jnp.max(e, axis=2)  # [B, Nc, H, n]; finite, every chunk has a real key
    in_last = (runs == last_run[:, :, None]) & valid
    et_last = jnp.where(in_last[..., None, None], jnp.exp(e - mu[:, :, None]), 0.0)
    n_chunk = jnp.einsum('BNCHJ,BNCHV->BNHJV', et_last, vf)
    z_chunk = jnp.sum(et_last, axis=2)

    state0 = unpack(initial_state) if initial_state is not None else empty_state(b, h, n, vd)

    def step(carry, xs):
        n_acc, z, m = carry
        n_c, z_c, mu_c, cont_c = xs
        keep = cont_c[:, None, None]
        z_k = jnp.where(keep, z, 0.0)
        n_k = jnp.where(keep[..., None], n_acc, 0.0)
        m_eff = effective_max(z_k, m)
        m_new = jnp.maximum(m_eff, mu_c)
        alpha, beta = jnp.exp(m_eff - m_new), jnp.exp(mu_c - m_new)
        new = (n_k * alpha[..., None] + n_c * beta[..., None], z_k * alpha + z_c * beta, m_new)
        return new, carry  # emit the state at the chunk's start

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (n_chunk, z_chunk, mu, cont))
    final, starts = jax.lax.scan(step, state0, xs)
    n_s, z_s, m_s = (jnp.moveaxis(x, 0, 1) for x in starts)  # [B, Nc, H, n(, V)]

    m_eff = effective_max(z_s, m_s)  # [B, Nc, H, n]
    g = jnp.maximum(m_eff, e[:, :, 0])
    args = (e, p, vf, mask, carry_ok, n_s, z_s, m_eff, g)
    o = jax.lax.cond(jnp.any(mu - g > SHIFT_SLACK), _outputs_rowwise, _outputs, *args)
    o = from_chunks(o)[:, :t]
    return o, pack(*final)


def _outputs(e, p, vf, mask, carry_ok, n_s, z_s, m_eff, g):
    """Chunk outputs with one shift per (chunk, agent): g = max(m, e of the chunk's first key).

    g depends only on tokens that every row of the chunk already sees, so no output changes, not
    even in the last bit, when later tokens change (the LM's no-future-leak test is exact). Needs
    every key of the chunk to be at most SHIFT_SLACK nats above g (else _outputs_rowwise is used).
    """
    alpha = jnp.exp(m_eff - g)  # [B, Nc, H, n]
    et = jnp.exp(e - g[:, :, None])  # <= e^SHIFT_SLACK; 0 on padding
    carried = jnp.where(carry_ok[..., None, None], (alpha * z_s)[:, :, None], 0.0)
    z_t = carried + jnp.einsum('BNTS,BNSHJ->BNTHJ', mask.astype(et.dtype), et)
    w = p / jnp.maximum(z_t, Z_FLOOR)  # [B, Nc, C, H, n]
    w_inter = jnp.where(carry_ok[..., None, None], w * alpha[:, :, None], 0.0)
    o_inter = jnp.einsum('BNTHJ,BNHJV->BNTHV', w_inter, n_s)
    scores = jnp.einsum('BNTHJ,BNSHJ->BNHTS', w, et)
    scores = jnp.where(mask[:, :, None], scores, 0.0)
    return o_inter + jnp.einsum('BNHTS,BNSHV->BNTHV', scores, vf)


def _outputs_rowwise(e, p, vf, mask, carry_ok, n_s, z_s, m_eff, g):
    """Chunk outputs with a shift per row: m_t = max(m, e of the keys the row sees), exact for any
    spread of scores inside a chunk (the dense oracle, chunk by chunk). Used when some key exceeds
    the one-shift form's slack. One chunk at a time (lax.map, recomputed in the backward pass), so
    its O(B C^2 H n) temporaries never exist for all chunks at once."""
    del g

    @jax.checkpoint
    def one_chunk(xs):
        e, p, vf, mask, carry_ok, n_s, z_s, m_eff = xs  # e [B, C, H, n], mask [B, C, C], ...
        logits = jnp.where(mask[..., None, None], e[:, None], NEG_INF)  # [B, T, S, H, n]
        m_carry = jnp.where(carry_ok[..., None, None], m_eff[:, None], NEG_INF)  # [B, T, H, n]
        m_row = jnp.maximum(jnp.max(logits, axis=2), m_carry)  # finite: a row sees its own key
        wts = jnp.exp(logits - m_row[:, :, None])
        alpha = jnp.exp(m_carry - m_row)  # 0 where the carried state does not feed the row
        w = p / (alpha * z_s[:, None] + jnp.sum(wts, axis=2))  # Z_t >= 1
        o_inter = jnp.einsum('BTHJ,BHJV->BTHV', w * alpha, n_s)
        scores = jnp.einsum('BTHJ,BTSHJ->BHTS', w, wts)
        return o_inter + jnp.einsum('BHTS,BSHV->BTHV', scores, vf)

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (e, p, vf, mask, carry_ok, n_s, z_s, m_eff))
    return jnp.moveaxis(jax.lax.map(one_chunk, xs), 0, 1)
