"""Flash attention in Pallas (Triton lowering) for softmax and sigmoid scores, fwd + custom-VJP bwd.

One kernel family, two score functions (static):
  softmax: FlashAttention-2 (Dao 2023), fwd Alg. 1 (online max m, row sum l; saves O and the
           logsumexp L only), bwd Alg. 2 (P = exp(s QK^T - L), dS = P (dP - rowsum(dO O))).
  sigmoid: FlashSigmoid (Ramapuram et al. 2024, arXiv 2409.04431, Sec. 3): P = sigma(s QK^T + b) M,
           tiles independent, nothing saved but the inputs; dS = dP P (1 - P), db = sum dS.
ALGORITHMS.md sections 1 and 2. Mask allowed(t, j) = (j <= t if causal) and (t - j < W, |t - j| < W
if not causal, or j < n_sink).

Band-limited loops: a query block visits only the key blocks of its causal / window band plus the
sink blocks (and a key block, in the backward, only the query blocks that see it), so a window of
512 costs O(T W) rather than O(T^2). Each band is split into masked edge blocks and unmasked interior
blocks (three loops), so that only the edges pay for the mask.

Layout: grid (blocks, B, H) on [B, T, H, D] arrays (no transposes); GQA through the k / v index map
(query head h reads kv head h // G); dK, dV are computed per query head and summed over the group.
Backward: one program per key block accumulates dK, dV over the query blocks of its band (registers),
a second launch, one program per query block, accumulates dQ. D = rowsum(dO O) is computed in jnp.

Triton lowering notes: no value slices (blocks are loaded from refs with pl.ds), block shapes powers
of two (T is padded to a multiple of the largest block, K and V to a power of two >= 16), jnp dots
with preferred_element_type fp32 (Precision.HIGHEST for fp32 inputs), exp2 with log2(e) folded into
the scale (one MUFU.EX2). A fully masked row inside a masked tile would give exp(-inf - (-inf)) = NaN:
masked tiles use m_safe = (m == -inf ? 0 : m) (ALGORITHMS.md section 1 pitfall).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from effattn.ops.common.dispatch import default_backend
from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import LOG2E as _LOG2E
from effattn.ops.common.pallas_triton import CompilerParams as _CompilerParams
from effattn.ops.common.pallas_triton import inline_asm as _inline_asm
from effattn.ops.common.pallas_triton import next_pow2 as _next_pow2
from effattn.ops.common.pallas_triton import rcp_newton as _rcp_newton

_MAX_HEAD_DIM = 128


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile sizes (powers of two >= 16, capped at T rounded up) and Triton launch parameters.

    Defaults: the fastest of `benchmarks/ops_gpu.py --tune-flash sigmoid` on the H200 (B=4, T=4096,
    H=16, D=128, bf16, causal; benchmarks/results/ops_gpu_flash_tune.json): forward 0.665 ms at
    128 x 32 tiles, 4 warps, 3 stages (0.769 ms at 128 x 64, 8 warps); forward+backward 2.58 ms with
    4 backward warps (5.68 ms with 8). Windowed softmax uses the same tiles (not tuned apart; it
    measured 0.28 ms forward at window 512 with the earlier 128 x 64, 8-warp tiles). Without an
    explicit config, fp32 inputs use block_q <= 64 (their tiles take twice the shared memory).
    """

    block_q: int = 128  # forward: queries per program
    block_k: int = 32  # forward: keys per loop step
    num_warps: int = 4
    num_stages: int = 3
    block_q_bwd: int = 64  # backward: queries per dQ program / per dK, dV loop step
    block_k_bwd: int = 64  # backward: keys per dK, dV program / per dQ loop step
    num_warps_bwd: int = 4
    num_stages_bwd: int = 2
    # sigmoid on GPU, bf16/fp16 inputs: how sigma(x) = 1 / (1 + 2^a) is evaluated (see _sigmoid_probs):
    # 'ieee' (exp2 + IEEE division), 'rcp' (ex2.approx + rcp.approx: 2 MUFU ops per score),
    # 'newton' (ex2.approx + an FMA-only Newton reciprocal: 1 MUFU op), 'f16x2' (ex2.approx.f16x2, two
    # scores per MUFU op, + the Newton reciprocal). fp32 inputs and interpret mode always use 'ieee' math
    # (interpret mode models 'newton' and 'f16x2' with jnp ops so that their error is tested on CPU), or 'tanh'
    # (FlashSigmoid's 0.5 + 0.5 tanh(x / 2) with tanh.approx.f32: one MUFU op and two FMAs per score, in the Mosaic
    # forward too). H200, B=4 T=4096 H=16 D=128 causal forward (results/gpu_checks-2026-12-03_s9/
    # call2_sigmoid_forwards.json): Mosaic 0.482 ms with 'tanh' against 0.597 with the reciprocal (cuDNN softmax
    # 0.571); B=2 T=8192 0.871 against 1.109 (1.086); Triton 0.667 against 0.646 (a path for windows and other
    # GPUs: kept the same math as the Mosaic forward, so that the backward recomputes the forward's probabilities).
    sigmoid_math: str = 'tanh'
    # sigmoid forward on Hopper (sm_90) GPUs: 'mosaic' (sigmoid_attention/mosaic_gpu.py, warp-specialised, where it
    # applies: bf16, head dims 64 or 128, no window; else this Triton kernel) or 'triton'. The backward is this
    # file's either way. H200, bf16, causal, forward ms, Mosaic / Triton / cuDNN softmax: B=4 T=4096 H=16 D=128
    # 0.584 / 0.646 / 0.569; B=2 T=8192 1.088 / 1.194 / 1.048; B=8 T=8192 H=12 D=64 2.477 / 2.550 / 1.959
    # (benchmarks/results/sigmoid_mosaic_probe_2026-12-03.json).
    # 'mosaic_overlap': the Mosaic forward with FA3's intra-warpgroup overlap (mosaic_gpu.MosaicConfig.overlap;
    # 29% slower on the H200); 'mosaic_persistent': on a persistent grid (MosaicConfig.persistent; 14% slower).
    sigmoid_forward: str = 'mosaic'


DEFAULT_CONFIG = KernelConfig()


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Static per-call settings seen by the kernel bodies."""

    sigmoid: bool
    causal: bool
    window: int | None
    sinks: int | None
    scale: float
    t: int  # real sequence length (keys >= t are padding)
    tp: int  # padded length
    groups: int  # query heads per kv head
    dt: object  # dtype of the dot operands
    sigmoid_math: str

    @property
    def prec(self):
        return lax.Precision.HIGHEST if self.dt == jnp.float32 else None


# ------------------------------------------------------------------------------------------------
# Band bounds: traced int32 scalars from a program id. All divisions are of non-negative values.


def _cdiv(a, b: int):
    return lax.div(a + (b - 1), b)


def _key_loops(sp: _Spec, i, bq: int, bk: int):
    """[(start, stop, masked)] key-block loops of query block i: sink blocks below the band, then the
    band's masked lower edge, unmasked interior, masked upper edge."""
    t0 = i * bq
    t1 = t0 + (bq - 1)
    nk_real = -(-sp.t // bk)
    w = sp.window
    if sp.causal:
        hi = jnp.minimum(lax.div(t1, bk) + 1, nk_real)
    elif w is not None:
        hi = jnp.minimum(lax.div(t1 + (w - 1), bk) + 1, nk_real)
    else:
        hi = jnp.int32(nk_real)
    hi = jnp.where(t0 < sp.t, hi, 0)  # query blocks of padding only: nothing to do
    lo = jnp.int32(0) if w is None else lax.div(jnp.maximum(t0 - (w - 1), 0), bk)
    f_lo = lo if w is None else jnp.maximum(lo, _cdiv(jnp.maximum(t1 - (w - 1), 0), bk))
    if sp.causal:
        f_hi = jnp.minimum(hi, lax.div(t0 + 1, bk))
    else:
        f_hi = jnp.minimum(hi, sp.t // bk)  # key blocks without padding
        if w is not None:
            f_hi = jnp.minimum(f_hi, lax.div(t0 + w, bk))
    loops = _edges_and_interior(lo, f_lo, f_hi, hi)
    if w is not None and sp.sinks:
        loops.insert(0, (jnp.int32(0), jnp.minimum(-(-sp.sinks // bk), jnp.minimum(lo, hi)), True))
    return loops


def _query_loops(sp: _Spec, c, bq: int, bk: int):
    """[(start, stop, masked)] query-block loops of key block c (the transpose of _key_loops)."""
    s0 = c * bk
    s1 = s0 + (bk - 1)
    nq_real = -(-sp.t // bq)
    w = sp.window
    sink = (s0 < sp.sinks) if (w is not None and sp.sinks) else None
    if sp.causal:
        lo = lax.div(s0, bq)
    elif w is not None:
        lo = lax.div(jnp.maximum(s0 - (w - 1), 0), bq)
        if sink is not None:
            lo = jnp.where(sink, 0, lo)
    else:
        lo = jnp.int32(0)
    hi = jnp.int32(nq_real)
    if w is not None:
        hi = jnp.minimum(lax.div(s1 + (w - 1), bq) + 1, hi)
        if sink is not None:
            hi = jnp.where(sink, nq_real, hi)
    hi = jnp.where(s0 < sp.t, hi, 0)  # key blocks of padding only
    f_lo = jnp.maximum(lo, _cdiv(s1, bq)) if sp.causal else lo
    f_hi = hi
    if w is not None:
        f_hi = jnp.minimum(f_hi, lax.div(s0 + w, bq))
        if not sp.causal:
            f_lo = jnp.maximum(f_lo, _cdiv(jnp.maximum(s1 - (w - 1), 0), bq))
    if not sp.causal:
        f_hi = jnp.where(s1 < sp.t, f_hi, f_lo)  # padded keys need the mask
    return _edges_and_interior(lo, f_lo, f_hi, hi)


def _edges_and_interior(lo, f_lo, f_hi, hi):
    """Loops over [lo, hi): masked [lo, f_lo), unmasked [f_lo, f_hi), masked [f_hi, hi), with the
    interior clipped into the range (empty where hi <= lo)."""
    f_lo = jnp.minimum(jnp.maximum(f_lo, lo), hi)
    f_hi = jnp.minimum(jnp.maximum(f_hi, f_lo), hi)
    return [(lo, f_lo, True), (f_lo, f_hi, False), (f_hi, hi, True)]


def _run_loops(loops, body, carry):
    for start, stop, masked in loops:
        carry = lax.fori_loop(start, stop, functools.partial(body, masked=masked), carry)
    return carry


# ------------------------------------------------------------------------------------------------
# In-kernel tile math.


def _mask(sp: _Spec, t0, s0, bq: int, bk: int):
    tq = t0 + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    tk = s0 + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    ok = (tk <= tq) if sp.causal else (tk < sp.t)
    if sp.window is not None:
        d = tq - tk
        near = d < sp.window
        if not sp.causal:
            near = near & (d > -sp.window)
        if sp.sinks:
            near = near | (tk < sp.sinks)
        ok = ok & near
    return ok


def _dot(a, b, ca: int, cb: int, sp: _Spec):
    return lax.dot_general(
        a, b, (((ca,), (cb,)), ((), ())), precision=sp.prec, preferred_element_type=_F32
    )


_SIGMOID_MATH = ('ieee', 'rcp', 'newton', 'f16x2', 'tanh')
_MOSAIC_FORWARDS = ('mosaic', 'mosaic_overlap', 'mosaic_persistent')  # KernelConfig.sigmoid_forward


def _asm(code: str, x, dtype, constraints: str, pack: int):
    return _inline_asm(code, args=[x], constraints=constraints, pack=pack,
                       result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, dtype)])[0]


def _sigmoid_probs(sp, qk, bias2, masked, mask_fn, interpret):
    """sigma(s qk + b) = 1 / (1 + 2^a), a = -(s qk + b) log2 e; bias2 = -b log2 e. 0 where masked.

    exp2 plus a reciprocal is two MUFU (special-function) ops per score against softmax's one;
    config.sigmoid_math trades them for FMA-pipe work. On the H200 that did not pay (forward at B=4,
    T=4096, H=16, D=128: rcp 0.643 ms, newton 0.815, f16x2 0.855; benchmarks/README.md): the kernel is
    bound by its instruction stream, not the MUFU pipe, so 'rcp' is the fastest reciprocal form. The default is
    'tanh' (below: one MUFU op per score and no reciprocal; KernelConfig.sigmoid_math's timings).
    a is clamped to 126 so that 1 + 2^a stays finite for the Newton reciprocal (sigma < 2^-126 is 0).
    'tanh' is FlashSigmoid's form (Ramapuram et al. 2024; ALGORITHMS.md 2): sigma(x) = 0.5 + 0.5 tanh(x / 2),
    x / 2 = -a / (2 log2 e), with the MUFU tanh on GPUs (jnp.tanh in interpret mode).
    """
    a = qk * (-sp.scale * _LOG2E) + bias2
    math = sp.sigmoid_math if sp.dt != jnp.float32 else 'ieee'
    gpu = not interpret and _inline_asm is not None
    if math == 'tanh':
        half_x = a * (-0.5 / _LOG2E)
        t = _asm('tanh.approx.f32 $0, $1;', half_x, _F32, '=f,f', 1) if gpu else jnp.tanh(half_x)
        p = 0.5 * t + 0.5
    elif math == 'rcp' and gpu:
        e = _asm('ex2.approx.ftz.f32 $0, $1;', a, _F32, '=f,f', 1)
        p = _asm('rcp.approx.ftz.f32 $0, $1;', 1.0 + e, _F32, '=f,f', 1)
    elif math in ('newton', 'f16x2'):
        a = jnp.minimum(a, 126.0)
        if math == 'f16x2':  # 2^a in fp16 (10-bit mantissa); overflow (a >= 16) gives inf -> sigma = 0
            a16 = a.astype(jnp.float16)
            e = (_asm('ex2.approx.f16x2 $0, $1;', a16, jnp.float16, '=r,r', 2) if gpu
                 else jnp.exp2(a16.astype(_F32)).astype(jnp.float16)).astype(_F32)
            e = jnp.minimum(e, 2.0 ** 126)
        else:
            e = _asm('ex2.approx.ftz.f32 $0, $1;', a, _F32, '=f,f', 1) if gpu else jnp.exp2(a)
        p = _rcp_newton(1.0 + e)
    else:
        p = 1.0 / (1.0 + jnp.exp2(a))
    return jnp.where(mask_fn(), p, 0.0) if masked else p


def _softmax_logits(sp, qk, masked, mask_fn):
    """s qk log2 e (base-2 logits); -inf where masked."""
    s = qk * (sp.scale * _LOG2E)
    return jnp.where(mask_fn(), s, -jnp.inf) if masked else s


def _bias2(b_ref):
    return -_LOG2E * jnp.max(b_ref[...])  # b_ref holds 16 copies of the scalar bias


# ------------------------------------------------------------------------------------------------
# Kernels. Grid (blocks, B, H).


def _fwd_kernel(*refs, sp: _Spec, bq: int, bk: int, interpret: bool):
    if sp.sigmoid:
        q_ref, k_ref, v_ref, b_ref, o_ref = refs
    else:
        q_ref, k_ref, v_ref, o_ref, lse_ref = refs
    nq = sp.tp // bq
    i = nq - 1 - pl.program_id(0)  # longest causal rows first
    t0 = i * bq
    q = q_ref[...]
    acc = jnp.zeros((bq, v_ref.shape[-1]), _F32)
    loops = _key_loops(sp, i, bq, bk)

    def tile(c):
        sl = pl.ds(pl.multiple_of(c * bk, bk), bk)
        return k_ref[sl, :], v_ref[sl, :], functools.partial(_mask, sp, t0, c * bk, bq, bk)

    if sp.sigmoid:
        bias2 = _bias2(b_ref)

        def body(c, acc, masked):
            k, v, mask_fn = tile(c)
            p = _sigmoid_probs(sp, _dot(q, k, 1, 1, sp), bias2, masked, mask_fn, interpret)
            return acc + _dot(p.astype(sp.dt), v, 1, 0, sp)

        acc = _run_loops(loops, body, acc)
        o_ref[...] = acc.astype(o_ref.dtype)
        return

    def body(c, carry, masked):
        acc, m, l = carry
        k, v, mask_fn = tile(c)
        s = _softmax_logits(sp, _dot(q, k, 1, 1, sp), masked, mask_fn)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        if masked:  # a row with no visible key yet: -inf - (-inf) would be NaN
            m_new = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new[:, None])
        l = alpha * l + jnp.sum(p, axis=1)
        acc = alpha[:, None] * acc + _dot(p.astype(sp.dt), v, 1, 0, sp)
        return acc, m_new, l

    m = jnp.full((bq,), -jnp.inf, _F32)
    acc, m, l = _run_loops(loops, body, (acc, m, jnp.zeros((bq,), _F32)))
    empty = l == 0.0  # rows with no visible key (padding rows only): o = 0, L = 0
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log2(l_safe))


def _probs_and_ds(sp, q, k, v, do, t0, s0, bq, bk, masked, stats, interpret):
    """P and dS = dL/d(s qk) of one tile; stats = (L, D) rows for softmax, (bias2,) for sigmoid."""
    mask_fn = functools.partial(_mask, sp, t0, s0, bq, bk)
    qk = _dot(q, k, 1, 1, sp)
    dp = _dot(do, v, 1, 1, sp)
    if sp.sigmoid:
        p = _sigmoid_probs(sp, qk, stats[0], masked, mask_fn, interpret)
        return p, dp * (p * (1.0 - p))
    lse, delta = stats
    p = jnp.exp2(_softmax_logits(sp, qk, masked, mask_fn) - lse[:, None])
    return p, p * (dp - delta[:, None])


def _dkv_kernel(*refs, sp: _Spec, bq: int, bk: int, interpret: bool):
    if sp.sigmoid:
        q_ref, k_ref, v_ref, do_ref, b_ref, dk_ref, dv_ref, db_ref = refs
    else:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
    c = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]
    bias2 = _bias2(b_ref) if sp.sigmoid else None

    def body(i, carry, masked):
        dk, dv, db = carry
        sl = pl.ds(pl.multiple_of(i * bq, bq), bq)
        q, do = q_ref[sl, :], do_ref[sl, :]
        stats = (bias2,) if sp.sigmoid else (lse_ref[sl], delta_ref[sl])
        p, ds = _probs_and_ds(sp, q, k, v, do, i * bq, c * bk, bq, bk, masked, stats, interpret)
        dv = dv + _dot(p.astype(sp.dt), do, 0, 0, sp)
        dk = dk + _dot(ds.astype(sp.dt), q, 0, 0, sp)
        if sp.sigmoid:
            db = db + jnp.sum(ds, axis=0)
        return dk, dv, db

    init = (
        jnp.zeros(k.shape, _F32),
        jnp.zeros(v.shape, _F32),
        jnp.zeros((bk,), _F32),
    )
    dk, dv, db = _run_loops(_query_loops(sp, c, bq, bk), body, init)
    dk_ref[...] = (dk * sp.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    if sp.sigmoid:
        db_ref[...] = db


def _dq_kernel(*refs, sp: _Spec, bq: int, bk: int, interpret: bool):
    if sp.sigmoid:
        q_ref, k_ref, v_ref, do_ref, b_ref, dq_ref = refs
        stats = (_bias2(b_ref),)
    else:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
        stats = (lse_ref[...], delta_ref[...])
    nq = sp.tp // bq
    i = nq - 1 - pl.program_id(0)
    q, do = q_ref[...], do_ref[...]

    def body(c, dq, masked):
        sl = pl.ds(pl.multiple_of(c * bk, bk), bk)
        k, v = k_ref[sl, :], v_ref[sl, :]
        _, ds = _probs_and_ds(sp, q, k, v, do, i * bq, c * bk, bq, bk, masked, stats, interpret)
        return dq + _dot(ds.astype(sp.dt), k, 1, 0, sp)

    dq = _run_loops(_key_loops(sp, i, bq, bk), body, jnp.zeros(q.shape, _F32))
    dq_ref[...] = (dq * sp.scale).astype(dq_ref.dtype)


# ------------------------------------------------------------------------------------------------
# pallas_call wrappers on padded arrays: q [B,Tp,H,Kp], k [B,Tp,Hkv,Kp], v [B,Tp,Hkv,Vp].


def _params(interpret, sp: _Spec, num_warps, num_stages):
    if interpret or _CompilerParams is None:
        return {}
    if sp.dt == jnp.float32:  # fp32 tiles are twice as large (shared memory)
        num_stages = min(num_stages, 2)
    return {'compiler_params': _CompilerParams(num_warps=num_warps, num_stages=num_stages)}


def _kv_head(sp: _Spec):
    g = sp.groups
    return (lambda h: h) if g == 1 else (lambda h: lax.div(h, g))


def _block_spec(rows, d, rev_n=None, kv=None):
    """[B, Tp, heads, d] tiles of `rows` rows: row block = program id 0 (reversed if rev_n),
    head = program id 2 (mapped to its kv head by `kv`)."""
    kv = kv or (lambda h: h)
    if rev_n is None:
        return pl.BlockSpec((None, rows, None, d), lambda r, b, h: (b, r, kv(h), 0))
    return pl.BlockSpec((None, rows, None, d), lambda r, b, h: (b, rev_n - 1 - r, kv(h), 0))


def _full_spec(tp, d, kv=None):
    kv = kv or (lambda h: h)
    return pl.BlockSpec((None, tp, None, d), lambda r, b, h: (b, 0, kv(h), 0))


def _row_stat_spec(rows, rev_n=None):
    if rev_n is None:
        return pl.BlockSpec((None, None, rows), lambda r, b, h: (b, h, r))
    return pl.BlockSpec((None, None, rows), lambda r, b, h: (b, h, rev_n - 1 - r))


_BIAS_SPEC = pl.BlockSpec((16,), lambda r, b, h: (0,))


def _forward(q, k, v, bias, sp: _Spec, cfg: KernelConfig, interpret: bool):
    """o [B,Tp,H,Vp] in q's dtype and (softmax) L [B,H,Tp] fp32 in base 2."""
    b, tp, h, kp = q.shape
    vp = v.shape[-1]
    if sp.sigmoid and not interpret and cfg.sigmoid_forward in _MOSAIC_FORWARDS:
        from effattn.ops.sigmoid_attention import mosaic_gpu  # here: that package imports this module

        if mosaic_gpu.unsupported_reason(q, k, v, window=sp.window, tp=tp) is None:
            mc = mosaic_gpu.MosaicConfig(overlap=cfg.sigmoid_forward == 'mosaic_overlap',
                                         persistent=cfg.sigmoid_forward == 'mosaic_persistent',
                                         tanh=cfg.sigmoid_math == 'tanh')
            return mosaic_gpu.sigmoid_forward(q, k, v, bias, causal=sp.causal, scale=sp.scale, config=mc), None
    bq, bk = _blocks(sp.t, cfg.block_q, cfg.block_k)
    nq = tp // bq
    kv = _kv_head(sp)
    in_specs = [_block_spec(bq, kp, nq), _full_spec(tp, kp, kv), _full_spec(tp, vp, kv)]
    args = [q, k, v]
    out_specs = [_block_spec(bq, vp, nq)]
    out_shape = [jax.ShapeDtypeStruct((b, tp, h, vp), q.dtype)]
    if sp.sigmoid:
        in_specs.append(_BIAS_SPEC)
        args.append(jnp.full((16,), bias, _F32))
    else:
        out_specs.append(_row_stat_spec(bq, nq))
        out_shape.append(jax.ShapeDtypeStruct((b, h, tp), _F32))
    out = pl.pallas_call(
        functools.partial(_fwd_kernel, sp=sp, bq=bq, bk=bk, interpret=interpret),
        grid=(nq, b, h),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        name='sigmoid_attention_fwd' if sp.sigmoid else 'softmax_attention_fwd',
        **_params(interpret, sp, cfg.num_warps, cfg.num_stages),
    )(*args)
    return out[0], (None if sp.sigmoid else out[1])


def _backward(q, k, v, bias, o, lse, do, sp: _Spec, cfg: KernelConfig, interpret: bool):
    b, tp, h, kp = q.shape
    hkv, vp = k.shape[2], v.shape[-1]
    bq, bk = _blocks(sp.t, cfg.block_q_bwd, cfg.block_k_bwd)
    nq, nk = tp // bq, tp // bk
    kv = _kv_head(sp)
    params = _params(interpret, sp, cfg.num_warps_bwd, cfg.num_stages_bwd)
    name = 'sigmoid_attention' if sp.sigmoid else 'softmax_attention'
    kw = {'sp': sp, 'bq': bq, 'bk': bk, 'interpret': interpret}
    if sp.sigmoid:
        stats = [jnp.full((16,), bias, _F32)]
        full_stats = blk_stats = [_BIAS_SPEC]
    else:
        delta = jnp.sum(o.astype(_F32) * do.astype(_F32), axis=-1).transpose(0, 2, 1)
        stats = [lse, delta]
        full_stats = [pl.BlockSpec((None, None, tp), lambda r, b, h: (b, h, 0))] * 2
        blk_stats = [_row_stat_spec(bq, nq)] * 2

    # dK, dV per query head (fp32 when summed over a GQA group afterwards)
    gdt = q.dtype if sp.groups == 1 else _F32
    out_specs = [_block_spec(bk, kp), _block_spec(bk, vp)]
    out_shape = [
        jax.ShapeDtypeStruct((b, tp, h, kp), gdt),
        jax.ShapeDtypeStruct((b, tp, h, vp), gdt),
    ]
    if sp.sigmoid:
        out_specs.append(_row_stat_spec(bk))
        out_shape.append(jax.ShapeDtypeStruct((b, h, tp), _F32))
    dkv = pl.pallas_call(
        functools.partial(_dkv_kernel, **kw),
        grid=(nk, b, h),
        in_specs=[
            _full_spec(tp, kp),
            _block_spec(bk, kp, kv=kv),
            _block_spec(bk, vp, kv=kv),
            _full_spec(tp, vp),
            *full_stats,
        ],
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        name=name + '_bwd_dkv',
        **params,
    )(q, k, v, do, *stats)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, **kw),
        grid=(nq, b, h),
        in_specs=[
            _block_spec(bq, kp, nq),
            _full_spec(tp, kp, kv),
            _full_spec(tp, vp, kv),
            _block_spec(bq, vp, nq),
            *blk_stats,
        ],
        out_specs=_block_spec(bq, kp, nq),
        out_shape=jax.ShapeDtypeStruct((b, tp, h, kp), q.dtype),
        interpret=interpret,
        name=name + '_bwd_dq',
        **params,
    )(q, k, v, do, *stats)
    dk, dv = dkv[0], dkv[1]
    if sp.groups > 1:
        group_sum = lambda x: x.reshape(b, tp, hkv, sp.groups, -1).sum(3).astype(k.dtype)
        dk, dv = group_sum(dk), group_sum(dv)
    db = jnp.sum(dkv[2]) if sp.sigmoid else jnp.zeros((), _F32)
    return dq, dk, dv, db


def _blocks(t: int, bq: int, bk: int):
    cap = _next_pow2(t)
    return min(bq, cap), min(bk, cap)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _core(q, k, v, bias, sp, cfg, interpret):
    return _forward(q, k, v, bias, sp, cfg, interpret)[0]


def _core_fwd(q, k, v, bias, sp, cfg, interpret):
    o, lse = _forward(q, k, v, bias, sp, cfg, interpret)
    return o, (q, k, v, bias, None if sp.sigmoid else o, lse)


def _core_bwd(sp, cfg, interpret, res, do):
    q, k, v, bias, o, lse = res
    dq, dk, dv, db = _backward(q, k, v, bias, o, lse, do.astype(q.dtype), sp, cfg, interpret)
    return dq, dk, dv, db.astype(bias.dtype)


_core.defvjp(_core_fwd, _core_bwd)


def _pad(x, t: int, d: int):
    pt, pd = t - x.shape[1], d - x.shape[3]
    return x if pt == pd == 0 else jnp.pad(x, ((0, 0), (0, pt), (0, 0), (0, pd)))


def flash_attention(
    q,
    k,
    v,
    *,
    score: str,
    causal: bool,
    scale: float,
    window: int | None,
    sinks: int | None = None,
    bias=None,
    config: KernelConfig | None = None,
    interpret: bool | None = None,
):
    """o [B,T,H,V] in q's dtype; score 'softmax' or 'sigmoid' (bias: scalar, may be traced).

    window / sinks in canonical form (_checks.canonical_window). Raises NotImplementedError (so that
    impl='auto' moves on) on TPU and for head dims above 128. interpret None: Pallas interpret mode
    everywhere but on GPU.
    """
    backend = default_backend()
    if interpret is None:
        if backend == 'tpu':
            raise NotImplementedError('the flash attention kernel has only a Triton (GPU) lowering')
        interpret = backend != 'gpu'
    if max(q.shape[-1], v.shape[-1]) > _MAX_HEAD_DIM:
        raise NotImplementedError(
            f'the flash attention kernel takes head dims up to {_MAX_HEAD_DIM}; got '
            f'K={q.shape[-1]}, V={v.shape[-1]}'
        )
    _, t, h, kd = q.shape
    vd = v.shape[-1]
    dtype = jnp.promote_types(jnp.promote_types(q.dtype, jnp.bfloat16), k.dtype)
    dtype = jnp.dtype(jnp.promote_types(dtype, v.dtype))
    cfg = DEFAULT_CONFIG if config is None else config
    if dtype == jnp.float32 and config is None:  # fp32 tiles take twice the shared memory
        cfg = dataclasses.replace(cfg, block_q=min(cfg.block_q, 64))
    blk = max(*_blocks(t, cfg.block_q, cfg.block_k), *_blocks(t, cfg.block_q_bwd, cfg.block_k_bwd))
    tp = -(-t // blk) * blk
    kp, vp = _next_pow2(kd), _next_pow2(vd)
    sp = _Spec(
        sigmoid=score == 'sigmoid',
        causal=bool(causal),
        window=window,
        sinks=sinks if window is not None else None,
        scale=float(scale),
        t=t,
        tp=tp,
        groups=h // k.shape[2],
        dt=dtype,
        sigmoid_math=cfg.sigmoid_math,
    )
    if score not in ('softmax', 'sigmoid'):
        raise ValueError(f"score must be 'softmax' or 'sigmoid'; got {score!r}")
    if cfg.sigmoid_forward not in (*_MOSAIC_FORWARDS, 'triton'):
        raise ValueError(f"KernelConfig.sigmoid_forward must be one of {(*_MOSAIC_FORWARDS, 'triton')}; "
                         f"got {cfg.sigmoid_forward!r}")
    if cfg.sigmoid_math not in _SIGMOID_MATH:
        raise ValueError(f'KernelConfig.sigmoid_math must be one of {_SIGMOID_MATH}; got {cfg.sigmoid_math!r}')
    bias = jnp.zeros((), _F32) if bias is None else jnp.asarray(bias, _F32)
    o = _core(
        _pad(q.astype(dtype), tp, kp),
        _pad(k.astype(dtype), tp, kp),
        _pad(v.astype(dtype), tp, vp),
        bias,
        sp,
        cfg,
        bool(interpret),
    )
    if (tp, vp) != (t, vd):
        o = o[:, :t, :, :vd]
    return o.astype(q.dtype)


def softmax_attention_kernel(
    q, k, v, *, causal, scale, window, sinks, segment_ids, config=None, interpret=None
):
    """impl='kernel' of softmax_attention (FlashAttention-2 with band-limited loops)."""
    if segment_ids is not None:
        raise NotImplementedError('the softmax attention kernel does not take segment_ids')
    return flash_attention(
        q,
        k,
        v,
        score='softmax',
        causal=causal,
        scale=scale,
        window=window,
        sinks=sinks,
        config=config,
        interpret=interpret,
    )
