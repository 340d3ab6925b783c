"""Feature maps phi for linear attention (ALGORITHMS.md section 3), selected by name.

A feature map is an nnx.Module built as ``cls(head_dim, cfg, rngs=...)`` that maps per-head q or k
``[..., head_dim]`` to features ``[..., out_dim]``. The linear-attention module builds one for q and
one for k (learned maps such as Hedgehog or T2R keep separate weights for each). Adding a map is one
class with ``@register_feature_map('name')`` in this file.
"""

from __future__ import annotations

import jax
from flax import nnx

from effattn.config import ModelConfig

_FEATURE_MAPS: dict[str, type] = {}


def register_feature_map(name: str):
    """Class decorator: makes a feature map selectable as ``attention.feature_map=name``."""

    def wrap(cls: type) -> type:
        if name in _FEATURE_MAPS:
            raise ValueError(f'feature map {name!r} registered twice')
        _FEATURE_MAPS[name] = cls
        cls.name = name
        return cls

    return wrap


def known_feature_maps() -> list[str]:
    return sorted(_FEATURE_MAPS)


def build(name: str, head_dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs) -> FeatureMap:
    if name not in _FEATURE_MAPS:
        raise ValueError(
            f'unknown feature map {name!r}; known feature maps: {", ".join(known_feature_maps())}'
        )
    return _FEATURE_MAPS[name](head_dim, cfg, rngs=rngs)


class FeatureMap(nnx.Module):
    """Base class: parameter-free, elementwise maps keep the width (out_dim = head_dim)."""

    name: str = ''

    def __init__(self, head_dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
        del cfg, rngs
        self.out_dim = head_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError


@register_feature_map('elu')
class EluFeatureMap(FeatureMap):
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020, Sec. 3.2.1)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.elu(x) + 1


@register_feature_map('relu')
class ReluFeatureMap(FeatureMap):
    """phi(x) = max(x, 0); rows with phi(q) . z = 0 are handled by the op's denominator eps."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


@register_feature_map('identity')
class IdentityFeatureMap(FeatureMap):
    """phi(x) = x (plain linear attention; use without normalize, the denominator can vanish)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x
