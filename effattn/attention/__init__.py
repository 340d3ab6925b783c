"""Attention mechanisms as nnx modules, selected by ``config.model.attention.kind``.

Importing this package registers every kind (one import line per mechanism).
"""

from effattn.attention import sigmoid, softmax  # noqa: F401  (registration side effects)
from effattn.attention.registry import get, known_kinds, register  # noqa: F401
