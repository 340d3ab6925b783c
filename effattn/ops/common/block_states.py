"""Pallas kernel for the local states of fixed-length blocks of a diagonal-decay linear recurrence.

For S_t = diag(a_t) S_{t-1} + k_t v_t^T (GLA, Yang et al. 2024, arXiv 2312.06635, eq. 1; simple_gla / Lightning
when a_t is a scalar; ALGORITHMS.md sections 4-5) and G_t the inclusive cumsum of g = log a within a block, the
local state of a block of L rows from a zero state is
  S_loc = sum_{t in block} diag(e^{G_L - G_t}) k_t v_t^T.
One program per (batch, head, block, value tile) walks the block's chunks of C rows with the fp32 state on chip:
  S <- diag(e^{G_C}) S + (K_c ⊙ e^{G_C - G})^T V_c   (chunk-local G; masked sums, Triton has no cumsum).
Why: sequence_split needs these states for its segments. In XLA the einsum batches over heads, so k (scaled by
the decays) and v are transposed in HBM first; here the [B, T, H, D] inputs are read in place, once, by
B H (T / L) (V / BV) programs of L / C steps each.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32, LOG2E, CompilerParams, chunk_slice, next_pow2, pad_axis


def _kernel(k_ref, v_ref, *rest, chunk: int, gate: str, dt, prec, fold: bool = False):
    """gate: 'none', 'scalar' (g_ref [L], one log decay per row) or 'channel' (g_ref [L, K]).

    fold=False: S <- diag(e^{G_C}) S + (K_c ⊙ e^{G_C - G})^T V_c over the chunks in order. fold=True (block_states'
    fold): the chunks in reverse with the decay to the block's end folded into k, S = sum_c (K_c ⊙ e^{G_L - G})^T
    V_c, so that the state is never rescaled and each dot accumulates into it (the form Triton fuses into one
    accumulating MMA); the exponent adds `later`, the sum of g over the later chunks, accumulated from the end (no
    cancellation of large sums)."""
    g_ref, s_ref = rest if gate != 'none' else (None, rest[0])
    rows, kp = k_ref.shape
    bv = v_ref.shape[-1]
    n = rows // chunk
    fold = fold and gate != 'none'
    idx = jnp.arange(chunk, dtype=jnp.int32)
    after = (idx[None, :] > idx[:, None]).astype(F32)           # [t, l] = l > t

    def body(i, carry):
        s, later = carry
        sl = chunk_slice(n - 1 - i if fold else i, chunk)
        k, v = k_ref[sl, :].astype(F32), v_ref[sl, :]
        if gate == 'none':
            kd = k
        else:
            if gate == 'scalar':
                g = g_ref[sl] * LOG2E
                to_end, total = jnp.sum(after * g[None, :], axis=1)[:, None], jnp.sum(g)       # e^{G_C - G_t}
            else:
                g = g_ref[sl, :] * LOG2E                                                      # [C, K]
                to_end = jax.lax.dot_general(after, g, (((1,), (0,)), ((), ())),
                                             precision=jax.lax.Precision.HIGHEST,
                                             preferred_element_type=F32)                       # sum_{l > t} g_lk
                total = jnp.sum(g, axis=0, keepdims=True)                                      # [1, K]
            if fold:
                kd, later = k * jnp.exp2(to_end + later), later + total
            else:
                s = (jnp.exp2(total) if gate == 'scalar' else jnp.exp2(total)[0][:, None]) * s
                kd = k * jnp.exp2(to_end)
        s = s + jax.lax.dot_general(kd.astype(dt), v.astype(dt), (((0,), (0,)), ((), ())), precision=prec,
                                    preferred_element_type=F32)
        return s, later

    later0 = jnp.zeros((), F32) if gate != 'channel' else jnp.zeros((1, kp), F32)
    s_ref[...] = jax.lax.fori_loop(0, n, body, (jnp.zeros((kp, bv), F32), later0))[0]


def block_states(k, v, g, *, block: int, chunk: int = 64, block_v: int = 128, num_warps: int = 4,
                 interpret: bool = False, fold: bool = False, blocks: int | None = None, block_k: int | None = None,
                 num_stages: int = 3):
    """k [B,T,H,K], v [B,T,H,V], g None, [B,T,H] or [B,T,H,K] (log decays) -> fp32 [B, blocks, H, K, V], the
    local state of each of the first `blocks` blocks of `block` rows (None: all T // block; T a multiple of block,
    block a multiple of chunk; the rows after them are never read). Dots in the inputs' dtype with fp32
    accumulation (IEEE for fp32 inputs). No VJP: see sequence_split for its use.

    Defaults timed on the H200 (B=1, T=65536, H=16, K=V=128 bf16, scalar gates, block 1024): 128-wide value
    tiles at 4 warps 0.291 ms (k read once), 64-wide 0.485 ms, 8 warps 0.40 / 0.52 ms; the XLA einsum of
    sequence_split 0.48 ms. fold: the decays folded into k instead of rescaling the state every chunk (_kernel):
    0.239 ms at the same settings (simple_gla's default since 2026-12-03); with per-channel gates (gla) it is
    slower than the einsum. block_k (None: all of K): key-tile width, K / block_k programs per value tile (adjacent
    in the grid, so that they share v's tile through L2), each with a [block_k, block_v] state: at K = V = 128 and
    4 warps ptxas (sm_90a) gives the full K 255 registers and 904 bytes spilled, 64-wide key tiles 207 registers and
    no spills (2 programs per SM either way); H200, folded: 0.241 ms at the full K, 0.352-0.357 at key tiles of 64,
    0.51-0.54 at 32, 0.351 at 8 warps, 0.42-0.75 at chunk 128 (benchmarks/results/gpu_checks-2026-12-03_s6).
    num_stages: Triton's software pipelining of the chunk loads; H200, folded, default tiles (split_parts.py
    --key-tiles, results/gpu_checks-2026-12-03_s8): 2 stages 0.263 ms, 3 0.222, 4 0.285."""
    b, t, h, kd = k.shape
    vd = v.shape[-1]
    if t % block or block % chunk:
        raise ValueError(f'block_states: T={t} must be a multiple of block={block}, and block of chunk={chunk}')
    if blocks is not None and not 0 < blocks <= t // block:
        raise ValueError(f'block_states: blocks={blocks} must be in 1..T // block = {t // block}')
    dt = jnp.promote_types(k.dtype, v.dtype)
    kp, vp = next_pow2(kd), next_pow2(vd)
    bv, bk = min(block_v, vp), min(block_k or kp, kp)
    nb, nv, nk = (t // block if blocks is None else blocks), vp // bv, kp // bk
    tiles = nv * nk  # per block: value tile i // nk, key tile i % nk
    k, v = pad_axis(k.astype(dt), 3, kp), pad_axis(v.astype(dt), 3, vp)
    gate = 'none' if g is None else ('scalar' if g.ndim == 3 else 'channel')
    key_tile = pl.BlockSpec((None, block, None, bk), lambda bi, hi, i: (bi, i // tiles, hi, i % nk))
    value_tile = pl.BlockSpec((None, block, None, bv), lambda bi, hi, i: (bi, i // tiles, hi, i % tiles // nk))
    in_specs = [key_tile, value_tile]
    args = [k, v]
    if gate == 'scalar':
        in_specs.append(pl.BlockSpec((None, None, block), lambda bi, hi, i: (bi, hi, i // tiles)))
        args.append(jnp.swapaxes(g.astype(F32), 1, 2))                       # [B, H, T]
    elif gate == 'channel':
        in_specs.append(key_tile)
        args.append(pad_axis(g.astype(F32), 3, kp))
    fp32 = dt == jnp.float32
    params = {} if interpret or CompilerParams is None else {
        'compiler_params': CompilerParams(num_warps=num_warps, num_stages=num_stages)}
    s = pl.pallas_call(
        functools.partial(_kernel, chunk=chunk, gate=gate, dt=dt, prec=jax.lax.Precision.HIGHEST if fp32 else None,
                          fold=fold),
        grid=(b, h, nb * tiles), in_specs=in_specs,
        out_specs=pl.BlockSpec((None, None, None, bk, bv),
                               lambda bi, hi, i: (bi, i // tiles, hi, i % nk, i % tiles // nk)),
        out_shape=jax.ShapeDtypeStruct((b, nb, h, kp, vp), F32), interpret=interpret, name='block_states',
        **params)(*args)
    return s[..., :kd, :vd]
