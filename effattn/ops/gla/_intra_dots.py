"""GLA intra-chunk kernels with the diagonal 16-row block by dots about a reference row where that is safe
(KernelConfig.intra_diag / intra_diag_bwd = 'dots'), else by _intra_rows.py's loop over its key rows.

The earlier blocks' keys already go through one dot about the reference row n = r0 (_intra.py's docstring; Yang et
al. 2024, arXiv 2312.06635, Sec. 4.3): e^{G_i - G_j} = e^{G_i - G_n} e^{G_n - G_j}, both factors <= 1 there. For
the diagonal block's own keys j >= n the key factor e^{G_n - G_j} is >= 1 and grows with the block's decay, so
flash-linear-attention's chunk_gla_fwd_A_kernel_intra_sub_intra never factors it and loops over the 16 key rows
instead: a [16, w] exp tile, a product and (backward, dk) a reduction across the tile's rows per key row, which is
most of the intra kernels' time at K = 128. But the factor is bounded by the block's span, the largest per-channel
decay over its 16 rows, max_k (G_{n,k} - G_{n+15,k}) (base 2). Where the span is at most _MAX_SPAN, every factor
lies in [2^-span, 2^span], far inside bf16's and fp32's range, so here:
  forward:  A_ij for keys j < r0 + 16 in the one dot of the earlier keys (the diagonal block's upper triangle
            masked after it): no exps beyond the two factor tiles;
  backward: dq_i += e^{G_i - G_n} sum_j dA_ij (k_j e^{G_n - G_j}), dk_j += e^{G_n - G_j} sum_i dA_ij (q_i e^{G_i -
            G_n}) over the block's strict lower triangle: two [16, 16] x [16, w] dots (split in two bf16 halves
            with `precise`, as the earlier / later blocks' dots are), no reduction across rows. (Folding the block
            into the earlier / later blocks' dots instead needs two [C, w] factor tiles, one per side: ptxas gave
            that 304 bytes of spills at 128 channels against 96 here.)
Each program checks its block's span once (all channels) and takes the rows kernel where it is larger: fast gates
(in the tests, g = logsigmoid(x) / 0.1, a span of ~150) stay exact. The rounding of the factored terms is that of
the earlier blocks' dots (one rounding of each factor to the dot dtype). fp16 inputs always take the rows kernel:
k e^{G_n - G_j} could pass fp16's 65504 at small spans.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32
from effattn.ops.gla._intra_common import (SUB, _block, _dA_blocks, _dd, _ddp, _gated, _other_blocks, _slices,
                                           _write_grads)
from effattn.ops.gla._intra_rows import _bwd_kernel_rows, _fwd_kernel_rows
from effattn.ops.simple_gla.pallas import _f32

_MAX_SPAN = 64.0  # base 2: factors within [2^-64, 2^64]


def _span_ok(g_ref, r0, ctx):
  """Whether the block's rows r0 .. r0+15 decay by at most 2^_MAX_SPAN in every channel (and the dot dtype has
  the range for it)."""
  if ctx.dt == jnp.float16:
    return jnp.zeros((), jnp.bool_)
  return jnp.max(g_ref[pl.ds(r0, 1), :] - g_ref[pl.ds(r0 + SUB - 1, 1), :]) <= _MAX_SPAN


def _fwd_kernel_dots(q_ref, k_ref, g_ref, a_ref, qg_ref, kg_ref, *, ctx, width, unroll=False):
  """_fwd_kernel with the diagonal block's keys in the earlier keys' dot about row r0 where the span allows
  (module docstring), else _fwd_kernel_rows."""
  block = _block(ctx)
  r0, rows, row, crow, col, _ = block

  def dots():
    def body(cs, a):
      qf = _f32(q_ref[rows, cs]) * ctx.scale
      gc, gq, gn = g_ref[:, cs], g_ref[rows, cs], g_ref[pl.ds(r0, 1), cs]
      kfac = jnp.exp2(jnp.where(crow < r0 + SUB, gn - gc, -jnp.inf))  # e^{G_n - G_j}: <= 1 before r0, <= 2^span in
      a = a + _dd(qf * jnp.exp2(gq - gn), _f32(k_ref[:, cs]) * kfac, 1, 1, ctx)
      _gated(qf, _f32(k_ref[rows, cs]), gq, g_ref, cs, ctx, qg_ref, kg_ref)
      return a
    step, n = _slices(q_ref.shape[-1], width, body)
    a = jax.lax.fori_loop(0, n, step, jnp.zeros((SUB, ctx.chunk), F32))
    a_ref[...] = jnp.where(col <= row, a, 0.0).astype(a_ref.dtype)      # keys j <= i only

  def rows_kernel():
    _fwd_kernel_rows(q_ref, k_ref, g_ref, a_ref, qg_ref, kg_ref, ctx=ctx, width=width, unroll=unroll, block=block)

  jax.lax.cond(_span_ok(g_ref, r0, ctx), dots, rows_kernel)


def _bwd_kernel_dots(q_ref, k_ref, g_ref, da_src, dq_ref, dk_ref, x_ref, qg_ref, kg_ref, *, ctx, precise,
                     width, unroll=False):
  """_bwd_kernel with the diagonal block's strict lower triangle by two dots about row r0 where the span allows
  (module docstring), else _bwd_kernel_rows."""
  block = _block(ctx)
  r0, rows, _, crow, col, (si, sj) = block

  def dots():
    da, dat, dd, daii = _dA_blocks(da_src, rows, r0, col, si, sj, ctx)
    dd_strict = jnp.where(si > sj, dd, 0.0)

    def body(cs, carry):
      gq, dq, dk = _other_blocks(q_ref, k_ref, g_ref, cs, r0, rows, crow, da, dat, ctx, precise)
      qb, kb = _f32(q_ref[rows, cs]) * ctx.scale, _f32(k_ref[rows, cs])
      gn = g_ref[pl.ds(r0, 1), cs]
      to_n, from_n = jnp.exp2(gq - gn), jnp.exp2(gn - gq)                  # in [2^-span, 1] and [1, 2^span]
      dq = dq + _ddp(dd_strict, kb * from_n, 1, 0, ctx, precise) * to_n
      dk = dk + _ddp(dd_strict, qb * to_n, 0, 0, ctx, precise) * from_n
      _write_grads(dq, dk, qb, kb, gq, daii, cs, g_ref, ctx, dq_ref, dk_ref, x_ref, qg_ref, kg_ref)
      return carry
    step, n = _slices(q_ref.shape[-1], width, body)
    jax.lax.fori_loop(0, n, step, 0)

  def rows_kernel():
    _bwd_kernel_rows(q_ref, k_ref, g_ref, da_src, dq_ref, dk_ref, x_ref, qg_ref, kg_ref, ctx=ctx,
                     precise=precise, width=width, unroll=unroll, block=block)

  jax.lax.cond(_span_ok(g_ref, r0, ctx), dots, rows_kernel)
