"""Pallas kernel for the WY/UT transform of one chunk (ALGORITHMS.md section 6), one program per (b, h, chunk).

  A = strictly-lower(diag(β)(K K^T ⊙ Γ)),  T = (I + A)^{-1},  W = T (diag(β) K ⊙ e^G),  U = T diag(β) V.

As fla's chunk_scaled_dot_kkt + solve_tril + recompute_w_u in one kernel (Yang et al. 2024 App. B):
  1. A of the whole chunk as one [C, C] dot, written (fp32) to the T output, which serves as scratch;
  2. A read back in 16 x 16 blocks (refs with pl.ds: the Triton lowering cannot slice values); each
     diagonal block inverted by forward substitution (T_r = e_r - A_r T, row r of A loaded, as fla's
     solve_tril), the blocks merged by block forward substitution T_ij = -T_ii Σ_{j<=m<i} A_im T_mj
     (fp32 dots of 16 x 16 blocks), each column block of T written over A's once A's is read;
  3. W and U as [C, C] x [C, cols] dots of the input dtype.
The steps talk through global memory (L1/L2-resident) with a CTA barrier between them on the GPU: blocks
of a value cannot be taken in registers, and per-block K K^T dots (ten 16 x 16 accumulators) took all 255
registers. T is fp32 ([B, Tp, H, C]) and is kept for the backward.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import chunk_slice as _chunk_slice
from effattn.ops.gated_delta_rule._kernel_common import _Ctx, _nn, _nt, _params, chunk_gates

try:
    from jax.experimental.pallas.triton import debug_barrier as _debug_barrier
except ImportError:  # pragma: no cover
    _debug_barrier = None

_BLK = 16
_COLS = 64  # key / value columns per step of the W, U loop
_HI = jax.lax.Precision.HIGHEST


def _dot32(a, b, interpret):
    """a @ b in fp32: IEEE in interpret mode, 3xTF32 on the GPU (tensor cores, ~fp32 accuracy, as fla's
    solve_tril can; IEEE dots run on the FMA units with whole operand rows per thread: 120 more registers)."""
    prec = _HI if interpret else jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=prec, preferred_element_type=_F32)


def _wy_kernel(k_ref, v_ref, g_ref, beta_ref, w_ref, u_ref, t_ref, *, ctx: _Ctx, interpret: bool):
    c = k_ref.shape[0]
    nb = c // _BLK
    barrier = (lambda: None) if interpret else _debug_barrier
    gt = chunk_gates(g_ref, slice(None), ctx)
    k = k_ref[...]
    t_ref[...] = jnp.where(gt.row > gt.col, _nt(k, k, ctx) * beta_ref[...][:, None] * gt.gamma(), 0.0)
    del gt, k  # the gates are recomputed for W below rather than held (registers)
    barrier()

    blk = [pl.ds(i * _BLK, _BLK) for i in range(nb)]
    idx = jnp.arange(_BLK, dtype=jnp.int32)
    row, col = idx[:, None], idx[None, :]
    eye = (row == col).astype(_F32)

    def subst(r, ts):  # row r of every diagonal block: T_r = e_r - A_r T
        out = []
        for i, t in enumerate(ts):
            a_r = t_ref[i * _BLK + r, blk[i]]
            new = (idx == r).astype(_F32) - jnp.sum(a_r[:, None] * t, axis=0)
            out.append(jnp.where(row == r, new[None, :], t))
        return tuple(out)

    tdiag = jax.lax.fori_loop(1, _BLK, subst, tuple(eye for _ in range(nb)))
    zero = jnp.zeros((_BLK, _BLK), _F32)
    # Column-block by column-block, so that one column of T is live: column j needs A_im for m >= j
    # only, so it overwrites A's column j once its reads are done (the barrier).
    for j in range(nb):
        t = {j: tdiag[j]}
        for i in range(j + 1, nb):
            acc = sum(_dot32(t_ref[blk[i], blk[m]], t[m], interpret) for m in range(j, i))
            t[i] = -_dot32(tdiag[i], acc, interpret)
        barrier()
        for i in range(nb):
            t_ref[blk[i], blk[j]] = t[i] if i >= j else zero
    barrier()

    tf = t_ref[...]
    beta = beta_ref[...]
    kscale = beta * jnp.exp2(chunk_gates(g_ref, slice(None), ctx, fp32=False).gi)

    def apply(x_ref, o_ref, rscale):  # O = T diag(rscale) X over column tiles
        bc = min(_COLS, x_ref.shape[1])

        def tile(ci, carry):
            cs = _chunk_slice(ci, bc)
            o_ref[:, cs] = _nn(tf, x_ref[:, cs].astype(_F32) * rscale[:, None], ctx).astype(o_ref.dtype)
            return carry

        jax.lax.fori_loop(0, x_ref.shape[1] // bc, tile, jnp.int32(0))

    apply(k_ref, w_ref, kscale)
    apply(v_ref, u_ref, beta)


def wy_kernel(k, v, g, beta, ctx: _Ctx, num_warps: int, interpret: bool):
    """k [B,Tp,H,Kp], v [B,Tp,H,Vp] (ctx.dt), g, beta [B,H,Tp] fp32 -> W, U (ctx.dt), T [B,Tp,H,C] fp32."""
    b, tp, h, kp = k.shape
    vp = v.shape[-1]
    c = ctx.chunk
    if _debug_barrier is None and not interpret:
        raise NotImplementedError('the WY kernel needs jax.experimental.pallas.triton.debug_barrier')
    rows = lambda d: pl.BlockSpec((None, c, None, d), lambda b, h, n: (b, n, h, 0))
    vec = pl.BlockSpec((None, None, c), lambda b, h, n: (b, h, n))
    return pl.pallas_call(
        functools.partial(_wy_kernel, ctx=ctx, interpret=interpret), grid=(b, h, tp // c),
        in_specs=[rows(kp), rows(vp), vec, vec], out_specs=[rows(kp), rows(vp), rows(c)],
        out_shape=[jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt), jax.ShapeDtypeStruct((b, tp, h, vp), ctx.dt),
                   jax.ShapeDtypeStruct((b, tp, h, c), _F32)],
        interpret=interpret, name='gated_delta_rule_wy',
        **_params(interpret, ctx, num_warps, 1))(k, v, g, beta)
