"""Pallas kernels for chunkwise GLA, forward and backward (Yang et al. 2024, arXiv 2312.06635, Sec. 4.2-4.3;
ALGORITHMS.md sections 5 and 0), in the Lightning Attention-2 layout of simple_gla/pallas.py.

Layout: one program per (batch, head, value tile) walks the chunks with a fori_loop and keeps the fp32 state
[K, BV] on chip (Qin et al. 2024, Lightning Attention-2, Alg. 1); no chunk state goes to memory. Per chunk c
of C rows (G = chunk-local inclusive cumsum of g [C, K], R_j = sum_{l>j} g_l, G_C = sum_l g_l; q scaled):
  O_c     = (Q_c ⊙ e^G) S_c + A V_c,              A_ij = sum_k q_ik k_jk e^{G_ik - G_jk}  (i >= j)
  S_{c+1} = diag(e^{G_C}) S_c + (K_c ⊙ e^R)^T V_c
Intra part (the main difficulty): the per-channel decay cannot be factored as (Q e^G)(K e^-G)^T over a chunk
(e^-G overflows), so some pairs need one exp per (i, j, k). Chunk C = 16, split into two half-blocks of 8
rows: the quadrant (rows 8..15) x (columns 0..7) is one dot of factors <= 1 about the reference row 7,
A = (Q ⊙ e^{G-G_7})(K ⊙ e^{G_7-G})^T (secondary chunking, ALGORITHMS.md section 5), the two 8 x 8 diagonal
blocks are pairwise: 7 steps, step j pairs every row with key j of its own half ([C, K] exps, masked to the
strict lower triangle; the diagonal has no decay). Cost: (7 + 2) exps per row and channel (+ 2 for the
inter-chunk factors). Why not FLA's chunk 64 with sub-chunks of 16: its diagonal sub-blocks cost 16 and its
off-diagonal factors 4 per row (more exps, and every masked half-evaluated pair costs too), its [64, K] fp32
tiles leave few registers for the [K, V] states (simple_gla's chunk-64 kernels already hit the 255-register
cap), and Triton has no value slicing, so each of its sub-blocks needs its own masked copies. The inter-chunk
dots do the same flops at C = 16 (as M = 16 tensor-core tiles); the state update runs 4x as often.
config.chunk = 32 or 64 also works (half-blocks of 16 or 32, pairwise cost growing with them); for tuning.
The key rows of k each step needs are loaded as [1, K] rows and its exponent is carried from step to step:
nothing is extracted from tiles by masked reductions (those cross warps on the GPU).
Not yet timed on a GPU (none was at hand): KernelConfig's defaults are guesses, tune_candidates lists the rest.

Backward (custom VJP), sweeps in one launch (grid axis 2 picks the role), no stored state:
  dq  (forward in time, per key tile, S recomputed):  dQ = sum_j dA_ij k_j e^{G_i-G_j} + e^G ⊙ dO S_c^T
  dk  (backward in time, per key tile):               dK = sum_i dA_ij q_i e^{G_i-G_j} + e^R ⊙ V dS_{c+1}^T
  dv  (backward in time, per value tile, all of K):   dV = A^T dO + (K ⊙ e^R) dS_{c+1}
  dA = dO V^T (i >= j); dS_c = diag(e^{G_C}) dS_{c+1} + (Q ⊙ e^G)^T dO, dS_N = d final_state, dh0 = dS_0.
By default (fuse_dkv) dk and dv are one sweep over all of K and V, so the backward evaluates the pairwise exps
twice per chunk (dq sweep, dk/dv sweep), each time for everything that needs them. The d final_state terms of
the dk sweep, W = V dS_N^T, are one jnp einsum beforehand (keeps an fp32 [K, V] dS_N out of registers).

Gate gradient (ALGORITHMS.md section 0, per channel): dg_l = sum_{t>=l} (q_t dq_t - k_t dk_t) + sum_v S_T dS_T,
a sum over query-key pairs (i, j) with j < l <= i in which pairs with both ends >= l cancel. Regrouped as in
simple_gla/pallas.py so that nothing large cancels in bf16:
  - intra-chunk pairs, P_ijk = q_ik dA_ij k_jk e^{G_ik-G_jk} (i > j): row sum minus column sum per position,
    q ⊙ dQ_strict - k ⊙ dK_strict in fp32 (the gate-free diagonal never enters; the quadrant dots are precise);
  - cross-chunk pairs through the state: q ⊙ (dO S^T) e^G and k ⊙ (V dS_q^T) e^R, with S and dS_q used to ~2^-17
    in bf16 (`precise_dg`: each fp32 operand split into two bf16 dot operands);
  - keys paired with d final_state, E_j = e^{sum_{l>j} g} k_j (v_j dS_T), summed forward (dS = dS_q + λ dS_T, λ
    the per-channel decay to the end), plus e^{sum g} sum_v h0 dS_T.
The cumulative sums run in the kernel within chunks (dots with 0/1 matrices) and, for the key terms, across
chunks in the reverse sweep; jnp adds only the sums of [B, N, H, K] chunk totals, in one elementwise pass over
the two [B, T, H, K] fp32 arrays the kernel writes (no cumsum over T of full-size arrays in XLA).

Chunk cumsums of g are fp32 running sums of g rows loaded one at a time (see _Gates); gates are used in base 2
(one MUFU.EX2 per exp).
Triton lowering constraints as in simple_gla/pallas.py: no value slices, no cumsum, power-of-two blocks.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.dispatch import default_backend
from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import LOG2E as _LOG2E
from effattn.ops.common.pallas_triton import next_pow2 as _next_pow2
from effattn.ops.common.pallas_triton import pad_axis as _pad_axis
from effattn.ops.simple_gla.pallas import (
  _MAX_HEAD_DIM,
  _Ctx,
  _dot,
  _dot_f32_lhs,
  _dot_f32_rhs,
  _f32,
  _params,
)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Tile widths and Triton launch parameters: untuned first guesses (no GPU was at hand; tune_candidates).

  Compiled offline for sm_90 (jax 0.10.2's Triton IR at B=4, T=4096, H=16, K=V=128 bf16, triton 3.6, ptxas -v):
  forward 227 registers at 4 warps, 184 at 8, no spills; fused backward 255 registers with ~0.8 KB of spills
  at 8 warps (4.3 KB at 4; the dk/dv role's [K, V] fp32 state), 72 KB shared memory; split backward
  (fuse_dkv False, 64-wide tiles) 16 bytes at 8 warps.
  """
  chunk: int = 16            # rows per chunk (16, 32 or 64); the pairwise cost per row grows with it, and fp32
                             # accuracy at extreme gates drops (dg 1.3e-6 at 16, 7.9e-6 at 64; n = 0.1)
  block_v: int = 64          # forward: value-tile width of each program
  block_k_dq: int = 128      # backward dq sweeps: key-tile width
  fuse_dkv: bool = True      # backward: one dk + dv sweep over all of K and V (fewest pairwise exps, but
                             # [K, V] fp32 states); else dk sweeps per key tile and dv sweeps per value tile
  block_k_bwd: int = 64      # backward dk sweeps (fuse_dkv False): key-tile width
  block_v_bwd: int = 64      # backward dv sweeps (fuse_dkv False): value-tile width
  num_warps: int = 8         # one program per SM at B H (V / block_v) ~ 132: 8 warps = 2 per scheduler
  num_stages: int = 2
  num_warps_bwd: int = 8
  num_stages_bwd: int = 2
  precise_dg: bool = True    # bf16: gate-gradient terms to ~2^-17 (two bf16 dots per fp32 operand)


DEFAULT_CONFIG = KernelConfig()


# ----------------------------------------------------------------------------------------------------
# In-kernel helpers.

class _Gates:
  """Chunk-local log decays (base 2) of the chunk at row `start` and the pair structure of its intra part.

  G is built from running sums of g rows loaded one at a time (no cumsum in Triton, and no masked reductions
  to extract rows, which cross warps on the GPU). R_j = sum_{l>j} g_l likewise in fp32 mode (for fp32's 1e-5),
  else G_C - G.

  The chunk's lower triangle splits into two diagonal half-blocks (p = C/2 rows each) and the quadrant
  (rows >= p) x (columns < p). The quadrant is one dot of factors <= 1 about the reference row p-1 (secondary
  chunking, ALGORITHMS.md section 5): A_ij = (q_i e^{G_i-G_ref}) (k_j e^{G_ref-G_j})^T. The half-blocks are
  pairwise: step j pairs every row with the key of sub-index j of its own half, strictly below the diagonal;
  the diagonal itself has no decay.
  """

  def __init__(self, g_ref, start, ks, ctx: _Ctx):
    c = ctx.chunk
    self.p = p = c // 2
    self.g_ref, self.start, self.ks = g_ref, start, ks
    idx = jnp.arange(c, dtype=jnp.int32)
    self.row, self.col = idx[:, None], idx[None, :]
    acc = self.g_first = self.g_row(0)                            # G_r, [1, K]
    self.G = jnp.where(self.row == 0, acc, jnp.zeros((c, acc.shape[-1]), _F32))
    for r in range(1, c):
      acc = acc + self.g_row(r)
      self.G = jnp.where(self.row == r, acc, self.G)
      if r == p - 1:
        ref = acc
      if r == p:
        self.g_mid = acc
    self.gl = jnp.sum(acc, axis=0)                                # G_C [K]
    if ctx.fp32:
      racc = jnp.zeros_like(acc)
      self.R = jnp.zeros_like(self.G)
      for r in range(c - 1, -1, -1):
        self.R = jnp.where(self.row == r, racc, self.R)
        if r:
          racc = racc + self.g_row(r)
    else:
      self.R = acc - self.G
    self.lo = self.row < p                                        # rows of the first half
    self.sub = jnp.where(self.lo, self.row, self.row - p)         # row index within its half
    self.qfac = jnp.exp2(jnp.where(self.lo, -jnp.inf, self.G - ref))  # e^{G_i - G_ref}, second half
    self.kfac = jnp.exp2(jnp.where(self.lo, ref - self.G, -jnp.inf))  # e^{G_ref - G_j}, first half

  def load_row(self, ref, r):
    """Row start + r of ref (this program's key tile), fp32 [1, K]."""
    return _f32(ref[pl.ds(self.start + r, 1), self.ks])

  def g_row(self, r):
    return self.load_row(self.g_ref, r) * _LOG2E

  def key_rows(self, ref, j):
    """[C, K]: on each row, the row of ref of the key it pairs with at step j (sub-index j of its half)."""
    return jnp.where(self.lo, self.load_row(ref, j), self.load_row(ref, self.p + j))

  def fold(self, body, init):
    """Runs st = body(j, e, st) for j = 0 .. p-2, e = [C, K] e^{G_i - G_key} on rows of sub-index > j (else 0).
    The exponent sum_{key < l <= i} g_l is carried from step to step (minus the next key's g row); a fori_loop,
    not unrolled, to bound the live registers."""
    def step(j, carry):
      x, st = carry
      st = body(j, jnp.exp2(jnp.where(self.sub > j, x, -jnp.inf)), st)
      return x - jnp.where(self.lo, self.g_row(j + 1), self.g_row(self.p + j + 1)), st
    x = self.G - jnp.where(self.lo, self.g_first, self.g_mid)
    return jax.lax.fori_loop(0, self.p - 1, step, (x, init))[1]

  def _at_key(self, j):
    return self.col == jnp.where(self.lo, j, self.p + j)

  def take(self, m, j):
    """m [C, C] at (i, column of i's key at step j), as [C, 1]."""
    return jnp.sum(jnp.where(self._at_key(j), m, 0.0), axis=1)[:, None]

  def put(self, m, j, val):
    """m [C, C] with val [C, 1] written at (i, column of i's key at step j) for rows of sub-index > j."""
    return jnp.where(self._at_key(j) & (self.sub > j), val, m)

  def add_keys(self, x, j, contrib):
    """x [C, K] plus contrib [C(query), K] summed over each half's queries into that half's key row."""
    top = jnp.sum(jnp.where(self.lo, contrib, 0.0), axis=0)[None, :]
    bot = jnp.sum(jnp.where(self.lo, 0.0, contrib), axis=0)[None, :]
    return x + jnp.where(self.row == j, top, jnp.where(self.row == self.p + j, bot, 0.0))

  def diag(self, m):
    """diag of m [C, C] as [C, 1]."""
    return jnp.sum(jnp.where(self.row == self.col, m, 0.0), axis=1)[:, None]

  def intra_a(self, qf, kf, k_ref, ctx):
    """A [C, C] fp32 (i >= j), from qf (scaled) and kf [C, K] fp32."""
    a = _dd(qf * self.qfac, kf * self.kfac, 1, 1, ctx)
    a = jnp.where(self.row == self.col, jnp.sum(qf * kf, axis=1)[:, None], a)
    return self.fold(lambda j, e, a: self.put(a, j, jnp.sum(qf * e * self.key_rows(k_ref, j), axis=1)[:, None]),
                     a)

  def intra_grads(self, da, qf, kf, k_ref, ctx, precise):
    """Strictly-lower parts of dQ = (dA ⊙ decay) K and dK = (dA ⊙ decay)^T Q, per channel (da: dO V^T)."""
    dq = _ddp(da, kf * self.kfac, 1, 0, ctx, precise) * self.qfac
    dk = _ddp(da, qf * self.qfac, 0, 0, ctx, precise) * self.kfac
    def body(j, e, st):
      dq, dk = st
      t = self.take(da, j) * e
      return dq + t * self.key_rows(k_ref, j), self.add_keys(dk, j, t * qf)
    return self.fold(body, (dq, dk))

  def intra_a_dk(self, qf, kf, k_ref, da, ctx, want_a=True):
    """intra_a (None unless want_a) and the full intra dK (diagonal included), one pass over the exps."""
    qq = qf * self.qfac
    a = None
    if want_a:
      a = _dd(qq, kf * self.kfac, 1, 1, ctx)
      a = jnp.where(self.row == self.col, jnp.sum(qf * kf, axis=1)[:, None], a)
    dk = _dd(da, qq, 0, 0, ctx) * self.kfac + self.diag(da) * qf
    def body(j, e, st):
      a, dk = st
      qe = qf * e
      if want_a:
        a = self.put(a, j, jnp.sum(qe * self.key_rows(k_ref, j), axis=1)[:, None])
      return a, self.add_keys(dk, j, self.take(da, j) * qe)
    return self.fold(body, (a, dk))


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


def _local_cumsum(x, gt, ctx, precise, reverse):
  """Chunk-local cumulative sum of x [C, K] fp32 over rows: inclusive from the end if reverse, else exclusive
  from the start; a dot with a 0/1 matrix (x to ~2^-17 in bf16 if precise)."""
  mask = gt.col >= gt.row if reverse else gt.col < gt.row
  return _dot_f32_rhs(mask.astype(ctx.dt), x, 1, 0, ctx, precise)


# ----------------------------------------------------------------------------------------------------
# Forward: grid (B, H, Vp / BV).

def _fwd_kernel(q_ref, k_ref, v_ref, g_ref, *rest, ctx: _Ctx, has_h0: bool):
  h0_ref, o_ref, ht_ref = rest if has_h0 else (None, *rest)
  tp, kp = q_ref.shape
  bv = v_ref.shape[-1]
  chunk, scale = ctx.chunk, ctx.scale
  s0 = h0_ref[...].astype(_F32) if has_h0 else jnp.zeros((kp, bv), _F32)

  def body(c, s):
    start = pl.multiple_of(c * chunk, chunk)
    sl = pl.ds(start, chunk)
    qc, kc, vc = q_ref[sl, :], k_ref[sl, :], v_ref[sl, :]
    gt = _Gates(g_ref, start, slice(None), ctx)
    qf, kf = _f32(qc) * scale, _f32(kc)
    a = gt.intra_a(qf, kf, k_ref, ctx)
    o = _dd(qf * jnp.exp2(gt.G), s, 1, 0, ctx) + _dot_f32_lhs(a, vc, 1, 0, ctx, False)
    o_ref[sl, :] = o.astype(o_ref.dtype)
    kd = kf * jnp.exp2(gt.R)
    return jnp.exp2(gt.gl)[:, None] * s + _dot_f32_lhs(kd, vc, 0, 0, ctx, False)

  ht_ref[...] = jax.lax.fori_loop(0, tp // chunk, body, s0)


# ----------------------------------------------------------------------------------------------------
# Backward roles. Refs hold whole [Tp, Kp] / [Tp, Vp] rows of one (batch, head).

def _dq_role(kt, q_ref, k_ref, v_ref, do_ref, g_ref, h0_ref, dq_ref, dgq_ref, dgq_tot_ref, *, ctx, bk, precise):
  """Forward sweep for key tile kt: dq and the query-side gate terms x = rowsum(P) - colsum(P) + q ⊙ dq_inter,
  as their chunk-local reverse cumsum and chunk totals (the sum over later chunks is added in jnp)."""
  tp = q_ref.shape[0]
  vp = v_ref.shape[-1]
  chunk, scale = ctx.chunk, ctx.scale
  ks = pl.ds(pl.multiple_of(kt * bk, bk), bk)
  s0 = h0_ref[ks, :].astype(_F32) if h0_ref is not None else jnp.zeros((bk, vp), _F32)

  def body(c, s):
    start = pl.multiple_of(c * chunk, chunk)
    sl = pl.ds(start, chunk)
    qc, kc = q_ref[sl, ks], k_ref[sl, ks]
    vc, doc = v_ref[sl, :], do_ref[sl, :]
    gt = _Gates(g_ref, start, ks, ctx)
    qf, kf = _f32(qc) * scale, _f32(kc)
    da = _dot(doc, vc, 1, 1, ctx)                         # dO V^T [C(i), C(j)]
    dq_s, dk_s = gt.intra_grads(da, qf, kf, k_ref, ctx, precise)  # strictly-lower pairs only
    dq_inter = _dot_f32_rhs(doc, s, 1, 1, ctx, precise) * jnp.exp2(gt.G)  # e^G ⊙ dO S^T
    dq_ref[sl, ks] = ((dq_s + gt.diag(da) * kf + dq_inter) * scale).astype(dq_ref.dtype)
    # intra pairs: rowsum(P) - colsum(P), P_ijk = q_ik dA_ij k_jk e^{G_ik-G_jk} (i > j; the diagonal cancels)
    x = qf * dq_s - kf * dk_s + qf * dq_inter
    dgq_ref[sl, ks] = _local_cumsum(x, gt, ctx, precise, reverse=True)
    dgq_tot_ref[pl.ds(c, 1), ks] = jnp.sum(x, axis=0)[None, :]
    kd = kf * jnp.exp2(gt.R)
    return jnp.exp2(gt.gl)[:, None] * s + _dot_f32_lhs(kd, vc, 0, 0, ctx, precise)

  jax.lax.fori_loop(0, tp // chunk, body, s0)


def _dk_role(kt, q_ref, k_ref, v_ref, do_ref, g_ref, dht_ref, dhtd_ref, w_ref, dk_ref, dgk_ref, dge_tot_ref,
             dh0_ref, dv_ref, *, ctx, bk, precise):
  """Backward sweep for key tile kt (all of V): dk, dh0 rows and the key-side gate terms k ⊙ dk_q (pairs with
  later queries; reverse cumsum over T, carried) and E (pairs with d final_state; chunk-local exclusive cumsum
  and chunk totals), the two written as one array (E part minus k part). With dv_ref (fused, bk = K) also dv,
  from the same pairwise exps.

  The state gradient is carried as dS = dS_q + λ dS_T (λ [bk]: the decay to the end). The dS_T terms come from
  outside, so that no fp32 [K, V] copy of dS_T sits in registers: W = V dS_T^T [Tp, K] (w_ref, to ~2^-17) and
  dS_T in the dot dtype (dhtd_ref, for dv)."""
  tp = q_ref.shape[0]
  vp = v_ref.shape[-1]
  chunk = ctx.chunk
  n = tp // chunk
  ks = pl.ds(0, bk) if isinstance(kt, int) else pl.ds(pl.multiple_of(kt * bk, bk), bk)  # (fused: kt = 0)

  def body(i, carry):
    dsq, lam, acc = carry
    start = pl.multiple_of((n - 1 - i) * chunk, chunk)
    sl = pl.ds(start, chunk)
    qc, kc, vc, doc = q_ref[sl, ks], k_ref[sl, ks], v_ref[sl, :], do_ref[sl, :]
    gt = _Gates(g_ref, start, ks, ctx)
    qf, kf = _f32(qc) * ctx.scale, _f32(kc)
    da = _dot(doc, vc, 1, 1, ctx)
    a, dk_intra = gt.intra_a_dk(qf, kf, k_ref, da, ctx, want_a=dv_ref is not None)
    er = jnp.exp2(gt.R)
    kd = kf * er
    if dv_ref is not None:
      dv = (_dot_f32_lhs(a, doc, 0, 0, ctx, False) + _dd(kd, dsq, 1, 0, ctx)
            + _dot_f32_lhs(kd * lam[None, :], dhtd_ref[...], 1, 0, ctx, False))
      dv_ref[sl, :] = dv.astype(dv_ref.dtype)
    dk_q = _dot_f32_rhs(vc, dsq, 1, 1, ctx, precise)     # V dS_q^T
    wl = w_ref[sl, ks] * lam[None, :]                     # λ ⊙ V dS_T^T
    dk_ref[sl, ks] = (dk_intra + (dk_q + wl) * er).astype(dk_ref.dtype)
    xk, xe = kd * dk_q, kd * wl
    dgk_ref[sl, ks] = (_local_cumsum(xe, gt, ctx, precise, reverse=False)
                       - (_local_cumsum(xk, gt, ctx, precise, reverse=True) + acc[None, :]))
    dge_tot_ref[pl.ds(n - 1 - i, 1), ks] = jnp.sum(xe, axis=0)[None, :]
    decay = jnp.exp2(gt.gl)
    qd = qf * jnp.exp2(gt.G)
    return (decay[:, None] * dsq + _dot_f32_lhs(qd, doc, 0, 0, ctx, precise), lam * decay,
            acc + jnp.sum(xk, axis=0))

  init = (jnp.zeros((bk, vp), _F32), jnp.ones((bk,), _F32), jnp.zeros((bk,), _F32))
  dsq, lam, _ = jax.lax.fori_loop(0, n, body, init)
  dh0_ref[ks, :] = dsq + lam[:, None] * dht_ref[ks, :].astype(_F32)


def _dv_role(vt, q_ref, k_ref, do_ref, g_ref, dht_ref, dv_ref, *, ctx, bv):
  """Backward sweep for value tile vt (all of K): dv = A^T dO + (K ⊙ e^R) dS_{c+1}."""
  tp = q_ref.shape[0]
  chunk = ctx.chunk
  n = tp // chunk
  vs = pl.ds(pl.multiple_of(vt * bv, bv), bv)

  def body(i, ds):
    start = pl.multiple_of((n - 1 - i) * chunk, chunk)
    sl = pl.ds(start, chunk)
    qc, kc, doc = q_ref[sl, :], k_ref[sl, :], do_ref[sl, vs]
    gt = _Gates(g_ref, start, slice(None), ctx)
    qf, kf = _f32(qc) * ctx.scale, _f32(kc)
    a = gt.intra_a(qf, kf, k_ref, ctx)
    dv = _dot_f32_lhs(a, doc, 0, 0, ctx, False) + _dd(kf * jnp.exp2(gt.R), ds, 1, 0, ctx)
    dv_ref[sl, vs] = dv.astype(dv_ref.dtype)
    return jnp.exp2(gt.gl)[:, None] * ds + _dot_f32_lhs(qf * jnp.exp2(gt.G), doc, 0, 0, ctx, False)

  jax.lax.fori_loop(0, n, body, dht_ref[:, vs].astype(_F32))


def _bwd_kernel(q_ref, k_ref, v_ref, do_ref, g_ref, *rest, has_h0, nq, nk, bq, bk, bv, ctx, precise):
  """Grid axis 2: [0, nq) dq sweeps (key tiles of bq); then, fused (nk = 0), one dk + dv sweep over all of K
  and V; else nk dk sweeps (key tiles of bk) and the dv sweeps (value tiles of bv)."""
  if has_h0:
    h0_ref, dht_ref, dhtd_ref, w_ref, *outs = rest
  else:
    h0_ref = None
    dht_ref, dhtd_ref, w_ref, *outs = rest
  dq_ref, dk_ref, dv_ref, dgq_ref, dgq_tot_ref, dgk_ref, dge_tot_ref, dh0_ref = outs
  r = pl.program_id(2)
  dk_refs = (dk_ref, dgk_ref, dge_tot_ref, dh0_ref)

  @pl.when(r < nq)
  def _():
    _dq_role(r, q_ref, k_ref, v_ref, do_ref, g_ref, h0_ref, dq_ref, dgq_ref, dgq_tot_ref, ctx=ctx, bk=bq,
             precise=precise)

  if nk == 0:
    @pl.when(r == nq)
    def _():
      _dk_role(0, q_ref, k_ref, v_ref, do_ref, g_ref, dht_ref, dhtd_ref, w_ref, *dk_refs, dv_ref, ctx=ctx, bk=q_ref.shape[-1],
               precise=precise)
    return

  @pl.when((r >= nq) & (r < nq + nk))
  def _():
    _dk_role(r - nq, q_ref, k_ref, v_ref, do_ref, g_ref, dht_ref, dhtd_ref, w_ref, *dk_refs, None, ctx=ctx, bk=bk,
             precise=precise)

  @pl.when(r >= nq + nk)
  def _():
    _dv_role(r - nq - nk, q_ref, k_ref, do_ref, g_ref, dht_ref, dv_ref, ctx=ctx, bv=bv)


# ----------------------------------------------------------------------------------------------------
# pallas_call wrappers on padded arrays: q, k, g [B,Tp,H,Kp], v, do [B,Tp,H,Vp], h0 / dht [B,H,Kp,Vp] fp32.

def _row_spec(tp, d):
  return pl.BlockSpec((None, tp, None, d), lambda b, h, r: (b, 0, h, 0))


def _state_spec(kp, vp):
  return pl.BlockSpec((None, None, kp, vp), lambda b, h, r: (b, h, 0, 0))


def _forward(q, k, v, g, h0, ctx, cfg, interpret):
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  bv = min(cfg.block_v, vp)
  has_h0 = h0 is not None
  vtile = pl.BlockSpec((None, tp, None, bv), lambda b, h, r: (b, 0, h, r))
  state_tile = pl.BlockSpec((None, None, kp, bv), lambda b, h, r: (b, h, 0, r))
  in_specs = [_row_spec(tp, kp), _row_spec(tp, kp), vtile, _row_spec(tp, kp)] + ([state_tile] if has_h0 else [])
  return pl.pallas_call(
      functools.partial(_fwd_kernel, ctx=ctx, has_h0=has_h0), grid=(b, h, vp // bv),
      in_specs=in_specs, out_specs=[vtile, state_tile],
      out_shape=[jax.ShapeDtypeStruct((b, tp, h, vp), q.dtype), jax.ShapeDtypeStruct((b, h, kp, vp), _F32)],
      interpret=interpret, name='gla_fwd',
      **_params(interpret, ctx, cfg.num_warps, cfg.num_stages))(q, k, v, g, *([h0] if has_h0 else []))


def _v_dht(v, dht, ctx):
  """W = V dS_T^T [B,Tp,H,Kp] fp32: IEEE fp32 for fp32 inputs, else two bf16 products (dS_T = hi + lo, ~2^-17)."""
  eq = 'BTHV,BHKV->BTHK'
  if ctx.fp32:
    return jnp.einsum(eq, v, dht, precision=jax.lax.Precision.HIGHEST, preferred_element_type=_F32)
  hi = dht.astype(v.dtype)
  lo = (dht - hi.astype(_F32)).astype(v.dtype)
  return (jnp.einsum(eq, v, hi, preferred_element_type=_F32)
          + jnp.einsum(eq, v, lo, preferred_element_type=_F32))


def _backward(q, k, v, g, h0, do, dht, ctx, cfg, interpret):
  """Returns dq, dk [B,Tp,H,Kp], dv [B,Tp,H,Vp] (input dtype), the gate terms dgq, dgk [B,Tp,H,Kp] and chunk
  totals dgq_tot, dge_tot [B,N,H,Kp] (fp32; see the dq and dk roles), dh0 fp32."""
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  bq, bk, bv = min(cfg.block_k_dq, kp), min(cfg.block_k_bwd, kp), min(cfg.block_v_bwd, vp)
  nq = kp // bq
  nk, nv = (0, 1) if cfg.fuse_dkv else (kp // bk, vp // bv)
  has_h0 = h0 is not None
  qk, vv, st = _row_spec(tp, kp), _row_spec(tp, vp), _state_spec(kp, vp)
  dt_k = jax.ShapeDtypeStruct((b, tp, h, kp), q.dtype)
  dt_v = jax.ShapeDtypeStruct((b, tp, h, vp), q.dtype)
  dg_shape = jax.ShapeDtypeStruct((b, tp, h, kp), _F32)
  n = tp // ctx.chunk
  tot_shape = jax.ShapeDtypeStruct((b, n, h, kp), _F32)
  tot = pl.BlockSpec((None, n, None, kp), lambda b, h, r: (b, 0, h, 0))
  kernel = functools.partial(_bwd_kernel, has_h0=has_h0, nq=nq, nk=nk, bq=bq, bk=bk, bv=bv, ctx=ctx,
                             precise=cfg.precise_dg)
  return pl.pallas_call(
      kernel, grid=(b, h, nq + nk + nv),
      in_specs=[qk, qk, vv, vv, qk, *([st] if has_h0 else []), st, st, qk],
      out_specs=[qk, qk, vv, qk, tot, qk, tot, st],
      out_shape=[dt_k, dt_k, dt_v, dg_shape, tot_shape, dg_shape, tot_shape,
                 jax.ShapeDtypeStruct((b, h, kp, vp), _F32)],
      interpret=interpret, name='gla_bwd',
      **_params(interpret, ctx, cfg.num_warps_bwd, cfg.num_stages_bwd))(
          q, k, v, do, g, *([h0] if has_h0 else []), dht, dht.astype(ctx.dt), _v_dht(v, dht, ctx))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _core(q, k, v, g, h0, ctx, cfg, interpret):
  return _forward(q, k, v, g, h0, ctx, cfg, interpret)


def _core_fwd(q, k, v, g, h0, ctx, cfg, interpret):
  return _forward(q, k, v, g, h0, ctx, cfg, interpret), (q, k, v, g, h0)


def _core_bwd(ctx, cfg, interpret, res, cts):
  q, k, v, g, h0 = res
  do, dht = cts
  dht = dht.astype(_F32)
  dq, dk, dv, dgq, dgq_tot, dgk, dge_tot, dh0 = _backward(q, k, v, g, h0, do.astype(q.dtype), dht, ctx, cfg,
                                                           interpret)
  # dg_l = sum_{t>=l} (q_t dq_t - k_t dk_t) + sum_v S_T dS_T, regrouped (module docstring): reverse cumsum of
  # the query-key terms, plus sum_{j<l} E_j, plus e^{sum g} sum_v h0 dS_T. The kernel did the cumsums within
  # chunks (and all of the key terms'); here only the [B, N, H, K] chunk totals are summed, then broadcast.
  b, tp, h, kp = dgq.shape
  later = jnp.flip(jnp.cumsum(jnp.flip(dgq_tot, 1), axis=1), 1) - dgq_tot    # sum over later chunks
  earlier = jnp.cumsum(dge_tot, axis=1) - dge_tot                           # sum over earlier chunks
  chunked = lambda x: x.reshape(b, tp // ctx.chunk, ctx.chunk, h, kp)
  dg = (chunked(dgq + dgk) + (later + earlier)[:, :, None]).reshape(b, tp, h, kp)
  if h0 is not None:
    dg = dg + (jnp.exp(jnp.sum(_f32(g), axis=1)) * jnp.sum(h0 * dht, axis=-1))[:, None]
  return dq, dk, dv, dg.astype(g.dtype), (None if h0 is None else dh0.astype(h0.dtype))


_core.defvjp(_core_fwd, _core_bwd)


def kernel_gla(q, k, v, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64,
               config: KernelConfig | None = None, interpret: bool | None = None):
  """Returns (o [B,T,H,V] in q's dtype, final_state fp32 [B,H,K,V]).

  chunk_size (impl 'chunk''s parameter) is ignored: the kernel's chunk is config.chunk. Raises
  NotImplementedError (so that impl='auto' falls back to 'chunk') for segment_ids, on TPU and for head dims
  above 128. interpret None: Pallas interpret mode everywhere but on GPU.
  """
  del chunk_size
  if segment_ids is not None:
    raise NotImplementedError('the gla kernel does not support segment_ids yet')
  backend = default_backend()
  if interpret is None:
    if backend == 'tpu':
      raise NotImplementedError('the gla kernel has only a Triton (GPU) lowering')
    interpret = backend != 'gpu'
  if max(q.shape[-1], v.shape[-1]) > _MAX_HEAD_DIM:
    raise NotImplementedError(f'the gla kernel takes head dims up to {_MAX_HEAD_DIM} (its tiles are sized '
                              f'for that); got K={q.shape[-1]}, V={v.shape[-1]}')
  cfg = DEFAULT_CONFIG if config is None else config
  if cfg.chunk not in (16, 32, 64):
    raise NotImplementedError(f'the gla kernel needs config.chunk in (16, 32, 64); got {cfg.chunk}')
  t, kd, vd = q.shape[1], q.shape[-1], v.shape[-1]
  dtype = jnp.promote_types(q.dtype, jnp.bfloat16)  # fp16 / bf16 / fp32 kernels; mixed inputs promote
  dtype = jnp.promote_types(jnp.promote_types(dtype, k.dtype), v.dtype)
  tp = -(-t // cfg.chunk) * cfg.chunk
  kp, vp = _next_pow2(kd), _next_pow2(vd)
  pad = lambda x, d, dt: _pad_axis(_pad_axis(x.astype(dt), 1, tp), 3, d)
  gdt = g.dtype if g.dtype in (jnp.bfloat16, jnp.float32) else _F32
  h0 = None
  if initial_state is not None:
    h0 = _pad_axis(_pad_axis(initial_state.astype(_F32), 2, kp), 3, vp)
  ctx = _Ctx(jnp.dtype(dtype), float(scale), cfg.chunk)
  o, ht = _core(pad(q, kp, dtype), pad(k, kp, dtype), pad(v, vp, dtype), pad(g, kp, gdt), h0, ctx, cfg,
                bool(interpret))
  return o[:, :t, :, :vd].astype(q.dtype), ht[:, :, :kd, :vd]


# ----------------------------------------------------------------------------------------------------
# Benchmark hooks (for benchmarks/ops_gpu.py).

def benchmark_fn(config: KernelConfig | None = None):
  """fn(q, k, v, g) -> o, the kernel at one configuration (default scale)."""
  return lambda q, k, v, g: kernel_gla(q, k, v, g, scale=q.shape[-1] ** -0.5, config=config)[0]


def tune_candidates(base: KernelConfig = DEFAULT_CONFIG) -> dict[str, list[KernelConfig]]:
  """Configurations worth timing on the GPU, {'fwd': [...], 'fwd_bwd': [...]}, all derived from base: time the
  'fwd' list, then call again with base = the fastest of it and time that call's 'fwd_bwd' list."""
  fwd = [dataclasses.replace(base, chunk=c, block_v=bv, num_warps=w, num_stages=s)
         for c in (16, 32) for bv in (32, 64, 128) for w in (4, 8) for s in (1, 2, 3)
         if not (bv == 128 and w == 4)]
  bwd = [dataclasses.replace(base, fuse_dkv=True, block_k_dq=bq, num_warps_bwd=w, num_stages_bwd=s)
         for bq in (64, 128) for w in (4, 8) for s in (1, 2)]
  bwd += [dataclasses.replace(base, fuse_dkv=False, block_k_dq=bq, block_k_bwd=bk, block_v_bwd=bv,
                              num_warps_bwd=w, num_stages_bwd=s)
          for bq in (64, 128) for bk in (32, 64) for bv in (32, 64) for w in (4, 8) for s in (1, 2)]
  return {'fwd': fwd, 'fwd_bwd': bwd}
