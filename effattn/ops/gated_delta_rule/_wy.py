"""The WY/UT transform of the gated delta rule in pure jnp: the reference for the Pallas WY kernel's tests.

ALGORITHMS.md section 6 (Yang et al. 2024 App. B). Layout: inputs [B, Tp, H, D] with Tp = N C, viewed as
[B, H, N, C, D]. All fp32.

  wy_prep:  A = strictly-lower(diag(beta)(K K^T * Gamma)), [W | U] = (I + A)^-1 [diag(beta) K e^G | diag(beta) V]

G_i - G_j is summed directly over (j, i] (as in chunk.py) so that it keeps fp32 accuracy for fast gates.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.ops.common.triangular import unit_lower_inverse

_HI = jax.lax.Precision.HIGHEST


def _chunked(x, chunk):
    """[B, Tp, H, D] -> [B, H, N, C, D]; [B, Tp, H] -> [B, H, N, C] (the chunk states' batch order)."""
    b, tp = x.shape[:2]
    x = x.reshape(b, tp // chunk, chunk, *x.shape[2:])
    return jnp.moveaxis(x, 3, 1)


def _unchunked(x):
    """[B, H, N, C, D] -> [B, Tp, H, D]."""
    b, h, n, c, d = x.shape
    return jnp.moveaxis(x, 1, 3).reshape(b, n * c, h, d)


def _gates(g):
    """g [B, N, H, C] -> (G chunk-local cumsum [.., C], gdiff [.., C, C] = sum_{j<l<=i} g_l, causal mask)."""
    c = g.shape[-1]
    strict = jnp.tril(jnp.ones((c, c), bool), -1)
    causal = jnp.tril(jnp.ones((c, c), bool))
    gdiff = jnp.cumsum(jnp.where(strict, g[..., :, None], 0.0), axis=-2)
    return jnp.cumsum(g, -1), gdiff, causal


def _gamma(gdiff, causal):
    return jnp.where(causal, jnp.exp(jnp.where(causal, gdiff, 0.0)), 0.0)


def wy_prep(k, v, g, beta, chunk, precision=_HI):
    """W [B, Tp, H, K], U [B, Tp, H, V] (fp32) from k, v [B, Tp, H, D], g, beta [B, Tp, H]."""
    k, v, g, beta = (_chunked(x.astype(jnp.float32), chunk) for x in (k, v, g, beta))
    gcum, gdiff, causal = _gates(g)
    c = k.shape[-2]
    strict = jnp.tril(jnp.ones((c, c), bool), -1)
    kk = jnp.einsum('...IK,...JK->...IJ', k, k, precision=precision)
    a = jnp.where(strict, beta[..., :, None] * kk * _gamma(gdiff, causal), 0.0)
    kb = k * (beta * jnp.exp(gcum))[..., None]
    rhs = jnp.concatenate([kb, v * beta[..., None]], -1)
    wu = jnp.einsum('...IJ,...JD->...ID', unit_lower_inverse(a), rhs, precision=_HI)
    dk = k.shape[-1]
    return _unchunked(wu[..., :dk]), _unchunked(wu[..., dk:])
