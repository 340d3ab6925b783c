"""Blockwise sigmoid attention in jnp (FlashSigmoid, Ramapuram et al. 2024; ALGORITHMS.md 2).

Tiles are independent (no max, no row sum): the forward sums sigma(s QK^T + b) V tile by tile and
saves only the inputs. Backward (hand-derived, custom_vjp): recomputes P per tile, dV = P^T dO,
dS = (dO V^T) * P * (1 - P), dQ = s dS K, dK = s dS^T Q, db = sum dS; dQ accumulates per query
block, dK, dV per key block (scatter-add). Memory grows as T * block; tiles outside the causal /
window band are skipped (softmax_attention._blockwise.tile_schedule).
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
    bq: int
    bk: int


def sigmoid_attention_chunk(
    q, k, v, *, causal, scale, bias, window, segment_ids, block_q: int = 128, block_k: int = 128
):
    bsz, t = q.shape[:2]
    cfg = _Cfg(causal, float(scale), window, bw.block_size(t, block_q), bw.block_size(t, block_k))
    seg = jnp.ones((bsz, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    return _flash_sigmoid(cfg, q, k, v, jnp.asarray(bias, jnp.float32), seg)


def _prepare(cfg: _Cfg, q, k, v, seg):
    t = q.shape[1]
    sched = bw.tile_schedule(t, cfg.bq, cfg.bk, causal=cfg.causal, window=cfg.window, sinks=None)
    nq, nk = -(-t // cfg.bq), -(-t // cfg.bk)
    groups = q.shape[2] // k.shape[2]
    return (
        tuple(map(jnp.asarray, sched)),
        nq,
        groups,
        bw.block_q(q.astype(jnp.float32), nq, cfg.bq, groups),
        bw.block_kv(k.astype(jnp.float32), nk, cfg.bk),
        bw.block_kv(v.astype(jnp.float32), nk, cfg.bk),
        bw.block_segments(seg, q.shape[0], t, nq, cfg.bq),
        bw.block_segments(seg, q.shape[0], t, nk, cfg.bk),
    )


def _probs(cfg, qt, kt, bias, qi, ki, ok, segq, segk):
    s = jnp.einsum('BLNGQD,BLNCD->BLNGQC', qt, kt) * cfg.scale
    mask = bw.tile_mask(
        qi, ki, ok, segq, segk, cfg.bq, cfg.bk, causal=cfg.causal, window=cfg.window, sinks=None
    )
    return jnp.where(mask, jax.nn.sigmoid(s + bias), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_sigmoid(cfg, q, k, v, bias, seg):
    sched, _, _, qb, kb, vb, segq, segk = _prepare(cfg, q, k, v, seg)

    def step(acc, xs):
        qi, ki, ok = xs
        p = _probs(cfg, qb[:, qi], kb[:, ki], bias, qi, ki, ok, segq, segk)
        pv = jnp.einsum('BLNGQC,BLNCE->BLNGQE', p, vb[:, ki])
        return acc.at[:, qi].add(pv, unique_indices=True), None

    acc = jnp.zeros(qb.shape[:-1] + (v.shape[-1],), jnp.float32)
    acc, _ = jax.lax.scan(step, acc, sched)
    return bw.unblock_q(acc, q.shape[1]).astype(q.dtype)


def _flash_sigmoid_fwd(cfg, q, k, v, bias, seg):
    return _flash_sigmoid(cfg, q, k, v, bias, seg), (q, k, v, bias, seg)


def _flash_sigmoid_bwd(cfg, res, do):
    q, k, v, bias, seg = res
    t = q.shape[1]
    sched, nq, groups, qb, kb, vb, segq, segk = _prepare(cfg, q, k, v, seg)
    dob = bw.block_q(do.astype(jnp.float32), nq, cfg.bq, groups)

    def step(carry, xs):
        dq, dk, dv, db = carry
        qi, ki, ok = xs
        qt, kt, dot = qb[:, qi], kb[:, ki], dob[:, qi]
        p = _probs(cfg, qt, kt, bias, qi, ki, ok, segq, segk)
        dp = jnp.einsum('BLNGQE,BLNCE->BLNGQC', dot, vb[:, ki])
        ds = dp * p * (1.0 - p)
        dq = dq.at[:, qi].add(
            cfg.scale * jnp.einsum('BLNGQC,BLNCD->BLNGQD', ds, kt), unique_indices=True
        )
        dk = dk.at[:, ki].add(cfg.scale * jnp.einsum('BLNGQC,BLNGQD->BLNCD', ds, qt))
        dv = dv.at[:, ki].add(jnp.einsum('BLNGQC,BLNGQE->BLNCE', p, dot))
        return (dq, dk, dv, db + jnp.sum(ds)), None

    init = (jnp.zeros_like(qb), jnp.zeros_like(kb), jnp.zeros_like(vb), jnp.zeros((), jnp.float32))
    (dq, dk, dv, db), _ = jax.lax.scan(step, init, sched)
    return (
        bw.unblock_q(dq, t).astype(q.dtype),
        bw.unblock_kv(dk, t).astype(k.dtype),
        bw.unblock_kv(dv, t).astype(v.dtype),
        db,
        None,
    )


_flash_sigmoid.defvjp(_flash_sigmoid_fwd, _flash_sigmoid_bwd)
