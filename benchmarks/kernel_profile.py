"""Per-kernel GPU time of one op call, from jax's profiler: where an op's milliseconds go, kernel by kernel,
measured inside the whole call (no piece timed on its own, so no per-call host overhead in small pieces).

Runs the op (ops_gpu.py's inputs and kernels, bf16) --warmup times, then --iters times under
jax.profiler.trace(create_perfetto_trace=True), reads the trace's device events (CUPTI kernel records on the
GPU's stream threads) and prints, per kernel name, calls and microseconds per iteration and the share of the
device time; plus the device busy time and the wall time per iteration. Pallas kernels carry their `name=`
(gla_intra_fwd, ...); XLA's own kernels their fusion names.

  python benchmarks/kernel_profile.py --op gla --mode fwd                  # B=4 T=4096 H=16 D=128
  python benchmarks/kernel_profile.py --op gla --mode fwd_bwd 8 8192 12 64 --kernel-config gla:intra_width=32
  python benchmarks/kernel_profile.py --op softmax --impl cudnn --mode fwd --out /tmp/p.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ops_gpu  # noqa: E402  (a sibling script module)
from profiling import profile  # noqa: E402  (a sibling script module)


def op_call(op: str, impl: str, shape, mode: str, configs: dict, window: int):
  """A zero-argument callable running one (op, impl, mode) call at shape, jitted and with its inputs."""
  fn, args = op_fn_and_args(op, impl, shape, mode, configs, window)
  return lambda: fn(*args)


def op_fn_and_args(op: str, impl: str, shape, mode: str, configs: dict, window: int):
  """(jitted fn, its arguments) of one (op, impl, mode) call at shape: fwd(x) or the VJP fwd_bwd(x, do), with
  ops_gpu.py's inputs; op 'softmax' is jax's dot_product_attention with impl cudnn or xla."""
  b, t, h, d = shape
  x, do = ops_gpu.jax_inputs('sigmoid' if op == 'softmax' else op, b, t, h, d)
  if op == 'softmax':
    x = {n: x[n] for n in ('q', 'k', 'v')}
    fn = ops_gpu.softmax_op(impl, window)
  elif impl == 'kernel':
    fn = ops_gpu.kernel_fn(op, configs.get(op), window, configs)
  else:
    fn = ops_gpu.effattn_op(op, impl, window)
  fwd, fwd_bwd = ops_gpu.jax_fns(fn, tuple(x))
  return (fwd, (x,)) if mode == 'fwd' else (fwd_bwd, (x, do))


def print_table(result: dict, log=print) -> None:
  busy = result['busy_us'] or 1.0
  log(f'{"kernel":60s} {"calls":>6s} {"us":>9s} {"share":>6s}')
  for k in result['kernels']:
    log(f'{k["name"][:60]:60s} {k["calls"]:>6.1f} {k["us"]:>9.1f} {100 * k["us"] / busy:>5.1f}%')
  log(f'device idle between kernels {result.get("idle_us", 0.0):.1f} us per iteration (gaps < 100 us), after: '
      + ', '.join(f'{g["name"][:40]} {g["mean_us"]:.1f} us x{g["gaps"]:.1f}' for g in result.get('idle_after', [])))
  log(f'device busy {result["busy_us"]:.1f} us per iteration; wall (traced) {result["wall_us_traced"]:.1f} us; '
      f'threads: {", ".join(result["threads"]) or "none"}')
  log('by kind: ' + ', '.join(f'{name} {us:.1f} us' for name, us in result['categories'].items()))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('shape', nargs='*', type=int, default=[4, 4096, 16, 128], help='B T H D')
  p.add_argument('--op', default='gla', choices=(*ops_gpu.OPS, 'softmax'))
  p.add_argument('--impl', default='kernel', help="kernel, chunk (effattn ops) or cudnn, xla (--op softmax)")
  p.add_argument('--mode', default='fwd', choices=('fwd', 'fwd_bwd'))
  p.add_argument('--kernel-config', action='append', default=[], help='OP:field=value,... (as ops_gpu.py)')
  p.add_argument('--window', type=int, default=0, help='softmax_window / softmax: window size')
  p.add_argument('--iters', type=int, default=10)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--out', default=None, help='also write the result as JSON')
  args = p.parse_args(argv)
  if len(args.shape) != 4:
    raise SystemExit(f'shape: give B T H D; got {args.shape}')
  if args.op == 'softmax' and args.impl not in ('cudnn', 'xla'):
    raise SystemExit(f"--op softmax: --impl must be cudnn or xla; got {args.impl!r}")
  configs = ops_gpu.parse_kernel_configs(args.kernel_config)
  call = op_call(args.op, args.impl, tuple(args.shape), args.mode, configs, args.window)
  result = profile(call, args.iters, args.warmup)
  result['meta'] = {'op': args.op, 'impl': args.impl, 'mode': args.mode, 'shape': args.shape,
                    'kernel_config': args.kernel_config, 'device': jax.devices()[0].device_kind,
                    'jax': jax.__version__, 'date': time.strftime('%Y-%m-%d')}
  print(f'{args.op} ({args.impl}) {args.mode} at {"x".join(map(str, args.shape))}, {result["meta"]["device"]}:')
  print_table(result)
  if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
  return result


if __name__ == '__main__':
  main()
