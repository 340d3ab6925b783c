"""Generation with the cache equals greedy argmax of the full forward, for every registered kind;
temperature and top-p sampling.

The full-forward reference runs on a fixed-length buffer (the prompt, then the tokens chosen so far,
then zeros): a causal model's logits at position t depend only on tokens <= t (test_lm.py checks
that no kind sees the future), so this is the forward of the growing sequence, with one compilation
per kind.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_lm import make_model, tokens

from effattn.attention import known_kinds
from effattn.models.generate import generate, sample_logits

PROMPT, NEW = 5, 6


@pytest.mark.parametrize('kind', known_kinds())
def test_cached_generation_equals_argmax_of_full_forward(kind):
    model = make_model(kind)
    prompt = tokens(b=2, t=PROMPT, seed=3)
    out, _ = generate(model, prompt, num_new_tokens=NEW)

    @nnx.jit
    def next_token(model, buf, t):
        return jnp.argmax(model(buf)[:, t], axis=-1).astype(buf.dtype)

    buf = jnp.zeros((2, PROMPT + NEW), prompt.dtype).at[:, :PROMPT].set(prompt)
    for t in range(PROMPT - 1, PROMPT + NEW - 1):
        buf = buf.at[:, t + 1].set(next_token(model, buf, jnp.int32(t)))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(buf), err_msg=kind)


def test_top_p_keeps_the_nucleus_only():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    draw = jax.vmap(lambda k, p: sample_logits(logits, k, 1.0, p)[0], in_axes=(0, None))
    for top_p, allowed in (
        (0.45, {0}),
        (0.6, {0, 1}),
        (0.79, {0, 1}),
        (0.85, {0, 1, 2}),
        (1.0, {0, 1, 2, 3}),
    ):
        got = set(np.asarray(jax.jit(draw, static_argnums=1)(keys, top_p)).tolist())
        assert got == allowed, (top_p, got)
    # within the nucleus, the renormalised probabilities
    counts = np.bincount(np.asarray(jax.jit(draw, static_argnums=1)(keys, 0.79)), minlength=4)
    np.testing.assert_allclose(counts[:2] / 2000, [0.5 / 0.8, 0.3 / 0.8], atol=0.04)


def test_sampling_is_seeded_and_greedy_at_tiny_top_p():
    model = make_model('softmax')
    prompt = tokens(b=1, t=4)
    greedy, _ = generate(model, prompt, 8)
    a, _ = generate(model, prompt, 8, temperature=1.0, rng=jax.random.PRNGKey(1))
    b, _ = generate(model, prompt, 8, temperature=1.0, rng=jax.random.PRNGKey(1))
    c, _ = generate(model, prompt, 8, temperature=1.0, rng=jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    nucleus, _ = generate(model, prompt, 8, temperature=1.0, top_p=1e-6, rng=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(nucleus), np.asarray(greedy))
    with pytest.raises(ValueError, match='rng'):
        generate(model, prompt, 2, temperature=0.5)
