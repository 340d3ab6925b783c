"""Gated RMSNorm on attention outputs: RMSNorm_head(o) * act(gate) (GLA, Gated DeltaNet; fla FusedRMSNormGated)."""

from __future__ import annotations

import jax
from flax import nnx

from effattn.attention.norms import RMSNorm


class GatedRMSNorm(nnx.Module):
    """y = RMSNorm(o) * silu(gate) over the last axis (one gain of width `dim`, shared by all heads).

    silu = swish (Ramachandran et al. 2017): GLA's swish output gate (Yang et al. 2024, Sec. 4.4) and
    Gated DeltaNet's silu gate are the same function.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, rngs: nnx.Rngs | None = None):
        self.norm = RMSNorm(dim, eps=eps, rngs=rngs)

    def __call__(self, o: jax.Array, gate: jax.Array) -> jax.Array:
        return self.norm(o) * jax.nn.silu(gate.astype(o.dtype))
