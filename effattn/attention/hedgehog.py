"""Hedgehog linear attention, optionally mixed with sliding-window softmax as in LoLCATs
(ALGORITHMS.md sections 3 and 11)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention import feature_maps, kv_cache, linear_family
from effattn.attention.registry import register
from effattn.attention.short_conv import segment_runs
from effattn.attention.softmax import SoftmaxAttention
from effattn.config import Config, ConfigError, ModelConfig
from effattn.ops.linear_attn import REGISTRY as LINEAR_REGISTRY
from effattn.ops.linear_attn import linear_attn


def _delay(x: jax.Array, window: int, segment_ids: jax.Array | None) -> jax.Array:
    """x [B, T, ...] moved `window` steps later along T (zeros first): row p holds x_{p - window}.

    With segment_ids, rows whose source token lies in an earlier packed segment are zeroed, so the op
    (which resets its state wherever the id changes) never mixes segments.
    """
    t = x.shape[1]
    pad = [(0, 0), (window, 0)] + [(0, 0)] * (x.ndim - 2)
    y = jnp.pad(x, pad)[:, :t]
    if segment_ids is not None:
        runs = segment_runs(segment_ids)
        src = jnp.pad(runs, ((0, 0), (window, 0)), constant_values=-1)[:, :t]
        same = (src == runs).reshape(runs.shape + (1,) * (x.ndim - 2))
        y = jnp.where(same, y, jnp.zeros((), y.dtype))
    return y


def window_softmax_terms(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    window: int,
    *,
    scale: float,
    segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Un-normalised sliding-window softmax sums, shifted by each row's window maximum (LoLCATs).

    For query t and its window W_t = {j : t - window < j <= t} (same packed segment):
      c_t = max_{j in W_t} s q_t . k_j,  num_t = sum_{j in W_t} e^{s q_t . k_j - c_t} v_j,
      den_t = sum_{j in W_t} e^{s q_t . k_j - c_t}.
    q [B, T, H, D], k, v [B, T, Hkv, *] (GQA: query head h uses kv head h // (H / Hkv)).
    Returns num [B, T, H, V] and den [B, T, H, 1] in fp32. Computed blockwise: query block i of
    `window` rows against key blocks i-1 and i, so memory is O(T * window), not O(T^2).
    """
    b, t, h, d = q.shape
    hkv = k.shape[2]
    w = window
    n = -(-t // w)
    pad = n * w - t

    def blocks(x):  # [B, T, ...] -> [B, n, w, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, n, w, *x.shape[2:])

    def with_previous(x):  # key blocks i-1 and i for query block i: [B, n, 2w, ...]
        xb = blocks(x)
        prev = jnp.pad(xb, [(0, 0), (1, 0)] + [(0, 0)] * (xb.ndim - 2))[:, :-1]
        return jnp.concatenate([prev, xb], axis=2)

    f32 = jnp.float32
    qb = blocks(q.astype(f32)).reshape(b, n, w, hkv, h // hkv, d)
    kb, vb = with_previous(k.astype(f32)), with_previous(v.astype(f32))
    s = jnp.einsum('BNQHGD,BNKHD->BNHGQK', qb, kb, precision=jax.lax.Precision.HIGHEST) * scale
    # query t = i*w + a, key j = (i-1)*w + c: 0 <= t - j < w  <=>  a < c <= a + w; and j >= 0.
    a_idx, c_idx = jnp.arange(w)[:, None], jnp.arange(2 * w)[None, :]
    band = (c_idx > a_idx) & (c_idx <= a_idx + w)
    mask = band[None] & ((jnp.arange(n)[:, None, None] > 0) | (c_idx >= w)[None])  # [n, w, 2w]
    mask = mask[None, :, None, None]  # [1, n, 1, 1, w, 2w]
    if segment_ids is not None:
        runs = segment_runs(segment_ids)
        same = blocks(runs)[..., :, None] == with_previous(runs)[..., None, :]  # [B, n, w, 2w]
        mask = mask & same[:, :, None, None]
    # Every row keeps its own key (c = a + w), so the max is finite, padded rows included.
    s = jnp.where(mask, s, -jnp.inf)
    p = jnp.where(mask, jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)), 0.0)
    num = jnp.einsum('BNHGQK,BNKHV->BNQHGV', p, vb, precision=jax.lax.Precision.HIGHEST)
    den = jnp.moveaxis(jnp.sum(p, axis=-1), -1, 2)  # [B, n, w, Hkv, G]
    num = num.reshape(b, n * w, h, -1)[:, :t]
    den = den.reshape(b, n * w, h, 1)[:, :t]
    return num, den


@register('hedgehog')
class HedgehogAttention(SoftmaxAttention):
    """Hedgehog linear attention (Zhang et al. 2024, ICLR) with LoLCATs' sliding-window mix (Zhang
    et al. 2025, ICLR; HazyResearch/lolcats `LolcatsSlidingWindowAttention`,
    `hybrid_attention_quadratic`).

    q, k, v come from the softmax kind's own projection code (SoftmaxAttention._project: W_q
    [D, H*d], W_k, W_v [D, Hkv*d], GQA, optional QK-norm, RoPE on q and k) and the output from its
    W_o, so a softmax layer's parameters copy over unchanged. phi_q, phi_k are separate Hedgehog maps (`q_map`, `k_map`:
    [softmax(x W_h), softmax(-x W_h)], W [H, d, F] per head, identity at init; feature_maps.py),
    applied per query head to RoPE'd q and to k repeated over its query heads (as LoLCATs does).

    window = 0: o_t = sum_{j<=t} phi_q(q_t).phi_k(k_j) v_j / (sum_{j<=t} phi_q(q_t).phi_k(k_j) + eps).
    window = w > 0 (LoLCATs; keys t-w < j <= t get softmax scores, earlier keys linear scores, one
    normaliser):
      o_t = [g_h sum_{t-w<j<=t} e^{s q_t.k_j - c_t} v_j + sum_{j<=t-w} phi_q(q_t).phi_k(k_j) v_j]
            / [g_h sum_{t-w<j<=t} e^{s q_t.k_j - c_t} + sum_{j<=t-w} phi_q(q_t).phi_k(k_j)],
    c_t = the window's max logit, s = d^-0.5, g_h = sigmoid(window_factor[h]) learned per head,
    initialised to 0.1 (LoLCATs' init_window_factor = logit(0.1) = -2.197); linear factor 1 (LoLCATs'
    affine_attention_factors=False). The linear sums run through the linear_attn op (impl =
    attention.impl) on phi_k, [v, 1] delayed by w tokens; the window sums are a blockwise banded
    computation (window_softmax_terms): the softmax op returns normalised outputs only, while
    LoLCATs' single normaliser needs the raw sums shifted by c_t.

    Attention transfer (LoLCATs stage 1) trains only FEATURE_PARAMS (`q_map`, `k_map` and
    `window_factor`); everything else keeps the softmax layer's names and shapes.
    Decoding carries the fp32 linear state [B, H, 2F, d+1] (z in the last column) and, with a
    window, a ring buffer of the last w post-RoPE keys and values; each step first moves the token
    leaving the window (position - w) into the linear state, so decoding equals the forward.
    """

    FEATURE_PARAMS = ('q_map', 'k_map', 'window_factor')
    init_window_factor = 0.1  # sigmoid(window_factor) at init
    eps = 1e-12  # added to the denominator (LoLCATs' eps); >= g_h with a window anyway

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        super().__init__(cfg, layer_idx, train_len=train_len, rngs=rngs)
        self.chunk_size = cfg.attention.chunk_size
        self.q_map = feature_maps.HedgehogFeatureMap(self.head_dim, cfg, rngs=rngs)
        self.k_map = feature_maps.HedgehogFeatureMap(self.head_dim, cfg, rngs=rngs)
        self.feature_dim = self.q_map.out_dim
        if self.window:
            g = self.init_window_factor
            logit = math.log(g / (1.0 - g))
            self.window_factor = nnx.Param(jnp.full((self.num_heads,), logit, jnp.float32))
        else:
            self.window_factor = None

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        a = cfg.model.attention
        if a.sinks:
            raise ConfigError(
                'config.model.attention.sinks: hedgehog attention has no attention sinks (keys '
                'before the window are served by the linear part); set it to 0'
            )
        linear_family.check_impl(cfg, 'hedgehog', LINEAR_REGISTRY)
        feature_maps.check_feature_dim(cfg)

    def _repeat(self, x: jax.Array) -> jax.Array:
        """[B, T, Hkv, *] -> [B, T, H, *]: kv head h // (H / Hkv) for query head h."""
        return jnp.repeat(x, self.num_heads // self.num_kv_heads, axis=2)

    def _linear_inputs(self, k: jax.Array, v: jax.Array):
        """phi_k(k) per query head and [v, 1] (the ones column carries the denominator)."""
        vr = self._repeat(v)
        return self.k_map(self._repeat(k)), jnp.concatenate([vr, jnp.ones_like(vr[..., :1])], -1)

    def _gamma(self) -> jax.Array:
        return jax.nn.sigmoid(self.window_factor[...])  # [H]

    def _out(self, num: jax.Array, den: jax.Array) -> jax.Array:
        b, t = num.shape[:2]
        o = num / (den + self.eps)
        return self.wo(o.astype(self.dtype).reshape(b, t, -1))

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        q, k, v = self._project(x, positions)
        fq = self.q_map(q).astype(jnp.float32)  # fp32 q: the op returns num and den in fp32
        fk, v1 = self._linear_inputs(k, v)
        if self.window:
            fk, v1 = _delay(fk, self.window, segment_ids), _delay(v1, self.window, segment_ids)
        lin, _ = linear_attn(
            fq,
            fk,
            v1,
            scale=1.0,
            segment_ids=segment_ids,
            impl=self.impl,
            chunk_size=self.chunk_size,
        )
        num, den = lin[..., :-1], lin[..., -1:]
        if self.window:
            wnum, wden = window_softmax_terms(
                q, k, v, self.window, scale=self.head_dim**-0.5, segment_ids=segment_ids
            )
            gamma = self._gamma()[:, None]
            num, den = num + gamma * wnum, den + gamma * wden
        return self._out(num, den)

    def init_cache(self, batch_size: int, max_len: int):
        shape = (batch_size, self.num_heads, self.feature_dim, self.head_dim + 1)
        cache = {'state': jnp.zeros(shape, jnp.float32)}
        if self.window:  # the softmax kind's ring buffer of the last w keys/values (sinks are 0)
            cache['kv'] = super().init_cache(batch_size, max_len)
        return cache

    def decode(self, x: jax.Array, cache, position: jax.Array):
        b = x.shape[0]
        pos = jnp.asarray(position, jnp.int32)
        q, k, v = self._project(x, jnp.full((b, 1), pos, jnp.int32))
        if (
            self.window
        ):  # the token at pos - window leaves the window: its ring slot is pos % window
            slot = pos % self.window
            old_k = jax.lax.dynamic_slice_in_dim(cache['kv']['k'], slot, 1, axis=1)
            old_v = jax.lax.dynamic_slice_in_dim(cache['kv']['v'], slot, 1, axis=1)
            fk, v1 = self._linear_inputs(old_k, old_v)
            v1 = v1 * (pos >= self.window).astype(v1.dtype)  # nothing leaves before step `window`
        else:
            fk, v1 = self._linear_inputs(k, v)
        fq = self.q_map(q).astype(jnp.float32)
        lin, state = linear_attn(
            fq,
            fk,
            v1,
            scale=1.0,
            initial_state=cache['state'],
            output_final_state=True,
            impl='recurrent',
        )
        num, den = lin[..., :-1], lin[..., -1:]
        new_cache = {'state': state}
        if self.window:
            kv = kv_cache.append(cache['kv'], k, v, pos)
            g = self._gamma().reshape(self.num_kv_heads, -1, 1, 1)  # scores [B, Hkv, G, 1, S]

            def weights(scores, mask):
                s = jnp.where(mask, scores, -jnp.inf)
                return g * jnp.where(mask, jnp.exp(s - jnp.max(s, -1, keepdims=True)), 0.0)

            ones = jnp.ones_like(kv['v'][..., :1])
            ext = {'k': kv['k'], 'v': jnp.concatenate([kv['v'], ones], axis=-1)}
            o = kv_cache.attend_cache(
                q, ext, pos, scale=self.head_dim**-0.5, sinks=0, weights_fn=weights
            )
            num, den = num + o[..., :-1], den + o[..., -1:]
            new_cache['kv'] = kv
        return self._out(num, den), new_cache
