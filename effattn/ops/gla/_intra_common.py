"""Shared pieces of the GLA intra-chunk kernels (_intra.py, _intra_rows.py): the block's indices, channel slices,
the off-diagonal (earlier / later block) terms, the sweeps' factors and the
block specs. The math is in _intra.py's docstring."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.simple_gla.pallas import _dot, _f32

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
  """(r0, rows of the block as a ref index, row indices [SUB, 1] in the chunk, chunk row indices [C, 1] and
  column indices [1, C], (i, j) index pair [SUB, SUB] within the block)."""
  nsub = ctx.chunk // SUB
  r0 = pl.multiple_of((pl.program_id(2) % nsub) * SUB, SUB)
  sidx = jnp.arange(SUB, dtype=jnp.int32)
  cidx = jnp.arange(ctx.chunk, dtype=jnp.int32)
  return r0, pl.ds(r0, SUB), r0 + sidx[:, None], cidx[:, None], cidx[None, :], (sidx[:, None], sidx[None, :])


def _slices(kp, width, body):
  """(step, count) for a fori_loop running body(cs, carry) over the key-channel slices cs (pl.ds) of the given
  width: bounds the [SUB, 8, width] fp32 tiles of the diagonal blocks."""
  w = min(width, kp)

  def step(t, carry):
    return body(pl.ds(pl.multiple_of(t * w, w), w), carry)
  return step, kp // w


def _gated(qf, kb, gq, g_ref, cs, ctx, qg_ref, kg_ref):
  """The sweeps' factors of the block's rows, in the dot dtype: q ⊙ e^G and k ⊙ e^{G_l - G} (G_l the chunk's last
  row), so that the sweeps that round them to it anyway load two tiles instead of q,
  k and fp32 G, and do no exps."""
  g_last = g_ref[pl.ds(ctx.chunk - 1, 1), cs]
  qg_ref[:, cs] = (qf * jnp.exp2(gq)).astype(qg_ref.dtype)
  kg_ref[:, cs] = (kb * jnp.exp2(g_last - gq)).astype(kg_ref.dtype)


def _earlier_keys(q_ref, k_ref, g_ref, cs, a, r0, rows, crow, ctx):
  """(scaled q, G of the block's rows, a plus the keys of earlier blocks' columns): one dot about the reference
  row n = r0, both factors <= 1."""
  qf = _f32(q_ref[rows, cs]) * ctx.scale
  gc, gq, gn = g_ref[:, cs], g_ref[rows, cs], g_ref[pl.ds(r0, 1), cs]
  kfac = jnp.exp2(jnp.where(crow < r0, gn - gc, -jnp.inf))  # e^{G_n - G_j}, keys of earlier blocks
  return qf, gq, a + _dd(qf * jnp.exp2(gq - gn), _f32(k_ref[:, cs]) * kfac, 1, 1, ctx)


class DotsDA(NamedTuple):
  """Where a backward intra kernel gets dA = dO V^T: dots of the chunk's v and dO [C, V] refs (the default)."""
  v_ref: Any
  do_ref: Any


class StoredDA(NamedTuple):
  """... or the chunk's stored dA [C, C] fp32 ref (_intra.chunk_dA; KernelConfig.intra_key_tile_bwd)."""
  da_ref: Any


def _dA_blocks(src: DotsDA | StoredDA, rows, r0, col, si, sj, ctx):
  """dA = dO V^T pieces of the block: rows x earlier keys [SUB, C], later queries x the block's keys transposed
  [SUB, C] (zero elsewhere), the diagonal block [SUB, SUB] and its diagonal [SUB, 1]."""
  r1 = r0 + SUB
  if isinstance(src, StoredDA):
    block = pl.ds(r0, SUB)
    da = jnp.where(col < r0, src.da_ref[rows, :], 0.0)
    dat = jnp.where(col >= r1, jnp.transpose(src.da_ref[:, block]), 0.0)
    dd = src.da_ref[rows, block]
  else:
    v_ref, do_ref = src
    da = jnp.where(col < r0, _dot(do_ref[rows, :], v_ref[...], 1, 1, ctx), 0.0)    # dA_ij, earlier keys j
    dat = jnp.where(col >= r1, _dot(v_ref[rows, :], do_ref[...], 1, 1, ctx), 0.0)  # [j, i]: dA_ij, later queries i
    dd = _dot(do_ref[rows, :], v_ref[rows, :], 1, 1, ctx)                          # the diagonal block [SUB, SUB]
  return da, dat, dd, jnp.sum(jnp.where(si == sj, dd, 0.0), axis=1)[:, None]


def _other_blocks(q_ref, k_ref, g_ref, cs, r0, rows, crow, da, dat, ctx, precise):
  """(G of the block's rows, dq from the keys of earlier blocks, dk from the queries of later blocks)."""
  r1 = r0 + SUB
  g, gq = g_ref[:, cs], g_ref[rows, cs]
  gn, gm = g_ref[pl.ds(r0, 1), cs], g_ref[pl.ds(r1 - 1, 1), cs]
  # one exp tile for both sides: e^{G_n - G_j} on the earlier blocks' rows (keys for dq), e^{G_i - G_m} on the
  # later blocks' rows (queries for dk); da and dat are zero outside those rows, and every entry is <= 1
  fac = jnp.exp2(jnp.where(crow < r0, gn - g, jnp.where(crow >= r1, g - gm, -jnp.inf)))
  dq = _ddp(da, _f32(k_ref[:, cs]) * fac, 1, 0, ctx, precise) * jnp.exp2(gq - gn)
  dk = _ddp(dat, _f32(q_ref[:, cs]) * (fac * ctx.scale), 1, 0, ctx, precise) * jnp.exp2(gm - gq)
  return gq, dq, dk


def _write_grads(dq, dk, qb, kb, gq, daii, cs, g_ref, ctx, dq_ref, dk_ref, x_ref, qg_ref, kg_ref):
  """The strict dq, dk of one channel slice -> the gate term x, dq and dk with the diagonal terms, the factors."""
  x_ref[:, cs] = qb * dq - kb * dk
  dq_ref[:, cs] = (dq + daii * kb).astype(dq_ref.dtype)
  dk_ref[:, cs] = (dk + daii * qb).astype(dk_ref.dtype)
  if qg_ref is not None:  # else the forward's factors are kept for the backward (KernelConfig.save_factors)
    _gated(qb, kb, gq, g_ref, cs, ctx, qg_ref, kg_ref)


def _chunk_spec(ctx, d):
  nsub = ctx.chunk // SUB
  return pl.BlockSpec((None, ctx.chunk, None, d), lambda b, h, p: (b, p // nsub, h, 0))


def _sub_spec(d):
  return pl.BlockSpec((None, SUB, None, d), lambda b, h, p: (b, p, h, 0))
