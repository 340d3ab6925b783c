"""Lightning attention module (TransNormerLLM token mixer): layer-dependent decay, SRMSNorm, gate."""

import jax
import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np
from helpers import TOL, assert_close

from effattn.ops.simple_gla import alibi_slopes


def test_output_shape():
    checks.check_output_shape('lightning')


def test_decode_equals_forward():
    checks.check_decode_equals_forward('lightning')


def test_packed_segments():
    checks.check_packed_segments('lightning')


def test_chunk_equals_naive():
    checks.check_chunk_equals_naive('lightning')


def test_decay_depends_on_layer():
    """g_gamma = -s_h (1 - l / (L - 1) + 1e-5): layer 0 decays fastest, the last layer barely."""
    layers = [checks.build('lightning', layer_idx=i) for i in range(2)]
    slopes = alibi_slopes(2)
    np.testing.assert_allclose(np.asarray(layers[0].g_gamma()), -slopes * (1 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layers[1].g_gamma()), -slopes * 1e-5, rtol=1e-6)
    x = checks.inputs()
    # same parameters (same seed), different layer index: different outputs
    assert not np.allclose(checks.forward(layers[0], x), checks.forward(layers[1], x))


def test_matches_dense_reference():
    """W_o(SRMSNorm((QK^T * lambda^(i-j)) V) * sigmoid(x W_u)), q, k, v = silu(x W), scale 1."""
    m = checks.build('lightning', layer_idx=0)
    x = checks.inputs()
    b, t, _ = x.shape
    h = m.num_heads

    def heads(w, act):
        return act(x @ w.kernel[...]).reshape(b, t, h, -1)

    q, k, v = (heads(w, jax.nn.silu) for w in (m.wq, m.wk, m.wv))
    lam = jnp.exp(m.g_gamma())  # [H]
    i = jnp.arange(t)
    decay = jnp.where(
        i[:, None] >= i[None, :], lam[:, None, None] ** (i[:, None] - i[None, :]), 0.0
    )  # [H, T, T]
    scores = jnp.einsum('BTHK,BSHK->BHTS', q, k) * decay
    o = jnp.einsum('BHTS,BSHV->BTHV', scores, v).reshape(b, t, -1)
    o = o / jnp.sqrt(jnp.mean(o * o, axis=-1, keepdims=True) + m.eps)
    ref = (o * jax.nn.sigmoid(x @ m.wu.kernel[...])) @ m.wo.kernel[...]
    assert_close('lightning vs dense reference', checks.forward(m, x), ref, TOL['float32'])
