"""Sequence parallelism for the attention ops over the mesh axis ``sequence`` (ALGORITHMS.md section 9).

How it is switched on: every op's public function ends in ``REGISTRY(impl, ...)``
(``ImplRegistry.__call__``, ops/common/dispatch.py). When that call is traced on a mesh (``jax.set_mesh``,
or the train step of ``effattn.parallel``) whose ``sequence`` axis has W > 1 devices, it comes here
instead, and the op runs under a ``jax.shard_map`` that is manual over ``sequence`` only (``data``,
``fsdp`` and ``tensor`` stay with the compiler): device r holds tokens [rL, (r+1)L), L = T / W.
Attention modules, the model and the train step are unchanged: everything outside the ops is
per-token and the compiler partitions it along T by itself.

- Linear family (linear_attn, simple_gla, gla, delta_rule, gated_delta_rule): LASP-2 (lasp.py). Each
  device summarises its piece as an affine map of the incoming state, S -> A_r S + M_r; one
  all-gather of the (A_r, M_r) (size independent of T); a prefix combine gives the state entering
  the piece; the local op runs with it as initial_state.
- Softmax and sigmoid attention: all-gather of K and V (and segment ids); local queries attend to
  the gathered keys with the causal / window / segment mask at global positions (gathered_kv.py).

Packed sequences: the state is reset where the segment id changes, also between the last token of
piece r-1 and the first of piece r. One-token calls (decoding) run unsplit.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax

from effattn.ops.sequence_parallel import gathered_kv, lasp
from effattn.ops.sequence_parallel._common import AXIS, axis_size

_HANDLERS = {
    'linear_attn': lasp.linear_attn,
    'simple_gla': lasp.simple_gla,
    'gla': lasp.gla,
    'delta_rule': lasp.delta_rule,
    'gated_delta_rule': lasp.gated_delta_rule,
    'softmax_attention': gathered_kv.softmax_attention,
    'sigmoid_attention': gathered_kv.sigmoid_attention,
}
_warned: set[str] = set()


def active() -> bool:
    """True while tracing on a mesh whose `sequence` axis is > 1 and not yet split by shard_map."""
    mesh = jax.sharding.get_abstract_mesh()
    return (
        not mesh.empty
        and AXIS in mesh.axis_names
        and mesh.shape[AXIS] > 1
        and AXIS not in mesh.manual_axes
    )


def supported_ops() -> list[str]:
    return sorted(_HANDLERS)


def dispatch(registry: Any, impl: str, *args: Any, **kwargs: Any) -> Any:
    """Runs `registry`'s op sequence-parallel; args are those of its implementations."""
    t, w = args[0].shape[1], axis_size()
    if t == 1:  # one-token decoding: nothing to split
        return registry.run(impl, *args, **kwargs)
    if t % w:
        raise ValueError(
            f'{registry.op_name}: sequence length T={t} is not divisible by the mesh axis '
            f'`sequence`={w} (config.mesh.sequence); use a length that is a multiple of it'
        )
    handler = _HANDLERS.get(registry.op_name)
    if handler is None:
        if registry.op_name not in _warned:
            _warned.add(registry.op_name)
            warnings.warn(
                f'{registry.op_name} has no sequence-parallel form; it runs on the whole sequence '
                '(the compiler gathers its inputs)',
                stacklevel=2,
            )
        return registry.run(impl, *args, **kwargs)
    return handler(registry, impl, *args, **kwargs)


__all__ = ['AXIS', 'active', 'dispatch', 'supported_ops']
