"""Pallas kernel for dq, the output map's dk, dW and their gate terms, one program per (b, h, chunk, key tile).

ALGORITHMS.md section 6 (Yang et al. 2024 App. B; the role of fla's chunk_bwd_kernel_dqkwg). Given the stored
V' = U - W S (forward) and dV' (reverse sweep), the chunk-start state S and the chunk-end cotangent dS', per
key tile t of width BK (P = s (Q K^T ⊙ Γ), dP = dO V'^T, dps = dP ⊙ s Γ):
  dQ_t   = s e^G ⊙ (dO S_t^T) + dps K_t                            (final)
  dK_o,t = dps^T Q_t + e^{G_C - G} ⊙ (V' dS'_t^T)                   (the WY part is added by _wy_bwd_kernel)
  dW_t   = -dV' S_t^T
and the gate cotangents that flow through them: pairs dP ⊙ P_t (of G_i - G_j), nodes Σ_k dQ ⊙ Q (of G_i),
the tail Σ_k dK_state ⊙ K (of G_C - G_j) and Σ S_t ⊙ dS'_t (of G_C). Each is linear in the key tile's share of
Q K^T or S, so every tile writes its own partial dg and the caller sums them.

Why this layout: the former fused per-chunk kernel (_bwd_kernel.py) recomputed V' and dV' and held every
accumulator of a chunk in one 8-warp program (~255 registers, one program per SM): on the H200 it took 3.27 ms
at B=4, T=4096, H=16, D=128, latency-bound. Here V' and dV' are read rather than recomputed, the WY backward
is another kernel, and the key dimension may be tiled (three [C, BK] accumulators and one [C, C]). Measured
there (KernelConfig defaults): one tile of all 128 keys at 8 warps, 32 value columns per step, 1.05 ms; tiles of
64 keys at 4 warps 1.23 ms, of 32 keys 1.63 ms.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import chunk_slice as _chunk_slice
from effattn.ops.gated_delta_rule._kernel_common import (_Ctx, _nn, _nn32, _nt, _nt32, _params, _straddle_sum, _tn,
                                                         chunk_gates)


def _dqk_kernel(q_ref, k_ref, vn_ref, dvn_ref, do_ref, g_ref, s_ref, ds_ref, dq_ref, dk_ref, dw_ref, dg_ref, *,
                ctx: _Ctx, bv: int, wide_q: bool, wide_k: bool):
    c, bk = q_ref.shape
    scale = ctx.scale
    gt = chunk_gates(g_ref, slice(None), ctx)
    nt_q = _nt32 if wide_q else _nt
    nt_k = _nt32 if wide_k else _nt

    def tile(j, carry):
        dp, dq, dks, dw, dgc = carry
        vs = _chunk_slice(j, bv)
        s, dsn = s_ref[:, vs], ds_ref[:, vs]
        do, vn, dvn = do_ref[:, vs], vn_ref[:, vs], dvn_ref[:, vs]
        dp += _nt(do, vn, ctx)
        dq += nt_q(do, s, ctx)
        dks += nt_k(vn, dsn, ctx)
        dw += nt_k(dvn, s, ctx)
        if ctx.gated:
            dgc += jnp.sum(s.astype(_F32) * dsn.astype(_F32))
        return dp, dq, dks, dw, dgc

    ck = jnp.zeros((c, bk), _F32)
    zero = (jnp.zeros((c, c), _F32), ck, ck, ck, jnp.float32(0.0))
    dp, dq, dks, dw, dgc = jax.lax.fori_loop(0, vn_ref.shape[-1] // bv, tile, zero)
    dw_ref[...] = -dw

    q, k, gam = q_ref[...], k_ref[...], gt.gamma()
    dps = dp * (gam * scale)
    dq = dq * (scale * jnp.exp2(gt.gi))[:, None]
    dq_ref[...] = (dq + (_nn32 if wide_q else _nn)(dps, k, ctx)).astype(dq_ref.dtype)
    dks = dks * jnp.exp2(gt.rj)[:, None]
    dk_ref[...] = dks + _tn(dps, q, ctx)
    if not ctx.gated:
        dg_ref[...] = jnp.zeros(dg_ref.shape, _F32)
        return
    node = jnp.sum(dq * q.astype(_F32), axis=1)
    tail = jnp.sum(dks * k.astype(_F32), axis=1)                # of G_C - G_j
    pair = dps * _nt(q, k, ctx)
    dg = _straddle_sum(pair, node, gt.row, gt.col, ctx)
    dg += jnp.sum(jnp.where(gt.row < gt.col, tail[:, None], 0.0), axis=0)
    dg_ref[...] = dg + jnp.exp2(gt.gl) * dgc


def dqk_kernel(q, k, v_new, dv_new, do, g, s_starts, ds_ends, ctx: _Ctx, block_k: int, block_v: int,
               num_warps: int, num_stages: int, interpret: bool, wide_q: bool, wide_k: bool):
    """q, k [B,Tp,H,Kp], do [B,Tp,H,Vp] (ctx.dt), v_new, dv_new [B,Tp,H,Vp] fp32, g [B,H,Tp] fp32, s_starts,
    ds_ends [B,H,N*Kp,Vp] fp32 -> dq [B,Tp,H,Kp] (ctx.dt), dk_o, dw [B,Tp,H,Kp] fp32, dg [B,H,Tp] fp32 (summed
    over key tiles). wide_q / wide_k: the dq / (dk, dW) dots take fp32 operands (TF32 on the GPU)."""
    b, tp, h, kp = q.shape
    vp = do.shape[-1]
    c = ctx.chunk
    bk, bv = min(block_k, kp), min(block_v, vp)
    nk = kp // bk
    keys = pl.BlockSpec((None, c, None, bk), lambda b, h, i: (b, i // nk, h, i % nk))
    vals = pl.BlockSpec((None, c, None, vp), lambda b, h, i: (b, i // nk, h, 0))
    state = pl.BlockSpec((None, None, bk, vp), lambda b, h, i: (b, h, i, 0))  # chunk i // nk, key tile i % nk
    keys_out = lambda dt: jax.ShapeDtypeStruct((b, tp, h, kp), dt)
    dq, dk, dw, dg = pl.pallas_call(
        functools.partial(_dqk_kernel, ctx=ctx, bv=bv, wide_q=wide_q, wide_k=wide_k),
        grid=(b, h, (tp // c) * nk),
        in_specs=[keys, keys, vals, vals, vals, pl.BlockSpec((None, None, c), lambda b, h, i: (b, h, i // nk)),
                  state, state],
        out_specs=[keys, keys, keys, pl.BlockSpec((None, None, None, c), lambda b, h, i: (i % nk, b, h, i // nk))],
        out_shape=[keys_out(ctx.dt), keys_out(_F32), keys_out(_F32), jax.ShapeDtypeStruct((nk, b, h, tp), _F32)],
        interpret=interpret, name='gated_delta_rule_bwd_dqk',
        **_params(interpret, ctx, num_warps, num_stages))(q, k, v_new, dv_new, do, g, s_starts, ds_ends)
    return dq, dk, dw, jnp.sum(dg, axis=0)
