import os
import sys

# Tests compile hundreds of small programs and run each for milliseconds: XLA's CPU backend at LLVM
# optimisation level 0 compiles them much faster (tests/ops/test_delta_rule.py: 58 s -> 34 s on 2
# cores) at tolerances unchanged. Set before any backend starts; subprocesses inherit it.
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
).strip()

import jax  # noqa: E402

# Tests compare fp32 results at 1e-5: run fp32 matmuls at full precision (TF32 on GPU otherwise).
jax.config.update('jax_default_matmul_precision', 'highest')
sys.path.insert(0, os.path.dirname(__file__))
