"""Token-by-token generation with each layer's decoding cache: greedy, temperature and top-p sampling."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.models.lm import DecoderLM


def sample_logits(
    logits: jax.Array, key: jax.Array | None, temperature: float = 0.0, top_p: float = 1.0
) -> jax.Array:
    """logits [B, V] -> tokens [B]: argmax when temperature == 0, else a draw from
    softmax(logits / temperature) restricted to the top-p nucleus (Holtzman et al. 2020): the
    smallest set of most likely tokens whose probabilities sum to >= top_p (the top token always)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        desc = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        keep = before < top_p
        threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1)


@partial(nnx.jit, static_argnames=('num_new_tokens', 'max_len', 'temperature', 'top_p'))
def generate(
    model: DecoderLM,
    prompt: jax.Array,
    num_new_tokens: int,
    max_len: int | None = None,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """prompt [B, P] -> (tokens [B, P + num_new_tokens], logits [B, P + n - 1, V]).

    Greedy by default (temperature 0); temperature > 0 samples (top_p < 1: nucleus sampling) with
    jax.random key `rng`, folded with the position, so a seed gives the same text every time.
    Every token, prompt included, goes through `decode_step`, so `logits[:, t]` is the cache-based
    prediction after token t; it equals the full forward's logits at t (tested for every kind).
    """
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f'need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}')
    if temperature > 0 and rng is None:
        raise ValueError('sampling (temperature > 0) needs an rng key')
    b, p = prompt.shape
    total = p + num_new_tokens
    max_len = max_len or total
    cache = model.init_cache(b, max_len)
    graphdef, state = nnx.split(model)

    def step(carry, t):
        tokens, cache = carry
        m = nnx.merge(graphdef, state)
        logits, cache = m.decode_step(tokens[:, t], cache, t)
        key = None if rng is None else jax.random.fold_in(rng, t)
        nxt = sample_logits(logits, key, temperature, top_p).astype(tokens.dtype)
        tokens = jnp.where(t + 1 >= p, tokens.at[:, t + 1].set(nxt), tokens)
        return (tokens, cache), logits

    tokens = jnp.zeros((b, total), prompt.dtype).at[:, :p].set(prompt)
    (tokens, _), logits = jax.lax.scan(step, (tokens, cache), jnp.arange(total - 1))
    return tokens, jnp.moveaxis(logits, 0, 1)
