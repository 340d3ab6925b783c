"""GLA inter-chunk sweeps in the Lightning Attention-2 layout (Qin et al. 2024, Alg. 1; as simple_gla/pallas.py):
one program per (batch, head, value or key tile) walks the chunks with a fori_loop and keeps the fp32 state on chip.
No pairwise work here: A and the strict intra-chunk gradients come from _intra.py. Per chunk (G chunk-local
cumsum of g in base 2, G_l its last row, loaded as a [1, K] row; q scaled):
  forward   O_c = (Q_c ⊙ e^G) S_c + A_c V_c,   S_{c+1} = diag(e^{G_l}) S_c + (K_c ⊙ e^{G_l - G})^T V_c
  dq sweep (forward in time, key tile):  dQ = dQ_strict + dA_ii K + e^G ⊙ dO S_c^T
  dk sweep (reverse, key tile):          dK = dK_strict + dA_ii Q + e^{G_l - G} ⊙ V dS_{c+1}^T
  dv sweep (reverse, value tile):        dV = A^T dO + (K ⊙ e^{G_l - G}) dS_{c+1}
  dS_c = diag(e^{G_l}) dS_{c+1} + (Q ⊙ e^G)^T dO, dS_N = d final_state, d initial_state = dS_0; dA_ii = dO_i . V_i.
The dq and dk sweeps also write the gate-gradient terms (see pallas.py): x_q = q ⊙ (dq_strict + dq_inter) as its
chunk-local reverse cumsum and chunk totals; x_k = k ⊙ dk_strict + (k ⊙ e^{G_l-G}) ⊙ V dS_q^T, reverse-summed over
T in the dk sweep, and E = (k ⊙ e^{G_l-G}) ⊙ λ ⊙ V dS_T^T (keys paired with d final_state; dS = dS_q + λ dS_T,
λ the decay to the end), chunk-local exclusive cumsum and chunk totals.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32, chunk_slice
from effattn.ops.gla._intra import _dd
from effattn.ops.simple_gla.pallas import _dot, _dot_f32_lhs, _dot_f32_rhs, _f32, _params


def _gates(g_ref, c, ks, chunk):
  """G [C, tile] and its last row G_l [1, tile] of chunk c (fp32, base 2)."""
  return g_ref[chunk_slice(c, chunk), ks], g_ref[pl.ds(c * chunk + chunk - 1, 1), ks]


def _col(row):
  """[1, K] -> [K, 1]."""
  return jnp.sum(row, axis=0)[:, None]


def _local_cumsum(x, ctx, precise, reverse):
  """Chunk-local cumsum of x [C, K] fp32 over rows: inclusive from the end if reverse, else exclusive from the
  start; a dot with a 0/1 matrix (x to ~2^-17 in bf16 if precise)."""
  idx = jnp.arange(x.shape[0], dtype=jnp.int32)
  row, col = idx[:, None], idx[None, :]
  mask = col >= row if reverse else col < row
  return _dot_f32_rhs(mask.astype(ctx.dt), x, 1, 0, ctx, precise)


# ----------------------------------------------------------------------------------------------------
# Forward: grid (B, H, Vp / BV).

def _fwd_kernel(q_ref, k_ref, v_ref, g_ref, a_ref, *rest, ctx, has_h0):
  h0_ref, o_ref, ht_ref = rest if has_h0 else (None, *rest)
  tp, kp = q_ref.shape
  bv = v_ref.shape[-1]
  chunk = ctx.chunk
  s0 = h0_ref[...].astype(F32) if has_h0 else jnp.zeros((kp, bv), F32)

  def body(c, s):
    sl = chunk_slice(c, chunk)
    g, gl = _gates(g_ref, c, slice(None), chunk)
    vc = v_ref[sl, :]
    o = (_dd(_f32(q_ref[sl, :]) * (ctx.scale * jnp.exp2(g)), s, 1, 0, ctx)
         + _dot(a_ref[sl, :], vc, 1, 0, ctx))
    o_ref[sl, :] = o.astype(o_ref.dtype)
    kd = _f32(k_ref[sl, :]) * jnp.exp2(gl - g)
    return jnp.exp2(_col(gl)) * s + _dot_f32_lhs(kd, vc, 0, 0, ctx, False)

  ht_ref[...] = jax.lax.fori_loop(0, tp // chunk, body, s0)


def _row_spec(tp, d):
  return pl.BlockSpec((None, tp, None, d), lambda b, h, r: (b, 0, h, 0))


def _state_spec(kp, vp):
  return pl.BlockSpec((None, None, kp, vp), lambda b, h, r: (b, h, 0, 0))


def forward(q, k, v, g, a, h0, ctx, cfg, interpret):
  """(o [B,Tp,H,Vp] in q's dtype, final state fp32); q, k, g = G [B,Tp,H,Kp], A [B,Tp,H,C]."""
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  bv = min(cfg.block_v, vp)
  has_h0 = h0 is not None
  vtile = pl.BlockSpec((None, tp, None, bv), lambda b, h, r: (b, 0, h, r))
  state_tile = pl.BlockSpec((None, None, kp, bv), lambda b, h, r: (b, h, 0, r))
  rk = _row_spec(tp, kp)
  in_specs = [rk, rk, vtile, rk, _row_spec(tp, ctx.chunk)] + ([state_tile] if has_h0 else [])
  return pl.pallas_call(
      functools.partial(_fwd_kernel, ctx=ctx, has_h0=has_h0), grid=(b, h, vp // bv),
      in_specs=in_specs, out_specs=[vtile, state_tile],
      out_shape=[jax.ShapeDtypeStruct((b, tp, h, vp), q.dtype), jax.ShapeDtypeStruct((b, h, kp, vp), F32)],
      interpret=interpret, name='gla_fwd',
      **_params(interpret, ctx, cfg.num_warps, cfg.num_stages))(q, k, v, g, a, *([h0] if has_h0 else []))
