"""Training tokens/s and model FLOPs utilisation (MFU) of a ~125M-parameter LM per attention kind.

The model is effattn's decoder LM (effattn/models/lm.py), configs/base.py with overrides: d_model
768, 12 layers, 12 heads of 64 (--heads; --linear-heads for the non-softmax kinds), SwiGLU MLP
(hidden 2048 = 8/3 d_model, Llama's rule; --mlp-hidden), vocabulary 32000, tied embeddings, bf16
compute with fp32 parameters, AdamW with global-norm clipping: 109.5M parameters for softmax.
Each (kind, T) runs the project's own train step (create_train_state + make_optimizer +
make_train_step, what train.py runs) on one device, with a fixed number of tokens per step
(batch = --tokens-per-step / T, or --batch), on random tokens made on the device once (no data
pipeline in the timing). The step is compiled ahead of time (compile time reported apart),
--warmup steps run, then --steps steps are timed one by one (block_until_ready on the metrics);
the table reports the median.

FLOP model: model FLOPs (not hardware FLOPs), per token, fwd+bwd = 3 x fwd, the same for every kind:
  dense    6 * (N - V*d) + 6 * V*d   N: trainable parameters; the embedding table V*d is a gather
           (no FLOPs); 6*V*d: the tied LM-head matmul (untied embeddings: 6 * (N - V*d))
  softmax  3 * L * H * T * (Dk + Dv) = 6 * L * T * d for Dk = Dv = d/H: scores and values cost
           2*T*(Dk+Dv) FLOPs forward per token and head, halved for the causal mask (PaLM appendix
           B's 12*L*H*Q*T, halved)
  linear   3 * L * H * (C * (Dk + Dv) + 4 * Dk * Dv), C = attention.chunk_size (64): intra-chunk
           scores and values (causal half of a C x C block) plus the state terms (q S and the k^T v
           update, 2*Dk*Dv FLOPs each); for linear, lightning, gla, deltanet and gated_deltanet
           alike. Gates, the delta rule's WY transform and triangular solve, normalisers and feature
           maps are not counted: their MFU is conservative.
  MFU = (dense + attention) FLOPs/token * tokens/s / peak dense bf16 FLOP/s (H100 SXM and H200:
  989.4 TFLOP/s; by device_kind; --peak-tflops to override; none on CPU).
Memory: the device's peak_bytes_in_use (where the backend reports it) and XLA's compiled estimate
(arguments + outputs - aliased + temporaries). An out-of-memory (kind, T) is recorded as 'OOM'.
Each (kind, T) runs in its own process (--in-process: all in this one), so that the peak memory
is that run's alone and an OOM or crash leaves the other rows alone.

  python benchmarks/train_throughput.py                       # 6 kinds x T in {2048, 8192}, GPU
  python benchmarks/train_throughput.py --tiny --in-process   # d_model 64, 2 layers, T=128, CPU
  python benchmarks/train_throughput.py --kinds softmax,gla --seq-lens 8192 --out /tmp/x.json
  python benchmarks/train_throughput.py --table-from a.json b.json --merge-out merged.json
"""

from __future__ import annotations

import os

# Let XLA's allocator use more of the GPU than its default 75% (nothing else runs beside it).
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.92')

import json
import statistics
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import base as base_config
from effattn import config as config_lib
from effattn import parallel
from effattn.attention import linear_family
from effattn.train.optimizer import lr_schedule, make_optimizer
from effattn.train.state import create_train_state, param_count
from effattn.train.step import make_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402  (a sibling script module)
import profiling  # noqa: E402  (a sibling script module)

KINDS = ('softmax', 'gla', 'deltanet', 'gated_deltanet', 'lightning', 'linear')
QUADRATIC_KINDS = ('softmax', 'sigmoid')  # T x T scores
CHUNKWISE_KINDS = ('linear', 'lightning', 'gla', 'deltanet', 'gated_deltanet')
DEFAULT_OUT = Path(__file__).resolve().parent / 'results' / 'train_throughput.json'
# Peak dense bf16 tensor-core FLOP/s (no sparsity), by device_kind substring; the first match wins.
PEAK_BF16_TFLOPS = (
    ('H100 PCIe', 756.0),
    ('H100 NVL', 835.0),
    ('H100', 989.4),
    ('H200', 989.4),
    ('A100', 312.0),
)
FULL = {
    'd_model': 768,
    'layers': 12,
    'heads': 12,
    'vocab': 32000,
    'seq_lens': '2048,8192',
    'tokens_per_step': 65536,
    'steps': 20,
    'warmup': 3,
}
TINY = {
    'd_model': 64,
    'layers': 2,
    'heads': 4,
    'vocab': 256,
    'seq_lens': '128',
    'tokens_per_step': 512,
    'steps': 2,
    'warmup': 1,
}


def peak_tflops(device_kind: str) -> float | None:
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device_kind.lower():
            return tflops
    return None


# ---------------------------------------------------------------------------------------- config


def heads_for(args, kind: str) -> int:
    return args.heads if kind in QUADRATIC_KINDS or not args.linear_heads else args.linear_heads


def build_config(
    args, kind: str, seq_len: int, batch: int, mesh: dict[str, int] | None = None
) -> config_lib.Config:
    """configs/base.py with the benchmark's model and train overrides, validated.

    mesh: config.mesh axis sizes (default data=1: one device)."""
    c = base_config.get_config()
    c.name = 'train_throughput'
    m, a = c.model, c.model.attention
    m.vocab_size = c.data.vocab_size = args.vocab
    m.d_model, m.num_layers = args.d_model, args.layers
    m.mlp, m.mlp_hidden = 'swiglu', args.mlp_hidden
    m.tie_embeddings = True
    m.compute_dtype = 'bfloat16'  # parameters stay float32
    a.kind, a.num_heads, a.impl = kind, heads_for(args, kind), args.impl
    # The data section is not read (random tokens): a text LM whose files are not checked, so
    # that any T validates (MQAR would need vocab_size > T).
    c.data.kind = 'text'
    c.data.seq_len = seq_len
    c.train.batch_size = batch
    c.train.steps = args.warmup + args.steps + 1  # the lr schedule only
    c.train.warmup_steps = 1
    for axis, size in (mesh or {'data': 1}).items():
        setattr(c.mesh, axis, size)
    return config_lib.validate(c, check_files=False)


# ----------------------------------------------------------------------------------------- flops


def flops_per_token(cfg: config_lib.Config, n_params: int) -> dict:
    """Model FLOPs per token of a training step (fwd + bwd), as the module docstring says."""
    m = cfg.model
    d, v, t = m.d_model, m.vocab_size, cfg.data.seq_len
    embed = v * d
    dense = 6 * (n_params - embed) + (6 * embed if m.tie_embeddings else 0)
    h, dk, dv = linear_family.head_dims(m)
    chunk = m.attention.chunk_size
    attention, unmodelled = 0, []
    for kind in config_lib.layer_kinds(m):
        if kind in QUADRATIC_KINDS:
            attention += 3 * h * t * (dk + dv)
        elif kind in CHUNKWISE_KINDS:
            attention += 3 * h * (chunk * (dk + dv) + 4 * dk * dv)
        elif kind not in unmodelled:
            unmodelled.append(kind)
    out = {'dense': dense, 'attention': attention, 'total': dense + attention}
    if unmodelled:
        out['note'] = f'attention FLOPs not modelled for {", ".join(unmodelled)} (dense only)'
    return out


# ------------------------------------------------------------------------------------------- run


def random_batch(mesh, batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    """Random tokens [B, T+1] made on the device: inputs tokens[:, :-1], labels tokens[:, 1:]."""
    sharding = NamedSharding(mesh, parallel.batch_spec(2))

    @partial(jax.jit, out_shardings={'inputs': sharding, 'labels': sharding})
    def make(key):
        tokens = jax.random.randint(key, (batch, seq_len + 1), 0, vocab, jnp.int32)
        return {'inputs': tokens[:, :-1], 'labels': tokens[:, 1:]}

    return make(jax.random.key(seed))


def gib(n) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def run_one(args, kind: str, seq_len: int, log) -> dict:
    """Builds, compiles and times the train step of one (kind, T); an OOM or error is its status."""
    batch = args.batch or max(1, args.tokens_per_step // seq_len)
    dev = jax.devices()[0]
    row = {
        'kind': kind,
        'seq_len': seq_len,
        'batch': batch,
        'tokens_per_step': batch * seq_len,
        'heads': heads_for(args, kind),
        'head_dim': args.d_model // heads_for(args, kind),
        'device': getattr(dev, 'device_kind', str(dev)),
        'backend': jax.default_backend(),
        'status': 'ok',
    }
    row['peak_tflops'] = args.peak_tflops or peak_tflops(row['device'])
    try:
        cfg = build_config(args, kind, seq_len, batch)
        mesh = parallel.single_device_mesh()
        tx = make_optimizer(cfg.train)
        model_def, state = create_train_state(cfg, tx, mesh)
        n = param_count(state.params)
        row['params'] = n
        row['params_non_embedding'] = n - cfg.model.vocab_size * cfg.model.d_model
        row['flops_per_token'] = flops_per_token(cfg, n)
        step = make_train_step(
            model_def, tx, lr_schedule(cfg.train), state_sharding=parallel.sharding_of(state)
        )
        data = random_batch(mesh, batch, seq_len, cfg.model.vocab_size, args.seed)
        t0 = time.perf_counter()
        compiled = step.lower(state, data).compile()
        row['compile_s'] = round(time.perf_counter() - t0, 2)
        try:
            ma = compiled.memory_analysis()
            row['xla_mem_gib'] = gib(
                ma.argument_size_in_bytes
                + ma.output_size_in_bytes
                - ma.alias_size_in_bytes
                + ma.temp_size_in_bytes
            )
            row['xla_temp_gib'] = gib(ma.temp_size_in_bytes)
        except Exception:  # noqa: BLE001  (memory_analysis is not available on every backend)
            row['xla_mem_gib'] = row['xla_temp_gib'] = None
        state, times, losses = bench_common.time_steps(compiled, state, data, args.warmup, args.steps)
        row['loss'] = losses[-1]
        row.update(bench_common.step_figures(times, batch * seq_len))
        median = statistics.median(times)
        achieved = row['flops_per_token']['total'] * batch * seq_len / median
        row['model_tflops_per_s'] = round(achieved / 1e12, 3)
        row['mfu'] = (
            round(achieved / (row['peak_tflops'] * 1e12), 5) if row['peak_tflops'] else None
        )
        if args.profile_steps:
            row['profile'] = profile_steps(compiled, state, data, args.profile_steps)
    except Exception as e:  # noqa: BLE001  (OOM or any failure becomes the row's status)
        if bench_common.is_oom(e):
            row['status'] = 'OOM'
            row['error'] = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        else:
            traceback.print_exc()
            first = str(e).splitlines()[0][:300] if str(e) else ''
            row['status'] = f'error: {type(e).__name__}: {first}'
    stats = dev.memory_stats() if hasattr(dev, 'memory_stats') else None
    row['peak_mem_gib'] = gib((stats or {}).get('peak_bytes_in_use'))
    log(f'  {kind:15s} T={seq_len:<6d} B={batch:<4d} {row["status"]:3s} ' + summary(row))
    if row.get('profile'):
        p = row['profile']
        log(f'    device {p["busy_ms"]} ms per step: '
            + ', '.join(f'{k} {v}' for k, v in p['ms_by_kind'].items()))
    return row


def profile_steps(compiled, state, data, steps: int) -> dict:
    """Device time of `steps` more train steps under jax's profiler (profiling.py), per step: busy ms, ms by kind
    of kernel (effattn's attention kernels, cuDNN, matmuls, other XLA) and the 12 longest kernels."""
    carry = {'state': state}

    def one_step():
        carry['state'], metrics = compiled(carry['state'], data)  # the step may donate its state
        return metrics
    p = profiling.profile(one_step, steps)
    return {
        'steps': steps,
        'busy_ms': round(p['busy_us'] / 1e3, 3),
        'ms_by_kind': {k: round(v / 1e3, 3) for k, v in p['categories'].items()},
        'top_kernels': [dict(k, us=round(k['us'], 1)) for k in p['kernels'][:12]],
    }


def summary(row: dict) -> str:
    if row['status'] != 'ok':
        return ''
    mfu = '-' if row['mfu'] is None else f'{100 * row["mfu"]:.1f}%'
    return (
        f'params {row["params"]:,}  step {row["step_ms"]:.2f} ms  '
        f'{row["tokens_per_s"]:,.0f} tok/s  '
        f'MFU {mfu}  compile {row["compile_s"]:.1f} s  loss {row["loss"]:.3f}'
    )


def run_isolated(argv: list[str], kind: str, seq_len: int, timeout_s: float, log) -> dict:
    """run_one in a child process (same flags plus --only kind:T); a crash or timeout becomes a row."""
    row, status, tail = bench_common.run_child(__file__, argv, f'{kind}:{seq_len}', timeout_s)
    if row is not None:
        return row
    log(f'  {kind:15s} T={seq_len:<6d} {status}: {tail}')
    return {'kind': kind, 'seq_len': seq_len, 'status': status, 'error': tail}


# ------------------------------------------------------------------------------------------ table


def print_table(rows: list[dict]) -> None:
    head = (
        f'{"kind":15s} {"T":>6s} {"batch":>5s} {"params":>12s} {"step ms":>9s} {"tokens/s":>10s} '
        f'{"MFU %":>6s} {"peak GiB":>8s} {"xla GiB":>8s}'
    )
    print(head)

    def f(x, fmt):
        return '-' if x is None else format(x, fmt)

    for r in rows:
        if r.get('status') != 'ok':
            print(f'{r["kind"]:15s} {r["seq_len"]:>6d} {f(r.get("batch"), "d"):>5s} {r["status"]}')
            continue
        mfu = None if r['mfu'] is None else 100 * r['mfu']
        print(
            f'{r["kind"]:15s} {r["seq_len"]:>6d} {r["batch"]:>5d} {r["params"]:>12,d} '
            f'{r["step_ms"]:>9.2f} {r["tokens_per_s"]:>10,.0f} {f(mfu, ".1f"):>6s} '
            f'{f(r["peak_mem_gib"], ".2f"):>8s} {f(r.get("xla_mem_gib"), ".2f"):>8s}'
        )


# ------------------------------------------------------------------------------------------- main


def parse_args(argv):
    p = bench_common.parser(__doc__)
    p.add_argument('--kinds', default=','.join(KINDS))
    p.add_argument(
        '--seq-lens', default=None, help='comma separated (default 2048,8192; --tiny 128)'
    )
    p.add_argument(
        '--tokens-per-step', type=int, default=None, help='batch = this / T (default 65536)'
    )
    p.add_argument(
        '--batch', type=int, default=0, help='fixed batch size instead of --tokens-per-step'
    )
    p.add_argument(
        '--profile-steps', type=int, default=0,
        help="also trace this many steps with jax's profiler: device ms by kind of kernel (GPU)",
    )
    helps = {
        'steps': 'timed steps (default 20)',
        'warmup': 'untimed steps after compiling (default 3)',
        'heads': 'attention heads (default 12)',
        'linear_heads': 'heads of the non-softmax kinds; 0 = --heads',
        'mlp_hidden': 'SwiGLU hidden; 0 = 8/3 d_model',
        'impl': 'config.model.attention.impl',
        'peak_tflops': 'peak bf16 TFLOP/s for the MFU',
        'tiny': 'd_model 64, 2 layers, vocab 256, T=128, 2 steps',
        'in_process': 'run every (kind, T) in this process',
        'table_from': 'print stored runs, exit',
        'merge_out': 'with --table-from: write the merged rows here',
    }
    bench_common.add_common_flags(p, DEFAULT_OUT, helps)  # --only kind:T in a child process
    return bench_common.parse_args(p, argv, FULL, TINY)


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    log = lambda s: print(s, flush=True)
    if args.table_from:
        runs, rows = bench_common.load_runs(args.table_from)
        for f, run in zip(args.table_from, runs):
            m = run['meta']
            log(f'{f.name}: {m["device"]}, jax {m["versions"]["jax"]}, {m["date"]}')
        print_table(rows)
        if args.merge_out:  # one file from several runs (e.g. one device call per kind group)
            args.merge_out.parent.mkdir(parents=True, exist_ok=True)
            args.merge_out.write_text(json.dumps(bench_common.merged(runs, rows), indent=1))
            log(f'wrote {args.merge_out}')
        return None
    if args.only:  # child: one (kind, T), row to --row-out
        kind, t = args.only.rsplit(':', 1)
        row = run_one(args, kind, int(t), log)
        args.row_out.write_text(json.dumps(row))
        return None

    kinds = [k for k in args.kinds.split(',') if k]
    seq_lens = [int(t) for t in str(args.seq_lens).split(',') if t]
    packages = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax')
    meta = {
        **bench_common.meta_start(argv, packages),
        'flags': bench_common.stored_flags(args, ('only', 'row_out', 'table_from', 'merge_out')),
        'dtype': 'bf16 compute, fp32 params',
        'timing': f'median of {args.steps} steps after compile + {args.warmup} warm-up steps, '
        'block_until_ready on each step',
        'flop_model': 'per token: 6*(N - V*d) + 6*V*d (tied head) + attention; softmax '
        '3*L*H*T*(Dk+Dv) (causal half); linear kinds 3*L*H*(C*(Dk+Dv) + 4*Dk*Dv), C = chunk_size',
        'isolated': not args.in_process,
    }
    result = {'meta': meta, 'rows': []}
    jobs = [
        (
            f'{kind} T={t}',
            {'kind': kind, 'seq_len': t, 'status': 'skipped: budget'},
            partial(run_one, args, kind, t, log),
            partial(run_isolated, argv, kind, t, args.child_timeout_s, log),
        )
        for t in seq_lens
        for kind in kinds
    ]
    return bench_common.run_all(args, jobs, result, print_table, log, device_keys=('peak_tflops',))


if __name__ == '__main__':
    main()
