"""Pieces the linear-family modules (linear, lightning, gla, deltanet, gated_deltanet) share:
head widths from the config, their common config checks, and per-head L2 normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from effattn.config import Config, ConfigError, ModelConfig
from effattn.ops.common.dispatch import ImplRegistry


def head_dims(cfg: ModelConfig) -> tuple[int, int, int]:
    """(num_heads, key width per head, value width per head): expand_k / expand_v * head_dim."""
    a = cfg.attention
    head_dim = a.head_dim or cfg.d_model // a.num_heads
    return a.num_heads, round(a.expand_k * head_dim), round(a.expand_v * head_dim)


def validate_common(cfg: Config, kind: str, op_registry: ImplRegistry) -> None:
    """Checks shared by every linear-family kind; errors name the key."""
    a = cfg.model.attention
    head_dim = a.head_dim or cfg.model.d_model // a.num_heads
    if a.num_kv_heads not in (0, a.num_heads):
        raise ConfigError(
            f'config.model.attention.num_kv_heads: {kind} attention has no grouped key/value heads; '
            f'set it to 0 or num_heads={a.num_heads}, got {a.num_kv_heads}'
        )
    for name in ('expand_k', 'expand_v'):
        width = getattr(a, name) * head_dim
        if width < 1 or abs(width - round(width)) > 1e-9:
            raise ConfigError(
                f'config.model.attention.{name}: {name} * head_dim must be a positive integer '
                f'(head_dim={head_dim}), got {getattr(a, name)} * {head_dim} = {width}'
            )
    check_impl(cfg, kind, op_registry)


def check_impl(cfg: Config, kind: str, op_registry: ImplRegistry) -> None:
    """config.model.attention.impl must be 'auto' or an implementation of the kind's linear op."""
    supported = ['auto'] + op_registry.names
    impl = cfg.model.attention.impl
    if impl not in supported:
        raise ConfigError(
            f'config.model.attention.impl: {kind} attention ({op_registry.op_name}) supports '
            f'impl in {supported}, got {impl!r}'
        )


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / sqrt(sum(x^2) + eps) over the last axis (per head), in fp32, cast back (fla l2norm)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)
