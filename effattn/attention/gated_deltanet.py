"""Gated DeltaNet module (Yang, Kautz, Hatamizadeh 2025, ICLR, arXiv 2412.06464), ALGORITHMS.md section 6."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from effattn.attention.base import linear
from effattn.attention.deltanet import DeltaNet
from effattn.attention.gated_norm import GatedRMSNorm
from effattn.attention.registry import register
from effattn.config import ModelConfig
from effattn.ops.gated_delta_rule import REGISTRY, gated_delta_rule

A_INIT_RANGE = (0.0, 16.0)  # A ~ U(0, 16), A_log = log A
DT_RANGE = (1e-3, 0.1)  # dt log-uniform, dt_bias = softplus^-1(dt)
DT_FLOOR = 1e-4


@register('gated_deltanet')
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet layer (fla layers/gated_deltanet.py): S_t = a_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t.

    As DeltaNet (short conv + silu on q, k, v; L2-normalised q, k; beta = sigmoid(x W_b)) plus the
    log decay g = -exp(A_log) * softplus(x W_a + dt_bias) per head (Mamba-2 style) and the output
    gate W_o(RMSNorm_head(o) * silu(x W_g)). A_log and dt_bias are vectors, so the optimizer's
    matrices-only weight decay leaves them alone (fla marks them _no_weight_decay).
    """

    op_registry = REGISTRY

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, train_len: int, rngs: nnx.Rngs):
        super().__init__(cfg, layer_idx, train_len=train_len, rngs=rngs)
        h = self.num_heads
        self.wa = linear(cfg.d_model, h, cfg, rngs)
        a = jax.random.uniform(rngs.params(), (h,), jnp.float32, *A_INIT_RANGE)
        self.A_log = nnx.Param(jnp.log(a))
        lo, hi = math.log(DT_RANGE[0]), math.log(DT_RANGE[1])
        dt = jnp.exp(jax.random.uniform(rngs.params(), (h,), jnp.float32, lo, hi))
        dt = jnp.maximum(dt, DT_FLOOR)
        self.dt_bias = nnx.Param(dt + jnp.log(-jnp.expm1(-dt)))  # softplus^-1(dt)

    def _init_output(self, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
        self.wg = linear(cfg.d_model, self.num_heads * self.head_v, cfg, rngs)
        self.o_norm = GatedRMSNorm(self.head_v, eps=cfg.norm_eps)

    def _log_decay(self, x: jax.Array) -> jax.Array:
        """g [B, T, H] fp32 = -exp(A_log) * softplus(x W_a + dt_bias) <= 0."""
        dt = jax.nn.softplus(self.wa(x).astype(jnp.float32) + self.dt_bias[...])
        return -jnp.exp(self.A_log[...]) * dt

    def _attend(self, q, k, v, x, **op_kwargs):
        return gated_delta_rule(q, k, v, self._log_decay(x), self._beta(x), **op_kwargs)

    def _out(self, o: jax.Array, x: jax.Array) -> jax.Array:
        b, t = o.shape[:2]
        gate = self.wg(x).reshape(b, t, self.num_heads, self.head_v)
        return self.wo(self.o_norm(o.astype(self.dtype), gate).reshape(b, t, -1))
