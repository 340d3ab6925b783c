"""Decoder-only LM: pre-norm blocks of (attention of any registered kind, SwiGLU or no MLP).

`config.model.layers` gives the kind per layer (hybrid stacks); every kind decodes with its own cache.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention import registry
from effattn.attention.base import dtype_of, linear
from effattn.attention.norms import RMSNorm
from effattn.config import ModelConfig, layer_kinds
from effattn.models.mlp import SwiGLU


class Block(nnx.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self, cfg: ModelConfig, layer_idx: int, kind: str, *, train_len: int, rngs: nnx.Rngs
    ):
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = registry.get(kind)(cfg, layer_idx, train_len=train_len, rngs=rngs)
        if cfg.mlp == 'swiglu':
            self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
            self.mlp = SwiGLU(cfg, rngs=rngs)
        else:
            self.mlp_norm = self.mlp = None

    def _mlp(self, x: jax.Array) -> jax.Array:
        return x if self.mlp is None else x + self.mlp(self.mlp_norm(x))

    def __call__(self, x, *, positions, segment_ids=None):
        x = x + self.attn(self.attn_norm(x), positions=positions, segment_ids=segment_ids)
        return self._mlp(x)

    def decode(self, x, cache, position):
        y, cache = self.attn.decode(self.attn_norm(x), cache, position)
        return self._mlp(x + y), cache


class DecoderLM(nnx.Module):
    """Token embedding, `num_layers` blocks, final RMSNorm, tied or untied output projection."""

    def __init__(self, cfg: ModelConfig, *, train_len: int, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype_of(cfg.compute_dtype)
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            embedding_init=nnx.initializers.normal(cfg.init_std),
            rngs=rngs,
        )
        self.blocks = nnx.List(
            [
                Block(cfg, i, kind, train_len=train_len, rngs=rngs)
                for i, kind in enumerate(layer_kinds(cfg))
            ]
        )
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        if cfg.tie_embeddings:
            self.head = None
        else:
            self.head = nnx.Linear(
                cfg.d_model,
                cfg.vocab_size,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nnx.initializers.normal(cfg.init_std),
                rngs=rngs,
            )
        if cfg.head == 'classify':
            self.classifier = linear(cfg.d_model, cfg.num_classes, cfg, rngs, use_bias=True)
        else:
            self.classifier = None

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final norm and output projection: hidden [..., D] -> logits [..., V] float32."""
        x = self.final_norm(hidden)
        logits = self.embed.attend(x) if self.head is None else self.head(x)
        return logits.astype(jnp.float32)

    def hidden(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """tokens [B, T] int -> last block's output [B, T, D] (before the final norm)."""
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, positions=positions, segment_ids=segment_ids)
        return x

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """tokens [B, T] int -> logits [B, T, V] float32."""
        return self.logits(self.hidden(tokens, positions=positions, segment_ids=segment_ids))

    def classify(self, tokens: jax.Array, *, pad_id: int = 0) -> jax.Array:
        """tokens [B, T] -> class logits [B, C] float32, pooling the final hidden states over
        non-pad tokens (`config.model.pool`: mean, or the last non-pad token; LRA's classifier)."""
        if self.classifier is None:
            raise ValueError("classify() needs config.model.head='classify'")
        mask = tokens != pad_id
        x = self.final_norm(self.hidden(tokens)).astype(jnp.float32)
        if self.cfg.pool == 'mean':
            pooled = jnp.sum(x * mask[..., None], axis=1) / jnp.maximum(
                mask.sum(1, keepdims=True), 1
            )
        else:
            last = jnp.maximum(mask.sum(1) - 1, 0)
            pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        return self.classifier(pooled.astype(self.dtype)).astype(jnp.float32)

    def init_cache(self, batch_size: int, max_len: int) -> list[Any]:
        return [block.attn.init_cache(batch_size, max_len) for block in self.blocks]

    def decode_step(
        self, tokens: jax.Array, cache: list[Any], position: jax.Array
    ) -> tuple[jax.Array, list[Any]]:
        """One token per sequence: tokens [B] at `position` -> logits [B, V] float32, new cache."""
        x = self.embed(tokens[:, None])
        new_cache = []
        for block, c in zip(self.blocks, cache):
            x, c = block.decode(x, c, position)
            new_cache.append(c)
        return self.logits(x)[:, 0], new_cache

    def state_size(self, max_len: int) -> int:
        """Decoding-state elements per sequence (KV cache or recurrent state), summed over layers."""
        return sum(block.attn.state_size(max_len) for block in self.blocks)
