"""Feature maps hedgehog, taylor, t2r and dpfp against hand-computed values and independent formulas."""

import math

import jax
import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np
import pytest
from flax import nnx

from effattn import config as config_lib
from effattn.attention import feature_maps

E = math.e


def build(name, head_dim, **attn):
    cfg = checks.model_config('linear', **attn).model  # 2 heads
    return feature_maps.build(name, head_dim, cfg, rngs=nnx.Rngs(params=0))


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_registered():
    assert {'hedgehog', 'taylor', 't2r', 'dpfp'} <= set(feature_maps.known_feature_maps())


# ----------------------------------------------------------------------------------------- hedgehog


def test_hedgehog_hand_computed():
    """Identity W: head 0 x = [1, 0] -> [e, 1]/(e+1), [1, e]/(e+1); head 1 x = [0, 2] -> [1, e^2]/(1+e^2),
    [e^2, 1]/(1+e^2). Then head 0 with W = [[2, 0], [1, 1]]: x W = [2, 0]."""
    fm = build('hedgehog', 2)
    assert fm.out_dim == 4 and fm.weight.shape == (2, 2, 2)
    x = jnp.array([[1.0, 0.0], [0.0, 2.0]])  # [H, d]
    a, b = E / (E + 1), 1 / (E + 1)
    c, d = 1 / (1 + E**2), E**2 / (1 + E**2)
    expected = [[a, b, b, a], [c, d, d, c]]
    np.testing.assert_allclose(np.asarray(fm(x)), expected, rtol=1e-6)
    fm.weight[...] = fm.weight[...].at[0].set(jnp.array([[2.0, 0.0], [1.0, 1.0]]))
    a2, b2 = E**2 / (E**2 + 1), 1 / (E**2 + 1)
    np.testing.assert_allclose(np.asarray(fm(x))[0], [a2, b2, b2, a2], rtol=1e-6)


def test_hedgehog_identity_init():
    """W starts as eye(d, F) per head, so phi(x) = [softmax(x), softmax(-x)] (F = d), and with
    F = 3 > d = 2 the extra feature sees 0."""
    fm = build('hedgehog', 8)
    np.testing.assert_array_equal(np.asarray(fm.weight[...]), np.broadcast_to(np.eye(8), (2, 8, 8)))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 5, 2, 8)))
    expected = np.concatenate([np_softmax(x), np_softmax(-x)], axis=-1)
    np.testing.assert_allclose(np.asarray(fm(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-7)

    fm3 = build('hedgehog', 2, feature_dim=3)
    assert fm3.out_dim == 6 and fm3.weight.shape == (2, 2, 3)
    x = jnp.array([[1.0, 2.0], [0.0, -1.0]])
    z = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 0.0]])
    expected = np.concatenate([np_softmax(z), np_softmax(-z)], axis=-1)
    np.testing.assert_allclose(np.asarray(fm3(x)), expected, rtol=1e-6)


def test_hedgehog_wrong_head_count_names_the_shape():
    fm = build('hedgehog', 4)
    with pytest.raises(ValueError, match=r'hedgehog feature map: expected x \[\.\.\., H=2, d=4\]'):
        fm(jnp.ones((3, 4)))


# ------------------------------------------------------------------------------------------- taylor


def test_taylor_hand_computed():
    """x = [1, 2], d = 2: [1, x / 2^(1/4), (x1x1, x1x2, x2x1, x2x2) / (sqrt(2) sqrt(2))]."""
    fm = build('taylor', 2)
    assert fm.out_dim == 7
    r = 2**0.25
    expected = [1.0, 1 / r, 2 / r, 0.5, 1.0, 1.0, 2.0]
    np.testing.assert_allclose(np.asarray(fm(jnp.array([1.0, 2.0]))), expected, rtol=1e-6)


def test_taylor_kernel_identity():
    """phi(q).phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2d), the 2nd-order Taylor series of
    exp(q.k / sqrt(d)) (Based), for d = 16 (width 273)."""
    d = 16
    fm = build('taylor', d)
    assert fm.out_dim == 273
    q, k = jax.random.normal(jax.random.PRNGKey(1), (2, 10, d))
    got = jnp.sum(fm(q) * fm(k), axis=-1)
    u = np.sum(np.asarray(q, np.float64) * np.asarray(k, np.float64), axis=-1)
    np.testing.assert_allclose(
        np.asarray(got), 1 + u / math.sqrt(d) + u**2 / (2 * d), rtol=1e-5, atol=1e-6
    )
    assert float(jnp.min(jnp.sum(fm(q) * fm(-q), -1))) >= 0.5 - 1e-6  # 1 + u + u^2/2 >= 1/2


# ---------------------------------------------------------------------------------------------- t2r


def test_t2r_hand_computed():
    """Head 0: x = [1, 1], W = [[1, -1], [2, 0]], b = [0.5, -3]: relu([3.5, -4]) = [3.5, 0];
    head 1: W = I, b = 0, x = [-1, 2] -> [0, 2]."""
    fm = build('t2r', 2)
    assert fm.out_dim == 2 and fm.weight.shape == (2, 2, 2) and fm.bias.shape == (2, 2)
    fm.weight[...] = jnp.array([[[1.0, -1.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    fm.bias[...] = jnp.array([[0.5, -3.0], [0.0, 0.0]])
    x = jnp.array([[1.0, 1.0], [-1.0, 2.0]])
    np.testing.assert_allclose(np.asarray(fm(x)), [[3.5, 0.0], [0.0, 2.0]], rtol=1e-6)


def test_t2r_width_and_init():
    fm = build('t2r', 16, feature_dim=8)
    assert fm.out_dim == 8 and fm.weight.shape == (2, 16, 8) and fm.bias.shape == (2, 8)
    bound = 1 / math.sqrt(16)  # PyTorch nn.Linear default
    assert float(jnp.max(jnp.abs(fm.weight[...]))) <= bound
    assert float(jnp.max(jnp.abs(fm.bias[...]))) <= bound
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 16))
    expected = np.maximum(
        np.einsum('thd,hdf->thf', np.asarray(x), np.asarray(fm.weight[...])) + fm.bias[...], 0
    )
    np.testing.assert_allclose(np.asarray(fm(x)), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- dpfp


def test_dpfp_hand_computed():
    """x = [1, 2, -3]: r = relu([x, -x]) = [1, 2, 0, 0, 0, 3]; phi_i = r_i r_{(i+nu) mod 6}:
    nu = 1 -> [2, 0, 0, 0, 0, 3]; nu = 2 adds [0, 0, 0, 0, 0, 6]."""
    fm = build('dpfp', 3)
    assert fm.out_dim == 6
    x = jnp.array([1.0, 2.0, -3.0])
    np.testing.assert_allclose(np.asarray(fm(x)), [2, 0, 0, 0, 0, 3])
    cfg = checks.model_config('linear').model
    fm2 = feature_maps.DPFPFeatureMap(3, cfg, rngs=nnx.Rngs(params=0), nu=2)
    assert fm2.out_dim == 12
    np.testing.assert_allclose(np.asarray(fm2(x)), [2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 6])


def test_dpfp_matches_paper_formula():
    fm = build('dpfp', 5)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (3, 5)))
    r = np.maximum(np.concatenate([x, -x], -1), 0)
    expected = np.stack([r[:, i] * r[:, (i + 1) % 10] for i in range(10)], -1)
    np.testing.assert_allclose(np.asarray(fm(jnp.asarray(x))), expected, rtol=1e-6)


# ------------------------------------------------------------------------- in the linear kind


@pytest.mark.parametrize(
    'attn',
    [
        {'feature_map': 'hedgehog', 'feature_dim': 8},
        {'feature_map': 'taylor', 'expand_k': 0.25},
        {'feature_map': 't2r'},
        {'feature_map': 'dpfp'},
    ],
    ids=['hedgehog-F8', 'taylor', 't2r', 'dpfp'],
)
def test_linear_kind_decode_equals_forward(attn):
    checks.check_decode_equals_forward('linear', **attn)


def test_linear_kind_learned_maps_have_separate_q_and_k_weights():
    m = checks.build('linear', feature_map='hedgehog', feature_dim=8)
    assert m.q_map.weight is not m.k_map.weight
    assert m.init_cache(2, 8)['state'].shape == (2, 2, 16, 17)  # 2F = 16 features, V + 1


def test_negative_feature_dim_names_the_key():
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.feature_dim'):
        checks.model_config('linear', feature_map='hedgehog', feature_dim=-1)
