"""GLA module (Yang et al. 2024): low-rank log-sigmoid gate, gated RMSNorm output."""

import jax
import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np
import pytest

from effattn import config as config_lib


def test_output_shape():
    checks.check_output_shape('gla')


@pytest.mark.parametrize('attn', [dict(), dict(expand_k=0.5)], ids=['expand_k=1', 'expand_k=0.5'])
def test_decode_equals_forward(attn):
    checks.check_decode_equals_forward('gla', **attn)


def test_packed_segments():
    checks.check_packed_segments('gla')


def test_chunk_equals_naive():
    checks.check_chunk_equals_naive('gla')


def test_widths_and_gate():
    """expand_k = 0.5 halves the key width; g = logsigmoid(low-rank logits) / 16 lies in (-inf, 0)."""
    m = checks.build('gla', expand_k=0.5, gate_low_rank_dim=8)
    assert (m.head_k, m.head_v) == (8, 16)
    assert m.w_gate_down.kernel.shape == (32, 8) and m.w_gate_up.kernel.shape == (8, 16)
    assert m.init_cache(2, 8)['state'].shape == (2, 2, 8, 16)
    x = checks.inputs()
    _, _, _, g = m._inputs(x)
    logits = (x @ m.w_gate_down.kernel[...]) @ m.w_gate_up.kernel[...] + m.w_gate_up.bias[...]
    np.testing.assert_allclose(
        np.asarray(g), np.asarray(jax.nn.log_sigmoid(logits).reshape(g.shape) / 16.0), rtol=1e-6
    )
    assert g.dtype == jnp.float32 and bool(jnp.all(g < 0))


def test_bad_expand_k_names_the_key():
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.expand_k'):
        checks.model_config('gla', expand_k=0.3)  # 0.3 * 16 is not an integer
