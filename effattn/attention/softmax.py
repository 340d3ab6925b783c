"""Softmax attention module: MHA / GQA, RoPE, sliding window, attention sinks, KV-cache decoding."""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention import kv_cache
from effattn.attention.base import AttentionModule, dtype_of, linear, residual_out
from effattn.attention.norms import RMSNorm
from effattn.attention.registry import register
from effattn.attention.rope import apply_rope
from effattn.config import Config, ConfigError, ModelConfig
from effattn.ops.softmax_attention import softmax_attention


@register('softmax')
class SoftmaxAttention(AttentionModule):
    """Multi-head softmax attention (Vaswani et al. 2017) with GQA (Ainslie et al. 2023) and RoPE."""

    supports_qkv_bias = True  # config.model.attention.qkv_bias (Qwen2)

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        a = cfg.attention
        self.num_heads = a.num_heads
        self.num_kv_heads = a.num_kv_heads or a.num_heads
        self.head_dim = a.head_dim or cfg.d_model // a.num_heads
        self.rope, self.rope_theta = a.rope, a.rope_theta
        self.window, self.sinks, self.impl = a.window, a.sinks, a.impl
        self.train_len = train_len
        self.dtype = dtype_of(cfg.compute_dtype)
        hd = self.head_dim
        bias = a.qkv_bias
        self.wq = linear(cfg.d_model, self.num_heads * hd, cfg, rngs, use_bias=bias)
        self.wk = linear(cfg.d_model, self.num_kv_heads * hd, cfg, rngs, use_bias=bias)
        self.wv = linear(cfg.d_model, self.num_kv_heads * hd, cfg, rngs, use_bias=bias)
        self.wo = residual_out(self.num_heads * hd, cfg, rngs)
        if a.qk_norm:
            self.q_norm = RMSNorm(hd, eps=cfg.norm_eps)
            self.k_norm = RMSNorm(hd, eps=cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        a = cfg.model.attention
        head_dim = a.head_dim or cfg.model.d_model // a.num_heads
        if a.rope and head_dim % 2:
            raise ConfigError(
                f'config.model.d_model: RoPE needs an even head dim; d_model={cfg.model.d_model} / '
                f'num_heads={a.num_heads} = {head_dim} (set config.model.attention.rope=False or '
                'change d_model / num_heads / head_dim)'
            )

    def _project(self, x: jax.Array, positions: jax.Array):
        b, t, _ = x.shape
        q = self.wq(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.wk(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.wv(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q = apply_rope(q, positions, self.rope_theta)
            k = apply_rope(k, positions, self.rope_theta)
        return q, k, v

    def _attend(self, q, k, v, segment_ids):
        return softmax_attention(
            q,
            k,
            v,
            causal=True,
            window=self.window or None,
            sinks=self.sinks or None,
            segment_ids=segment_ids,
            impl=self.impl,
        )

    @staticmethod
    def _cache_weights(scores: jax.Array, mask: jax.Array) -> jax.Array:
        return jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        b, t, _ = x.shape
        q, k, v = self._project(x, positions)
        o = self._attend(q, k, v, segment_ids).astype(self.dtype)
        return self.wo(o.reshape(b, t, -1))

    def init_cache(self, batch_size: int, max_len: int):
        return kv_cache.init_kv_cache(
            batch_size,
            max_len,
            self.num_kv_heads,
            self.head_dim,
            self.head_dim,
            self.dtype,
            window=self.window,
            sinks=self.sinks if self.window else 0,
        )

    def decode(self, x: jax.Array, cache, position: jax.Array):
        b = x.shape[0]
        positions = jnp.full((b, 1), position, jnp.int32)
        q, k, v = self._project(x, positions)
        sinks = self.sinks if self.window else 0
        cache = kv_cache.append(cache, k, v, position, sinks=sinks)
        o = kv_cache.attend_cache(
            q, cache, position, scale=self.head_dim**-0.5, sinks=sinks, weights_fn=self._cache_weights
        )
        return self.wo(o.astype(self.dtype).reshape(b, 1, -1)), cache
