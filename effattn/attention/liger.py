"""Liger attention: gated linear attention built from a softmax layer's own projections, mixed with
sliding-window softmax (Lan et al. 2025, arXiv 2503.01496; ALGORITHMS.md section 11)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention import kv_cache, linear_family
from effattn.attention.registry import register
from effattn.attention.rope import apply_rope
from effattn.attention.softmax import SoftmaxAttention
from effattn.config import Config, ConfigError, ModelConfig
from effattn.ops.gla import REGISTRY as GLA_REGISTRY
from effattn.ops.gla import gla
from effattn.ops.softmax_attention import softmax_attention


@register('liger_gla')
class LigerGLAAttention(SoftmaxAttention):
    """Liger GLA (Lan et al. 2025; OpenSparseLLMs/Linearization `liger_gla`): no new parameters.

    The softmax kind's W_q, W_k, W_v, W_o (GQA, q/k/v biases, QK-norm) copy over unchanged:
      q, k, v = x W_q, x W_k, x W_v (per head, before RoPE),
      g_t = logsigmoid(x_t W_k) / gate_logit_normalizer (16): the gate is the pretrained key
        projection itself (Liger's Pool(x W_k) with output width = key width), per key channel,
      GLA branch: S_t = diag(exp g_t) S_{t-1} + phi(k_t)^T v_t, o_t = phi(q_t) S_t with
        phi = softmax over the head dim, scale 1, no RoPE, no normaliser (the gla op, impl =
        attention.impl),
      window = w > 0 (Liger attention): o = 0.5 GLA + 0.5 SWA, SWA = causal softmax attention over
        the last w keys (incl. self) with RoPE on the same q, k, v; window = 0: o = GLA alone,
    then W_o (no output norm). With GQA, k, v and g are repeated over their query heads.
    Decoding carries the GLA state [B, H, d, d] (fp32) and a ring buffer of the last w keys/values.
    """

    mix = 0.5  # weight of each branch when the window is on (Liger's 0.5 / 0.5)

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        super().__init__(cfg, layer_idx, train_len=train_len, rngs=rngs)
        self.chunk_size = cfg.attention.chunk_size
        self.gate_logit_normalizer = cfg.attention.gate_logit_normalizer

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        a = cfg.model.attention
        if a.sinks:
            raise ConfigError(
                'config.model.attention.sinks: liger_gla has no attention sinks (the GLA branch '
                'serves keys before the window); set it to 0'
            )
        linear_family.check_impl(cfg, 'liger_gla', GLA_REGISTRY)
        if not a.gate_logit_normalizer > 0:
            raise ConfigError(
                'config.model.attention.gate_logit_normalizer: must be > 0, '
                f'got {a.gate_logit_normalizer}'
            )

    def _repeat(self, x: jax.Array) -> jax.Array:
        """[B, T, Hkv, *] -> [B, T, H, *]: kv head h // (H / Hkv) for query head h."""
        return jnp.repeat(x, self.num_heads // self.num_kv_heads, axis=2)

    def _branches(self, x: jax.Array, positions: jax.Array):
        """(GLA inputs phi(q), phi(k), v, g per query head; SWA inputs q, k, v with RoPE)."""
        b, t, _ = x.shape
        h, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.wq(x).reshape(b, t, h, d)
        k_proj = self.wk(x).reshape(b, t, hkv, d)
        v = self.wv(x).reshape(b, t, hkv, d)
        g = jax.nn.log_sigmoid(k_proj.astype(jnp.float32)) / self.gate_logit_normalizer
        k = k_proj
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        fq = jax.nn.softmax(q.astype(jnp.float32), axis=-1)
        fk = jax.nn.softmax(k.astype(jnp.float32), axis=-1)
        linear = (fq, self._repeat(fk), self._repeat(v), self._repeat(g))
        if self.rope:
            q, k = (
                apply_rope(q, positions, self.rope_theta),
                apply_rope(k, positions, self.rope_theta),
            )
        return linear, (q, k, v)

    def _out(self, o: jax.Array) -> jax.Array:
        b, t = o.shape[:2]
        return self.wo(o.astype(self.dtype).reshape(b, t, -1))

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        (fq, fk, v, g), (q, k, vs) = self._branches(x, positions)
        o, _ = gla(
            fq,
            fk,
            v.astype(jnp.float32),
            g,
            scale=1.0,
            segment_ids=segment_ids,
            impl=self.impl,
            chunk_size=self.chunk_size,
        )
        if self.window:
            swa = softmax_attention(
                q, k, vs, causal=True, window=self.window, segment_ids=segment_ids
            )
            o = self.mix * o + self.mix * swa.astype(jnp.float32)
        return self._out(o)

    def init_cache(self, batch_size: int, max_len: int):
        d = self.head_dim
        cache = {'state': jnp.zeros((batch_size, self.num_heads, d, d), jnp.float32)}
        if self.window:
            cache['kv'] = kv_cache.init_kv_cache(
                batch_size, max_len, self.num_kv_heads, d, d, self.dtype, window=self.window
            )
        return cache

    def decode(self, x: jax.Array, cache, position: jax.Array):
        b = x.shape[0]
        pos = jnp.asarray(position, jnp.int32)
        (fq, fk, v, g), (q, k, vs) = self._branches(x, jnp.full((b, 1), pos, jnp.int32))
        o, state = gla(
            fq,
            fk,
            v.astype(jnp.float32),
            g,
            scale=1.0,
            initial_state=cache['state'],
            output_final_state=True,
            impl='recurrent',
        )
        new_cache = {'state': state}
        if self.window:
            kv = kv_cache.append(cache['kv'], k, vs, pos)
            swa = kv_cache.attend_cache(
                q, kv, pos, scale=self.head_dim**-0.5, sinks=0, weights_fn=self._cache_weights
            )
            o = self.mix * o + self.mix * swa
            new_cache['kv'] = kv
        return self._out(o), new_cache
