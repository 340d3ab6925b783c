"""Pallas kernel for the backward of the WY/UT transform, one program per (b, h, chunk).

ALGORITHMS.md section 6 (Yang et al. 2024 App. B; the role of fla's prepare_wy_repr_bwd). Forward:
A = strictly-lower(diag(β)(K K^T ⊙ Γ)), T = (I + A)^{-1} (saved), kb = diag(β e^G) K, vb = diag(β) V,
W = T kb, U = T vb. Given dW (from _dqk_kernel) and dU = dV' (from the reverse sweep):
  dkb = T^T dW,  dvb = T^T dU,  dA = -strictly-lower(dkb W^T + dvb U^T),  dab = diag(β)(dA ⊙ Γ),
  dK = dK_o + dkb ⊙ β e^G + dab K + dab^T K,   dV = β dvb,
  dβ = Σ_k dkb ⊙ K e^G + Σ_v dvb ⊙ V + Σ_j (dA ⊙ Γ ⊙ K K^T)_ij,
and the gate cotangents through kb (node of G_j: dβ's first term times β) and through Γ in A (pairs).
Columns are taken in tiles (pl.ds on refs) so that only dA [C, C] and one [C, cols] tile are live; dkb is
computed twice (once for dA, once for dK after dA is complete) rather than held.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import chunk_slice as _chunk_slice
from effattn.ops.gated_delta_rule._kernel_common import (_Ctx, _nn, _nt, _nt32, _params, _straddle_sum, _tn,
                                                         _tn32, chunk_gates)


def _wy_bwd_kernel(k_ref, v_ref, w_ref, u_ref, g_ref, beta_ref, t_ref, dw_ref, du_ref, dko_ref,
                   dk_ref, dv_ref, dg_ref, dbeta_ref, *, ctx: _Ctx, cols: int, wide_dvb: bool, wide_dk: bool):
    c = k_ref.shape[0]
    gt = chunk_gates(g_ref, slice(None), ctx)
    beta = beta_ref[...]
    ebeta = beta * jnp.exp2(gt.gi)
    tn_v = _tn32 if wide_dvb else _tn
    tn_k, nt_a = (_tn32, _nt32) if wide_dk else (_tn, _nt)
    bk, bv = min(cols, k_ref.shape[1]), min(cols, v_ref.shape[1])

    def value_tile(j, carry):
        da, dbeta = carry
        vs = _chunk_slice(j, bv)
        dvb = tn_v(t_ref[...], du_ref[:, vs], ctx)
        dv_ref[:, vs] = (dvb * beta[:, None]).astype(dv_ref.dtype)
        return da - nt_a(dvb, u_ref[:, vs], ctx), dbeta + jnp.sum(dvb * v_ref[:, vs].astype(_F32), axis=1)

    def key_tile(j, carry):
        da, dkbk = carry
        ks = _chunk_slice(j, bk)
        dkb = tn_k(t_ref[...], dw_ref[:, ks], ctx)
        return da - nt_a(dkb, w_ref[:, ks], ctx), dkbk + jnp.sum(dkb * k_ref[:, ks].astype(_F32), axis=1)

    vec = jnp.zeros((c,), _F32)
    da, dbeta = jax.lax.fori_loop(0, v_ref.shape[1] // bv, value_tile, (jnp.zeros((c, c), _F32), vec))
    da, dkbk = jax.lax.fori_loop(0, k_ref.shape[1] // bk, key_tile, (da, vec))

    k = k_ref[...]
    kk = _nt(k, k, ctx)
    dag = jnp.where(gt.row > gt.col, da, 0.0) * gt.gamma()
    dab = dag * beta[:, None]

    def dk_tile(j, carry):
        ks = _chunk_slice(j, bk)
        kt = k_ref[:, ks]
        dkb = tn_k(t_ref[...], dw_ref[:, ks], ctx)
        dk = dko_ref[:, ks] + dkb * ebeta[:, None] + _nn(dab, kt, ctx) + _tn(dab, kt, ctx)
        dk_ref[:, ks] = dk.astype(dk_ref.dtype)
        return carry

    jax.lax.fori_loop(0, k_ref.shape[1] // bk, dk_tile, jnp.int32(0))
    dbeta_ref[...] = dbeta + dkbk * jnp.exp2(gt.gi) + jnp.sum(dag * kk, axis=1)
    if ctx.gated:
        dg_ref[...] = _straddle_sum(dab * kk, dkbk * ebeta, gt.row, gt.col, ctx)
    else:
        dg_ref[...] = jnp.zeros(dg_ref.shape, _F32)


def wy_bwd_kernel(k, v, w, u, g, beta, t, dw, du, dk_o, ctx: _Ctx, cols: int, num_warps: int, num_stages: int,
                  interpret: bool, wide_dvb: bool, wide_dk: bool):
    """k, w [B,Tp,H,Kp], v, u [B,Tp,H,Vp] (ctx.dt), g, beta [B,H,Tp] fp32, t [B,Tp,H,C], dw, dk_o [B,Tp,H,Kp],
    du [B,Tp,H,Vp] fp32 -> dk [B,Tp,H,Kp], dv [B,Tp,H,Vp] (ctx.dt), dg, dbeta [B,H,Tp] fp32.
    wide_dvb: dvb = T^T dU by a TF32 dot on the GPU; wide_dk: dkb = T^T dW and the dots forming dA too."""
    b, tp, h, kp = k.shape
    vp = v.shape[-1]
    c = ctx.chunk
    rows = lambda d: pl.BlockSpec((None, c, None, d), lambda b, h, n: (b, n, h, 0))
    vec = pl.BlockSpec((None, None, c), lambda b, h, n: (b, h, n))
    return pl.pallas_call(
        functools.partial(_wy_bwd_kernel, ctx=ctx, cols=cols, wide_dvb=wide_dvb, wide_dk=wide_dk),
        grid=(b, h, tp // c),
        in_specs=[rows(kp), rows(vp), rows(kp), rows(vp), vec, vec, rows(c), rows(kp), rows(vp), rows(kp)],
        out_specs=[rows(kp), rows(vp), vec, vec],
        out_shape=[jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt), jax.ShapeDtypeStruct((b, tp, h, vp), ctx.dt),
                   jax.ShapeDtypeStruct((b, h, tp), _F32), jax.ShapeDtypeStruct((b, h, tp), _F32)],
        interpret=interpret, name='gated_delta_rule_bwd_wy',
        **_params(interpret, ctx, num_warps, num_stages))(k, v, w, u, g, beta, t, dw, du, dk_o)
