"""Pallas kernel for the WY/UT transform of one chunk (ALGORITHMS.md section 6), one program per (b, h, chunk).

  A = strictly-lower(diag(β)(K K^T ⊙ Γ)),  T = (I + A)^{-1},  W = T (diag(β) K ⊙ e^G),  U = T diag(β) V.

As fla's chunk_scaled_dot_kkt + solve_tril (Yang et al. 2024 App. B): the chunk is cut into 16-row blocks
(loaded from refs with pl.ds: the Triton lowering cannot slice values); each diagonal block is inverted
by forward substitution (T_r = e_r - A_r T, rows picked by masked sums), the blocks are merged by block
forward substitution T_ij = -T_ii Σ_{j<=m<i} A_im T_mj (fp32 dots), then W and U are block sums of dots.
The inverse is always fp32 (IEEE dots); it is written out ([B, Tp, H, C] in the input dtype, as fla's A:
the backward's dots round it to that) for the backward.

Gate exponents never subtract two large cumsums: for blocks i > j, G_r - G_s = (Σ_{l>s in block j} g_l)
+ (block sums strictly between) + (Σ_{l<=r in block i} g_l), all terms of one sign.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import LOG2E as _LOG2E
from effattn.ops.gated_delta_rule._kernel_common import _Ctx, _nn, _nt, _params

_BLK = 16
_HI = jax.lax.Precision.HIGHEST


def _dot32(a, b):
    """a @ b, fp32 IEEE."""
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_HI, preferred_element_type=_F32)


def _wy_kernel(k_ref, v_ref, g_ref, beta_ref, w_ref, u_ref, t_ref, *, ctx: _Ctx):
    nb = k_ref.shape[0] // _BLK
    idx = jnp.arange(_BLK, dtype=jnp.int32)
    row, col = idx[:, None], idx[None, :]
    blk = [pl.ds(i * _BLK, _BLK) for i in range(nb)]
    g = [g_ref[s] * _LOG2E for s in blk]  # base 2: one exp2 per decay
    beta = [beta_ref[s] for s in blk]
    gsum = [jnp.sum(x) for x in g]
    gin = [jnp.sum(jnp.where(col <= row, x[None, :], 0.0), axis=1) for x in g]   # Σ_{l<=r} in block
    gout = [jnp.sum(jnp.where(col > row, x[None, :], 0.0), axis=1) for x in g]   # Σ_{l>s} in block

    def log_gamma(i, j):  # [16, 16] = G_r - G_s for r in block i, s in block j
        if i == j:
            if ctx.fp32:  # term by term (0/1 dot), no cancellation
                upto = jnp.where(col <= row, g[i][None, :], 0.0)
                return _dot32(upto, (row > col).astype(_F32))
            return gin[i][:, None] - gin[i][None, :]
        mid = sum(gsum[j + 1:i], jnp.float32(0.0))
        return gin[i][:, None] + gout[j][None, :] + mid

    a = {}
    for i in range(nb):
        for j in range(i + 1):
            kk = _nt(k_ref[blk[i], :], k_ref[blk[j], :], ctx) * beta[i][:, None]
            lg = log_gamma(i, j)
            if i == j:
                a[i, j] = jnp.where(row > col, kk * jnp.exp2(jnp.where(row > col, lg, 0.0)), 0.0)
            else:
                a[i, j] = kk * jnp.exp2(lg)

    eye = (row == col).astype(_F32)

    def subst(r, ts):  # row r of every diagonal block: T_r = e_r - A_r T
        out = []
        for i, t in enumerate(ts):
            a_r = jnp.sum(jnp.where(row == r, a[i, i], 0.0), axis=0)
            new = (idx == r).astype(_F32) - jnp.sum(a_r[:, None] * t, axis=0)
            out.append(jnp.where(row == r, new[None, :], t))
        return tuple(out)

    tdiag = jax.lax.fori_loop(1, _BLK, subst, tuple(eye for _ in range(nb)))
    t = {(i, i): tdiag[i] for i in range(nb)}
    for d in range(1, nb):
        for j in range(nb - d):
            i = j + d
            acc = sum(_dot32(a[i, m], t[m, j]) for m in range(j, i))
            t[i, j] = -_dot32(t[i, i], acc)

    prefix = [sum(gsum[:i], jnp.float32(0.0)) for i in range(nb)]
    # Operands reloaded (L1-resident) at each use rather than held: fewer live registers.
    kb = lambda j: k_ref[blk[j], :].astype(_F32) * (beta[j] * jnp.exp2(prefix[j] + gin[j]))[:, None]
    vb = lambda j: v_ref[blk[j], :].astype(_F32) * beta[j][:, None]
    zero = jnp.zeros((_BLK, _BLK), _F32)
    for i in range(nb):
        w = sum(_nn(t[i, j], kb(j), ctx) for j in range(i + 1))
        u = sum(_nn(t[i, j], vb(j), ctx) for j in range(i + 1))
        w_ref[blk[i], :] = w.astype(w_ref.dtype)
        u_ref[blk[i], :] = u.astype(u_ref.dtype)
        for j in range(nb):
            t_ref[blk[i], blk[j]] = (t[i, j] if j <= i else zero).astype(t_ref.dtype)


def wy_kernel(k, v, g, beta, ctx: _Ctx, num_warps: int, interpret: bool):
    """k [B,Tp,H,Kp], v [B,Tp,H,Vp] (ctx.dt), g, beta [B,H,Tp] fp32 -> W, U, T [B,Tp,H,C] (ctx.dt)."""
    b, tp, h, kp = k.shape
    vp = v.shape[-1]
    c = ctx.chunk
    rows = lambda d: pl.BlockSpec((None, c, None, d), lambda b, h, n: (b, n, h, 0))
    vec = pl.BlockSpec((None, None, c), lambda b, h, n: (b, h, n))
    return pl.pallas_call(
        functools.partial(_wy_kernel, ctx=ctx), grid=(b, h, tp // c),
        in_specs=[rows(kp), rows(vp), vec, vec], out_specs=[rows(kp), rows(vp), rows(c)],
        out_shape=[jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt), jax.ShapeDtypeStruct((b, tp, h, vp), ctx.dt),
                   jax.ShapeDtypeStruct((b, tp, h, c), ctx.dt)],
        interpret=interpret, name='gated_delta_rule_wy',
        **_params(interpret, ctx, num_warps, 1))(k, v, g, beta)
