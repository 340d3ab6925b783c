"""Sequence splitting for the Lightning-layout kernels at long T and small B * H: segments in parallel.

The kernels of simple_gla and gla walk the chunks of one (batch, head, value tile) in one program, so a
call has B * H * V / BV programs: 1024 at B = 32, T = 2048, H = 16, V = 128 (BV = 64), but 32 at B = 1,
T = 65536 on a GPU of 132 SMs. Time per token would then grow with T at fixed B * T. For a linear
recurrence with a diagonal decay (Yang et al. 2024, GLA, arXiv 2312.06635, eq. 1; ALGORITHMS.md
sections 4-5), S_t = diag(a_t) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t, cut the sequence into P segments
and let G_t = sum of log a from the segment's start to t (inclusive). Then, exactly,
  S_loc(s)     = sum_{t in s} diag(e^{G_last - G_t}) k_t v_t^T      (one batched matmul, all segments)
  S_start(s+1) = diag(e^{G_last(s)}) S_start(s) + S_loc(s)         (associative scan over segments)
and the kernel runs once on the segments as batch rows (P times the programs), each from its own
initial state S_start(s). Extra cost: the state matmul (2 T K V flops per head, reading k and v once, but for
the last segment: the final state is the kernel's own, from the last segment's start state) and a log2(P)-deep
scan of [K, V] states, far less than stitching the outputs (reading q, writing o).
With KernelConfig.split_states='kernel' the kernels compute S_loc with the block_states Pallas kernel
(sub-blocks of _SUB_BLOCK rows read in place, summed with their decays; gradients from the XLA form below): the
XLA einsum batches over heads, so k, scaled, and v are transposed in HBM first (~1.6 GB at B*T = 65536, H = 16,
D = 128). On the H200 at B = 1, T = 65536, H = 16, D = 128 bf16 with scalar decays the kernel takes 0.29 ms and the
einsum 0.48 ms (the kernel on the segments 1.1 ms), so simple_gla defaults to it; gla's per-channel form of the
kernel is slower than the einsum, so gla keeps 'xla'.
This is flash-linear-attention's split state passing (fla/ops/common/chunk_h_split.py) in XLA around
an unchanged kernel. Gradients come from autodiff of these ops and the kernel's own custom VJP (its
initial-state gradient). The delta rule is not diagonal in S (its transition is I - beta k k^T), so this
does not apply there; ops/gated_delta_rule/_split.py splits its forward sweep instead (each segment's transition
matrix from a sweep started at I, the same num_segments count).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from effattn.ops.common.block_states import block_states

_F32 = jnp.float32
_SUB_BLOCK = 1024


def sm_count(default: int = 132) -> int:
  """Streaming multiprocessors of the first device (jax's core_count on GPU), else `default`."""
  return int(getattr(jax.devices()[0], 'core_count', 0) or default)


def num_segments(b: int, h: int, t: int, value_tiles: int, chunk: int, *, split_programs: int | None,
                 min_len: int, backend: str) -> int:
  """The largest power of two P with B * H * value_tiles * P <= the program target, T divisible by P * chunk
  and segments of at least min_len rows (1: no split). split_programs is the target (None: one program per
  SM on GPU, no split elsewhere; 0: never split).

  One per SM, not two: on the H200 (132 SMs) at B=4, T=4096, H=16, D=128 (128 programs) a split in two
  took simple_gla from 0.292 to 0.407 ms forward (1.540 -> 2.147 fwd+bwd) and gla from 1.364 to 1.792
  (4.994 -> 6.384), while at B=1, T=65536 targets of 132, 264 and 528 programs all gave 1.57-1.59 ms
  (4.52 unsplit): the split pays only while SMs would idle."""
  if split_programs is None:
    split_programs = sm_count() if backend == 'gpu' else 0
  programs, p = b * h * value_tiles, 1
  while (programs * p * 2 <= split_programs and t % (p * 2 * chunk) == 0 and t // (p * 2) >= min_len):
    p *= 2
  return p


def sub_block_rows(b: int, segments: int, h: int, ts: int, vd: int, chunk: int, slots: int | None = None) -> int:
  """Rows per block_states program for the local states of `segments` segments of ts rows each: of the power-of-two
  sub-blocks of >= _SUB_BLOCK rows that divide ts, the longest of those with the fewest program steps, waves times
  steps per program, ceil(programs / slots) * rows / chunk (slots: 2 programs per SM, block_states' registers at 4
  warps). Longer sub-blocks leave fewer partial states for XLA to sum: H200, B=1 T=65536 H=16 D=128, 7 segments of
  8192 rows (benchmarks/README.md): 4096 rows 22 us of XLA against 43 at 1024, the same kernel steps (224 programs,
  one wave, against 896, four); at B=2 T=32768 1024 rows take 3 waves of 16 steps against one of 64 at 4096."""
  if ts % _SUB_BLOCK or _SUB_BLOCK % chunk:
    return ts
  slots = 2 * sm_count() if slots is None else slots
  tiles = -(-vd // 128)  # block_states' value tiles (block_v 128)
  best, rows = None, _SUB_BLOCK
  while rows <= ts and ts % rows == 0:
    steps = -(-b * segments * (ts // rows) * h * tiles // slots) * (rows // chunk)
    if best is None or steps <= best[0]:
      best = (steps, rows)
    rows *= 2
  return best[1]


_SEQUENTIAL_BOUNDARIES = 16  # boundary_states: up to this many segments in sequence, more by an associative scan


def _combine(earlier, later):
  """Composes the affine state maps S -> a S + b of two consecutive runs of segments (earlier first)."""
  a1, b1 = earlier
  a2, b2 = later
  return a1 * a2, a2 * b1 + b2


def _local_states_xla(k, v, g, p: int, count: int | None = None):
  """[B, count, H, K, V] fp32: the state from zero of each of the first `count` of P segments (None: all),
  sum_t diag(e^{G_last - G_t}) k_t v_t^T (XLA)."""
  b, t, h, kd = k.shape
  ts = t // p
  if count is not None and count < p:
    k, v, g = (None if x is None else x[:, :count * ts] for x in (k, v, g))
    b, t, h, kd = k.shape
    p = count
  vd = v.shape[-1]
  if g is None:
    to_end = jnp.ones((b, p, ts, h, 1), _F32)
  else:
    gcum = jnp.cumsum(g.astype(_F32).reshape(b, p, ts, h, -1), axis=2)  # [B, P, T', H, 1 or K]
    to_end = jnp.exp(gcum[:, :, -1:] - gcum)  # <= 1: decay from row t to the segment's end
  dot_dtype = jnp.promote_types(k.dtype, v.dtype)
  # Each segment's state is a sum over sub-blocks of <= _SUB_BLOCK rows: B*H*P products of length T/P would
  # leave most SMs idle at B = 1 (64 [K, V] outputs at T = 65536, H = 16, P = 4).
  sub = ts // _SUB_BLOCK if ts % _SUB_BLOCK == 0 else 1
  k_dec = (k.reshape(b, p, ts, h, kd).astype(_F32) * to_end).astype(dot_dtype)
  return jnp.einsum('bpsthk,bpsthv->bpshkv', k_dec.reshape(b, p, sub, ts // sub, h, kd),
                    v.reshape(b, p, sub, ts // sub, h, vd).astype(dot_dtype), preferred_element_type=_F32,
                    precision=lax.Precision.HIGHEST if dot_dtype == _F32 else None).sum(axis=2)


def _local_states_kernel(k, v, g, p: int, chunk: int, interpret: bool, fold: bool = False,
                         count: int | None = None, sub_block: int = _SUB_BLOCK):
  """As _local_states_xla, by the block_states Pallas kernel over sub-blocks of <= sub_block rows (reading
  [B, T, H, D] in place, the rows of the first `count` segments only), the sub-blocks of a segment summed with
  their decays to its end (in XLA: fewer, longer sub-blocks read less there, but give fewer programs). fold:
  block_states' folded form."""
  b, t, h, kd = k.shape
  ts = t // p
  n = p if count is None else count
  sub = ts // sub_block if ts % sub_block == 0 and sub_block % chunk == 0 else 1
  s_blocks = block_states(k, v, g, block=ts // sub, chunk=chunk, interpret=interpret, fold=fold,
                          blocks=n * sub)                                                # [B, n * sub, H, K, V]
  s_blocks = s_blocks.reshape(b, n, sub, h, kd, -1)
  if g is None:
    return s_blocks.sum(axis=2)
  gsum = g.astype(_F32).reshape(b, p, sub, ts // sub, h, -1)[:, :n].sum(axis=3)  # [B, n, sub, H, 1 or K]
  later = jnp.cumsum(gsum[:, :, ::-1], axis=2)[:, :, ::-1] - gsum     # log decay of the later sub-blocks
  return jnp.sum(jnp.exp(later)[..., None] * s_blocks, axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _local_states(k, v, g, p, chunk, interpret, fold, count=None, sub_block=_SUB_BLOCK):
  """Forward by the Pallas kernel, gradients by autodiff of the XLA form (the same function)."""
  return _local_states_kernel(k, v, g, p, chunk, interpret, fold, count, sub_block)


def _local_states_fwd(k, v, g, p, chunk, interpret, fold, count=None, sub_block=_SUB_BLOCK):
  return _local_states_kernel(k, v, g, p, chunk, interpret, fold, count, sub_block), (k, v, g)


def _local_states_bwd(p, chunk, interpret, fold, count, sub_block, res, ct):
  return jax.vjp(lambda k, v, g: _local_states_xla(k, v, g, p, count), *res)[1](ct)


_local_states.defvjp(_local_states_fwd, _local_states_bwd)


def split_over_segments(kernel, q, k, v, g, *, initial_state, segments: int, chunk: int | None = None,
                        interpret: bool | None = None, fold: bool = False, sub_block: int | None = None):
  """Runs `kernel` on `segments` equal cuts of the sequence at once, each from its exact initial state.

  kernel(q, k, v, g, h0) -> (o [B', T', H, V] in q's dtype, final state fp32 [B', H, K, V]), where
  q, k: [B', T', H, K], v: [B', T', H, V], g: None, [B', T', H] (scalar log decay) or [B', T', H, K]
  (per channel), h0 fp32 [B', H, K, V]. Returns (o [B, T, H, V], final state fp32 [B, H, K, V]).
  interpret not None: the segment states' forward by the block_states Pallas kernel (chunks of `chunk`
  rows; in interpret mode if interpret; its folded form if fold; sub-blocks of sub_block rows, None:
  sub_block_rows'), else in XLA.
  """
  b, t, h, kd = q.shape
  vd = v.shape[-1]
  p, ts = segments, t // segments
  cut = lambda x: None if x is None else x.reshape(b * p, ts, *x.shape[2:])
  # the first P - 1 segments' decays and local states give every start state; the last segment's run gives the
  # final state (its local state would be work for nothing: 1 / P of block_states' programs)
  if g is None:
    decay_last = jnp.ones((b, p - 1, h, kd, 1), _F32)
  else:
    gsum = jnp.sum(g.astype(_F32).reshape(b, p, ts, h, -1)[:, :p - 1], axis=2)  # [B, P - 1, H, 1 or K]
    decay_last = jnp.broadcast_to(jnp.exp(gsum)[..., None], (b, p - 1, h, kd, 1))
  if interpret is None:
    s_loc = _local_states_xla(k, v, g, p, p - 1)
  else:
    if sub_block is None:
      sub_block = sub_block_rows(b, p - 1, h, ts, vd, chunk)
    s_loc = _local_states(k, v, g, p, chunk, bool(interpret), fold, p - 1, sub_block)
  s_start = boundary_states(decay_last, s_loc, initial_state).reshape(b * p, h, kd, vd)
  o, ht = kernel(cut(q), cut(k), cut(v), cut(g), s_start)
  return o.reshape(b, t, h, vd), ht.reshape(b, p, h, kd, vd)[:, -1]


def boundary_states(decay_last, s_loc, initial_state):
  """The state fp32 [B, N + 1, H, K, V] at each boundary of N consecutive segments (the start of each, then the
  end of the last) from their decays over their whole length decay_last [B, N, H, K, 1] and local states s_loc
  [B, N, H, K, V] (from zero), by an associative scan of the affine maps S -> a S + b; initial_state
  [B, H, K, V] or None (zero)."""
  b, n, h, kd, vd = s_loc.shape
  if n <= _SEQUENTIAL_BOUNDARIES:
    # a few segments: S_{i+1} = a_i S_i + b_i written out, which XLA fuses into one or a few passes (the
    # associative scan's pads, slices and concatenations took ~33 us of simple_gla's 1.08 ms at B=1 T=65536, P=8)
    s = jnp.zeros((b, h, kd, vd), _F32) if initial_state is None else initial_state.astype(_F32)
    out = [s]
    for i in range(n):
      s = s_loc[:, i] if i == 0 and initial_state is None else decay_last[:, i] * s + s_loc[:, i]
      out.append(s)
    return jnp.stack(out, axis=1)
  a_in, s_end = lax.associative_scan(_combine, (decay_last, s_loc), axis=1)  # from a zero state
  first = jnp.zeros((b, 1, h, kd, vd), _F32)
  if initial_state is not None:
    h0 = initial_state.astype(_F32)[:, None]
    s_end, first = s_end + a_in * h0, h0
  return jnp.concatenate([first, s_end], axis=1)


def primal_with_vjp_of(primal, differentiable):
  """f(*args) = primal(*args) outside differentiation; under jax.grad / jax.vjp, f's forward and backward are
  those of `differentiable`, which must compute the same function (for a primal-only fast path, such as a split
  whose pieces have no VJP of their own)."""
  @jax.custom_vjp
  def f(*args):
    return primal(*args)

  def fwd(*args):
    return jax.vjp(differentiable, *args)

  def bwd(vjp, ct):
    return vjp(ct)

  f.defvjp(fwd, bwd)
  return f
