"""Pieces the softmax-family ops share: the attention mask and the static tile schedule.

The tile schedule lists, per query block, the key blocks that hold at least one visible key
(causal / window / sink band; segment ids are data and are only masked). Query blocks are laid out
in `lanes` that run side by side (vectorised) while a lax.scan walks the steps; a lane may serve two
query blocks one after the other (the longest with the shortest), which for causal attention halves
the number of tiles computed compared with one lane per query block.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def attention_mask(tq, tk, segq, segk, *, causal: bool, window: int | None, sinks: int | None):
    """allowed(t, j) of ALGORITHMS.md section 1, broadcasting positions tq, tk and segment ids.

    (j <= t if causal) and (|t - j| < W, or t - j < W when causal, or j < sinks)
    and seg_t == seg_j != 0.
    """
    ok = (segq == segk) & (segq != 0)
    if causal:
        ok = ok & (tk <= tq)
    if window is not None:
        d = tq - tk
        near = (d < window) if causal else (jnp.abs(d) < window)
        if sinks:
            near = near | (tk < sinks)
        ok = ok & near
    return ok


class TileSchedule(NamedTuple):
    """Step-by-lane tables ([R, L] int32 / bool): which query and key block each lane handles."""

    qidx: np.ndarray
    kidx: np.ndarray
    valid: np.ndarray


def tile_schedule(
    t: int, bq: int, bk: int, *, causal: bool, window: int | None, sinks: int | None
) -> TileSchedule:
    nq, nk = -(-t // bq), -(-t // bk)
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    t0, t1 = i * bq, np.minimum((i + 1) * bq, t) - 1
    s0, s1 = j * bk, np.minimum((j + 1) * bk, t) - 1
    ok = np.ones((nq, nk), bool)
    if causal:
        ok &= s0 <= t1
    if window is not None:
        lo, hi = t0 - s1, t1 - s0  # range of t - j over the tile
        near = (hi >= (0 if causal else 1 - window)) & (lo <= window - 1)
        if sinks:
            near |= s0 < sinks
        ok &= near
    counts = ok.sum(1)
    order = [int(x) for x in np.argsort(-counts, kind='stable')]
    singles = [[b] for b in order]
    pairs = [[order[a], order[nq - 1 - a]] for a in range(nq // 2)]
    if nq % 2:
        pairs.append([order[nq // 2]])

    def cost(lanes):
        return len(lanes) * max(sum(int(counts[b]) for b in lane) for lane in lanes)

    lanes = pairs if cost(pairs) < cost(singles) else singles
    steps = [[(b, int(c)) for b in lane for c in np.flatnonzero(ok[b])] for lane in lanes]
    r = max(len(s) for s in steps)
    qidx = np.zeros((r, len(lanes)), np.int32)
    kidx = np.zeros((r, len(lanes)), np.int32)
    valid = np.zeros((r, len(lanes)), bool)
    for lane, (blocks, s) in enumerate(zip(lanes, steps)):
        # idle steps: a fully masked tile of the lane's own block (a no-op)
        qidx[:, lane] = blocks[0]
        for step, (b, c) in enumerate(s):
            qidx[step, lane], kidx[step, lane], valid[step, lane] = b, c, True
    return TileSchedule(qidx, kidx, valid)


def block_size(t: int, block: int) -> int:
    """The block actually used: at most `block`, at most T rounded up to a multiple of 8."""
    return max(1, min(block, -(-t // 8) * 8))


def tile_mask(qi, ki, ok, segq, segk, bq: int, bk: int, *, causal, window, sinks):
    """Mask [B, L, 1, 1, Q, C] of one step: lanes' query blocks qi [L], key blocks ki [L], ok [L];
    segq [B, nq, Q] and segk [B, nk, C] are the blocked (zero-padded) segment ids."""
    tq = qi[:, None] * bq + jnp.arange(bq)
    tk = ki[:, None] * bk + jnp.arange(bk)
    m = attention_mask(
        tq[None, :, :, None],
        tk[None, :, None, :],
        segq[:, qi][..., None],
        segk[:, ki][..., None, :],
        causal=causal,
        window=window,
        sinks=sinks,
    )
    m = m & ok[None, :, None, None]
    return m[:, :, None, None]


def block_q(x: jax.Array, n: int, b: int, groups: int) -> jax.Array:
    """[B, T, H, D] -> [B, n, Hkv, G, b, D] (zero-padded to n * b rows), G = H / Hkv."""
    bsz, t, h, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, n * b - t), (0, 0), (0, 0)))
    return x.reshape(bsz, n, b, h // groups, groups, d).transpose(0, 1, 3, 4, 2, 5)


def unblock_q(x: jax.Array, t: int) -> jax.Array:
    """[B, n, Hkv, G, b, D] -> [B, T, H, D]."""
    bsz, n, hkv, g, b, d = x.shape
    return x.transpose(0, 1, 4, 2, 3, 5).reshape(bsz, n * b, hkv * g, d)[:, :t]


def block_kv(x: jax.Array, n: int, b: int) -> jax.Array:
    """[B, T, Hkv, D] -> [B, n, Hkv, b, D] (zero-padded)."""
    bsz, t, h, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, n * b - t), (0, 0), (0, 0)))
    return x.reshape(bsz, n, b, h, d).transpose(0, 1, 3, 2, 4)


def unblock_kv(x: jax.Array, t: int) -> jax.Array:
    """[B, n, Hkv, b, D] -> [B, T, Hkv, D]."""
    bsz, n, h, b, d = x.shape
    return x.transpose(0, 1, 3, 2, 4).reshape(bsz, n * b, h, d)[:, :t]


def block_segments(segment_ids: jax.Array | None, bsz: int, t: int, n: int, b: int) -> jax.Array:
    """[B, T] ids (None: one segment) -> [B, n, b], padded with 0 (padded keys stay invisible)."""
    seg = jnp.ones((bsz, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    return jnp.pad(seg, ((0, 0), (0, n * b - t))).reshape(bsz, n, b)
