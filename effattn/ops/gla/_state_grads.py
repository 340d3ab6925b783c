"""GLA backward with materialised chunk states (Yang et al. 2024, arXiv 2312.06635, Sec. 4.2; ALGORITHMS.md section
5), the layout of flash-linear-attention's chunk_gla_bwd: state-only sweeps (chunk_fwd_h, chunk_bwd_dh), then the
gradients in one kernel parallel over (batch, head, chunk). KernelConfig.bwd_states selects it (pallas.py).

Why: _sweeps.backward computes dq, dk and dv inside sequential chunk sweeps, B H (Kp/bq + Kp/bk + Vp/bv) programs
(512 at B=4 H=16 K=V=128) that are latency-bound (1.14 ms of a 3.4 ms forward+backward on the H200). Here the
sequential part does only the state recurrences (per chunk one update dot, two with `precise`), and the gradient
dots run in B H N programs (4096 at T=4096).
Per (batch, head), G the chunk-local cumsum of g (base 2), G_l its last row, q scaled:
  1. _sweep_kernel, grid (B, H, 2 Vp/bv): the first Vp/bv programs walk forward and store every chunk-start state
       S_c (S_0 = h0),  S_{c+1} = diag(e^{G_l}) S_c + (K_c ⊙ e^{G_l - G})^T V_c,
     the others walk in reverse and store dS_q at every chunk end (dS_q(N) = 0; dS_q(0) separately),
       dS_q(c) = diag(e^{G_l}) dS_q(c+1) + (Q_c ⊙ e^G)^T dO_c,
     fp32 [B, H, N Kp, Vp] each, from fp32 factors (two bf16 dot operands each with `precise`, as _sweeps' roles).
     The states are recomputed here rather than stored by the forward: the forward's state update rounds
     k ⊙ e^{G_l - G} to the dot dtype, and the gate gradient needs S to ~2^-17 in bf16.
  2. λ_c = e^{sum of later chunks' G_l} [B, N, H, Kp] in jnp from the chunk totals, so that the full state gradient
     at chunk end is dS(c+1) = dS_q(c+1) + λ_c dS_T (dS_T = d final_state), and dh0 = dS_q(0) + λ_{-1} dS_T.
  3. _chunk_kernel, grid (B, H, N), the formulas of _sweeps' roles with the stored states (key tiles for dq, dk,
     value tiles for dv):
       dq = dq_i + e^G ⊙ dO S_c^T,   x_q = q ⊙ (e^G ⊙ dO S_c^T) + x_i
       dk = dk_i + e^{G_l - G} ⊙ (V dS_q(c+1)^T + λ_c ⊙ W),   W = V dS_T^T (_sweeps._v_dht)
       y = x_k + E,  x_k = (k ⊙ e^{G_l - G}) ⊙ V dS_q(c+1)^T,  E = (k ⊙ e^{G_l - G}) ⊙ λ_c ⊙ W
       dv = A^T dO + (K ⊙ e^{G_l - G}) dS(c+1)
     with the chunk totals of x_q, y and x_k (summed over chunks in jnp into sum_T x_k).
Dots per chunk (bf16, `precise`): sweeps 2 each (the fp32 factor in two halves), chunk kernel 2 (dq) + 2 (dk) +
2 (dv: A^T dO and K dS). The extra memory traffic: two fp32 state stacks written and read once (2 B H T K V / C
floats each way).

Triton lowering constraints as in simple_gla/pallas.py: no value slices (tiles and rows are loaded from refs with
pl.ds), no cumsum, power-of-two blocks.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32, chunk_slice
from effattn.ops.gla._sweeps import _col, _v_dht
from effattn.ops.simple_gla.pallas import _dot, _dot_f32_lhs, _dot_f32_rhs, _f32, _params


# ----------------------------------------------------------------------------------------------------
# State sweeps: grid (B, H, 2 Vp / bv). Refs hold whole [Tp, Kp] / [Tp, Vp] rows of one (batch, head) and the
# whole [N Kp, Vp] stacks; each role writes its value tile.

def _sweep_kernel(q_ref, k_ref, v_ref, do_ref, g_ref, *rest, has_h0, nv, bv, ctx, precise):
  h0_ref, s_ref, dsq_ref, dsq0_ref = rest if has_h0 else (None, *rest)
  tp, kp = q_ref.shape
  chunk, scale = ctx.chunk, ctx.scale
  n = tp // chunk
  r = pl.program_id(2)

  def gates(c):
    return g_ref[chunk_slice(c, chunk), :], g_ref[pl.ds(c * chunk + chunk - 1, 1), :]

  @pl.when(r < nv)
  def _():
    vs = pl.ds(pl.multiple_of(r * bv, bv), bv)

    def body(c, s):
      s_ref[chunk_slice(c, kp), vs] = s
      sl = chunk_slice(c, chunk)
      g, gl = gates(c)
      kd = _f32(k_ref[sl, :]) * jnp.exp2(gl - g)
      return jnp.exp2(_col(gl)) * s + _dot_f32_lhs(kd, v_ref[sl, vs], 0, 0, ctx, precise)

    s0 = h0_ref[:, vs].astype(F32) if has_h0 else jnp.zeros((kp, bv), F32)
    jax.lax.fori_loop(0, n, body, s0)

  @pl.when(r >= nv)
  def _():
    vs = pl.ds(pl.multiple_of((r - nv) * bv, bv), bv)

    def body(i, dsq):
      c = n - 1 - i
      dsq_ref[chunk_slice(c, kp), vs] = dsq                       # dS_q at the end of chunk c
      sl = chunk_slice(c, chunk)
      g, gl = gates(c)
      qd = (_f32(q_ref[sl, :]) * scale) * jnp.exp2(g)
      return jnp.exp2(_col(gl)) * dsq + _dot_f32_lhs(qd, do_ref[sl, vs], 0, 0, ctx, precise)

    dsq0_ref[:, vs] = jax.lax.fori_loop(0, n, body, jnp.zeros((kp, bv), F32))


def _rows(tp, d):
  return pl.BlockSpec((None, tp, None, d), lambda b, h, r: (b, 0, h, 0))


def states(q, k, v, do, g, h0, ctx, cfg, interpret):
  """(S_c stack, dS_q(c+1) stack [B, H, N Kp, Vp], dS_q(0) [B, H, Kp, Vp]), fp32; g = G [B,Tp,H,Kp]."""
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  n = tp // ctx.chunk
  bv = min(cfg.block_v_bwd, vp)
  nv = vp // bv
  has_h0 = h0 is not None
  stack = pl.BlockSpec((None, None, n * kp, vp), lambda b, h, r: (b, h, 0, 0))
  state = pl.BlockSpec((None, None, kp, vp), lambda b, h, r: (b, h, 0, 0))
  rk, rv = _rows(tp, kp), _rows(tp, vp)
  return pl.pallas_call(
      functools.partial(_sweep_kernel, has_h0=has_h0, nv=nv, bv=bv, ctx=ctx, precise=cfg.precise_dg),
      grid=(b, h, 2 * nv), in_specs=[rk, rk, rv, rv, rk] + ([state] if has_h0 else []),
      out_specs=[stack, stack, state],
      out_shape=[jax.ShapeDtypeStruct((b, h, n * kp, vp), F32)] * 2 + [jax.ShapeDtypeStruct((b, h, kp, vp), F32)],
      interpret=interpret, name='gla_bwd_states',
      **_params(interpret, ctx, cfg.num_warps_bwd, cfg.num_stages_bwd))(q, k, v, do, g, *([h0] if has_h0 else []))


# ----------------------------------------------------------------------------------------------------
# Gradients: grid (B, H, N), one chunk each. Refs: [C, Kp] / [C, Vp] rows of the chunk, A [C, C], the chunk's
# S_c and dS_q(c+1) [Kp, Vp], λ_c and the chunk-total outputs [1, Kp].

def _chunk_kernel(q_ref, k_ref, v_ref, do_ref, g_ref, a_ref, dqi_ref, dki_ref, xi_ref, kg_ref, w_ref, s_ref, dsq_ref,
                  lam_ref, dht_ref, dq_ref, dk_ref, dv_ref, xq_ref, xq_tot_ref, y_ref, y_tot_ref, xk_tot_ref, *, ctx,
                  bq, bk, bv, precise):
  chunk, kp = q_ref.shape
  vp = v_ref.shape[-1]
  scale = ctx.scale

  def tiles(width, total, body):
    def step(t, carry):
      body(pl.ds(pl.multiple_of(t * width, width), width))
      return carry
    jax.lax.fori_loop(0, total // width, step, 0)

  def gates(ks):
    return g_ref[:, ks], g_ref[pl.ds(chunk - 1, 1), ks]

  def dq_tile(ks):  # as _sweeps._dq_role
    g, _ = gates(ks)
    dq_inter = _dot_f32_rhs(do_ref[...], s_ref[ks, :], 1, 1, ctx, precise) * jnp.exp2(g)   # e^G ⊙ dO S^T
    dq_ref[:, ks] = ((dqi_ref[:, ks] + dq_inter) * scale).astype(dq_ref.dtype)
    x = (_f32(q_ref[:, ks]) * scale) * dq_inter + xi_ref[:, ks]
    xq_ref[:, ks] = x
    xq_tot_ref[:, ks] = jnp.sum(x, axis=0)[None, :]

  def dk_tile(ks):  # as _sweeps._dk_role
    g, gl = gates(ks)
    dk_q = _dot_f32_rhs(v_ref[...], dsq_ref[ks, :], 1, 1, ctx, precise)                     # V dS_q^T
    decay = jnp.exp2(gl - g)
    kd = _f32(k_ref[:, ks]) * decay
    dk_t = w_ref[:, ks] * lam_ref[:, ks]                                                     # λ ⊙ V dS_T^T
    dk_ref[:, ks] = (dki_ref[:, ks] + (dk_q + dk_t) * decay).astype(dk_ref.dtype)
    xk = kd * dk_q
    y = xk + kd * dk_t
    y_ref[:, ks] = y
    y_tot_ref[:, ks] = jnp.sum(y, axis=0)[None, :]
    xk_tot_ref[:, ks] = jnp.sum(xk, axis=0)[None, :]

  def dv_tile(vs):  # as _sweeps._dv_role, dS(c+1) = dS_q(c+1) + λ_c dS_T
    doc = do_ref[:, vs]
    ds = dsq_ref[:, vs] + _col(lam_ref[...]) * dht_ref[:, vs]
    dv = _dot(a_ref[...], doc, 0, 0, ctx) + _dot_f32_rhs(kg_ref[...], ds, 1, 0, ctx, False)
    dv_ref[:, vs] = dv.astype(dv_ref.dtype)

  tiles(bq, kp, dq_tile)
  tiles(bk, kp, dk_tile)
  tiles(bv, vp, dv_tile)


def backward(q, k, v, g, a, dq_i, dk_i, x_i, qg, kg, h0, do, dht, ctx, cfg, interpret):
  """_sweeps.backward's outputs from stored chunk states: dq, dk [B,Tp,H,Kp], dv [B,Tp,H,Vp] (input dtype), the gate
  terms x_q, y [B,Tp,H,Kp] with their chunk totals [B,N,H,Kp] and sum_T x_k [B,H,1,Kp] (fp32), dh0 fp32. g = G;
  the rest from _intra.py (qg unused: the dS_q sweep takes q ⊙ e^G in fp32)."""
  del qg
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  if dht is None:  # a zero d final_state (pallas._core_bwd): this opt-in path keeps its terms, with zeros
    dht = jnp.zeros((b, h, kp, vp), F32)
  c = ctx.chunk
  n = tp // c
  s, dsq, dsq0 = states(q, k, v, do, g, h0, ctx, cfg, interpret)
  gl = g[:, c - 1::c]                                                  # [B, N, H, Kp] chunk totals (base 2)
  later = jnp.flip(jnp.cumsum(jnp.flip(gl, 1), axis=1), 1) - gl       # sum over later chunks
  lam = jnp.exp2(later)
  dh0 = dsq0 + jnp.exp2(jnp.sum(gl, axis=1))[..., None] * dht.astype(F32)

  bq, bk, bv = min(cfg.block_k_dq, kp), min(cfg.block_k_dk, kp), min(cfg.block_v_bwd, vp)
  rows = lambda d: pl.BlockSpec((None, c, None, d), lambda b, h, i: (b, i, h, 0))
  state = pl.BlockSpec((None, None, kp, vp), lambda b, h, i: (b, h, i, 0))
  tot = pl.BlockSpec((None, 1, None, kp), lambda b, h, i: (b, i, h, 0))
  rk, rv = rows(kp), rows(vp)
  dt_k = jax.ShapeDtypeStruct((b, tp, h, kp), q.dtype)
  f32_k = jax.ShapeDtypeStruct((b, tp, h, kp), F32)
  tot_shape = jax.ShapeDtypeStruct((b, n, h, kp), F32)
  dq, dk, dv, xq, xq_tot, y, y_tot, xk_c = pl.pallas_call(
      functools.partial(_chunk_kernel, ctx=ctx, bq=bq, bk=bk, bv=bv, precise=cfg.precise_dg), grid=(b, h, n),
      in_specs=[rk, rk, rv, rv, rk, rows(c), rk, rk, rk, rk, rk, state, state, tot,
                pl.BlockSpec((None, None, kp, vp), lambda b, h, i: (b, h, 0, 0))],
      out_specs=[rk, rk, rv, rk, tot, rk, tot, tot],
      out_shape=[dt_k, dt_k, jax.ShapeDtypeStruct((b, tp, h, vp), q.dtype), f32_k, tot_shape, f32_k, tot_shape,
                 tot_shape],
      interpret=interpret, name='gla_bwd_chunks',
      **_params(interpret, ctx, cfg.num_warps_bwd, cfg.num_stages_bwd))(
          q, k, v, do, g, a, dq_i, dk_i, x_i, kg, _v_dht(v, dht, ctx, interpret), s, dsq, lam, dht)
  xk_tot = jnp.transpose(jnp.sum(xk_c, axis=1, keepdims=True), (0, 2, 1, 3))   # [B, H, 1, Kp]
  return dq, dk, dv, xq, xq_tot, y, y_tot, xk_tot, dh0
