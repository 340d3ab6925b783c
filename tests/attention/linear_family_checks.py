"""Checks every linear-family attention module passes; each tests/attention/test_<kind>.py calls them.

Tiny shapes: d_model 32, 2 heads, T = 11 with chunk_size 4 (T not a multiple of the chunk).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from helpers import TOL, assert_close

from effattn import config as config_lib
from effattn.attention import registry

B, T, D = 2, 11, 32


def model_config(kind: str, **attn) -> config_lib.Config:
    c = config_lib.default_config()
    c.model.d_model = D
    c.model.num_layers = 2
    c.model.attention.kind = kind
    c.model.attention.num_heads = 2
    c.model.attention.chunk_size = 4
    for k, v in attn.items():
        setattr(c.model.attention, k, v)
    return config_lib.validate(c)


def build(kind: str, layer_idx: int = 0, seed: int = 0, **attn):
    cfg = model_config(kind, **attn).model
    return registry.get(kind)(cfg, layer_idx, train_len=64, rngs=nnx.Rngs(params=seed))


def inputs(t: int = T, seed: int = 3) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), (B, t, D), jnp.float32)


def positions(t: int = T) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (B, t))


# Jitted (nnx.jit): eager calls dispatch op by op, which dominated these checks' time on CPU.
@nnx.jit
def _forward(module, x, positions, segment_ids):
    return module(x, positions=positions, segment_ids=segment_ids)


@nnx.jit
def _decode(module, x, cache, t):
    return module.decode(x, cache, t)


def forward(module, x, segment_ids=None):
    return _forward(module, x, positions(x.shape[1]), segment_ids)


def decode_all(module, x):
    cache = module.init_cache(x.shape[0], x.shape[1])
    ys = []
    for t in range(x.shape[1]):
        y, cache = _decode(module, x[:, t : t + 1], cache, jnp.int32(t))
        ys.append(y)
    return jnp.concatenate(ys, axis=1), cache


def check_output_shape(kind: str, **attn) -> None:
    m = build(kind, **attn)
    y = forward(m, inputs())
    assert y.shape == (B, T, D) and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    assert float(jnp.std(y)) > 0


def check_decode_equals_forward(kind: str, **attn) -> None:
    """Token-by-token decode equals the full forward, with segment_ids absent and all-one."""
    m = build(kind, **attn)
    x = inputs()
    stepped, _ = decode_all(m, x)
    assert_close(f'{kind} decode vs forward', stepped, forward(m, x), TOL['float32'])
    ones = jnp.ones((B, T), jnp.int32)
    assert_close(
        f'{kind} decode vs forward(segment_ids=1)', stepped, forward(m, x, ones), TOL['float32']
    )


def check_packed_segments(kind: str, **attn) -> None:
    """Two sequences packed in one row give the outputs of each run alone (nothing leaks across)."""
    m = build(kind, **attn)
    split = 5
    x = inputs()
    seg = jnp.concatenate(
        [jnp.full((B, split), 1, jnp.int32), jnp.full((B, T - split), 2, jnp.int32)], axis=1
    )
    packed = forward(m, x, seg)
    assert_close(
        f'{kind} first segment', packed[:, :split], forward(m, x[:, :split]), TOL['float32']
    )
    assert_close(
        f'{kind} second segment', packed[:, split:], forward(m, x[:, split:]), TOL['float32']
    )


def check_chunk_equals_naive(kind: str, **attn) -> None:
    """The module gives the same output with impl='chunk' and impl='naive' (same parameters)."""
    x = inputs()
    seg = jnp.array([[1] * 4 + [2] * 7, [1] * 11], jnp.int32)
    chunk = build(kind, impl='chunk', **attn)
    naive = build(kind, impl='naive', **attn)
    for s in (None, seg):
        assert_close(
            f'{kind} chunk vs naive', forward(chunk, x, s), forward(naive, x, s), TOL['float32']
        )
