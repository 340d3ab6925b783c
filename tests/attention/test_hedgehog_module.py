"""Hedgehog attention module (Zhang et al. 2024) with LoLCATs' sliding-window softmax mix."""

import jax
import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np
import pytest
from flax import nnx
from helpers import TOL, assert_close

from effattn import config as config_lib
from effattn.attention import registry

VARIANTS = [
    {},
    {'window': 3, 'num_kv_heads': 1},
    {'window': 5, 'feature_dim': 8, 'qk_norm': True},
]
IDS = ['linear-only', 'window3-gqa', 'window5-F8-qknorm']


def lolcats_reference(m, x, segment_ids=None):
    """LoLCATs' hybrid_attention_quadratic, dense T x T in float64, on the module's own q, k, v and
    feature maps: window mask t-w < j <= t (softmax terms shifted by the window max, times
    sigmoid(window_factor)), linear mask j <= t-w, one normaliser; then W_o."""
    b, t, _ = x.shape
    q, k, v = m._project(x, checks.positions(t))
    rep = m.num_heads // m.num_kv_heads
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    fq, fk = (np.asarray(f, np.float64) for f in (m.q_map(q), m.k_map(k)))
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    w = m.window
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    causal = j <= i
    if segment_ids is not None:
        seg = np.asarray(segment_ids)
        causal = causal[None] & (seg[:, :, None] == seg[:, None, :])  # contiguous segments
    else:
        causal = np.broadcast_to(causal, (b, t, t))
    lin_mask = causal & (j <= i - w)[None] if w else causal
    a_ln = np.where(lin_mask[:, None], np.einsum('bihf,bjhf->bhij', fq, fk), 0.0)
    a = a_ln
    if w:
        win_mask = causal & ~(j <= i - w)[None]
        s = np.einsum('bihd,bjhd->bhij', q, k) * m.head_dim**-0.5
        s = np.where(win_mask[:, None], s, -np.inf)
        gamma = 1 / (1 + np.exp(-np.asarray(m.window_factor[...], np.float64)))
        a_sm = gamma[None, :, None, None] * np.exp(s - s.max(-1, keepdims=True))
        a = a_sm + a_ln
    y = np.einsum('bhij,bjhd->bihd', a, v) / (a.sum(-1).transpose(0, 2, 1)[..., None] + m.eps)
    return m.wo(jnp.asarray(y, jnp.float32).reshape(b, t, -1))


@pytest.mark.parametrize('attn', VARIANTS, ids=IDS)
def test_matches_dense_lolcats_reference(attn):
    m = checks.build('hedgehog', **attn)
    if m.window:  # move gamma off its init so a wrong gamma placement shows
        m.window_factor[...] = jnp.array([0.3, -1.2])
    x = checks.inputs()
    assert_close('hedgehog vs dense', checks.forward(m, x), lolcats_reference(m, x), TOL['float32'])
    seg = jnp.array([[1] * 4 + [2] * 7, [1] * 6 + [2] * 5], jnp.int32)
    assert_close(
        'hedgehog vs dense (segments)',
        checks.forward(m, x, seg),
        lolcats_reference(m, x, seg),
        TOL['float32'],
    )


def test_output_shape():
    checks.check_output_shape('hedgehog')
    checks.check_output_shape('hedgehog', window=4)


@pytest.mark.parametrize('attn', VARIANTS, ids=IDS)
def test_decode_equals_forward(attn):
    checks.check_decode_equals_forward('hedgehog', **attn)


@pytest.mark.parametrize('attn', [{}, {'window': 3}], ids=['linear-only', 'window3'])
def test_packed_segments(attn):
    # rope=False: the check runs each segment alone from position 0, and phi(RoPE(q)) . phi(RoPE(k))
    # depends on absolute positions (only the softmax terms are shift-invariant)
    checks.check_packed_segments('hedgehog', rope=False, **attn)


def test_chunk_equals_naive():
    checks.check_chunk_equals_naive('hedgehog', window=4)


def test_gradients_finite_and_reach_feature_maps_and_gamma():
    m = checks.build('hedgehog', window=4)
    x = checks.inputs()
    graphdef, params = nnx.split(m)

    @jax.jit
    def grads(params):
        return jax.grad(lambda p: jnp.sum(checks.forward(nnx.merge(graphdef, p), x) ** 2))(params)

    g = grads(params)
    for name in ('q_map', 'k_map'):
        w = g[name]['weight'][...]
        assert bool(jnp.all(jnp.isfinite(w))) and float(jnp.max(jnp.abs(w))) > 0
    assert float(jnp.max(jnp.abs(g['window_factor'][...]))) > 0


def test_softmax_weights_copy_over_unchanged():
    """Every softmax parameter exists in hedgehog under the same path and shape (GQA too); the rest
    are the feature-map parameters (FEATURE_PARAMS). With window >= T and the weights copied, the
    layer equals the softmax layer (gamma cancels in the one normaliser)."""
    kw = {'num_kv_heads': 1, 'window': 16}
    soft = checks.build('softmax', seed=1, **kw)
    hh = checks.build('hedgehog', **kw)
    flat = lambda mod: {
        '.'.join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(mod, nnx.Param))
    }
    s_params, h_params = flat(soft), flat(hh)
    assert all(h_params.get(p) == shape for p, shape in s_params.items())
    extra = {p.split('.')[0] for p in set(h_params) - set(s_params)}
    assert extra == set(registry.get('hedgehog').FEATURE_PARAMS)
    nnx.update(hh, nnx.state(soft, nnx.Param))
    x = checks.inputs()
    assert_close(
        'hedgehog(window>=T) vs softmax', checks.forward(hh, x), checks.forward(soft, x), 1e-5
    )


def test_feature_maps_start_as_identity_and_gamma_at_0_1():
    m = checks.build('hedgehog', window=4)
    eye = np.broadcast_to(np.eye(16), (2, 16, 16))
    np.testing.assert_array_equal(np.asarray(m.q_map.weight[...]), eye)
    np.testing.assert_array_equal(np.asarray(m.k_map.weight[...]), eye)
    np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(m.window_factor[...])), 0.1, rtol=1e-6)
    assert checks.build('hedgehog').window_factor is None


def test_cache_layout():
    m = checks.build('hedgehog', window=4, num_kv_heads=1, feature_dim=8)
    cache = m.init_cache(2, 100)
    assert cache['state'].shape == (2, 2, 16, 17)  # [B, H, 2F, d+1]
    assert cache['kv']['k'].shape == (2, 4, 1, 16)  # ring of `window` slots, kv heads
    assert 'kv' not in checks.build('hedgehog').init_cache(2, 100)


@pytest.mark.parametrize(
    'attn, key',
    [
        ({'window': 4, 'sinks': 2}, 'sinks'),
        ({'impl': 'cudnn'}, 'impl'),
        ({'feature_dim': -2}, 'feature_dim'),
    ],
)
def test_bad_settings_name_the_key(attn, key):
    with pytest.raises(config_lib.ConfigError, match=rf'config\.model\.attention\.{key}'):
        checks.model_config('hedgehog', **attn)
