"""Lightning attention module: the TransNormerLLM token mixer (Qin et al. 2023/2024), ALGORITHMS.md 4."""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention import linear_family
from effattn.attention.base import AttentionModule, dtype_of, linear, residual_out
from effattn.attention.norms import rms_norm
from effattn.attention.registry import register
from effattn.config import Config, ModelConfig
from effattn.ops.simple_gla import REGISTRY, simple_gla, transnormer_g_gamma


@register('lightning')
class LightningAttention(AttentionModule):
    """o = W_o(SRMSNorm(attn) * sigmoid(x W_u)), attn = simple_gla(silu(x W_q), silu(x W_k), silu(x W_v)).

    Constant per-head decay lambda_h = exp(g_gamma[h]) with TransNormerLLM's layer-dependent rule
    (slopes.transnormer_g_gamma: the first layer decays fastest, the last barely); scale 1 (no
    1/sqrt(d)); SRMSNorm without gain over the whole hidden (all heads), as in the HF
    TransNormerLLM code. Activations follow the issue ("SiLU on q/k/v", sigmoid output gate); the HF
    reference differs: no activation on v, and u enters the product without sigmoid.
    Decoding carries the fp32 state [B, H, K, V].
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        del train_len
        a = cfg.attention
        self.num_heads, self.head_k, self.head_v = linear_family.head_dims(cfg)
        self.layer_idx, self.num_layers = layer_idx, cfg.num_layers
        self.impl, self.chunk_size, self.eps = a.impl, a.chunk_size, cfg.norm_eps
        self.dtype = dtype_of(cfg.compute_dtype)
        h = self.num_heads
        self.wq = linear(cfg.d_model, h * self.head_k, cfg, rngs)
        self.wk = linear(cfg.d_model, h * self.head_k, cfg, rngs)
        self.wv = linear(cfg.d_model, h * self.head_v, cfg, rngs)
        self.wu = linear(cfg.d_model, h * self.head_v, cfg, rngs)
        self.wo = residual_out(h * self.head_v, cfg, rngs)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        linear_family.validate_common(cfg, 'lightning', REGISTRY)

    def g_gamma(self) -> jax.Array:
        """[H] log decay of this layer (a constant, not a parameter)."""
        return transnormer_g_gamma(self.num_heads, self.layer_idx, self.num_layers)

    def _qkv(self, x: jax.Array):
        b, t, _ = x.shape
        q = jax.nn.silu(self.wq(x)).reshape(b, t, self.num_heads, self.head_k)
        k = jax.nn.silu(self.wk(x)).reshape(b, t, self.num_heads, self.head_k)
        v = jax.nn.silu(self.wv(x)).reshape(b, t, self.num_heads, self.head_v)
        return q, k, v

    def _out(self, o: jax.Array, x: jax.Array) -> jax.Array:
        b, t = o.shape[:2]
        o = rms_norm(o.astype(self.dtype).reshape(b, t, -1), self.eps)
        return self.wo(o * jax.nn.sigmoid(self.wu(x)))

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        del positions
        q, k, v = self._qkv(x)
        o, _ = simple_gla(
            q,
            k,
            v,
            g_gamma=self.g_gamma(),
            scale=1.0,
            segment_ids=segment_ids,
            impl=self.impl,
            chunk_size=self.chunk_size,
        )
        return self._out(o, x)

    def init_cache(self, batch_size: int, max_len: int):
        del max_len
        shape = (batch_size, self.num_heads, self.head_k, self.head_v)
        return {'state': jnp.zeros(shape, jnp.float32)}

    def decode(self, x: jax.Array, cache, position: jax.Array):
        del position
        q, k, v = self._qkv(x)
        o, state = simple_gla(
            q,
            k,
            v,
            g_gamma=self.g_gamma(),
            scale=1.0,
            initial_state=cache['state'],
            output_final_state=True,
            impl='recurrent',
        )
        return self._out(o, x), {'state': state}
