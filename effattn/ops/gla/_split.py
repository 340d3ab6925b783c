"""Sequence split of the GLA kernel's forward from its own pieces (KernelConfig.split_states = 'sweeps'): segments
in parallel at long T and small B * H (ops/common/sequence_split.py has the math; Yang et al. 2024, arXiv
2312.06635, eq. 1; ALGORITHMS.md section 5).

split_over_segments runs the whole kernel on the segments as batch rows and computes each segment's local state
S_loc(s) = sum_t diag(e^{G_last - G_t}) k_t v_t^T in XLA: a cumulative sum of the per-channel gates over the
segment, their exps and a [K, V] einsum, all over [B, T, H, K] fp32 arrays. But the kernel's own first pieces
already hold what that needs, chunk by chunk: the gates kernel's chunk-local G and the intra kernel's
k ⊙ e^{G_l - G} (both chunk-parallel, so they run once on the whole sequence, as in the unsplit kernel). Here:
  1. gates and intra kernels on the whole sequence (as pallas._forward);
  2. S_loc(s) of the first P - 1 segments: the forward sweep without its output (_sweeps.segment_states);
  3. the segments' start states by sequence_split.boundary_states (decay of a segment: 2^{sum of its chunks' G_l});
  4. the output sweep on the segments as batch rows from their start states; the last one's final state is the
     op's (as in split_over_segments).
Only the primal forward takes this path; under jax.grad the split keeps split_over_segments (pallas.kernel_gla
wraps the two with sequence_split.primal_with_vjp_of), whose gradients come from autodiff and the kernel's VJP.
"""
from __future__ import annotations

import jax.numpy as jnp

from effattn.ops.common.sequence_split import boundary_states
from effattn.ops.gla import _intra, _sweeps


def split_forward(q, k, v, g, h0, ctx, cfg, interpret, segments: int):
  """(o [B,Tp,H,Vp] in q's dtype, final state fp32 [B,H,Kp,Vp]) of the padded kernel inputs (pallas._core's: q, k,
  g [B,Tp,H,Kp] with g the raw log decays, v [B,Tp,H,Vp], h0 fp32 or None), Tp a multiple of segments * chunk."""
  b, tp, h, kp = q.shape
  vp = v.shape[-1]
  p, c = segments, ctx.chunk
  gc, a, qg, kg = _intra.chunk_pieces(q, k, g, ctx, cfg, interpret)
  cut = lambda x: x.reshape(b * p, tp // p, *x.shape[2:])
  s_loc = _sweeps.segment_states(kg, v, gc, p, ctx, cfg, interpret)                    # [B, P - 1, H, Kp, Vp]
  log2_decay = jnp.sum(gc[:, c - 1::c].reshape(b, p, -1, h, kp)[:, :p - 1], axis=2)  # [B, P - 1, H, Kp], base 2
  s_start = boundary_states(jnp.exp2(log2_decay)[..., None], s_loc, h0).reshape(b * p, h, kp, vp)
  o, ht = _sweeps.forward(cut(qg), cut(kg), cut(v), cut(gc), cut(a), s_start, ctx, cfg, interpret)
  return o.reshape(b, tp, h, vp), ht.reshape(b, p, h, kp, vp)[:, -1]
