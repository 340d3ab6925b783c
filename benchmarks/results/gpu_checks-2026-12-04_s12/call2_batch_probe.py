"""Per-call time of fwd_bwd against the length of the timed batches (ops_gpu.py's harness, target_s)."""
import json, statistics, sys, time
sys.path.insert(0, 'benchmarks')
import jax
import ops_gpu
from timing import time_call_batches
out = {}
calls = {}
for op, impl in (('gla', 'kernel'), ('softmax', 'cudnn'), ('delta_rule', 'kernel')):
  x, do = ops_gpu.jax_inputs('sigmoid' if op == 'softmax' else op, 4, 4096, 16, 128)
  if op == 'softmax':
    x = {n: x[n] for n in ('q', 'k', 'v')}
    fn = ops_gpu.softmax_op(impl, 0)
  else:
    fn = ops_gpu.effattn_op(op, impl, 0)
  _, fwd_bwd = ops_gpu.jax_fns(fn, tuple(x))
  calls[op] = (lambda f, x, do: (lambda: f(x, do)))(fwd_bwd, x, do)
for rnd in range(2):
  for op, call in calls.items():
    for target in (0.025, 0.1, 0.4):
      ts = time_call_batches(call, jax.block_until_ready, target_s=target, samples=9)
      single = []
      for _ in range(5):
        t0 = time.perf_counter(); jax.block_until_ready(call()); single.append(time.perf_counter() - t0)
      key = f'{op} target {target}'
      out.setdefault(key, []).append(1e3 * statistics.median(ts))
      print(f'round {rnd} {op:10s} target_s {target:5.3f}: {1e3 * statistics.median(ts):.3f} ms per call; '
            f'one synced call {1e3 * statistics.median(single):.3f} ms', flush=True)
json.dump(out, open(sys.argv[1], 'w'), indent=1)
