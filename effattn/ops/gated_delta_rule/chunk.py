"""Chunkwise-parallel (gated) delta rule: WY/UT transform per chunk, lax.scan over chunk states.

ALGORITHMS.md section 6 (Yang et al. 2024 App. B; Yang, Kautz, Hatamizadeh 2025). Shared by
`delta_rule` (g=None: no decay, every gate term is skipped) and `gated_delta_rule`.

Per chunk (scalar gate, G = chunk-local cumsum of g, Gamma_ij = exp(G_i - G_j) for i >= j):
  A = strictly-lower(diag(beta) (K K^T * Gamma)),
  [W | U] = (I + A)^-1 [diag(beta) K * e^G | diag(beta) V],  V' = U - W S_c,
  O_c = (Q * e^G) S_c + (Q K^T * Gamma) V',  S_{c+1} = e^{G_C} S_c + (K * e^{G_C - G})^T V'.
G_i - G_j is summed directly over (j, i] inside the chunk rather than taken as a difference of
cumsums: with extreme gates |G| reaches hundreds and the difference keeps only ~1e-5 absolute
accuracy, which showed up as ~5e-6 relative error in dg (now ~3e-7, like the recurrent form).

Chunks are processed in groups of about 256 rows by one lax.scan (forward) / reverse lax.scan
(backward) over groups, so that a group's per-chunk intermediates stay in cache; within a group the
per-chunk algebra is parallel over its chunks and the state recurrence is an inner scan.

Backward (custom_vjp): the forward saves only the inputs and the chunk-start states. The backward
recomputes the per-chunk quantities (A, the triangular solve, W, U, ...) of each group, runs the
hand-derived state-gradient recurrence of ALGORITHMS.md section 6 through it
(dS_c = e^{G_C} dS_{c+1} + (Q e^G)^T dO_c - W^T dV'_c), and then pulls the group's cotangents back
through the per-chunk algebra (masks, exps, triangular solve) with jax.vjp.

Packed segments: masks, never -inf gates. Intra-chunk matrices only couple rows of the same
contiguous segment; the carried state reaches only the rows of the chunk's first segment (none if
a boundary sits exactly at the chunk start); the outgoing state is built from the chunk's last
segment only, and carries S_c through only when the whole chunk is one segment.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from effattn.ops.common.chunking import from_chunks, pad_segment_ids, pad_to_multiple, to_chunks
from effattn.ops.common.triangular import unit_lower_inverse


class _Masks(NamedTuple):
    """Segment masks in chunk layout [N, B, 1(H), ...] (bool)."""
    same: jax.Array     # [N, B, 1, C, C] rows i, j in the same contiguous segment
    first: jax.Array    # [N, B, 1, C]    row sees the carried state S_c
    last: jax.Array     # [N, B, 1, C]    row writes into the outgoing state
    through: jax.Array  # [N, B, 1]       S_c itself survives into S_{c+1}


def _segment_masks(segment_ids: jax.Array, chunk: int) -> _Masks:
    seg = pad_segment_ids(segment_ids, chunk)
    change = (seg[:, 1:] != seg[:, :-1]).astype(jnp.int32)
    change = jnp.concatenate([jnp.zeros_like(change[:, :1]), change], 1)
    # Index of the contiguous run (an id that comes back later is a new segment), [N, B, C].
    run = jnp.moveaxis(to_chunks(jnp.cumsum(change, 1), chunk), 1, 0)
    prev_end = jnp.concatenate([run[:1, :, :1], run[:-1, :, -1:]], 0)  # chunk 0: with itself
    carry = run[..., :1] == prev_end  # no boundary at chunk start
    first = carry & (run == run[..., :1])
    last = run == run[..., -1:]
    through = carry[..., 0] & (run[..., 0] == run[..., -1])
    same = run[..., :, None] == run[..., None, :]
    return _Masks(same[:, :, None], first[:, :, None], last[:, :, None], through[:, :, None])


def _prep(q, k, v, g, beta, masks):
    """Per-chunk quantities, parallel over chunks.

    Layout [N, B, H, C, D]; g (log gates, or None) and beta [N, B, H, C].
    """
    c = q.shape[-2]
    causal = jnp.tril(jnp.ones((c, c), bool))
    strict = tril = jnp.tril(jnp.ones((c, c), bool), -1)
    if masks is not None:
        causal = causal & masks.same
        strict = strict & masks.same
    if g is None:
        gamma = causal.astype(jnp.float32)
    else:
        # G_i - G_j = sum_{j < l <= i} g_l as its own cumsum (not a difference of two chunk-local
        # cumsums, which loses the low bits once |G| is large); every exponent is <= 0.
        gdiff = jnp.cumsum(jnp.where(tril, g[..., :, None], 0.0), axis=-2)
        gamma = jnp.where(causal, jnp.exp(jnp.where(causal, gdiff, 0.0)), 0.0)
    kk = jnp.einsum('NBHIK,NBHJK->NBHIJ', k, k)
    a = jnp.where(strict, beta[..., :, None] * kk * gamma, 0.0)
    aqk = jnp.einsum('NBHIK,NBHJK->NBHIJ', q, k) * gamma
    qg, kbg, kd = q, k * beta[..., None], k
    decay = jnp.ones(q.shape[:-2], jnp.float32)
    if g is not None:
        gcum = jnp.cumsum(g, -1)
        eg = jnp.exp(gcum)[..., None]
        qg, kbg = qg * eg, kbg * eg
        kd = k * jnp.exp(gdiff[..., -1, :])[..., None]  # G_C - G_j
        decay = jnp.exp(gcum[..., -1])
    if masks is not None:
        first = masks.first[..., None].astype(jnp.float32)
        qg, kbg = qg * first, kbg * first
        kd = kd * masks.last[..., None].astype(jnp.float32)
        decay = decay * masks.through.astype(jnp.float32)
    rhs = jnp.concatenate([kbg, v * beta[..., None]], -1)
    # (I + A)^-1 rhs reading only A's strictly-lower part (pure jnp: see common/triangular.py).
    wu = jnp.einsum('...IJ,...JD->...ID', unit_lower_inverse(a), rhs, precision=jax.lax.Precision.HIGHEST)
    w, u = wu[..., :k.shape[-1]], wu[..., k.shape[-1]:]
    return w, u, qg, aqk, kd, decay


def _state_update(w, u, kd, decay, s):
    """S_{c+1} and V' from S_c; works for one chunk [B, H, ...] or all chunks [N, B, H, ...]."""
    vp = u - jnp.einsum('...CK,...KV->...CV', w, s)
    s_next = decay[..., None, None] * s + jnp.einsum('...CK,...CV->...KV', kd, vp)
    return s_next, vp


def _chunk_states(prep, h0):
    """Sequential pass over chunks: the chunk-start states [N, B, H, K, V] and the final state."""
    w, u, _, _, kd, decay = prep

    def step(s, x):
        s_next, _ = _state_update(*x, s)
        return s_next, s

    s_final, s_starts = jax.lax.scan(step, h0, (w, u, kd, decay))
    return s_starts, s_final


def _chunk_outputs(prep, s_starts):
    """Outputs and chunk-end states given every chunk's start state (parallel over chunks)."""
    w, u, qg, aqk, kd, decay = prep
    s_ends, vp = _state_update(w, u, kd, decay, s_starts)
    o = jnp.einsum('NBHCK,NBHKV->NBHCV', qg, s_starts) + jnp.einsum('NBHIJ,NBHJV->NBHIV', aqk, vp)
    return o, s_ends


def _state_grads(prep, do, dht):
    """Reverse scan of dS (ALGORITHMS.md 6): cotangents of all chunk-end states, d initial_state."""
    w, _, qg, aqk, kd, decay = prep

    def step(ds, x):  # ds: cotangent of this chunk's end state
        w, qg, aqk, kd, decay, do = x
        dvp = jnp.einsum('BHIJ,BHIV->BHJV', aqk, do) + jnp.einsum('BHCK,BHKV->BHCV', kd, ds)
        ds_start = (decay[..., None, None] * ds + jnp.einsum('BHCK,BHCV->BHKV', qg, do)
                    - jnp.einsum('BHCK,BHCV->BHKV', w, dvp))
        return ds_start, ds

    dh0, ds_ends = jax.lax.scan(step, dht, (w, qg, aqk, kd, decay, do), reverse=True)
    return ds_ends, dh0


_GROUP_ROWS = 256  # rows per group of chunks (see _forward)


def _split(tree, c):
    """[N, ...] leaves -> [N / gs, gs, ...]: groups of gs chunks (about _GROUP_ROWS rows, gs divides N)."""
    n = jax.tree_util.tree_leaves(tree)[0].shape[0]
    gs = math.gcd(n, max(1, _GROUP_ROWS // c))
    return jax.tree_util.tree_map(lambda x: x.reshape(n // gs, gs, *x.shape[1:]), tree)


def _merge(x):
    return None if x is None else x.reshape(-1, *x.shape[2:])


def _forward(q, k, v, g, beta, h0, masks):
    """One lax.scan over groups of chunks: each group's per-chunk algebra (_prep, outputs) runs right where
    its state pass does, so the group's intermediates stay in cache (time ~linear in T) and are never
    materialised for the whole sequence. The arithmetic per chunk is the same as all chunks at once."""
    def step(s, x):
        prep = _prep(*x)
        s_starts, s_end = _chunk_states(prep, s)
        o, _ = _chunk_outputs(prep, s_starts)
        return s_end, (o, s_starts)

    s_final, (o, s_starts) = jax.lax.scan(step, h0, _split((q, k, v, g, beta, masks), q.shape[-2]))
    return _merge(o), s_final, _merge(s_starts)


@jax.custom_vjp
def _chunk_core(q, k, v, g, beta, h0, masks):
    o, s_final, _ = _forward(q, k, v, g, beta, h0, masks)
    return o, s_final


def _chunk_core_fwd(q, k, v, g, beta, h0, masks):
    o, s_final, s_starts = _forward(q, k, v, g, beta, h0, masks)
    return (o, s_final), (q, k, v, g, beta, masks, s_starts)


def _chunk_core_bwd(res, cts):
    """Reverse lax.scan over groups of chunks: recompute the group's per-chunk quantities, run the dS
    recurrence through the group, and pull its cotangents back through the per-chunk algebra."""
    q, k, v, g, beta, masks, s_starts = res
    do, dht = cts

    def step(ds, x):  # ds: cotangent of the group's end state
        ins, m, s_st, do_g = x
        prep, prep_vjp = jax.vjp(lambda *xs: _prep(*xs, m), *ins)
        ds_ends, ds_start = _state_grads(prep, do_g, ds)
        _, out_vjp = jax.vjp(_chunk_outputs, prep, s_st)
        dprep, _ = out_vjp((do_g, ds_ends))
        return ds_start, prep_vjp(dprep)

    dh0, grads = jax.lax.scan(step, dht, _split(((q, k, v, g, beta), masks, s_starts, do), q.shape[-2]),
                              reverse=True)
    dq, dk, dv, dg, dbeta = (_merge(x) for x in grads)
    return dq, dk, dv, dg, dbeta, dh0, None


_chunk_core.defvjp(_chunk_core_fwd, _chunk_core_bwd)


def _to_chunk_layout(x: jax.Array, chunk: int) -> jax.Array:
    """[B, Tp, H, ...] -> [N, B, H, C, ...]."""
    x = to_chunks(x, chunk)  # [B, N, C, H, ...]
    return jnp.moveaxis(jnp.moveaxis(x, 1, 0), 2, 3)


def chunk_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, segment_ids, chunk_size):
    """Chunkwise (gated) delta rule; g=None means no decay. Returns (o, final_state)."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    f32 = jnp.float32
    pad = lambda x: pad_to_multiple(x.astype(f32), chunk_size)
    q_c = _to_chunk_layout(pad(q) * scale, chunk_size)
    k_c = _to_chunk_layout(pad(k), chunk_size)
    v_c = _to_chunk_layout(pad(v), chunk_size)
    beta_c = _to_chunk_layout(pad(beta), chunk_size)
    g_c = None if g is None else _to_chunk_layout(pad(g), chunk_size)
    h0 = jnp.zeros((b, h, dk, dv), f32) if initial_state is None else initial_state.astype(f32)
    masks = None if segment_ids is None else _segment_masks(segment_ids, chunk_size)
    o, ht = _chunk_core(q_c, k_c, v_c, g_c, beta_c, h0, masks)
    o = from_chunks(jnp.moveaxis(jnp.moveaxis(o, 3, 2), 0, 1))[:, :t]
    return o.astype(q.dtype), ht
