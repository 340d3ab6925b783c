"""Helpers shared by the gated delta rule's Pallas kernels (pallas.py, _wy_kernel.py); Triton-lowering safe."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import CompilerParams as _CompilerParams
from effattn.ops.common.pallas_triton import Gates, NoGates


@dataclasses.dataclass(frozen=True)
class _Ctx:
    dt: object      # dtype of the kernel dot operands
    scale: float
    chunk: int
    gated: bool = True  # False (DeltaNet): g is all zeros; the kernels skip the gate math and dg
    cumulative: bool = False  # the g refs hold G, the chunk-local cumsum of g log2 e (KernelConfig.gate_cumsum)

    @property
    def fp32(self) -> bool:
        return self.dt == jnp.float32

    @property
    def prec(self):
        return jax.lax.Precision.HIGHEST if self.fp32 else None

    @property
    def xla_prec(self):
        """Precision of the XLA (fp32) parts: IEEE for fp32 inputs, the default (TF32 on GPU) for bf16."""
        return jax.lax.Precision.HIGHEST if self.fp32 else jax.lax.Precision.DEFAULT


def chunk_gates(g_ref, rows, ctx: _Ctx, fp32: bool | None = None):
    """Gates of the chunk rows `rows` (a ref index) of g_ref, or NoGates (nothing loaded) when not ctx.gated."""
    if not ctx.gated:
        return NoGates(ctx.chunk)
    return Gates(g_ref[rows], ctx.fp32 if fp32 is None else fp32, cumulative=ctx.cumulative)


def _dot(a, b, ca: int, cb: int, ctx: _Ctx):
    """Contracts a's axis ca with b's axis cb, both cast to ctx.dt; fp32 result."""
    return jax.lax.dot_general(a.astype(ctx.dt), b.astype(ctx.dt), (((ca,), (cb,)), ((), ())),
                               precision=ctx.prec, preferred_element_type=_F32)


def _wide(a, b, ca: int, cb: int, ctx: _Ctx):
    """As _dot with fp32 operands: IEEE for fp32 inputs, TF32 on the GPU for bf16 (where the backward needs
    more than bf16 operands to stay within the bf16 tolerance)."""
    prec = jax.lax.Precision.HIGHEST if ctx.fp32 else jax.lax.Precision.DEFAULT
    return jax.lax.dot_general(a.astype(_F32), b.astype(_F32), (((ca,), (cb,)), ((), ())), precision=prec,
                               preferred_element_type=_F32)


def _nn(a, b, ctx):  # a @ b
    return _dot(a, b, 1, 0, ctx)


def _nt(a, b, ctx):  # a @ b^T
    return _dot(a, b, 1, 1, ctx)


def _tn(a, b, ctx):  # a^T @ b
    return _dot(a, b, 0, 0, ctx)


def _nn32(a, b, ctx):
    return _wide(a, b, 1, 0, ctx)


def _nt32(a, b, ctx):
    return _wide(a, b, 1, 1, ctx)


def _tn32(a, b, ctx):
    return _wide(a, b, 0, 0, ctx)


def _nn_split(a, b, ctx):
    """a @ b for a in the dot dtype (exact there) and fp32 b: b split into two bf16 halves (~16 bits),
    no fp32 copy of a (registers)."""
    if ctx.fp32:
        return _nn32(a, b, ctx)
    hi = b.astype(ctx.dt)
    return _nn(a, hi, ctx) + _nn(a, b - hi.astype(_F32), ctx)


def _straddle_sum(pair, node, row, col, ctx: _Ctx):
    """dg_l = Σ_{i>=l>j} pair_ij + Σ_{i>=l} node_i (pair: cotangents of G_i - G_j; node: of G_i)."""
    before = (row < col).astype(_F32)                           # [j, l] = j < l
    straddle = _nn32(pair, before, ctx)                         # [i, l] = Σ_{j<l} pair_ij (IEEE dots of
    # K = 64 run on the FMA units with [4, 64] + [64, 4] operand slices per thread: spills; TF32 in bf16)
    return jnp.sum(jnp.where(row >= col, straddle + node[:, None], 0.0), axis=0)


# ----------------------------------------------------------------------------------------------------


def _params(interpret, ctx: _Ctx, num_warps, num_stages):
    if interpret or _CompilerParams is None:
        return {}
    if ctx.fp32:  # fp32 tiles are twice as large (shared memory; see simple_gla/pallas.py)
        num_stages = min(num_stages, 2)
    return {'compiler_params': _CompilerParams(num_warps=num_warps, num_stages=num_stages)}

