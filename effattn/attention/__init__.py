"""Attention mechanisms as nnx modules, selected by ``config.model.attention.kind``.

Importing this package registers every kind (one import line per mechanism).
"""

from effattn.attention import sigmoid, softmax  # noqa: F401  (registration side effects)
from effattn.attention import linear  # noqa: F401
from effattn.attention import lightning  # noqa: F401
from effattn.attention import gla  # noqa: F401
from effattn.attention import deltanet  # noqa: F401
from effattn.attention import gated_deltanet  # noqa: F401
from effattn.attention import agent  # noqa: F401
from effattn.attention import routing  # noqa: F401
from effattn.attention import hedgehog  # noqa: F401
from effattn.attention import based, base_conv  # noqa: F401
from effattn.attention import liger  # noqa: F401
from effattn.attention.registry import get, known_kinds, register  # noqa: F401
