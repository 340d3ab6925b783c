"""Gated DeltaNet module (Yang, Kautz, Hatamizadeh 2025): Mamba-2 style decay, silu output gate."""

import jax
import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np


def test_output_shape():
    checks.check_output_shape('gated_deltanet')


def test_decode_equals_forward():
    checks.check_decode_equals_forward('gated_deltanet')


def test_packed_segments():
    checks.check_packed_segments('gated_deltanet')


def test_chunk_equals_naive():
    checks.check_chunk_equals_naive('gated_deltanet')


def test_decay_init_and_formula():
    """A = exp(A_log) in (0, 16), softplus(dt_bias) in [1e-3, 0.1], g = -A softplus(x W_a + dt_bias)."""
    for seed in range(3):
        m = checks.build('gated_deltanet', seed=seed)
        a = np.exp(np.asarray(m.A_log[...]))
        dt = np.asarray(jax.nn.softplus(m.dt_bias[...]))
        assert np.all((a > 0) & (a < 16))
        assert np.all((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5)))
    x = checks.inputs()
    g = m._log_decay(x)
    ref = -a * jax.nn.softplus(x @ m.wa.kernel[...] + m.dt_bias[...])
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-5)
    assert g.shape == (2, 11, 2) and g.dtype == jnp.float32 and bool(jnp.all(g <= 0))
