"""GLA backward intra-chunk kernel with dA stored and the key channels on the grid (KernelConfig.intra_diag_bwd =
'stored'): flash-linear-attention's chunk_gla_bwd_kernel_dA + chunk_gla_bwd_kernel_intra layout (Yang et al. 2024,
arXiv 2312.06635, Sec. 4.3; ALGORITHMS.md section 5). The math is _intra.py's backward; what differs:
  - dA = dO V^T per chunk and its transpose are computed once by XLA (two batched matmuls, fp32 [B, Tp, H, C]),
    so the diagonal loops load dA's columns from memory instead of selecting them out of a [16, 16] tile by a
    masked reduction in every step, and the four programs of a chunk do not each redo the [16, V] x [C, V] dots;
  - one program per (batch, head, 16-row block, slice of w key channels), so a program's tiles are [16, w] (fla:
    w = 64) and more programs share an SM, where the in-kernel loop over slices of _intra_rows.py keeps [16, 128]
    tiles live at 255 registers, two programs per SM;
  - the diagonal block as two loops (fla's form, 'rows2'): dq over the block's key rows j, dk over its query rows
    i, each step a [16, w] exp tile, with no reduction across the tile's rows.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32
from effattn.ops.gla._intra_common import SUB, _chunk_spec, _other_blocks, _slices, _sub_spec, _write_grads
from effattn.ops.simple_gla.pallas import _f32, _params


def chunk_dA(v, do, chunk):
  """(dA, dA^T) per chunk, fp32 [B, Tp, H, C]: dA[t, j] = do_t . v_j and dA^T[t, i] = do_i . v_t for rows i, j of
  t's chunk (not masked: the kernel masks)."""
  b, tp, h, vp = v.shape
  n = tp // chunk
  vc, doc = v.reshape(b, n, chunk, h, vp), do.reshape(b, n, chunk, h, vp)
  da = jnp.einsum('bnihv,bnjhv->bnihj', doc, vc, preferred_element_type=F32)
  dat = jnp.einsum('bnihv,bnjhv->bnjhi', doc, vc, preferred_element_type=F32)
  return da.reshape(b, tp, h, chunk), dat.reshape(b, tp, h, chunk)


def _bwd_kernel_stored(q_ref, k_ref, g_ref, da_ref, dat_ref, dq_ref, dk_ref, x_ref, qg_ref, kg_ref, *, ctx, precise,
                       nk):
  """The block's rows of one channel slice: as _intra_rows._bwd_kernel_rows (two_loops), with dA from da_ref
  (rows of the chunk x its keys) and dat_ref (keys x queries)."""
  nsub = ctx.chunk // SUB
  r0 = pl.multiple_of(((pl.program_id(2) // nk) % nsub) * SUB, SUB)
  rows, r1 = pl.ds(r0, SUB), r0 + SUB
  si = jnp.arange(SUB, dtype=jnp.int32)[:, None]
  cidx = jnp.arange(ctx.chunk, dtype=jnp.int32)
  crow, col = cidx[:, None], cidx[None, :]
  cs = slice(None)
  da = jnp.where(col < r0, da_ref[rows, :], 0.0)     # [i, j]: dA_ij, keys j of earlier blocks
  dat = jnp.where(col >= r1, dat_ref[rows, :], 0.0)  # [j, i]: dA_ij, queries i of later blocks
  gq, dq, dk = _other_blocks(q_ref, k_ref, g_ref, cs, r0, rows, crow, da, dat, ctx, precise)
  qb, kb = _f32(q_ref[rows, :]) * ctx.scale, _f32(k_ref[rows, :])
  daii = jnp.sum(jnp.where(si == jnp.arange(SUB, dtype=jnp.int32)[None, :], da_ref[rows, pl.ds(r0, SUB)], 0.0),
                 axis=1, keepdims=True)

  def key_row(j, dq):  # dq_i += dA_ij e^{G_i - G_j} k_j, i > j
    key = pl.ds(r0 + j, 1)
    w = da_ref[rows, key] * jnp.exp2(jnp.where(si > j, gq - g_ref[key, :], -jnp.inf))   # [SUB (i), w], <= |dA|
    return dq + w * _f32(k_ref[key, :])

  def query_row(i, dk):  # dk_j += dA_ij e^{G_i - G_j} q_i, j < i
    query = pl.ds(r0 + i, 1)
    w = dat_ref[rows, query] * jnp.exp2(jnp.where(si < i, g_ref[query, :] - gq, -jnp.inf))  # [SUB (j), w]
    return dk + w * (_f32(q_ref[query, :]) * ctx.scale)

  dq = jax.lax.fori_loop(0, SUB, key_row, dq)
  dk = jax.lax.fori_loop(0, SUB, query_row, dk)
  _write_grads(dq, dk, qb, kb, gq, daii, cs, g_ref, ctx, dq_ref, dk_ref, x_ref, qg_ref, kg_ref)


def _bwd_kernel_rows_stored(q_ref, k_ref, g_ref, da_ref, dat_ref, dq_ref, dk_ref, x_ref, qg_ref, kg_ref, *, ctx,
                            precise, width):
  """_intra_rows._bwd_kernel_rows (one loop over the block's key rows, one exp tile for dq and dk, the channel slices
  looped in the kernel) with dA loaded from da_ref / dat_ref instead of the in-kernel dots and masked column
  selections (KernelConfig.intra_diag_bwd='rows_stored')."""
  nsub = ctx.chunk // SUB
  r0 = pl.multiple_of((pl.program_id(2) % nsub) * SUB, SUB)
  rows, r1 = pl.ds(r0, SUB), r0 + SUB
  si = jnp.arange(SUB, dtype=jnp.int32)[:, None]
  cidx = jnp.arange(ctx.chunk, dtype=jnp.int32)
  crow, col = cidx[:, None], cidx[None, :]
  da = jnp.where(col < r0, da_ref[rows, :], 0.0)
  dat = jnp.where(col >= r1, dat_ref[rows, :], 0.0)
  daii = jnp.sum(jnp.where(si == jnp.arange(SUB, dtype=jnp.int32)[None, :], da_ref[rows, pl.ds(r0, SUB)], 0.0),
                 axis=1, keepdims=True)

  def body(cs, carry):
    gq, dq, dk = _other_blocks(q_ref, k_ref, g_ref, cs, r0, rows, crow, da, dat, ctx, precise)
    qb, kb = _f32(q_ref[rows, cs]) * ctx.scale, _f32(k_ref[rows, cs])

    def key_row(j, acc):
      dq, dk = acc
      key = pl.ds(r0 + j, 1)
      w = da_ref[rows, key] * jnp.exp2(jnp.where(si > j, gq - g_ref[key, cs], -jnp.inf))  # [SUB, w]
      return dq + w * _f32(k_ref[key, cs]), dk + jnp.where(si == j, jnp.sum(w * qb, axis=0, keepdims=True), 0.0)

    dq, dk = jax.lax.fori_loop(0, SUB, key_row, (dq, dk))
    _write_grads(dq, dk, qb, kb, gq, daii, cs, g_ref, ctx, dq_ref, dk_ref, x_ref, qg_ref, kg_ref)
    return carry

  step, n = _slices(q_ref.shape[-1], width, body)
  jax.lax.fori_loop(0, n, step, 0)


def intra_grads_rows_stored(q, k, g, v, do, ctx, cfg, interpret, width):
  """_intra.intra_grads by _bwd_kernel_rows_stored: programs over (b, h, 16-row block) as 'rows'."""
  b, tp, h, kp = q.shape
  da, dat = chunk_dA(v, do, ctx.chunk)
  cs, out = _chunk_spec(ctx, kp), _sub_spec(kp)
  shape = jax.ShapeDtypeStruct((b, tp, h, kp), F32)
  fac = jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt)
  return pl.pallas_call(
      lambda *refs: _bwd_kernel_rows_stored(*refs, ctx=ctx, precise=cfg.precise_dg, width=width),
      grid=(b, h, tp // SUB), in_specs=[cs] * 3 + [_chunk_spec(ctx, ctx.chunk)] * 2, out_specs=[out] * 5,
      out_shape=[shape, shape, shape, fac, fac], interpret=interpret, name='gla_intra_bwd',
      **_params(interpret, ctx, cfg.num_warps_intra_bwd, cfg.num_stages_intra_bwd))(q, k, g, da, dat)


def intra_grads_stored(q, k, g, v, do, ctx, cfg, interpret, width):
  """_intra.intra_grads by _bwd_kernel_stored: programs over (b, h, 16-row block x channel slice of width)."""
  b, tp, h, kp = q.shape
  w = min(width, kp)
  nk, nsub = kp // w, ctx.chunk // SUB
  da, dat = chunk_dA(v, do, ctx.chunk)
  chunk_slice = pl.BlockSpec((None, ctx.chunk, None, w), lambda b, h, p: (b, p // nk // nsub, h, p % nk))
  chunk_da = pl.BlockSpec((None, ctx.chunk, None, ctx.chunk), lambda b, h, p: (b, p // nk // nsub, h, 0))
  out = pl.BlockSpec((None, SUB, None, w), lambda b, h, p: (b, p // nk, h, p % nk))
  shape = jax.ShapeDtypeStruct((b, tp, h, kp), F32)
  fac = jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt)
  return pl.pallas_call(
      lambda *refs: _bwd_kernel_stored(*refs, ctx=ctx, precise=cfg.precise_dg, nk=nk),
      grid=(b, h, tp // SUB * nk),
      in_specs=[chunk_slice] * 3 + [chunk_da] * 2, out_specs=[out] * 5, out_shape=[shape, shape, shape, fac, fac],
      interpret=interpret, name='gla_intra_bwd',
      **_params(interpret, ctx, cfg.num_warps_intra_bwd, cfg.num_stages_intra_bwd))(q, k, g, da, dat)
