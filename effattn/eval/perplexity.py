"""Perplexity: exp of the token-weighted mean negative log-likelihood over packed rows.

Rows come from effattn.data.text (inputs, labels, segment_ids): the forward sees the segment ids, so
no document attends to another packed into the same row, and only labelled positions (the next token
of the same document; not -100) count. Every labelled token weighs the same, whatever its row.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

IGNORE_INDEX = -100


def make_nll(model_def) -> Callable:
    """nll(params, inputs, labels, segment_ids) -> (sum of NLL, number of labelled tokens), jitted."""

    @jax.jit
    def nll(params, inputs, labels, segment_ids):
        model = model_def.merge(params)
        logits = model(inputs, segment_ids=segment_ids)
        mask = labels != IGNORE_INDEX
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, labels, 0))
        return jnp.sum(jnp.where(mask, ce, 0.0)), jnp.sum(mask)

    return nll


def evaluate_perplexity(nll: Callable, params, rows: dict, batch_size: int) -> dict[str, float]:
    """{'loss': mean NLL per labelled token (nats), 'perplexity': exp(loss), 'tokens': count}.

    The last batch is padded to `batch_size` with unlabelled padding rows (one compilation).
    """
    inputs, labels, seg = rows['inputs'], rows['labels'], rows['segment_ids']
    total, count = 0.0, 0
    for i in range(0, len(inputs), batch_size):
        x, y, s = inputs[i : i + batch_size], labels[i : i + batch_size], seg[i : i + batch_size]
        pad = batch_size - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.full((pad, *y.shape[1:]), IGNORE_INDEX, y.dtype)])
            s = np.concatenate([s, np.zeros((pad, *s.shape[1:]), s.dtype)])
        a, n = jax.device_get(nll(params, x, y, s))
        total += float(a)
        count += int(n)
    if count == 0:
        raise ValueError('no labelled token to evaluate (every document is shorter than 2 tokens)')
    loss = total / count
    return {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)), 'tokens': count}


def perplexity_of_files(workdir: str, files: Sequence[str], batch_size: int = 0) -> dict:
    """Perplexity of the newest checkpoint of a text run on local files (its tokenizer, seq_len)."""
    from effattn.data import text
    from effattn.eval.run import EvalError, load_run

    cfg, model_def, state, step = load_run(workdir)
    if cfg.data.kind != 'text':
        raise EvalError(
            f'{workdir} is a {cfg.data.kind!r} run: --perplexity needs one trained on text '
            "(config.data.kind='text')"
        )
    try:
        rows = text.file_rows(cfg, files)
    except (text.TextDataError, text.ConfigError) as e:
        raise EvalError(str(e)) from e
    bs = batch_size or min(cfg.train.batch_size, 64)
    result = evaluate_perplexity(make_nll(model_def), state.params, rows, bs)
    return {
        'workdir': os.path.abspath(workdir),
        'step': step,
        'attention': cfg.model.attention.kind,
        'files': [os.path.abspath(f) for f in files],
        'seq_len': cfg.data.seq_len,
        **result,
    }
