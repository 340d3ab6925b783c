"""Implementation registry shared by every op: `impl=` lookup and `'auto'` dispatch.

Each op's ``__init__.py`` builds an :class:`ImplRegistry` from a dict of implementations and an
``auto`` policy (an ordered list of candidate names for the given call), as tokamax's ``api.py`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax


class ImplRegistry:
    """Maps ``impl`` names to functions; ``'auto'`` walks an ordered candidate list.

    A candidate may raise ``NotImplementedError`` for a call it cannot serve (a kernel that does not
    support a shape, a backend that is absent); ``auto`` then moves on to the next one.
    """

    def __init__(
        self,
        op_name: str,
        impls: dict[str, Callable[..., Any]],
        auto_order: Callable[..., Sequence[str]],
    ):
        self.op_name = op_name
        self._impls = dict(impls)
        self._auto_order = auto_order

    @property
    def names(self) -> list[str]:
        return sorted(self._impls)

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        self._impls[name] = fn

    def __call__(self, impl: str, *args: Any, **kwargs: Any) -> Any:
        from effattn.ops import sequence_parallel  # lazy: it imports the ops, which import this

        if sequence_parallel.active():  # traced on a mesh whose `sequence` axis is > 1
            return sequence_parallel.dispatch(self, impl, *args, **kwargs)
        return self.run(impl, *args, **kwargs)

    def run(self, impl: str, *args: Any, **kwargs: Any) -> Any:
        """Calls the implementation `impl` on the whole (or this device's part of the) sequence."""
        if impl == 'auto':
            errors = []
            for name in self._auto_order(*args, **kwargs):
                if name not in self._impls:
                    continue
                try:
                    return self._impls[name](*args, **kwargs)
                except (
                    NotImplementedError
                ) as e:  # this candidate cannot serve the call; try the next
                    errors.append(f'{name}: {e}')
            raise NotImplementedError(
                f'{self.op_name}: no implementation supports this call ({"; ".join(errors)})'
            )
        if impl not in self._impls:
            raise ValueError(
                f'{self.op_name}: unknown impl={impl!r}; supported: {["auto"] + self.names}'
            )
        return self._impls[impl](*args, **kwargs)


def default_backend() -> str:
    """'cpu', 'gpu' or 'tpu' for the default device."""
    return jax.default_backend()
