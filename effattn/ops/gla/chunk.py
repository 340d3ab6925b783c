"""GLA, chunkwise parallel form with secondary sub-chunks (Yang et al. 2024, Sec. 4.2-4.3; ALGORITHMS.md section 5).

Per chunk of C rows (G = chunk-local cumsum of g, Gl = G at the chunk's last row):
  o     = (q * e^G) S_c + A v,        A_ij = sum_k q_ik k_jk e^(G_ik - G_jk)   (i >= j, same segment)
  S_c+1 = diag(e^Gl) S_c + (k * e^(Gl - G))^T v.
A is built from sub-chunks of c = 16 rows: off-diagonal blocks as (q * e^(G - G_r)) (k * e^(G_r - G))^T with G_r the
query sub-chunk's first row, diagonal blocks from the pairwise factor e^(G_i - G_j), built one key column at a
time (the pairwise [c, c, K] factor, bounded by running groups of chunks). Every exponent is a
sum of gates over a forward interval, so it is <= 0; the exponents are formed from short same-sign partial sums
(not differences of chunk-long cumsums) to keep fp32 precision at extreme gates.

Backward (jax.custom_vjp, hand-derived): only the inputs and the chunk-start states are saved. A reverse scan over
chunks gives dS (dS_c = diag(e^Gl) dS_c+1 + (q * e^G)^T do); everything else is recomputed per chunk in parallel:
dq, dk, dv from the transposed products above, and dg = chunk-local reverse cumsum of (q dq - k dk) plus, for every
row of chunk c, the carry term sum_v (diag(e^Gl) S_c) * dS_c+1 + sum_j k_j * dk_j(inter).

Packed segments (numbers n_t, see _segments.py) are masks, never -inf gates: A keeps pairs of one segment, the
carried state reaches only rows of the segment open at the chunk start, and the new state collects only the
chunk's last segment (the old state is dropped if a segment starts inside the chunk).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from effattn.ops.common.chunking import pad_segment_ids, pad_to_multiple
from effattn.ops.common.recurrence import fp32_inputs
from effattn.ops.gla._segments import segment_numbers

_SUB = 16


def _exp_where(mask, x):
  """exp(x) where mask else 0, without evaluating exp on the masked (possibly positive) entries."""
  return jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0)), 0.0)


def _rev_cumsum_exclusive(x, axis):
  """y_j = sum_{u > j} x_u along axis (a same-sign sum: no cancellation)."""
  r = jnp.flip(jnp.cumsum(jnp.flip(x, axis), axis), axis)
  r = jnp.moveaxis(r, axis, 0)
  r = jnp.concatenate([r[1:], jnp.zeros_like(r[:1])], axis=0)
  return jnp.moveaxis(r, 0, axis)


def _gate_terms(g, c):
  """Exponents for chunked g [B,N,C,H,K] (fp32) and sub-chunk size c.

  Returns G (inclusive chunk cumsum), Gl (= G at the last row) [B,N,H,K], Rx (= Gl - G),
  Lq [B,N,S,c,H,K] (= G_i - G_r, G_r the first row of i's sub-chunk) and Ex [B,N,S,C,H,K]
  (= G_r(s) - G_j, meaningful only for keys j in sub-chunks before s).
  """
  b, n, cc, h, dk = g.shape
  s = cc // c
  G = jnp.cumsum(g, axis=2)
  Gl = G[:, :, -1]
  Rx = _rev_cumsum_exclusive(g, 2)
  gs = g.reshape(b, n, s, c, h, dk)
  first = gs[:, :, :, 0]                                            # [B,N,S,H,K]
  Lq = jnp.cumsum(gs.at[:, :, :, 0].set(0.0), axis=3)
  Rs = _rev_cumsum_exclusive(gs, 3)                                 # to the end of j's own sub-chunk
  tot = gs.sum(axis=3)                                              # [B,N,S,H,K]
  idx = jnp.arange(s)
  between = (idx[None, :, None] < idx[None, None, :]) & (idx[None, None, :] < idx[:, None, None])  # [s, t, u]: t<u<s
  mid = jnp.sum(jnp.where(between[:, :, :, None, None], tot[:, :, None, None], 0.0), axis=4)     # [B,N,S,S,H,K]
  Ex = Rs[:, :, None] + mid[:, :, :, :, None] + first[:, :, :, None, None]                       # [B,N,S,S,c,H,K]
  return G, Gl, Rx, Lq, Ex.reshape(b, n, s, cc, h, dk)


def _masks(nums, c):
  """Segment masks from chunked segment numbers [B,N,C] (c: sub-chunk size)."""
  b, n, cc = nums.shape
  prev = jnp.concatenate([nums[:, :1, :1], nums[:, :-1, -1:]], axis=1)  # number open at each chunk start
  m_in = nums == prev                                                 # rows that see the carried state
  keep = m_in[:, :, -1]                                               # no segment starts inside the chunk
  m_out = nums == nums[:, :, -1:]                                     # rows that feed the next state
  same = nums[..., :, None] == nums[..., None, :]                     # [B,N,C,C] (for the off-diagonal blocks)
  subs = nums.reshape(b, n, cc // c, c)
  same_d = (subs[..., :, None] == subs[..., None, :]) & jnp.tril(jnp.ones((c, c), bool))  # [B,N,S,c,c]
  return m_in, keep, m_out, same, same_d


def _sub_blocks(q, k, Lq, Ex, c):
  """Factors of the off-diagonal intra-chunk blocks: Qf [B,N,S,c,H,K], Kf and Ef [B,N,S,C,H,K]."""
  b, n, cc, h, dk = q.shape
  s = cc // c
  before = jnp.repeat(jnp.arange(s)[None, :] < jnp.arange(s)[:, None], c, axis=1)  # [S, C]: key before sub-chunk
  Ef = _exp_where(before[None, None, :, :, None, None], Ex)
  Kf = k[:, :, None] * Ef
  Qf = q.reshape(b, n, s, c, h, dk) * jnp.exp(Lq)
  return Qf, Kf, Ef


def _diag(qs, ks, Lq, same_d, da_d=None):
  """Diagonal sub-blocks from the pairwise factor e^(Lq_i - Lq_j) [B,N,S,c,c,H,K] (i >= j; c = 16).

  qs, ks, Lq [B,N,S,c,H,K]; same_d [B,N,S,c,c]. a_d[i, j] = sum_k q_ik k_jk e^(Lq_ik - Lq_jk) (i >= j, same
  segment) [B,N,S,c,c,H]. With da_d (= dA on the diagonal blocks, [B,N,S,c,c,H], already masked) also returns
  dq_d [B,N,S,c,H,K] and dk_d [B,N,S,c,H,K]. The pairwise factor is c times the size of q; callers run this
  per group of chunks (_by_groups), which bounds it. (A scan over the c key positions keeps only a [c, K]
  slice live, but its 16 dependent steps made small-T training, e.g. MQAR at T=64, 5x slower.)
  """
  c = qs.shape[3]
  tril = jnp.tril(jnp.ones((c, c), bool))[:, :, None, None]
  e = _exp_where(tril, Lq[:, :, :, :, None] - Lq[:, :, :, None, :])  # [B,N,S,c,c,H,K]
  qe = qs[:, :, :, :, None] * e
  a_d = jnp.einsum('BNSIJHK,BNSJHK->BNSIJH', qe, ks) * same_d[..., None]
  if da_d is None:
    return a_d
  de = da_d[..., None] * e
  dq_d = jnp.einsum('BNSIJHK,BNSJHK->BNSIHK', de, ks)
  dk_d = jnp.einsum('BNSIJHK,BNSIHK->BNSJHK', de, qs)
  return a_d, dq_d, dk_d


def _intra(q, k, Lq, Ex, same, same_d, c, da_d=None):
  """Intra-chunk matrix as off-diagonal part a_off [B,N,H,C,C] and diagonal sub-blocks a_d [B,N,S,c,c,H]
  (plus dq_d, dk_d given da_d, see _diag)."""
  b, n, cc, h, dk = q.shape
  s = cc // c
  Qf, Kf, Ef = _sub_blocks(q, k, Lq, Ex, c)
  a_off = jnp.einsum('BNSIHK,BNSJHK->BNHSIJ', Qf, Kf).reshape(b, n, h, cc, cc) * same[:, :, None]
  qs, ks = q.reshape(b, n, s, c, h, dk), k.reshape(b, n, s, c, h, dk)
  d = _diag(qs, ks, Lq, same_d, da_d)
  return a_off, d, (Qf, Kf, Ef)


def _chunked(x, cc):
  return x.reshape(x.shape[0], x.shape[1] // cc, cc, *x.shape[2:])


_GROUP_ROWS = 256  # rows per group of chunks whose intra-chunk work runs together (see _by_groups)


def _by_groups(fn, xs, cc):
  """fn over groups of chunks: xs are [B,N,...] arrays, fn maps such arrays (N = group) to a tuple of them.

  The intra-chunk work of all N chunks at once streams every [B,N,...] intermediate through memory; a lax.map over
  groups of about _GROUP_ROWS rows keeps one group's intermediates in cache, so the time stays ~linear in T.
  """
  n = xs[0].shape[1]
  gs = math.gcd(n, max(1, _GROUP_ROWS // cc))
  if gs == n:
    return fn(*xs)
  split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], n // gs, gs, *x.shape[2:]), 1, 0)
  merge = lambda y: jnp.moveaxis(y, 0, 1).reshape(y.shape[1], n, *y.shape[3:])
  out = jax.lax.map(lambda a: fn(*a), tuple(split(x) for x in xs))
  return tuple(merge(y) for y in out)


def _forward(q, k, v, g, h0, nums, cc):
  b, tp, h, dk = q.shape
  c = math.gcd(cc, _SUB)
  q, k, v, g = (_chunked(x, cc) for x in (q, k, v, g))
  m_in, keep, m_out, same, same_d = _masks(_chunked(nums, cc), c)
  Gl, Rx = jnp.cumsum(g, axis=2)[:, :, -1], _rev_cumsum_exclusive(g, 2)
  kd = k * jnp.exp(Rx) * m_out[..., None, None]
  decay = jnp.exp(Gl) * keep[..., None, None]                       # [B,N,H,K]
  u = jnp.einsum('BNJHK,BNJHV->BNHKV', kd, v)

  def step(s, x):
    d, u_c = x
    return d[..., None] * s + u_c, s

  h_t, starts = jax.lax.scan(step, h0, (jnp.moveaxis(decay, 1, 0), jnp.moveaxis(u, 1, 0)))
  starts = jnp.moveaxis(starts, 0, 1)                               # [B,N,H,K,V]: state at each chunk start

  def outputs(q, k, v, g, m_in, same, same_d, starts):
    G, _, _, Lq, Ex = _gate_terms(g, c)
    qg = q * jnp.exp(G) * m_in[..., None, None]
    a_off, a_d, _ = _intra(q, k, Lq, Ex, same, same_d, c)
    vs = v.reshape(b, -1, cc // c, c, h, v.shape[-1])
    o = (jnp.einsum('BNIHK,BNHKV->BNIHV', qg, starts) + jnp.einsum('BNHIJ,BNJHV->BNIHV', a_off, v)
         + jnp.einsum('BNSIJH,BNSJHV->BNSIHV', a_d, vs).reshape(v.shape))
    return (o,)

  (o,) = _by_groups(outputs, (q, k, v, g, m_in, same, same_d, starts), cc)
  return o.reshape(b, tp, h, -1), h_t, starts


def _backward(q, k, v, g, h0, nums, starts, do, dh_t, cc):
  b, tp, h, dk = q.shape
  c = math.gcd(cc, _SUB)
  s = cc // c
  q, k, v, g, do = (_chunked(x, cc) for x in (q, k, v, g, do))
  m_in, keep, m_out, same, same_d = _masks(_chunked(nums, cc), c)
  G = jnp.cumsum(g, axis=2)
  Gl = G[:, :, -1]
  decay = jnp.exp(Gl) * keep[..., None, None]
  qg = q * jnp.exp(G) * m_in[..., None, None]
  w = jnp.einsum('BNIHK,BNIHV->BNHKV', qg, do)

  def step(ds, x):
    d, w_c = x
    return d[..., None] * ds + w_c, ds

  dh0, ds_next = jax.lax.scan(step, dh_t, (jnp.moveaxis(decay, 1, 0), jnp.moveaxis(w, 1, 0)), reverse=True)
  ds_next = jnp.moveaxis(ds_next, 0, 1)                             # [B,N,H,K,V]: d(state at each chunk end)

  def grads(q, k, v, g, do, m_in, keep, m_out, same, same_d, starts, ds_next):
    n = q.shape[1]
    G, Gl, Rx, Lq, Ex = _gate_terms(g, c)
    eg, erx = jnp.exp(G), jnp.exp(Rx)
    kd = k * erx * m_out[..., None, None]
    decay = jnp.exp(Gl) * keep[..., None, None]
    vs, dos = v.reshape(b, n, s, c, h, -1), do.reshape(b, n, s, c, h, -1)
    da_d = jnp.einsum('BNSIHV,BNSJHV->BNSIJH', dos, vs) * same_d[..., None]
    a_off, (a_d, dq_d, dk_d), (Qf, Kf, Ef) = _intra(q, k, Lq, Ex, same, same_d, c, da_d)
    dv = (jnp.einsum('BNJHK,BNHKV->BNJHV', kd, ds_next) + jnp.einsum('BNHIJ,BNIHV->BNJHV', a_off, do)
          + jnp.einsum('BNSIJH,BNSIHV->BNSJHV', a_d, dos).reshape(v.shape))

    dq_inter = jnp.einsum('BNIHV,BNHKV->BNIHK', do, starts) * eg * m_in[..., None, None]
    dk_inter = jnp.einsum('BNJHV,BNHKV->BNJHK', v, ds_next) * erx * m_out[..., None, None]

    da_blk = (jnp.einsum('BNIHV,BNJHV->BNHIJ', do, v) * same[:, :, None]).reshape(b, n, h, s, c, cc)
    dq_off = jnp.einsum('BNHSIJ,BNSJHK->BNSIHK', da_blk, Kf) * jnp.exp(Lq)
    dk_off = jnp.sum(jnp.einsum('BNHSIJ,BNSIHK->BNSJHK', da_blk, Qf) * Ef, axis=2)

    dq = dq_inter + (dq_off + dq_d).reshape(q.shape)
    dk = dk_inter + dk_off + dk_d.reshape(k.shape)
    carry = (jnp.sum(decay[..., None] * starts * ds_next, axis=-1)
             + jnp.sum(k * dk_inter, axis=2))                       # d Gl, [B,N,H,K]
    dg = jnp.flip(jnp.cumsum(jnp.flip(q * dq - k * dk, 2), 2), 2) + carry[:, :, None]
    return dq, dk, dv, dg

  dq, dk, dv, dg = _by_groups(grads, (q, k, v, g, do, m_in, keep, m_out, same, same_d, starts, ds_next), cc)
  unchunk = lambda x: x.reshape(b, tp, *x.shape[3:])
  return unchunk(dq), unchunk(dk), unchunk(dv), unchunk(dg), dh0


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _gla_chunk_core(q, k, v, g, h0, nums, cc):
  o, h_t, _ = _forward(q, k, v, g, h0, nums, cc)
  return o, h_t


def _core_fwd(q, k, v, g, h0, nums, cc):
  o, h_t, starts = _forward(q, k, v, g, h0, nums, cc)
  return (o, h_t), (q, k, v, g, h0, nums, starts)


def _core_bwd(cc, res, cts):
  q, k, v, g, h0, nums, starts = res
  do, dh_t = cts
  dq, dk, dv, dg, dh0 = _backward(q, k, v, g, h0, nums, starts, do, dh_t, cc)
  return dq, dk, dv, dg, dh0, None


_gla_chunk_core.defvjp(_core_fwd, _core_bwd)


def gla_chunk(q, k, v, g, *, scale: float, initial_state=None, segment_ids=None, chunk_size: int = 64):
  """Returns (o [B,T,H,V] in q's dtype, final state [B,H,K,V] fp32); all arithmetic in fp32.

  T is padded up to a multiple of chunk_size with k = v = 0, g = 0 (the state passes the padding unchanged).
  """
  b, t = q.shape[:2]
  dtype = q.dtype
  q, k, v, h0 = fp32_inputs(q, k, v, scale=scale, initial_state=initial_state)
  g = g.astype(jnp.float32)
  nums = pad_segment_ids(segment_numbers(segment_ids, b, t), chunk_size)
  q, k, v, g = (pad_to_multiple(x, chunk_size) for x in (q, k, v, g))
  o, h_t = _gla_chunk_core(q, k, v, g, h0, nums, chunk_size)
  return o[:, :t].astype(dtype), h_t
