"""TransNormerLLM / Lightning Attention layer-dependent decay rates (ALGORITHMS.md section 4)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def alibi_slopes(num_heads: int) -> np.ndarray:
  """ALiBi slopes (Press et al. 2022): s_h = 2^(-8(h+1)/H) for H a power of 2, else ALiBi's interleave rule.

  For other H: the slopes of the largest power of two P < H, then every other slope of 2P, up to H.
  """
  if num_heads < 1:
    raise ValueError(f'num_heads must be >= 1; got {num_heads}')
  if num_heads & (num_heads - 1) == 0:
    return 2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads)
  p = 2 ** math.floor(math.log2(num_heads))
  return np.concatenate([alibi_slopes(p), alibi_slopes(2 * p)[0::2][:num_heads - p]])


def transnormer_g_gamma(num_heads: int, layer_idx: int, num_layers: int) -> jax.Array:
  """g_gamma [H] for simple_gla: -s_h * (1 - l / (L - 1) + 1e-5), TransNormerLLM's layer scaling.

  Layer l (0-based) of L: the first layer decays fastest, the last barely at all (lambda = exp(g_gamma)).
  With L == 1 the single layer counts as the first (factor 1 + 1e-5; the reference divides by zero).
  Not fla's chunk_lightning_attn rule, which differs.
  """
  if num_layers < 1 or not 0 <= layer_idx < num_layers:
    raise ValueError(f'need 0 <= layer_idx < num_layers; got layer_idx={layer_idx}, num_layers={num_layers}')
  depth = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
  return jnp.asarray(-alibi_slopes(num_heads) * (1.0 - depth + 1e-5), jnp.float32)
