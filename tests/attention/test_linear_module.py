"""Linear attention module (Katharopoulos et al. 2020) and its feature maps."""

import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np
import pytest
from flax import nnx

from effattn import config as config_lib
from effattn.attention import feature_maps


def test_output_shape():
    checks.check_output_shape('linear')


@pytest.mark.parametrize(
    'attn',
    [
        dict(),
        dict(normalize=False),
        dict(feature_map='relu'),
        dict(feature_map='identity', normalize=False),
    ],
    ids=['elu-normalized', 'elu-unnormalized', 'relu', 'identity'],
)
def test_decode_equals_forward(attn):
    checks.check_decode_equals_forward('linear', **attn)


def test_packed_segments():
    checks.check_packed_segments('linear')


def test_chunk_equals_naive():
    checks.check_chunk_equals_naive('linear')


def test_decode_state_holds_normalizer_column():
    m = checks.build('linear', normalize=True)
    assert m.init_cache(2, 8)['state'].shape == (2, 2, 16, 17)
    m = checks.build('linear', normalize=False)
    assert m.init_cache(2, 8)['state'].shape == (2, 2, 16, 16)


@pytest.mark.parametrize(
    'name, expected',
    [
        ('elu', [np.exp(-1.0), 1.0, 3.0, 1.5]),  # elu(x) + 1
        ('relu', [0.0, 0.0, 2.0, 0.5]),
        ('identity', [-1.0, 0.0, 2.0, 0.5]),
    ],
)
def test_feature_maps_match_formulas(name, expected):
    cfg = checks.model_config('linear').model
    fm = feature_maps.build(name, 4, cfg, rngs=nnx.Rngs(params=0))
    x = jnp.array([-1.0, 0.0, 2.0, 0.5])
    np.testing.assert_allclose(np.asarray(fm(x)), expected, rtol=1e-6)
    assert fm.out_dim == 4


def test_unknown_feature_map_names_the_key():
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.feature_map.*elu'):
        checks.model_config('linear', feature_map='nope')


def test_unsupported_impl_names_the_key():
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.impl'):
        checks.model_config('linear', impl='cudnn')
