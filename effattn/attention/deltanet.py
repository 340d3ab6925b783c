"""DeltaNet module (Yang et al. 2024, NeurIPS, arXiv 2406.06484), ALGORITHMS.md section 6."""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention import linear_family
from effattn.attention.base import AttentionModule, dtype_of, linear, residual_out
from effattn.attention.norms import RMSNorm
from effattn.attention.registry import register
from effattn.attention.short_conv import ShortConv
from effattn.config import Config, ConfigError, ModelConfig
from effattn.ops.delta_rule import REGISTRY, delta_rule


@register('deltanet')
class DeltaNet(AttentionModule):
    """DeltaNet layer (fla layers/delta_net.py): S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t.

    q, k, v = silu(ShortConv_{conv_size}(x W)) (silu(x W) when conv_size = 0); q, k L2-normalised
    per head; beta = sigmoid(x W_b) per head; scale K^-0.5; output W_o(RMSNorm_head(o)).
    Decoding carries the fp32 state [B, H, K, V] and the last conv_size-1 projections of q, k, v.
    """

    op_registry = REGISTRY  # impls the op offers (config validation)

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        del layer_idx, train_len
        a = cfg.attention
        self.num_heads, self.head_k, self.head_v = linear_family.head_dims(cfg)
        self.impl, self.chunk_size, self.conv_size = a.impl, a.chunk_size, a.conv_size
        self.dtype = dtype_of(cfg.compute_dtype)
        h, dk, dv = self.num_heads, self.head_k, self.head_v
        self.wq = linear(cfg.d_model, h * dk, cfg, rngs)
        self.wk = linear(cfg.d_model, h * dk, cfg, rngs)
        self.wv = linear(cfg.d_model, h * dv, cfg, rngs)
        self.wb = linear(cfg.d_model, h, cfg, rngs)
        if self.conv_size:
            self.q_conv = ShortConv(h * dk, self.conv_size, cfg, rngs=rngs)
            self.k_conv = ShortConv(h * dk, self.conv_size, cfg, rngs=rngs)
            self.v_conv = ShortConv(h * dv, self.conv_size, cfg, rngs=rngs)
        else:
            self.q_conv = self.k_conv = self.v_conv = None
        self._init_output(cfg, rngs)
        self.wo = residual_out(h * dv, cfg, rngs)

    def _init_output(self, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
        self.o_norm = RMSNorm(self.head_v, eps=cfg.norm_eps)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        linear_family.validate_common(cfg, cls.kind, cls.op_registry)
        cs = cfg.model.attention.conv_size
        if cs < 0:
            raise ConfigError(f'config.model.attention.conv_size: must be >= 0 (0 = off), got {cs}')

    def _convs(self) -> dict[str, ShortConv]:
        return {'q': self.q_conv, 'k': self.k_conv, 'v': self.v_conv}

    def _qkv(self, x: jax.Array, segment_ids: jax.Array | None, conv_cache: dict | None):
        """q, k (L2-normalised), v [B, T, H, *] and the new conv cache (decoding) or None."""
        b, t, _ = x.shape
        raw = {'q': self.wq(x), 'k': self.wk(x), 'v': self.wv(x)}
        new_cache = None
        if not self.conv_size:
            act = {n: jax.nn.silu(y) for n, y in raw.items()}
        elif conv_cache is None:
            act = {n: conv(raw[n], segment_ids) for n, conv in self._convs().items()}
        else:
            act, new_cache = {}, {}
            for n, conv in self._convs().items():
                act[n], new_cache[n] = conv.decode(raw[n], conv_cache[n])
        h = self.num_heads
        q = linear_family.l2_normalize(act['q'].reshape(b, t, h, self.head_k))
        k = linear_family.l2_normalize(act['k'].reshape(b, t, h, self.head_k))
        v = act['v'].reshape(b, t, h, self.head_v)
        return q, k, v, new_cache

    def _beta(self, x: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(self.wb(x).astype(jnp.float32))

    def _attend(self, q, k, v, x, **op_kwargs):
        """The op on this layer's gates; op_kwargs are segment_ids / initial_state / impl / ..."""
        return delta_rule(q, k, v, self._beta(x), **op_kwargs)

    def _out(self, o: jax.Array, x: jax.Array) -> jax.Array:
        b, t = o.shape[:2]
        return self.wo(self.o_norm(o.astype(self.dtype)).reshape(b, t, -1))

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        del positions
        q, k, v, _ = self._qkv(x, segment_ids, None)
        o, _ = self._attend(
            q, k, v, x, segment_ids=segment_ids, impl=self.impl, chunk_size=self.chunk_size
        )
        return self._out(o, x)

    def init_cache(self, batch_size: int, max_len: int):
        del max_len
        shape = (batch_size, self.num_heads, self.head_k, self.head_v)
        cache = {'state': jnp.zeros(shape, jnp.float32)}
        if self.conv_size:
            cache['conv'] = {n: c.init_state(batch_size) for n, c in self._convs().items()}
        return cache

    def decode(self, x: jax.Array, cache, position: jax.Array):
        del position
        q, k, v, conv = self._qkv(x, None, cache.get('conv'))
        o, state = self._attend(
            q, k, v, x, initial_state=cache['state'], output_final_state=True, impl='recurrent'
        )
        new_cache = {'state': state}
        if self.conv_size:
            new_cache['conv'] = conv
        return self._out(o, x), new_cache
