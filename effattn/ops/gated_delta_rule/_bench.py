"""Timing hook for the (gated) delta-rule Pallas kernels: each piece of pallas.py as a jitted zero-arg callable.

    parts = benchmark_parts(4, 4096, 16, 128, jnp.bfloat16)
    jax.block_until_ready(parts['wy']())

Pieces: 'wy' (WY/UT kernel), 'fwd_state' (forward state kernel given W, U; o and final state only),
'fwd_state_store' (the same, also writing the chunk-start states, as under jax.grad), 'fwd' (whole
forward), 'bwd_state' (reverse state-gradient kernel, also writing dV' when the backward is split),
'bwd_chunk' (everything of the backward after the state sweep: the dq/dk/dW and WY-backward kernels, or the
fused per-chunk kernel under KernelConfig(bwd_split=False)), 'bwd_dqk' and 'bwd_wy' (the split backward's two
kernels alone), 'fwd_bwd' (forward + backward of sum(o * do) + sum(ht)).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from effattn.ops.common.pallas_triton import F32
from effattn.ops.gated_delta_rule import pallas as P
from effattn.ops.gated_delta_rule._dqk_kernel import dqk_kernel
from effattn.ops.gated_delta_rule._kernel_common import _Ctx
from effattn.ops.gated_delta_rule._wy_bwd_kernel import wy_bwd_kernel
from effattn.ops.gated_delta_rule._wy_kernel import wy_kernel


def _inputs(b, t, h, d, dtype, gated, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 6)
    l2 = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    q = l2(jax.random.normal(ks[0], (b, t, h, d), F32)).astype(dtype)
    k = l2(jax.random.normal(ks[1], (b, t, h, d), F32)).astype(dtype)
    v = jax.random.normal(ks[2], (b, t, h, d), F32).astype(dtype)
    g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (b, t, h), F32)) if gated else None
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (b, t, h), F32))
    do = jax.random.normal(ks[5], (b, t, h, d), F32).astype(dtype)
    return q, k, v, g, beta, do


def benchmark_parts(b, t, h, d, dtype, gated: bool = True, chunk: int = 64, config=None, interpret=None):
    """{name: zero-arg callable running one jitted piece} at B=b, T=t (a multiple of chunk), H=h, K=V=d;
    nothing runs until called."""
    dtype = jnp.dtype(dtype)
    cfg = P.DEFAULT_CONFIG if config is None else config
    if interpret is None:
        interpret = jax.default_backend() != 'gpu'
    q, k, v, g, beta, do = _inputs(b, t, h, d, dtype, gated)
    scale = d ** -0.5
    ctx = _Ctx(dtype, float(scale), chunk, gated=gated, cumulative=P.cumulative_gates(cfg, dtype, gated))
    g32 = jnp.zeros((b, t, h), F32) if g is None else g
    gb, betab = P._gate_rows(g32, ctx), P._gates_bht(beta)

    # Each piece's inputs (the outputs of the pieces before it) are computed on its first call, once: timing one
    # piece compiles and runs only what it needs.
    once = functools.cache
    wy = jax.jit(lambda k, v, gb, betab: wy_kernel(k, v, gb, betab, ctx, cfg.num_warps_wy, interpret))
    wut = once(lambda: jax.block_until_ready(wy(k, v, gb, betab)))  # W, U, T

    def fwd_state(q, k, w, u, gb, store):
        return P._forward(q, k, w, u, gb, None, ctx, cfg, interpret, store)
    fs = jax.jit(functools.partial(fwd_state, store=False))
    fss = jax.jit(functools.partial(fwd_state, store=True))
    stored = once(lambda: jax.block_until_ready(fss(q, k, *wut()[:2], gb))[2:])  # S_c, V'

    def fwd(q, k, v, g, beta):
        return P.kernel_gated_delta_rule(q, k, v, g, beta, scale=scale, chunk_size=chunk, config=cfg,
                                         interpret=interpret)

    dht = jnp.zeros((b, h, d, d), F32)
    split = cfg.bwd_split
    bs = jax.jit(lambda q, k, w, do, gb, dht: P._state_grads(q, k, w, do, gb, dht, ctx, cfg, interpret, split))
    state_grads = once(lambda: jax.block_until_ready(bs(q, k, wut()[0], do, gb, dht)))  # dS_{c+1}, dh0, dV'
    if split:
        bx = jax.jit(lambda q, k, v, g, beta, s, ds, w, u, tt, vn, dvn, do: P._split_grads(
            q, k, v, g, beta, s, ds, (w, u, tt), vn, dvn, do, ctx, cfg, interpret))
    else:
        bx = jax.jit(lambda q, k, v, g, beta, s, ds, w, u, tt, vn, dvn, do: P._chunk_grads(
            q, k, v, g, beta, s, ds, (w, u, tt), do, ctx, cfg, interpret))

    def loss(q, k, v, g, beta):
        o, ht = fwd(q, k, v, g, beta)
        return jnp.sum(o.astype(F32) * do.astype(F32)) + jnp.sum(ht)
    argnums = (0, 1, 2, 4) if g is None else (0, 1, 2, 3, 4)
    fb = jax.jit(jax.value_and_grad(loss, argnums=argnums))  # the value keeps o in the timing

    p = functools.partial
    split_parts = {}
    if split:
        wide_q, wide_dvb, wide_k = P.DOT_MODES[cfg.bwd_dots]
        dqk = jax.jit(lambda q, k, vn, dvn, do, gb, s, ds: dqk_kernel(
            q, k, vn, dvn, do, gb, s, ds, ctx, cfg.block_k_dqk, cfg.block_v_dqk, cfg.num_warps_dqk,
            cfg.num_stages_dqk, interpret, wide_q, wide_k))
        dqk_args = once(lambda: (q, k, stored()[1], state_grads()[2], do, gb, stored()[0], state_grads()[0]))
        dqk_out = once(lambda: jax.block_until_ready(dqk(*dqk_args())))  # dq, dk_o, dW, dg
        wyb = jax.jit(lambda k, v, w, u, gb, betab, tt, dw, dvn, dk_o: wy_bwd_kernel(
            k, v, w, u, gb, betab, tt, dw, dvn, dk_o, ctx, cfg.cols_wy_bwd, cfg.num_warps_wy_bwd,
            cfg.num_stages_wy_bwd, interpret, wide_dvb, wide_k))
        split_parts = {'bwd_dqk': lambda: dqk(*dqk_args()),
                       'bwd_wy': lambda: wyb(k, v, *wut()[:2], gb, betab, wut()[2], dqk_out()[2], state_grads()[2],
                                             dqk_out()[1])}
    return split_parts | {
        'wy': p(wy, k, v, gb, betab),
        'fwd_state': lambda: fs(q, k, *wut()[:2], gb),
        'fwd_state_store': lambda: fss(q, k, *wut()[:2], gb),
        'fwd': p(jax.jit(fwd), q, k, v, g, beta),
        'bwd_state': lambda: bs(q, k, wut()[0], do, gb, dht),
        'bwd_chunk': lambda: bx(q, k, v, g32, beta, stored()[0], state_grads()[0], *wut(), stored()[1],
                                state_grads()[2], do),
        'fwd_bwd': p(fb, q, k, v, g, beta),
    }


def tune_candidates(base=None) -> dict[str, list]:
    """KernelConfigs worth timing per piece ({part: [config, ...]}), each varying only that piece's knobs."""
    base = P.DEFAULT_CONFIG if base is None else base
    rep = dataclasses.replace
    return {
        'wy': [rep(base, num_warps_wy=w) for w in (2, 4, 8)],
        'fwd_state': [rep(base, block_v=bv, num_warps=w, num_stages=s)
                      for bv in (32, 64, 128) for w in (4, 8) for s in (1, 2, 3)],
        'bwd_state': [rep(base, block_v_bwd=bv, num_warps_bwd=w, num_stages_bwd=s)
                      for bv in (32, 64) for w in (4, 8) for s in (1, 2, 3)],
        'fwd': [base] + [rep(base, split_o=True, block_v=bv, num_warps=w, num_stages=st, num_warps_o=wo)
                         for bv, w, st in ((32, 4, 2), (32, 4, 3), (32, 8, 3), (64, 8, 3)) for wo in (4, 8)],
        # H200, first tune of 16 (block_k in 32, 64; block_v in 32, 64; 4, 8 warps; 1, 2 stages): 8 warps and
        # block_k 32 were slowest; these are the neighbours of the best (64, 32, 4, 1) and whole-K tiles.
        'bwd_dqk': [rep(base, block_k_dqk=bk, block_v_dqk=bv, num_warps_dqk=w, num_stages_dqk=s)
                    for bk, bv, w, s in ((64, 32, 4, 1), (64, 32, 4, 2), (64, 16, 4, 1), (64, 64, 4, 1),
                                         (32, 32, 4, 1), (128, 32, 4, 1), (128, 32, 8, 1), (128, 16, 8, 1))],
        'bwd_wy': [rep(base, cols_wy_bwd=c, num_warps_wy_bwd=w, num_stages_wy_bwd=s)
                   for c, w, s in ((64, 4, 1), (32, 4, 1), (64, 8, 1), (128, 4, 1), (128, 8, 1), (32, 2, 1))],
    }
