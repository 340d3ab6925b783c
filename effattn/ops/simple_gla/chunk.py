"""Chunkwise-parallel simple_gla with a hand-derived custom VJP (ALGORITHMS.md sections 0 and 4).

Per chunk c (rows i, j in [0, C), G the chunk-local cumsum of g, S_c the state entering the chunk):
  O_c = (Q_c ⊙ e^G) S_c + (Q_c K_c^T ⊙ Γ) V_c,   S_{c+1} = e^{G_C} S_c + (K_c ⊙ e^{G_C - G})^T V_c.
Backward: dS_c = e^{G_C} dS_{c+1} + (Q_c ⊙ e^G)^T dO_c (reverse scan, dS_N = d final_state, dS_0 = d initial_state);
dQ, dK, dV from the two products above; dg gathers, for each g_l, the terms whose decay contains it
(_gate_grad: ALGORITHMS.md's q·dq - k·dk identity, rearranged so the gate-free diagonal never cancels).
Residuals: the inputs and the chunk-boundary states [B, T/C, H, K, V]; everything else is recomputed.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from effattn.ops.common.chunking import from_chunks, pad_to_multiple, to_chunks
from effattn.ops.simple_gla._segments import segment_resets


def chunk_simple_gla(q, k, v, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64):
  """Returns (o fp32 [B,T,H,V], final_state fp32 [B,H,K,V]). g None means no decay (linear attention)."""
  resets = segment_resets(segment_ids, q.shape[0], q.shape[1])
  return _chunk(q, k, v, g, initial_state, resets, float(scale), int(chunk_size))


class _Decays(NamedTuple):
  q: jax.Array      # [B,N,C,H]   e^{G_i} on rows of the chunk's first segment (they see S_c), else 0
  k: jax.Array      # [B,N,C,H]   e^{G_C - G_j} on rows of the chunk's last segment (they feed S_{c+1}), else 0
  state: jax.Array  # [B,N,H]     e^{G_C} if no segment starts inside the chunk, else 0
  intra: jax.Array  # [B,N,H,C,C] Γ_ij = e^{G_i - G_j} for i >= j in the same segment, else 0


def _decays(g: jax.Array, resets: jax.Array) -> _Decays:
  """g [B,N,C,H] fp32 log gates, resets [B,N,C] int (see segment_resets)."""
  c = g.shape[2]
  gh = jnp.swapaxes(g, 2, 3)  # [B,N,H,C]
  idx = jnp.arange(c)
  # segsum[i, j] = sum_{j<l<=i} g_l summed term by term: exact near the diagonal, where G_i - G_j
  # would lose |G| * 2^-24 to cancellation (|G| reaches hundreds for fast gates).
  segsum = jnp.cumsum(jnp.where(idx[:, None] > idx[None, :], gh[..., :, None], 0.0), axis=-2)
  cum = jnp.cumsum(g, axis=2)  # G, [B,N,C,H]
  seg = jnp.cumsum(resets, axis=2)  # segments started so far within the chunk
  first = (seg == 0)[..., None]
  last = (seg == seg[:, :, -1:])[..., None]
  same = (idx[:, None] >= idx[None, :]) & (seg[..., :, None] == seg[..., None, :])
  return _Decays(
      q=jnp.where(first, jnp.exp(cum), 0.0),
      k=jnp.where(last, jnp.exp(jnp.swapaxes(segsum[..., -1, :], 2, 3)), 0.0),
      state=jnp.where((seg[:, :, -1] == 0)[..., None], jnp.exp(cum[:, :, -1]), 0.0),
      intra=jnp.where(same[:, :, None], jnp.exp(segsum), 0.0))


def _prepare(q, k, v, g, resets, scale, chunk):
  """Pads T to a multiple of the chunk (k = v = 0, g = 0, no reset) and splits into chunks, fp32.

  Returns q, k, v [B,N,C,H,*], g [B,N,C,H] and resets [B,N,C]; _decays(g, resets) gives the decays.
  """
  prep = lambda x: to_chunks(pad_to_multiple(x.astype(jnp.float32), chunk), chunk)
  g = jnp.zeros(q.shape[:3], jnp.float32) if g is None else g
  return prep(q) * scale, prep(k), prep(v), prep(g), to_chunks(pad_to_multiple(resets, chunk), chunk)


_GROUP_ROWS = 256  # rows per group of chunks whose intra-chunk work runs together (see _by_groups)


def _by_groups(fn, xs, chunk):
  """fn over groups of chunks: xs are [B,N,...] arrays, fn maps such arrays (N = group) to a tuple of them.

  The intra-chunk work of all N chunks at once streams every [B,N,...] intermediate (e.g. the [B,N,H,C,C]
  scores) through memory; a lax.map over groups of about _GROUP_ROWS rows keeps one group's intermediates in
  cache, so the time stays ~linear in T. Per chunk the arithmetic is unchanged.
  """
  n = xs[0].shape[1]
  gs = math.gcd(n, max(1, _GROUP_ROWS // chunk))
  if gs == n:
    return fn(*xs)
  split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], n // gs, gs, *x.shape[2:]), 1, 0)
  merge = lambda y: jnp.moveaxis(y, 0, 1).reshape(y.shape[1], n, *y.shape[3:])
  out = jax.lax.map(lambda a: fn(*a), tuple(split(x) for x in xs))
  return tuple(merge(y) for y in out)


def _states(h0, decay, local):
  """Chunk-entry states S_c [B,N,H,K,V] and the final state, from S_{c+1} = decay_c S_c + local_c."""
  def step(s, x):
    a, u = x
    return a[..., None, None] * s + u, s
  ht, states = jax.lax.scan(step, h0, (jnp.swapaxes(decay, 0, 1), jnp.swapaxes(local, 0, 1)))
  return jnp.swapaxes(states, 0, 1), ht


def _state_grads(dht, decay, local):
  """dS_{c+1} for every chunk [B,N,H,K,V] and dS_0, from dS_c = decay_c dS_{c+1} + local_c."""
  def step(ds, x):
    a, w = x
    return a[..., None, None] * ds + w, ds
  dh0, ds_next = jax.lax.scan(step, dht, (jnp.swapaxes(decay, 0, 1), jnp.swapaxes(local, 0, 1)),
                              reverse=True)
  return jnp.swapaxes(ds_next, 0, 1), dh0


def _forward(q, k, v, g, h0, resets, scale, chunk):
  b, t, h, kd = q.shape
  vd = v.shape[-1]
  qc, kc, vc, gc, rc = _prepare(q, k, v, g, resets, scale, chunk)
  h0 = jnp.zeros((b, h, kd, vd), jnp.float32) if h0 is None else h0.astype(jnp.float32)
  d = _decays(gc, rc)  # only d.k and d.state are used here (the rest is dead code to XLA)
  local = jnp.einsum('BNJHK,BNJHV->BNHKV', kc * d.k[..., None], vc)
  states, ht = _states(h0, d.state, local)

  def outputs(qc, kc, vc, gc, rc, states):
    d = _decays(gc, rc)
    scores = jnp.einsum('BNIHK,BNJHK->BNHIJ', qc, kc) * d.intra
    return (jnp.einsum('BNIHK,BNHKV->BNIHV', qc * d.q[..., None], states)
            + jnp.einsum('BNHIJ,BNJHV->BNIHV', scores, vc),)

  (o,) = _by_groups(outputs, (qc, kc, vc, gc, rc, states), chunk)
  return from_chunks(o)[:, :t], ht, states


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunk(q, k, v, g, h0, resets, scale, chunk):
  o, ht, _ = _forward(q, k, v, g, h0, resets, scale, chunk)
  return o, ht


def _chunk_fwd(q, k, v, g, h0, resets, scale, chunk):
  o, ht, states = _forward(q, k, v, g, h0, resets, scale, chunk)
  return (o, ht), (q, k, v, g, h0, resets, states)


def _exclusive_cumsum(x, axis):
  """cumsum shifted by one (0 first); not cumsum(x) - x, which would cancel large diagonal terms."""
  x = jnp.moveaxis(x, axis, -1)
  out = jnp.cumsum(x[..., :-1], axis=-1)
  out = jnp.concatenate([jnp.zeros_like(x[..., :1]), out], axis=-1)
  return jnp.moveaxis(out, -1, axis)


def _gate_grad(qc, kc, dq_inter, dk_inter, p, states, ds_next, state_decay):
  """dg [B,N,C,H]: each g_l collects only the terms whose decay contains it.

  Equal to ALGORITHMS.md's chunk-local revcumsum(q·dq - k·dk) (+ last-row carry), but that form adds
  and then cancels the diagonal q_i·k_i terms, which carry no gate: measured ~1e-5 relative error in
  fp32 with fast gates. Here: e^{G_i} holds g_l for l <= i, e^{G_C - G_j} for l > j, e^{G_C} all l, and
  Γ_ij for j < l <= i, so dg_l = sum_{i>=l} q_i·dq_inter_i + sum_{j<l} k_j·dk_inter_j
  + e^{G_C}<S_c, dS_{c+1}> + sum_{i>=l, j<l} P_ij, with P = dL/dscores ⊙ scores [B,N,H,C,C].
  """
  c = qc.shape[2]
  q_part = jnp.sum(qc * dq_inter, -1)  # [B,N,C,H]
  q_part = jnp.flip(jnp.cumsum(jnp.flip(q_part, 2), axis=2), 2)
  k_part = _exclusive_cumsum(jnp.sum(kc * dk_inter, -1), axis=2)
  carry = state_decay * jnp.sum(states * ds_next, axis=(-2, -1))  # [B,N,H]
  idx = jnp.arange(c)
  before = _exclusive_cumsum(p, axis=-1)  # [i, l] = sum_{j<l} P_ij
  intra = jnp.sum(jnp.where(idx[:, None] >= idx[None, :], before, 0.0), axis=-2)  # [B,N,H,C]
  return q_part + k_part + carry[:, :, None] + jnp.swapaxes(intra, 2, 3)


def _chunk_bwd(scale, chunk, res, cts):
  q, k, v, g, h0, resets, states = res
  do, dht = cts
  t = q.shape[1]
  qc, kc, vc, gc, rc = _prepare(q, k, v, g, resets, scale, chunk)
  doc = to_chunks(pad_to_multiple(do.astype(jnp.float32), chunk), chunk)
  d = _decays(gc, rc)  # only d.q and d.state are used here
  ds_next, dh0 = _state_grads(dht.astype(jnp.float32), d.state,
                              jnp.einsum('BNIHK,BNIHV->BNHKV', qc * d.q[..., None], doc))

  def grads(qc, kc, vc, gc, rc, doc, states, ds_next):
    d = _decays(gc, rc)
    scores = jnp.einsum('BNIHK,BNJHK->BNHIJ', qc, kc) * d.intra
    dscores = jnp.einsum('BNIHV,BNJHV->BNHIJ', doc, vc)
    dqk = dscores * d.intra  # dL/d(Q K^T)
    dq_inter = jnp.einsum('BNIHV,BNHKV->BNIHK', doc, states) * d.q[..., None]
    dq = dq_inter + jnp.einsum('BNHIJ,BNJHK->BNIHK', dqk, kc)
    dk_inter = jnp.einsum('BNJHV,BNHKV->BNJHK', vc, ds_next) * d.k[..., None]
    dk = dk_inter + jnp.einsum('BNHIJ,BNIHK->BNJHK', dqk, qc)
    dv = (jnp.einsum('BNJHK,BNHKV->BNJHV', kc * d.k[..., None], ds_next)
          + jnp.einsum('BNHIJ,BNIHV->BNJHV', scores, doc))
    if g is None:
      return dq, dk, dv
    return dq, dk, dv, _gate_grad(qc, kc, dq_inter, dk_inter, dscores * scores, states, ds_next, d.state)

  dq, dk, dv, *dg = _by_groups(grads, (qc, kc, vc, gc, rc, doc, states, ds_next), chunk)
  dg = from_chunks(dg[0])[:, :t].astype(g.dtype) if g is not None else None

  unchunk = lambda x, like: from_chunks(x)[:, :t].astype(like.dtype)
  dh0 = None if h0 is None else dh0.astype(h0.dtype)
  return unchunk(dq * scale, q), unchunk(dk, k), unchunk(dv, v), dg, dh0, None


_chunk.defvjp(_chunk_fwd, _chunk_bwd)
