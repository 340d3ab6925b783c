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
KernelConfig.intra_diag / intra_diag_bwd = 'rows' takes the diagonal block as flash-linear-attention's sub_intra
kernel does instead: a loop over its 16 key rows, each a [16, w] exp tile and a reduction, more exps (256 w) but only
2-D tiles (_intra_rows.py); 'dots' (the default at every head dim, by measurement: pallas.KernelConfig) takes it in
the earlier keys' dots about the block's first row where its decay span allows, else as 'rows' (_intra_dots.py).
Shared pieces: _intra_common.py.
Why not in the sequential chunk sweep (the previous design, a loop over all the chunk's key rows inside it): those
steps are latency-bound (a row load, [16, K] exps and a reduction each) with only B H V / BV programs. Here the work
is parallel over B H T / 16 programs (a 16-step loop each, in 'rows'), so the sweeps do only dots.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32
from effattn.ops.gla import _scan
from effattn.ops.gla._intra_common import (SUB, DotsDA, StoredDA, _block, _chunk_spec, _dA_blocks, _earlier_keys,
                                           _gated, _other_blocks, _slices, _sub_spec, _write_grads)
from effattn.ops.gla._intra_dots import _bwd_kernel_dots, _fwd_kernel_dots
from effattn.ops.gla._intra_rows import _bwd_kernel_rows, _fwd_kernel_rows
from effattn.ops.simple_gla.pallas import _dot, _f32, _params

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


def _bwd_kernel(q_ref, k_ref, g_ref, da_src, dq_ref, dk_ref, x_ref, qg_ref, kg_ref, *, ctx, precise, width):
  """For the block's rows, fp32: the intra-chunk dq (w.r.t. the scaled q) and dk, diagonal terms included, and the
  intra-pair gate term x = q ⊙ dq_strict - k ⊙ dk_strict; and _gated's factors (for the dv sweep). The diagonal
  block in halves of 8 rows as in _fwd_kernel."""
  r0, rows, _, crow, col, (si, sj) = _block(ctx)
  h = SUB // 2
  hi = si >= h
  jp = jnp.arange(h, dtype=jnp.int32)[None, :]
  own = (si - jnp.where(hi, h, 0)) > jp                # [SUB, 8] strictly earlier key of the row's own half
  da, dat, dd, daii = _dA_blocks(da_src, rows, r0, col, si, sj, ctx)
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


def chunk_pieces(q, k, g, ctx, cfg, interpret):
  """The forward's chunk-parallel first half, (G, A, q ⊙ e^G, k ⊙ e^{G_l - G}): the gates kernel's chunk-local
  cumsum G of the raw log decays g [B,Tp,H,Kp] (fp32, base 2), then intra_a on it."""
  gc = _scan.chunk_gates(g, ctx.chunk, interpret, width=cfg.scan_width, num_warps=cfg.num_warps_scan,
                         block_k=cfg.scan_block_k)
  return (gc, *intra_a(q, k, gc, ctx, cfg, interpret))


def intra_a(q, k, g, ctx, cfg, interpret):
  """A [B, Tp, H, C], q ⊙ e^G and k ⊙ e^{G_l - G} [B, Tp, H, Kp], all in the dot dtype (A and the factors are
  rounded to it before their dots anyway); q, k [B,Tp,H,Kp], g = G."""
  b, tp, h, kp = q.shape
  cs = _chunk_spec(ctx, kp)
  fac = jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt)
  width, stages, warps = cfg.intra_fwd_for(kp)
  kernels = {'halves': _fwd_kernel, 'rows': functools.partial(_fwd_kernel_rows, unroll=cfg.intra_unroll),
             'dots': functools.partial(_fwd_kernel_dots, unroll=cfg.intra_unroll)}
  diag = cfg.intra_diag_for(kp)
  if diag not in kernels:
    raise ValueError(f"KernelConfig.intra_diag must be 'halves', 'rows' or 'dots'; got {diag!r}")
  out_specs = [_sub_spec(ctx.chunk), _sub_spec(kp), _sub_spec(kp)]
  out_shape = [jax.ShapeDtypeStruct((b, tp, h, ctx.chunk), ctx.dt), fac, fac]
  return pl.pallas_call(
      functools.partial(kernels[diag], ctx=ctx, width=width), grid=(b, h, tp // SUB),
      in_specs=[cs, cs, cs], out_specs=out_specs, out_shape=out_shape, interpret=interpret,
      name='gla_intra_fwd',
      **_params(interpret, ctx, warps, stages))(q, k, g)


def _dA_kernel(v_ref, do_ref, da_ref, *, ctx):
  """dA = dO V^T [C, C] of one chunk, fp32 (all of it: the intra kernels mask what they read)."""
  da_ref[...] = _dot(do_ref[...], v_ref[...], 1, 1, ctx)


def chunk_dA(v, do, ctx, interpret):
  """[B, Tp, H, C] fp32: each chunk's dO V^T, for the key-tiled backward intra kernel."""
  b, tp, h, vp = v.shape
  c = ctx.chunk
  rows = lambda d: pl.BlockSpec((None, c, None, d), lambda b, h, n: (b, n, h, 0))
  return pl.pallas_call(
      functools.partial(_dA_kernel, ctx=ctx), grid=(b, h, tp // c), in_specs=[rows(vp), rows(vp)],
      out_specs=rows(c), out_shape=jax.ShapeDtypeStruct((b, tp, h, c), F32), interpret=interpret, name='gla_dA',
      **_params(interpret, ctx, 4, 2))(v, do)


def _with_dA(kernel, stored: bool):
  """A backward intra kernel taking its dA from the chunk's v and dO refs (DotsDA) or its stored dA (StoredDA,
  chunk_dA)."""
  def run(q_ref, k_ref, g_ref, *refs, **kwargs):
    src, outs = (StoredDA(refs[0]), refs[1:]) if stored else (DotsDA(*refs[:2]), refs[2:])
    return kernel(q_ref, k_ref, g_ref, src, *outs, *[None] * (5 - len(outs)), **kwargs)  # None: factors unwritten
  return run


def intra_grads(q, k, g, v, do, ctx, cfg, interpret, factors: bool = True):
  """Intra-chunk (dq w.r.t. scaled q, dk; fp32, or the dot dtype with cfg.bf16_intra_grads) and the intra-pair
  gate term (fp32), [B, Tp, H, Kp] each; then, if `factors`, q ⊙ e^G and k ⊙ e^{G_l - G} in the dot dtype. With a
  key tile (cfg.intra_bwd_tiles_for: 64 at K >= 128 by default), one program per (16-row block, key tile) from the
  chunks' dA (chunk_dA), else one per block over all channels, each computing its dA pieces."""
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  shape = jax.ShapeDtypeStruct((b, tp, h, kp), F32)
  fac = jax.ShapeDtypeStruct((b, tp, h, kp), ctx.dt)
  grad = fac if cfg.bf16_intra_grads else shape  # dq, dk (the gate term x stays fp32)
  kernels = {'halves': _bwd_kernel, 'rows': functools.partial(_bwd_kernel_rows, unroll=cfg.intra_unroll),
             'rows2': functools.partial(_bwd_kernel_rows, two_loops=True, unroll=cfg.intra_unroll),
             'dots': functools.partial(_bwd_kernel_dots, unroll=cfg.intra_unroll)}
  diag, width = cfg.intra_bwd_for(kp)
  if diag not in kernels:
    raise ValueError(f"KernelConfig.intra_diag_bwd must be 'halves', 'rows', 'rows2' or 'dots'; got {diag!r}")
  kernel = functools.partial(kernels[diag], ctx=ctx, precise=cfg.precise_dg, width=width)
  tile, warps = cfg.intra_bwd_tiles_for(kp)
  params = _params(interpret, ctx, warps, cfg.num_stages_intra_bwd)
  out_shape = [grad, grad, shape] + [fac, fac] * factors
  if tile is None:
    cs, cv, out = _chunk_spec(ctx, kp), _chunk_spec(ctx, vp), _sub_spec(kp)
    return pl.pallas_call(
        _with_dA(kernel, stored=False), grid=(b, h, tp // SUB), in_specs=[cs, cs, cs, cv, cv],
        out_specs=[out] * len(out_shape), out_shape=out_shape, interpret=interpret, name='gla_intra_bwd', **params)(
            q, k, g, v, do)
  if tile not in (16, 32, 64, 128) or diag == 'rows2':
    raise ValueError(f"KernelConfig.intra_key_tile_bwd must be None, 0, 16, 32, 64 or 128, and intra_diag_bwd not "
                     f"'rows2'; got {tile!r} with {diag!r}")
  tile = min(tile, kp)
  nsub = ctx.chunk // SUB
  chunk_tile = pl.BlockSpec((None, ctx.chunk, None, tile), lambda b, h, p, t: (b, p // nsub, h, t))
  chunk_da = pl.BlockSpec((None, ctx.chunk, None, ctx.chunk), lambda b, h, p, t: (b, p // nsub, h, 0))
  out = pl.BlockSpec((None, SUB, None, tile), lambda b, h, p, t: (b, p, h, t))
  return pl.pallas_call(
      _with_dA(kernel, stored=True), grid=(b, h, tp // SUB, kp // tile), in_specs=[chunk_tile] * 3 + [chunk_da],
      out_specs=[out] * len(out_shape), out_shape=out_shape, interpret=interpret, name='gla_intra_bwd',
      **params)(q, k, g, chunk_dA(v, do, ctx, interpret))
