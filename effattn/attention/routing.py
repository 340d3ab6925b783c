"""Routing Transformer attention (Roy et al. 2021, arXiv 2003.05997), causal and decodable (ALGORITHMS.md 8)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention import kv_cache
from effattn.attention.base import AttentionModule, dtype_of, linear, residual_out
from effattn.attention.registry import register
from effattn.attention.rope import apply_rope
from effattn.config import Config, ConfigError, ModelConfig
from effattn.ops.softmax_attention import REGISTRY as SOFTMAX_REGISTRY
from effattn.ops.softmax_attention import softmax_attention


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _heads_to_batch(x: jax.Array) -> jax.Array:
    """[B, T, R, D] -> [B * R, T, 1, D]: each routing head gets its own row (its own clusters)."""
    b, t, r, d = x.shape
    return jnp.moveaxis(x, 2, 1).reshape(b * r, t, 1, d)


@register('routing')
class RoutingAttention(AttentionModule):
    """Routing attention: `local_heads` heads of local causal softmax attention (RoPE, window =
    `window`, 0 = full causal), the other heads route by online k-means; outputs concatenated, W_o.

    Routing head r: one shared projection u = x W_qk (shared QK, as in the paper's LM setting),
    x_hat = u / ||u||; cluster(t) = argmax_c x_hat_t . mu_c with centroids mu [R, n_c, d], a
    non-trainable nnx.BatchStat (no gradient, not seen by the optimizer). Query t attends with logits
    s u_t . x_hat_s to the keys s <= t of its own cluster (and its packed segment); itself always
    included, so no row is empty and no memory key or self-mask is needed.

    Adaptation (ours; the paper and lucidrains differ): the paper's balanced top-w assignment picks,
    per centroid, the w tokens most similar to it over the *whole* sequence, so whether key s is in
    query t's cluster depends on tokens after t: it is not causal and cannot be decoded token by
    token. Here the argmax assignment is used for training and decoding alike, so generating with a
    full KV cache (plus each key's cluster id) equals the full forward exactly and nothing leaks
    from the future; clusters are unbalanced (a query sees every earlier key of its cluster, so the
    cost stays O(T^2) with dense masking; only the attention pattern is sparse).

    Training: the forward sows (nnx.Intermediate) `aux_loss` = commitment_weight * MSE(x_hat,
    mu[cluster]) (gradient to x_hat only), which the train step adds to the loss, and the k-means
    statistics (per-cluster sums of x_hat and counts), which the train step hands to
    `post_step_update` after the optimizer step: mu <- decay mu + (1 - decay) normalize(sum)
    (clusters that got no token keep mu). Centroids start as random unit vectors (lucidrains
    initialises with k-means on the first batch; not done here).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        del layer_idx, train_len
        a = cfg.attention
        self.num_heads = a.num_heads
        self.local_heads = a.local_heads
        self.routing_heads = a.num_heads - a.local_heads
        self.head_dim = hd = a.head_dim or cfg.d_model // a.num_heads
        self.num_clusters = a.num_clusters
        self.window, self.impl = a.window, a.impl
        self.rope, self.rope_theta = a.rope, a.rope_theta
        self.commitment_weight, self.centroid_decay = a.commitment_weight, a.centroid_decay
        self.dtype = dtype_of(cfg.compute_dtype)
        lh, rh = self.local_heads, self.routing_heads
        if lh:
            self.wq = linear(cfg.d_model, lh * hd, cfg, rngs)
            self.wk = linear(cfg.d_model, lh * hd, cfg, rngs)
        else:
            self.wq = self.wk = None
        self.wqk = linear(cfg.d_model, rh * hd, cfg, rngs)
        self.wv = linear(cfg.d_model, a.num_heads * hd, cfg, rngs)
        self.wo = residual_out(a.num_heads * hd, cfg, rngs)
        mu = jax.random.normal(rngs.params(), (rh, self.num_clusters, hd), jnp.float32)
        self.centroids = nnx.BatchStat(_l2_normalize(mu))

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        a = cfg.model.attention
        if not 0 <= a.local_heads < a.num_heads:
            raise ConfigError(
                f'config.model.attention.local_heads: routing needs 0 <= local_heads < num_heads='
                f'{a.num_heads} (at least one routing head), got {a.local_heads}'
            )
        if a.num_clusters < 1:
            raise ConfigError(
                f'config.model.attention.num_clusters: must be >= 1, got {a.num_clusters}'
            )
        if not a.commitment_weight >= 0:
            raise ConfigError(
                f'config.model.attention.commitment_weight: must be >= 0, got {a.commitment_weight}'
            )
        if not 0 <= a.centroid_decay < 1:
            raise ConfigError(
                f'config.model.attention.centroid_decay: must be in [0, 1), got {a.centroid_decay}'
            )
        if a.num_kv_heads not in (0, a.num_heads):
            raise ConfigError(
                'config.model.attention.num_kv_heads: routing attention has no grouped key/value '
                f'heads; set it to 0 or num_heads={a.num_heads}, got {a.num_kv_heads}'
            )
        if a.sinks:
            raise ConfigError('config.model.attention.sinks: routing attention has no sinks; set 0')
        supported = ['auto'] + SOFTMAX_REGISTRY.names
        if a.impl not in supported:
            raise ConfigError(
                f'config.model.attention.impl: routing attention (softmax_attention) supports impl '
                f'in {supported}, got {a.impl!r}'
            )

    # -- pieces shared by training and decoding ------------------------------------------------
    def _project(self, x: jax.Array, positions: jax.Array):
        """(q_local, k_local, u, x_hat, v): local heads with RoPE, routing heads' shared QK."""
        b, t, _ = x.shape
        hd = self.head_dim
        v = self.wv(x).reshape(b, t, self.num_heads, hd)
        q_l = k_l = None
        if self.local_heads:
            q_l = self.wq(x).reshape(b, t, self.local_heads, hd)
            k_l = self.wk(x).reshape(b, t, self.local_heads, hd)
            if self.rope:
                q_l = apply_rope(q_l, positions, self.rope_theta)
                k_l = apply_rope(k_l, positions, self.rope_theta)
        u = self.wqk(x).reshape(b, t, self.routing_heads, hd)
        x_hat = _l2_normalize(u)
        return q_l, k_l, u, x_hat, v

    def _assign(self, x_hat: jax.Array) -> jax.Array:
        """[B, T, R, d] -> cluster ids [B, T, R] int32 (argmax of x_hat . mu; mu gets no gradient)."""
        mu = jax.lax.stop_gradient(self.centroids[...])
        sim = jnp.einsum('BTRD,RCD->BTRC', jax.lax.stop_gradient(x_hat), mu)
        return jnp.argmax(sim, axis=-1).astype(jnp.int32)

    def _out(self, o: jax.Array) -> jax.Array:
        b, t = o.shape[:2]
        return self.wo(o.astype(self.dtype).reshape(b, t, -1))

    # -- training ------------------------------------------------------------------------------
    def _sow(self, name: str, value: Any) -> None:
        """Records `value` for the train step, which runs the forward under nnx.capture; outside a
        capture (inference, decoding, notebooks) nothing is recorded and the module is unchanged
        (a bare sow() would add an attribute to the module)."""
        if hasattr(self, '__captures__'):  # set by nnx.capture on every module while it runs
            self.sow(nnx.Intermediate, name, value)

    def _sow_kmeans(self, x_hat, cluster, segment_ids) -> None:
        """Commitment loss (`aux_loss`, summed into the loss by the train step) and k-means stats."""
        if not hasattr(self, '__captures__'):
            return
        mu = jax.lax.stop_gradient(self.centroids[...])
        valid = jnp.ones(cluster.shape[:2], jnp.float32)
        if segment_ids is not None:
            valid = (segment_ids != 0).astype(jnp.float32)
        onehot = jax.nn.one_hot(cluster, self.num_clusters, dtype=jnp.float32)
        mu_t = jnp.einsum('BTRC,RCD->BTRD', onehot, mu)
        err = jnp.sum(jnp.square(x_hat - mu_t), axis=-1) * valid[..., None]  # [B, T, R]
        count = jnp.maximum(jnp.sum(valid), 1.0) * self.routing_heads * self.head_dim
        self._sow('aux_loss', self.commitment_weight * jnp.sum(err) / count)
        onehot = onehot * valid[..., None, None]
        xs = jax.lax.stop_gradient(x_hat)
        self._sow('centroid_sums', jnp.einsum('BTRC,BTRD->RCD', onehot, xs))
        self._sow('centroid_counts', jnp.sum(onehot, axis=(0, 1)))

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        b, t, _ = x.shape
        q_l, k_l, u, x_hat, v = self._project(x, positions)
        cluster = self._assign(x_hat)
        self._sow_kmeans(x_hat, cluster, segment_ids)
        outs = []
        if self.local_heads:
            outs.append(
                softmax_attention(
                    q_l,
                    k_l,
                    v[:, :, : self.local_heads],
                    causal=True,
                    window=self.window or None,
                    segment_ids=segment_ids,
                    impl=self.impl,
                )
            )
        # routing heads: one row per (b, head), segment id = (packed segment, cluster), 0 = padding
        seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
        ids = jnp.where(seg[..., None] == 0, 0, seg[..., None] * self.num_clusters + cluster + 1)
        o_r = softmax_attention(
            _heads_to_batch(u.astype(jnp.float32)),
            _heads_to_batch(x_hat),
            _heads_to_batch(v[:, :, self.local_heads :]),
            causal=True,
            scale=self.head_dim**-0.5,
            segment_ids=jnp.moveaxis(ids, 2, 1).reshape(b * self.routing_heads, t),
            impl=self.impl,
        )
        o_r = jnp.moveaxis(o_r.reshape(b, self.routing_heads, t, -1), 1, 2)
        outs.append(o_r.astype(v.dtype))
        return self._out(jnp.concatenate(outs, axis=2))

    def post_step_update(self, sown: dict[str, Any]) -> None:
        """Called by the train step after the optimizer step, outside autodiff, with the values this
        module sowed in the step's forward: the EMA k-means update of the centroids (ALGORITHMS.md
        8). Several forward calls in one step pool their statistics."""
        sums = sum(jax.tree.leaves(sown['centroid_sums']))
        counts = sum(jax.tree.leaves(sown['centroid_counts']))
        mu = self.centroids[...]
        new = jnp.where(counts[..., None] > 0, _l2_normalize(sums), mu)
        self.centroids[...] = self.centroid_decay * mu + (1.0 - self.centroid_decay) * new

    # -- decoding ------------------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_len: int):
        hd, rh = self.head_dim, self.routing_heads
        cache = {
            'route': kv_cache.init_kv_cache(batch_size, max_len, rh, hd, hd, jnp.float32),
            'cluster': jnp.zeros((batch_size, max_len, rh), jnp.int32),
        }
        if self.local_heads:
            cache['local'] = kv_cache.init_kv_cache(
                batch_size, max_len, self.local_heads, hd, hd, self.dtype, window=self.window
            )
        return cache

    def decode(self, x: jax.Array, cache, position: jax.Array):
        """One token with a full KV cache: local heads as softmax attention; routing heads attend to
        the cached keys (self included) whose cluster equals the new token's cluster."""
        b = x.shape[0]
        positions = jnp.full((b, 1), position, jnp.int32)
        q_l, k_l, u, x_hat, v = self._project(x, positions)
        cluster = self._assign(x_hat)  # [B, 1, R]
        new = {}
        outs = []
        if self.local_heads:
            new['local'] = kv_cache.append(
                cache['local'], k_l, v[:, :, : self.local_heads], position
            )
            outs.append(
                kv_cache.attend_cache(
                    q_l,
                    new['local'],
                    position,
                    scale=self.head_dim**-0.5,
                    sinks=0,
                    weights_fn=lambda s, m: jax.nn.softmax(jnp.where(m, s, -jnp.inf), axis=-1),
                )
            )
        route = kv_cache.append(cache['route'], x_hat, v[:, :, self.local_heads :], position)
        zero = jnp.zeros((), jnp.int32)
        clusters = jax.lax.dynamic_update_slice(
            cache['cluster'], cluster, (zero, jnp.asarray(position, jnp.int32), zero)
        )
        new['route'], new['cluster'] = route, clusters
        scores = (
            jnp.einsum('BQRD,BSRD->BRQS', u.astype(jnp.float32), route['k']) * self.head_dim**-0.5
        )
        s_idx = jnp.arange(route['k'].shape[1])
        mask = (s_idx <= position)[None, None, None, :] & (
            jnp.moveaxis(clusters, 1, 2)[:, :, None, :] == jnp.moveaxis(cluster, 1, 2)[..., None]
        )
        w = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
        outs.append(jnp.einsum('BRQS,BSRV->BQRV', w, route['v']).astype(jnp.float32))
        o = jnp.concatenate([o.astype(jnp.float32) for o in outs], axis=2)
        return self._out(o), new
