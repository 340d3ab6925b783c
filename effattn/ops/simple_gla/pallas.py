"""Pallas kernels for chunkwise simple_gla, forward and backward (ALGORITHMS.md section 4, Lightning Attention-2
layout).

Why Pallas with the Triton lowering: it is written in jnp, runs in Pallas interpret mode on CPU (so CI
checks its numerics), and it is fast: on the H100 at B=4, T=4096, H=16, D=128 bf16 the forward takes
0.29 ms (flash-linear-attention 0.59 ms, cudnn softmax 0.58 ms) and forward+backward 1.54 ms (cudnn
softmax 2.30 ms); benchmarks/results/ops_gpu*.json. jax-triton would need a second toolchain and cannot
run on CPU. (The Pallas Triton backend is deprecated in jax 0.11 in favour of Mosaic GPU; it still works.)

Layout: one program per (batch, head, value or key tile) walks the chunks in order and keeps the fp32
running state in registers (Qin et al. 2024, Lightning Attention-2, Alg. 1): no chunk state ever goes
to memory, unlike FLA's chunk kernels. Per chunk c (rows i, j in [0, C); G_i = sum_{l<=i} g_l chunk-local,
R_j = sum_{l>j} g_l, G_C = sum_l g_l, q already multiplied by scale):
  O_c     = diag(e^G) Q_c S_c + (Q_c K_c^T ⊙ Γ) V_c,           Γ_ij = e^{G_i - G_j} (i >= j)
  S_{c+1} = e^{G_C} S_c + (diag(e^R) K_c)^T V_c
Backward, three sweeps that need no stored state (each recomputes its own):
  dq  (forward in time, per key tile):   dQ_c = (dO V^T ⊙ Γ) K_c + diag(e^G) dO S_c^T
  dk  (backward in time, per key tile):  dK_c = (dO V^T ⊙ Γ)^T Q_c + diag(e^R) V_c dS_{c+1}^T
  dv  (backward in time, per value tile): dV_c = (Q K^T ⊙ Γ)^T dO_c + diag(e^R) K_c dS_{c+1}
  with dS_c = e^{G_C} dS_{c+1} + (diag(e^G) Q_c)^T dO_c, dS_N = d final_state, d initial_state = dS_0.
By default the three run as one launch (grid axis 2 picks the role; measured 4% faster than three).

Gate gradient. The global form (ALGORITHMS.md section 0) is dg_l = sum_{i>=l} (q_i·dq_i - k_i·dk_i)
+ <ht, dS_T>, a sum over query-key pairs (i, j) with j < l <= i in which every pair with both ends >= l
enters twice and cancels. Summed naively that loses the small dg of fast gates (measured 1e-1 relative
error in bf16, 4e-5 in fp32). So the kernels regroup it, with nothing large cancelling:
  - intra-chunk pairs from one fp32 matrix P_ij = Γ_ij (dO V^T)_ij (Q K^T)_ij (i > j) of exact
    products: row sum - column sum per position (the gate-free diagonal never enters);
  - cross-chunk pairs through the state: q·(dO S^T) and k·(V dS_q^T), with S and dS_q computed and used
    to ~2^-17 in bf16 (`precise_dg`: each fp32 operand split into two bf16 dot operands);
  - keys paired with d final_state, E_j = e^{sum_{l>j} g} k_j^T dS_T v_j (dS split as dS_q + λ dS_T),
    summed forward (sum_{j<l} E_j) instead of cancelling against <ht, dS_T>; plus e^{sum g}<h0, dS_T>.
The reverse / forward cumulative sums over T run in jnp on [B, H, T] vectors.

Triton lowering notes (issue 6): no `slice` primitive, so chunk sums are reductions and cumulative sums are
masked sums over the chunk; jnp.dot with preferred_element_type (pl.dot is gone in jax 0.11); block shapes
must be powers of two, so K and V are zero-padded to one (>= 16) and T to a multiple of the chunk.
fp32 inputs use Precision.HIGHEST (IEEE fp32 dots, not TF32; slow, for checking) and an exact segment sum
for Γ; bf16 inputs use bf16 tensor-core dots (wgmma) with fp32 accumulation, intermediates rounded to bf16
before each dot as in FLA, except where `precise_dg` says.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.dispatch import default_backend
from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import CompilerParams as _CompilerParams
from effattn.ops.common.pallas_triton import Gates
from effattn.ops.common.pallas_triton import checked_chunk, checked_interpret
from effattn.ops.common.pallas_triton import chunk_slice as _chunk_slice
from effattn.ops.common.pallas_triton import next_pow2 as _next_pow2
from effattn.ops.common.pallas_triton import pad_axis as _pad_axis
from effattn.ops.common.sequence_split import num_segments, sm_count, split_over_segments

_MAX_HEAD_DIM = 128  # K and V; larger heads fall back ('auto') to the chunk form


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Tile widths and Triton launch parameters.

  The defaults are the fastest of `benchmarks/ops_gpu.py --tune` on the H100 (B=4, T=4096, H=16, D=128,
  bf16; benchmarks/results/ops_gpu.json): forward 0.29 ms at 8 warps and 3 pipeline stages (0.34 ms at 2
  stages, 0.60 ms with 32-wide value tiles), forward+backward 1.52 ms with the fused backward (1.58 ms as
  three launches, 2.35 ms with 32-wide tiles). Compiled offline for sm_90 (triton 3.6, ptxas -v), every
  kernel reaches the 255-register cap: at 4 warps the fused backward spills ~4 KB, at 8 warps ~200 bytes.
  """
  block_v: int | None = None  # forward: value-tile width of each program; None: by shape (block_v_for)
  block_k_bwd: int = 64      # backward dq / dk sweeps: key-tile width
  block_v_bwd: int = 64      # backward dv sweep: value-tile width
  num_warps: int = 8
  num_stages: int = 3
  num_warps_bwd: int = 8
  num_stages_bwd: int = 3
  fuse_bwd: bool = True      # the three backward sweeps in one launch (else three launches)
  precise_dg: bool = True    # bf16: gate-gradient terms to ~2^-17 (two bf16 dots per fp32 operand;
                             # fwd+bwd 1.52 ms, 0.99 ms without, but dg's error then grows with T)
  # Long T at small B * H (ops/common/sequence_split.py): cut the sequence into segments run as batch rows
  # until there are up to split_programs programs (None: 1 per SM on GPU, no split elsewhere; 0: never),
  # keeping segments of >= split_min_len rows.
  split_programs: int | None = None
  split_min_len: int = 1024
  # segment states of the split: 'kernel_fold' (common/block_states.py with the decays folded into k, fold=True;
  # 0.239 ms at B=1, T=65536, H=16, D=128 bf16 on the H200, and the whole op 1.137 -> 1.085 ms), 'kernel' (the
  # same kernel rescaling its state per chunk, 0.290 ms) or 'xla' (a transposing einsum, 0.48 ms)
  split_states: str = 'kernel_fold'
  # rows per block_states program (the kernel states; None: sequence_split.sub_block_rows, by waves): each segment's
  # state sums its sub-blocks in XLA, reading B (P - 1) (T / P / split_sub_block) H K V fp32 values there
  split_sub_block: int | None = None

  def block_v_for(self, b: int, h: int, t: int, vp: int, chunk: int, dtype, backend: str) -> int:
    """The forward's value-tile width. 128-wide tiles compute each chunk's Q K^T once for twice the columns; they
    win unless they leave SMs idle. H200, bf16, D=128, forward ms at 64 / 128 (benchmarks/README.md, 2026-12-03):
    B=32 T=2048 H=16 1.130 / 0.811 (FLA 0.829); B=8 T=8192 1.131 / 0.808 (128 programs of 132 SMs); with the
    sequence split, B=2 T=32768 1.422 / 1.124 and B=1 T=65536 1.430 / 1.133. At B=4 T=4096 H=16 (64 wide programs
    for 132 SMs, no split at 64) 64 stays: 0.293 ms, 128 not timed there. fp32 tiles stay at 64 (shared memory)."""
    if self.block_v is not None:
      return self.block_v
    if backend != 'gpu' or jnp.dtype(dtype).itemsize > 2 or vp < 128:
      return 64
    if 2 * b * h * (vp // 128) >= sm_count():
      return 128
    narrow = num_segments(b, h, t, vp // 64, chunk, split_programs=self.split_programs, min_len=self.split_min_len,
                          backend=backend)
    return 128 if narrow > 1 else 64  # the split fills the SMs either way


DEFAULT_CONFIG = KernelConfig()


# ----------------------------------------------------------------------------------------------------
# In-kernel helpers (all on values already loaded from refs).

@dataclasses.dataclass(frozen=True)
class _Ctx:
  """Static per-call settings seen by the kernel bodies."""
  dt: object        # dtype of the dot operands (the inputs' dtype)
  scale: float
  chunk: int

  @property
  def fp32(self) -> bool:
    return self.dt == jnp.float32

  @property
  def prec(self):
    return jax.lax.Precision.HIGHEST if self.fp32 else None  # IEEE fp32 dots, not TF32


def _dot(a, b, ca: int, cb: int, ctx: _Ctx):
  """a, b 2-D in ctx.dt; contracts a's axis ca with b's axis cb; fp32 result."""
  return jax.lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), precision=ctx.prec,
                             preferred_element_type=_F32)


def _nn(a, b, ctx):  # a @ b
  return _dot(a, b, 1, 0, ctx)


def _nt(a, b, ctx):  # a @ b^T
  return _dot(a, b, 1, 1, ctx)


def _tn(a, b, ctx):  # a^T @ b
  return _dot(a, b, 0, 0, ctx)


def _split(x, ctx: _Ctx, precise: bool):
  """fp32 x as dot operands: [x] in fp32 mode; [bf16(x)] or, if precise, [hi, lo] with x ≈ hi + lo to ~2^-17."""
  hi = x.astype(ctx.dt)
  if ctx.fp32 or not precise:
    return [hi]
  return [hi, (x - hi.astype(_F32)).astype(ctx.dt)]


def _dot_f32_lhs(x, b, ca, cb, ctx, precise):
  """dot of an fp32 intermediate x (rounded to ctx.dt, or split in two if precise) with an input b."""
  parts = [_dot(p, b, ca, cb, ctx) for p in _split(x, ctx, precise)]
  return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _dot_f32_rhs(a, x, ca, cb, ctx, precise):
  parts = [_dot(a, p, ca, cb, ctx) for p in _split(x, ctx, precise)]
  return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _f32(x):
  return x.astype(_F32)


# ----------------------------------------------------------------------------------------------------
# Forward: grid (B, H, Vp / BV).

def _fwd_kernel(q_ref, k_ref, v_ref, g_ref, *rest, ctx: _Ctx, has_h0: bool):
  if has_h0:
    h0_ref, o_ref, ht_ref = rest
  else:
    o_ref, ht_ref = rest
  tp, kp = q_ref.shape
  bv = v_ref.shape[-1]
  chunk, scale = ctx.chunk, ctx.scale
  s0 = h0_ref[...].astype(_F32) if has_h0 else jnp.zeros((kp, bv), _F32)

  def body(c, s):
    sl = _chunk_slice(c, chunk)
    qc, kc, vc = q_ref[sl, :], k_ref[sl, :], v_ref[sl, :]
    gt = Gates(g_ref[sl], ctx.fp32)
    p = _nt(qc, kc, ctx) * (gt.gamma() * scale)
    o = (_dot_f32_rhs(qc, s, 1, 0, ctx, False) * (scale * gt.exp(gt.gi))[:, None]
         + _dot_f32_lhs(p, vc, 1, 0, ctx, False))
    o_ref[sl, :] = o.astype(o_ref.dtype)
    kd = _f32(kc) * gt.exp(gt.rj)[:, None]
    return gt.exp(gt.gl) * s + _dot_f32_lhs(kd, vc, 0, 0, ctx, False)

  s = jax.lax.fori_loop(0, tp // chunk, body, s0)
  ht_ref[...] = s


# ----------------------------------------------------------------------------------------------------
# Backward roles. Refs hold whole [Tp, Kp] / [Tp, Vp] rows of one (batch, head); each role loads its tile.
# The dq and dk sweeps also produce the gate-gradient terms; what enters them is computed to ~2^-17 in
# bf16 mode (fp32 intermediates split into two bf16 dot operands, `precise`), so that the terms that
# cancel in the reverse cumulative sum cancel to that accuracy rather than to bf16's 2^-9.

def _dq_role(kt, q_ref, k_ref, v_ref, do_ref, g_ref, h0_ref, dq_ref, dgq_ref, *, ctx, bk, precise):
  """Forward sweep for key tile kt: dq [Tp, tile] and this tile's part of the gate-gradient terms
  scale q·dq_inter + rowsum(P) - colsum(P), P_ij = Γ_ij (dO V^T)_ij (scale Q K^T)_ij for i > j: the
  intra-chunk pairs from one fp32 matrix, so that they cancel exactly in the reverse cumsum."""
  tp = q_ref.shape[0]
  n = tp // ctx.chunk
  vp = v_ref.shape[-1]
  scale = ctx.scale
  ks = pl.ds(pl.multiple_of(kt * bk, bk), bk)
  s0 = h0_ref[ks, :].astype(_F32) if h0_ref is not None else jnp.zeros((bk, vp), _F32)

  def body(c, s):
    sl = _chunk_slice(c, ctx.chunk)
    qc, kc = q_ref[sl, ks], k_ref[sl, ks]
    vc, doc = v_ref[sl, :], do_ref[sl, :]
    gt = Gates(g_ref[sl], ctx.fp32)
    # Statement order keeps few [C, C] fp32 matrices live at once (register pressure).
    dag = _nt(doc, vc, ctx) * gt.gamma()   # dO V^T ⊙ Γ, exact products
    p = jnp.where(gt.row > gt.col, dag * (_nt(qc, kc, ctx) * scale), 0.0)  # this key tile's part of P
    dgate = jnp.sum(p, axis=1) - jnp.sum(p, axis=0)
    dq_intra = _dot_f32_lhs(dag, kc, 1, 0, ctx, False)
    dq_inter = _dot_f32_rhs(doc, s, 1, 1, ctx, precise) * gt.exp(gt.gi)[:, None]
    dq_ref[sl, ks] = ((dq_intra + dq_inter) * scale).astype(dq_ref.dtype)
    dgq_ref[kt, sl] = dgate + jnp.sum(_f32(qc) * dq_inter, axis=1) * scale
    return gt.exp(gt.gl) * s + _dot_f32_lhs(_f32(kc) * gt.exp(gt.rj)[:, None], vc, 0, 0, ctx, precise)

  jax.lax.fori_loop(0, n, body, s0)


def _dk_role(kt, q_ref, k_ref, v_ref, do_ref, g_ref, dht_ref, dk_ref, dgk_ref, dge_ref, dh0_ref, *,
             ctx, bk, precise):
  """Backward sweep for key tile kt: dk, d initial_state rows, and this tile's part of two gate terms:
  k·dk_inter from the later queries, and E_j = e^{sum_{l>j} g_l} k_j^T dS_T v_j, the pair of k_j with
  d final_state. The state gradient is carried as dS = dS_q + λ dS_T (dS_q: the queries' part, λ: the
  decay to the end) so that E stays out of the reverse cumsum (it would cancel there with <ht, dS_T>)."""
  tp = q_ref.shape[0]
  n = tp // ctx.chunk
  vp = v_ref.shape[-1]
  scale = ctx.scale
  ks = pl.ds(pl.multiple_of(kt * bk, bk), bk)

  def body(i, carry):
    dsq, lam = carry
    sl = _chunk_slice(n - 1 - i, ctx.chunk)
    qc, kc = q_ref[sl, ks], k_ref[sl, ks]
    vc, doc = v_ref[sl, :], do_ref[sl, :]
    gt = Gates(g_ref[sl], ctx.fp32)
    er = gt.exp(gt.rj)
    dk_intra = _dot_f32_lhs(_nt(doc, vc, ctx) * gt.gamma(), qc, 0, 0, ctx, False)  # (dO V^T ⊙ Γ)^T Q
    dk_q = _dot_f32_rhs(vc, dsq, 1, 1, ctx, precise)                          # V dS_q^T
    dk_t = _dot_f32_rhs(vc, dht_ref[ks, :].astype(_F32), 1, 1, ctx, precise)  # V dS_T^T
    dk_ref[sl, ks] = (dk_intra * scale + (dk_q + lam * dk_t) * er[:, None]).astype(dk_ref.dtype)
    dgk_ref[kt, sl] = jnp.sum(_f32(kc) * dk_q, axis=1) * er
    dge_ref[kt, sl] = jnp.sum(_f32(kc) * dk_t, axis=1) * (er * lam)
    qd = _f32(qc) * (scale * gt.exp(gt.gi))[:, None]
    decay = gt.exp(gt.gl)
    return decay * dsq + _dot_f32_lhs(qd, doc, 0, 0, ctx, precise), lam * decay

  dsq, lam = jax.lax.fori_loop(0, n, body, (jnp.zeros((bk, vp), _F32), jnp.float32(1.0)))
  dh0_ref[ks, :] = dsq + lam * dht_ref[ks, :].astype(_F32)


def _dv_role(vt, q_ref, k_ref, do_ref, g_ref, dht_ref, dv_ref, *, ctx, bv):
  """Backward sweep for value tile vt: dv."""
  tp = q_ref.shape[0]
  n = tp // ctx.chunk
  scale = ctx.scale
  vs = pl.ds(pl.multiple_of(vt * bv, bv), bv)
  ds0 = dht_ref[:, vs].astype(_F32)

  def body(i, ds):
    sl = _chunk_slice(n - 1 - i, ctx.chunk)
    qc, kc, doc = q_ref[sl, :], k_ref[sl, :], do_ref[sl, vs]
    gt = Gates(g_ref[sl], ctx.fp32)
    p = _nt(qc, kc, ctx) * (gt.gamma() * scale)  # [C(i), C(j)]
    dv = (_dot_f32_lhs(p, doc, 0, 0, ctx, False)
          + _dot_f32_rhs(kc, ds, 1, 0, ctx, False) * gt.exp(gt.rj)[:, None])
    dv_ref[sl, vs] = dv.astype(dv_ref.dtype)
    qd = _f32(qc) * (scale * gt.exp(gt.gi))[:, None]
    return gt.exp(gt.gl) * ds + _dot_f32_lhs(qd, doc, 0, 0, ctx, False)

  jax.lax.fori_loop(0, n, body, ds0)


def _bwd_fused_kernel(q_ref, k_ref, v_ref, do_ref, g_ref, *rest, nk, has_h0, bk, bv, **kw):
  """Grid axis 2: [0, nk) dq sweeps, [nk, 2 nk) dk sweeps, [2 nk, 2 nk + nv) dv sweeps."""
  if has_h0:
    h0_ref, dht_ref, *outs = rest
  else:
    h0_ref = None
    dht_ref, *outs = rest
  dq_ref, dk_ref, dv_ref, dgq_ref, dgk_ref, dge_ref, dh0_ref = outs
  r = pl.program_id(2)

  @pl.when(r < nk)
  def _():
    _dq_role(r, q_ref, k_ref, v_ref, do_ref, g_ref, h0_ref, dq_ref, dgq_ref, bk=bk, **kw)

  @pl.when((r >= nk) & (r < 2 * nk))
  def _():
    _dk_role(r - nk, q_ref, k_ref, v_ref, do_ref, g_ref, dht_ref, dk_ref, dgk_ref, dge_ref, dh0_ref,
             bk=bk, **kw)

  @pl.when(r >= 2 * nk)
  def _():
    _dv_role(r - 2 * nk, q_ref, k_ref, do_ref, g_ref, dht_ref, dv_ref, bv=bv, ctx=kw['ctx'])


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, g_ref, *rest, has_h0, **kw):
  h0_ref, dq_ref, dgq_ref = rest if has_h0 else (None, *rest)
  _dq_role(pl.program_id(2), q_ref, k_ref, v_ref, do_ref, g_ref, h0_ref, dq_ref, dgq_ref, **kw)


def _dk_kernel(q_ref, k_ref, v_ref, do_ref, g_ref, dht_ref, dk_ref, dgk_ref, dge_ref, dh0_ref, **kw):
  _dk_role(pl.program_id(2), q_ref, k_ref, v_ref, do_ref, g_ref, dht_ref, dk_ref, dgk_ref, dge_ref,
           dh0_ref, **kw)


def _dv_kernel(q_ref, k_ref, do_ref, g_ref, dht_ref, dv_ref, **kw):
  _dv_role(pl.program_id(2), q_ref, k_ref, do_ref, g_ref, dht_ref, dv_ref, **kw)


# ----------------------------------------------------------------------------------------------------
# pallas_call wrappers on padded arrays: q, k [B,Tp,H,Kp], v, do [B,Tp,H,Vp], g [B,H,Tp] fp32,
# h0 / dht [B,H,Kp,Vp] fp32.

def _row_spec(tp, d):
  return pl.BlockSpec((None, tp, None, d), lambda b, h, r: (b, 0, h, 0))


def _gate_spec(tp):
  return pl.BlockSpec((None, None, tp), lambda b, h, r: (b, h, 0))


def _state_spec(kp, vp):
  return pl.BlockSpec((None, None, kp, vp), lambda b, h, r: (b, h, 0, 0))


def _params(interpret, ctx: _Ctx, num_warps, num_stages):
  if interpret or _CompilerParams is None:
    return {}
  if ctx.fp32:  # fp32 tiles are twice as large: 3 stages need 279 KB of shared memory at K = V = 128
    num_stages = min(num_stages, 2)  # (the H100 has 227 KB), 2 stages 164 KB (measured, ptxas)
  return {'compiler_params': _CompilerParams(num_warps=num_warps, num_stages=num_stages)}


def _forward(q, k, v, g, h0, ctx, cfg, interpret):
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  bv = min(cfg.block_v, vp)
  has_h0 = h0 is not None
  in_specs = [_row_spec(tp, kp), _row_spec(tp, kp),
              pl.BlockSpec((None, tp, None, bv), lambda b, h, r: (b, 0, h, r)), _gate_spec(tp)]
  args = [q, k, v, g]
  state_tile = pl.BlockSpec((None, None, kp, bv), lambda b, h, r: (b, h, 0, r))
  if has_h0:
    in_specs.append(state_tile)
    args.append(h0)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, ctx=ctx, has_h0=has_h0), grid=(b, h, vp // bv),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, tp, None, bv), lambda b, h, r: (b, 0, h, r)), state_tile],
      out_shape=[jax.ShapeDtypeStruct((b, tp, h, vp), q.dtype),
                 jax.ShapeDtypeStruct((b, h, kp, vp), _F32)],
      interpret=interpret, name='simple_gla_fwd',
      **_params(interpret, ctx, cfg.num_warps, cfg.num_stages))(*args)


def _backward(q, k, v, g, h0, do, dht, ctx, cfg, interpret):
  """Returns dq, dk [B,Tp,H,Kp], dv [B,Tp,H,Vp] (input dtype), dgq, dgk, dge [B,H,NK,Tp] fp32, dh0 fp32."""
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  bk, bv = min(cfg.block_k_bwd, kp), min(cfg.block_v_bwd, vp)
  nk, nv = kp // bk, vp // bv
  has_h0 = h0 is not None
  kw = {'ctx': ctx, 'precise': cfg.precise_dg}
  params = _params(interpret, ctx, cfg.num_warps_bwd, cfg.num_stages_bwd)
  dq_shape = jax.ShapeDtypeStruct((b, tp, h, kp), q.dtype)
  dv_shape = jax.ShapeDtypeStruct((b, tp, h, vp), q.dtype)
  dg_shape = jax.ShapeDtypeStruct((b, h, nk, tp), _F32)
  dh0_shape = jax.ShapeDtypeStruct((b, h, kp, vp), _F32)
  dg_spec = pl.BlockSpec((None, None, nk, tp), lambda b, h, r: (b, h, 0, 0))
  qk, vv, gs, st = _row_spec(tp, kp), _row_spec(tp, vp), _gate_spec(tp), _state_spec(kp, vp)
  h0_args, h0_specs = ([h0], [st]) if has_h0 else ([], [])

  if cfg.fuse_bwd:
    kernel = functools.partial(_bwd_fused_kernel, nk=nk, has_h0=has_h0, bk=bk, bv=bv, **kw)
    return pl.pallas_call(
        kernel, grid=(b, h, 2 * nk + nv),
        in_specs=[qk, qk, vv, vv, gs, *h0_specs, st],
        out_specs=[qk, qk, vv, dg_spec, dg_spec, dg_spec, st],
        out_shape=[dq_shape, dq_shape, dv_shape, dg_shape, dg_shape, dg_shape, dh0_shape],
        interpret=interpret, name='simple_gla_bwd', **params)(q, k, v, do, g, *h0_args, dht)

  dq, dgq = pl.pallas_call(
      functools.partial(_dq_kernel, has_h0=has_h0, bk=bk, **kw), grid=(b, h, nk),
      in_specs=[qk, qk, vv, vv, gs, *h0_specs], out_specs=[qk, dg_spec],
      out_shape=[dq_shape, dg_shape], interpret=interpret, name='simple_gla_bwd_dq',
      **params)(q, k, v, do, g, *h0_args)
  dk, dgk, dge, dh0 = pl.pallas_call(
      functools.partial(_dk_kernel, bk=bk, **kw), grid=(b, h, nk),
      in_specs=[qk, qk, vv, vv, gs, st], out_specs=[qk, dg_spec, dg_spec, st],
      out_shape=[dq_shape, dg_shape, dg_shape, dh0_shape], interpret=interpret,
      name='simple_gla_bwd_dk',
      **params)(q, k, v, do, g, dht)
  dv = pl.pallas_call(
      functools.partial(_dv_kernel, bv=bv, ctx=ctx), grid=(b, h, nv),
      in_specs=[qk, qk, vv, gs, st], out_specs=[vv], out_shape=[dv_shape],
      interpret=interpret, name='simple_gla_bwd_dv', **params)(q, k, do, g, dht)[0]
  return dq, dk, dv, dgq, dgk, dge, dh0


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _core(q, k, v, g, h0, ctx, cfg, interpret):
  return _forward(q, k, v, g, h0, ctx, cfg, interpret)


def _core_fwd(q, k, v, g, h0, ctx, cfg, interpret):
  return _forward(q, k, v, g, h0, ctx, cfg, interpret), (q, k, v, g, h0)


def _core_bwd(ctx, cfg, interpret, res, cts):
  q, k, v, g, h0 = res
  do, dht = cts
  dht = dht.astype(_F32)
  dq, dk, dv, dgq, dgk, dge, dh0 = _backward(q, k, v, g, h0, do.astype(q.dtype), dht, ctx, cfg,
                                             interpret)
  # dg_l = sum_{i>=l} (q_i·dq_i - k_i·dk_i) + <ht, dS_T>, regrouped so that nothing large cancels:
  #   reverse cumsum of the query-key terms (dgq - dgk, whose gate-free intra-chunk diagonal is left
  #   out), plus sum_{j<l} E_j (keys paired with dS_T), plus e^{sum g} <h0, dS_T>.
  rev = lambda x: jnp.flip(jnp.cumsum(jnp.flip(x, -1), axis=-1), -1)
  dge = jnp.sum(dge, axis=2)
  dg = rev(jnp.sum(dgq, axis=2) - jnp.sum(dgk, axis=2)) + jnp.cumsum(dge, axis=-1) - dge
  if h0 is not None:
    dg = dg + (jnp.exp(jnp.sum(g, axis=-1)) * jnp.sum(h0 * dht, axis=(-2, -1)))[..., None]
  return dq, dk, dv, dg.astype(g.dtype), (None if h0 is None else dh0.astype(h0.dtype))


_core.defvjp(_core_fwd, _core_bwd)


def split_states_args(cfg, interpret: bool, extra: tuple[str, ...] = ()) -> dict:
  """split_over_segments' keyword arguments for cfg.split_states: `interpret` (None: the XLA states, else the
  block_states kernel's mode) and `fold`. `extra`: further values the caller handles itself (gla's 'sweeps')."""
  known = ('kernel', 'kernel_fold', 'xla') + extra
  if cfg.split_states not in known:
    raise ValueError(f"KernelConfig.split_states must be one of {', '.join(map(repr, known))}; "
                     f"got {cfg.split_states!r}")
  return {'interpret': None if cfg.split_states == 'xla' else interpret, 'fold': cfg.split_states == 'kernel_fold',
          'sub_block': cfg.split_sub_block}


def kernel_simple_gla(q, k, v, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64,
                      config: KernelConfig | None = None, interpret: bool | None = None):
  """Returns (o [B,T,H,V] in q's dtype, final_state fp32 [B,H,K,V]); g None means no decay.

  Raises NotImplementedError (so that impl='auto' falls back to 'chunk') for segment_ids, on TPU, for
  head dims above 128 and for a chunk_size that is not a power of two in [16, 128]. interpret None: Pallas interpret
  mode everywhere but on GPU.
  """
  interpret = checked_interpret('simple_gla', q, v, segment_ids, interpret, _MAX_HEAD_DIM)
  chunk = checked_chunk('simple_gla', chunk_size, (16, 32, 64, 128))
  backend = default_backend()
  cfg = DEFAULT_CONFIG if config is None else config
  states_args = split_states_args(cfg, interpret)  # checked on every call, not only when the split runs
  b, t, h, kd = q.shape
  vd = v.shape[-1]
  dtype = jnp.promote_types(q.dtype, jnp.bfloat16)  # fp16 / bf16 / fp32 kernels; mixed inputs promote
  dtype = jnp.promote_types(jnp.promote_types(dtype, k.dtype), v.dtype)
  tp = -(-t // chunk) * chunk
  kp, vp = _next_pow2(kd), _next_pow2(vd)
  cfg = dataclasses.replace(cfg, block_v=cfg.block_v_for(b, h, t, vp, chunk, dtype, backend))
  segments = num_segments(b, h, t, -(-vp // min(cfg.block_v, vp)), chunk, split_programs=cfg.split_programs,
                          min_len=cfg.split_min_len, backend=backend)
  if segments > 1:
    whole = dataclasses.replace(cfg, split_programs=0)
    kernel = lambda q, k, v, g, h0: kernel_simple_gla(q, k, v, g, scale=scale, initial_state=h0,
                                                      chunk_size=chunk, config=whole, interpret=interpret)
    return split_over_segments(kernel, q, k, v, g, initial_state=initial_state, segments=segments, chunk=chunk,
                               **states_args)
  pad = lambda x, d: _pad_axis(_pad_axis(x.astype(dtype), 1, tp), 3, d)
  g = jnp.zeros((b, t, h), _F32) if g is None else g.astype(_F32)
  gp = _pad_axis(jnp.swapaxes(g, 1, 2), 2, tp)  # [B,H,Tp]
  h0 = None
  if initial_state is not None:
    h0 = _pad_axis(_pad_axis(initial_state.astype(_F32), 2, kp), 3, vp)
  ctx = _Ctx(jnp.dtype(dtype), float(scale), chunk)
  o, ht = _core(pad(q, kp), pad(k, kp), pad(v, vp), gp, h0, ctx, cfg, bool(interpret))
  return o[:, :t, :, :vd].astype(q.dtype), ht[:, :, :kd, :vd]
