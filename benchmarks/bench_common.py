"""What benchmarks/train_throughput.py and benchmarks/scale.py share, a sibling script module of both.

Their common flags (the model of train_throughput's build_config, the timing, the child processes, the
budget, the stored files), the child process that runs one row (`--only RUN --row-out FILE`), the timed
loop of a compiled train step, the start of the result's meta, the loop over the runs (time budget, in
this process or a child each, the result saved after every row) and the reading of stored results
(--table-from, --merge-out). What each script measures, prints and stores beyond that stays in it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_oom(e: BaseException | str) -> bool:
    s = str(e).lower()
    return 'resource_exhausted' in s or 'out of memory' in s


# ----------------------------------------------------------------------------------------- flags


def parser(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_flags(p: argparse.ArgumentParser, default_out: Path, helps: dict[str, str]) -> None:
    """The flags of both scripts, after each one's own; helps: a flag's help text (by dest) as the
    script words it (none where absent)."""
    h = helps.get
    p.add_argument('--steps', type=int, default=None, help=h('steps'))
    p.add_argument('--warmup', type=int, default=None, help=h('warmup'))
    p.add_argument('--d-model', type=int, default=None)
    p.add_argument('--layers', type=int, default=None)
    p.add_argument('--heads', type=int, default=None, help=h('heads'))
    p.add_argument('--linear-heads', type=int, default=0, help=h('linear_heads'))
    p.add_argument('--vocab', type=int, default=None)
    p.add_argument('--mlp-hidden', type=int, default=0, help=h('mlp_hidden'))
    p.add_argument('--impl', default='auto', help=h('impl'))
    p.add_argument('--peak-tflops', type=float, default=None, help=h('peak_tflops'))
    p.add_argument('--tiny', action='store_true', help=h('tiny'))
    p.add_argument('--in-process', action='store_true', help=h('in_process'))
    p.add_argument('--child-timeout-s', type=float, default=590.0)
    p.add_argument('--budget-s', type=float, default=1e9, help='start no new run after this long')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', type=Path, default=default_out)
    p.add_argument('--table-from', nargs='+', type=Path, default=None, help=h('table_from'))
    p.add_argument('--merge-out', type=Path, default=None, help=h('merge_out'))
    p.add_argument('--only', default=None, help=argparse.SUPPRESS)  # child process: its one run
    p.add_argument('--row-out', type=Path, default=None, help=argparse.SUPPRESS)


def parse_args(p: argparse.ArgumentParser, argv, full: dict, tiny: dict) -> argparse.Namespace:
    """p's flags; those left None take the value of `tiny` (under --tiny) or `full`."""
    args = p.parse_args(argv)
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ------------------------------------------------------------------------------------------- run


def run_child(
    script: str, argv: list[str], only: str, timeout_s: float, env: dict | None = None
) -> tuple[dict | None, str | None, str | None]:
    """`script` in a child process with the same flags plus --only ONLY --row-out FILE: (its row, None,
    None), or where it wrote none (a crash or timeout) (None, status, its stderr's last line).

    The child's stdout streams through; its stderr is shown when the row is not 'ok'."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / 'row.json', Path(tmp) / 'stderr.txt'
        cmd = [sys.executable, str(Path(script).resolve()), *argv, '--only', only]
        cmd += ['--row-out', str(out)]
        with err.open('w') as f:
            try:
                code = subprocess.run(cmd, check=False, stderr=f, timeout=timeout_s, env=env).returncode
            except subprocess.TimeoutExpired:
                code = f'timeout after {timeout_s:.0f} s'
        text = err.read_text(errors='replace')
        row = json.loads(out.read_text()) if out.exists() else None
    if row is None or row['status'] != 'ok':
        sys.stderr.write('\n'.join(text.splitlines()[-30:]) + '\n')
    if row is not None:
        return row, None, None
    status = 'OOM' if is_oom(text) else f'error: exit code {code}'
    tail = text.strip().splitlines()[-1][:300] if text.strip() else ''
    return None, status, tail


def time_steps(compiled, state, data, warmup: int, steps: int, every_loss: bool = False):
    """warmup + steps calls of the compiled train step, block_until_ready on each one's metrics:
    (state, the seconds of each of the last `steps` calls, losses). losses: every call's (each read
    within its call's timing) with every_loss, else the last call's alone."""
    times, losses = [], []
    metrics = None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        if every_loss:
            losses.append(float(metrics['loss']))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if not every_loss:
        losses.append(float(metrics['loss']))
    return state, times, losses


def step_figures(times: list[float], tokens_per_step: int) -> dict:
    """step_ms (the median of times), step_ms_all and tokens_per_s of a row."""
    median = statistics.median(times)
    return {
        'step_ms': round(1e3 * median, 3),
        'step_ms_all': [round(1e3 * x, 3) for x in times],
        'tokens_per_s': round(tokens_per_step / median, 1),
    }


# ------------------------------------------------------------------------------------------- main


def meta_start(argv: list[str], packages: tuple[str, ...]) -> dict:
    """The first keys of a result's meta: command, date, device (None until a row names it), python
    and the versions of `packages`."""
    return {
        'command': ' '.join([Path(sys.argv[0]).name, *argv]),
        'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
        'device': None,  # from the first row (a parent of isolated runs never touches the GPU)
        'python': platform.python_version(),
        'versions': {n: version(n) for n in packages},
    }


def stored_flags(args: argparse.Namespace, leave_out: tuple[str, ...]) -> dict:
    """The flags for the meta (paths as strings), but those in leave_out."""
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {k: v for k, v in flags.items() if k not in leave_out}


def run_all(args, jobs, result: dict, print_table, log, prepare=None, device_keys=()) -> dict:
    """Runs jobs (name, the row if the budget is spent, run in this process, run in a child) in order,
    each in this process (args.in_process) or in a child, none started after args.budget_s; saves
    result to args.out after each (prepare(rows) first, when given), then prints the table.

    The meta takes device, backend and device_keys from the first row that names a device."""
    meta = result['meta']

    def save():
        if prepare is not None:
            prepare(result['rows'])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    start = time.perf_counter()
    for name, skipped, run_here, run_isolated in jobs:
        if time.perf_counter() - start > args.budget_s:
            log(f'  budget spent: skipping {name}')
            result['rows'].append(skipped)
            continue
        if args.in_process:
            row = run_here()
            jax.clear_caches()
        else:
            row = run_isolated()
        result['rows'].append(row)
        if meta['device'] is None and row.get('device'):
            meta['device'], meta['backend'] = row['device'], row.get('backend')
            for key in device_keys:
                meta[key] = row.get(key)
        save()
    meta['wall_s'] = round(time.perf_counter() - start, 1)
    save()
    print(f'\n{meta["device"]}, jax {meta["versions"]["jax"]}, bf16, median step:')
    print_table(result['rows'])
    print(f'wrote {args.out}')
    return result


def load_runs(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """Stored results (--table-from): (each file's result, all their rows in order)."""
    runs = [json.loads(f.read_text()) for f in paths]
    return runs, [r for run in runs for r in run['rows']]


def merged(runs: list[dict], rows: list[dict]) -> dict:
    """One result of several (--merge-out): the first one's meta, with every meta under merged_from."""
    meta = dict(runs[0]['meta'], merged_from=[run['meta'] for run in runs])
    return {'meta': meta, 'rows': rows}
