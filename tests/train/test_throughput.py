"""The training throughput (tensorboard train/tokens_per_sec, the progress bar's tok_s, summary.json) counts
training steps only: time spent evaluating or checkpointing is left out of its interval."""

import os
import time

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from effattn.train import loop


def test_eval_and_checkpoint_time_is_left_out(tiny, tmp_path, monkeypatch):
    real_eval, real_save = loop.evaluate_accuracy, loop.Checkpointer.save

    def slow_eval(*args, **kwargs):
        time.sleep(0.5)
        return real_eval(*args, **kwargs)

    def slow_save(self, *args, **kwargs):
        time.sleep(0.5)
        return real_save(self, *args, **kwargs)
    monkeypatch.setattr(loop, 'evaluate_accuracy', slow_eval)
    monkeypatch.setattr(loop.Checkpointer, 'save', slow_save)
    cfg = tiny(train__steps=24, train__log_every=4, train__eval_every=8, checkpoint__every=12)
    workdir = str(tmp_path / 'run')
    loop.train_and_evaluate(cfg, workdir, quiet=True)
    acc = EventAccumulator(os.path.join(workdir, 'tb'))
    acc.Reload()
    tps = np.array([e.value for e in acc.Scalars('train/tokens_per_sec')])
    assert len(tps) >= 5
    # counted in, a 0.5 s pause would take its interval (4 steps of milliseconds) below 1/10 of the median
    assert tps.min() > 0.1 * np.median(tps), tps
