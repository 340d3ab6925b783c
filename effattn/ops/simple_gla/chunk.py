"""Chunkwise-parallel simple_gla, fused into one scan per pass, hand-derived custom VJP (ALGORITHMS.md 0, 4).

Per chunk c (rows i, j in [0, C), G the chunk-local cumsum of g, S_c the state entering the chunk):
  O_c = (Q_c ⊙ e^G) S_c + (Q_c K_c^T ⊙ Γ) V_c,   S_{c+1} = e^{G_C} S_c + (K_c ⊙ e^{G_C - G})^T V_c.
Backward: dS_c = e^{G_C} dS_{c+1} + (Q_c ⊙ e^G)^T dO_c (dS_N = d final_state, dS_0 = d initial_state);
dQ, dK, dV from the two products above; dg gathers, for each g_l, the terms whose decay contains it
(_gate_grad: ALGORITHMS.md's q·dq - k·dk identity, rearranged so the gate-free diagonal never cancels).

Layout of the computation (CPU cache locality): the forward is one lax.scan over groups of chunks
(_GROUP_ROWS rows) carrying the [B,H,K,V] fp32 state; each step loads its group's rows, computes the
decays, the chunk states of the group (a short unrolled recurrence), the intra- and inter-chunk outputs,
and writes them, so every intermediate of a group stays in cache and the time is linear in T (computing
each stage for all chunks at once streams [B,N,...] intermediates and the [B,N,H,K,V] states through
memory instead). The backward is the same scan in reverse carrying dS, and recomputes the group's chunk
states from the saved group-entry state. Residuals: the inputs and the state entering each group
[steps,B,H,K,V]; decays and scores are recomputed. Cumulative sums over the chunk are products with
constant triangular 0/1 matrices (one GEMM instead of a log-depth scan of small ops).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from effattn.ops.simple_gla._segments import segment_resets

_GROUP_ROWS = 256  # rows per step of the loops over groups of chunks


def chunk_simple_gla(q, k, v, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64):
    """Returns (o fp32 [B,T,H,V], final_state fp32 [B,H,K,V]). g None means no decay (linear attention)."""
    seg = None if segment_ids is None else _chunk_segments(segment_ids, int(chunk_size))
    return _chunk(q, k, v, g, initial_state, seg, float(scale), int(chunk_size))


def _chunk_segments(segment_ids, chunk):
    """[B,T'] int32 (T' = T padded to a multiple of the chunk; padding continues the last segment):
    segments started so far inside each chunk (0 in a chunk's first segment)."""
    b, t = segment_ids.shape
    resets = jnp.pad(segment_resets(segment_ids, b, t), ((0, 0), (0, (-t) % chunk)))
    return jnp.cumsum(resets.reshape(b, -1, chunk), axis=2).reshape(b, -1)


class _Plan(NamedTuple):
    chunk: int  # C
    group: int  # chunks per loop step
    steps: int  # loop steps
    rows: int  # rows per step (group * chunk)
    padded: int  # steps * rows >= T


def _plan(t, chunk):
    n = -(-t // chunk)
    group = max(1, min(n, _GROUP_ROWS // chunk))
    steps = -(-n // group)
    return _Plan(chunk, group, steps, group * chunk, steps * group * chunk)


def _pad(x, plan):
    """Pads axis 1 (T) to plan.padded with zeros: k = v = 0, g = 0 (no decay), no segment change."""
    if x is None or x.shape[1] == plan.padded:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, plan.padded - x.shape[1])
    return jnp.pad(x, widths)


def _load(x, i, plan, transposed=False):
    """Rows of step i of x [B,T,H(,D)] as fp32 [B,H,n,C(,D)] (n = chunks per step), or [B,H,n,D,C]."""
    b, _, h = x.shape[:3]
    x = jax.lax.dynamic_slice_in_dim(x, i * plan.rows, plan.rows, axis=1).astype(jnp.float32)
    x = x.reshape(b, plan.group, plan.chunk, h, *x.shape[3:])
    return jnp.transpose(x, (0, 3, 1, 4, 2)) if transposed else jnp.moveaxis(x, 3, 1)


def _rows(x, plan, transposed=False):
    """x [B,H,n,C(,D)] (one step), or [B,H,n,D,C], -> [B,rows,H(,D)]."""
    b, h = x.shape[:2]
    x = jnp.transpose(x, (0, 2, 4, 1, 3)) if transposed else jnp.moveaxis(x, 1, 3)
    return x.reshape(b, plan.rows, h, *x.shape[4:])


def _unstep(ys, shape):
    """Per-step outputs [steps,B,...] (rows per step flattened in any way) -> shape [B,T,...] (a
    bitcast when B == 1 and T fills the steps)."""
    ys = jnp.moveaxis(ys, 0, 1)
    return ys.reshape(shape[0], -1, *shape[2:])[:, : shape[1]]


def _flat(x, j):
    """The j-th output of a loop step, x [B,rows,H(,D)], reshaped to a shape of its own (dq [B,rows,H,D],
    dk [B,rows,H*D], dv [B,rows*H,D], dg [B,rows*H]) so that XLA zero-fills a buffer for each:
    identical zero buffers are merged into one, then copied apart."""
    b, r, h = x.shape[:3]
    return x.reshape([x.shape, (b, r, -1), (b, r * h, -1), (b, -1)][j])


@functools.cache
def _tri(c, kind):
    """Constant [C,C] 0/1 matrices M[l, i] for cumulative sums over the chunk as x @ M."""
    l, i = np.arange(c)[:, None], np.arange(c)[None, :]
    m = {'le': l <= i, 'lt': l < i, 'ge': l >= i, 'gt': l > i}[kind]
    return m.astype(np.float32)


def _csum(x, kind):
    """Sum over the last axis (C) of x by a [C,C] 0/1 matrix: 'le' inclusive cumsum, 'lt' exclusive,
    'ge' inclusive reverse cumsum, 'gt' exclusive reverse cumsum."""
    return jnp.matmul(x, _tri(x.shape[-1], kind), precision=jax.lax.Precision.HIGHEST)


class _Decays(NamedTuple):
    q: (
        jax.Array | None
    )  # [B,H,n,C]  e^{G_i} on rows of the chunk's first segment (they see S_c), else 0
    k: (
        jax.Array | None
    )  # [B,H,n,C]  e^{G_C - G_j} on rows of the chunk's last segment (feed S_{c+1})
    state: jax.Array | None  # [B,H,n] e^{G_C}, 0 if a segment starts inside the chunk
    intra: jax.Array  # [B,H,n,C,C] Γ_ij = e^{G_i - G_j} for i >= j in the same segment, else 0
    # None stands for all ones (no decay, no segments).


def _decays(g, seg, c):
    """g [B,H,n,C] fp32 log gates or None; seg [B,1,n,C] (see _chunk_segments) or None; c = C."""
    mask = np.tril(np.ones((c, c), bool))
    if seg is not None:
        mask = mask & (seg[..., :, None] == seg[..., None, :])
    if g is None:
        dq = dk = state = None
        intra = mask.astype(np.float32) if seg is None else mask.astype(jnp.float32)
    else:
        # segsum[i, j] = sum_{j<l<=i} g_l as one sum of those terms (exact near the diagonal, where
        # G_i - G_j would lose |G| * 2^-24 to cancellation; |G| reaches hundreds for fast gates).
        segsum = _csum(g[..., None, :] * _tri(c, 'ge'), 'gt')
        intra = jnp.where(mask, jnp.exp(segsum), 0.0)
        dq = jnp.exp(_csum(g, 'le'))
        dk = jnp.exp(_csum(g, 'gt'))
        state = dq[..., -1]
    if seg is not None:
        first = seg == 0
        last = seg == seg[..., -1:]
        keep = seg[..., -1] == 0
        dq = first if dq is None else jnp.where(first, dq, 0.0)
        dk = last if dk is None else jnp.where(last, dk, 0.0)
        state = keep if state is None else jnp.where(keep, state, 0.0)
    cast = lambda x: None if x is None else x.astype(jnp.float32)
    return _Decays(cast(dq), cast(dk), cast(state), intra)


def _scale(x, d):
    """x [...,C,D] times the row decay d [...,C] (None: ones)."""
    return x if d is None else x * d[..., None]


def _scale_cols(x, d):
    """x [...,D,C] times the row decay d [...,C] (None: ones)."""
    return x if d is None else x * d[..., None, :]


def _entry_states(s, u, decay):
    """States entering each chunk of a group [B,H,n,K,V] and the state leaving it, from the entry state s
    [B,H,K,V] and S_{c+1} = decay_c S_c + u_c (u [B,H,n,K,V], decay [B,H,n] or None: ones)."""
    entry = []
    for c in range(u.shape[2]):
        entry.append(s)
        s = u[:, :, c] + (s if decay is None else decay[:, :, c, None, None] * s)
    return jnp.stack(entry, axis=2), s


def _exit_grads(ds, w, decay):
    """dS_{c+1} for each chunk of a group [B,H,n,K,V] and dS at the group's entry, from dS at its exit
    and dS_c = decay_c dS_{c+1} + w_c."""
    exits = [None] * w.shape[2]
    for c in reversed(range(w.shape[2])):
        exits[c] = ds
        ds = w[:, :, c] + (ds if decay is None else decay[:, :, c, None, None] * ds)
    return jnp.stack(exits, axis=2), ds


def _load_step(i, plan, q, k, v, g, seg, scale, q_transposed=False, k_transposed=False):
    qg = _load(q, i, plan, q_transposed) * scale
    kg, vg = _load(k, i, plan, k_transposed), _load(v, i, plan)
    gg = None if g is None else _load(g, i, plan)
    sg = None if seg is None else _load(seg[:, :, None], i, plan)
    return qg, kg, vg, _decays(gg, sg, plan.chunk)


def _forward(q, k, v, g, h0, seg, scale, chunk, save_states):
    b, t, h, kd = q.shape
    vd = v.shape[-1]
    plan = _plan(t, chunk)
    q, k, v, g, seg = (_pad(x, plan) for x in (q, k, v, g, seg))
    s0 = jnp.zeros((b, h, kd, vd), jnp.float32) if h0 is None else h0.astype(jnp.float32)

    def step(s, i):
        qg, kt, vg, d = _load_step(i, plan, q, k, v, g, seg, scale, k_transposed=True)
        u = jnp.einsum('BHNKJ,BHNJV->BHNKV', _scale_cols(kt, d.k), vg)
        entry, s_next = _entry_states(s, u, d.state)
        scores = jnp.einsum('BHNIK,BHNKJ->BHNIJ', qg, kt) * d.intra
        og = jnp.einsum('BHNIK,BHNKV->BHNIV', _scale(qg, d.q), entry) + jnp.einsum(
            'BHNIJ,BHNJV->BHNIV', scores, vg
        )
        return s_next, (_rows(og, plan), s if save_states else None)

    ht, (o, states) = jax.lax.scan(step, s0, jnp.arange(plan.steps))
    return _unstep(o, (b, t, h, vd)), ht, states


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunk(q, k, v, g, h0, seg, scale, chunk):
    o, ht, _ = _forward(q, k, v, g, h0, seg, scale, chunk, save_states=False)
    return o, ht


def _chunk_fwd(q, k, v, g, h0, seg, scale, chunk):
    o, ht, states = _forward(q, k, v, g, h0, seg, scale, chunk, save_states=True)
    return (o, ht), (q, k, v, g, h0, seg, states)


def _gate_grad(qdq, kdk, p, entry, ds_next, state_decay):
    """dg [B,H,n,C]: each g_l collects only the terms whose decay contains it.

    Equal to ALGORITHMS.md's chunk-local revcumsum(q·dq - k·dk) (+ last-row carry), but that form adds
    and then cancels the diagonal q_i·k_i terms, which carry no gate: measured ~1e-5 relative error in
    fp32 with fast gates. Here: e^{G_i} holds g_l for l <= i, e^{G_C - G_j} for l > j, e^{G_C} all l, and
    Γ_ij for j < l <= i, so dg_l = sum_{i>=l} q_i·dq_inter_i + sum_{j<l} k_j·dk_inter_j
    + e^{G_C}<S_c, dS_{c+1}> + sum_{i>=l, j<l} P_ij, with P = dL/dscores ⊙ scores [B,H,n,C,C].
    qdq = q·dq_inter and kdk = k·dk_inter [B,H,n,C].
    """
    q_part = _csum(qdq, 'ge')
    k_part = _csum(kdk, 'lt')
    carry = jnp.sum(entry * ds_next, axis=(-2, -1))  # [B,H,n]
    if state_decay is not None:
        carry = carry * state_decay
    # sum_{i>=l, j<l} P_ij = sum_{m<l} (sum_{i>m} P_im - sum_{j<m} P_mj), over P below its diagonal
    # (the gate-free diagonal never enters): O(C^2) instead of a cumsum along each row of P, ~15%
    # of the whole fwd+bwd on CPU. The difference cancels the block i, j < l: dg's relative error
    # measured 5e-7 in fp32 for gates logsigmoid(x) / n, n in [0.02, 1000] (1e-7 with the cumsum).
    p = p * _tri(p.shape[-1], 'gt')
    intra = _csum(jnp.sum(p, axis=-2) - jnp.sum(p, axis=-1), 'lt')
    return q_part + k_part + intra + carry[..., None]


def _chunk_bwd(scale, chunk, res, cts):
    q, k, v, g, h0, seg, states = res  # states [steps,B,H,K,V]: entering each group
    do, dht = cts
    t = q.shape[1]
    plan = _plan(t, chunk)
    qp, kp, vp, gp, segp, dop = (_pad(x, plan) for x in (q, k, v, g, seg, do))

    def step(ds, xs):
        i, s = xs
        # Every product contracts the lhs's last axis (q is loaded as q^T [K,C], dk built as dk^T):
        # the form XLA:CPU runs fastest; a lhs contracted over its rows goes to a slower kernel.
        qt, kg, vg, d = _load_step(i, plan, qp, kp, vp, gp, segp, scale, q_transposed=True)
        kt, dog = _load(kp, i, plan, transposed=True), _load(dop, i, plan)
        u = jnp.einsum('BHNKJ,BHNJV->BHNKV', _scale_cols(kt, d.k), vg)
        entry, _ = _entry_states(s, u, d.state)  # S_c [B,H,n,K,V]
        w = jnp.einsum('BHNKI,BHNIV->BHNKV', _scale_cols(qt, d.q), dog)
        ds_next, ds = _exit_grads(ds, w, d.state)  # dS_{c+1} [B,H,n,K,V]
        intra_t = jnp.swapaxes(d.intra, -1, -2)
        scores_t = jnp.einsum('BHNJK,BHNKI->BHNJI', kg, qt) * intra_t
        dscores = jnp.einsum('BHNIV,BHNJV->BHNIJ', dog, vg)
        dqk = dscores * d.intra  # dL/d(Q K^T)
        dq_inter = _scale(jnp.einsum('BHNIV,BHNKV->BHNIK', dog, entry), d.q)
        dq = dq_inter + jnp.einsum('BHNIJ,BHNJK->BHNIK', dqk, kg)
        dk_inter_t = _scale_cols(jnp.einsum('BHNKV,BHNJV->BHNKJ', ds_next, vg), d.k)
        dk_t = dk_inter_t + jnp.einsum('BHNKI,BHNIJ->BHNKJ', qt, dqk)
        dv = jnp.einsum('BHNJK,BHNKV->BHNJV', _scale(kg, d.k), ds_next) + jnp.einsum(
            'BHNJI,BHNIV->BHNJV', scores_t, dog
        )
        out = [(dq * scale, q, False), (dk_t, k, True), (dv, v, False)]
        if g is not None:
            p = dscores * jnp.swapaxes(scores_t, -1, -2)
            qdq = jnp.sum(qt * jnp.swapaxes(dq_inter, -1, -2), -2)
            kdk = jnp.sum(jnp.swapaxes(kg, -1, -2) * dk_inter_t, -2)
            dg = _gate_grad(qdq, kdk, p, entry, ds_next, d.state)
            out.append((dg, g, False))
        return ds, [
            _flat(_rows(x, plan, tr).astype(like.dtype), j) for j, (x, like, tr) in enumerate(out)
        ]

    xs = (jnp.arange(plan.steps), states)
    dh0, grads = jax.lax.scan(step, dht.astype(jnp.float32), xs, reverse=True)
    dq, dk, dv, *dg = (_unstep(x, like.shape) for x, like in zip(grads, (q, k, v, g)))
    dg = dg[0] if g is not None else None
    dh0 = None if h0 is None else dh0.astype(h0.dtype)
    return dq, dk, dv, dg, dh0, None


_chunk.defvjp(_chunk_fwd, _chunk_bwd)
