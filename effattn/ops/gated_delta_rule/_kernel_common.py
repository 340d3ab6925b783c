"""Helpers shared by the gated delta rule's Pallas kernels (pallas.py, _wy_kernel.py); Triton-lowering safe."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:  # jax 0.10 / 0.11: Triton-specific compiler parameters
    from jax.experimental.pallas import triton as _plgpu
    _CompilerParams = getattr(_plgpu, 'CompilerParams', None) or _plgpu.TritonCompilerParams
except (ImportError, AttributeError):  # pragma: no cover
    _CompilerParams = None

_F32 = jnp.float32
_LOG2E = 1.4426950408889634


def _next_pow2(n: int, lo: int = 16) -> int:
    return max(lo, 1 << (int(n) - 1).bit_length())


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


def _nn(a, b, ctx):  # a @ b
    return _dot(a, b, 1, 0, ctx)


def _nt(a, b, ctx):  # a @ b^T
    return _dot(a, b, 1, 1, ctx)


def _tn(a, b, ctx):  # a^T @ b
    return _dot(a, b, 0, 0, ctx)


class _Gates:
    """Chunk-local log decays of one chunk from g [C] fp32, in base 2 (one exp2 each), by masked sums."""

    def __init__(self, g, ctx: _Ctx):
        c = g.shape[0]
        g = g * _LOG2E
        idx = jnp.arange(c, dtype=jnp.int32)
        self.row, self.col = idx[:, None], idx[None, :]
        upto = jnp.where(self.col <= self.row, g[None, :], 0.0)
        self.gi = jnp.sum(upto, axis=1)                                              # G_i
        self.rj = jnp.sum(jnp.where(self.col > self.row, g[None, :], 0.0), axis=1)  # G_C - G_j
        self.gl = jnp.sum(g)                                                         # G_C
        if ctx.fp32:  # segment sums term by term (an exact 0/1 dot): no cancellation in G_i - G_j
            self._log = _dot(upto, (self.row > self.col).astype(_F32), 1, 0, ctx)
        else:
            self._log = self.gi[:, None] - self.gi[None, :]

    def gamma(self):
        return jnp.exp2(jnp.where(self.row >= self.col, self._log, -jnp.inf))


def _chunk_slice(c, size):
    return pl.ds(pl.multiple_of(c * size, size), size)


# ----------------------------------------------------------------------------------------------------


def _params(interpret, ctx: _Ctx, num_warps, num_stages):
    if interpret or _CompilerParams is None:
        return {}
    if ctx.fp32:  # fp32 tiles are twice as large (shared memory; see simple_gla/pallas.py)
        num_stages = min(num_stages, 2)
    return {'compiler_params': _CompilerParams(num_warps=num_warps, num_stages=num_stages)}

