"""Feed-forward block of the decoder LM."""

from __future__ import annotations


import jax
from flax import nnx

from effattn.attention.base import linear, residual_out
from effattn.config import ModelConfig


class SwiGLU(nnx.Module):
    """SwiGLU MLP (Shazeer 2020, eq. 6): W2 (silu(x W1) * x W3), hidden width 2/3 * mlp_ratio * d."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        hidden = int(2 * cfg.mlp_ratio * cfg.d_model / 3)
        hidden = max(8, (hidden + 7) // 8 * 8)
        self.w1 = linear(cfg.d_model, hidden, cfg, rngs)
        self.w3 = linear(cfg.d_model, hidden, cfg, rngs)
        self.w2 = residual_out(hidden, cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))
