"""Argument checks, impl registry and dispatch shared by `gated_delta_rule` and `delta_rule`."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from effattn.ops.common.checks import check_rank, check_shape
from effattn.ops.common.dispatch import ImplRegistry, default_backend
from effattn.ops.gated_delta_rule.chunk import chunk_gated_delta_rule
from effattn.ops.gated_delta_rule.naive import naive_gated_delta_rule
from effattn.ops.gated_delta_rule.pallas import kernel_gated_delta_rule
from effattn.ops.gated_delta_rule.recurrent import recurrent_gated_delta_rule

IMPLS = {'naive': naive_gated_delta_rule, 'recurrent': recurrent_gated_delta_rule,
         'chunk': chunk_gated_delta_rule, 'kernel': kernel_gated_delta_rule}


def _auto_order(q, *args, **kwargs):
    """'auto': recurrent for T == 1; else the Pallas kernel first on GPU (it raises NotImplementedError
    for segment_ids and falls through), then chunk."""
    if q.shape[1] == 1:
        return ['recurrent']
    order = ['chunk', 'recurrent']
    return ['kernel', *order] if default_backend() == 'gpu' else order


def make_registry(op_name: str, gated: bool) -> ImplRegistry:
    """Registry over the shared implementations; `gated=False` binds g=None (no decay)."""
    if gated:
        impls = dict(IMPLS)
    else:
        impls = {name: _without_gate(fn) for name, fn in IMPLS.items()}
    return ImplRegistry(op_name, impls, _auto_order)


def _without_gate(fn):
    @functools.wraps(fn)
    def wrapped(q, k, v, beta, **kwargs):
        return fn(q, k, v, None, beta, **kwargs)
    return wrapped


def check_args(q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array | None, beta: jax.Array,
               initial_state: jax.Array | None, segment_ids: jax.Array | None,
               chunk_size: int) -> None:
    check_rank('q', q, 4, '[B, T, H, K]')
    b, t, h, dk = q.shape
    check_shape('k', k, (b, t, h, dk), '[B, T, H, K]')
    check_rank('v', v, 4, '[B, T, H, V]')
    check_shape('v', v, (b, t, h, v.shape[-1]), '[B, T, H, V]')
    check_shape('beta', beta, (b, t, h), '[B, T, H]')
    check_shape('g', g, (b, t, h), '[B, T, H]')
    check_shape('initial_state', initial_state, (b, h, dk, v.shape[-1]), '[B, H, K, V]')
    check_shape('segment_ids', segment_ids, (b, t), '[B, T]')
    if segment_ids is not None and not jnp.issubdtype(segment_ids.dtype, jax.numpy.integer):
        raise ValueError(f'segment_ids must be an integer array; got dtype {segment_ids.dtype}')
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive int; got {chunk_size!r}')
