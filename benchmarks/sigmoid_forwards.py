"""GPU timing of the sigmoid attention forwards: the Mosaic GPU kernel (ops/sigmoid_attention/mosaic_gpu.py), with
and without its intra-warpgroup overlap (sigmoid_forward='mosaic_overlap') and on a persistent grid
('mosaic_persistent'), the Triton flash kernel (ops/softmax_attention/pallas.py), the three but the overlap also in
FlashSigmoid's tanh form (sigmoid_math='tanh': the *_tanh rows), and cuDNN's softmax attention, forward and
forward+backward (the backward is the Triton kernel's for every sigmoid forward), bf16, plus the relative RMS
difference of the sigmoid outputs and, at two shapes, a few MosaicConfig settings. Median ms of batched calls
(timing.py). Hopper GPUs only (WGMMA).

  python benchmarks/sigmoid_forwards.py --out benchmarks/results/sigmoid_forwards.json
  python benchmarks/sigmoid_forwards.py --shapes 1 --no-sweep      # the issue's shape, the four forwards only
"""
import argparse
import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import time_calls  # noqa: E402

from effattn.ops.sigmoid_attention import mosaic_gpu  # noqa: E402
from effattn.ops.softmax_attention.pallas import DEFAULT_CONFIG, flash_attention  # noqa: E402

SHAPES = ((4, 4096, 16, 128, True), (2, 8192, 16, 128, True), (4, 4096, 16, 128, False), (8, 8192, 12, 64, True))
MC = mosaic_gpu.MosaicConfig
MOSAIC_CONFIGS = (MC(longest_first=False), MC(max_concurrent_steps=3), MC(block_kv=64),
                  MC(block_kv=64, max_concurrent_steps=4), MC(reciprocal='newton'), MC(reciprocal='approx'),
                  MC(block_kv=256), MC(overlap=True, max_concurrent_steps=3), MC(overlap=True, block_kv=64),
                  MC(overlap=True, block_kv=64, max_concurrent_steps=4), MC(tanh=True, block_kv=64),
                  MC(tanh=True, max_concurrent_steps=3), MC(persistent=True, max_concurrent_steps=3),
                  MC(persistent=True, block_kv=64, max_concurrent_steps=4))
SWEEP_AT = (0, 3)  # shapes (indices into SHAPES) at which MOSAIC_CONFIGS are timed too


def ms(f, *args):
    return round(1e3 * time_calls(lambda: f(*args), jax.block_until_ready), 3)


def bench(b, t, h, d, causal, bias=-8.3, sweep=False):
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, do = (jax.random.normal(kk, (b, t, h, d), jnp.bfloat16) for kk in ks)
    bias = jnp.float32(bias)

    def sigmoid(forward, math=DEFAULT_CONFIG.sigmoid_math):
        cfg = dataclasses.replace(DEFAULT_CONFIG, sigmoid_forward=forward, sigmoid_math=math)
        return lambda q, k, v: flash_attention(q, k, v, score='sigmoid', causal=causal, scale=d ** -0.5,
                                               window=None, bias=bias, config=cfg)
    # the untimed forwards last, each figure printed as it comes: a forward that hangs on a GPU (the persistent
    # grid's barriers) leaves the others' figures in the log when the caller's time limit kills the run
    fns = {'mosaic': sigmoid('mosaic'), 'mosaic_tanh': sigmoid('mosaic', 'tanh'), 'triton': sigmoid('triton'),
           'triton_tanh': sigmoid('triton', 'tanh'),
           'cudnn': lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation='cudnn'),
           'mosaic_overlap': sigmoid('mosaic_overlap'), 'mosaic_persistent': sigmoid('mosaic_persistent'),
           'mosaic_persistent_tanh': sigmoid('mosaic_persistent', 'tanh')}
    row = {'shape': [b, t, h, d], 'causal': causal,
           'mosaic_unsupported': mosaic_gpu.unsupported_reason(q, k, v, window=None, tp=t)}
    outs = {}
    for name, f in fns.items():
        try:
            fwd = jax.jit(f)
            outs[name] = fwd(q, k, v)
            row[name + '_fwd'] = ms(fwd, q, k, v)
            loss = lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))
            row[name + '_fwdbwd'] = ms(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))), q, k, v)
        except Exception as e:  # noqa: BLE001  (report and go on)
            row[name] = f'{type(e).__name__}: {str(e)[:400]}'
        print(f'  {b}x{t}x{h}x{d} {name}: {row.get(name + "_fwd", row.get(name))} / {row.get(name + "_fwdbwd")}',
              flush=True)
    for name in ('mosaic', 'mosaic_overlap', 'mosaic_persistent', 'mosaic_tanh', 'mosaic_persistent_tanh',
                 'triton_tanh'):
        if name in outs and 'triton' in outs:
            a, r = outs[name].astype(jnp.float32), outs['triton'].astype(jnp.float32)
            row[f'rel_rms_{name}_vs_triton'] = float(jnp.sqrt(jnp.mean((a - r) ** 2) / jnp.mean(r ** 2)))
    for mc in MOSAIC_CONFIGS if sweep else ():
        try:
            row[str(mc)] = ms(jax.jit(lambda q, k, v: mosaic_gpu.sigmoid_forward(
                q, k, v, bias, causal=causal, scale=d ** -0.5, config=mc)), q, k, v)
        except Exception as e:  # noqa: BLE001
            row[str(mc)] = f'{type(e).__name__}: {str(e)[:300]}'
        print(f'  {mc}: {row[str(mc)]}', flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=None, help='also write the rows as JSON')
    p.add_argument('--shapes', type=int, default=len(SHAPES), help='time the first N shapes only')
    p.add_argument('--no-sweep', action='store_true', help='skip the MosaicConfig settings')
    a = p.parse_args(argv)
    rows = []
    for i, shape in enumerate(SHAPES[:a.shapes]):
        rows.append(bench(*shape, sweep=i in SWEEP_AT and not a.no_sweep))
        print(rows[-1], flush=True)
    if a.out:
        with open(a.out, 'w') as f:
            json.dump({'device': jax.devices()[0].device_kind, 'jax': jax.__version__, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
