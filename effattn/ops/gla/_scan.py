"""Chunk-local cumulative sums for the GLA kernels as Pallas kernels (grid (B, H, N): one chunk of C rows each).

Why not jnp.cumsum: on GPU it lowers to a reduce-window (C reads per output element, strided by H K), for arrays
as large as q. Here a cumulative sum over the C rows of a chunk is a dot with a 0/1 triangular matrix; the fp32
operand is split into three bf16 parts (x = x1 + x2 + x3 to ~2^-24, each product with 0/1 exact), so three
tensor-core dots with fp32 accumulation give fp32 accuracy for bf16 and fp32 inputs alike.
  gates:     G = L (g log2 e),                        L_ij = [j <= i]   (the chunk's inclusive cumsum, base 2)
  gate grad: dg = U x_q + L' y + off,                 U_ij = [j >= i], L'_ij = [j < i]
(x_q, y and off as in pallas.py: reverse cumsum of x_q, exclusive cumsum of y, plus one row of offsets per chunk.)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.pallas_triton import F32, LOG2E
from effattn.ops.common.pallas_triton import CompilerParams as _CompilerParams

_BF16 = jnp.bfloat16


def _tri(c, keep):
  idx = jnp.arange(c, dtype=jnp.int32)
  return keep(idx[:, None], idx[None, :]).astype(_BF16)


def sum_rows(m, x, parts: int = 3):
  """m [C, C] 0/1 (bf16) times x [C, K] fp32, to fp32 accuracy (x split in `parts` bf16 parts: 3 to ~2^-24, 2 to
  ~2^-17)."""
  out = None
  for _ in range(parts):
    p = x.astype(_BF16)
    d = jax.lax.dot_general(m, p, (((1,), (0,)), ((), ())), preferred_element_type=F32)
    out = d if out is None else out + d
    x = x - p.astype(F32)
  return out


def _over_slices(kp, body, width):
  """body(cs) for the column slices cs of the given width (bounds the fp32 tiles in registers)."""
  w = min(width, kp)

  def step(t, carry):
    body(pl.ds(pl.multiple_of(t * w, w), w))
    return carry
  jax.lax.fori_loop(0, kp // w, step, 0)


def _gates_kernel(g_ref, o_ref, *, width: int):
  c, kp = g_ref.shape
  lower = _tri(c, lambda i, j: j <= i)

  def body(cs):
    o_ref[:, cs] = sum_rows(lower, g_ref[:, cs].astype(F32) * LOG2E)
  _over_slices(kp, body, width)


def _dg_kernel(xq_ref, y_ref, off_ref, o_ref, *, width: int, parts: int):
  c, kp = xq_ref.shape
  upper, strict = _tri(c, lambda i, j: j >= i), _tri(c, lambda i, j: j < i)

  def body(cs):
    dg = sum_rows(upper, xq_ref[:, cs], parts) + sum_rows(strict, y_ref[:, cs], parts) + off_ref[:, cs]
    o_ref[:, cs] = dg.astype(o_ref.dtype)
  _over_slices(kp, body, width)


def _params(interpret, num_warps):
  if interpret or _CompilerParams is None:
    return {}
  return {'compiler_params': _CompilerParams(num_warps=num_warps, num_stages=2)}


def _spec(rows, cols):
  return pl.BlockSpec((None, rows, None, cols), lambda b, h, n, j: (b, n, h, j))


def _grid(b, tp, h, kp, chunk, block_k):
  """(grid, columns per program): one program per (batch, head, chunk, block_k columns; None: all)."""
  cols = min(block_k or kp, kp)
  return (b, h, tp // chunk, kp // cols), cols


def chunk_gates(g, chunk, interpret, *, width: int = 32, num_warps: int = 4, block_k: int | None = None):
  """G [B,Tp,H,Kp] fp32: chunk-local inclusive cumsum of g log2(e). width: columns per step (bounds the fp32 tiles
  in registers); block_k: columns per program (None: all Kp)."""
  b, tp, h, kp = g.shape
  grid, cols = _grid(b, tp, h, kp, chunk, block_k)
  return pl.pallas_call(
      functools.partial(_gates_kernel, width=width), grid=grid, in_specs=[_spec(chunk, cols)],
      out_specs=_spec(chunk, cols),
      out_shape=jax.ShapeDtypeStruct((b, tp, h, kp), F32), interpret=interpret, name='gla_gates',
      **_params(interpret, num_warps))(g)


def chunk_dg(xq, y, off, chunk, dtype, interpret, *, width: int = 32, num_warps: int = 4, parts: int = 3,
             block_k: int | None = None):
  """dg [B,Tp,H,Kp] in dtype: reverse cumsum of xq plus exclusive cumsum of y within chunks, plus off [B,N,H,Kp]
  (one row per chunk). parts: bf16 parts of each fp32 operand (sum_rows); block_k as chunk_gates'."""
  b, tp, h, kp = xq.shape
  grid, cols = _grid(b, tp, h, kp, chunk, block_k)
  return pl.pallas_call(
      functools.partial(_dg_kernel, width=width, parts=parts), grid=grid,
      in_specs=[_spec(chunk, cols), _spec(chunk, cols), _spec(1, cols)], out_specs=_spec(chunk, cols),
      out_shape=jax.ShapeDtypeStruct((b, tp, h, kp), dtype), interpret=interpret, name='gla_dg',
      **_params(interpret, num_warps))(xq, y, off)
