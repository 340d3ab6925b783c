"""Text runs through the train loop: resume sees the same packed batches, eval reports perplexity."""

import json
import math
import os
from typing import ClassVar

import jax
import numpy as np

from effattn import config as config_lib
from effattn.eval.run import evaluate_workdir, load_run
from effattn.train import loop

DOCS = [f'document {i}: ' + 'abcdefghij'[i % 10] * (3 + i % 7) for i in range(30)]


def text_config(tmp_path, **train):
    path = tmp_path / 'corpus.txt'
    if not path.exists():
        path.write_text('\n'.join(DOCS) + '\n')
    c = config_lib.default_config()
    c.name = 'tiny-text'
    c.data.kind = 'text'
    c.data.train_files = str(path)
    c.data.eval_fraction = 0.2
    c.data.seq_len = 16
    c.model.vocab_size = 259
    c.model.d_model = 16
    c.model.num_layers = 1
    c.model.attention.num_heads = 2
    c.train.batch_size = 4
    c.train.steps = 6
    c.train.warmup_steps = 2
    c.train.log_every = 2
    c.checkpoint.every = 1000
    c.checkpoint.async_save = False
    for k, v in train.items():
        setattr(c.train, k, v)
    return config_lib.validate(c)


class Recorder(loop.Prefetcher):
    seen: ClassVar[list] = []

    def next(self):
        batch = super().next()
        Recorder.seen.append({k: v.copy() for k, v in batch.items()})
        return batch


def test_resumed_text_run_sees_identical_batches_and_params(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, 'Prefetcher', Recorder)
    cfg = text_config(tmp_path)
    Recorder.seen = []
    loop.train_and_evaluate(cfg, str(tmp_path / 'whole'), quiet=True)
    whole = Recorder.seen
    Recorder.seen = []
    loop.train_and_evaluate(cfg, str(tmp_path / 'split'), stop_after=3, quiet=True)
    assert len(Recorder.seen) == 3
    results = loop.train_and_evaluate(cfg, str(tmp_path / 'split'), quiet=True)
    split = Recorder.seen
    assert len(whole) == len(split) == 6
    for a, b in zip(whole, split):
        assert set(a) == {'inputs', 'labels', 'segment_ids'}
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert len({a['inputs'].tobytes() for a in whole}) == 6  # the stream moves on
    _, _, sa, step_a = load_run(str(tmp_path / 'whole'))
    _, _, sb, step_b = load_run(str(tmp_path / 'split'))
    assert step_a == step_b == 6
    for x, y in zip(jax.tree.leaves(jax.device_get(sa)), jax.tree.leaves(jax.device_get(sb))):
        np.testing.assert_array_equal(x, y)
    # evaluation on held-out documents: loss and perplexity, also in summary.json and eval.py
    assert set(results) == {'loss', 'perplexity', 'tokens'}
    assert math.isclose(results['perplexity'], math.exp(results['loss']), rel_tol=1e-9)
    with open(tmp_path / 'split' / 'summary.json') as f:
        assert json.load(f)['eval']['perplexity'] == results['perplexity']
    report = evaluate_workdir(str(tmp_path / 'split'))
    assert math.isclose(report['perplexity'], results['perplexity'], rel_tol=1e-6)


def test_text_loss_falls(tmp_path):
    cfg = text_config(tmp_path, steps=40, lr=1e-2, eval_every=40)
    workdir = str(tmp_path / 'run')
    results = loop.train_and_evaluate(cfg, workdir, quiet=True)
    assert results['perplexity'] < 259 / 4  # far below uniform over the byte vocabulary
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = [os.path.join(r, f) for r, _, fs in os.walk(workdir) for f in fs if 'tfevents' in f]
    tags = set()
    for path in logs:
        acc = EventAccumulator(path)
        acc.Reload()
        tags |= set(acc.Tags()['scalars'])
    assert {'eval/loss', 'eval/perplexity', 'train/loss'} <= tags
