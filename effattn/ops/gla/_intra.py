"""GLA intra-chunk kernels, parallel over 16-row sub-blocks (Yang et al. 2024, arXiv 2312.06635, Sec. 4.3,
"secondary chunking"; ALGORITHMS.md section 5; the split of flash-linear-attention's chunk_gla).

All the pairwise (per-channel decay) work of GLA lives here, out of the sequential chunk sweeps. One program per
(batch, head, 16-row block r of a chunk of C rows); G is the chunk-local inclusive cumsum of g in base 2 (fp32),
non-increasing along the chunk for gates g <= 0. Rows i, j are chunk indices, r0 = 16 r.

Forward, A_ij = scale sum_k q_ik k_jk e^{G_ik - G_jk} (i >= j), the rows of block r:
  keys j < r0 (earlier blocks): one dot about the reference row n = r0, both factors <= 1,
      A_ij = (q_i ⊙ e^{G_i - G_n}) (k_j ⊙ e^{G_n - G_j})^T;
  keys of block r (the diagonal block), per slice of w key channels, in halves of 8 rows (L, H):
      pairs within a half pairwise, a [16, 8, w] fp32 tile of e^{G_i - G_j} (each row against the keys of its own
      half; the diagonal i = j has no decay, and e^{G_n - G_j} for j > n could overflow, so no dot there),
      the quadrant H x L separable about the row r0 + 8 (a [16, 8, w] product, no exps): 152 w exps instead of
      the 256 w of a [16, 16, w] tile. The pieces go into A's columns by 0/1 selections and a dot with a 0/1
      selection matrix (exact; Triton has no value slices or concatenation).
Backward, the strict (i > j) parts of dq_i = sum_j dA_ij k_j e^{G_i - G_j} and dk_j = sum_i dA_ij q_i e^{G_i - G_j}
(dA = dO V^T, i >= j) for the rows of block r: dq from the keys of earlier blocks about n = r0 as above, dk from
the queries of later blocks about m = r0 + 15 (e^{G_i - G_m} e^{G_m - G_j}, both <= 1), and the diagonal block as
in the forward, dq and dk from the same exps; plus the gate-free diagonal terms dA_ii k_i, dA_ii q_i, and the
intra-pair gate term q ⊙ dq_strict - k ⊙ dk_strict (so that the sweeps need neither). With `precise` (bf16) the
dots take two bf16 halves of each fp32 operand (~2^-16): the gate gradient takes row minus column sums of these
pairs, which must cancel to better than bf16.
Both kernels also write the sweeps' factors q ⊙ e^G and k ⊙ e^{G_l - G} in the dot dtype (_gated).
KernelConfig.intra_diag / intra_diag_bwd = 'rows' (the default at K > 64, by measurement: pallas.KernelConfig) takes
the diagonal block as flash-linear-attention's sub_intra kernel does instead: a loop over its 16 key rows, each a
[16, w] exp tile and a reduction, more exps (256 w) but only 2-D tiles (_fwd_kernel_rows, _bwd_kernel_rows).
Why not in the sequential chunk sweep (the previous design, a loop over all the chunk's key rows inside it): those
steps are latency-bound (a row load, [16, K] exps and a reduction each) with only B H V / BV programs. Here the work
is parallel over B H T / 16 programs (a 16-step loop each, in 'rows'), so the sweeps do only dots.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32, LOG2E
from effattn.ops.gla._scan import sum_rows
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


def _gated(qf, kb, gq, g_ref, cs, ctx, qg_ref, kg_ref, g_last=None):
  """The sweeps' factors of the block's rows, in the dot dtype: q ⊙ e^G and k ⊙ e^{G_l - G} (G_l the chunk's last
  row, read from g_ref unless given), so that the sweeps that round them to it anyway load two tiles instead of q,
  k and fp32 G, and do no exps."""
  if g_last is None:
    g_last = g_ref[pl.ds(ctx.chunk - 1, 1), cs]
  qg_ref[:, cs] = (qf * jnp.exp2(gq)).astype(qg_ref.dtype)
  kg_ref[:, cs] = (kb * jnp.exp2(g_last - gq)).astype(kg_ref.dtype)


def _fwd_kernel(q_ref, k_ref, g_ref, a_ref, qg_ref, kg_ref, *, ctx, width):
  """Rows r0 .. r0+15 of A [C, C] (zero above the diagonal), in a_ref's dtype, and _gated's factors.

  The diagonal block splits once more into halves of 8 rows (L, H): pairs within a half are pairwise, a [16, 8, w]
  exp tile (each row against the 8 keys of its own half, so no exps are spent on the masked upper triangle), and
  the quadrant H x L is separable about the row r0 + 8 (a [16, 8, w] product, no exps): 152 w exps per slice
  instead of 256 w."""
  r0, rows, _, crow, col, (si, sj) = _block(ctx)
  h = SUB // 2
  hi = si >= h                                         # [SUB, 1] rows of the second half
  jp = jnp.arange(h, dtype=jnp.int32)[None, :]         # [1, 8] key index within a half
  own = (si - jnp.where(hi, h, 0)) >= jp               # [SUB, 8] key jp of the row's own half at or before it

  def body(cs, carry):
    a, a_own, a_quad = carry
    qf, gq, a = _earlier_keys(q_ref, k_ref, g_ref, cs, a, r0, rows, crow, ctx)
    g_lo, g_hi = g_ref[pl.ds(r0, h), cs], g_ref[pl.ds(r0 + h, h), cs]
    k_lo, k_hi = _f32(k_ref[pl.ds(r0, h), cs]), _f32(k_ref[pl.ds(r0 + h, h), cs])
    hi3 = hi[:, :, None]
    g_own = jnp.where(hi3, g_hi[None], g_lo[None])     # [SUB, 8, w]: G of the row's own half's keys
    k_own = jnp.where(hi3, k_hi[None], k_lo[None])
    e = jnp.exp2(jnp.where(own[:, :, None], gq[:, None, :] - g_own, -jnp.inf))
    a_own = a_own + jnp.sum(qf[:, None, :] * k_own * e, axis=2)
    g_ref_row = g_ref[pl.ds(r0 + h, 1), cs]
    qq = qf * jnp.exp2(jnp.where(hi, gq - g_ref_row, -jnp.inf))        # second-half rows only
    kk = k_lo * jnp.exp2(g_ref_row - g_lo)
    a_quad = a_quad + jnp.sum(qq[:, None, :] * kk[None, :, :], axis=2)
    _gated(qf, _f32(k_ref[rows, cs]), gq, g_ref, cs, ctx, qg_ref, kg_ref)
    return a, a_own, a_quad

  step, n = _slices(q_ref.shape[-1], width, body)
  z = jnp.zeros((SUB, h), F32)
  a, a_own, a_quad = jax.lax.fori_loop(0, n, step, (jnp.zeros((SUB, ctx.chunk), F32), z, z))
  # [SUB, 8] pieces -> the [SUB, SUB] diagonal block (0/1 selections summed, exact), then into columns r0 .. r0+15
  # by a dot with a 0/1 selection matrix (no value slices or concatenation in Triton; exact: one nonzero per
  # column, and A is stored in the dot dtype anyway)
  jp3, j16 = jp[:, :, None], sj[:, None, :]            # [1, 8, 1], [1, 1, SUB]
  ad = jnp.sum(jnp.where(j16 == jp3 + jnp.where(hi, h, 0)[:, :, None], a_own[:, :, None], 0.0)
               + jnp.where(j16 == jp3, a_quad[:, :, None], 0.0), axis=1)
  sel = (col == r0 + si).astype(ctx.dt)
  a_ref[...] = (a + _dot(ad.astype(ctx.dt), sel, 1, 0, ctx)).astype(a_ref.dtype)


def _earlier_keys(q_ref, k_ref, g_ref, cs, a, r0, rows, crow, ctx, gates=None):
  """(scaled q, G of the block's rows, a plus the keys of earlier blocks' columns): one dot about the reference
  row n = r0, both factors <= 1. gates: (G of the chunk [C, w], of the block's rows [SUB, w], of row r0 [1, w])
  when computed in the kernel (_fwd_kernel_rows with fused gates), else read from g_ref."""
  qf = _f32(q_ref[rows, cs]) * ctx.scale
  gc, gq, gn = gates or (g_ref[:, cs], g_ref[rows, cs], g_ref[pl.ds(r0, 1), cs])
  kfac = jnp.exp2(jnp.where(crow < r0, gn - gc, -jnp.inf))  # e^{G_n - G_j}, keys of earlier blocks
  return qf, gq, a + _dd(qf * jnp.exp2(gq - gn), _f32(k_ref[:, cs]) * kfac, 1, 1, ctx)


def _chunk_gates(g_ref, cs, r0, si, col, ctx):
  """G (base 2, fp32) from the raw log decays of the chunk, in the kernel (what _scan.chunk_gates stores):
  (G of the chunk [C, w], of the block's rows [SUB, w], of row r0 [1, w], of the last row [1, w]). Each is a dot
  of a 0/1 matrix with g split in three bf16 parts (_scan.sum_rows, fp32-exact); the block's rows and the last
  row come from [SUB, C] row selections of the triangle, as values cannot be sliced."""
  x = g_ref[:, cs].astype(F32) * LOG2E
  lower = (col <= jnp.arange(ctx.chunk, dtype=jnp.int32)[:, None]).astype(jnp.bfloat16)
  gq = sum_rows((col <= r0 + si).astype(jnp.bfloat16), x)
  g_last = sum_rows(jnp.ones((SUB, ctx.chunk), jnp.bfloat16), x)  # every row: the chunk's total
  first = lambda y: jnp.sum(jnp.where(si == 0, y, 0.0), axis=0, keepdims=True)
  return sum_rows(lower, x), gq, first(gq), first(g_last)


def _fwd_kernel_rows(q_ref, k_ref, g_ref, a_ref, qg_ref, kg_ref, *g_out, ctx, width, fused_gates=False):
  """_fwd_kernel with the diagonal block as flash-linear-attention's chunk_gla_fwd_A_kernel_intra_sub_intra
  computes it (KernelConfig.intra_diag='rows'): a loop over its 16 key rows j, each a [16, w] exp tile
  e^{G_i - G_j} (i >= j) and a row reduction giving column j. 256 w exps per slice against the halves' 152 w,
  but only 2-D tiles: no [16, 8, w] products, reductions over their middle axis or 0/1 selection sums.
  fused_gates (KernelConfig.fused_gates): g_ref holds the raw log decays g; G is computed here (_chunk_gates) and
  the block's rows of it go to g_out, in place of the separate gates kernel (_scan.chunk_gates)."""
  r0, rows, _, crow, col, (si, sj) = _block(ctx)

  def body(cs, carry):
    a, ad = carry
    if fused_gates:
      gc, gq, gn, g_last = _chunk_gates(g_ref, cs, r0, si, col, ctx)
      g_out[0][:, cs] = gq
      g_key = lambda j: jnp.sum(jnp.where(si == j, gq, 0.0), axis=0, keepdims=True)  # G of key row r0 + j
      qf, gq, a = _earlier_keys(q_ref, k_ref, g_ref, cs, a, r0, rows, crow, ctx, (gc, gq, gn))
    else:
      g_last = None
      g_key = lambda j: g_ref[pl.ds(r0 + j, 1), cs]
      qf, gq, a = _earlier_keys(q_ref, k_ref, g_ref, cs, a, r0, rows, crow, ctx)

    def column(j, ad):
      e = jnp.exp2(jnp.where(si >= j, gq - g_key(j), -jnp.inf))                       # [SUB, w], <= 1
      c = jnp.sum(qf * _f32(k_ref[pl.ds(r0 + j, 1), cs]) * e, axis=1, keepdims=True)  # [SUB, 1]: A_ij of key j
      return ad + jnp.where(sj == j, c, 0.0)
    ad = jax.lax.fori_loop(0, SUB, column, ad)
    _gated(qf, _f32(k_ref[rows, cs]), gq, g_ref, cs, ctx, qg_ref, kg_ref, g_last)
    return a, ad

  step, n = _slices(q_ref.shape[-1], width, body)
  a, ad = jax.lax.fori_loop(0, n, step, (jnp.zeros((SUB, ctx.chunk), F32), jnp.zeros((SUB, SUB), F32)))
  sel = (col == r0 + si).astype(ctx.dt)  # columns r0 .. r0+15, as in _fwd_kernel
  a_ref[...] = (a + _dot(ad.astype(ctx.dt), sel, 1, 0, ctx)).astype(a_ref.dtype)


def _bwd_kernel(q_ref, k_ref, g_ref, v_ref, do_ref, dq_ref, dk_ref, x_ref, qg_ref, kg_ref, *, ctx, precise, width):
  """For the block's rows, fp32: the intra-chunk dq (w.r.t. the scaled q) and dk, diagonal terms included, and the
  intra-pair gate term x = q ⊙ dq_strict - k ⊙ dk_strict; and _gated's factors (for the dv sweep). The diagonal
  block in halves of 8 rows as in _fwd_kernel."""
  r0, rows, _, crow, col, (si, sj) = _block(ctx)
  h = SUB // 2
  hi = si >= h
  jp = jnp.arange(h, dtype=jnp.int32)[None, :]
  own = (si - jnp.where(hi, h, 0)) > jp                # [SUB, 8] strictly earlier key of the row's own half
  da, dat, dd, daii = _dA_blocks(v_ref, do_ref, rows, r0, col, si, sj, ctx)
  # dd's own-half part [SUB, 8] (masked strict) and its H x L quadrant [SUB, 8] (zero on the first half's rows)
  jp3, j16 = jp[:, :, None], sj[:, None, :]
  dd_own = jnp.where(own, jnp.sum(jnp.where(j16 == jp3 + jnp.where(hi, h, 0)[:, :, None], dd[:, None, :], 0.0),
                                  axis=2), 0.0)
  dd_quad = jnp.where(hi, jnp.sum(jnp.where(j16 == jp3, dd[:, None, :], 0.0), axis=2), 0.0)
  to_rows = si == jp + jnp.where(hi, h, 0)             # [SUB, 8]: row si is key jp of its half

  def body(cs, carry):
    gq, dq, dk = _other_blocks(q_ref, k_ref, g_ref, cs, r0, rows, crow, da, dat, ctx, precise)
    qb, kb = _f32(q_ref[rows, cs]) * ctx.scale, _f32(k_ref[rows, cs])
    g_lo, g_hi = g_ref[pl.ds(r0, h), cs], g_ref[pl.ds(r0 + h, h), cs]
    k_lo, k_hi = _f32(k_ref[pl.ds(r0, h), cs]), _f32(k_ref[pl.ds(r0 + h, h), cs])
    hi3 = hi[:, :, None]
    w = dd_own[:, :, None] * jnp.exp2(jnp.where(own[:, :, None], gq[:, None, :]
                                                - jnp.where(hi3, g_hi[None], g_lo[None]), -jnp.inf))
    dq = dq + jnp.sum(w * jnp.where(hi3, k_hi[None], k_lo[None]), axis=1)
    u = w * qb[:, None, :]                                                        # [i, jp, k]
    dk_lo, dk_hi = jnp.sum(jnp.where(hi3, 0.0, u), axis=0), jnp.sum(jnp.where(hi3, u, 0.0), axis=0)  # [8, w]
    g8 = g_ref[pl.ds(r0 + h, 1), cs]
    aq = jnp.exp2(jnp.where(hi, gq - g8, -jnp.inf))                               # second-half rows only
    bk = jnp.exp2(g8 - g_lo)
    dq = dq + aq * jnp.sum(dd_quad[:, :, None] * (k_lo * bk)[None], axis=1)
    dk_lo = dk_lo + bk * jnp.sum(dd_quad[:, :, None] * (qb * aq)[:, None, :], axis=0)
    dk = dk + jnp.sum(jnp.where(to_rows[:, :, None], jnp.where(hi3, dk_hi[None], dk_lo[None]), 0.0), axis=1)
    _write_grads(dq, dk, qb, kb, gq, daii, cs, g_ref, ctx, dq_ref, dk_ref, x_ref, qg_ref, kg_ref)
    return carry

  step, n = _slices(q_ref.shape[-1], width, body)
  jax.lax.fori_loop(0, n, step, 0)


def _dA_blocks(v_ref, do_ref, rows, r0, col, si, sj, ctx):
  """dA = dO V^T pieces of the block: rows x earlier keys [SUB, C], later queries x the block's keys transposed
  [SUB, C] (zero elsewhere), the diagonal block [SUB, SUB] and its diagonal [SUB, 1]."""
  r1 = r0 + SUB
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
  dq_ref[:, cs] = dq + daii * kb
  dk_ref[:, cs] = dk + daii * qb
  _gated(qb, kb, gq, g_ref, cs, ctx, qg_ref, kg_ref)


def _bwd_kernel_rows(q_ref, k_ref, g_ref, v_ref, do_ref, dq_ref, dk_ref, x_ref, qg_ref, kg_ref, *, ctx, precise,
                     width):
  """_bwd_kernel with the diagonal block by a loop over its 16 key rows j (KernelConfig.intra_diag_bwd='rows'):
  w_ij = dA_ij e^{G_i - G_j} (i > j) as a [16, w] tile, dq_i += w_ij k_j, dk_j = sum_i w_ij q_i (a reduction over
  the rows, placed into row j). 2-D tiles only, as _fwd_kernel_rows."""
  r0, rows, _, crow, col, (si, sj) = _block(ctx)
  da, dat, dd, daii = _dA_blocks(v_ref, do_ref, rows, r0, col, si, sj, ctx)
  dd_strict = jnp.where(si > sj, dd, 0.0)

  def body(cs, carry):
    gq, dq, dk = _other_blocks(q_ref, k_ref, g_ref, cs, r0, rows, crow, da, dat, ctx, precise)
    qb, kb = _f32(q_ref[rows, cs]) * ctx.scale, _f32(k_ref[rows, cs])

    def key_row(j, acc):
      dq, dk = acc
      key = pl.ds(r0 + j, 1)
      dd_j = jnp.sum(jnp.where(sj == j, dd_strict, 0.0), axis=1, keepdims=True)    # [SUB, 1]: dA_ij, i > j
      w = dd_j * jnp.exp2(jnp.where(si > j, gq - g_ref[key, cs], -jnp.inf))        # [SUB, w], exps <= 1
      dq = dq + w * _f32(k_ref[key, cs])
      return dq, dk + jnp.where(si == j, jnp.sum(w * qb, axis=0, keepdims=True), 0.0)
    dq, dk = jax.lax.fori_loop(0, SUB, key_row, (dq, dk))
    _write_grads(dq, dk, qb, kb, gq, daii, cs, g_ref, ctx, dq_ref, dk_ref, x_ref, qg_ref, kg_ref)
    return carry

  step, n = _slices(q_ref.shape[-1], width, body)
  jax.lax.fori_loop(0, n, step, 0)


def _chunk_spec(ctx, d):
  nsub = ctx.chunk // SUB
  return pl.BlockSpec((None, ctx.chunk, None, d), lambda b, h, p: (b, p // nsub, h, 0))


def _sub_spec(d):
  return pl.BlockSpec((None, SUB, None, d), lambda b, h, p: (b, p, h, 0))


def intra_a_fused_gates(q, k, g, ctx, cfg, interpret):
  """(A, q ⊙ e^G, k ⊙ e^{G_l - G} as intra_a, and G [B, Tp, H, Kp] fp32) from the raw log decays g: the 'rows'
  forward kernel computes G itself (KernelConfig.fused_gates)."""
  b, tp, h, kp = q.shape
  cs = _chunk_spec(ctx, kp)
  fac = jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt)
  width, stages = cfg.intra_fwd_for(kp)
  return pl.pallas_call(
      functools.partial(_fwd_kernel_rows, ctx=ctx, width=width, fused_gates=True), grid=(b, h, tp // SUB),
      in_specs=[cs, cs, cs], out_specs=[_sub_spec(ctx.chunk), _sub_spec(kp), _sub_spec(kp), _sub_spec(kp)],
      out_shape=[jax.ShapeDtypeStruct((b, tp, h, ctx.chunk), ctx.dt), fac, fac,
                 jax.ShapeDtypeStruct((b, tp, h, kp), F32)], interpret=interpret,
      name='gla_intra_fwd', **_params(interpret, ctx, cfg.num_warps_intra, stages))(q, k, g)


def intra_a(q, k, g, ctx, cfg, interpret):
  """A [B, Tp, H, C], q ⊙ e^G and k ⊙ e^{G_l - G} [B, Tp, H, Kp], all in the dot dtype (A and the factors are
  rounded to it before their dots anyway); q, k [B,Tp,H,Kp], g = G."""
  b, tp, h, kp = q.shape
  cs = _chunk_spec(ctx, kp)
  fac = jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt)
  width, stages = cfg.intra_fwd_for(kp)
  kernels = {'halves': _fwd_kernel, 'rows': _fwd_kernel_rows}
  diag = cfg.intra_diag_for(kp)
  if diag not in kernels:
    raise ValueError(f"KernelConfig.intra_diag must be 'halves' or 'rows'; got {diag!r}")
  return pl.pallas_call(
      functools.partial(kernels[diag], ctx=ctx, width=width), grid=(b, h, tp // SUB),
      in_specs=[cs, cs, cs], out_specs=[_sub_spec(ctx.chunk), _sub_spec(kp), _sub_spec(kp)],
      out_shape=[jax.ShapeDtypeStruct((b, tp, h, ctx.chunk), ctx.dt), fac, fac], interpret=interpret,
      name='gla_intra_fwd',
      **_params(interpret, ctx, cfg.num_warps_intra, stages))(q, k, g)


def intra_grads(q, k, g, v, do, ctx, cfg, interpret):
  """Intra-chunk (dq w.r.t. scaled q, dk) and the intra-pair gate term, fp32 [B, Tp, H, Kp] each; q ⊙ e^G and
  k ⊙ e^{G_l - G} in the dot dtype."""
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  cs, cv, out = _chunk_spec(ctx, kp), _chunk_spec(ctx, vp), _sub_spec(kp)
  shape = jax.ShapeDtypeStruct((b, tp, h, kp), F32)
  fac = jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt)
  kernels = {'halves': _bwd_kernel, 'rows': _bwd_kernel_rows}
  diag, width = cfg.intra_bwd_for(kp)
  if diag not in kernels:
    raise ValueError(f"KernelConfig.intra_diag_bwd must be 'halves' or 'rows'; got {diag!r}")
  return pl.pallas_call(
      functools.partial(kernels[diag], ctx=ctx, precise=cfg.precise_dg, width=width),
      grid=(b, h, tp // SUB),
      in_specs=[cs, cs, cs, cv, cv], out_specs=[out] * 5, out_shape=[shape, shape, shape, fac, fac],
      interpret=interpret, name='gla_intra_bwd',
      **_params(interpret, ctx, cfg.num_warps_intra_bwd, cfg.num_stages_intra_bwd))(q, k, g, v, do)
