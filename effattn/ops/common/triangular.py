"""Inverse of a unit lower-triangular matrix (I + A), A strictly lower, in pure jnp.

Used by the delta rules' WY/UT transform (ALGORITHMS.md section 6). Why not
jax.scipy.linalg.solve_triangular: on CPU, jaxlib 0.10.2's LAPACK triangular-solve custom call splits
its batch over XLA's intra-op thread pool and waits on it; two such solves running at once on a
2-thread pool deadlock (observed in training runs and benchmarks). This version is matmuls and
elementwise ops only: diagonal blocks of 16 by forward substitution, then block forward substitution
T_ij = -T_ii sum_k A_ik T_kj, as flash-linear-attention's kernels do (fla/ops/utils/solve_tril.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _small_inverse(a: jax.Array) -> jax.Array:
    """(I + A)^-1 for a [..., n, n] strictly lower A, row by row: T_i = e_i - A_i T."""
    n = a.shape[-1]
    t = jnp.broadcast_to(jnp.eye(n, dtype=a.dtype), a.shape)
    for i in range(1, n):
        row = jnp.eye(n, dtype=a.dtype)[i] - jnp.einsum('...J,...JK->...K', a[..., i, :], t)
        t = t.at[..., i, :].set(row)
    return t


def unit_lower_inverse(a: jax.Array, block: int = 16) -> jax.Array:
    """(I + tril(A, -1))^-1 for a [..., C, C]; only A's strictly-lower part is read."""
    c = a.shape[-1]
    return _inverse(jnp.where(jnp.tril(jnp.ones((c, c), bool), -1), a, 0), block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _inverse(a: jax.Array, block: int) -> jax.Array:
    c = a.shape[-1]
    if c % block or c <= block:
        return _small_inverse(a)
    nb = c // block
    blk = lambda x, i, j: x[..., i * block : (i + 1) * block, j * block : (j + 1) * block]  # noqa: E731
    # All diagonal blocks in one batched forward substitution (the same arithmetic as one at a time).
    diag = _small_inverse(jnp.stack([blk(a, i, i) for i in range(nb)], -3))
    diag = [diag[..., i, :, :] for i in range(nb)]
    rows = []
    t = {}
    for i in range(nb):
        for j in range(i):
            acc = sum(jnp.einsum('...IK,...KJ->...IJ', blk(a, i, k), t[k, j]) for k in range(j, i))
            t[i, j] = -jnp.einsum('...IK,...KJ->...IJ', diag[i], acc)
        t[i, i] = diag[i]
    zeros = jnp.zeros_like(diag[0])
    for i in range(nb):
        rows.append(jnp.concatenate([t[i, j] if j <= i else zeros for j in range(nb)], axis=-1))
    return jnp.concatenate(rows, axis=-2)


def _inverse_fwd(a, block):
    t = _inverse(a, block)
    return t, t


def _inverse_bwd(block, t, dt):
    """T = (I + A)^-1 gives dT = -T dA T, so dA = -T^T dT T^T (strictly-lower part: A's only entries read).
    Two matmuls, instead of differentiating the unrolled substitution (whose backward was most of the delta
    rules' chunk fwd+bwd compile time)."""
    hi = jax.lax.Precision.HIGHEST
    da = -jnp.einsum('...KI,...KL,...JL->...IJ', t, dt, t, precision=hi)
    c = t.shape[-1]
    return (jnp.where(jnp.tril(jnp.ones((c, c), bool), -1), da, 0),)


_inverse.defvjp(_inverse_fwd, _inverse_bwd)
