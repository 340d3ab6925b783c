"""Restores the latest checkpoint of a run folder and evaluates it (used by eval.py)."""

from __future__ import annotations

import json
import os

from effattn import config as config_lib
from effattn.data import sources
from effattn.eval.accuracy import evaluate_accuracy
from effattn.train.checkpoint import CheckpointError, Checkpointer
from effattn.train.optimizer import make_optimizer
from effattn.train.state import create_train_state
from effattn.train.step import make_predict


class EvalError(RuntimeError):
    """The run folder cannot be evaluated; the message names the file."""


def load_run(workdir: str):
    """(config, model_def, state, step) from the newest readable checkpoint of `workdir`."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise EvalError(f'{path} not found: is {workdir} a run folder written by train.py?')
    try:
        with open(path) as f:
            cfg = config_lib.from_dict(json.load(f), check_files=False)  # the corpus may have moved
    except (json.JSONDecodeError, config_lib.ConfigError) as e:
        raise EvalError(f'{path}: {e}') from e
    tx = make_optimizer(cfg.train)
    model_def, state = create_train_state(cfg, tx)
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), cfg.checkpoint)
    try:
        restored = ckpt.restore_latest(state)
    except CheckpointError as e:
        raise EvalError(str(e)) from e
    finally:
        ckpt.close()
    if restored is None:
        raise EvalError(f'no readable checkpoint in {ckpt.directory}')
    state = restored[0]
    return cfg, model_def, state, int(state.step)


def evaluate_workdir(workdir: str) -> dict:
    cfg, model_def, state, step = load_run(workdir)
    if cfg.data.kind == 'text':  # language modelling: loss and perplexity on the eval documents
        from effattn.eval.perplexity import evaluate_perplexity, make_nll

        result = evaluate_perplexity(
            make_nll(model_def),
            state.params,
            sources.eval_sets(cfg)['text'],
            min(cfg.train.batch_size, 64),
        )
        return {
            'workdir': os.path.abspath(workdir),
            'step': step,
            'attention': cfg.model.attention.kind,
            'data': cfg.data.kind,
            **result,
        }
    acc = evaluate_accuracy(
        make_predict(model_def, cfg.model.head),
        state.params,
        sources.eval_sets(cfg),
        min(cfg.train.batch_size, 256),
    )
    return {
        'workdir': os.path.abspath(workdir),
        'step': step,
        'attention': cfg.model.attention.kind,
        'data': cfg.data.kind,
        'accuracy': acc,
    }
