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
initial state S_start(s). Extra cost: the state matmul (2 T K V flops per head, reading k and v once)
and a log2(P)-deep scan of [K, V] states, far less than stitching the outputs (reading q, writing o).
This is flash-linear-attention's split state passing (fla/ops/common/chunk_h_split.py) in XLA around
an unchanged kernel. Gradients come from autodiff of these ops and the kernel's own custom VJP (its
initial-state gradient). The delta rule is not diagonal in S (its transition is I - beta k k^T), so this
does not apply there.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

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


def _combine(earlier, later):
  """Composes the affine state maps S -> a S + b of two consecutive runs of segments (earlier first)."""
  a1, b1 = earlier
  a2, b2 = later
  return a1 * a2, a2 * b1 + b2


def split_over_segments(kernel, q, k, v, g, *, initial_state, segments: int):
  """Runs `kernel` on `segments` equal cuts of the sequence at once, each from its exact initial state.

  kernel(q, k, v, g, h0) -> (o [B', T', H, V] in q's dtype, final state fp32 [B', H, K, V]), where
  q, k: [B', T', H, K], v: [B', T', H, V], g: None, [B', T', H] (scalar log decay) or [B', T', H, K]
  (per channel), h0 fp32 [B', H, K, V]. Returns (o [B, T, H, V], final state fp32 [B, H, K, V]).
  """
  b, t, h, kd = q.shape
  vd = v.shape[-1]
  p, ts = segments, t // segments
  cut = lambda x: None if x is None else x.reshape(b * p, ts, *x.shape[2:])
  if g is None:
    to_end = jnp.ones((b, p, ts, h, 1), _F32)
    decay_last = jnp.ones((b, p, h, kd, 1), _F32)
  else:
    gcum = jnp.cumsum(g.astype(_F32).reshape(b, p, ts, h, -1), axis=2)  # [B, P, T', H, 1 or K]
    to_end = jnp.exp(gcum[:, :, -1:] - gcum)  # <= 1: decay from row t to the segment's end
    decay_last = jnp.broadcast_to(jnp.exp(gcum[:, :, -1])[..., None], (b, p, h, kd, 1))
  dot_dtype = jnp.promote_types(k.dtype, v.dtype)
  # Each segment's state is a sum over sub-blocks of <= _SUB_BLOCK rows: B*H*P products of length T/P would
  # leave most SMs idle at B = 1 (64 [K, V] outputs at T = 65536, H = 16, P = 4).
  sub = ts // _SUB_BLOCK if ts % _SUB_BLOCK == 0 else 1
  k_dec = (k.reshape(b, p, ts, h, kd).astype(_F32) * to_end).astype(dot_dtype)
  s_loc = jnp.einsum('bpsthk,bpsthv->bpshkv', k_dec.reshape(b, p, sub, ts // sub, h, kd),
                     v.reshape(b, p, sub, ts // sub, h, vd).astype(dot_dtype), preferred_element_type=_F32,
                     precision=lax.Precision.HIGHEST if dot_dtype == _F32 else None).sum(axis=2)
  a_in, s_end = lax.associative_scan(_combine, (decay_last, s_loc), axis=1)  # from a zero state
  first = jnp.zeros((b, 1, h, kd, vd), _F32)
  if initial_state is not None:
    h0 = initial_state.astype(_F32)[:, None]
    s_end, first = s_end + a_in * h0, h0
  s_start = jnp.concatenate([first, s_end[:, :-1]], axis=1).reshape(b * p, h, kd, vd)
  o, _ = kernel(cut(q), cut(k), cut(v), cut(g), s_start)
  return o.reshape(b, t, h, vd), s_end[:, -1]
