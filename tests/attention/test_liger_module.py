"""liger_gla module: equals a float64 step-by-step reference of ALGORITHMS.md section 11 (gate from the
key projection, softmax feature maps, GLA recurrence, 0.5 / 0.5 mix with sliding-window softmax), with
GQA and packed segments, and has exactly the softmax kind's parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import TOL, assert_close

from effattn import config as config_lib
from effattn.attention.liger import LigerGLAAttention
from effattn.attention.rope import apply_rope
from effattn.attention.softmax import SoftmaxAttention

B, T, D = 2, 11, 32


def make(window=3, num_kv_heads=2, **attn):
    c = config_lib.default_config()
    c.model.d_model = D
    c.model.attention.kind = 'liger_gla'
    c.model.attention.num_heads = 4
    c.model.attention.num_kv_heads = num_kv_heads
    c.model.attention.window = window
    c.model.attention.chunk_size = 4
    c.model.attention.update(attn)
    cfg = config_lib.validate(c)
    return LigerGLAAttention(cfg.model, 0, train_len=T, rngs=nnx.Rngs(params=0)), cfg


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference(m, x, positions, seg, window):
    f64 = lambda a: np.asarray(a, np.float64)
    h, hkv, d = m.num_heads, m.num_kv_heads, m.head_dim
    q = (f64(x) @ f64(m.wq.kernel[...])).reshape(B, T, h, d)
    k = (f64(x) @ f64(m.wk.kernel[...])).reshape(B, T, hkv, d)
    v = (f64(x) @ f64(m.wv.kernel[...])).reshape(B, T, hkv, d)
    g = -np.log1p(np.exp(-k)) / 16.0  # logsigmoid(x W_k) / 16
    rep = h // hkv
    fq, fk = _softmax(q), np.repeat(_softmax(k), rep, 2)
    vr, gr = np.repeat(v, rep, 2), np.repeat(g, rep, 2)
    qr = f64(apply_rope(jnp.asarray(q, jnp.float32), positions, m.rope_theta))
    kr = np.repeat(f64(apply_rope(jnp.asarray(k, jnp.float32), positions, m.rope_theta)), rep, 2)
    out = np.zeros((B, T, h, d))
    for b in range(B):
        state = np.zeros((h, d, d))
        for t in range(T):
            if t > 0 and seg[b, t] != seg[b, t - 1]:
                state = np.zeros((h, d, d))
            state = np.exp(gr[b, t])[..., None] * state + fk[b, t][..., None] * vr[b, t][:, None]
            o = np.einsum('hk,hkv->hv', fq[b, t], state)
            if window:
                js = [j for j in range(max(0, t - window + 1), t + 1) if seg[b, j] == seg[b, t]]
                s = np.einsum('hd,jhd->hj', qr[b, t], kr[b, js]) * d**-0.5
                o = 0.5 * o + 0.5 * np.einsum('hj,jhv->hv', _softmax(s), vr[b, js])
            out[b, t] = o
    return out.reshape(B, T, h * d) @ f64(m.wo.kernel[...])


@pytest.mark.parametrize(
    'window,num_kv_heads,packed', [(3, 2, False), (0, 4, False), (4, 2, True), (3, 1, True)]
)
def test_matches_reference(window, num_kv_heads, packed):
    m, _ = make(window, num_kv_heads)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, T, D)) * 2.0
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    seg = np.ones((B, T), np.int32)
    if packed:
        seg[0, 5:], seg[1, 2:], seg[1, 9:] = 2, 2, 3
    got = m(x, positions=positions, segment_ids=jnp.asarray(seg) if packed else None)
    assert_close('liger_gla', got, reference(m, x, positions, seg, window), TOL['float32'])


def test_same_parameters_as_softmax():
    m, cfg = make(window=3, qkv_bias=True)
    s = SoftmaxAttention(cfg.model, 0, train_len=T, rngs=nnx.Rngs(params=0))
    shapes = lambda mod: jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(mod, nnx.Param)))
    assert shapes(m) == shapes(s)


def test_rejects_sinks_and_unknown_impl():
    with pytest.raises(config_lib.ConfigError, match='attention.sinks'):
        make(window=3, sinks=1)
    with pytest.raises(config_lib.ConfigError, match='attention.impl'):
        make(impl='cudnn')
