"""Decoder LM: decoding token by token equals the full forward, and no kind sees the future.

Parametrised over every registered attention kind, so a new kind is covered by registering it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from effattn import config as config_lib
from effattn.attention import known_kinds
from effattn.models.generate import generate
from effattn.models.lm import DecoderLM
from helpers import TOL, assert_close

T = 13


def make_model(kind='softmax', seed=0, **attn):
    c = config_lib.default_config()
    c.model.vocab_size = 97
    c.data.vocab_size = 97
    c.model.d_model = 32
    c.model.num_layers = 2
    c.model.attention.kind = kind
    c.model.attention.num_heads = 2
    c.model.attention.chunk_size = 8
    for k, v in attn.items():
        if k in ('layers', 'tie_embeddings', 'mlp'):
            setattr(c.model, k, v)
        else:
            setattr(c.model.attention, k, v)
    cfg = config_lib.validate(c)
    return DecoderLM(cfg.model, train_len=cfg.data.seq_len, rngs=nnx.Rngs(params=seed))


def tokens(b=2, t=T, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 0, 97)


VARIANTS = [(kind, {}) for kind in known_kinds()] + [
    ('softmax', dict(num_kv_heads=1)),
    ('softmax', dict(window=4)),
    ('softmax', dict(window=4, sinks=2)),
    ('softmax', dict(tie_embeddings=False, mlp='none')),
    ('sigmoid', dict(qk_norm=True, window=5)),
    ('hedgehog', dict(window=4)),
    ('hedgehog', dict(window=3, num_kv_heads=1)),
    ('based', dict(layers='base_conv,based', conv_size=3)),
]


def _id(v):
    kind, kw = v
    return kind + ''.join(f'-{k}={x}' for k, x in kw.items())


# Jitted: an eager forward dispatches op by op (these two tests: 37 s -> 26 s on CPU).
_forward = nnx.jit(lambda model, x: model(x))


@pytest.mark.parametrize('variant', VARIANTS, ids=_id)
def test_decode_equals_full_forward(variant):
    kind, kw = variant
    model = make_model(kind, **kw)
    x = tokens()
    full = _forward(model, x)
    _, stepped = generate(model, x, num_new_tokens=1)
    assert_close(f'{kind} decode logits', stepped, full, TOL['float32'])


@pytest.mark.parametrize('kind', known_kinds())
def test_no_future_leak(kind):
    model = make_model(kind)
    x = tokens()
    t = 6
    y = x.at[:, t + 1 :].set((x[:, t + 1 :] + 1) % 97)
    a, b = _forward(model, x), _forward(model, y)
    np.testing.assert_array_equal(np.asarray(a[:, : t + 1]), np.asarray(b[:, : t + 1]))
    assert not np.allclose(np.asarray(a[:, t + 1 :]), np.asarray(b[:, t + 1 :]))


def test_generate_is_greedy_argmax_of_forward():
    model = make_model('softmax')
    prompt = tokens(t=5)
    out, _ = generate(model, prompt, num_new_tokens=4)
    np.testing.assert_array_equal(np.asarray(out[:, :5]), np.asarray(prompt))
    # The model is causal, so one forward of the output gives every step's logits: token t + 1 must be the
    # argmax after out[:, :t + 1] (one forward instead of four of growing lengths: 14 s -> 2 s on CPU).
    greedy = jnp.argmax(model(out[:, :-1])[:, 4:], -1)
    np.testing.assert_array_equal(np.asarray(out[:, 5:]), np.asarray(greedy))


def test_bfloat16_compute_keeps_fp32_params():
    c = config_lib.default_config()
    c.model.compute_dtype = 'bfloat16'
    c.model.d_model = 32
    c.model.attention.num_heads = 2
    cfg = config_lib.validate(c)
    model = DecoderLM(cfg.model, train_len=64, rngs=nnx.Rngs(params=0))
    params = nnx.state(model, nnx.Param)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits = nnx.jit(lambda m, x: m(x))(model, jax.random.randint(jax.random.PRNGKey(0), (2, 16), 0, 100))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize('kind', ['softmax', 'sigmoid'])
def test_streaming_generation_past_training_length_with_bounded_cache(kind):
    """StreamingLLM: sinks + sliding window; the cache stays at sinks + window entries while
    generation runs 4x past the training length, and equals the dense masked forward."""
    window, sinks = 8, 2
    kw = dict(window=window, sinks=sinks) if kind == 'softmax' else dict(window=window)
    model = make_model(kind, **kw)  # train_len = data.seq_len = 64
    train_len = 64
    caches = model.init_cache(1, max_len=4 * train_len)
    expected = (sinks if kind == 'softmax' else 0) + window
    assert all(c['k'].shape[1] == expected for c in caches)
    x = tokens(b=1, t=4 * train_len)
    full = model(x)
    _, stepped = generate(model, x, num_new_tokens=1)
    assert_close(f'{kind} streaming logits', stepped, full, TOL['float32'])
