"""Agent attention module (Han et al. 2024), causal adaptation: shapes, decoding, segments, impls."""

import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np
import pytest
from helpers import TOL, assert_close

from effattn import config as config_lib
from effattn.ops.agent_attention import agent_attention


def test_output_shape():
    checks.check_output_shape('agent', num_agents=4)


@pytest.mark.parametrize(
    'attn', [{'num_agents': 4}, {'num_agents': 3, 'conv_size': 0}], ids=['conv4', 'no-conv']
)
def test_decode_equals_forward(attn):
    checks.check_decode_equals_forward('agent', **attn)


def test_packed_segments():
    checks.check_packed_segments('agent', num_agents=4, conv_size=3)


def test_chunk_equals_naive():
    checks.check_chunk_equals_naive('agent', num_agents=4)


def test_parameters_cache_and_conv_term():
    """Agents [H, n, d], biases [H, n], cache = op state [B, H, n, d+2] + conv state; the output is
    W_o(agent attention + causal depthwise conv of v)."""
    m = checks.build('agent', num_agents=5, conv_size=3)
    assert m.agents.shape == (2, 5, 16) and m.b1.shape == m.b2.shape == (2, 5)
    cache = m.init_cache(2, 8)
    assert cache['state'].shape == (2, 2, 5, 18) and cache['state'].dtype == jnp.float32
    assert cache['conv'].shape == (2, 2, 32)
    x = checks.inputs()
    b, t, _ = x.shape
    q, k, v = m._qkv(x)
    o, _ = agent_attention(q, k, v, m.agents[...], m.b1[...], m.b2[...], impl='naive')
    wc = np.asarray(m.conv.weight[...])
    vv = np.pad(np.asarray(v.reshape(b, t, -1)), ((0, 0), (2, 0), (0, 0)))
    dwc = sum(vv[:, i : i + t] * wc[i] for i in range(3))
    ref = m.wo(o.reshape(b, t, -1) + dwc)
    assert_close('agent module', checks.forward(m, x), ref, TOL['float32'])


def test_bad_config_names_the_key():
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.num_agents'):
        checks.model_config('agent', num_agents=0)
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.num_kv_heads'):
        checks.model_config('agent', num_kv_heads=1)
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.impl'):
        checks.model_config('agent', impl='kernel')
