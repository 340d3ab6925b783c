"""Timing hook for the gla Pallas kernel: each piece of pallas.py as a jitted zero-arg callable.

    parts = benchmark_parts(4, 4096, 16, 128, jnp.bfloat16)
    jax.block_until_ready(parts['intra_fwd']())

Pieces: 'gates' (chunk-local cumsums of g, _scan.chunk_gates), 'intra_fwd' (A and the gated q, k,
_intra.intra_a), 'fwd_sweep' (the output sweep, _sweeps.forward), 'fwd' (whole forward), 'intra_bwd'
(_intra.intra_grads), 'bwd_sweeps' (the dq / dk / dv sweeps, _sweeps.backward), 'dg' (_scan.chunk_dg, the
gate gradient's cumsums), 'fwd_bwd' (forward + backward of sum(o * do) + sum(ht)). K and V powers of two
and T a multiple of the chunk (no padding).
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
  """{name: jitted zero-arg callable} for each piece at B=b, T=t, H=h, K=V=d."""
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

  gates = jax.jit(lambda g: _scan.chunk_gates(g, chunk, interpret))
  gc = jax.block_until_ready(gates(g))
  intra_fwd = jax.jit(lambda q, k, gc: _intra.intra_a(q, k, gc, ctx, cfg, interpret))
  a, qg, kg = jax.block_until_ready(intra_fwd(q, k, gc))
  sweep = jax.jit(lambda qg, kg, v, gc, a: _sweeps.forward(qg, kg, v, gc, a, None, ctx, cfg, interpret))
  intra_bwd = jax.jit(lambda q, k, gc, v, do: _intra.intra_grads(q, k, gc, v, do, ctx, cfg, interpret))
  dq_i, dk_i, x_i, qg_b, kg_b = jax.block_until_ready(intra_bwd(q, k, gc, v, do))
  bwd = jax.jit(lambda *a: _sweeps.backward(*a, None, do, dht, ctx, cfg, interpret))
  bwd_args = (q, k, v, gc, a, dq_i, dk_i, x_i, qg_b, kg_b)
  grads = jax.block_until_ready(bwd(*bwd_args))  # dq, dk, dv, x_q, x_q totals, y, ...
  xq, y = grads[3], grads[5]
  off = jnp.zeros((b, t // chunk, h, d), F32)
  dg = jax.jit(lambda xq, y, off: _scan.chunk_dg(xq, y, off, chunk, g.dtype, interpret))

  def fwd(q, k, v, g):
    return P.kernel_gla(q, k, v, g, scale=ctx.scale, config=cfg, interpret=interpret)

  def loss(q, k, v, g):
    o, ht = fwd(q, k, v, g)
    return jnp.sum(o.astype(F32) * do.astype(F32)) + jnp.sum(ht)

  p = functools.partial
  return {
      'gates': p(gates, g),
      'intra_fwd': p(intra_fwd, q, k, gc),
      'fwd_sweep': p(sweep, qg, kg, v, gc, a),
      'fwd': p(jax.jit(fwd), q, k, v, g),
      'intra_bwd': p(intra_bwd, q, k, gc, v, do),
      'bwd_sweeps': p(bwd, *bwd_args),
      'dg': p(dg, xq, y, off),
      'fwd_bwd': p(jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))), q, k, v, g),
  }
