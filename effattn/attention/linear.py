"""Linear attention module (Katharopoulos et al. 2020): feature-mapped q, k, optional normaliser."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention import feature_maps, linear_family
from effattn.attention.base import AttentionModule, dtype_of, linear, residual_out
from effattn.attention.registry import register
from effattn.config import Config, ConfigError, ModelConfig
from effattn.ops.linear_attn import REGISTRY, linear_attn


@register('linear')
class LinearAttention(AttentionModule):
    """o_t = phi(q_t) S_t [/ phi(q_t) . z_t] with S_t = sum_{s<=t} phi(k_s)^T v_s (paper eqs. 8-10), then W_o.

    phi = attention.feature_map (elu: elu+1, relu, identity, hedgehog, taylor, t2r, dpfp; see
    feature_maps.py; learned maps keep separate weights for q and k); the op scales
    phi(q) by F^-0.5 (F = feature dim), which cancels in the normalised form up to eps.
    attention.normalize divides by phi(q_t) . z_t, z_t = sum_{s<=t} phi(k_s) (the paper's form).
    Decoding carries the fp32 state [B, H, F, V] (F = feature dim), with z as an extra last column
    [B, H, F, V+1] when normalising.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        del layer_idx, train_len
        a = cfg.attention
        _, head_k, _ = linear_family.head_dims(cfg)
        self._build(cfg, rngs, head_k, a.feature_map, normalize=a.normalize, scale=None)

    def _build(
        self,
        cfg: ModelConfig,
        rngs: nnx.Rngs,
        head_k: int,
        feature_map: str,
        *,
        normalize: bool,
        scale: float | None,
    ) -> None:
        """Projections W_q, W_k [D, H*head_k], W_v [D, H*V], W_o and the q, k feature maps.

        scale multiplies phi(q) in the op (None: F^-0.5, F = feature width)."""
        a = cfg.attention
        self.num_heads, _, self.head_v = linear_family.head_dims(cfg)
        self.head_k = head_k
        self.normalize, self.impl, self.chunk_size = normalize, a.impl, a.chunk_size
        self.scale = scale
        self.dtype = dtype_of(cfg.compute_dtype)
        h = self.num_heads
        self.wq = linear(cfg.d_model, h * self.head_k, cfg, rngs)
        self.wk = linear(cfg.d_model, h * self.head_k, cfg, rngs)
        self.wv = linear(cfg.d_model, h * self.head_v, cfg, rngs)
        self.wo = residual_out(h * self.head_v, cfg, rngs)
        self.q_map = feature_maps.build(feature_map, self.head_k, cfg, rngs=rngs)
        self.k_map = feature_maps.build(feature_map, self.head_k, cfg, rngs=rngs)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        linear_family.validate_common(cfg, 'linear', REGISTRY)
        fm = cfg.model.attention.feature_map
        if fm not in feature_maps.known_feature_maps():
            raise ConfigError(
                f'config.model.attention.feature_map: unknown feature map {fm!r}; known feature '
                f'maps: {", ".join(feature_maps.known_feature_maps())}'
            )
        feature_maps.check_feature_dim(cfg)

    def _qkv(self, x: jax.Array):
        b, t, _ = x.shape
        q = self.q_map(self.wq(x).reshape(b, t, self.num_heads, self.head_k))
        k = self.k_map(self.wk(x).reshape(b, t, self.num_heads, self.head_k))
        v = self.wv(x).reshape(b, t, self.num_heads, self.head_v)
        return q, k, v

    def _out(self, o: jax.Array) -> jax.Array:
        b, t = o.shape[:2]
        return self.wo(o.astype(self.dtype).reshape(b, t, -1))

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        del positions
        q, k, v = self._qkv(x)
        o, _ = linear_attn(
            q,
            k,
            v,
            scale=self.scale,
            normalize=self.normalize,
            segment_ids=segment_ids,
            impl=self.impl,
            chunk_size=self.chunk_size,
        )
        return self._out(o)

    def init_cache(self, batch_size: int, max_len: int):
        del max_len
        f = self.q_map.out_dim
        v = self.head_v + (1 if self.normalize else 0)
        return {'state': jnp.zeros((batch_size, self.num_heads, f, v), jnp.float32)}

    def decode(self, x: jax.Array, cache, position: jax.Array):
        del position
        q, k, v = self._qkv(x)
        o, state = linear_attn(
            q,
            k,
            v,
            scale=self.scale,
            normalize=self.normalize,
            initial_state=cache['state'],
            output_final_state=True,
            impl='recurrent',
        )
        return self._out(o), {'state': state}
