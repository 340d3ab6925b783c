"""Argument checks shared by the ops: clear errors that name the argument and its shape."""

from __future__ import annotations

import jax


def check_rank(name: str, x: jax.Array, rank: int, layout: str) -> None:
    if x.ndim != rank:
        raise ValueError(
            f'{name} must have layout {layout} (rank {rank}); got shape {tuple(x.shape)}'
        )


def check_same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f'{name_a} and {name_b} must have the same shape; '
            f'got {tuple(a.shape)} and {tuple(b.shape)}'
        )


def check_shape(name: str, x: jax.Array | None, expected: tuple[int, ...], layout: str) -> None:
    if x is not None and tuple(x.shape) != tuple(expected):
        raise ValueError(
            f'{name} must have shape {layout} = {tuple(expected)}; got {tuple(x.shape)}'
        )
