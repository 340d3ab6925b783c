"""Where the sequence split of the simple_gla kernel spends its time (effattn/ops/common/sequence_split.py).

At B*T = 65536, H = 16, D = 128 bf16 (GPU): the whole op at B=32 T=2048 (no split) and at B=1 T=65536, and at
the latter, for each segment count P given: the segment states by the XLA einsum and by the block_states kernel,
the kernel on the P segments from given initial states, the whole op forced to P segments, and the op unsplit;
then block_states at several block / value-tile / warp / chunk settings, also with the decays folded into k
(fold=True) and in key tiles (block_k), a transpose of k and the einsum alone.
Median ms of batched calls (timing.py).

  python benchmarks/split_parts.py 4 16 > split_parts.txt
  python benchmarks/split_parts.py --key-tiles        # block_states in key tiles only
"""
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import time_calls  # noqa: E402

from effattn.ops.common import sequence_split as ss  # noqa: E402
from effattn.ops.common.block_states import block_states  # noqa: E402
from effattn.ops.simple_gla import pallas as sp  # noqa: E402

H, D, SCALE = 16, 128, 128 ** -0.5


def inputs(b, t):
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v = (jax.random.normal(ks[i], (b, t, H, D), jnp.bfloat16) for i in range(3))
    g = -jax.nn.softplus(jax.random.normal(ks[3], (b, t, H), jnp.float32)) * 0.1
    return q, k, v, g


def report(name, f, *args):
    f = jax.jit(f)
    ms = time_calls(lambda: f(*args), jax.block_until_ready) * 1e3
    print(f'{name:40s} {ms:.3f} ms', flush=True)


def key_tiles(k, v, g):
    """block_states in key tiles (block_k), then at 8 warps, 128-row chunks and 2 or 4 stages (3: the default).
    Key tiles: smaller states, more programs per SM, v read K / block_k times (ptxas, sm_90a: full K at 4 warps
    255 registers, 904 bytes spilled, 2 programs per SM; block_k 64 at 4 warps 207, no spills, 2 per SM; 32 at
    2 warps 167, 6 per SM; 32 at 4 warps 134, 3 per SM)."""
    report('block_states fold blk=1024 (default)',
           lambda k, v, g: block_states(k, v, g, block=1024, fold=True), k, v, g)
    for bk, w in ((64, 4), (32, 2), (32, 4)):
        report(f'block_states fold blk=1024 bk={bk} w={w}',
               lambda k, v, g: block_states(k, v, g, block=1024, num_warps=w, fold=True, block_k=bk), k, v, g)
    # the full K at 8 warps (64 accumulator registers per thread instead of 128) and 128-row steps
    for c, w in ((64, 8), (128, 4), (128, 8)):
        report(f'block_states fold blk=1024 chunk={c} w={w}',
               lambda k, v, g: block_states(k, v, g, block=1024, chunk=c, num_warps=w, fold=True), k, v, g)
    for stages in (2, 4):  # shallower and deeper pipelining of the k, v chunk loads
        report(f'block_states fold blk=1024 stages={stages}',
               lambda k, v, g: block_states(k, v, g, block=1024, fold=True, num_stages=stages), k, v, g)


def main(segment_counts):
    cfg = sp.DEFAULT_CONFIG
    op = lambda config: lambda q, k, v, g: sp.kernel_simple_gla(q, k, v, g, scale=SCALE, config=config)[0]
    print(jax.devices()[0].device_kind, jax.__version__, flush=True)
    for b, t in [(32, 2048), (1, 65536)]:
        q, k, v, g = inputs(b, t)
        report(f'whole op b={b} t={t}', op(cfg), q, k, v, g)
        for p in segment_counts if b == 1 else []:
            report(f'  xla states P={p}', lambda k, v, g: ss._local_states_xla(k, v, g, p), k, v, g)
            report(f'  kernel states P={p}', lambda k, v, g: ss._local_states_kernel(k, v, g, p, 64, False), k, v, g)
            cut = lambda x: x.reshape(p, t // p, *x.shape[2:])
            h0 = jnp.zeros((p, H, D, D), jnp.float32)
            whole = dataclasses.replace(cfg, split_programs=0)
            report(f'  kernel on the segments P={p}',
                   lambda q, k, v, g, h0: sp.kernel_simple_gla(q, k, v, g, scale=SCALE, initial_state=h0,
                                                               config=whole)[0], cut(q), cut(k), cut(v), cut(g), h0)
            tiles = D // cfg.block_v_for(b, H, t, D, 64, jnp.bfloat16, jax.default_backend())
            report(f'  whole op split in P={p}', op(dataclasses.replace(cfg, split_programs=H * tiles * p)), q, k, v,
                   g)
        report('  unsplit', op(dataclasses.replace(cfg, split_programs=0)), q, k, v, g)
    q, k, v, g = inputs(1, 65536)
    for blk in (1024, 4096):
        for bv in (64, 128):
            for w in (4, 8):
                for c in (64, 128):
                    report(f'block_states blk={blk} bv={bv} w={w} chunk={c}',
                           lambda k, v, g: block_states(k, v, g, block=blk, chunk=c, block_v=bv, num_warps=w), k, v,
                           g)
    for blk in (1024, 4096):
        for c in (64, 128):
            for w in (4, 8):
                report(f'block_states fold blk={blk} bv=128 w={w} chunk={c}',
                       lambda k, v, g: block_states(k, v, g, block=blk, chunk=c, num_warps=w, fold=True), k, v, g)
    key_tiles(k, v, g)
    report('block_states no gate blk=1024', lambda k, v: block_states(k, v, None, block=1024), k, v)
    report('xla transpose k', lambda k: jnp.swapaxes(k, 1, 2) * 2, k)
    report('xla states einsum only', lambda k, v: jnp.einsum(
        'bthk,bthv->bhkv', k.reshape(64, 1024, H, D), v.reshape(64, 1024, H, D), preferred_element_type=jnp.float32),
        k, v)


if __name__ == '__main__':
    if sys.argv[1:] == ['--key-tiles']:
        key_tiles(*inputs(1, 65536)[1:])
    else:
        main([int(a) for a in sys.argv[1:]] or [4])
