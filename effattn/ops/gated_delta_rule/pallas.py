"""Pallas kernels for the chunkwise (gated) delta rule, forward and custom-VJP backward (impl='kernel').

ALGORITHMS.md section 6 (Yang et al. 2024, NeurIPS, arXiv 2406.06484, Sec. 3 + App. B: WY/UT
transform; Yang, Kautz, Hatamizadeh 2025, ICLR, arXiv 2412.06464 for the scalar gate). DeltaNet is the
gated rule with g = 0. Per chunk c (G chunk-local cumsum of g, Γ_ij = e^{G_i - G_j} for i >= j, q scaled):
  A = strictly-lower(diag(β)(K K^T ⊙ Γ)),  [W | U] = (I + A)^{-1} [diag(β) K ⊙ e^G | diag(β) V]   (parallel)
  V' = U - W S_c,  O_c = (Q ⊙ e^G) S_c + (Q K^T ⊙ Γ) V',  S_{c+1} = e^{G_C} S_c + (K ⊙ e^{G_C - G})^T V'

Design (why this split). Four Pallas kernels:
  - WY kernel (_wy_kernel.py), one program per (batch, head, chunk): A, T = (I + A)^{-1} (16-row blocks,
    forward substitution, block merge, as fla's solve_tril), W, U; T is written out for the backward.
    In XLA the blocked inverse is ~100 small ops (launch-bound at B=4, T=4096, H=16); in-kernel it is free.
  - Forward kernel, Lightning Attention-2 layout as in simple_gla/pallas.py: one program per (batch, head,
    value tile) walks the chunks with a fori_loop and keeps the fp32 state [K, BV] on chip; value tiling
    is exact because each column of S evolves independently given W and U. It writes o, the final
    state and, under jax.grad only, the chunk-start states S_c (fp32, [B, H, N, K, V]; FLA stores h in
    bf16, which here took dg of the bf16 tests from 3.2e-3 to 4.0e-3 relative RMS, tolerance 5e-3).
    KernelConfig(split_o=True) splits it as fla (chunk_fwd_h + chunk_fwd_o): the sweep computes only V'
    and S (2 dots per chunk instead of 5: 230 registers at 8 warps, 194 at 4 warps with 32-wide value
    tiles, no spills) and writes V' and every S_c; o comes from a kernel per (batch, head, chunk).
    At long T and small B * H, outside jax.grad, the sweep runs on segments of the sequence as batch rows
    (_split.py, KernelConfig.split_programs: two state-only sweeps for each segment's local state and transition
    matrix, the segment start states in XLA, then the sweep from them); W, U still come from one WY call.
  - Backward kernel: the same layout sweeping the chunks in reverse with the state-gradient recurrence
    dV'_c = (Q K^T ⊙ Γ)^T dO_c + (K ⊙ e^{G_C - G}) dS_{c+1},
    dS_c  = e^{G_C} dS_{c+1} + (Q ⊙ e^G)^T dO_c - W^T dV'_c,   dS_N = d final_state, d h0 = dS_0,
    writing every chunk-end cotangent dS_{c+1} (fp32: in bf16, as FLA's dh, dk of DeltaNet had 10% more
    error).
    Under jax.grad the forward also writes V' (fp32) and the backward sweep dV' (its dS' in two bf16 halves).
  - Everything else is parallel over chunks given S_c, dS_{c+1}, V' and dV', in two kernels as fla's
    chunk_bwd_dqkwg and prepare_wy_repr_bwd: _dqk_kernel.py (one program per (batch, head, chunk, key tile):
    dq, the output map's dk, dW and their gate terms) and _wy_bwd_kernel.py (one per chunk: through the saved
    T in closed form to dk, dv, dβ and the gate terms of A and kb). dg sums the pairs straddling each position
    (no reverse-cumsum cancellation). KernelConfig(bwd_split=False) runs the former single fused per-chunk
    kernel (_bwd_kernel.py) instead, which recomputes V' and dV': on the H200 it took 3.27 ms at B=4, T=4096,
    H=16, D=128, latency-bound with ~255 registers per 8-warp program (benchmarks/README.md).

Numerics: fp32 inputs use IEEE fp32 dots (Precision.HIGHEST) everywhere; bf16 inputs use bf16 kernel
dots (W, U, V', S rounded to bf16 before each dot, as FLA) with fp32 accumulation and fp32 states; the
triangular inverse is fp32 in both modes (IEEE forward substitution, block merges in 3xTF32 on the GPU).
Triton lowering constraints as in simple_gla/pallas.py:
no value slicing or cumsum (masked sums), power-of-two blocks (K, V padded to >= 16, T to the chunk).
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
from effattn.ops.common.pallas_triton import checked_chunk, checked_interpret
from effattn.ops.common.pallas_triton import chunk_slice as _chunk_slice
from effattn.ops.common.pallas_triton import next_pow2 as _next_pow2
from effattn.ops.common.pallas_triton import pad_axis as _pad_axis
from effattn.ops.gated_delta_rule import _split
from effattn.ops.gated_delta_rule._bwd_kernel import chunk_grads_kernel
from effattn.ops.gated_delta_rule._bwd_kernel import DOT_MODES
from effattn.ops.gated_delta_rule._dqk_kernel import dqk_kernel
from effattn.ops.gated_delta_rule._kernel_common import _Ctx, _nn, _nn_split, _nt, _params, _tn, chunk_gates
from effattn.ops.gated_delta_rule._wy_bwd_kernel import wy_bwd_kernel
from effattn.ops.gated_delta_rule._wy_kernel import wy_kernel

_MAX_HEAD_DIM = 128


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile widths and Triton launch parameters (untuned: simple_gla's best H100 settings)."""
    block_v: int = 64        # forward: value-tile width of each program
    block_v_bwd: int = 64    # backward state-gradient sweep: value-tile width
    num_warps: int = 8
    num_stages: int = 3
    num_warps_bwd: int = 8
    num_stages_bwd: int = 3
    num_warps_wy: int = 2    # WY/UT-transform kernel (one program per chunk; H200: 0.48 ms, 0.57 at 4 warps)
    block_v_chunk: int = 16  # per-chunk backward kernel: value columns per step (spills 64: 2.0 KB, 32: 1.4, 16: 0.7)
    num_warps_chunk: int = 8
    num_stages_chunk: int = 1
    bwd_dots: str = 'mixed'  # per-chunk backward, bf16 inputs: which dots take TF32 (_bwd_kernel.DOT_MODES)
    split_o: bool = False    # forward as fla: the sweep writes V' and S_c, o in a kernel per chunk
    num_warps_o: int = 8
    bwd_split: bool = True   # backward as fla: dq/dk/dW kernel tiled over K (_dqk_kernel) + WY backward kernel
    block_k_dqk: int = 128   # _dqk_kernel: key-tile width of each program (H200, 32 value columns, 1 stage:
    block_v_dqk: int = 32    # 128 keys at 8 warps 1.05 ms, at 4 warps 1.44; 64 keys at 4 warps 1.23, 32: 1.63;
    num_warps_dqk: int = 8   # fwd+bwd 2.86 against 3.00 ms at 64 keys, 4 warps; value columns 16: 1.29-1.52,
    num_stages_dqk: int = 1  # 64: 1.34)
    cols_wy_bwd: int = 64    # _wy_bwd_kernel: key / value columns per step
    num_warps_wy_bwd: int = 4
    num_stages_wy_bwd: int = 1
    # bf16 gated inputs: 'kernel' (each kernel builds the chunk-local cumsum G of g from [C, C] masked sums, in
    # every chunk step of the sweeps) or 'xla' (G computed once, a cumsum over [B, T, H], and read by the
    # kernels). H200, B=4 T=4096 H=16 D=128 bf16 (kernel_parts.py, results/gdr_parts_*_cumsum_2026-12-03.json):
    # forward 0.718 -> 0.558 ms, forward+backward 2.884 -> 2.402 ms with 'xla'.
    gate_cumsum: str = 'xla'
    bwd_storage: str = 'fp32'  # dtype of what the backward reads back: 'fp32'; 'input' (the input dtype, as fla:
    # half the traffic, one more rounding of each); 'states' (S_c and V' in it, dS_{c+1} and dV' fp32); 'cotangents'
    # (the reverse)
    # Long T at small B * H, forward without jax.grad only (_split.py): segments of the sequence as batch rows, up to
    # split_programs forward-sweep programs (None: 1 per SM on GPU, no split elsewhere; 0: never), segments of
    # >= split_min_len rows. It runs 3 sweeps (two of them state-only), so it pays only while SMs would idle.
    split_programs: int | None = None
    split_min_len: int = 1024
    split_block_v: int | None = 128  # the split's sweeps: value-tile width (None: block_v; _split.split_plan)
    # the split's two state-only sweeps (each segment's local state and transition matrix): value-tile width and warps
    # (None: as the split's sweep). Narrower tiles at 4 warps let two of them share an SM (ptxas: 242 registers, 88 KB
    # shared memory at 64 columns, against 254 registers, 8 warps, one per SM at 128); the segment count stays the
    # split's (_split.split_forward).
    split_states_block_v: int | None = None
    split_states_num_warps: int | None = None
    # their loads' pipeline stages (None: num_stages). H200, delta_rule forward at B=1 T=65536 H=16 D=128 bf16
    # (kernel_parts.py --parts fwd, results/gpu_checks-2026-12-04_s10/call2_delta_states_stages.json): 1 stage 2.687
    # ms, 2 2.631, 3 2.508, 4 2.453 (shared memory: 4 x 48 KB of k, w, u tiles at 128 columns)
    split_states_num_stages: int | None = 4
    # which of them carry the state transposed, S^T [BV, Kp], so that the state and V' enter their dots as first
    # operands, which Hopper's wgmma reads from registers instead of shared memory (_split.transposed_states_kernel):
    # 'none', 'transition' (the sweep from I with U = 0) or 'both' (S_loc's sweep also transposes each U tile, a
    # layout change through shared memory). ptxas (sm_90a, K = V = 128): 214 / 170 registers against 254 / 242, both
    # dots with register operands A. H200, forward at H=16 D=128 bf16 (kernel_parts.py --parts fwd,
    # results/gpu_checks-2026-12-04_s13/call1_*): delta_rule B=1 T=65536 none 2.399 / 2.407, transition 2.274, both
    # 2.211 ms; gated_delta_rule 2.837 / 2.734 / 2.686; at B=2 T=32768 (P = 2, S_loc(0) only) none 2.145, both 2.162.
    split_states_transposed: str = 'both'

    def __post_init__(self):
        modes = ('none', 'transition', 'both')
        if self.split_states_transposed not in modes:
            raise ValueError(f'KernelConfig.split_states_transposed must be one of {modes}; got '
                             f'{self.split_states_transposed!r}')

    def storage_dtypes(self, ctx):
        """(dtype of S_c and V', dtype of dS_{c+1} and dV') for bwd_storage."""
        kinds = {'fp32': (False, False), 'input': (True, True), 'states': (True, False), 'cotangents': (False, True)}
        if self.bwd_storage not in kinds:
            raise ValueError(f'KernelConfig.bwd_storage must be one of {sorted(kinds)}; got {self.bwd_storage!r}')
        return tuple(ctx.dt if narrow else _F32 for narrow in kinds[self.bwd_storage])


DEFAULT_CONFIG = KernelConfig()


# Kernels. Refs: q, k, w [Tp, Kp] (one batch, head), u, o, do [Tp, BV] (a value tile), g [Tp] fp32,
# states [Kp, BV] fp32, stacked chunk states [N * Kp, BV] fp32.

def _fwd_kernel(q_ref, k_ref, w_ref, u_ref, g_ref, *rest, ctx: _Ctx, has_h0: bool, store: bool, split: bool,
                keep_vn: bool, emit_o: bool = True, has_u: bool = True):
    """split: o_ref receives V' (o is left to _o_kernel); keep_vn: V' also goes to a 4th output; not emit_o: the
    final state is the only output (no o_ref); not has_u: U = 0 (u_ref is a placeholder, never read)."""
    rest = list(rest)
    h0_ref = rest.pop(0) if has_h0 else None
    if not emit_o:
        rest.insert(0, None)
    o_ref, ht_ref = rest[:2]
    s_ref = rest[2] if store else None
    vn_ref = rest[3] if keep_vn else None  # V' for the split backward (in cfg.storage_dtypes' first)
    tp, kp = q_ref.shape
    bv = u_ref.shape[-1]
    chunk, scale = ctx.chunk, ctx.scale
    s0 = h0_ref[...].astype(_F32) if has_h0 else jnp.zeros((kp, bv), _F32)

    def body(c, s):
        sl = _chunk_slice(c, chunk)
        if store:
            s_ref[_chunk_slice(c, kp), :] = s.astype(s_ref.dtype)
        kc = k_ref[sl, :]
        gt = chunk_gates(g_ref, sl, ctx)
        ws = _nn(w_ref[sl, :], s, ctx)
        vp = u_ref[sl, :].astype(_F32) - ws if has_u else -ws  # V' = U - W S_c
        if vn_ref is not None:
            vn_ref[sl, :] = vp.astype(vn_ref.dtype)
        if split:
            o_ref[sl, :] = vp.astype(o_ref.dtype)
        elif emit_o:
            qc = q_ref[sl, :]
            p = _nt(qc, kc, ctx) * (gt.gamma() * scale)
            o = _nn(qc, s, ctx) * (scale * jnp.exp2(gt.gi))[:, None] + _nn(p, vp, ctx)
            o_ref[sl, :] = o.astype(o_ref.dtype)
        kd = kc.astype(_F32) * jnp.exp2(gt.rj)[:, None]
        return jnp.exp2(gt.gl) * s + _tn(kd, vp, ctx)

    ht_ref[...] = jax.lax.fori_loop(0, tp // chunk, body, s0)


def _o_kernel(q_ref, k_ref, vn_ref, g_ref, s_ref, o_ref, *, ctx: _Ctx):
    """One chunk (split_o): O = (s Q ⊙ e^G) S_c + (s Q K^T ⊙ Γ) V'."""
    q, k = q_ref[...], k_ref[...]
    gt = chunk_gates(g_ref, slice(None), ctx)
    p = _nt(q, k, ctx) * (gt.gamma() * ctx.scale)
    o = _nn(q, s_ref[...], ctx) * (ctx.scale * jnp.exp2(gt.gi))[:, None] + _nn(p, vn_ref[...], ctx)
    o_ref[...] = o.astype(o_ref.dtype)


def _bwd_kernel(q_ref, k_ref, w_ref, do_ref, g_ref, dht_ref, ds_ref, dh0_ref, *rest, ctx: _Ctx):
    dvn_ref = rest[0] if rest else None  # dV', when the backward is split
    tp, kp = q_ref.shape
    n = tp // ctx.chunk
    scale = ctx.scale

    def body(i, ds):  # ds: cotangent of S_{c+1}
        c = n - 1 - i
        ds_ref[_chunk_slice(c, kp), :] = ds.astype(ds_ref.dtype)
        sl = _chunk_slice(c, ctx.chunk)
        qc, kc, doc = q_ref[sl, :], k_ref[sl, :], do_ref[sl, :]
        gt = chunk_gates(g_ref, sl, ctx)
        p = _nt(qc, kc, ctx) * (gt.gamma() * scale)
        if dvn_ref is None:
            kds = _nn(kc, ds, ctx)
        else:  # dV' is an output: dS' in two bf16 halves, as the per-chunk kernels had it
            kds = _nn_split(kc, ds, ctx)
        dvp = _tn(p, doc, ctx) + kds * jnp.exp2(gt.rj)[:, None]  # decay on the [C, BV] tile
        if dvn_ref is not None:
            dvn_ref[sl, :] = dvp.astype(dvn_ref.dtype)
        qd = qc.astype(_F32) * (scale * jnp.exp2(gt.gi))[:, None]
        return jnp.exp2(gt.gl) * ds + _tn(qd, doc, ctx) - _tn(w_ref[sl, :], dvp, ctx)

    dh0_ref[...] = jax.lax.fori_loop(0, n, body, dht_ref[...].astype(_F32))


# ----------------------------------------------------------------------------------------------------
# pallas_call wrappers on padded arrays: q, k, w [B,Tp,H,Kp], u, do [B,Tp,H,Vp] (ctx.dt), g [B,H,Tp] fp32,
# h0 / dht [B,H,Kp,Vp] fp32; chunk states [B,H,N*Kp,Vp] fp32.

def _same(b):
    return b


def _rows(tp, d, pick=_same):  # pick: the input batch row of grid row b (_forward's `segments`)
    return pl.BlockSpec((None, tp, None, d), lambda b, h, r: (pick(b), 0, h, 0))


def _rows_tile(tp, bv, pick=_same):
    return pl.BlockSpec((None, tp, None, bv), lambda b, h, r: (pick(b), 0, h, r))


def _gate_spec(tp, pick=_same):
    return pl.BlockSpec((None, None, tp), lambda b, h, r: (pick(b), h, 0))


def _state_tile(rows, bv):
    return pl.BlockSpec((None, None, rows, bv), lambda b, h, r: (b, h, 0, r))



def _transposed_states(cfg, has_u: bool) -> bool:
    """Whether a state-only sweep (S_loc's if has_u, else the transition's) runs transposed."""
    return cfg.split_states_transposed == 'both' or (cfg.split_states_transposed == 'transition' and not has_u)


def _forward(q, k, w, u, g, h0, ctx, cfg, interpret, store, final_only=False, segments=None):
    """(o, ht, chunk-start states, V'): the states only if `store` (under jax.grad), V' only if also
    cfg.bwd_split (the fused per-chunk backward recomputes it). final_only (the sequence split's state passes,
    _split.py): (None, ht, None, None) from a sweep that computes only V' and S; there u None means U = 0, the value
    width then h0's, and segments = (P, first, count) sweeps only the batch rows of segments first ... first + count
    - 1 of each group of P (rows B * P in, ht [B * count, H, Kp, Vp] out; h0, if any, has B * count rows)."""
    b, tp, h, kp = q.shape
    vp = (h0 if u is None else u).shape[-1]
    n = tp // ctx.chunk
    bv = min(cfg.block_v, vp)
    has_h0 = h0 is not None
    pick, rows_out = _same, b
    if segments is not None:
        p, first, count = segments
        pick = lambda i: jax.lax.div(i, count) * p + first + jax.lax.rem(i, count)
        rows_out = b // p * count
    in_specs = [_rows(tp, kp, pick), _rows(tp, kp, pick), _rows(tp, kp, pick), _rows_tile(tp, bv, pick),
                _gate_spec(tp, pick)]
    args = [q, k, w, w if u is None else u, g]  # U = 0: w stands in for u, unread (same rows, width vp = kp)
    if has_h0:
        in_specs.append(_state_tile(kp, bv))
        args.append(h0)
    if final_only:
        kernel = (functools.partial(_split.transposed_states_kernel, ctx=ctx, has_h0=has_h0, has_u=u is not None,
                                    interpret=interpret)
                  if _transposed_states(cfg, u is not None) else
                  functools.partial(_fwd_kernel, ctx=ctx, has_h0=has_h0, store=False, split=False, keep_vn=False,
                                    emit_o=False, has_u=u is not None))
        ht = pl.pallas_call(
            kernel,
            grid=(rows_out, h, vp // bv), in_specs=in_specs, out_specs=_state_tile(kp, bv),
            out_shape=jax.ShapeDtypeStruct((rows_out, h, kp, vp), _F32), interpret=interpret,
            name='gated_delta_rule_states', **_params(interpret, ctx, cfg.num_warps, cfg.num_stages))(*args)
        return None, ht, None, None
    if segments is not None:
        raise ValueError('_forward: segments applies to the state-only sweeps (final_only) only')
    split = cfg.split_o
    out_specs = [_rows_tile(tp, bv), _state_tile(kp, bv)]
    # split: the first output is V' (in the storage dtype under grad: the backward reads it), o from _o_kernel
    kept = cfg.storage_dtypes(ctx)[0]
    first = kept if split and store else q.dtype
    out_shape = [jax.ShapeDtypeStruct((b, tp, h, vp), first), jax.ShapeDtypeStruct((b, h, kp, vp), _F32)]
    if store or split:  # states for _o_kernel only: in the dot dtype
        out_specs.append(_state_tile(n * kp, bv))
        out_shape.append(jax.ShapeDtypeStruct((b, h, n * kp, vp), kept if store else ctx.dt))
    keep_vn = store and cfg.bwd_split and not split
    if keep_vn:
        out_specs.append(_rows_tile(tp, bv))
        out_shape.append(jax.ShapeDtypeStruct((b, tp, h, vp), kept))
    outs = pl.pallas_call(
        functools.partial(_fwd_kernel, ctx=ctx, has_h0=has_h0, store=store or split, split=split, keep_vn=keep_vn),
        grid=(b, h, vp // bv), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape, interpret=interpret,
        name='gated_delta_rule_fwd', **_params(interpret, ctx, cfg.num_warps, cfg.num_stages))(*args)
    o = outs[0]
    v_new = outs[3] if keep_vn else None
    if split:
        c = ctx.chunk
        v_new = o if store and cfg.bwd_split else None
        rows = lambda d: pl.BlockSpec((None, c, None, d), lambda b, h, n: (b, n, h, 0))
        o = pl.pallas_call(
            functools.partial(_o_kernel, ctx=ctx), grid=(b, h, n),
            in_specs=[rows(kp), rows(kp), rows(vp), pl.BlockSpec((None, None, c), lambda b, h, n: (b, h, n)),
                      pl.BlockSpec((None, None, kp, vp), lambda b, h, n: (b, h, n, 0))],
            out_specs=rows(vp), out_shape=jax.ShapeDtypeStruct((b, tp, h, vp), q.dtype), interpret=interpret,
            name='gated_delta_rule_o', **_params(interpret, ctx, cfg.num_warps_o, 2))(q, k, o, g, outs[2])
    return o, outs[1], (outs[2] if store else None), v_new


def _state_grads(q, k, w, do, g, dht, ctx, cfg, interpret, with_dv_new=False):
    """Chunk-end state cotangents [B,H,N*Kp,Vp], d initial_state [B,H,Kp,Vp] (fp32) and, if `with_dv_new`,
    dV' [B,Tp,H,Vp] (None otherwise); the first and last in cfg.storage_dtypes' second."""
    b, tp, h, kp = q.shape
    vp = do.shape[-1]
    n = tp // ctx.chunk
    bv = min(cfg.block_v_bwd, vp)
    out_specs = [_state_tile(n * kp, bv), _state_tile(kp, bv)]
    kept = cfg.storage_dtypes(ctx)[1]
    out_shape = [jax.ShapeDtypeStruct((b, h, n * kp, vp), kept), jax.ShapeDtypeStruct((b, h, kp, vp), _F32)]
    if with_dv_new:
        out_specs.append(_rows_tile(tp, bv))
        out_shape.append(jax.ShapeDtypeStruct((b, tp, h, vp), kept))
    outs = pl.pallas_call(
        functools.partial(_bwd_kernel, ctx=ctx), grid=(b, h, vp // bv),
        in_specs=[_rows(tp, kp), _rows(tp, kp), _rows(tp, kp), _rows_tile(tp, bv), _gate_spec(tp),
                  _state_tile(kp, bv)],
        out_specs=out_specs, out_shape=out_shape, interpret=interpret, name='gated_delta_rule_bwd',
        **_params(interpret, ctx, cfg.num_warps_bwd, cfg.num_stages_bwd))(q, k, w, do, g, dht)
    return outs[0], outs[1], (outs[2] if with_dv_new else None)


def _gates_bht(g):
    return jnp.swapaxes(g, 1, 2)  # [B,Tp,H] -> [B,H,Tp]


def _gate_rows(g, ctx):
    """What the kernels read for the gates, [B,H,Tp]: g, or G (chunk-local cumsum of g log2 e) if ctx.cumulative."""
    if ctx.cumulative:
        b, tp, h = g.shape
        g = jnp.cumsum((g * _LOG2E).reshape(b, tp // ctx.chunk, ctx.chunk, h), axis=2).reshape(b, tp, h)
    return _gates_bht(g)


def cumulative_gates(cfg, dtype, gated: bool) -> bool:
    """Whether the kernels read G (KernelConfig.gate_cumsum='xla', bf16 / fp16 gated inputs)."""
    if cfg.gate_cumsum not in ('kernel', 'xla'):
        raise ValueError(f"KernelConfig.gate_cumsum must be 'kernel' or 'xla'; got {cfg.gate_cumsum!r}")
    return gated and cfg.gate_cumsum == 'xla' and jnp.dtype(dtype) != jnp.float32


def _run_forward(q, k, v, g, beta, h0, ctx, cfg, interpret, store):
    """(o, ht, chunk-start states or None, (W, U, T), V' or None). Without `store` (no jax.grad), at long T and small
    B * H, the sweep runs on segments of the sequence (_split.py); W, U, T come from the whole sequence either way."""
    gr = _gate_rows(g, ctx)
    w, u, t = wy_kernel(k, v, gr, _gates_bht(beta), ctx, cfg.num_warps_wy, interpret)
    b, tp, h, _ = q.shape
    segments, split_cfg = (1, cfg) if store else _split.split_plan(b, h, tp, u.shape[-1], ctx.chunk, cfg,
                                                                     default_backend(), h0 is not None)
    if segments > 1:
        o, ht = _split.split_forward(_forward, q, k, w, u, gr, h0, ctx, split_cfg, interpret, segments)
        return o, ht, None, (w, u, t), None
    o, ht, s_starts, v_new = _forward(q, k, w, u, gr, h0, ctx, cfg, interpret, store)
    return o, ht, s_starts, (w, u, t), v_new


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _core(q, k, v, g, beta, h0, ctx, cfg, interpret):
    o, ht, _, _, _ = _run_forward(q, k, v, g, beta, h0, ctx, cfg, interpret, False)
    return o, ht


def _core_fwd(q, k, v, g, beta, h0, ctx, cfg, interpret):
    o, ht, s_starts, wut, v_new = _run_forward(q, k, v, g, beta, h0, ctx, cfg, interpret, True)
    return (o, ht), (q, k, v, g, beta, h0, s_starts, wut, v_new)


def _chunk_grads(q, k, v, g, beta, s_starts, ds_ends, wut, do, ctx, cfg, interpret):
    """The fused per-chunk backward (KernelConfig(bwd_split=False)): dq, dk, dv (ctx.dt), dg, dbeta."""
    w, u, t = wut
    dq, dk, dv, dg, dbeta = chunk_grads_kernel(
        q, k, v, w, u, do, _gate_rows(g, ctx), _gates_bht(beta), t, s_starts, ds_ends, ctx, cfg.block_v_chunk,
        cfg.num_warps_chunk, cfg.num_stages_chunk, interpret, cfg.bwd_dots)
    return dq, dk, dv, _gates_bht(dg), _gates_bht(dbeta)


def _split_grads(q, k, v, g, beta, s_starts, ds_ends, wut, v_new, dv_new, do, ctx, cfg, interpret):
    """The split backward (as fla): dq, dk_o, dW per key tile, then the WY backward; as _chunk_grads."""
    if cfg.bwd_dots not in DOT_MODES:
        raise ValueError(f'bwd_dots must be one of {sorted(DOT_MODES)}; got {cfg.bwd_dots!r}')
    wide_q, wide_dvb, wide_k = DOT_MODES[cfg.bwd_dots]
    w, u, t = wut
    gb = _gate_rows(g, ctx)
    dq, dk_o, dw, dg_o = dqk_kernel(q, k, v_new, dv_new, do, gb, s_starts, ds_ends, ctx, cfg.block_k_dqk,
                                    cfg.block_v_dqk, cfg.num_warps_dqk, cfg.num_stages_dqk, interpret, wide_q, wide_k)
    dk, dv, dg_wy, dbeta = wy_bwd_kernel(k, v, w, u, gb, _gates_bht(beta), t, dw, dv_new, dk_o, ctx, cfg.cols_wy_bwd,
                                         cfg.num_warps_wy_bwd, cfg.num_stages_wy_bwd, interpret, wide_dvb, wide_k)
    return dq, dk, dv, _gates_bht(dg_o + dg_wy), _gates_bht(dbeta)


def _core_bwd(ctx, cfg, interpret, res, cts):
    q, k, v, g, beta, h0, s_starts, wut, v_new = res
    do, dht = cts
    do = do.astype(ctx.dt)
    split = v_new is not None
    ds_ends, dh0, dv_new = _state_grads(q, k, wut[0], do, _gate_rows(g, ctx), dht.astype(_F32), ctx, cfg, interpret,
                                        with_dv_new=split)
    if split:
        grads = _split_grads(q, k, v, g, beta, s_starts, ds_ends, wut, v_new, dv_new, do, ctx, cfg, interpret)
    else:
        grads = _chunk_grads(q, k, v, g, beta, s_starts, ds_ends, wut, do, ctx, cfg, interpret)
    dq, dk, dv, dg, dbeta = grads
    cast = lambda x, ref: x.astype(ref.dtype)
    return (cast(dq, q), cast(dk, k), cast(dv, v), cast(dg, g), cast(dbeta, beta),
            None if h0 is None else cast(dh0, h0))


_core.defvjp(_core_fwd, _core_bwd)


def kernel_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state=None, segment_ids=None,
                            chunk_size=64, config: KernelConfig | None = None,
                            interpret: bool | None = None):
    """Returns (o [B,T,H,V] in q's dtype, final_state fp32 [B,H,K,V]); g None means no decay (DeltaNet).

    Raises NotImplementedError (so that impl='auto' falls through to 'chunk') for segment_ids, on TPU,
    for head dims above 128 and for a chunk_size outside (16, 32, 64). interpret None: Pallas interpret
    mode everywhere but on GPU.
    """
    interpret = checked_interpret('gated_delta_rule', q, v, segment_ids, interpret, _MAX_HEAD_DIM)
    chunk = checked_chunk('gated_delta_rule', chunk_size, (16, 32, 64))
    cfg = DEFAULT_CONFIG if config is None else config
    b, t, h, kd = q.shape
    vd = v.shape[-1]
    dtype = jnp.promote_types(q.dtype, jnp.bfloat16)
    dtype = jnp.promote_types(jnp.promote_types(dtype, k.dtype), v.dtype)
    tp = -(-t // chunk) * chunk
    kp, vp = _next_pow2(kd), _next_pow2(vd)
    pad = lambda x, d: _pad_axis(_pad_axis(x.astype(dtype), 1, tp), 3, d)
    ungated = g is None
    if ungated:
        # Behind a barrier: XLA otherwise constant-folds the backward's cumulative sums of this
        # constant ([B, H, N, C, C] reduce-windows), which took minutes to compile at T = 4096.
        g = jax.lax.optimization_barrier(jnp.zeros((b, t, h), _F32))
    else:
        g = g.astype(_F32)
    g, beta = _pad_axis(g, 1, tp), _pad_axis(beta.astype(_F32), 1, tp)
    h0 = None
    if initial_state is not None:
        h0 = _pad_axis(_pad_axis(initial_state.astype(_F32), 2, kp), 3, vp)
    ctx = _Ctx(jnp.dtype(dtype), float(scale), chunk, gated=not ungated,
               cumulative=cumulative_gates(cfg, dtype, not ungated))
    o, ht = _core(pad(q, kp), pad(k, kp), pad(v, vp), g, beta, h0, ctx, cfg, interpret)
    return o[:, :t, :, :vd].astype(q.dtype), ht[:, :, :kd, :vd]
