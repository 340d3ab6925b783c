"""effattn: efficient-transformer attention in JAX/Flax (ops, modules, LMs, training)."""
__version__ = '0.1.0'
