"""Short causal depthwise convolution over time (H3 / Mamba / DeltaNet style, fla ShortConvolution).

y_t = act(sum_{i<W} w_i * x_{t-W+1+i}) per channel, zeros before the first token (left padding), no
bias. With segment_ids, inputs from another packed segment count as zeros, so nothing mixes across a
boundary; a segment starts wherever the id changes along the row (as the ops' state resets do).
Decoding keeps the last W-1 inputs as the conv state.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention.base import dtype_of
from effattn.config import ModelConfig

_ACTIVATIONS = {None: lambda x: x, 'silu': jax.nn.silu}


def segment_runs(segment_ids: jax.Array) -> jax.Array:
    """[B, T] int -> [B, T] int32 index of the run of equal ids each token belongs to."""
    change = segment_ids[:, 1:] != segment_ids[:, :-1]
    change = jnp.concatenate([jnp.zeros_like(change[:, :1]), change], axis=1)
    return jnp.cumsum(change.astype(jnp.int32), axis=1)


class ShortConv(nnx.Module):
    """Depthwise causal Conv1d with kernel `size` over [B, T, C], optional SiLU after it.

    The weight is [size, C] (PyTorch's Conv1d weight [C, 1, size] transposed) with PyTorch's default
    init U(-1/sqrt(size), 1/sqrt(size)).
    """

    def __init__(
        self,
        channels: int,
        size: int,
        cfg: ModelConfig,
        *,
        activation: str | None = 'silu',
        rngs: nnx.Rngs,
    ):
        if size < 1:
            raise ValueError(f'ShortConv size must be >= 1, got {size}')
        if activation not in _ACTIVATIONS:
            raise ValueError(f'ShortConv activation must be one of {list(_ACTIVATIONS)}')
        self.size, self.channels, self.activation = size, channels, activation
        self.dtype = dtype_of(cfg.compute_dtype)
        bound = 1.0 / math.sqrt(size)
        self.weight = nnx.Param(
            jax.random.uniform(rngs.params(), (size, channels), jnp.float32, -bound, bound)
        )

    def _combine(self, windows) -> jax.Array:
        """sum_i w_i * windows[i] then the activation (one summation order for both paths)."""
        w = self.weight[...].astype(self.dtype)
        y = windows[0] * w[0]
        for i in range(1, self.size):
            y = y + windows[i] * w[i]
        return _ACTIVATIONS[self.activation](y)

    def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
        """x [B, T, C] -> y [B, T, C]; y_t depends on x_{t-W+1..t} of the same segment only."""
        t = x.shape[1]
        x = x.astype(self.dtype)
        pad = self.size - 1
        xp = jnp.pad(x, ((0, 0), (pad, 0), (0, 0)))
        windows = [xp[:, i : i + t] for i in range(self.size)]
        if segment_ids is not None:
            runs = segment_runs(segment_ids)
            rp = jnp.pad(runs, ((0, 0), (pad, 0)), constant_values=-1)
            windows = [
                jnp.where((rp[:, i : i + t] == runs)[..., None], xi, jnp.zeros((), xi.dtype))
                for i, xi in enumerate(windows)
            ]
        return self._combine(windows)

    def init_state(self, batch_size: int) -> jax.Array:
        """The last size-1 inputs, zeros before the first token: [B, size-1, C]."""
        return jnp.zeros((batch_size, self.size - 1, self.channels), self.dtype)

    def decode(self, x: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step: x [B, 1, C], state [B, size-1, C] -> (y [B, 1, C], new state)."""
        window = jnp.concatenate([state, x.astype(self.dtype)], axis=1)
        y = self._combine([window[:, i : i + 1] for i in range(self.size)])
        return y, window[:, 1:]
