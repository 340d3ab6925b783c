"""Feature maps phi for linear attention (ALGORITHMS.md section 3), selected by name.

A feature map is an nnx.Module built as ``cls(head_dim, cfg, rngs=...)`` that maps per-head q or k
``[..., head_dim]`` to features ``[..., out_dim]``. The linear-attention module builds one for q and
one for k (learned maps such as Hedgehog or T2R keep separate weights for each). Adding a map is one
class with ``@register_feature_map('name')`` in this file.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.config import Config, ConfigError, ModelConfig

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
    """Base class: parameter-free, elementwise maps keep the width (out_dim = head_dim).

    Maps with per-head weights (hedgehog, t2r) take x [..., H, head_dim] with H =
    attention.num_heads; the others act on the last axis alone.
    """

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


def _per_head_features(name: str, x: jax.Array, weight: jax.Array) -> jax.Array:
    """x [..., H, d] @ weight [H, d, f] per head, in fp32 -> [..., H, f]."""
    h = weight.shape[0]
    if x.ndim < 2 or x.shape[-2] != h or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f'{name} feature map: expected x [..., H={h}, d={weight.shape[1]}] (per-head weights), '
            f'got shape {x.shape}'
        )
    return jnp.einsum('...hd,hdf->...hf', x.astype(jnp.float32), weight)


def check_feature_dim(cfg: Config) -> None:
    """attention.feature_dim must be >= 0 (0 = the map's default width)."""
    fd = cfg.model.attention.feature_dim
    if fd < 0:
        raise ConfigError(
            f'config.model.attention.feature_dim: must be >= 0 (0 = default width), got {fd}'
        )


def feature_width(cfg: ModelConfig, head_dim: int) -> int:
    """attention.feature_dim, or head_dim when it is 0 (learned maps' output width per half)."""
    return cfg.attention.feature_dim or head_dim


@register_feature_map('hedgehog')
class HedgehogFeatureMap(FeatureMap):
    """phi(x) = [softmax(x W_h), softmax(-x W_h)] per head h, clamped to >= 1e-12 (width 2F).

    Hedgehog (Zhang et al. 2024, ICLR, "The Hedgehog & the Porcupine"; its trainable map
    phi(x) = [exp(xW + b), exp(-xW - b)]), in the numerically stable form of LoLCATs (Zhang et al.
    2025; HazyResearch/lolcats `SoftmaxDim` on `FeatureMapMLP`): each half is normalised over the
    feature axis by its own softmax, no bias. W [H, head_dim, F] is learned per head (LoLCATs'
    `untied_head_einsum`), F = attention.feature_dim (0: head_dim); it starts as the identity
    (eye(head_dim, F)), so at init phi(x) = [softmax(x), softmax(-x)]. The per-token softmax factors
    cancel for q in normalised attention but not for k: phi(k) is this map, as in LoLCATs.
    Computed in fp32, returned in x's dtype.
    """

    eps = 1e-12

    def __init__(self, head_dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
        del rngs
        f = feature_width(cfg, head_dim)
        h = cfg.attention.num_heads
        self.out_dim = 2 * f
        eye = jnp.eye(head_dim, f, dtype=jnp.float32)
        self.weight = nnx.Param(jnp.broadcast_to(eye, (h, head_dim, f)))

    def __call__(self, x: jax.Array) -> jax.Array:
        z = _per_head_features('hedgehog', x, self.weight[...])
        phi = jnp.concatenate([jax.nn.softmax(z, axis=-1), jax.nn.softmax(-z, axis=-1)], axis=-1)
        return jnp.maximum(phi, self.eps).astype(x.dtype)


@register_feature_map('taylor')
class TaylorFeatureMap(FeatureMap):
    """phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))], width 1 + d + d^2 (d = head_dim).

    Based (Arora et al. 2024, ICML, "Simple linear attention language models balance the
    recall-throughput tradeoff"): the 2nd-order Taylor expansion exp(u) ~ 1 + u + u^2 / 2 of
    exp(q . k / sqrt(d)), so phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d) exactly
    (HazyResearch/based `TaylorExp.forward`: concat([1], x / rrd, (x x^T).flatten() / r2 / rd)).
    Always >= 1/2, so the normalised denominator never vanishes. Computed in fp32.
    """

    def __init__(self, head_dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
        del cfg, rngs
        self.head_dim = head_dim
        self.out_dim = 1 + head_dim + head_dim * head_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        d = self.head_dim
        x32 = x.astype(jnp.float32)
        outer = (x32[..., :, None] * x32[..., None, :]).reshape(*x.shape[:-1], d * d)
        parts = [
            jnp.ones_like(x32[..., :1]),
            x32 / d**0.25,
            outer / (math.sqrt(2.0) * math.sqrt(d)),
        ]
        return jnp.concatenate(parts, axis=-1).astype(x.dtype)


@register_feature_map('t2r')
class T2RFeatureMap(FeatureMap):
    """phi(x) = relu(x W_h + b_h) per head h, width F (attention.feature_dim; 0: head_dim).

    T2R (Kasai et al. 2021, EMNLP, "Finetuning Pretrained Transformers into RNNs": the feature map
    is a single-layer MLP with ReLU, phi(x) = relu(W x + b), learned; here W [d, F], b [F] per head,
    as LoLCATs' `untied_head_einsum` T2R maps). Initialised as PyTorch's
    nn.Linear: U(-1/sqrt(d), 1/sqrt(d)) for W and b.
    """

    def __init__(self, head_dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
        f = feature_width(cfg, head_dim)
        h = cfg.attention.num_heads
        self.out_dim = f
        bound = 1.0 / math.sqrt(head_dim)
        self.weight = nnx.Param(
            jax.random.uniform(rngs.params(), (h, head_dim, f), jnp.float32, -bound, bound)
        )
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (h, f), jnp.float32, -bound, bound))

    def __call__(self, x: jax.Array) -> jax.Array:
        z = _per_head_features('t2r', x, self.weight[...]) + self.bias[...]
        return jax.nn.relu(z).astype(x.dtype)


@register_feature_map('dpfp')
class DPFPFeatureMap(FeatureMap):
    """phi(x)_{i + 2d(nu-1)} = r_i r_{(i + nu) mod 2d}, r = relu([x, -x]), nu = 1..n (width 2dn).

    Deterministic parameter-free projection (Schlag et al. 2021, "Linear Transformers Are Secretly
    Fast Weight Programmers", ICML, eq. 35), n = `nu` (1 in configs). Follows the paper's
    r = relu([x, -x]); fla's DPFPFeatureMap builds [relu(x), -relu(x)] instead (ALGORITHMS.md 3).
    """

    def __init__(self, head_dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs, nu: int = 1):
        del cfg, rngs
        if nu < 1:
            raise ValueError(f'dpfp feature map: nu must be >= 1, got {nu}')
        self.nu = nu
        self.out_dim = 2 * head_dim * nu

    def __call__(self, x: jax.Array) -> jax.Array:
        r = jax.nn.relu(jnp.concatenate([x, -x], axis=-1))
        return jnp.concatenate([r * jnp.roll(r, -n, axis=-1) for n in range(1, self.nu + 1)], -1)
