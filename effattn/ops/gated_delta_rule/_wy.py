"""Per-chunk (parallel over chunks) algebra of the gated delta rule, pure jnp, for the Pallas kernel's wrapper.

ALGORITHMS.md section 6 (Yang et al. 2024 App. B, WY/UT transform). Layout: inputs [B, Tp, H, D] with
Tp = N C, viewed as [B, H, N, C, D]; chunk states [B, H, N, K, V]. All fp32.

  wy_prep:        A = strictly-lower(diag(beta)(K K^T * Gamma)), [W | U] = (I + A)^-1 [diag(beta) K e^G | diag(beta) V]
  chunk_outputs:  V' = U - W S_c, O_c = (s Q e^G) S_c + (s Q K^T * Gamma) V', S_{c+1} = e^{G_C} S_c + (K e^{G_C - G})^T V'

The kernel runs the state recurrence (the only sequential part); the backward differentiates these two
functions with jax.vjp given the stored chunk-start states and the kernel's chunk-end state cotangents.
G_i - G_j is summed directly over (j, i] (as in chunk.py) so that dg keeps fp32 accuracy for fast gates.
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


def chunk_outputs(q, k, w, u, g, s_starts, scale, chunk, precision=_HI):
    """o [B, Tp, H, V] and chunk-end states [B, H, N, K, V] given every chunk's start state."""
    q, k, w, u, g = (_chunked(x.astype(jnp.float32), chunk) for x in (q, k, w, u, g))
    s = s_starts
    gcum, gdiff, causal = _gates(g)
    ein = lambda eq, a, b: jnp.einsum(eq, a, b, precision=precision)
    vp = u - ein('...CK,...KV->...CV', w, s)
    aqk = ein('...IK,...JK->...IJ', q, k) * _gamma(gdiff, causal) * scale
    qg = q * (scale * jnp.exp(gcum))[..., None]
    o = ein('...CK,...KV->...CV', qg, s) + ein('...IJ,...JV->...IV', aqk, vp)
    kd = k * jnp.exp(gdiff[..., -1, :])[..., None]  # G_C - G_j
    s_end = jnp.exp(gcum[..., -1])[..., None, None] * s + ein('...CK,...CV->...KV', kd, vp)
    return _unchunked(o), s_end


def wy_prep_bwd(k, v, g, beta, t, dw, du, chunk, precision=_HI):
    """Cotangents (dk, dv, dg, dbeta) of wy_prep given T = (I + A)^-1 [B, Tp, H, C] and dW, dU (closed form).

    dkb = T^T dW, dvb = T^T dU, dA = -strictly-lower(T^T (dW kb^T + dU vb^T) T^T); M = dA ⊙ A is the
    cotangent of G_i - G_j, so dg_l = Σ_{i>=l>j} M_ij (pairs straddling l, summed without cancellation)
    + Σ_{r>=l} (dkb ⊙ kb)_r.
    """
    k, v, g, beta, t, dw, du = (_chunked(x.astype(jnp.float32), chunk) for x in (k, v, g, beta, t, dw, du))
    gcum, gdiff, _ = _gates(g)
    c = k.shape[-2]
    strict = jnp.tril(jnp.ones((c, c), bool), -1)
    ein = lambda eq, a, b: jnp.einsum(eq, a, b, precision=precision)
    eg = jnp.exp(gcum)
    kb = k * (beta * eg)[..., None]
    vb = v * beta[..., None]
    dkb = ein('...JI,...JD->...ID', t, dw)
    dvb = ein('...JI,...JD->...ID', t, du)
    dt = ein('...ID,...JD->...IJ', dw, kb) + ein('...ID,...JD->...IJ', du, vb)
    da = -ein('...KI,...KJ->...IJ', t, ein('...KL,...JL->...KJ', dt, t))  # -(T^T dT T^T)
    gamma = jnp.where(strict, jnp.exp(jnp.where(strict, gdiff, 0.0)), 0.0)
    kk = ein('...IK,...JK->...IJ', k, k)
    dag = jnp.where(strict, da, 0.0) * gamma
    dab = dag * beta[..., :, None]
    dk = dkb * (beta * eg)[..., None] + ein('...IJ,...JK->...IK', dab, k) + ein('...IJ,...IK->...JK', dab, k)
    dv = dvb * beta[..., None]
    dbeta = jnp.sum(dkb * k * eg[..., None], -1) + jnp.sum(dvb * v, -1) + jnp.sum(dag * kk, -1)
    m = dab * kk  # dA ⊙ A
    before = (jnp.arange(c)[:, None] < jnp.arange(c)[None, :]).astype(jnp.float32)  # [j, l] = j < l
    x = ein('...IJ,JL->...IL', m, before)
    dg = jnp.sum(jnp.where(jnp.arange(c)[:, None] >= jnp.arange(c)[None, :], x, 0.0), -2)
    s = jnp.sum(dkb * kb, -1)
    dg = dg + jnp.flip(jnp.cumsum(jnp.flip(s, -1), -1), -1)
    unvec = lambda x: jnp.moveaxis(x, 1, 3).reshape(x.shape[0], -1, x.shape[1])
    return _unchunked(dk), _unchunked(dv), unvec(dg), unvec(dbeta)
