"""GLA intra-chunk kernels with the diagonal block by a loop over its key rows (KernelConfig.intra_diag /
intra_diag_bwd = 'rows'; the forward's default, the backward's at K > 64): flash-linear-attention's
chunk_gla_fwd_A_kernel_intra_sub_intra form (Yang et al. 2024, arXiv 2312.06635, Sec. 4.3; ALGORITHMS.md section 5).
Each of the 16 key rows j of the block is a
[16, w] exp tile e^{G_i - G_j} and a reduction: more exps than _intra.py's halves (256 w against 152 w per slice) but
only 2-D tiles, which Triton runs faster at K = 128 and 64 (timings in pallas.KernelConfig). The earlier / later blocks
and the outputs are as in _intra.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32
from effattn.ops.gla._intra_common import (SUB, _block, _dA_blocks, _earlier_keys, _gated, _other_blocks,
                                           _slices, _write_grads)
from effattn.ops.simple_gla.pallas import _dot, _f32


def _row_loop(body, init, unroll: bool):
  """body(j, carry) over the block's 16 rows: a fori_loop, or (unroll, KernelConfig.intra_unroll) the 16 steps
  written out with static row indices, so that the compiler may overlap one step's loads and exps with another's."""
  if not unroll:
    return jax.lax.fori_loop(0, SUB, body, init)
  for j in range(SUB):
    init = body(j, init)
  return init


def _fwd_kernel_rows(q_ref, k_ref, g_ref, a_ref, qg_ref, kg_ref, *, ctx, width, unroll=False, block=None):
  """_fwd_kernel with the diagonal block as flash-linear-attention's chunk_gla_fwd_A_kernel_intra_sub_intra
  computes it (KernelConfig.intra_diag='rows'): a loop over its 16 key rows j, each a [16, w] exp tile
  e^{G_i - G_j} (i >= j) and a row reduction giving column j. 256 w exps per slice against the halves' 152 w,
  but only 2-D tiles: no [16, 8, w] products, reductions over their middle axis or 0/1 selection sums.
  (Computing G here from the raw gates instead of the separate gates kernel took the forward from 0.795 to 1.94 ms
  on the H200 at B=4 T=4096 H=16 K=128: each 16-row program redid the chunk's cumsum dots; removed.)
  block: _block(ctx), when the caller has it (a lax.cond branch: interpret mode resolves program ids at the top
  level only)."""
  r0, rows, _, crow, col, (si, sj) = block or _block(ctx)

  def body(cs, carry):
    a, ad = carry
    g_key = lambda j: g_ref[pl.ds(r0 + j, 1), cs]
    qf, gq, a = _earlier_keys(q_ref, k_ref, g_ref, cs, a, r0, rows, crow, ctx)

    def column(j, ad):
      e = jnp.exp2(jnp.where(si >= j, gq - g_key(j), -jnp.inf))                       # [SUB, w], <= 1
      c = jnp.sum(qf * _f32(k_ref[pl.ds(r0 + j, 1), cs]) * e, axis=1, keepdims=True)  # [SUB, 1]: A_ij of key j
      return ad + jnp.where(sj == j, c, 0.0)
    ad = _row_loop(column, ad, unroll)
    _gated(qf, _f32(k_ref[rows, cs]), gq, g_ref, cs, ctx, qg_ref, kg_ref)
    return a, ad

  step, n = _slices(q_ref.shape[-1], width, body)
  a, ad = jax.lax.fori_loop(0, n, step, (jnp.zeros((SUB, ctx.chunk), F32), jnp.zeros((SUB, SUB), F32)))
  sel = (col == r0 + si).astype(ctx.dt)  # columns r0 .. r0+15, as in _fwd_kernel
  a_ref[...] = (a + _dot(ad.astype(ctx.dt), sel, 1, 0, ctx)).astype(a_ref.dtype)


def _bwd_kernel_rows(q_ref, k_ref, g_ref, da_src, dq_ref, dk_ref, x_ref, qg_ref, kg_ref, *, ctx, precise,
                     width, two_loops=False, unroll=False, block=None):
  """_bwd_kernel with the diagonal block by a loop over its 16 key rows j (KernelConfig.intra_diag_bwd='rows'):
  w_ij = dA_ij e^{G_i - G_j} (i > j) as a [16, w] tile, dq_i += w_ij k_j, dk_j = sum_i w_ij q_i (a reduction over
  the rows, placed into row j). 2-D tiles only, as _fwd_kernel_rows.
  two_loops ('rows2'): dk from a second loop, over the block's query rows i, as dk_j += dA_ij e^{G_i - G_j} q_i on
  a [16, w] tile of key rows j: twice the exps, but no reduction across the tile's rows (threads) per step.
  block: as _fwd_kernel_rows'."""
  r0, rows, _, crow, col, (si, sj) = block or _block(ctx)
  da, dat, dd, daii = _dA_blocks(da_src, rows, r0, col, si, sj, ctx)
  dd_strict = jnp.where(si > sj, dd, 0.0)
  if two_loops:
    v_ref, do_ref = da_src  # 'rows2' is never run from a stored dA (_intra.intra_grads)
    dd_t = jnp.where(sj > si, _dot(v_ref[rows, :], do_ref[rows, :], 1, 1, ctx), 0.0)  # [j, i]: dA_ij, i > j

  def body(cs, carry):
    gq, dq, dk = _other_blocks(q_ref, k_ref, g_ref, cs, r0, rows, crow, da, dat, ctx, precise)
    qb, kb = _f32(q_ref[rows, cs]) * ctx.scale, _f32(k_ref[rows, cs])

    def key_row(j, acc):
      dq, dk = acc
      key = pl.ds(r0 + j, 1)
      dd_j = jnp.sum(jnp.where(sj == j, dd_strict, 0.0), axis=1, keepdims=True)    # [SUB, 1]: dA_ij, i > j
      w = dd_j * jnp.exp2(jnp.where(si > j, gq - g_ref[key, cs], -jnp.inf))        # [SUB, w], exps <= 1
      dq = dq + w * _f32(k_ref[key, cs])
      if two_loops:
        return dq, dk
      return dq, dk + jnp.where(si == j, jnp.sum(w * qb, axis=0, keepdims=True), 0.0)

    def query_row(i, dk):
      query = pl.ds(r0 + i, 1)
      dd_i = jnp.sum(jnp.where(sj == i, dd_t, 0.0), axis=1, keepdims=True)         # [SUB, 1]: dA_ij over keys j
      w = dd_i * jnp.exp2(jnp.where(si < i, g_ref[query, cs] - gq, -jnp.inf))      # [SUB (j), w], exps <= 1
      return dk + w * (_f32(q_ref[query, cs]) * ctx.scale)
    dq, dk = _row_loop(key_row, (dq, dk), unroll)
    if two_loops:
      dk = _row_loop(query_row, dk, unroll)
    _write_grads(dq, dk, qb, kb, gq, daii, cs, g_ref, ctx, dq_ref, dk_ref, x_ref, qg_ref, kg_ref)
    return carry

  step, n = _slices(q_ref.shape[-1], width, body)
  jax.lax.fori_loop(0, n, step, 0)
