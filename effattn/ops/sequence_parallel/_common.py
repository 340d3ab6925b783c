"""The mesh axis name, and shard_map over it for arrays laid out [B, T, ...]."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec as P

AXIS = 'sequence'
TOKENS = P(None, AXIS)  # [B, T, ...]: T split over the axis, other dims left to the compiler
WHOLE = P()  # the same on every device of the axis (initial states, scalars)
PER_DEVICE = P(AXIS)  # one slice per device, stacked on a leading axis of size W


def axis_size() -> int:
    return jax.sharding.get_abstract_mesh().shape[AXIS]


def shard_over_sequence(fn: Callable[..., Any], tokens: dict, whole: dict, out_specs: Any) -> Any:
    """fn(tokens, whole) with every array of `tokens` split along T (axis 1) over `sequence`.

    `whole` arrays are passed unsplit. Only `sequence` is manual; the other mesh axes stay
    automatic. check_vma is off: fn's results that are the same on every device are returned per
    device (PER_DEVICE) and one copy is taken outside, so that gradients count them once.
    """
    tokens = {k: x for k, x in tokens.items() if x is not None}
    whole = {k: x for k, x in whole.items() if x is not None}
    return jax.shard_map(
        fn,
        mesh=jax.sharding.get_abstract_mesh(),
        in_specs=({k: TOKENS for k in tokens}, {k: WHOLE for k in whole}),
        out_specs=out_specs,
        axis_names={AXIS},
        check_vma=False,
    )(tokens, whole)
