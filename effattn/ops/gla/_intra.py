"""GLA intra-chunk kernels, parallel over 16-row sub-blocks (Yang et al. 2024, arXiv 2312.06635, Sec. 4.3,
"secondary chunking"; ALGORITHMS.md section 5; the split of flash-linear-attention's chunk_gla).

All the pairwise (per-channel decay) work of GLA lives here, out of the sequential chunk sweeps. One program per
(batch, head, 16-row block r of a chunk of C rows); G is the chunk-local inclusive cumsum of g in base 2 (fp32),
non-increasing along the chunk for gates g <= 0. Rows i, j are chunk indices, r0 = 16 r.

Forward, A_ij = scale sum_k q_ik k_jk e^{G_ik - G_jk} (i >= j), the rows of block r:
  keys j < r0 (earlier blocks): one dot about the reference row n = r0, both factors <= 1,
      A_ij = (q_i ⊙ e^{G_i - G_n}) (k_j ⊙ e^{G_n - G_j})^T;
  keys of block r (the diagonal block): pairwise, one key column per step ([16, K] exps; the diagonal i = j has
      no decay, and e^{G_n - G_j} for j > n could overflow, so no dot there).
Backward, the strict (i > j) parts of dq_i = sum_j dA_ij k_j e^{G_i - G_j} and dk_j = sum_i dA_ij q_i e^{G_i - G_j}
(dA = dO V^T, i >= j) for the rows of block r: dq from the keys of earlier blocks about n = r0 as above, dk from
the queries of later blocks about m = r0 + 15 (e^{G_i - G_m} e^{G_m - G_j}, both <= 1), and the diagonal block
pairwise, dq and dk from the same [16, K] exps per step. The diagonal terms dA_ii k_i, dA_ii q_i are added by the
sweeps. With `precise` (bf16) the dots take two bf16 halves of each fp32 operand (~2^-16): the gate gradient
takes row minus column sums of these pairs, which must cancel to better than bf16.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32
from effattn.ops.simple_gla.pallas import _dot, _f32, _params

SUB = 16  # rows of a sub-block


def _dd(x, y, ca, cb, ctx):
  """dot of two fp32 intermediates, both rounded to ctx.dt."""
  return _dot(x.astype(ctx.dt), y.astype(ctx.dt), ca, cb, ctx)


def _ddp(x, y, ca, cb, ctx, precise):
  """_dd, or to ~2^-16 if precise (bf16: x = xh + xl, y = yh + yl, three dots)."""
  if ctx.fp32 or not precise:
    return _dd(x, y, ca, cb, ctx)
  xh, yh = x.astype(ctx.dt), y.astype(ctx.dt)
  xl, yl = (x - _f32(xh)).astype(ctx.dt), (y - _f32(yh)).astype(ctx.dt)
  return _dot(xh, yh, ca, cb, ctx) + _dot(xh, yl, ca, cb, ctx) + _dot(xl, yh, ca, cb, ctx)


def _block(ctx):
  """(r0, rows of the block as a ref index, its row indices [SUB, 1], chunk row indices [C, 1] and column
  indices [1, C], step indices [SUB, 1])."""
  nsub = ctx.chunk // SUB
  r0 = pl.multiple_of((pl.program_id(2) % nsub) * SUB, SUB)
  sidx = jnp.arange(SUB, dtype=jnp.int32)[:, None]
  cidx = jnp.arange(ctx.chunk, dtype=jnp.int32)
  return r0, pl.ds(r0, SUB), r0 + sidx, cidx[:, None], cidx[None, :], sidx


def _row(ref, j):
  """Row j of ref as fp32 [1, K]."""
  return _f32(ref[pl.ds(j, 1), :])


def _take(m, j, col):
  """Column j of m [SUB, C] as [SUB, 1] (a reduction within rows)."""
  return jnp.sum(jnp.where(col == j, m, 0.0), axis=1)[:, None]


def _fwd_kernel(q_ref, k_ref, g_ref, a_ref, *, ctx):
  """Rows r0 .. r0+15 of A [C, C] (zero above the diagonal), in a_ref's dtype."""
  r0, rows, _, crow, col, sidx = _block(ctx)
  qf = _f32(q_ref[rows, :]) * ctx.scale
  gq = g_ref[rows, :]
  gn = _row(g_ref, r0)
  kfac = jnp.exp2(jnp.where(crow < r0, gn - g_ref[...], -jnp.inf))  # e^{G_n - G_j}, keys of earlier blocks
  a = _dd(qf * jnp.exp2(gq - gn), _f32(k_ref[...]) * kfac, 1, 1, ctx)

  def step(jj, a):
    j = r0 + jj
    e = jnp.exp2(jnp.where(sidx >= jj, gq - _row(g_ref, j), -jnp.inf))
    return jnp.where(col == j, jnp.sum(qf * _row(k_ref, j) * e, axis=1)[:, None], a)

  a_ref[...] = jax.lax.fori_loop(0, SUB, step, a).astype(a_ref.dtype)


def _bwd_kernel(q_ref, k_ref, g_ref, v_ref, do_ref, dq_ref, dk_ref, daii_ref, *, ctx, precise):
  """Strict intra-chunk dq (w.r.t. the scaled q) and dk of the block's rows, fp32, and the diagonal dA_ii."""
  r0, rows, ri, crow, col, sidx = _block(ctx)
  r1 = r0 + SUB
  da = jnp.where(col <= ri, _dot(do_ref[rows, :], v_ref[...], 1, 1, ctx), 0.0)   # dA_ij, i in block [SUB, C]
  dat = jnp.where(col >= ri, _dot(v_ref[rows, :], do_ref[...], 1, 1, ctx), 0.0)  # dA_ij, j in block [SUB(j), C(i)]
  daii_ref[...] = jnp.sum(jnp.where(col == ri, da, 0.0), axis=1)
  gq = g_ref[rows, :]
  g = g_ref[...]
  gn, gm = _row(g_ref, r0), _row(g_ref, r1 - 1)
  kfac = jnp.exp2(jnp.where(crow < r0, gn - g, -jnp.inf))     # keys of earlier blocks
  dq = _ddp(jnp.where(col < r0, da, 0.0), _f32(k_ref[...]) * kfac, 1, 0, ctx, precise) * jnp.exp2(gq - gn)
  qfac = jnp.exp2(jnp.where(crow >= r1, g - gm, -jnp.inf))    # queries of later blocks
  dk = (_ddp(jnp.where(col >= r1, dat, 0.0), _f32(q_ref[...]) * (qfac * ctx.scale), 1, 0, ctx, precise)
        * jnp.exp2(gm - gq))

  def step(jj, carry):
    dq, dk = carry
    j = r0 + jj
    gj = _row(g_ref, j)
    # e^{-|G_i - G_j|} for the pairs (block row, row j) on either side; the masks of dA pick the side
    e = jnp.exp2(jnp.where(sidx > jj, gq - gj, jnp.where(sidx < jj, gj - gq, -jnp.inf)))
    dq = dq + _take(da, j, col) * _row(k_ref, j) * e
    dk = dk + _take(dat, j, col) * (_row(q_ref, j) * ctx.scale) * e
    return dq, dk

  dq, dk = jax.lax.fori_loop(0, SUB, step, (dq, dk))
  dq_ref[...] = dq
  dk_ref[...] = dk


def _chunk_spec(ctx, d):
  nsub = ctx.chunk // SUB
  return pl.BlockSpec((None, ctx.chunk, None, d), lambda b, h, p: (b, p // nsub, h, 0))


def _sub_spec(d):
  return pl.BlockSpec((None, SUB, None, d), lambda b, h, p: (b, p, h, 0))


def intra_a(q, k, g, ctx, cfg, interpret):
  """A [B, Tp, H, C] in the dot dtype (it is rounded to it before A V anyway); q, k [B,Tp,H,Kp], g = G."""
  b, tp, h, kp = q.shape
  cs = _chunk_spec(ctx, kp)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, ctx=ctx), grid=(b, h, tp // SUB),
      in_specs=[cs, cs, cs], out_specs=_sub_spec(ctx.chunk),
      out_shape=jax.ShapeDtypeStruct((b, tp, h, ctx.chunk), ctx.dt), interpret=interpret, name='gla_intra_fwd',
      **_params(interpret, ctx, cfg.num_warps_intra, cfg.num_stages_intra))(q, k, g)


def intra_grads(q, k, g, v, do, ctx, cfg, interpret):
  """Strict intra-chunk (dq w.r.t. scaled q, dk), fp32 [B, Tp, H, Kp] each, and dA_ii = dO_i . V_i [B, H, Tp]."""
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  cs, cv, out = _chunk_spec(ctx, kp), _chunk_spec(ctx, vp), _sub_spec(kp)
  shape = jax.ShapeDtypeStruct((b, tp, h, kp), F32)
  diag = pl.BlockSpec((None, None, SUB), lambda b, h, p: (b, h, p))
  return pl.pallas_call(
      functools.partial(_bwd_kernel, ctx=ctx, precise=cfg.precise_dg), grid=(b, h, tp // SUB),
      in_specs=[cs, cs, cs, cv, cv], out_specs=[out, out, diag],
      out_shape=[shape, shape, jax.ShapeDtypeStruct((b, h, tp), F32)], interpret=interpret,
      name='gla_intra_bwd', **_params(interpret, ctx, cfg.num_warps_intra, cfg.num_stages_intra))(q, k, g, v, do)

