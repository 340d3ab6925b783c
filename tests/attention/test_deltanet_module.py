"""DeltaNet module (Yang et al. 2024): short conv + silu, L2-normalised q, k, beta gate."""

import linear_family_checks as checks
import pytest

from effattn import config as config_lib


def test_output_shape():
    checks.check_output_shape('deltanet')


@pytest.mark.parametrize('attn', [dict(), dict(conv_size=0), dict(conv_size=2)], ids=str)
def test_decode_equals_forward(attn):
    checks.check_decode_equals_forward('deltanet', **attn)


def test_packed_segments():
    checks.check_packed_segments('deltanet')


def test_chunk_equals_naive():
    checks.check_chunk_equals_naive('deltanet')


def test_cache_holds_state_and_conv_inputs():
    m = checks.build('deltanet', conv_size=4)
    cache = m.init_cache(2, 8)
    assert cache['state'].shape == (2, 2, 16, 16)
    assert {n: c.shape for n, c in cache['conv'].items()} == {n: (2, 3, 32) for n in 'qkv'}
    assert m.state_size(8) == 2 * 16 * 16 + 3 * 3 * 32
    assert 'conv' not in checks.build('deltanet', conv_size=0).init_cache(2, 8)


def test_negative_conv_size_names_the_key():
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.conv_size'):
        checks.model_config('deltanet', conv_size=-1)
