"""Sequence split of the (gated) delta-rule forward sweep at long T and small B * H: segments in parallel.

The forward sweep of pallas.py walks the chunks of one (batch, head, value tile) in one program: B * H * V / BV
programs, 32 at B = 1, T = 65536, H = 16, V = 128 (BV = 64) on a GPU of 132 SMs, and its time is the chain of
1024 chunks (H200: forward 4.39 ms there against 1.85 ms at B = 32, T = 2048; the sweep 3.42 ms, the WY kernel
0.85 ms). common/sequence_split.py splits simple_gla and gla, whose transitions are diagonal; the delta rule's is
not (ALGORITHMS.md section 6; Yang et al. 2024, NeurIPS, arXiv 2406.06484, Sec. 3 + App. B), but it is still
affine in the state and the same for every value column. Given W and U of the WY transform, chunk c does
  S_{c+1} = e^{G_C} S_c + Kd^T (U - W S_c) = A_c S_c + Kd^T U,   A_c = e^{G_C} I - Kd^T W  [K, K]
(Kd = K ⊙ e^{G_C - G}). Cut the padded sequence into P contiguous segments of whole chunks, as batch rows
([B, Tp, H, D] -> [B * P, Tp / P, H, D] is a free reshape; the gate rows [B, H, Tp] take a small transpose).
W and U come from the WY kernel ONCE on the whole sequence (it is parallel over chunks). Then, exactly:
  1. S_loc(s): the sweep on the segments from a zero state (its final state; state-only, no o).
  2. M(s) = prod of the segment's A_c: the sweep on the segments with U = 0 from I [Kp, Kp] (the value width is
     Kp; state-only; U is never materialised).
  3. One small kernel (segment_starts, a program per (batch, head, value tile), fp32 dots in 3xTF32 on the GPU):
     S_start(0) = h0 (or 0), S_start(s+1) = M(s) S_start(s) + S_loc(s), a loop over the P - 1 segments (in XLA
     these were 2 (P - 1) launches, ~45 us of the 2.40 ms at B=1 T=65536, P = 8: kernel_profile.py).
     The last segment's S_loc and M are never read, nor M(0) without h0 (S_start(1) = S_loc(0)): sweeps 1 and 2
     skip those segments' rows (pallas._forward's `segments`), at P = 8 an eighth of sweep 1 and a quarter of 2
     (H200, B=1 T=65536: 288 and 256 us of the 2.42 ms forward before).
  4. The sweep on the segments from S_start(s): o, and the final state is the last segment's.
Two of the three sweeps compute only V' and S (2 dots per chunk instead of 5), so the split pays only while SMs
would idle: the number of segments is common/sequence_split.py's num_segments (KernelConfig.split_programs, one
program per SM on GPU by default, and split_min_len), taken on the chunk count rounded up to a power of two, then
halved until the segments hold >= split_min_len rows; when Tp is not a multiple of P chunks the segments are padded
at the end with identity chunks (k = w = u = 0, g = 0), copies of q, k, W, U that a power-of-two T never needs.
The split is used by the primal forward only (pallas._core). Under jax.grad (pallas._core_fwd) the forward stays
unsplit: the backward reads every chunk-start state S_c in the unsplit layout, so gradients are unchanged.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import chunk_slice as _chunk_slice
from effattn.ops.common.pallas_triton import next_pow2 as _next_pow2
from effattn.ops.common.pallas_triton import pad_axis as _pad_axis
from effattn.ops.common.sequence_split import num_segments
from effattn.ops.gated_delta_rule._kernel_common import _dot, _params, chunk_gates
from effattn.ops.gated_delta_rule._wy_kernel import _dot32


def segment_count(b: int, h: int, tp: int, vp: int, chunk: int, cfg, backend: str) -> int:
    """Segments P for B batch rows, H heads, Tp padded rows, Vp padded value width (1: no split); see the module
    docstring."""
    n = tp // chunk
    tiles = vp // min(cfg.block_v, vp)
    p = num_segments(b, h, _next_pow2(n, 1) * chunk, tiles, chunk, split_programs=cfg.split_programs,
                     min_len=cfg.split_min_len, backend=backend)
    while p > 1 and -(-n // p) * chunk < cfg.split_min_len:
        p //= 2
    return p


def split_plan(b: int, h: int, tp: int, vp: int, chunk: int, cfg, backend: str, has_h0: bool = False):
    """(segments P, the config of the split's sweeps). Where the sweep at cfg.block_v would leave SMs idle (P > 1),
    the split's sweeps take value tiles of cfg.split_block_v and P is counted again with them: wider tiles do the
    per-chunk K-wide dots (W S, Q K^T) once for more columns, and the segments make up the programs. H200, B=1,
    T=65536, H=16, D=128 bf16 (benchmarks/README.md): delta_rule 2.632 ms at 64-wide tiles (P = 4), 2.497 at 128
    (P = 8). Unsplit shapes keep block_v (128 at B=4, T=4096: 0.670 against 0.475).
    Except where block_v gives P = 2 without h0: that split has no transition sweep (S_start(1) = S_loc(0)), so its
    state work is one wave of S_loc(0) programs, where the wider tiles' P = 4 takes two (S_loc of 3 segments and M
    of 2: 5 B H programs). H200, B=2 T=32768 H=16 D=128 bf16 (results/gpu_checks-2026-12-04_s12/call1):
    delta_rule 2.194 ms at block_v (P = 2) against 2.458 at split_block_v (P = 4)."""
    p = segment_count(b, h, tp, vp, chunk, cfg, backend)
    if p == 1 or cfg.split_block_v is None or cfg.split_block_v == cfg.block_v or (p == 2 and not has_h0):
        return p, cfg
    wide = dataclasses.replace(cfg, block_v=cfg.split_block_v)
    return max(p, segment_count(b, h, tp, vp, chunk, wide, backend)), wide


def split_forward(forward, q, k, w, u, g, h0, ctx, cfg, interpret, segments: int):
    """(o [B,Tp,H,Vp] in q's dtype, final state fp32 [B,H,Kp,Vp]) by `segments` segments of the sweep `forward`
    (pallas._forward). q, k, w [B,Tp,H,Kp], u [B,Tp,H,Vp] (ctx.dt), g [B,H,Tp] fp32 (the kernels' gate rows), h0
    fp32 [B,H,Kp,Vp] or None."""
    b, tp, h, kp = q.shape
    vp = u.shape[-1]
    p = segments
    ts = -(-tp // (p * ctx.chunk)) * ctx.chunk  # rows per segment
    # identity chunks at the end if P chunks do not divide Tp (G = 0 there, also chunk-local cumulative G)
    q, k, w, u = (_pad_axis(x, 1, p * ts) for x in (q, k, w, u))
    g = _pad_axis(g, 2, p * ts)
    cut = lambda x: x.reshape(b * p, ts, *x.shape[2:])
    qs, ks, ws, us = cut(q), cut(k), cut(w), cut(u)
    gs = jnp.swapaxes(g.reshape(b, h, p, ts), 1, 2).reshape(b * p, h, ts)
    states_cfg = dataclasses.replace(cfg, block_v=cfg.split_states_block_v or cfg.block_v,
                                     num_warps=cfg.split_states_num_warps or cfg.num_warps,
                                     num_stages=cfg.split_states_num_stages or cfg.num_stages)
    # S_loc of segments 0 .. P-2, M of 1 .. P-2 (0 .. P-2 with h0)
    s_loc = forward(qs, ks, ws, us, gs, None, ctx, states_cfg, interpret, False, final_only=True,
                    segments=(p, 0, p - 1))[1].reshape(b, p - 1, h, kp, vp)
    first = 0 if h0 is not None else 1
    trans = None
    if p - 1 - first > 0:
        eye = jnp.broadcast_to(jnp.eye(kp, dtype=_F32), (b * (p - 1 - first), h, kp, kp))
        trans = forward(qs, ks, ws, None, gs, eye, ctx, states_cfg, interpret, False, final_only=True,
                        segments=(p, first, p - 1 - first))[1].reshape(b, p - 1 - first, h, kp, kp)
    s_start = segment_starts(trans, s_loc, h0, ctx, interpret).reshape(b * p, h, kp, vp)
    o, ht = forward(qs, ks, ws, us, gs, s_start, ctx, cfg, interpret, False)[:2]
    return o.reshape(b, p * ts, h, vp)[:, :tp], ht.reshape(b, p, h, kp, vp)[:, -1]


def _dot_in(a, b, ca: int, cb: int, ctx, interpret: bool):
    """_dot, but in interpret mode on operands rounded to the dot dtype and held in fp32 (the same products and fp32
    sums): XLA's CPU runtime (jaxlib 0.10) has no bf16 x bf16 -> fp32 dot for the gated sweep below
    ("Unsupported element type for DotThunk")."""
    if not interpret:
        return _dot(a, b, ca, cb, ctx)
    rounded = lambda x: x.astype(ctx.dt).astype(_F32)
    return jax.lax.dot_general(rounded(a), rounded(b), (((ca,), (cb,)), ((), ())),
                               precision=jax.lax.Precision.HIGHEST, preferred_element_type=_F32)


def transposed_states_kernel(q_ref, k_ref, w_ref, u_ref, g_ref, *rest, ctx, has_h0: bool, has_u: bool,
                             interpret: bool):
    """The state-only sweep (steps 1 and 2 above; pallas._fwd_kernel without o) on the transposed state S^T [BV, Kp]
    (KernelConfig.split_states_transposed), per chunk
      X = S^T W^T,   V'^T = U^T - X,   S^T <- e^{G_C} S^T + (V'^T ⊙ e^{G_C - G}) K.
    Why: in pallas._fwd_kernel's form (W S, then Kd^T V') the state and V' are the second operands of their dots,
    which Hopper's wgmma reads from shared memory only, so each chunk step stores a [Kp, BV] and a [C, BV] tile
    there and waits on a barrier twice. Here both are first operands, which wgmma takes from registers (as
    FlashAttention-3 chains P V), and the gates scale V'^T's columns so that K goes to its dot as loaded. The
    roundings are the same: S and V' to the dot dtype, fp32 accumulation. q_ref is not read (the refs are
    pallas._forward's); h0 and the final state keep the [Kp, BV] layout (one transpose at each end)."""
    h0_ref, ht_ref = rest if has_h0 else (None, *rest)
    tp, kp = k_ref.shape
    bv = ht_ref.shape[-1]
    chunk = ctx.chunk
    st0 = jnp.transpose(h0_ref[...].astype(_F32)) if has_h0 else jnp.zeros((bv, kp), _F32)

    def body(c, st):
        sl = _chunk_slice(c, chunk)
        gt = chunk_gates(g_ref, sl, ctx)
        x = _dot_in(st, w_ref[sl, :], 1, 1, ctx, interpret)                    # S^T W^T [BV, C]
        vpt = jnp.transpose(u_ref[sl, :]).astype(_F32) - x if has_u else -x   # V'^T
        if ctx.gated:
            vpt = vpt * jnp.exp2(gt.rj)[None, :]
            st = jnp.exp2(gt.gl) * st
        return st + _dot_in(vpt, k_ref[sl, :], 1, 0, ctx, interpret)

    ht_ref[...] = jnp.transpose(jax.lax.fori_loop(0, tp // chunk, body, st0))


# segment_starts: value columns per program, at 8 warps (ptxas, sm_90a, K = 128: 242 registers, no spills; at 4 warps
# 2 KB spilled, the [Kp, Kp] fp32 transition tile taking 128 registers per thread)
_STARTS_BLOCK_V = 32


def _starts_kernel(*refs, segments: int, has_trans: bool, has_h0: bool, interpret: bool):
    trans_ref, sloc_ref, *rest = refs if has_trans else (None, *refs)
    h0_ref, out_ref = rest if has_h0 else (None, *rest)
    kp, bv = sloc_ref.shape[-2:]
    s = h0_ref[...].astype(_F32) if has_h0 else jnp.zeros((kp, bv), _F32)
    out_ref[0] = s
    first = 0 if has_h0 else 1  # trans_ref holds M(first), M(first + 1), ...
    for seg in range(segments - 1):
        # without h0, S_start(1) = S_loc(0): M(0) is neither computed nor needed
        s = sloc_ref[seg] if seg < first else _dot32(trans_ref[seg - first], s, interpret) + sloc_ref[seg]
        out_ref[seg + 1] = s


def segment_starts(trans, s_loc, h0, ctx, interpret):
    """The state at the start of each segment, fp32 [B, P, H, Kp, Vp]: S_start(0) = h0 (None: 0), S_start(s+1) =
    M(s) S_start(s) + S_loc(s). s_loc [B, P - 1, H, Kp, Vp] (segments 0 .. P-2) and trans M [B, P - 1, H, Kp, Kp]
    (0 .. P-2) with h0, [B, P - 2, H, Kp, Kp] (1 .. P-2; None at P = 2) without, fp32."""
    b, p1, h, kp, vp = s_loc.shape
    p = p1 + 1
    bv = min(_STARTS_BLOCK_V, vp)
    in_specs, args = [], []
    if trans is not None:
        in_specs.append(pl.BlockSpec((None, trans.shape[1], None, kp, kp), lambda b, h, v: (b, 0, h, 0, 0)))
        args.append(trans)
    in_specs.append(pl.BlockSpec((None, p1, None, kp, bv), lambda b, h, v: (b, 0, h, 0, v)))
    args.append(s_loc)
    if h0 is not None:
        in_specs.append(pl.BlockSpec((None, None, kp, bv), lambda b, h, v: (b, h, 0, v)))
        args.append(h0.astype(_F32))
    return pl.pallas_call(
        functools.partial(_starts_kernel, segments=p, has_trans=trans is not None, has_h0=h0 is not None,
                          interpret=interpret),
        grid=(b, h, vp // bv), in_specs=in_specs, out_specs=pl.BlockSpec((None, p, None, kp, bv),
                                                                         lambda b, h, v: (b, 0, h, 0, v)),
        out_shape=jax.ShapeDtypeStruct((b, p, h, kp, vp), _F32), interpret=interpret,
        name='gated_delta_rule_segment_starts', **_params(interpret, ctx, 8, 1))(*args)
