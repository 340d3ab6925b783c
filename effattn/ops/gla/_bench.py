"""Timing hook for the gla Pallas kernel: each piece of pallas.py as a jitted zero-arg callable.

    parts = benchmark_parts(4, 4096, 16, 128, jnp.bfloat16)
    jax.block_until_ready(parts['intra_fwd']())

Pieces: 'gates' (chunk-local cumsums of g, _scan.chunk_gates), 'intra_fwd' (A and the gated q, k,
_intra.intra_a), 'fwd_sweep' (the output sweep, _sweeps.forward), 'fwd' (whole forward), 'intra_bwd'
(_intra.intra_grads), 'bwd_sweeps' (the dq / dk / dv sweeps, _sweeps.backward, with d final_state, so with the
W kernel; under config.bwd_states the state sweeps and per-chunk gradients of _state_grads.backward),
'bwd_sweeps_o' (the same without d final_state), 'dg' (_scan.chunk_dg, the gate gradient's cumsums), 'fwd_bwd'
(forward + backward of sum(o * do) + sum(ht)), 'fwd_bwd_o' (of sum(o * do) alone: training's case, d final_state
a symbolic zero). K and V powers of two and T a multiple of
the chunk (no padding).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from effattn.ops.common.pallas_triton import F32
from effattn.ops.gla import _intra, _scan, _sweeps
from effattn.ops.gla import pallas as P
from effattn.ops.simple_gla.pallas import _Ctx


def benchmark_parts(b, t, h, d, dtype, config=None, interpret=None):
  """{name: zero-arg callable running one jitted piece} at B=b, T=t, H=h, K=V=d; nothing runs until called."""
  dtype = jnp.dtype(dtype)
  cfg = P.DEFAULT_CONFIG if config is None else config
  if interpret is None:
    interpret = jax.default_backend() != 'gpu'
  chunk = min(cfg.chunk, cfg.chunk_fp32) if dtype == jnp.float32 else cfg.chunk
  if t % chunk or d & (d - 1):
    raise ValueError(f'benchmark_parts needs T a multiple of the chunk ({chunk}) and D a power of two; '
                     f'got T={t}, D={d}')
  ks = jax.random.split(jax.random.PRNGKey(0), 5)
  q, k, v, do = (jax.random.normal(kk, (b, t, h, d), F32).astype(dtype) for kk in (ks[0], ks[1], ks[2], ks[4]))
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (b, t, h, d), F32)) / 16
  ctx = _Ctx(dtype, float(d ** -0.5), chunk)
  dht = jnp.zeros((b, h, d, d), F32)

  # Each piece's inputs (the outputs of the pieces before it) are computed on its first call, once: timing one
  # piece compiles and runs only what it needs.
  gates = jax.jit(lambda g: _scan.chunk_gates(g, chunk, interpret, width=cfg.scan_width,
                                              num_warps=cfg.num_warps_scan, block_k=cfg.scan_block_k))
  intra_fwd = jax.jit(lambda q, k, gc: _intra.intra_a(q, k, gc, ctx, cfg, interpret))
  sweep = jax.jit(lambda qg, kg, v, gc, a: _sweeps.forward(qg, kg, v, gc, a, None, ctx, cfg, interpret))
  intra_bwd = jax.jit(lambda q, k, gc, v, do: _intra.intra_grads(q, k, gc, v, do, ctx, cfg, interpret,
                                                                not cfg.save_factors))  # as the backward runs it
  backward = P.inter_chunk_backward(cfg)
  bwd = jax.jit(lambda *a: backward(*a, None, do, dht, ctx, cfg, interpret))
  bwd_o = jax.jit(lambda *a: backward(*a, None, do, None, ctx, cfg, interpret))  # d final_state symbolic zero
  off = jnp.zeros((b, t // chunk, h, d), F32)
  dg = jax.jit(lambda xq, y, off: _scan.chunk_dg(xq, y, off, chunk, g.dtype, interpret, width=cfg.scan_width,
                                                 num_warps=cfg.num_warps_scan, parts=cfg.dg_parts,
                                                 block_k=cfg.scan_block_k))
  once = functools.cache
  gc = once(lambda: jax.block_until_ready(gates(g)))
  intra = once(lambda: jax.block_until_ready(intra_fwd(q, k, gc())))               # A, q e^G, k e^{G_l - G}
  intra_g = once(lambda: jax.block_until_ready(intra_bwd(q, k, gc(), v, do)))      # dq_i, dk_i, x_i(, qg, kg)
  bwd_args = once(lambda: (q, k, v, gc(), intra()[0], *intra_g()[:3], *intra()[1:]))
  grads = once(lambda: jax.block_until_ready(bwd(*bwd_args())))                   # dq, dk, dv, x_q, _, y, ...

  def fwd(q, k, v, g):
    return P.kernel_gla(q, k, v, g, scale=ctx.scale, config=cfg, interpret=interpret)

  def loss(q, k, v, g):
    o, ht = fwd(q, k, v, g)
    return jnp.sum(o.astype(F32) * do.astype(F32)) + jnp.sum(ht)

  def loss_o(q, k, v, g):  # training's case: the final state unread
    return jnp.sum(fwd(q, k, v, g)[0].astype(F32) * do.astype(F32))

  p = functools.partial
  return {
      'gates': p(gates, g),
      'intra_fwd': lambda: intra_fwd(q, k, gc()),
      'fwd_sweep': lambda: sweep(intra()[1], intra()[2], v, gc(), intra()[0]),
      'fwd': p(jax.jit(fwd), q, k, v, g),
      'intra_bwd': lambda: intra_bwd(q, k, gc(), v, do),
      'bwd_sweeps': lambda: bwd(*bwd_args()),
      'bwd_sweeps_o': lambda: bwd_o(*bwd_args()),
      'dg': lambda: dg(grads()[3], grads()[5], off),
      'fwd_bwd': p(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))), q, k, v, g),  # value: o is computed
      'fwd_bwd_o': p(jax.jit(jax.value_and_grad(loss_o, argnums=(0, 1, 2, 3))), q, k, v, g),
  }
