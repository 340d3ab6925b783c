"""Helpers shared by the Pallas kernels written for the Triton lowering (simple_gla, gla, the delta rules,
flash attention): launch parameters, padding to power-of-two blocks, chunk slices, chunk-local gates.

Everything here is Triton-lowering safe (no value slices, no cumsum) and also runs in interpret mode.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from effattn.ops.common.dispatch import default_backend

try:  # jax 0.10 / 0.11: Triton-specific compiler parameters and inline asm
    from jax.experimental.pallas import triton as _plgpu

    CompilerParams = getattr(_plgpu, 'CompilerParams', None) or _plgpu.TritonCompilerParams
    inline_asm = getattr(_plgpu, 'elementwise_inline_asm', None)
except (ImportError, AttributeError):  # pragma: no cover
    CompilerParams, inline_asm = None, None

F32 = jnp.float32
LOG2E = 1.4426950408889634


def checked_interpret(name: str, q, v, segment_ids, interpret: bool | None, max_head_dim: int = 128) -> bool:
    """The interpret flag of a call to a Triton-lowered kernel (None: interpret mode everywhere but on GPU), after
    the checks the linear kernels share. Raises NotImplementedError, so that impl='auto' falls back to 'chunk',
    for segment_ids, on TPU, and for head dims above max_head_dim (tiles and shared memory are sized for it)."""
    if segment_ids is not None:
        raise NotImplementedError(f'the {name} kernel does not support segment_ids')
    if interpret is None:
        if default_backend() == 'tpu':
            raise NotImplementedError(f'the {name} kernel has only a Triton (GPU) lowering')
        interpret = default_backend() != 'gpu'
    if max(q.shape[-1], v.shape[-1]) > max_head_dim:
        raise NotImplementedError(f'the {name} kernel takes head dims up to {max_head_dim}; '
                                  f'got K={q.shape[-1]}, V={v.shape[-1]}')
    return bool(interpret)


def checked_chunk(name: str, chunk: int, allowed: tuple, what: str = 'chunk_size') -> int:
    """chunk as an int, or NotImplementedError (impl='auto' falls back) naming `what` and the allowed sizes."""
    if int(chunk) not in allowed:
        raise NotImplementedError(f'the {name} kernel needs {what} in {allowed}; got {chunk}')
    return int(chunk)


def next_pow2(n: int, lo: int = 16) -> int:
    """The smallest power of two >= n and >= lo (Triton block shapes are powers of two)."""
    return max(lo, 1 << (int(n) - 1).bit_length())


def pad_axis(x, axis: int, size: int):
    """x zero-padded at the end of `axis` to `size` (no copy when it already has that size)."""
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def chunk_slice(c, size: int):
    """Rows [c * size, (c + 1) * size) of a ref, aligned for the Triton lowering."""
    return pl.ds(pl.multiple_of(c * size, size), size)


_RCP_MAGIC = 0x7EF311C3  # initial reciprocal guess from the exponent bits (max relative error ~12%)


def rcp_newton(x):
    """1 / x for x >= 1 (finite) with FMA-pipe ops only: bit-trick guess, two Newton steps (rel. error
    ~2e-4 < bf16's 2^-9), so a sigmoid costs one MUFU op per score like softmax's exp2. Plain lax ops: the
    Mosaic GPU sigmoid forward (sigmoid_attention/mosaic_gpu.py) uses it too."""
    r = jax.lax.bitcast_convert_type(jnp.int32(_RCP_MAGIC) - jax.lax.bitcast_convert_type(x, jnp.int32), F32)
    r = r * (2.0 - x * r)
    return r * (2.0 - x * r)


class Gates:
    """Chunk-local log decays of one chunk from g [C] fp32 (masked sums: Triton has no cumsum or slice).

    All in base 2 (g log2(e)), so that every decay is one exp2 (a single MUFU.EX2 on the GPU; __nv_expf
    costs ~10 instructions, and a chunk needs C^2 of them). Use `exp` below, not jnp.exp.
    """

    def __init__(self, g, fp32: bool, cumulative: bool = False):
        c = g.shape[0]
        idx = jnp.arange(c, dtype=jnp.int32)
        self.row, self.col = idx[:, None], idx[None, :]
        if cumulative:
            # g holds G already (the chunk-local inclusive cumsum of g log2 e, computed once outside the
            # kernels): no [C, C] masked sums; bf16 only, as G_i - G_j cancels (see the fp32 branch below)
            self.gi = g
            self.gl = jnp.sum(jnp.where(idx == c - 1, g, 0.0))
            self.rj = self.gl - g
            self._log = g[:, None] - g[None, :]
            return
        g = g * LOG2E
        upto = jnp.where(self.col <= self.row, g[None, :], 0.0)  # [i, l] = g_l for l <= i
        self.gi = jnp.sum(upto, axis=1)  # G_i = sum_{l<=i} g_l
        self.rj = jnp.sum(jnp.where(self.col > self.row, g[None, :], 0.0), axis=1)  # sum_{l>j} g_l
        self.gl = jnp.sum(g)  # G_C
        if fp32:
            # segsum[i, j] = sum_{j<l<=i} g_l as an IEEE fp32 dot with a 0/1 matrix: term by term, so
            # that G_i - G_j does not lose |G| * 2^-24 to cancellation (|G| reaches hundreds for fast
            # gates).
            self._log = jax.lax.dot_general(
                upto, (self.row > self.col).astype(F32), (((1,), (0,)), ((), ())),
                precision=jax.lax.Precision.HIGHEST, preferred_element_type=F32)
        else:  # bf16 tolerances absorb that cancellation
            self._log = self.gi[:, None] - self.gi[None, :]

    def gamma(self):
        """Γ_ij = e^{G_i - G_j} for i >= j, else 0."""
        return jnp.exp2(jnp.where(self.row >= self.col, self._log, -jnp.inf))

    @staticmethod
    def exp(x):
        """e^x for x = gi, rj or gl (held in base 2)."""
        return jnp.exp2(x)


class NoGates:
    """The Gates of a chunk without decay (DeltaNet): every decay is 1. The same interface, no exps and no masked
    sums, so that ungated kernels skip the gate math (a kernel still loads nothing for g)."""

    def __init__(self, c: int):
        idx = jnp.arange(c, dtype=jnp.int32)
        self.row, self.col = idx[:, None], idx[None, :]
        self.gi = jnp.zeros((c,), F32)
        self.rj = jnp.zeros((c,), F32)
        self.gl = jnp.float32(0.0)

    def gamma(self):
        return (self.row >= self.col).astype(F32)
