"""Registry of attention mechanisms, keyed by ``config.model.attention.kind``.

Adding a mechanism is one module file with ``@register('name')`` on its class and one import line in
``effattn/attention/__init__.py``; nothing else changes.
"""

from __future__ import annotations

from typing import Any

_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: makes an attention module selectable as ``attention.kind=name``."""

    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(
                f'attention kind {name!r} registered twice ({_REGISTRY[name]} and {cls})'
            )
        _REGISTRY[name] = cls
        cls.kind = name
        return cls

    return wrap


def _load_all() -> None:
    import effattn.attention  # noqa: F401  (importing the package registers every kind)


def known_kinds() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> Any:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(
            f'unknown attention kind {name!r}; known kinds: {", ".join(sorted(_REGISTRY))}'
        )
    return _REGISTRY[name]
