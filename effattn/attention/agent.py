"""Agent attention module (Han et al. 2024, arXiv 2312.08874), causal LM adaptation (ALGORITHMS.md 7)."""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention.base import AttentionModule, dtype_of, linear, residual_out
from effattn.attention.registry import register
from effattn.attention.short_conv import ShortConv
from effattn.config import Config, ConfigError, ModelConfig
from effattn.ops.agent_attention import REGISTRY, agent_attention, state_shape


@register('agent')
class AgentAttention(AttentionModule):
    """Agent attention with learned agents, causal: o_t = softmax(s q_t A^T + b2) (N(t) / Z(t)) + DWC(v)_t.

    Per head h: n = num_agents learned agent tokens A_h [n, head_dim] and agent biases b1, b2 [n]
    replace the paper's pooled-query agents and 2-D position biases (pooled queries see the future
    and change with t; see ALGORITHMS.md 7). N_j(t) / Z_j(t) is the softmax over keys s <= t of
    s a_j.k_s + b1_j applied to v. The paper's depthwise 3x3 conv on V becomes a causal depthwise
    conv1d of width conv_size on v (no activation), added to the attention output before W_o
    (conv_size = 0: none). No RoPE (the conv carries local order). Decoding carries the op's fp32
    state [B, H, n, head_dim + 2] and the conv's last conv_size - 1 values of v.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        del layer_idx, train_len
        a = cfg.attention
        self.num_heads = a.num_heads
        self.head_dim = a.head_dim or cfg.d_model // a.num_heads
        self.num_agents = a.num_agents
        self.impl, self.chunk_size = a.impl, a.chunk_size
        self.dtype = dtype_of(cfg.compute_dtype)
        h, hd, n = self.num_heads, self.head_dim, self.num_agents
        self.wq = linear(cfg.d_model, h * hd, cfg, rngs)
        self.wk = linear(cfg.d_model, h * hd, cfg, rngs)
        self.wv = linear(cfg.d_model, h * hd, cfg, rngs)
        self.wo = residual_out(h * hd, cfg, rngs)
        # unit-variance agents: s a.k then has the variance of k's entries, like q.k
        self.agents = nnx.Param(jax.random.normal(rngs.params(), (h, n, hd), jnp.float32))
        self.b1 = nnx.Param(jnp.zeros((h, n), jnp.float32))
        self.b2 = nnx.Param(jnp.zeros((h, n), jnp.float32))
        self.conv = (
            ShortConv(h * hd, a.conv_size, cfg, activation=None, rngs=rngs) if a.conv_size else None
        )

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        a = cfg.model.attention
        if a.num_agents < 1:
            raise ConfigError(
                f'config.model.attention.num_agents: must be >= 1, got {a.num_agents}'
            )
        if a.conv_size < 0:
            raise ConfigError(
                f'config.model.attention.conv_size: must be >= 0 (0 = no conv), got {a.conv_size}'
            )
        if a.num_kv_heads not in (0, a.num_heads):
            raise ConfigError(
                'config.model.attention.num_kv_heads: agent attention has no grouped key/value '
                f'heads; set it to 0 or num_heads={a.num_heads}, got {a.num_kv_heads}'
            )
        supported = ['auto'] + REGISTRY.names
        if a.impl not in supported:
            raise ConfigError(
                f'config.model.attention.impl: agent attention supports impl in {supported}, '
                f'got {a.impl!r}'
            )

    def _qkv(self, x: jax.Array):
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        return self.wq(x).reshape(shape), self.wk(x).reshape(shape), self.wv(x).reshape(shape)

    def _attend(self, q, k, v, **kw):
        return agent_attention(
            q, k, v, self.agents[...], self.b1[...], self.b2[...], chunk_size=self.chunk_size, **kw
        )

    def _out(self, o: jax.Array, dwc: jax.Array | None) -> jax.Array:
        b, t = o.shape[:2]
        o = o.astype(self.dtype).reshape(b, t, -1)
        if dwc is not None:
            o = o + dwc
        return self.wo(o)

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        del positions
        b, t, _ = x.shape
        q, k, v = self._qkv(x)
        o, _ = self._attend(q, k, v, segment_ids=segment_ids, impl=self.impl)
        dwc = None if self.conv is None else self.conv(v.reshape(b, t, -1), segment_ids)
        return self._out(o, dwc)

    def init_cache(self, batch_size: int, max_len: int):
        del max_len
        shape = state_shape(batch_size, self.num_heads, self.num_agents, self.head_dim)
        cache = {'state': jnp.zeros(shape, jnp.float32)}
        if self.conv is not None:
            cache['conv'] = self.conv.init_state(batch_size)
        return cache

    def decode(self, x: jax.Array, cache, position: jax.Array):
        del position
        q, k, v = self._qkv(x)
        o, state = self._attend(
            q, k, v, initial_state=cache['state'], output_final_state=True, impl='recurrent'
        )
        new = {'state': state}
        dwc = None
        if self.conv is not None:
            dwc, new['conv'] = self.conv.decode(v.reshape(x.shape[0], 1, -1), cache['conv'])
        return self._out(o, dwc), new
