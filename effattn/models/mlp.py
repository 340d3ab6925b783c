"""Feed-forward block of the decoder LM."""

from __future__ import annotations


import jax
from flax import nnx

from effattn.attention.base import linear, residual_out
from effattn.config import ModelConfig


def mlp_hidden_size(cfg: ModelConfig) -> int:
    """cfg.mlp_hidden, or 2/3 * mlp_ratio * d_model rounded up to a multiple of 8 when it is 0."""
    if cfg.mlp_hidden:
        return cfg.mlp_hidden
    hidden = int(2 * cfg.mlp_ratio * cfg.d_model / 3)
    return max(8, (hidden + 7) // 8 * 8)


class SwiGLU(nnx.Module):
    """SwiGLU MLP (Shazeer 2020, eq. 6): W2 (silu(x W1) * x W3), hidden width `mlp_hidden_size`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        hidden = mlp_hidden_size(cfg)
        self.w1 = linear(cfg.d_model, hidden, cfg, rngs)
        self.w3 = linear(cfg.d_model, hidden, cfg, rngs)
        self.w2 = residual_out(hidden, cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))
