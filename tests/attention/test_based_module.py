"""Based (Arora et al. 2024): Taylor linear attention kind `based` and gated short-conv kind
`base_conv`."""

import math

import jax
import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np
import pytest
from flax import nnx
from helpers import TOL, assert_close

from effattn import config as config_lib


def based_reference(m, x):
    """HazyResearch/based LinearAttention.parallel_forward ('quadratic'), float64: A = tril(phi(q)
    phi(k)^T), y = A v / (phi(q) . cumsum phi(k) + 1e-12), phi(q).phi(k) written as the Taylor series
    1 + u / sqrt(F) + u^2 / (2F), u = q.k; then W_o."""
    b, t, _ = x.shape
    h, f = m.num_heads, m.head_k
    q = np.asarray(m.wq(x), np.float64).reshape(b, t, h, f)
    k = np.asarray(m.wk(x), np.float64).reshape(b, t, h, f)
    v = np.asarray(m.wv(x), np.float64).reshape(b, t, h, -1)
    u = np.einsum('bihf,bjhf->bhij', q, k)
    a = np.tril(1 + u / math.sqrt(f) + u**2 / (2 * f))
    y = np.einsum('bhij,bjhd->bihd', a, v) / (a.sum(-1).transpose(0, 2, 1)[..., None] + 1e-12)
    return m.wo(jnp.asarray(y, jnp.float32).reshape(b, t, -1))


@pytest.mark.parametrize('attn', [{}, {'feature_dim': 4}], ids=['F16', 'F4'])
def test_matches_reference(attn):
    m = checks.build('based', **attn)
    x = checks.inputs()
    assert_close('based vs reference', checks.forward(m, x), based_reference(m, x), TOL['float32'])


def test_output_shape():
    checks.check_output_shape('based')


@pytest.mark.parametrize('attn', [{}, {'feature_dim': 4}], ids=['F16', 'F4'])
def test_decode_equals_forward(attn):
    checks.check_decode_equals_forward('based', **attn)


def test_packed_segments():
    checks.check_packed_segments('based')


def test_chunk_equals_naive():
    checks.check_chunk_equals_naive('based')


def test_widths_and_state():
    """q, k project to feature_dim (16) per head; the Taylor map widens them to 1 + 16 + 256 = 273;
    the state has v's width + the normaliser column."""
    m = checks.build('based')
    assert m.wq.kernel.shape == (32, 2 * 16) and m.wv.kernel.shape == (32, 32)
    assert m.init_cache(2, 8)['state'].shape == (2, 2, 273, 17)
    m = checks.build('based', feature_dim=4)
    assert m.init_cache(2, 8)['state'].shape == (2, 2, 21, 17)


def test_grouped_kv_heads_name_the_key():
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.num_kv_heads'):
        checks.model_config('based', num_kv_heads=1)


# ---------------------------------------------------------------------------------------- base_conv


def base_conv_reference(m, x):
    """HazyResearch/based BaseConv.forward: u1, u2 = split(in_proj(x)); out_proj(silu(conv(u1)) * u2),
    conv depthwise causal with left zero padding (weight [size, C], oldest tap first)."""
    u = np.asarray(m.in_proj(x), np.float64)
    u1, u2 = np.split(u, 2, axis=-1)
    w = np.asarray(m.conv.weight[...], np.float64)
    size, t = w.shape[0], x.shape[1]
    up = np.pad(u1, ((0, 0), (size - 1, 0), (0, 0)))
    c = sum(w[i] * up[:, i : i + t] for i in range(size))
    y = c / (1 + np.exp(-c)) * u2
    return m.out_proj(jnp.asarray(y, jnp.float32))


@pytest.mark.parametrize('conv_size', [3, 4])
def test_base_conv_matches_reference(conv_size):
    m = checks.build('base_conv', conv_size=conv_size)
    assert m.in_proj.kernel.shape == (32, 4 * 32) and m.out_proj.kernel.shape == (64, 32)
    assert m.in_proj.bias is not None and m.out_proj.bias is not None
    x = checks.inputs()
    assert_close('base_conv', checks.forward(m, x), base_conv_reference(m, x), TOL['float32'])


def test_base_conv_decode_packed_causal():
    checks.check_output_shape('base_conv', conv_size=3)
    checks.check_decode_equals_forward('base_conv', conv_size=3)
    checks.check_packed_segments('base_conv', conv_size=3)
    m = checks.build('base_conv', conv_size=3)
    assert m.init_cache(2, 8)['conv'].shape == (2, 2, 64)
    x = checks.inputs()
    y = x.at[:, 6:].add(1.0)
    a, b = checks.forward(m, x), checks.forward(m, y)
    np.testing.assert_array_equal(np.asarray(a[:, :6]), np.asarray(b[:, :6]))


def test_base_conv_needs_a_kernel():
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.conv_size'):
        checks.model_config('base_conv', conv_size=0)


@pytest.mark.parametrize('kind', ['based', 'base_conv'])
def test_gradients_finite(kind):
    m = checks.build(kind)
    x = checks.inputs()
    graphdef, params = nnx.split(m)
    g = jax.jit(jax.grad(lambda p: jnp.sum(checks.forward(nnx.merge(graphdef, p), x) ** 2)))(params)
    leaves = jax.tree.leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in leaves)
    assert all(float(jnp.max(jnp.abs(v))) > 0 for v in leaves)
