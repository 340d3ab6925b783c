"""The interface every attention module implements, and helpers they share.

A module is built as ``cls(model_cfg, layer_idx, train_len=..., rngs=...)`` and provides
    __call__(x [B,T,D], *, positions [B,T], segment_ids [B,T] | None) -> y [B,T,D]   (training)
    init_cache(batch_size, max_len) -> cache pytree                                   (decoding)
    decode(x [B,1,D], cache, position: int array) -> (y [B,1,D], cache)
    state_size() -> recurrent-state elements per sequence for a cache of max_len (for comparisons)
Decoding token by token equals the full forward (tested for every kind).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.config import Config, ModelConfig


def dtype_of(name: str) -> jnp.dtype:
    return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


def linear(
    d_in: int,
    d_out: int,
    cfg: ModelConfig,
    rngs: nnx.Rngs,
    *,
    use_bias: bool = False,
    std: float | None = None,
) -> nnx.Linear:
    """A bias-free projection with fp32 parameters, computing in cfg.compute_dtype."""
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=use_bias,
        dtype=dtype_of(cfg.compute_dtype),
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(cfg.init_std if std is None else std),
        rngs=rngs,
    )


def residual_out(
    d_in: int, cfg: ModelConfig, rngs: nnx.Rngs, *, use_bias: bool = False
) -> nnx.Linear:
    """A projection back into the residual stream (attention W_o, MLP W_2), initialised with
    std / sqrt(2 * num_layers) so the residual's variance does not grow with depth (GPT-2)."""
    std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    return linear(d_in, cfg.d_model, cfg, rngs, use_bias=use_bias, std=std)


class AttentionModule(nnx.Module):
    """Base class: documents the interface; subclasses register with @register('kind')."""

    kind: str = ''

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        """Kind-specific checks; raise effattn.config.ConfigError naming the key."""

    def init_cache(self, batch_size: int, max_len: int) -> Any:
        raise NotImplementedError

    def decode(self, x: jax.Array, cache: Any, position: jax.Array) -> tuple[jax.Array, Any]:
        raise NotImplementedError

    def state_size(self, max_len: int) -> int:
        leaves = jax.tree.leaves(jax.eval_shape(lambda: self.init_cache(1, max_len)))
        return int(sum(x.size for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)))
