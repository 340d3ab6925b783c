"""GLA inter-chunk sweeps in the Lightning Attention-2 layout (Qin et al. 2024, Alg. 1; as simple_gla/pallas.py):
one program per (batch, head, value or key tile) walks the chunks with a fori_loop and keeps the fp32 state on chip.
No pairwise work here: A and the intra-chunk gradients come from _intra.py. Per chunk (G chunk-local cumsum of g in
base 2, G_l its last row, loaded as a [1, K] row; q scaled):
  forward   O_c = (Q_c ⊙ e^G) S_c + A_c V_c,   S_{c+1} = diag(e^{G_l}) S_c + (K_c ⊙ e^{G_l - G})^T V_c
  dq sweep (forward in time, key tile):  dQ = dQ_intra + e^G ⊙ dO S_c^T
  dk sweep (reverse, key tile):          dK = dK_intra + e^{G_l - G} ⊙ V dS_{c+1}^T
  dv sweep (reverse, value tile):        dV = A^T dO + (K ⊙ e^{G_l - G}) dS_{c+1}
  dS_c = diag(e^{G_l}) dS_{c+1} + (Q ⊙ e^G)^T dO, dS_N = d final_state, d initial_state = dS_0.
The dq and dk sweeps also write the per-position gate-gradient terms (see pallas.py), fp32, with their chunk
totals: x_q = q ⊙ dq_inter + x_intra (dq sweep; x_intra = q ⊙ dq_strict - k ⊙ dk_strict from _intra.py);
y = x_k + E (dk sweep), x_k = (k ⊙ e^{G_l-G}) ⊙ V dS_q^T and E = (k ⊙ e^{G_l-G}) ⊙ λ ⊙ V dS_T^T (keys paired with
d final_state; the state gradient is carried as dS = dS_q + λ dS_T, λ the decay to the end), and sum_T x_k.
The chunk-local cumulative sums are left to _scan.py: as 0/1-matrix dots in the sweeps they spilled
registers (~1.3 KB at 8 warps). Everything else that could move out of the dk sweep did (its fp32 [bk, V] dS tile
leaves few registers): sm_90, 8 warps, no spills at bk = 32 (~270 bytes at bk = 64).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32, chunk_slice
from effattn.ops.simple_gla.pallas import _dot, _dot_f32_lhs, _dot_f32_rhs, _f32, _params


def _gates(g_ref, c, ks, chunk):
  """G [C, tile] and its last row G_l [1, tile] of chunk c (fp32, base 2)."""
  return g_ref[chunk_slice(c, chunk), ks], g_ref[pl.ds(c * chunk + chunk - 1, 1), ks]


def _col(row):
  """[1, K] -> [K, 1]."""
  return jnp.sum(row, axis=0)[:, None]


# ----------------------------------------------------------------------------------------------------
# Forward: grid (B, H, Vp / BV).

def _fwd_kernel(qg_ref, kg_ref, v_ref, g_ref, a_ref, *rest, ctx, has_h0):
  """qg = q ⊙ e^G, kg = k ⊙ e^{G_l - G} (from _intra.py, dot dtype); only G_l is read from G."""
  h0_ref, o_ref, ht_ref = rest if has_h0 else (None, *rest)
  tp, kp = qg_ref.shape
  bv = v_ref.shape[-1]
  chunk = ctx.chunk
  s0 = h0_ref[...].astype(F32) if has_h0 else jnp.zeros((kp, bv), F32)

  def body(c, s):
    sl = chunk_slice(c, chunk)
    vc = v_ref[sl, :]
    o = _dot_f32_rhs(qg_ref[sl, :], s, 1, 0, ctx, False) + _dot(a_ref[sl, :], vc, 1, 0, ctx)
    o_ref[sl, :] = o.astype(o_ref.dtype)
    gl = g_ref[pl.ds(c * chunk + chunk - 1, 1), :]
    return jnp.exp2(_col(gl)) * s + _dot(kg_ref[sl, :], vc, 0, 0, ctx)

  ht_ref[...] = jax.lax.fori_loop(0, tp // chunk, body, s0)


def _row_spec(tp, d):
  return pl.BlockSpec((None, tp, None, d), lambda b, h, r: (b, 0, h, 0))


def _state_spec(kp, vp):
  return pl.BlockSpec((None, None, kp, vp), lambda b, h, r: (b, h, 0, 0))


def forward(q, k, v, g, a, h0, ctx, cfg, interpret):
  """(o [B,Tp,H,Vp] in q's dtype, final state fp32); q, k: q ⊙ e^G, k ⊙ e^{G_l - G}; g = G [B,Tp,H,Kp];
  A [B,Tp,H,C]."""
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


def _state_kernel(kg_ref, v_ref, g_ref, ht_ref, *, ctx):
  """The forward sweep's state only (no o): S_{c+1} = diag(e^{G_l}) S_c + kg_c^T V_c from S_0 = 0."""
  tp, kp = kg_ref.shape
  chunk = ctx.chunk

  def body(c, s):
    sl = chunk_slice(c, chunk)
    gl = g_ref[pl.ds(c * chunk + chunk - 1, 1), :]
    return jnp.exp2(_col(gl)) * s + _dot(kg_ref[sl, :], v_ref[sl, :], 0, 0, ctx)

  ht_ref[...] = jax.lax.fori_loop(0, tp // chunk, body, jnp.zeros((kp, v_ref.shape[-1]), F32))


def segment_states(k, v, g, segments: int, ctx, cfg, interpret):
  """The state fp32 [B, P - 1, H, Kp, Vp] of each of the first P - 1 of `segments` equal runs of whole chunks,
  from a zero state, by the forward sweep without its output (the sequence split's local states, _split.py; the
  last segment's is never needed); k = k ⊙ e^{G_l - G}, g = G [B,Tp,H,Kp], read in place."""
  b, tp, h, kp = k.shape
  vp = v.shape[-1]
  bv = min(cfg.block_v, vp)
  ts = tp // segments
  rows = pl.BlockSpec((None, ts, None, kp), lambda b, s, h, r: (b, s, h, 0))
  return pl.pallas_call(
      functools.partial(_state_kernel, ctx=ctx), grid=(b, segments - 1, h, vp // bv),
      in_specs=[rows, pl.BlockSpec((None, ts, None, bv), lambda b, s, h, r: (b, s, h, r)), rows],
      out_specs=pl.BlockSpec((None, None, None, kp, bv), lambda b, s, h, r: (b, s, h, 0, r)),
      out_shape=jax.ShapeDtypeStruct((b, segments - 1, h, kp, vp), F32), interpret=interpret, name='gla_states',
      **_params(interpret, ctx, cfg.num_warps, cfg.num_stages))(k, v, g)


# ----------------------------------------------------------------------------------------------------
# Backward roles. Refs hold whole [Tp, Kp] / [Tp, Vp] rows of one (batch, head); each role loads its tile.

def _dq_role(kt, q_ref, k_ref, v_ref, do_ref, g_ref, dqi_ref, xi_ref, h0_ref, dq_ref, dgq_ref, dgq_tot_ref, *, ctx, bk,
             precise):
  """Forward sweep for key tile kt: dq and the query-side gate terms x_q with their chunk totals."""
  tp = q_ref.shape[0]
  vp = v_ref.shape[-1]
  chunk, scale = ctx.chunk, ctx.scale
  ks = pl.ds(pl.multiple_of(kt * bk, bk), bk)
  s0 = h0_ref[ks, :].astype(F32) if h0_ref is not None else jnp.zeros((bk, vp), F32)

  def body(c, s):
    sl = chunk_slice(c, chunk)
    g, gl = _gates(g_ref, c, ks, chunk)
    vc, doc = v_ref[sl, :], do_ref[sl, :]
    dq_inter = _dot_f32_rhs(doc, s, 1, 1, ctx, precise) * jnp.exp2(g)           # e^G ⊙ dO S^T
    dq_ref[sl, ks] = ((dqi_ref[sl, ks] + dq_inter) * scale).astype(dq_ref.dtype)
    x = (_f32(q_ref[sl, ks]) * scale) * dq_inter + xi_ref[sl, ks]
    dgq_ref[sl, ks] = x
    dgq_tot_ref[pl.ds(c, 1), ks] = jnp.sum(x, axis=0)[None, :]
    kd = _f32(k_ref[sl, ks]) * jnp.exp2(gl - g)
    return jnp.exp2(_col(gl)) * s + _dot_f32_lhs(kd, vc, 0, 0, ctx, precise)

  jax.lax.fori_loop(0, tp // chunk, body, s0)


def _dk_role(kt, q_ref, k_ref, v_ref, do_ref, g_ref, dki_ref, w_ref, dht_ref, dk_ref, dgk_ref, dgk_tot_ref,
             xk_tot_ref, dh0_ref, *, ctx, bk, precise):
  """Reverse sweep for key tile kt: dk, dh0 rows and the key-side gate terms y = x_k + E, their chunk totals and
  sum_T x_k. dS is carried as dS_q + λ dS_T; the dS_T terms come from W = V dS_T^T [Tp, K] (w_ref, fp32, computed
  outside) so that no fp32 dS_T tile sits in registers. w_ref and dht_ref None: d final_state is zero (no E, λ)."""
  has_dht = dht_ref is not None
  tp = q_ref.shape[0]
  vp = v_ref.shape[-1]
  chunk, scale = ctx.chunk, ctx.scale
  n = tp // chunk
  ks = pl.ds(pl.multiple_of(kt * bk, bk), bk)

  def body(i, carry):
    dsq, acc, *lam = carry  # λ only with d final_state
    c = n - 1 - i
    sl = chunk_slice(c, chunk)
    g, gl = _gates(g_ref, c, ks, chunk)
    vc, doc = v_ref[sl, :], do_ref[sl, :]
    qf = _f32(q_ref[sl, ks]) * scale
    # Statement order keeps one fp32 dS tile live (register pressure): dS's last use, then its update.
    dk_q = _dot_f32_rhs(vc, dsq, 1, 1, ctx, precise)                             # V dS_q^T
    dsq = jnp.exp2(_col(gl)) * dsq + _dot_f32_lhs(qf * jnp.exp2(g), doc, 0, 0, ctx, precise)
    kd = _f32(k_ref[sl, ks]) * jnp.exp2(gl - g)
    y = xk = kd * dk_q
    dk_s = dk_q                                                                  # V dS^T
    if has_dht:
      dk_t = w_ref[sl, ks] * lam[0]                                              # λ ⊙ V dS_T^T
      dk_s, y, lam = dk_q + dk_t, xk + kd * dk_t, [lam[0] * jnp.exp2(gl)]
    dk_ref[sl, ks] = (dki_ref[sl, ks] + dk_s * jnp.exp2(gl - g)).astype(dk_ref.dtype)
    dgk_ref[sl, ks] = y
    dgk_tot_ref[pl.ds(c, 1), ks] = jnp.sum(y, axis=0)[None, :]
    return (dsq, acc + jnp.sum(xk, axis=0)[None, :], *lam)

  init = (jnp.zeros((bk, vp), F32), jnp.zeros((1, bk), F32), *([jnp.ones((1, bk), F32)] if has_dht else []))
  dsq, acc, *lam = jax.lax.fori_loop(0, n, body, init)
  dh0_ref[ks, :] = dsq + _col(lam[0]) * dht_ref[ks, :].astype(F32) if has_dht else dsq
  xk_tot_ref[:, ks] = acc


def _dv_role(vt, qg_ref, kg_ref, do_ref, g_ref, a_ref, dht_ref, dv_ref, *, ctx, bv):
  """Reverse sweep for value tile vt (all of K): dv = A^T dO + (K ⊙ e^{G_l - G}) dS_{c+1}; qg, kg as in the
  forward (only G_l is read from G); dS_N = d final_state (dht_ref None: zero)."""
  tp = qg_ref.shape[0]
  chunk = ctx.chunk
  n = tp // chunk
  vs = pl.ds(pl.multiple_of(vt * bv, bv), bv)

  def body(i, ds):
    c = n - 1 - i
    sl = chunk_slice(c, chunk)
    doc = do_ref[sl, vs]
    dv = _dot(a_ref[sl, :], doc, 0, 0, ctx) + _dot_f32_rhs(kg_ref[sl, :], ds, 1, 0, ctx, False)
    dv_ref[sl, vs] = dv.astype(dv_ref.dtype)
    gl = g_ref[pl.ds(c * chunk + chunk - 1, 1), :]
    return jnp.exp2(_col(gl)) * ds + _dot(qg_ref[sl, :], doc, 0, 0, ctx)

  ds0 = jnp.zeros((qg_ref.shape[-1], bv), F32) if dht_ref is None else dht_ref[:, vs].astype(F32)
  jax.lax.fori_loop(0, n, body, ds0)


ROLES = ('dq', 'dk', 'dv')


def _bwd_kernel(q_ref, k_ref, v_ref, do_ref, g_ref, a_ref, dqi_ref, dki_ref, xi_ref, qg_ref, kg_ref, *rest, has_dht,
                has_h0, roles, counts, n_outs, bq, bk, bv, ctx, precise, role_axis):
  """Grid axis role_axis runs the programs of `roles` in order, counts[i] of each: dq sweeps (key tiles of bq), dk
  sweeps (key tiles of bk), dv sweeps (value tiles of bv). rest: W and d final_state if has_dht, h0 if has_h0, then
  the outputs of those roles, n_outs[i] of each (backward's `outputs`)."""
  w_ref, dht_ref, *rest = rest if has_dht else (None, None, *rest)
  h0_ref, *outs = rest if has_h0 else (None, *rest)
  r = pl.program_id(role_axis)
  sweeps = {
      'dq': lambda i, mine: _dq_role(i, q_ref, k_ref, v_ref, do_ref, g_ref, dqi_ref, xi_ref, h0_ref, *mine, ctx=ctx,
                                     bk=bq, precise=precise),
      'dk': lambda i, mine: _dk_role(i, q_ref, k_ref, v_ref, do_ref, g_ref, dki_ref, w_ref, dht_ref, *mine, ctx=ctx,
                                     bk=bk, precise=precise),
      'dv': lambda i, mine: _dv_role(i, qg_ref, kg_ref, do_ref, g_ref, a_ref, dht_ref, *mine, ctx=ctx, bv=bv)}
  first = 0
  for role, count, n_out in zip(roles, counts, n_outs):
    mine, outs = outs[:n_out], outs[n_out:]
    sweep = functools.partial(sweeps[role], r - first, mine)
    if len(roles) > 1:
      pl.when((r >= first) & (r < first + count))(sweep)
    else:
      sweep()
    first += count


def _w_kernel(v_ref, *rest, ctx):
  """W rows of one chunk: V dS_T^T [C, Kp] fp32, over key slices of 32 (dS_T parts [Kp, Vp] in the dot dtype)."""
  *parts, o_ref = rest
  vc = v_ref[...]
  kp = o_ref.shape[-1]
  w = min(32, kp)

  def step(t, carry):
    ks = pl.ds(pl.multiple_of(t * w, w), w)
    acc = None
    for p in parts:
      d = _dot(vc, p[ks, :], 1, 1, ctx)
      acc = d if acc is None else acc + d
    o_ref[:, ks] = acc
    return carry
  jax.lax.fori_loop(0, kp // w, step, 0)


def _v_dht(v, dht, ctx, interpret):
  """W = V dS_T^T [B,Tp,H,Kp] fp32: IEEE fp32 for fp32 inputs, else two bf16 products (dS_T = hi + lo, ~2^-17).
  A Pallas kernel per chunk rather than jnp.einsum: no transposes of v or W for the batch dims (B, H)."""
  b, tp, h, vp = v.shape
  kp = dht.shape[2]
  if ctx.fp32:
    parts = [dht]
  else:
    hi = dht.astype(v.dtype)
    parts = [hi, (dht - hi.astype(F32)).astype(v.dtype)]
  c = ctx.chunk
  st = pl.BlockSpec((None, None, kp, vp), lambda b, h, n: (b, h, 0, 0))
  return pl.pallas_call(
      functools.partial(_w_kernel, ctx=ctx), grid=(b, h, tp // c),
      in_specs=[pl.BlockSpec((None, c, None, vp), lambda b, h, n: (b, n, h, 0))] + [st] * len(parts),
      out_specs=pl.BlockSpec((None, c, None, kp), lambda b, h, n: (b, n, h, 0)),
      out_shape=jax.ShapeDtypeStruct((b, tp, h, kp), F32), interpret=interpret, name='gla_w',
      **_params(interpret, ctx, 4, 2))(v, *parts)


def launch_groups(apart: str | None) -> list[tuple[str, ...]]:
  """The roles of each backward-sweep launch for KernelConfig.bwd_apart: 'dq' -> [('dq',), ('dk', 'dv')];
  'dq+dv' -> [('dq',), ('dv',), ('dk',)]; None -> [('dq', 'dk', 'dv')]."""
  alone = () if apart is None else tuple(apart.split('+'))
  if any(r not in ROLES for r in alone) or len(set(alone)) != len(alone):
    raise ValueError(f"KernelConfig.bwd_apart must be None or distinct roles of {ROLES} joined by '+'; got {apart!r}")
  rest = tuple(r for r in ROLES if r not in alone)
  return [(r,) for r in alone] + ([rest] if rest else [])


def backward(q, k, v, g, a, dq_i, dk_i, x_i, qg, kg, h0, do, dht, ctx, cfg, interpret):
  """Returns dq, dk [B,Tp,H,Kp], dv [B,Tp,H,Vp] (input dtype), the gate terms x_q, y [B,Tp,H,Kp] with their
  chunk totals [B,N,H,Kp] and sum_T x_k [B,H,1,Kp] (fp32), dh0 fp32. g = G; the rest from _intra.py; dht None: d
  final_state is zero (no W kernel, no dS_T terms)."""
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  bq, bk, bv = min(cfg.block_k_dq, kp), min(cfg.block_k_dk, kp), min(cfg.block_v_bwd, vp)
  nq, nk, nv = kp // bq, kp // bk, vp // bv
  has_h0, has_dht = h0 is not None, dht is not None
  qk, vv, st = _row_spec(tp, kp), _row_spec(tp, vp), _state_spec(kp, vp)
  n = tp // ctx.chunk
  dt_k = jax.ShapeDtypeStruct((b, tp, h, kp), q.dtype)
  dg_shape = jax.ShapeDtypeStruct((b, tp, h, kp), F32)
  tot_shape = jax.ShapeDtypeStruct((b, n, h, kp), F32)
  tot = pl.BlockSpec((None, n, None, kp), lambda b, h, r: (b, 0, h, 0))
  roles_first = not has_dht if cfg.bwd_roles_first is None else cfg.bwd_roles_first
  dht_args = [_v_dht(v, dht, ctx, interpret), dht] if has_dht else []
  # CUDA dispatches grid axis 0 fastest: roles first puts the programs of one (batch, head) together
  order = (lambda spec: pl.BlockSpec(spec.block_shape, lambda r, b, h, f=spec.index_map: f(b, h, r))) \
      if roles_first else (lambda spec: spec)
  in_specs = [qk, qk, vv, vv, qk, _row_spec(tp, ctx.chunk), qk, qk, qk, qk, qk, *([qk, st] if has_dht else []),
              *([st] if has_h0 else [])]
  outputs = {  # (spec, shape) of each role's outputs, in the order its sweep takes them
      'dq': [(qk, dt_k), (qk, dg_shape), (tot, tot_shape)],
      'dk': [(qk, dt_k), (qk, dg_shape), (tot, tot_shape),
             (pl.BlockSpec((None, None, 1, kp), lambda b, h, r: (b, h, 0, 0)),
              jax.ShapeDtypeStruct((b, h, 1, kp), F32)), (st, jax.ShapeDtypeStruct((b, h, kp, vp), F32))],
      'dv': [(vv, jax.ShapeDtypeStruct((b, tp, h, vp), q.dtype))]}
  counts = {'dq': nq, 'dk': nk, 'dv': nv}
  groups = launch_groups(cfg.bwd_apart)
  results = {}
  for roles in groups:
    outs = [o for role in roles for o in outputs[role]]
    n_roles = sum(counts[role] for role in roles)
    kernel = functools.partial(_bwd_kernel, has_dht=has_dht, has_h0=has_h0, roles=roles,
                               counts=tuple(counts[role] for role in roles),
                               n_outs=tuple(len(outputs[role]) for role in roles), bq=bq, bk=bk, bv=bv, ctx=ctx,
                               precise=cfg.precise_dg, role_axis=0 if roles_first else 2)
    got = pl.pallas_call(
        kernel, grid=(n_roles, b, h) if roles_first else (b, h, n_roles),
        in_specs=[order(x) for x in in_specs], out_specs=[order(spec) for spec, _ in outs],
        out_shape=[shape for _, shape in outs], interpret=interpret,
        name='_'.join(('gla_bwd', *roles)) if len(groups) > 1 else 'gla_bwd',
        **_params(interpret, ctx, cfg.num_warps_bwd, cfg.num_stages_bwd))(
            q, k, v, do, g, a, dq_i, dk_i, x_i, qg, kg, *dht_args, *([h0] if has_h0 else []))
    for role in roles:
      results[role], got = got[:len(outputs[role])], got[len(outputs[role]):]
  (dq, xq, xq_tot), (dk, y, y_tot, xk_tot, dh0), (dv,) = results['dq'], results['dk'], results['dv']
  return dq, dk, dv, xq, xq_tot, y, y_tot, xk_tot, dh0
