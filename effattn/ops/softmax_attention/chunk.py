"""Blockwise online-softmax attention in jnp (FlashAttention-2, Dao 2023, Alg. 1 / Alg. 2).

Forward: per query block, a running max m, row sum l and accumulator over its key blocks; only
O (fp32) and the logsumexp L are saved. Backward (hand-derived, custom_vjp): recomputes each tile's
P = exp(s QK^T - L) and accumulates dQ per query block and dK, dV per key block (scatter-add), so
neither pass holds a T x T array: memory grows as T * block. Tiles outside the causal / window /
sink band are never computed (see _blockwise.tile_schedule). Rows with no visible key give 0.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from effattn.ops.softmax_attention import _blockwise as bw


class _Cfg(NamedTuple):
    causal: bool
    scale: float
    window: int | None
    sinks: int | None
    bq: int
    bk: int


def softmax_attention_chunk(
    q, k, v, *, causal, scale, window, sinks, segment_ids, block_q: int = 128, block_k: int = 128
):
    bsz, t = q.shape[:2]
    cfg = _Cfg(
        causal, float(scale), window, sinks, bw.block_size(t, block_q), bw.block_size(t, block_k)
    )
    seg = jnp.ones((bsz, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    return _flash(cfg, q, k, v, seg)


def _setup(cfg: _Cfg, q, k, seg):
    t = q.shape[1]
    sched = bw.tile_schedule(
        t, cfg.bq, cfg.bk, causal=cfg.causal, window=cfg.window, sinks=cfg.sinks
    )
    nq, nk = -(-t // cfg.bq), -(-t // cfg.bk)
    groups = q.shape[2] // k.shape[2]
    segq = bw.block_segments(seg, q.shape[0], t, nq, cfg.bq)
    segk = bw.block_segments(seg, q.shape[0], t, nk, cfg.bk)
    return sched, nq, nk, groups, segq, segk


def _scores(cfg, qt, kt, qi, ki, ok, segq, segk):
    s = jnp.einsum('BLNGQD,BLNCD->BLNGQC', qt, kt) * cfg.scale
    mask = bw.tile_mask(
        qi,
        ki,
        ok,
        segq,
        segk,
        cfg.bq,
        cfg.bk,
        causal=cfg.causal,
        window=cfg.window,
        sinks=cfg.sinks,
    )
    return jnp.where(mask, s, -jnp.inf)


def _forward(cfg: _Cfg, q, k, v, seg):
    """O [B, T, H, V] fp32 and L [B, nq, Hkv, G, Q] fp32 (0 for rows with no visible key)."""
    t = q.shape[1]
    sched, nq, nk, groups, segq, segk = _setup(cfg, q, k, seg)
    qb = bw.block_q(q.astype(jnp.float32), nq, cfg.bq, groups)
    kb = bw.block_kv(k.astype(jnp.float32), nk, cfg.bk)
    vb = bw.block_kv(v.astype(jnp.float32), nk, cfg.bk)
    m = jnp.full(qb.shape[:-1], -jnp.inf, jnp.float32)
    l = jnp.zeros(qb.shape[:-1], jnp.float32)
    acc = jnp.zeros(qb.shape[:-1] + (v.shape[-1],), jnp.float32)

    def step(carry, xs):
        m, l, acc = carry
        qi, ki, ok = xs
        s = _scores(cfg, qb[:, qi], kb[:, ki], qi, ki, ok, segq, segk)
        m_old, l_old, acc_old = m[:, qi], l[:, qi], acc[:, qi]
        m_new = jnp.maximum(m_old, jnp.max(s, axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # fully masked rows: avoid -inf - (-inf)
        p = jnp.exp(s - m_safe[..., None])
        alpha = jnp.exp(m_old - m_safe)
        l_new = alpha * l_old + jnp.sum(p, axis=-1)
        acc_new = alpha[..., None] * acc_old + jnp.einsum('BLNGQC,BLNCE->BLNGQE', p, vb[:, ki])
        m = m.at[:, qi].set(m_new, unique_indices=True)
        l = l.at[:, qi].set(l_new, unique_indices=True)
        acc = acc.at[:, qi].set(acc_new, unique_indices=True)
        return (m, l, acc), None

    (m, l, acc), _ = jax.lax.scan(step, (m, l, acc), tuple(map(jnp.asarray, sched)))
    empty = l == 0
    o = acc / jnp.where(empty, 1.0, l)[..., None]
    lse = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))
    return bw.unblock_q(o, t), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, q, k, v, seg):
    return _forward(cfg, q, k, v, seg)[0].astype(q.dtype)


def _flash_fwd(cfg, q, k, v, seg):
    o, lse = _forward(cfg, q, k, v, seg)
    return o.astype(q.dtype), (q, k, v, seg, o, lse)


def _flash_bwd(cfg, res, do):
    q, k, v, seg, o, lse = res
    t = q.shape[1]
    sched, nq, nk, groups, segq, segk = _setup(cfg, q, k, seg)
    do = do.astype(jnp.float32)
    delta = bw.block_q(jnp.sum(do * o, axis=-1, keepdims=True), nq, cfg.bq, groups)[..., 0]
    qb = bw.block_q(q.astype(jnp.float32), nq, cfg.bq, groups)
    dob = bw.block_q(do, nq, cfg.bq, groups)
    kb = bw.block_kv(k.astype(jnp.float32), nk, cfg.bk)
    vb = bw.block_kv(v.astype(jnp.float32), nk, cfg.bk)

    def step(carry, xs):
        dq, dk, dv = carry
        qi, ki, ok = xs
        qt, kt, dot = qb[:, qi], kb[:, ki], dob[:, qi]
        s = _scores(cfg, qt, kt, qi, ki, ok, segq, segk)
        p = jnp.exp(s - lse[:, qi][..., None])  # masked entries: exp(-inf) = 0
        dp = jnp.einsum('BLNGQE,BLNCE->BLNGQC', dot, vb[:, ki])
        ds = p * (dp - delta[:, qi][..., None])
        dq = dq.at[:, qi].add(
            cfg.scale * jnp.einsum('BLNGQC,BLNCD->BLNGQD', ds, kt), unique_indices=True
        )
        dk = dk.at[:, ki].add(cfg.scale * jnp.einsum('BLNGQC,BLNGQD->BLNCD', ds, qt))
        dv = dv.at[:, ki].add(jnp.einsum('BLNGQC,BLNGQE->BLNCE', p, dot))
        return (dq, dk, dv), None

    init = (jnp.zeros_like(qb), jnp.zeros_like(kb), jnp.zeros_like(vb))
    (dq, dk, dv), _ = jax.lax.scan(step, init, tuple(map(jnp.asarray, sched)))
    return (
        bw.unblock_q(dq, t).astype(q.dtype),
        bw.unblock_kv(dk, t).astype(k.dtype),
        bw.unblock_kv(dv, t).astype(v.dtype),
        None,
    )


_flash.defvjp(_flash_fwd, _flash_bwd)
