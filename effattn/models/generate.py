"""Token-by-token generation with each layer's decoding cache."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.models.lm import DecoderLM


@partial(nnx.jit, static_argnames=('num_new_tokens', 'max_len'))
def generate(
    model: DecoderLM, prompt: jax.Array, num_new_tokens: int, max_len: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding. prompt [B, P] -> (tokens [B, P + num_new_tokens], logits [B, P + n - 1, V]).

    Every token, prompt included, goes through `decode_step`, so `logits[:, t]` is the cache-based
    prediction after token t; it equals the full forward's logits at t (tested for every kind).
    """
    b, p = prompt.shape
    total = p + num_new_tokens
    max_len = max_len or total
    cache = model.init_cache(b, max_len)
    graphdef, state = nnx.split(model)

    def step(carry, t):
        tokens, cache = carry
        m = nnx.merge(graphdef, state)
        logits, cache = m.decode_step(tokens[:, t], cache, t)
        nxt = jnp.argmax(logits, axis=-1).astype(tokens.dtype)
        tokens = jnp.where(t + 1 >= p, tokens.at[:, t + 1].set(nxt), tokens)
        return (tokens, cache), logits

    tokens = jnp.zeros((b, total), prompt.dtype).at[:, :p].set(prompt)
    (tokens, _), logits = jax.lax.scan(step, (tokens, cache), jnp.arange(total - 1))
    return tokens, jnp.moveaxis(logits, 0, 1)
