import os
import sys

import jax

# Tests compare fp32 results at 1e-5: run fp32 matmuls at full precision (TF32 on GPU otherwise).
jax.config.update('jax_default_matmul_precision', 'highest')
sys.path.insert(0, os.path.dirname(__file__))
