"""Helpers shared by the gated delta rule's Pallas kernels (pallas.py, _wy_kernel.py); Triton-lowering safe."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import CompilerParams as _CompilerParams


@dataclasses.dataclass(frozen=True)
class _Ctx:
    dt: object      # dtype of the kernel dot operands
    scale: float
    chunk: int

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


# ----------------------------------------------------------------------------------------------------


def _params(interpret, ctx: _Ctx, num_warps, num_stages):
    if interpret or _CompilerParams is None:
        return {}
    if ctx.fp32:  # fp32 tiles are twice as large (shared memory; see simple_gla/pallas.py)
        num_stages = min(num_stages, 2)
    return {'compiler_params': _CompilerParams(num_warps=num_warps, num_stages=num_stages)}

