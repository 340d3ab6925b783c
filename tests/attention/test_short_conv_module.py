"""Short causal depthwise convolution: formula, causality, decode = full conv, packed segments."""

import jax
import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np
from flax import nnx
from helpers import TOL, assert_close

from effattn.attention.short_conv import ShortConv

CFG = checks.model_config('deltanet').model


def conv(size=4, channels=6, activation='silu'):
    return ShortConv(channels, size, CFG, activation=activation, rngs=nnx.Rngs(params=0))


def x_in(t=9, channels=6, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (2, t, channels))


def test_matches_hand_computed_example():
    c = conv(size=3, channels=1, activation=None)
    c.weight[...] = jnp.array([[1.0], [2.0], [3.0]])  # y_t = x_{t-2} + 2 x_{t-1} + 3 x_t
    x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1)
    np.testing.assert_allclose(np.asarray(c(x))[0, :, 0], [3.0, 8.0, 14.0, 20.0])
    seg = jnp.array([[1, 1, 2, 2]])  # second segment starts at t=2: x_0, x_1 are not seen there
    np.testing.assert_allclose(np.asarray(c(x, seg))[0, :, 0], [3.0, 8.0, 9.0, 18.0])
    seg = jnp.array([[1, 2, 1, 1]])  # an id that comes back is a new segment (as in the ops)
    np.testing.assert_allclose(np.asarray(c(x, seg))[0, :, 0], [3.0, 6.0, 9.0, 18.0])


def test_causal():
    c = conv()
    x = x_in()
    y = x.at[:, 6:].add(1.0)
    np.testing.assert_array_equal(np.asarray(c(x)[:, :6]), np.asarray(c(y)[:, :6]))
    assert not np.allclose(np.asarray(c(x)[:, 6:]), np.asarray(c(y)[:, 6:]))


def test_decode_equals_full_conv():
    c = conv()
    x = x_in()
    state = c.init_state(2)
    assert state.shape == (2, 3, 6)
    ys = []
    for t in range(x.shape[1]):
        y, state = c.decode(x[:, t : t + 1], state)
        ys.append(y)
    assert_close('short conv decode', jnp.concatenate(ys, 1), c(x), TOL['float32'])
    np.testing.assert_array_equal(np.asarray(state), np.asarray(x[:, -3:]))


def test_packed_segments_do_not_mix():
    c = conv()
    x = x_in()
    seg = jnp.array([[1] * 4 + [2] * 5, [0] * 2 + [3] * 7])
    y = c(x, seg)
    assert_close('row 0, segment 1', y[0, :4], c(x[:1, :4])[0], TOL['float32'])
    assert_close('row 0, segment 2', y[0, 4:], c(x[:1, 4:])[0], TOL['float32'])
    assert_close('row 1, segment 3', y[1, 2:], c(x[1:, 2:])[0], TOL['float32'])
