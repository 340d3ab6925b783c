"""LASP-2 (Sun et al. 2025, arXiv 2502.07563, Algs. 1-2) for the linear-family ops (ALGORITHMS.md 9).

Every linear-family op is a recurrence on a state S [B, H, K, V], and a piece of the sequence acts on
the state entering it as an affine map S -> A_r S + M_r. Device r:
  1. summarises its piece from zero: M_r (its state with no incoming state) and A_r (what it does
     to an incoming state): 1 (linear_attn), e^{sum g} per head (simple_gla) or per key channel
     (gla), a K x K matrix (delta rules: the product of (I - beta k^T k) e^{g}); 0 once a packed
     segment starts inside the piece;
  2. all-gathers (A_j, M_j) of every piece: O(B H K (K + V)) per device whatever T is;
  3. folds S <- A_j S + M_j over the pieces j < r (zeroing S where a segment starts at a piece
     boundary), starting from the op's initial_state;
  4. runs the op's own implementation on its piece with initial_state = that S.
The backward pass is autodiff of the above: the all-gather transposes to a reduce-scatter of the
same size, and the op's custom VJP gives the gradient of its initial state.

M_r of the decay family is one einsum, sum_t e^{sum_{s>t} g_s} k_t^T v_t over the piece's last
segment (suffix sums of g <= 0, so no overflow). A_r of the delta rules comes from the op itself:
run on v extended by K zero columns from the initial state [0 | I], its final state is [M_r | A_r]
(the recurrence acts on the state's columns independently), i.e. ALGORITHMS.md's transition
product (I - ...) without new kernel code. That costs one extra run of the local op.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from effattn.ops.sequence_parallel._common import (
    AXIS,
    PER_DEVICE,
    TOKENS,
    axis_size,
    shard_over_sequence,
)

f32 = jnp.float32


def _segments(seg: jax.Array) -> tuple[jax.Array, jax.Array]:
    """([B] a segment starts inside the piece, [B, L] token is in the piece's last segment)."""
    change = (seg[:, 1:] != seg[:, :-1]).astype(jnp.int32)
    runs = jnp.concatenate([jnp.zeros_like(change[:, :1]), jnp.cumsum(change, axis=1)], axis=1)
    return runs[:, -1] > 0, runs == runs[:, -1:]


def _decay_piece(k, v, g, seg):
    """(M [B,H,K,V], A [B,H] or [B,H,K]) of a piece of the decay family (no decay when g is None).

    g: [B,L,H] (scalar per head) or [B,L,H,K] (per key channel), log decays <= 0.
    """
    b, _, h, _ = k.shape
    k, v = k.astype(f32), v.astype(f32)
    if g is None:
        a = jnp.ones((b, h), f32)
    else:
        g = g.astype(f32)
        suffix = jnp.flip(jnp.cumsum(jnp.flip(g, 1), 1), 1)  # sum_{s >= t} g_s
        later = jnp.concatenate([suffix[:, 1:], jnp.zeros_like(suffix[:, :1])], axis=1)
        decay = jnp.exp(later)  # e^{sum_{s > t} g_s} <= 1
        k = k * (decay if g.ndim == 4 else decay[..., None])
        a = jnp.exp(suffix[:, 0])
    if seg is not None:
        reset, last_run = _segments(seg)
        k = jnp.where(last_run[:, :, None, None], k, 0.0)
        a = jnp.where(reset.reshape((b,) + (1,) * (a.ndim - 1)), 0.0, a)
    return jnp.einsum('BTHK,BTHV->BHKV', k, v), a


def _apply_decay(a, s):
    """A S for A [B,H] (scalar per head) or [B,H,K] (diagonal)."""
    return a.reshape(a.shape + (1,) * (s.ndim - a.ndim)) * s


def _affine_piece(run_v, v, dk):
    """(M [B,H,K,V], A [B,H,K,K]) of a delta-rule piece, from one run of the op.

    run_v(v, initial_state) -> (o, final_state) is the local op with its other inputs bound.
    """
    b, _, h, dv = v.shape
    eye = jnp.broadcast_to(jnp.eye(dk, dtype=f32), (b, h, dk, dk))
    init = jnp.concatenate([jnp.zeros((b, h, dk, dv), f32), eye], axis=-1)
    _, ht = run_v(jnp.concatenate([v, jnp.zeros(v.shape[:3] + (dk,), v.dtype)], axis=-1), init)
    return ht[..., :dv], ht[..., dv:]


def _apply_matrix(a, s):
    return jnp.einsum('BHKL,BHLV->BHKV', a, s)


def _entering_state(m, a, apply, seg, initial_state):
    """The state entering this device's piece: S <- A_j S + M_j folded over the pieces j before it."""
    ms, as_ = jax.lax.all_gather(m, AXIS), jax.lax.all_gather(a, AXIS)
    if seg is not None:  # [W, B, 2]: each piece's first and last segment id
        ends = jax.lax.all_gather(jnp.stack([seg[:, 0], seg[:, -1]], axis=-1), AXIS)
    s = jnp.zeros_like(m) if initial_state is None else initial_state.astype(f32)
    entering = []
    for j in range(axis_size()):
        if j and seg is not None:  # a segment starts at the boundary: nothing enters piece j
            same = ends[j, :, 0] == ends[j - 1, :, 1]
            s = jnp.where(same[:, None, None, None], s, 0.0)
        entering.append(s)
        s = apply(as_[j], s) + ms[j]
    return jnp.stack(entering)[jax.lax.axis_index(AXIS)]


def _lasp2(registry, impl, inputs: dict, kwargs: dict, summarise: Callable, apply: Callable):
    """Runs registry's op on `inputs` (its positional [B,T,...] arguments, by name) with LASP-2.

    summarise(run, *local_inputs, seg) -> (M, A); run(*local_inputs, initial_state) is the local op.
    Returns (o, final_state) as the op's implementations do.
    """
    names = list(inputs)
    initial_state = kwargs.pop('initial_state')
    segment_ids = kwargs.pop('segment_ids')

    def local(tokens, whole):
        seg = tokens.get('segment_ids')
        args = [tokens.get(n) for n in names]

        def run(*a, initial_state):
            return registry.run(impl, *a, initial_state=initial_state, segment_ids=seg, **kwargs)

        m, a = summarise(run, *args, seg)
        s0 = _entering_state(m, a, apply, seg, whole.get('initial_state'))
        o, ht = run(*args, initial_state=s0)
        return o, ht[None]

    o, ht = shard_over_sequence(
        local,
        dict(inputs, segment_ids=segment_ids),
        {'initial_state': initial_state},
        (TOKENS, PER_DEVICE),
    )
    return o, ht[-1]  # the state after the last piece (every device computed the same chain)


def _decay_summary(run, q, k, v, g, seg):
    del run, q
    return _decay_piece(k, v, g, seg)


def linear_attn(registry, impl, q, k, v, **kwargs):
    normalize = kwargs['normalize']

    def summarise(run, q, k, v, seg):
        if normalize:  # the state carries z = sum k as a last column (ones-column convention)
            v = jnp.concatenate([v, jnp.ones_like(v[..., :1])], axis=-1)
        return _decay_piece(k, v, None, seg)

    return _lasp2(registry, impl, {'q': q, 'k': k, 'v': v}, kwargs, summarise, _apply_decay)


def simple_gla(registry, impl, q, k, v, g, **kwargs):
    inputs = {'q': q, 'k': k, 'v': v, 'g': g}
    return _lasp2(registry, impl, inputs, kwargs, _decay_summary, _apply_decay)


gla = simple_gla  # same summary; g [B,T,H,K] gives a per-channel transition


def delta_rule(registry, impl, q, k, v, beta, **kwargs):
    def summarise(run, q, k, v, beta, seg):
        return _affine_piece(lambda x, s0: run(q, k, x, beta, initial_state=s0), v, q.shape[-1])

    inputs = {'q': q, 'k': k, 'v': v, 'beta': beta}
    return _lasp2(registry, impl, inputs, kwargs, summarise, _apply_matrix)


def gated_delta_rule(registry, impl, q, k, v, g, beta, **kwargs):
    def summarise(run, q, k, v, g, beta, seg):
        return _affine_piece(lambda x, s0: run(q, k, x, g, beta, initial_state=s0), v, q.shape[-1])

    inputs = {'q': q, 'k': k, 'v': v, 'g': g, 'beta': beta}
    return _lasp2(registry, impl, inputs, kwargs, summarise, _apply_matrix)
