"""Based's gated short-convolution mixer (BaseConv), a layer kind for Based hybrids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention.base import AttentionModule, linear, residual_out
from effattn.attention.registry import register
from effattn.attention.short_conv import ShortConv
from effattn.config import Config, ConfigError, ModelConfig


@register('base_conv')
class BaseConv(AttentionModule):
    """Gated short convolution (Arora et al. 2024, Based; HazyResearch/based
    models/mixers/convolution.py `BaseConv`): [u1, u2] = x W_in + b_in, each of width
    d_inner = 2 * d_model (the reference's expand_proj = 4 in based-360m.yaml),
    y = W_out (silu(ShortConv(u1)) * u2) + b_out, ShortConv depthwise causal, no bias, kernel
    conv_size (3 in Based).

    Not attention: a local token mixer that Based hybrids stack with `based` (Taylor linear
    attention) and sliding-window `softmax` layers; alone it cannot recall past its kernel.
    Decoding carries the last conv_size - 1 values of u1 [B, conv_size - 1, d_inner].
    """

    expand = 2  # d_inner = expand * d_model

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        del layer_idx, train_len
        self.d_inner = self.expand * cfg.d_model
        self.in_proj = linear(cfg.d_model, 2 * self.d_inner, cfg, rngs, use_bias=True)
        self.conv = ShortConv(self.d_inner, cfg.attention.conv_size, cfg, rngs=rngs)
        self.out_proj = residual_out(self.d_inner, cfg, rngs, use_bias=True)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        cs = cfg.model.attention.conv_size
        if cs < 1:
            raise ConfigError(
                f'config.model.attention.conv_size: base_conv needs a convolution (>= 1; Based '
                f'uses 3), got {cs}'
            )

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        del positions
        u1, u2 = jnp.split(self.in_proj(x), 2, axis=-1)
        return self.out_proj(self.conv(u1, segment_ids) * u2)

    def init_cache(self, batch_size: int, max_len: int):
        del max_len
        return {'conv': self.conv.init_state(batch_size)}

    def decode(self, x: jax.Array, cache, position: jax.Array):
        del position
        u1, u2 = jnp.split(self.in_proj(x), 2, axis=-1)
        y, state = self.conv.decode(u1, cache['conv'])
        return self.out_proj(y * u2), {'conv': state}
