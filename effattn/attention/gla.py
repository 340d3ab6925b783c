"""Gated linear attention module (Yang et al. 2024, arXiv 2312.06635), ALGORITHMS.md section 5."""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention import linear_family
from effattn.attention.base import AttentionModule, dtype_of, linear, residual_out
from effattn.attention.gated_norm import GatedRMSNorm
from effattn.attention.registry import register
from effattn.config import Config, ConfigError, ModelConfig
from effattn.ops.gla import REGISTRY, gla


@register('gla')
class GatedLinearAttention(AttentionModule):
    """GLA layer (paper Sec. 4.4, fla layers/gla.py): S_t = diag(alpha_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t.

    q, k = x W_q, x W_k (width K = expand_k * head_dim per head), v = x W_v (V = expand_v * head_dim);
    log decay g = logsigmoid((x W_1[d, r]) W_2[r, H*K] + b) / gate_logit_normalizer (r =
    gate_low_rank_dim; paper: alpha = sigmoid(.)^(1/tau), tau = 16); scale K^-0.5;
    output W_o(RMSNorm_head(o) * swish(x W_r)). fla's default expand_k is 0.5; the config default
    1.0 is kept (set expand_k=0.5 to match fla). Decoding carries the fp32 state [B, H, K, V].
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        del layer_idx, train_len
        a = cfg.attention
        self.num_heads, self.head_k, self.head_v = linear_family.head_dims(cfg)
        self.impl, self.chunk_size = a.impl, a.chunk_size
        self.gate_logit_normalizer = a.gate_logit_normalizer
        self.dtype = dtype_of(cfg.compute_dtype)
        h, dk, dv = self.num_heads, self.head_k, self.head_v
        self.wq = linear(cfg.d_model, h * dk, cfg, rngs)
        self.wk = linear(cfg.d_model, h * dk, cfg, rngs)
        self.wv = linear(cfg.d_model, h * dv, cfg, rngs)
        self.w_gate_down = linear(cfg.d_model, a.gate_low_rank_dim, cfg, rngs)
        self.w_gate_up = linear(a.gate_low_rank_dim, h * dk, cfg, rngs, use_bias=True)
        self.wr = linear(cfg.d_model, h * dv, cfg, rngs)
        self.o_norm = GatedRMSNorm(dv, eps=cfg.norm_eps)
        self.wo = residual_out(h * dv, cfg, rngs)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        linear_family.validate_common(cfg, 'gla', REGISTRY)
        a = cfg.model.attention
        if a.gate_low_rank_dim < 1:
            raise ConfigError(
                f'config.model.attention.gate_low_rank_dim: must be >= 1, got {a.gate_low_rank_dim}'
            )
        if not a.gate_logit_normalizer > 0:
            raise ConfigError(
                'config.model.attention.gate_logit_normalizer: must be > 0, '
                f'got {a.gate_logit_normalizer}'
            )

    def _inputs(self, x: jax.Array):
        b, t, _ = x.shape
        h, dk, dv = self.num_heads, self.head_k, self.head_v
        q = self.wq(x).reshape(b, t, h, dk)
        k = self.wk(x).reshape(b, t, h, dk)
        v = self.wv(x).reshape(b, t, h, dv)
        logits = self.w_gate_up(self.w_gate_down(x)).astype(jnp.float32)
        g = jax.nn.log_sigmoid(logits).reshape(b, t, h, dk) / self.gate_logit_normalizer
        return q, k, v, g

    def _out(self, o: jax.Array, x: jax.Array) -> jax.Array:
        b, t = o.shape[:2]
        gate = self.wr(x).reshape(b, t, self.num_heads, self.head_v)
        o = self.o_norm(o.astype(self.dtype), gate)
        return self.wo(o.reshape(b, t, -1))

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        del positions
        q, k, v, g = self._inputs(x)
        o, _ = gla(q, k, v, g, segment_ids=segment_ids, impl=self.impl, chunk_size=self.chunk_size)
        return self._out(o, x)

    def init_cache(self, batch_size: int, max_len: int):
        del max_len
        shape = (batch_size, self.num_heads, self.head_k, self.head_v)
        return {'state': jnp.zeros(shape, jnp.float32)}

    def decode(self, x: jax.Array, cache, position: jax.Array):
        del position
        q, k, v, g = self._inputs(x)
        o, state = gla(
            q, k, v, g, initial_state=cache['state'], output_final_state=True, impl='recurrent'
        )
        return self._out(o, x), {'state': state}
