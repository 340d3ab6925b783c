"""Pallas kernel for the per-chunk part of the gated delta rule's backward, one program per (b, h, chunk).

ALGORITHMS.md section 6 (Yang et al. 2024 App. B; as fla's chunk_bwd_dqkwg + prepare_wy_repr_bwd fused).
Given the chunk-start state S, the chunk-end state cotangent dS' (from the reverse sweep) and dO, with
V' = U - W S, P = s (Q K^T ⊙ Γ), dP = dO V'^T:
  dV' = P^T dO + (K ⊙ e^{G_C - G}) dS',   dW = -dV' S^T,   dU = dV',
  dQ  = s e^G ⊙ (dO S^T) + (dP ⊙ s Γ) K,   dK_o = (dP ⊙ s Γ)^T Q + e^{G_C - G} ⊙ (V' dS'^T),
then the WY backward through the saved T = (I + A)^{-1}, kb = diag(β e^G) K, vb = diag(β) V:
  dvb = T^T dU, dkb = T^T dW = -dvb S^T,  dA = -strictly-lower(dkb W^T + dvb U^T) = -strictly-lower(dvb V'^T),
  dK = dK_o + dkb ⊙ β e^G + dab K + dab^T K  (dab = diag(β)(dA ⊙ Γ)),  dV = β dvb,
  dβ = Σ_k dkb ⊙ K e^G + Σ_k dvb ⊙ V + Σ_j (dA ⊙ Γ ⊙ K K^T)_ij.
Gate gradient: every log-decay cotangent is either a node term (of G_i) or a pair term (of G_i - G_j,
i >= j); dg_l = Σ_{i>=l} node_i + Σ_{i>=l>j} pair_ij (pairs straddling l, summed without cancellation,
as chunk.py), + Σ_{j<l} (cotangent of G_C - G_j) + cotangent of G_C.

Two programs per chunk (roles): one for dq and the gate terms through Q, one for everything else; both
recompute V' and dP (cheap bf16 dots) so that neither holds the other's accumulators. Value columns are
taken in tiles of bv (loaded from refs with pl.ds) to bound the live registers. For
bf16 inputs the dots that form dA and dk from dV' have fp32 operands (TF32 on the GPU, _wide): with bf16
operands dk of DeltaNet at T = 1000, K = V = 128 exceeded the 5e-3 tolerance (5.1e-3; 4.4e-3 with them).
The dq role's dots and dvb = T^T dV' may be bf16 (DOT_MODES, KernelConfig.bwd_dots).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import chunk_slice as _chunk_slice
from effattn.ops.gated_delta_rule._kernel_common import (_Ctx, _nn, _nn32, _nn_split, _nt, _nt32, _params,
                                                         _straddle_sum, _tn, _tn32, chunk_gates)

# Which dots of bf16 inputs take fp32 operands (TF32 on the GPU): (the dq role's, dvb = T^T dV', the dk role's
# dA and dk terms). Errors of DeltaNet's gradients against naive at T = 1000, K = V = 128 (the GPU test case,
# TF32 emulated in interpret mode), relative RMS: 'tf32' dk 4.39e-3, dq 3.61e-3; 'mixed' dk 4.50e-3, dq 4.40e-3,
# dβ 3.82e-3; 'bf16' dk 5.12e-3 (over DESIGN.md's 5e-3). On the H200 the kernel took 3.66 ms with every wide
# dot TF32 and 2.97 with none (block_v_chunk 16; 3.69 and 2.39 at 64). The straddle sums of the gate gradient
# keep TF32 in every mode.
DOT_MODES = {'tf32': (True, True, True), 'mixed': (False, False, True), 'bf16': (False, False, False)}


def _dq_role(q_ref, k_ref, w_ref, u_ref, do_ref, s_ref, dq_ref, dg_ref, gt, *, ctx: _Ctx, bv: int, wide: bool):
    """dq and the gate cotangents through Q (e^G q and Γ in P); wide (TF32) dots unless not `wide`."""
    c, kp = q_ref.shape
    scale = ctx.scale
    w = w_ref[...]
    qs = scale * jnp.exp2(gt.gi)
    nn, nt = (_nn32, _nt32) if wide else (_nn, _nt)

    def tile(j, carry):
        dp, dq = carry
        vs = _chunk_slice(j, bv)
        s, do = s_ref[:, vs], do_ref[:, vs]
        vn = u_ref[:, vs].astype(_F32) - nn(w, s, ctx)          # V'
        return dp + nt(do, vn, ctx), dq + nt(do.astype(_F32) * qs[:, None], s, ctx)

    zero = (jnp.zeros((c, c), _F32), jnp.zeros((c, kp), _F32))
    dp, dq = jax.lax.fori_loop(0, u_ref.shape[-1] // bv, tile, zero)
    q, k, gam = q_ref[...], k_ref[...], gt.gamma()
    dps = dp * (gam * scale)
    node = jnp.sum(dq * q.astype(_F32), axis=1)
    dq_ref[...] = (dq + nn(dps, k, ctx)).astype(dq_ref.dtype)
    pair = dp * (_nt(q, k, ctx) * (gam * scale))
    dg_ref[...] = _straddle_sum(pair, node, gt.row, gt.col, ctx)


def _dk_role(q_ref, k_ref, v_ref, w_ref, u_ref, do_ref, beta_ref, t_ref, s_ref, ds_ref, dk_ref, dv_ref,
             dg_ref, dbeta_ref, gt, *, ctx: _Ctx, bv: int, wide_dvb: bool, wide: bool):
    """dk, dv, dβ and the remaining gate cotangents (through K, the state decay and the WY transform).
    wide_dvb: dvb = T^T dV' by a TF32 dot; wide: the dots that form dA and dk too."""
    nt = _nt32 if wide else _nt
    c, kp = q_ref.shape
    scale = ctx.scale
    row, col = gt.row, gt.col
    eg, dec = jnp.exp2(gt.gi), jnp.exp2(gt.rj)
    beta = beta_ref[...]
    # P held in the dot dtype (P^T dO in bf16 costs no accuracy, unlike the other dV' terms): registers.
    p = (_nt(q_ref[...], k_ref[...], ctx) * (gt.gamma() * scale)).astype(ctx.dt)
    ebeta = beta * eg

    # dkb = T^T dW = -dvb S^T and dA = -(dkb W^T + dvb U^T) = -dvb V'^T (dvb = T^T dV'), so dW is never
    # formed; dk accumulates by row-scaled left operands (in-place dot accumulation).
    # tail: Σ_k (V' dS'^T ⊙ K e^{G_C - G})_jk, of G_C - G_j; dkbk: Σ_k (dkb ⊙ K)_jk.
    def tile(j, carry):
        dp, da, dk, dbeta, tail, dkbk, dgc = carry
        vs = _chunk_slice(j, bv)
        s, dsn = s_ref[:, vs], ds_ref[:, vs]
        do = do_ref[:, vs]
        k, t = k_ref[...], t_ref[...].astype(_F32)              # reloaded (L1) rather than held: registers
        vn = u_ref[:, vs].astype(_F32) - _nn(w_ref[...], s, ctx)  # V'
        dp += _nt(do, vn, ctx)
        kds = dec[:, None] * _nn_split(k, dsn, ctx)             # (K ⊙ e^{G_C - G}) dS'
        dvn = _tn(p, do, ctx) + kds                             # dV' = dU
        dvb = (_tn32 if wide_dvb else _tn)(t, dvn, ctx)
        dv_ref[:, vs] = (dvb * beta[:, None]).astype(dv_ref.dtype)
        dbeta += jnp.sum(dvb * v_ref[:, vs].astype(_F32), axis=1)
        da -= nt(dvb, vn, ctx)
        dk += nt(vn * dec[:, None], dsn, ctx) - nt(dvb * ebeta[:, None], s, ctx)
        tail += jnp.sum(vn * kds, axis=1)
        dkbk -= jnp.sum(dvb * _nn(k, s, ctx), axis=1)
        dgc += jnp.sum(s.astype(_F32) * dsn.astype(_F32))
        return dp, da, dk, dbeta, tail, dkbk, dgc

    cc, vec = jnp.zeros((c, c), _F32), jnp.zeros((c,), _F32)
    zero = (cc, cc, jnp.zeros((c, kp), _F32), vec, vec, vec, jnp.float32(0.0))
    dp, da, dk, dbeta, tail, dkbk, dgc = jax.lax.fori_loop(0, v_ref.shape[-1] // bv, tile, zero)

    # Operands reloaded (L1/L2-resident) and Γ recomputed rather than held through the loop.
    q, k, gam = q_ref[...], k_ref[...], gt.gamma()
    dps = dp * (gam * scale)
    kk = _nt(k, k, ctx)
    dag = jnp.where(row > col, da, 0.0) * gam
    dab = dag * beta[:, None]
    dk = dk + _tn(dps, q, ctx) + _nn(dab, k, ctx) + _tn(dab, k, ctx)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dbeta_ref[...] = dbeta + dkbk * eg + jnp.sum(dag * kk, axis=1)
    dg = _straddle_sum(dab * kk, dkbk * ebeta, row, col, ctx)   # through A and kb
    dg += jnp.sum(jnp.where(row < col, tail[:, None], 0.0), axis=0)
    dg_ref[...] = dg + jnp.exp2(gt.gl) * dgc


def _bwd_chunk_kernel(q_ref, k_ref, v_ref, w_ref, u_ref, do_ref, g_ref, beta_ref, t_ref, s_ref, ds_ref,
                      dq_ref, dk_ref, dv_ref, dg_ref, dbeta_ref, *, ctx: _Ctx, bv: int, dots: str):
    """Grid axis 2 interleaves the two roles of each chunk (2 n + role): both read the same S, dS'
    back to back (L2), and neither holds the other's accumulators (fewer registers)."""
    gt = chunk_gates(g_ref, slice(None), ctx)
    role = pl.program_id(2) % 2
    dq_wide, dvb_wide, dk_wide = DOT_MODES[dots]

    @pl.when(role == 0)
    def _():
        _dq_role(q_ref, k_ref, w_ref, u_ref, do_ref, s_ref, dq_ref, dg_ref, gt, ctx=ctx, bv=bv, wide=dq_wide)

    @pl.when(role == 1)
    def _():
        _dk_role(q_ref, k_ref, v_ref, w_ref, u_ref, do_ref, beta_ref, t_ref, s_ref, ds_ref, dk_ref, dv_ref,
                 dg_ref, dbeta_ref, gt, ctx=ctx, bv=bv, wide_dvb=dvb_wide, wide=dk_wide)


def chunk_grads_kernel(q, k, v, w, u, do, g, beta, t, s_starts, ds_ends, ctx: _Ctx, bv: int, num_warps: int,
                       num_stages: int, interpret: bool, dots: str = 'mixed'):
    """q, k, w [B,Tp,H,Kp], v, u, do [B,Tp,H,Vp] (ctx.dt), g, beta [B,H,Tp] fp32, t [B,Tp,H,C],
    s_starts, ds_ends [B,H,N*Kp,Vp] -> dq, dk [B,Tp,H,Kp], dv [B,Tp,H,Vp] (ctx.dt), dg, dbeta [B,H,Tp] fp32.
    dots: a key of DOT_MODES (bf16 inputs; fp32 inputs always take IEEE dots)."""
    if dots not in DOT_MODES:
        raise ValueError(f'dots must be one of {sorted(DOT_MODES)}; got {dots!r}')
    b, tp, h, kp = q.shape
    vp = v.shape[-1]
    c = ctx.chunk
    bv = min(bv, vp)
    rows = lambda d: pl.BlockSpec((None, c, None, d), lambda b, h, i: (b, i // 2, h, 0))
    vec = pl.BlockSpec((None, None, c), lambda b, h, i: (b, h, i // 2))
    state = pl.BlockSpec((None, None, kp, vp), lambda b, h, i: (b, h, i // 2, 0))
    sd = lambda d: jax.ShapeDtypeStruct((b, tp, h, d), ctx.dt)
    dq, dk, dv, dg, dbeta = pl.pallas_call(
        functools.partial(_bwd_chunk_kernel, ctx=ctx, bv=bv, dots=dots), grid=(b, h, 2 * (tp // c)),
        in_specs=[rows(kp), rows(kp), rows(vp), rows(kp), rows(vp), rows(vp), vec, vec, rows(c), state, state],
        out_specs=[rows(kp), rows(kp), rows(vp),
                   pl.BlockSpec((None, None, None, c), lambda b, h, i: (i % 2, b, h, i // 2)), vec],
        out_shape=[sd(kp), sd(kp), sd(vp), jax.ShapeDtypeStruct((2, b, h, tp), _F32),
                   jax.ShapeDtypeStruct((b, h, tp), _F32)],
        interpret=interpret, name='gated_delta_rule_bwd_chunk',
        **_params(interpret, ctx, num_warps, num_stages))(q, k, v, w, u, do, g, beta, t, s_starts, ds_ends)
    return dq, dk, dv, dg[0] + dg[1], dbeta
