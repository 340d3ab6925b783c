"""The training loop: config -> data + model -> jitted steps -> checkpoints, tensorboard, evaluation.

Resume order: the newest readable checkpoint in ``workdir/checkpoints``, else a fresh start. A run is
resumed exactly (params, optimizer state, step = data position, RNG), so N steps + resume + N steps
equals 2N steps bitwise. Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves and exits; a NaN
or inf loss stops the run without saving, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import jax
import numpy as np

from effattn import config as config_lib
from effattn import parallel
from effattn.data import sources
from effattn.data.prefetch import Prefetcher
from effattn.eval.accuracy import evaluate_accuracy
from effattn.eval.perplexity import evaluate_perplexity, make_nll
from effattn.train.checkpoint import Checkpointer
from effattn.train.metrics import MetricsWriter, ProgressBar
from effattn.train.optimizer import lr_schedule, make_optimizer
from effattn.train.state import create_train_state, param_count
from effattn.train.step import make_predict, make_train_step


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN or inf; the run stopped without saving."""


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks between steps; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread: leave handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_workdir_config(workdir: str, cfg: config_lib.Config) -> None:
    """Refuses to resume a run whose model or data differ from the saved config (names the key)."""
    path = os.path.join(workdir, 'config.json')
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        try:  # fill in fields added since the run was saved with their defaults
            saved = json.loads(json.dumps(config_lib.to_dict(config_lib.from_dict(saved))))
        except config_lib.ConfigError:
            pass  # compared as saved: the first differing key is named below
        now = json.loads(json.dumps(config_lib.to_dict(cfg)))
        for section in ('model', 'data'):
            diff = _first_difference(saved.get(section, {}), now[section], f'config.{section}')
            if diff:
                raise config_lib.ConfigError(
                    f'{diff}: {path} holds a run with a different value; use a new --workdir '
                    'or the same settings to resume'
                )
    with open(path, 'w') as f:
        json.dump(config_lib.to_dict(cfg), f, indent=2)


def _first_difference(a, b, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f'{prefix}.{key}')
            if diff:
                return diff
        return None
    return None if a == b else f'{prefix} (saved {a!r}, now {b!r})'


def train_and_evaluate(
    cfg: config_lib.Config, workdir: str, *, stop_after: int | None = None, quiet: bool = False
) -> dict:
    """Trains (or resumes) the run in `workdir` and returns the final evaluation metrics.

    stop_after: stop after this many steps in this invocation, as an interruption would (tests).
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _check_workdir_config(workdir, cfg)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

    tx = make_optimizer(cfg.train)
    schedule = lr_schedule(cfg.train)
    mesh = parallel.make_mesh(cfg.mesh)
    parallel.check_batch(mesh, cfg.train.batch_size)
    model_def, state = create_train_state(cfg, tx, mesh)
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), cfg.checkpoint)
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state = restored[0]
        say(f'resumed from step {int(state.step)} ({ckpt.directory})')
    start = int(state.step)
    writer = MetricsWriter(workdir)
    say(
        f'workdir: {workdir}\n  checkpoints: {ckpt.directory}\n'
        f'  tensorboard: tensorboard --logdir {writer.logdir}\n'
        f'  parameters: {param_count(state.params):,}\n'
        f'  mesh: {parallel.describe(mesh)}'
    )
    if start == 0:
        writer.text(0, 'config', '```\n' + json.dumps(config_lib.to_dict(cfg), indent=2) + '\n```')

    stream = sources.train_stream(cfg)
    head = cfg.model.head
    train_step = make_train_step(
        model_def,
        tx,
        schedule,
        max_targets=stream.max_targets,
        head=head,
        state_sharding=parallel.sharding_of(state),
    )
    predict = make_predict(model_def, head)
    nll = make_nll(model_def)  # text: eval loss and perplexity
    eval_sets = None
    step_tokens = {}  # step -> tokens in its batch (MQAR mix_per_batch batches differ in length)

    def evaluate(step: int) -> dict:
        nonlocal eval_sets
        eval_sets = eval_sets or sources.eval_sets(cfg)
        if cfg.data.kind == 'text':  # language modelling: loss and perplexity, not accuracy
            results = evaluate_perplexity(
                nll, state.params, eval_sets['text'], min(cfg.train.batch_size, 64)
            )
            writer.scalars(step, {f'eval/{k}': results[k] for k in ('loss', 'perplexity')})
            return results
        results = evaluate_accuracy(
            predict, state.params, eval_sets, min(cfg.train.batch_size, 256)
        )
        writer.scalars(step, {f'eval/accuracy/{k}': v for k, v in results.items()})
        return results

    def save(step: int) -> None:
        ckpt.save(step, state, {'data_position': step, 'config': config_lib.to_dict(cfg)})

    bar = None if quiet else ProgressBar(cfg.train.steps, start)
    pending = None  # (step, device metrics) not yet checked
    # 'paused': seconds of evaluation and checkpointing since the interval began, left out of its tokens/s
    interval = {'loss': 0.0, 'accuracy': 0.0, 'n': 0, 'tokens': 0, 'paused': 0.0}
    last_time = None
    saved_step = start if restored is not None else -1
    results = {}

    def check(step: int, metrics: dict) -> dict:
        """Fetches step `step`'s metrics (after the next step was dispatched) and stops on NaN/inf."""
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(np.isfinite(host[k]) for k in ('loss', 'grad_norm', 'update_norm')):
            last = ckpt.steps()
            raise NonFiniteLossError(
                f'non-finite loss at step {step} (loss={host["loss"]}, grad_norm={host["grad_norm"]}, '
                f'update_norm={host["update_norm"]}); '
                f'stopped without saving. Last good checkpoint: '
                f'{f"step {last[0]} in {ckpt.directory}" if last else "none"}. Lower config.train.lr '
                'or enable config.train.grad_clip.'
            )
        return host

    def log(step: int, host: dict) -> None:
        nonlocal last_time
        interval['loss'] += host['loss']
        interval['accuracy'] += host['accuracy']
        interval['n'] += 1
        tokens = step_tokens.pop(step, 0)
        if last_time is None:  # the first step includes compilation: start the clock after it
            last_time = time.perf_counter()
            return
        interval['tokens'] += tokens
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
            now = time.perf_counter()
            tps = interval['tokens'] / max(now - last_time - interval['paused'], 1e-9)
            throughput.append(tps)
            n = interval['n']
            values = {
                'train/loss': interval['loss'] / n,
                'train/accuracy': interval['accuracy'] / n,
                'train/lr': host['lr'],
                'train/grad_norm': host['grad_norm'],
                'train/tokens_per_sec': tps,
            }
            writer.scalars(step + 1, values)
            if bar:
                bar.update(
                    0, loss=values['train/loss'], acc=values['train/accuracy'], tok_s=f'{tps:,.0f}'
                )
            interval.update(loss=0.0, accuracy=0.0, n=0, tokens=0, paused=0.0)
            last_time = now

    def paused(fn, *args):
        """fn(*args), its time left out of the training throughput."""
        began = time.perf_counter()
        try:
            return fn(*args)
        finally:
            interval['paused'] += time.perf_counter() - began

    interrupted = reached = False
    throughput = []  # tokens/s per logging interval (compilation excluded)
    data = Prefetcher(stream, start)
    try:
        with _StopRequest() as stop:
            for step in range(start, cfg.train.steps):
                batch = data.next()
                batch = {k: batch[k] for k in ('inputs', 'labels', 'segment_ids') if k in batch}
                step_tokens[step] = int(batch['inputs'].size)
                state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
                if pending is not None:
                    log(pending[0], check(*pending))
                pending = (step, metrics)
                if bar:
                    bar.update(1)
                done = step + 1
                at_save = done % cfg.checkpoint.every == 0
                at_eval = cfg.train.eval_every and done % cfg.train.eval_every == 0
                stop_now = stop.requested or (stop_after is not None and done - start >= stop_after)
                if at_save or at_eval or stop_now:
                    log(pending[0], check(*pending))  # never save unverified parameters
                    pending = None
                if at_save or stop_now:
                    paused(save, done)
                    saved_step = done
                if at_eval:
                    results = paused(evaluate, done)
                    if bar:
                        bar.write(f'step {done}: {_describe(results, short=True)}')
                    target = cfg.train.stop_at_accuracy
                    if target and results['mean'] >= target:
                        say(
                            f'\nreached eval accuracy {results["mean"]:.4f} >= {target} at step {done}'
                        )
                        reached = True
                        break
                if stop_now:
                    interrupted = stop.requested
                    break
            if pending is not None:
                log(pending[0], check(*pending))
            if saved_step != int(state.step):
                save(int(state.step))
    finally:
        data.close()
        if bar:
            bar.close()
        ckpt.close()
    if interrupted:
        writer.close()
        say(
            f'interrupted at step {int(state.step)}; checkpoint saved in {ckpt.directory}. '
            'Run the same command again to resume.'
        )
        raise KeyboardInterrupt
    if stop_after is not None and int(state.step) < cfg.train.steps and not reached:
        writer.close()
        return {}
    if not reached:
        results = evaluate(int(state.step))
    writer.close()
    summary = {
        'step': int(state.step),
        'eval': results,
        'params': param_count(state.params),
        'tokens_per_sec': float(np.median(throughput)) if throughput else None,
    }
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    say(_describe(results))
    return results


def _describe(results: dict, short: bool = False) -> str:
    if 'perplexity' in results:  # text
        return f'eval loss {results["loss"]:.4f}, perplexity {results["perplexity"]:.3f}'
    if short:
        return f'eval accuracy {results["mean"]:.4f}'
    return 'eval accuracy: ' + ', '.join(f'{k}={v:.4f}' for k, v in results.items())
