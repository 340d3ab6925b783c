"""Sigmoid attention module (Ramapuram et al. 2024): softmax replaced by sigmoid(s QK^T + b)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from effattn.attention.registry import register
from effattn.attention.softmax import SoftmaxAttention
from effattn.config import Config, ConfigError
from effattn.ops.sigmoid_attention import sigmoid_attention


@register('sigmoid')
class SigmoidAttention(SoftmaxAttention):
    """Sigmoid attention with b = -log(training length) (paper Sec. 3), optional QK-norm, KV-cache decoding.

    The bias is fixed at construction from the training length so that decoding one token uses the
    same b as training (DESIGN.md op contract).
    """

    def __init__(self, cfg, layer_idx, *, train_len, rngs):
        super().__init__(cfg, layer_idx, train_len=train_len, rngs=rngs)
        a = cfg.attention
        self.bias = -math.log(train_len) if a.sigmoid_bias_from_length else a.sigmoid_bias

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        if cfg.model.attention.sinks:
            raise ConfigError(
                'config.model.attention.sinks: sigmoid attention has no attention sinks '
                '(there is no softmax normaliser to sink into); set it to 0'
            )

    def _attend(self, q, k, v, segment_ids):
        return sigmoid_attention(
            q,
            k,
            v,
            causal=True,
            bias=self.bias,
            window=self.window or None,
            segment_ids=segment_ids,
            impl=self.impl,
        )

    def _cache_weights(self, scores: jax.Array, mask: jax.Array) -> jax.Array:
        return jnp.where(mask, jax.nn.sigmoid(scores + self.bias), 0.0)
