"""CPU timing of the linear-family ops: naive vs recurrent vs chunk, forward and forward+backward.

For each op (linear_attn, simple_gla, gla, delta_rule, gated_delta_rule), impl (naive, recurrent,
chunk) and sequence length T: median wall time of N warmed-up runs (compile excluded,
block_until_ready) of the forward (o) and of the forward+backward (jax.grad of sum(o * do) with
respect to every input: q, k, v and g / beta where the op has them), plus the compiled temporary
memory of the forward+backward (XLA memory_analysis().temp_size_in_bytes). Then, per op, the checks:
  (a) chunk fwd+bwd is faster than recurrent at every T >= 1024,
  (b) chunk fwd+bwd time(T=8192) / time(T=1024) <= 10 (close to linear scaling),
  (c) chunk temp memory at T=8192 <= 1/4 of naive's (naive's from compile-only memory analysis).
naive (a dense T x T or step-loop fp32 oracle) is compiled at every T for its memory, but only run
where that is affordable (see --naive-max-t-loop and --naive-max-temp-gib); skipped runs show '-'.

  python benchmarks/ops_cpu.py                      # full run, writes benchmarks/results/ops_cpu.json
  python benchmarks/ops_cpu.py --quick              # smoke run, seconds
  python benchmarks/ops_cpu.py --ops gla,simple_gla --seq-lens 1024,8192 --runs 3
"""

from __future__ import annotations

import os

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # before numpy / scipy load OpenBLAS (see above)

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effattn.ops.delta_rule import delta_rule
from effattn.ops.gated_delta_rule import gated_delta_rule
from effattn.ops.gla import gla
from effattn.ops.linear_attn import linear_attn
from effattn.ops.simple_gla import simple_gla

IMPLS = ('naive', 'recurrent', 'chunk')
DEFAULT_SEQ_LENS = (512, 1024, 2048, 4096, 8192)
DEFAULT_OUT = Path(__file__).resolve().parent / 'results' / 'ops_cpu.json'
MIB = 2**20


class OpSpec(NamedTuple):
    fn: Callable
    gate: str | None  # None, 'scalar' ([B,T,H]) or 'channel' ([B,T,H,K])
    beta: bool  # takes beta [B,T,H]
    l2norm: bool  # q, k L2-normalised by the caller
    naive_kind: str  # 'dense' (T x T matrices) or 'loop' (lax.scan over time)


OPS = {
    'linear_attn': OpSpec(linear_attn, None, False, False, 'dense'),
    'simple_gla': OpSpec(simple_gla, 'scalar', False, False, 'dense'),
    'gla': OpSpec(gla, 'channel', False, False, 'loop'),
    'delta_rule': OpSpec(delta_rule, None, True, True, 'loop'),
    'gated_delta_rule': OpSpec(gated_delta_rule, 'scalar', True, True, 'loop'),
}


def make_inputs(spec: OpSpec, b: int, t: int, h: int, d: int, seed: int = 0):
    """The op's differentiable inputs in call order (fp32), and a cotangent do for o."""
    r = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
    q, k, v = f(b, t, h, d), f(b, t, h, d), f(b, t, h, d)
    if spec.l2norm:
        q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
        k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    args = [q, k, v]
    if spec.gate == 'scalar':
        args.append(jax.nn.log_sigmoid(f(b, t, h)))
    elif spec.gate == 'channel':
        args.append(jax.nn.log_sigmoid(f(b, t, h, d)))
    if spec.beta:
        args.append(jax.nn.sigmoid(f(b, t, h)))
    return tuple(args), f(b, t, h, d)


def build(spec: OpSpec, impl: str):
    """(fwd, fwd_bwd) jitted functions of (*inputs, do)."""

    def fwd(*args):
        *xs, _ = args
        return spec.fn(*xs, impl=impl)[0]

    def loss(xs, do):
        return jnp.sum(spec.fn(*xs, impl=impl)[0].astype(jnp.float32) * do)

    def fwd_bwd(*args):
        *xs, do = args
        return jax.value_and_grad(loss)(tuple(xs), do)  # the value keeps the forward's output in the timing

    return jax.jit(fwd), jax.jit(fwd_bwd)


def time_compiled(compiled, args, runs: int, warmup: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads), in ms, of `runs` calls after
    `warmup` calls. On a shared machine CPU time is the steadier measure of work done."""
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*args))
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def skip_reason(spec: OpSpec, impl: str, t: int, temp_bytes: int, a) -> str | None:
    if impl != 'naive':
        return None
    if spec.naive_kind == 'loop' and t > a.naive_max_t_loop:
        return f'step-loop oracle beyond T={a.naive_max_t_loop}'
    if temp_bytes > a.naive_max_temp_gib * 2**30:
        return f'temp {temp_bytes / 2**30:.1f} GiB > {a.naive_max_temp_gib:g} GiB'
    return None


def bench_one(name: str, impl: str, t: int, a) -> dict:
    spec = OPS[name]
    xs, do = make_inputs(spec, a.batch, t, a.heads, a.dim)
    args = (*xs, do)
    fwd, fwd_bwd = build(spec, impl)
    row = {'op': name, 'impl': impl, 'T': t}
    t0 = time.perf_counter()
    fb_c = fwd_bwd.lower(*args).compile()
    row['compile_fwd_bwd_s'] = time.perf_counter() - t0
    mem = fb_c.memory_analysis()
    row['temp_bytes_fwd_bwd'] = int(mem.temp_size_in_bytes)
    f_c = fwd.lower(*args).compile()
    row['temp_bytes_fwd'] = int(f_c.memory_analysis().temp_size_in_bytes)
    reason = skip_reason(spec, impl, t, row['temp_bytes_fwd_bwd'], a)
    row['skipped'] = reason
    if reason is None:
        row['fwd_ms'], row['fwd_cpu_ms'] = time_compiled(f_c, args, a.runs, a.warmup)
        row['fwd_bwd_ms'], row['fwd_bwd_cpu_ms'] = time_compiled(fb_c, args, a.runs, a.warmup)
    else:
        row['fwd_ms'] = row['fwd_bwd_ms'] = row['fwd_cpu_ms'] = row['fwd_bwd_cpu_ms'] = None
    return row


def _get(rows, op, impl, t, key):
    for r in rows:
        if (r['op'], r['impl'], r['T']) == (op, impl, t):
            return r.get(key)
    return None


def checks(rows: list[dict], op: str, seq_lens) -> list[dict]:
    out = []
    # (a) chunk fwd+bwd faster than recurrent for every T >= 1024
    ts = [t for t in seq_lens if t >= 1024]
    pairs = [
        (t, _get(rows, op, 'chunk', t, 'fwd_bwd_ms'), _get(rows, op, 'recurrent', t, 'fwd_bwd_ms'))
        for t in ts
    ]
    pairs = [p for p in pairs if p[1] is not None and p[2] is not None]
    if not pairs:
        out.append(
            {'check': 'a', 'status': 'N/A', 'detail': 'needs chunk and recurrent at some T >= 1024'}
        )
    else:
        slow = [t for t, c, r in pairs if not c < r]
        detail = ', '.join(f'T={t}: {r / c:.2f}x' for t, c, r in pairs)
        cpu = [
            (
                t,
                _get(rows, op, 'chunk', t, 'fwd_bwd_cpu_ms'),
                _get(rows, op, 'recurrent', t, 'fwd_bwd_cpu_ms'),
            )
            for t, _, _ in pairs
        ]
        cpu_detail = ', '.join(f'T={t}: {r / c:.2f}x' for t, c, r in cpu)
        out.append(
            {
                'check': 'a',
                'status': 'FAIL' if slow else 'PASS',
                'detail': f'recurrent/chunk fwd+bwd wall speed-up {detail}'
                + (f'; chunk not faster at T={slow}' if slow else '')
                + f' [CPU-time speed-up {cpu_detail}]',
            }
        )
    # (b) chunk fwd+bwd time(8192) / time(1024) <= 10
    c1, c8 = (
        _get(rows, op, 'chunk', 1024, 'fwd_bwd_ms'),
        _get(rows, op, 'chunk', 8192, 'fwd_bwd_ms'),
    )
    if c1 is None or c8 is None:
        out.append({'check': 'b', 'status': 'N/A', 'detail': 'needs chunk at T=1024 and T=8192'})
    else:
        ratio = c8 / c1
        p1 = _get(rows, op, 'chunk', 1024, 'fwd_bwd_cpu_ms')
        p8 = _get(rows, op, 'chunk', 8192, 'fwd_bwd_cpu_ms')
        out.append(
            {
                'check': 'b',
                'status': 'PASS' if ratio <= 10 else 'FAIL',
                'value': ratio,
                'cpu_time_ratio': p8 / p1,
                'detail': f'wall time(8192)/time(1024) = {c8:.1f}/{c1:.1f} ms = {ratio:.2f} (<= 10)'
                f' [CPU time {p8:.1f}/{p1:.1f} ms = {p8 / p1:.2f}]',
            }
        )
    # (c) chunk temp memory at T=8192 <= naive's / 4
    mc = _get(rows, op, 'chunk', 8192, 'temp_bytes_fwd_bwd')
    mn = _get(rows, op, 'naive', 8192, 'temp_bytes_fwd_bwd')
    if mc is None or mn is None:
        out.append({'check': 'c', 'status': 'N/A', 'detail': 'needs chunk and naive at T=8192'})
    else:
        ratio = mc / mn if mn else float('inf')
        out.append(
            {
                'check': 'c',
                'status': 'PASS' if ratio <= 0.25 else 'FAIL',
                'value': ratio,
                'detail': f'chunk/naive temp = {mc / MIB:.1f}/{mn / MIB:.1f} MiB = {ratio:.3f} (<= 0.25)',
            }
        )
    return out


def fmt(x, spec='.1f'):
    return '-' if x is None else format(x, spec)


def print_table(rows):
    print(
        f'\n{"op":<18}{"impl":<11}{"T":>6}{"fwd ms":>11}{"fwd+bwd ms":>12}{"(cpu ms)":>10}'
        f'{"temp MiB":>10}  note'
    )
    for r in rows:
        print(
            f'{r["op"]:<18}{r["impl"]:<11}{r["T"]:>6}{fmt(r["fwd_ms"]):>11}{fmt(r["fwd_bwd_ms"]):>12}'
            f'{fmt(r["fwd_bwd_cpu_ms"]):>10}'
            f'{r["temp_bytes_fwd_bwd"] / MIB:>10.1f}  {("skipped: " + r["skipped"]) if r["skipped"] else ""}'
        )


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        '--ops', default=','.join(OPS), help=f'comma-separated subset of {",".join(OPS)}'
    )
    p.add_argument(
        '--impls', default=','.join(IMPLS), help='comma-separated subset of naive,recurrent,chunk'
    )
    p.add_argument('--seq-lens', default=','.join(map(str, DEFAULT_SEQ_LENS)))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--heads', type=int, default=2)
    p.add_argument('--dim', type=int, default=64, help='head dim D (= K = V)')
    p.add_argument('--runs', type=int, default=5, help='timed runs per measurement (median)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument(
        '--naive-max-t-loop',
        type=int,
        default=2048,
        help='do not run step-loop naive oracles (gla, delta rules) beyond this T',
    )
    p.add_argument(
        '--naive-max-temp-gib',
        type=float,
        default=2.0,
        help='do not run naive when its fwd+bwd temp memory exceeds this',
    )
    p.add_argument('--quick', action='store_true', help='smoke run: T=128, D=16, 2 runs, no JSON unless --out')
    p.add_argument(
        '--out', default=None, help=f'JSON path (default {DEFAULT_OUT}; quick: none unless given)'
    )
    a = p.parse_args(argv)
    if a.quick:
        a.seq_lens, a.dim, a.runs, a.warmup = '128', 16, 2, 1
    a.ops = [o for o in a.ops.split(',') if o]
    a.impls = [i for i in a.impls.split(',') if i]
    a.seq_lens = [int(t) for t in a.seq_lens.split(',') if t]
    unknown = [o for o in a.ops if o not in OPS] + [i for i in a.impls if i not in IMPLS]
    if unknown:
        p.error(f'unknown op/impl {unknown}; ops: {list(OPS)}, impls: {list(IMPLS)}')
    if a.out is None and not a.quick:
        a.out = str(DEFAULT_OUT)
    return a


def main(argv=None):
    a = parse_args(argv)
    rows = []
    t_start = time.perf_counter()
    for name in a.ops:
        for t in a.seq_lens:
            for impl in a.impls:
                row = bench_one(name, impl, t, a)
                rows.append(row)
                print(
                    f'{name:<18}{impl:<11}T={t:<6} fwd {fmt(row["fwd_ms"]):>9} ms'
                    f'  fwd+bwd {fmt(row["fwd_bwd_ms"]):>9} ms'
                    f'  temp {row["temp_bytes_fwd_bwd"] / MIB:8.1f} MiB  (compile {row["compile_fwd_bwd_s"]:.1f}s)'
                    + (f'  skipped: {row["skipped"]}' if row['skipped'] else ''),
                    flush=True,
                )
    print_table(rows)
    all_checks = {}
    print('\nChecks (chunk impl):')
    for name in a.ops:
        all_checks[name] = checks(rows, name, a.seq_lens)
        for c in all_checks[name]:
            print(f'  {name:<18}({c["check"]}) {c["status"]:<5} {c["detail"]}')
    if a.out:
        meta = {
            'jax_version': jax.__version__,
            'jaxlib_version': getattr(jax.lib, '__version__', None)
            or __import__('jaxlib').__version__,
            'backend': jax.default_backend(),
            'devices': [str(d) for d in jax.devices()],
            'platform': platform.platform(),
            'processor': platform.processor() or platform.machine(),
            'python': platform.python_version(),
            'cpu_count': os.cpu_count(),
            'cpu_affinity': len(os.sched_getaffinity(0))
            if hasattr(os, 'sched_getaffinity')
            else None,
            'load_average_at_end': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
            'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
            'wall_s': time.perf_counter() - t_start,
            'dtype': 'float32',
            'openblas_num_threads': os.environ.get('OPENBLAS_NUM_THREADS'),
            'config': {
                k: getattr(a, k)
                for k in (
                    'ops',
                    'impls',
                    'seq_lens',
                    'batch',
                    'heads',
                    'dim',
                    'runs',
                    'warmup',
                    'naive_max_t_loop',
                    'naive_max_temp_gib',
                    'quick',
                )
            },
        }
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps({'meta': meta, 'results': rows, 'checks': all_checks}, indent=1) + '\n'
        )
        print(f'\nwrote {out}')
    return rows, all_checks


if __name__ == '__main__':
    main()
