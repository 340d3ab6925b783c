"""Multi-GPU scaling of the ~125M LM: data parallelism, FSDP and sequence parallelism (issue 9).

Trains the model of benchmarks/train_throughput.py (d_model 768, 12 layers, vocabulary 32000, tied
embeddings, bf16 compute, AdamW; its build_config) with the project's own train step on 1 and on N
devices of one host, and prints per run tokens/s, the scaling efficiency against the 1-device run
of the same (kind, T, batch), the peak memory of every device, and the loss of every step.

Each run has the same *global* batch on 1 and on N devices (strong scaling), the same seed and the
same random tokens, so the runs of one (kind, T, batch) start from identical parameters and see
identical data: their losses must agree step by step up to bf16 reduction-order noise (the check
reported as `loss_rel`: max over the steps of |loss_N - loss_1| / loss_1). Scaling efficiency =
tokens/s on N devices / (N * tokens/s on 1 device).

The default plan, N = --gpus (default 2):
  softmax, gla  T=2048   batch 32   mesh data=1 (1 device) | data=N | fsdp=N
  gla           T=32768  batch 2    data=1 | sequence=N (LASP-2)
  gla           T=131072 batch 1    data=1 | sequence=N
--plan replaces it: ';'-separated KIND:T:BATCH:MESH runs, MESH as axis=size[,axis=size] (the
product is the run's device count; the first devices are used), e.g.
  --plan 'gla:32768:2:data=1;gla:32768:2:sequence=2;gla:32768:2:data=2'

Each run is a child process that sees only its devices (CUDA_VISIBLE_DEVICES), so that the peak
memory per device is that run's alone and an out-of-memory run becomes an 'OOM' row; --in-process
runs them all here (CPU tests with fake devices). NVLink multicast stays off (NCCL_NVLS_ENABLE=0).

  python benchmarks/scale.py --gpus 2 --out $OUT/scale.json        # on a 2-GPU machine
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/scale.py --tiny --in-process
  python benchmarks/scale.py --table-from benchmarks/results/scale.json
"""

from __future__ import annotations

import os

os.environ.setdefault('NCCL_NVLS_ENABLE', '0')
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.92')

import json
import math
import sys
import time
import traceback
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_common  # noqa: E402  (a sibling script module)
import train_throughput as tt  # noqa: E402  (also puts the repository root on sys.path)

import jax  # noqa: E402

from effattn import parallel  # noqa: E402
from effattn.train.optimizer import lr_schedule, make_optimizer  # noqa: E402
from effattn.train.state import create_train_state, param_count  # noqa: E402
from effattn.train.step import make_train_step  # noqa: E402

DEFAULT_OUT = HERE / 'results' / 'scale.json'
FULL = {'d_model': 768, 'layers': 12, 'heads': 12, 'vocab': 32000, 'steps': 10, 'warmup': 2}
TINY = {'d_model': 64, 'layers': 2, 'heads': 4, 'vocab': 256, 'steps': 3, 'warmup': 1}
LOSS_REL_TOL = 2e-2  # bf16 compute: losses of 1 and N devices agree to about 1e-3; 2% flags a bug


def default_plan(n: int, tiny: bool) -> str:
    if tiny:
        short, long_, longer, batch = 128, 256, 512, 4
    else:
        short, long_, longer, batch = 2048, 32768, 131072, 32
    runs = []
    for kind in ('softmax', 'gla'):
        runs += [f'{kind}:{short}:{batch}:data=1', f'{kind}:{short}:{batch}:data={n}']
        runs += [f'{kind}:{short}:{batch}:fsdp={n}']
    for t, b in ((long_, 2), (longer, 1)):
        runs += [f'gla:{t}:{b}:data=1', f'gla:{t}:{b}:sequence={n}']
    return ';'.join(runs)


def parse_run(spec: str) -> dict:
    """'gla:32768:2:sequence=2' -> {'kind', 'seq_len', 'batch', 'mesh', 'devices', 'spec'}."""
    try:
        kind, t, b, mesh_text = spec.split(':')
        mesh = {a: int(v) for a, v in (item.split('=') for item in mesh_text.split(','))}
    except ValueError:
        raise SystemExit(f'--plan: cannot read run {spec!r}; expected KIND:T:BATCH:axis=size[,...]')
    bad = set(mesh) - set(parallel.AXES)
    if bad:
        raise SystemExit(
            f'--plan: run {spec!r}: unknown mesh axis {sorted(bad)}; use {parallel.AXES}'
        )
    full = {a: mesh.get(a, 1) for a in parallel.AXES}
    n = math.prod(full.values())
    return {
        'spec': spec,
        'kind': kind,
        'seq_len': int(t),
        'batch': int(b),
        'mesh': full,
        'devices': n,
    }


def mesh_label(mesh: dict) -> str:
    parts = [f'{a}={s}' for a, s in mesh.items() if s > 1]
    return ','.join(parts) or 'one device'


# ------------------------------------------------------------------------------------------- run


def run_one(args, run: dict, log) -> dict:
    """One run on the first run['devices'] devices: compile, warm up, time; errors become status."""
    row = {
        'spec': run['spec'],
        'kind': run['kind'],
        'seq_len': run['seq_len'],
        'batch': run['batch'],
        'tokens_per_step': run['batch'] * run['seq_len'],
        'mesh': run['mesh'],
        'devices': run['devices'],
        'status': 'ok',
    }
    devices = jax.devices()
    row['device'] = getattr(devices[0], 'device_kind', str(devices[0]))
    row['backend'] = jax.default_backend()
    try:
        if len(devices) < run['devices']:
            raise RuntimeError(f'{run["devices"]} devices needed, {len(devices)} present')
        devices = devices[: run['devices']]
        cfg = tt.build_config(args, run['kind'], run['seq_len'], run['batch'], mesh=run['mesh'])
        mesh = parallel.make_mesh(cfg.mesh, devices=devices)
        parallel.check_batch(mesh, run['batch'])
        tx = make_optimizer(cfg.train)
        model_def, state = create_train_state(cfg, tx, mesh)
        row['params'] = param_count(state.params)
        row['flops_per_token'] = tt.flops_per_token(cfg, row['params'])
        step = make_train_step(
            model_def, tx, lr_schedule(cfg.train), state_sharding=parallel.sharding_of(state)
        )
        data = tt.random_batch(mesh, run['batch'], run['seq_len'], cfg.model.vocab_size, args.seed)
        t0 = time.perf_counter()
        compiled = step.lower(state, data).compile()
        row['compile_s'] = round(time.perf_counter() - t0, 2)
        state, times, losses = bench_common.time_steps(
            compiled, state, data, args.warmup, args.steps, every_loss=True
        )
        row['losses'] = losses
        row.update(bench_common.step_figures(times, row['tokens_per_step']))
        row['tokens_per_s_per_device'] = round(row['tokens_per_s'] / run['devices'], 1)
        peak = args.peak_tflops or tt.peak_tflops(row['device'])
        achieved = row['flops_per_token']['total'] * row['tokens_per_s']
        row['mfu'] = round(achieved / (peak * 1e12 * run['devices']), 5) if peak else None
    except Exception as e:  # noqa: BLE001  (OOM or any failure becomes the row's status)
        if bench_common.is_oom(e):
            row['status'] = 'OOM'
        else:
            traceback.print_exc()
            row['status'] = f'error: {type(e).__name__}'
        row['error'] = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    row['peak_mem_gib'] = [tt.gib(peak_bytes(d)) for d in devices]
    log(f'  {run["spec"]:34s} {row["status"]:3s} {summary(row)}')
    return row


def peak_bytes(device) -> int | None:
    stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
    return (stats or {}).get('peak_bytes_in_use')


def summary(row: dict) -> str:
    if row['status'] != 'ok':
        return row.get('error', '')
    mem = max((m for m in row['peak_mem_gib'] if m is not None), default=None)
    return (
        f'step {row["step_ms"]:.1f} ms  {row["tokens_per_s"]:,.0f} tok/s  '
        f'peak {"-" if mem is None else f"{mem:.1f}"} GiB/device  compile {row["compile_s"]:.0f} s  '
        f'losses {" ".join(f"{x:.4f}" for x in row["losses"][:4])}'
    )


def run_isolated(argv: list[str], run: dict, timeout_s: float, log) -> dict:
    """run_one in a child process that sees only the run's devices; a crash becomes a row."""
    env = dict(os.environ)
    if 'CUDA_VISIBLE_DEVICES' not in env:
        env['CUDA_VISIBLE_DEVICES'] = ','.join(str(i) for i in range(run['devices']))
    row, status, tail = bench_common.run_child(__file__, argv, run['spec'], timeout_s, env)
    if row is not None:
        return row
    log(f'  {run["spec"]:34s} {status}: {tail}')
    return dict(run, status=status, error=tail)


# ----------------------------------------------------------------------------------- comparison


def compare(rows: list[dict]) -> None:
    """Adds to every multi-device row its 1-device baseline's figures: scaling efficiency, the
    losses' max relative difference, and the memory ratio."""
    base = {
        (r['kind'], r['seq_len'], r['batch']): r
        for r in rows
        if r.get('devices') == 1 and r.get('status') == 'ok'
    }
    for r in rows:
        if r.get('devices', 1) == 1:
            continue
        b = base.get((r['kind'], r['seq_len'], r['batch']))
        r['baseline'] = None if b is None else b['spec']
        if b is None or r['status'] != 'ok':
            continue
        r['scaling_efficiency'] = round(r['tokens_per_s'] / (r['devices'] * b['tokens_per_s']), 4)
        r['speedup'] = round(r['tokens_per_s'] / b['tokens_per_s'], 4)
        k = min(len(r['losses']), len(b['losses']))
        r['loss_rel'] = max(abs(x - y) / abs(y) for x, y in zip(r['losses'][:k], b['losses'][:k]))
        r['losses_match'] = r['loss_rel'] < LOSS_REL_TOL


def print_table(rows: list[dict]) -> None:
    print(
        f'{"kind":8s} {"T":>7s} {"batch":>5s} {"mesh":>12s} {"step ms":>9s} {"tokens/s":>10s} '
        f'{"eff.":>6s} {"MFU %":>6s} {"peak GiB/dev":>12s} {"loss rel diff":>13s}'
    )
    for r in rows:
        mesh = mesh_label(r['mesh'])
        if r.get('status') != 'ok':
            print(f'{r["kind"]:8s} {r["seq_len"]:>7d} {r["batch"]:>5d} {mesh:>12s} {r["status"]}')
            continue
        eff, mfu, rel = r.get('scaling_efficiency'), r.get('mfu'), r.get('loss_rel')
        mems = [m for m in r['peak_mem_gib'] if m is not None]
        eff = '-' if eff is None else f'{100 * eff:.1f}%'
        mfu = '-' if mfu is None else f'{100 * mfu:.1f}'
        mem = '-' if not mems else f'{max(mems):.1f}'
        rel = '-' if rel is None else f'{rel:.1e}'
        print(
            f'{r["kind"]:8s} {r["seq_len"]:>7d} {r["batch"]:>5d} {mesh:>12s} '
            f'{r["step_ms"]:>9.1f} {r["tokens_per_s"]:>10,.0f} '
            f'{eff:>6s} {mfu:>6s} {mem:>12s} {rel:>13s}'
        )


# ------------------------------------------------------------------------------------------- main


def parse_args(argv):
    p = bench_common.parser(__doc__)
    p.add_argument('--gpus', type=int, default=2, help='N of the default plan')
    p.add_argument('--plan', default=None, help="';'-separated KIND:T:BATCH:MESH runs")
    helps = {
        'steps': 'timed steps (default 10)',
        'warmup': 'untimed steps (default 2)',
        'tiny': 'd_model 64, 2 layers, T 128-512 (CPU)',
    }
    bench_common.add_common_flags(p, DEFAULT_OUT, helps)
    return bench_common.parse_args(p, argv, FULL, TINY)


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    log = lambda s: print(s, flush=True)
    if args.table_from:
        runs, rows = bench_common.load_runs(args.table_from)
        compare(rows)
        for f, run in zip(args.table_from, runs):
            log(f'{f.name}: {run["meta"]["device"]}, jax {run["meta"]["versions"]["jax"]}')
        print_table(rows)
        if args.merge_out:
            args.merge_out.write_text(json.dumps(bench_common.merged(runs, rows), indent=1))
        return None
    if args.only:
        row = run_one(args, parse_run(args.only), log)
        args.row_out.write_text(json.dumps(row))
        return None

    plan = [parse_run(s) for s in (args.plan or default_plan(args.gpus, args.tiny)).split(';') if s]
    meta = {
        **bench_common.meta_start(argv, ('jax', 'jaxlib', 'jax-cuda13-plugin', 'flax')),
        'env': {k: os.environ.get(k) for k in ('NCCL_NVLS_ENABLE', 'XLA_FLAGS')},
        'flags': bench_common.stored_flags(args, ('only', 'row_out', 'table_from')),
        'timing': f'median of {args.steps} steps after compile + {args.warmup} warm-up steps',
        'scaling': 'strong: the same global batch on 1 and N devices; efficiency = '
        'tokens/s(N) / (N * tokens/s(1))',
        'loss_rel_tol': LOSS_REL_TOL,
    }
    result = {'meta': meta, 'rows': []}
    jobs = [
        (
            run['spec'],
            dict(run, status='skipped: budget'),
            partial(run_one, args, run, log),
            partial(run_isolated, argv, run, args.child_timeout_s, log),
        )
        for run in plan
    ]
    return bench_common.run_all(args, jobs, result, print_table, log, prepare=compare)


if __name__ == '__main__':
    main()
