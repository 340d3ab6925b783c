"""softmax_attention / sigmoid_attention impl='kernel' (the Pallas flash kernel) against the fp32 oracle.

On CPU the kernel runs in Pallas interpret mode (tiny shapes, small blocks so that T = 130 spans many
tiles and band edges, windows and sinks cross them); on a GPU it runs natively through the Triton
lowering and the GPU-only tests add real head sizes. Checked: o and every gradient (dq, dk, dv, and db
for sigmoid) as relative RMS error, DESIGN.md tolerances (1e-5 fp32, 5e-3 bf16). The band loops are
also checked exactly: every visible (t, j) is visited, no block outside the band is, and the blocks
run without the mask are fully visible.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOL, assert_close

from effattn.ops.sigmoid_attention import mosaic_gpu, sigmoid_attention
from effattn.ops.softmax_attention import softmax_attention
from effattn.ops.softmax_attention._blockwise import attention_mask
from effattn.ops.softmax_attention.pallas import (
    DEFAULT_CONFIG,
    KernelConfig,
    _key_loops,
    _query_loops,
    _Spec,
    flash_attention,
)

ON_GPU = jax.default_backend() == 'gpu'
sa_mod = importlib.import_module('effattn.ops.softmax_attention')
sg_mod = importlib.import_module('effattn.ops.sigmoid_attention')

SMALL = KernelConfig(block_q=32, block_k=16, block_q_bwd=16, block_k_bwd=32)


class Case(NamedTuple):
    score: str
    t: int
    h: int = 2
    hkv: int = 2
    k: int = 48
    v: int = 48
    causal: bool = True
    window: int | None = None
    sinks: int | None = None
    dtype: str = 'float32'
    b: int = 1
    small: bool = True  # SMALL blocks, else the default config
    math: str = 'rcp'  # KernelConfig.sigmoid_math
    fwd: str = 'mosaic'  # KernelConfig.sigmoid_forward (Mosaic GPU where it applies, on sm_90+ GPUs)

    def __str__(self):
        opts = [
            f'{self.score}-B{self.b}-T{self.t}-H{self.h}kv{self.hkv}-K{self.k}-V{self.v}',
            '' if self.causal else 'noncausal',
            '' if self.window is None else f'W{self.window}',
            '' if not self.sinks else f'sinks{self.sinks}',
            self.dtype,
            '' if self.small else 'default-blocks',
            '' if self.math == 'rcp' else self.math,
            '' if self.fwd == 'mosaic' else self.fwd,
        ]
        return '-'.join(o for o in opts if o)


CASES = [
    Case('softmax', 130, h=4, hkv=2, k=48, v=60),  # GQA, padded D and T
    Case('softmax', 130, window=17, sinks=4),  # window and sinks inside one block
    Case('softmax', 130, window=40, dtype='bfloat16'),  # window wider than a block
    Case('softmax', 130, causal=False, window=17, sinks=20),  # sinks over two key blocks
    Case('softmax', 40, causal=False, window=5, k=60, v=60),  # padded rows with no visible key
    Case('softmax', 63, causal=False, h=3, hkv=1, dtype='bfloat16'),
    Case('softmax', 1, b=2, small=False),
    Case('sigmoid', 130, h=4, hkv=2, k=60, v=48),
    Case('sigmoid', 63, causal=False, window=20, dtype='bfloat16'),
    Case('sigmoid', 130, window=17, small=False),
]
GPU_CASES = [
    Case(
        'softmax',
        1500,
        h=4,
        hkv=2,
        k=128,
        v=128,
        window=256,
        sinks=4,
        dtype='bfloat16',
        b=2,
        small=False,
    ),
    Case('softmax', 1000, k=128, v=128, window=256, dtype='bfloat16', small=False),
    Case(
        'softmax',
        1000,
        k=128,
        v=128,
        causal=False,
        window=256,
        sinks=4,
        dtype='bfloat16',
        small=False,
    ),
    Case('softmax', 777, k=128, v=128, window=100, sinks=4, small=False),  # fp32: IEEE dots
    Case('softmax', 2048, h=4, hkv=1, k=128, v=128, dtype='bfloat16', small=False),
    Case('sigmoid', 2048, h=4, hkv=2, k=128, v=128, dtype='bfloat16', b=2, small=False),
    Case('sigmoid', 1000, k=128, v=128, window=256, dtype='bfloat16', small=False),
    Case('sigmoid', 1000, k=128, v=128, causal=False, dtype='bfloat16', small=False),
    Case('sigmoid', 777, k=96, v=96, small=False),
    *(Case('sigmoid', 2048, h=4, hkv=2, k=128, v=128, dtype='bfloat16', small=False, math=m, fwd='triton')
      for m in ('rcp', 'newton', 'f16x2', 'tanh')),
    # the Mosaic GPU forward (sigmoid_attention/mosaic_gpu.py; the cases above without a window also take it):
    # GQA, padded T, D = 64, a long causal row band, non-causal padded D
    Case('sigmoid', 1000, h=4, hkv=1, k=64, v=64, dtype='bfloat16', b=2, small=False),
    Case('sigmoid', 4096, h=2, hkv=2, k=128, v=128, dtype='bfloat16', small=False),
    Case('sigmoid', 640, h=2, hkv=2, k=96, v=96, causal=False, dtype='bfloat16', small=False),
    # the Mosaic forward with the intra-warpgroup overlap (MosaicConfig.overlap), the same three shapes
    Case('sigmoid', 1000, h=4, hkv=1, k=64, v=64, dtype='bfloat16', b=2, small=False, fwd='mosaic_overlap'),
    Case('sigmoid', 4096, h=2, hkv=2, k=128, v=128, dtype='bfloat16', small=False, fwd='mosaic_overlap'),
    Case('sigmoid', 640, h=2, hkv=2, k=96, v=96, causal=False, dtype='bfloat16', small=False, fwd='mosaic_overlap'),
    # FlashSigmoid's tanh form (sigmoid_math='tanh': tanh.approx.f32) in the Mosaic forward, D = 128 and 64
    Case('sigmoid', 4096, h=2, hkv=2, k=128, v=128, dtype='bfloat16', small=False, math='tanh'),
    Case('sigmoid', 1000, h=4, hkv=1, k=64, v=64, dtype='bfloat16', b=2, small=False, math='tanh'),
    # last (a barrier bug would hang, not fail): the Mosaic forward on a persistent grid (MosaicConfig.persistent),
    # causal GQA with padded T, D = 128 non-causal, and more tiles than SMs (4 * 32 * 2 = 256 at T = 4096)
    Case('sigmoid', 1000, h=4, hkv=1, k=64, v=64, dtype='bfloat16', b=2, small=False, fwd='mosaic_persistent'),
    Case('sigmoid', 640, h=2, hkv=2, k=128, v=128, causal=False, dtype='bfloat16', small=False,
         fwd='mosaic_persistent'),
    Case('sigmoid', 4096, h=4, hkv=2, k=128, v=128, dtype='bfloat16', b=2, small=False, fwd='mosaic_persistent'),
]


def make_inputs(case: Case, seed: int = 0):
    rng = np.random.default_rng(seed)
    dt = jnp.dtype(case.dtype)
    x = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dt)
    q, k = x(case.b, case.t, case.h, case.k), x(case.b, case.t, case.hkv, case.k)
    v, do = x(case.b, case.t, case.hkv, case.v), x(case.b, case.t, case.h, case.v)
    bias = jnp.float32(-math.log(max(case.t, 2)))
    return (q, k, v, bias), do


@functools.partial(jax.jit, static_argnames=('case', 'impl'))
def _fwd_bwd(args, do, *, case: Case, impl: str):
    """o and the gradients of sum(o * do) w.r.t. q, k, v (and the bias, for sigmoid)."""
    q, k, v, bias = args
    opts = {'causal': case.causal, 'window': case.window}
    if impl == 'naive':
        if case.score == 'softmax':

            def f(q, k, v, b):
                return softmax_attention(q, k, v, sinks=case.sinks, impl='naive', **opts)

        else:
            f = lambda q, k, v, b: sigmoid_attention(q, k, v, bias=b, impl='naive', **opts)
    else:
        cfg = dataclasses.replace(SMALL if case.small else DEFAULT_CONFIG, sigmoid_math=case.math,
                                  sigmoid_forward=case.fwd)
        scale = case.k**-0.5
        window = None if case.window is None or case.window >= case.t else case.window

        def f(q, k, v, b):
            return flash_attention(
                q,
                k,
                v,
                score=case.score,
                causal=case.causal,
                scale=scale,
                window=window,
                sinks=case.sinks if window else None,
                bias=b if case.score == 'sigmoid' else None,
                config=cfg,
            )

    o, vjp = jax.vjp(f, q, k, v, bias)
    return o, vjp(do.astype(o.dtype))


def _check(case: Case):
    args, do = make_inputs(case)
    o, grads = _fwd_bwd(args, do, case=case, impl='kernel')
    up = tuple(a.astype(jnp.float32) for a in args)
    o_ref, grads_ref = _fwd_bwd(up, do.astype(jnp.float32), case=case, impl='naive')
    tol = TOL[case.dtype]
    assert o.dtype == args[0].dtype
    assert_close('o', o, o_ref, tol)
    names = ('dq', 'dk', 'dv', 'dbias') if case.score == 'sigmoid' else ('dq', 'dk', 'dv')
    for name, g, r, a in zip(names, grads, grads_ref, args):
        assert g.dtype == a.dtype, name
        assert_close(name, g, r, tol)


@pytest.mark.parametrize('case', CASES, ids=str)
def test_matches_naive(case):
    _check(case)


MATH_CASES = [Case('sigmoid', 130, h=4, hkv=2, k=64, v=64, dtype='bfloat16', math=m)
              for m in ('newton', 'f16x2', 'tanh')]


@pytest.mark.parametrize('case', MATH_CASES, ids=str)
def test_sigmoid_math_variants_match_naive(case):
    """The Newton reciprocal, the fp16 exp2 and the tanh form (modelled with jnp ops in interpret mode) keep bf16
    accuracy."""
    _check(case)


@pytest.mark.parametrize('math', ['rcp', 'newton', 'f16x2', 'tanh'])
def test_sigmoid_math_variants_lower_to_triton(math):
    """Each sigma form, its inline PTX included, lowers through Pallas' Triton lowering (no GPU needed), forward
    and backward (sigmoid_forward='triton': the Mosaic forward has its own lowering test)."""
    q = jnp.zeros((1, 128, 2, 64), jnp.bfloat16)
    cfg = dataclasses.replace(DEFAULT_CONFIG, sigmoid_math=math, sigmoid_forward='triton')

    def loss(q, k, v):
        o = flash_attention(q, k, v, score='sigmoid', causal=True, scale=0.1, window=None, bias=-1.0, config=cfg,
                            interpret=False)
        return jnp.sum(o.astype(jnp.float32))
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, q, q).lower(lowering_platforms=('cuda',)).as_text()
    assert 'sigmoid_attention_fwd' in text and 'sigmoid_attention_bwd_dkv' in text


def test_unknown_sigmoid_math_raises():
    (q, k, v, _), _ = make_inputs(Case('sigmoid', 16))
    with pytest.raises(ValueError, match='sigmoid_math'):
        flash_attention(q, k, v, score='sigmoid', causal=True, scale=0.1, window=None,
                        config=dataclasses.replace(SMALL, sigmoid_math='fast'))


@pytest.mark.parametrize('t,bq,bk', [(130, 32, 16), (130, 16, 32), (40, 32, 32), (1, 16, 16)])
@pytest.mark.parametrize(
    'causal,window,sinks',
    [
        (True, None, None),
        (False, None, None),
        (True, 1, None),
        (True, 17, 4),
        (True, 40, 20),
        (False, 5, None),
        (False, 17, 20),
    ],
)
def test_band_loops_visit_exactly_the_band(t, bq, bk, causal, window, sinks):
    """Per query block (forward, dQ) and per key block (dK, dV): visited blocks = blocks with a
    visible (t, j), each once; blocks run without the mask are fully visible."""
    tp = -(-t // max(bq, bk)) * max(bq, bk)
    sp = _Spec(False, causal, window, sinks, 1.0, t, tp, 1, jnp.float32, False)
    pos = np.arange(tp)
    ok = np.broadcast_to(
        attention_mask(pos[:, None], pos[None, :], 1, 1, causal=causal, window=window, sinks=sinks),
        (tp, tp),
    ) & (pos[None, :] < t)
    tiles = ok.reshape(tp // bq, bq, tp // bk, bk)

    def visits(loops):
        out = {}
        for start, stop, masked in loops:
            for blk in range(int(start), int(stop)):
                assert blk not in out, f'block {blk} visited twice'
                out[blk] = masked
        return out

    for i in range(tp // bq):
        got = visits(_key_loops(sp, jnp.int32(i), bq, bk))
        want = set(np.flatnonzero(tiles[i].any(axis=(0, 2)))) if i * bq < t else set()
        assert set(got) == want, (i, sorted(got), sorted(want))
        assert all(masked or tiles[i, :, c].all() for c, masked in got.items())
    for c in range(tp // bk):
        got = visits(_query_loops(sp, jnp.int32(c), bq, bk))
        rows = tiles[: -(-t // bq), :, c]  # query blocks of real rows
        want = set(np.flatnonzero(rows.any(axis=(1, 2)))) if c * bk < t else set()
        assert set(got) == want, (c, sorted(got), sorted(want))
        assert all(masked or tiles[i, :, c].all() for i, masked in got.items())


def test_segment_ids_not_implemented_and_auto_falls_back(monkeypatch):
    (q, k, v, _), _ = make_inputs(Case('softmax', 40))
    seg = jnp.asarray(np.repeat([[1, 2]], 20, axis=1))
    with pytest.raises(NotImplementedError, match='segment_ids'):
        softmax_attention(q, k, v, window=8, segment_ids=seg, impl='kernel')
    with pytest.raises(NotImplementedError, match='segment_ids'):
        sigmoid_attention(q, k, v, segment_ids=seg, impl='kernel')
    monkeypatch.setattr(sa_mod, 'default_backend', lambda: 'gpu')  # 'auto' as on a GPU
    monkeypatch.setattr(sg_mod, 'default_backend', lambda: 'gpu')
    assert sa_mod._auto_order(q) == ['cudnn', 'chunk']  # plain causal: cuDNN
    # windows: cuDNN (causal, no sinks), else it raises NotImplementedError and the kernel serves
    assert sa_mod._auto_order(q, window=8, sinks=None)[:2] == ['cudnn', 'kernel']
    assert sa_mod._auto_order(q, window=8, sinks=4)[:2] == ['cudnn', 'kernel']
    assert sg_mod._auto_order(q)[0] == 'kernel'
    for fn, kw in ((softmax_attention, {'window': 8, 'sinks': 2}), (sigmoid_attention, {})):
        o = fn(q, k, v, segment_ids=seg, **kw)  # kernel and cudnn refuse: chunk
        np.testing.assert_array_equal(o, fn(q, k, v, segment_ids=seg, impl='chunk', **kw))


def test_head_dim_above_128_not_implemented():
    q = jnp.zeros((1, 8, 1, 192))
    with pytest.raises(NotImplementedError, match='head dims'):
        softmax_attention(q, q, q, window=4, impl='kernel')
    with pytest.raises(NotImplementedError, match='head dims'):
        sigmoid_attention(q, q, q, impl='kernel')


def test_public_ops_reach_the_kernel():
    """impl='kernel' through the public functions (default scale, default bias -log T)."""
    case = Case('softmax', 50, window=9, sinks=3)
    (q, k, v, _), _ = make_inputs(case)
    for fn, kw in ((softmax_attention, {'window': 9, 'sinks': 3}), (sigmoid_attention, {})):
        got = jax.jit(functools.partial(fn, impl='kernel', **kw))(q, k, v)
        assert_close(fn.__name__, got, fn(q, k, v, impl='naive', **kw), TOL['float32'])


@pytest.mark.skipif(not ON_GPU, reason='native Triton kernel: GPU only (interpret mode too slow)')
@pytest.mark.parametrize('case', GPU_CASES, ids=str)
def test_matches_naive_gpu_shapes(case):
    _check(case)


@pytest.mark.skipif(not ON_GPU, reason='T = 32768: GPU only')
@pytest.mark.parametrize('score', ['softmax', 'sigmoid'])
def test_long_bf16_finite(score):
    b, t, h, d = 1, 32768, 2, 128
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (b, t, h, d), jnp.bfloat16) for key in keys)
    opts = {'window': 512, 'sinks': 4} if score == 'softmax' else {}
    fn = softmax_attention if score == 'softmax' else sigmoid_attention

    def loss(q, k, v):
        o = fn(q, k, v, impl='kernel', **opts)
        return jnp.sum(o.astype(jnp.float32)), o

    grads, o = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    for a in (o, *grads):
        assert bool(jnp.all(jnp.isfinite(a.astype(jnp.float32))))


@pytest.mark.parametrize('causal, d, h, hkv, dtype, reciprocal, overlap, tanh', [
    (True, 128, 2, 2, 'bfloat16', 'approx', False, False), (False, 64, 4, 1, 'float16', 'approx', False, False),
    (True, 64, 2, 2, 'bfloat16', 'newton', False, False), (True, 128, 2, 2, 'bfloat16', 'approx', True, False),
    (False, 64, 4, 1, 'bfloat16', 'newton', True, False), (True, 128, 2, 2, 'bfloat16', None, False, True),
    (True, 64, 4, 2, 'bfloat16', None, True, True), (True, 128, 2, 2, 'bfloat16', None, 'persistent', False),
    (False, 64, 4, 1, 'bfloat16', 'newton', 'persistent', True)])
def test_mosaic_sigmoid_forward_lowers_for_cuda(causal, d, h, hkv, dtype, reciprocal, overlap, tanh):
    """The Mosaic GPU forward lowers (cross-platform, no GPU needed): catches layouts, barriers or primitives
    that its lowering rejects; its numerics are checked by the GPU cases above. overlap='persistent': the
    persistent grid instead."""
    q, k = jnp.zeros((1, 512, h, d), dtype), jnp.zeros((1, 512, hkv, d), dtype)
    config = mosaic_gpu.MosaicConfig(reciprocal=reciprocal, overlap=overlap is True, tanh=tanh,
                                     persistent=overlap == 'persistent')
    fwd = functools.partial(mosaic_gpu.sigmoid_forward, causal=causal, scale=0.1, config=config)
    text = jax.jit(fwd).trace(q, k, k, jnp.float32(-1.0)).lower(lowering_platforms=('cuda',)).as_text()
    assert text.count('custom_call @mosaic_gpu') == 1


def test_sigmoid_kernel_takes_the_mosaic_forward_and_the_triton_backward(monkeypatch):
    """Where the Mosaic forward applies, flash_attention's custom VJP uses it for o and keeps the Triton
    backward; sigmoid_forward='triton' and a window keep the Triton forward."""
    monkeypatch.setattr(mosaic_gpu, 'unsupported_reason', lambda q, k, v, *, window, tp: 'windowed' if window else None)
    q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)

    def lowered(cfg, window=None):
        def loss(q, k, v, b):
            o = flash_attention(q, k, v, score='sigmoid', causal=True, scale=0.1, window=window, bias=b,
                                config=cfg, interpret=False)
            return jnp.sum(o.astype(jnp.float32))
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))  # value: keeps the forward
        return grad.trace(q, q, q, jnp.float32(-1.0)).lower(lowering_platforms=('cuda',)).as_text()

    mosaic = DEFAULT_CONFIG
    text = lowered(mosaic)
    assert text.count('custom_call @mosaic_gpu') == 1
    assert 'sigmoid_attention_fwd' not in text and 'sigmoid_attention_bwd_dkv' in text
    for text in (lowered(dataclasses.replace(DEFAULT_CONFIG, sigmoid_forward='triton')), lowered(mosaic, window=64)):
        assert 'mosaic_gpu' not in text and 'sigmoid_attention_fwd' in text


def test_unknown_sigmoid_forward_raises():
    (q, k, v, _), _ = make_inputs(Case('sigmoid', 16))
    with pytest.raises(ValueError, match='sigmoid_forward'):
        flash_attention(q, k, v, score='sigmoid', causal=True, scale=0.1, window=None,
                        config=dataclasses.replace(SMALL, sigmoid_forward='cuda'))
    q = jnp.zeros((1, 256, 1, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match='reciprocal'):
        mosaic_gpu.sigmoid_forward(q, q, q, 0.0, causal=True, scale=0.1,
                                   config=mosaic_gpu.MosaicConfig(reciprocal='fast'))
    with pytest.raises(ValueError, match='persistent and overlap'):
        mosaic_gpu.sigmoid_forward(q, q, q, 0.0, causal=True, scale=0.1,
                                   config=mosaic_gpu.MosaicConfig(persistent=True, overlap=True))
