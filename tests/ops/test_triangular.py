"""The pure-jnp unit lower-triangular inverse equals LAPACK's solve, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import solve_triangular

from effattn.ops.common.triangular import unit_lower_inverse
from helpers import assert_close


@pytest.mark.parametrize('c', [1, 7, 16, 48, 64])
def test_inverse_matches_solve_triangular(c):
    a = jax.random.normal(jax.random.PRNGKey(c), (3, c, c)) * 0.3
    rhs = jax.random.normal(jax.random.PRNGKey(1), (3, c, 5))
    ours = lambda a, r: jnp.einsum('...IJ,...JD->...ID', unit_lower_inverse(a), r, precision='highest')  # noqa: E731
    ref = lambda a, r: solve_triangular(a, r, lower=True, unit_diagonal=True)  # noqa: E731
    assert_close('solve', ours(a, rhs), ref(a, rhs), 1e-5)
    g_ours = jax.grad(lambda a, r: jnp.sum(jnp.sin(ours(a, r))), argnums=(0, 1))(a, rhs)
    g_ref = jax.grad(lambda a, r: jnp.sum(jnp.sin(ref(a, r))), argnums=(0, 1))(a, rhs)
    # Only the strictly-lower part of A is read: its gradient elsewhere is 0 in both.
    mask = np.tril(np.ones((c, c)), -1)
    assert_close('dA', np.asarray(g_ours[0]) * mask, np.asarray(g_ref[0]) * mask, 1e-5)
    assert_close('drhs', g_ours[1], g_ref[1], 1e-5)
