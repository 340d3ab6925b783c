"""Accuracy per evaluation set: MQAR recall per (seq_len, num_kv_pairs) setting (Zoology), ListOps."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

IGNORE_INDEX = -100


def evaluate_accuracy(
    predict: Callable, params, sets: dict[str, dict], batch_size: int
) -> dict[str, float]:
    """Accuracy over labelled entries (label != -100) of each eval set, plus 'mean' over the sets.

    predict(params, inputs [B, T]) -> predictions shaped like the labels ([B, T] tokens or [B]
    classes). The last batch of a set is padded to `batch_size` (pad rows carry no labels) so that
    each sequence length compiles once.
    """
    results = {}
    for name, data in sets.items():
        inputs, labels = data['inputs'], data['labels']
        correct = total = 0
        for i in range(0, len(inputs), batch_size):
            x, y = inputs[i : i + batch_size], labels[i : i + batch_size]
            pad = batch_size - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
                y = np.concatenate([y, np.full((pad, *y.shape[1:]), IGNORE_INDEX, y.dtype)])
            pred = np.asarray(predict(params, x))
            mask = y != IGNORE_INDEX
            correct += int(((pred == y) & mask).sum())
            total += int(mask.sum())
        results[name] = correct / max(total, 1)
    results['mean'] = float(np.mean([results[n] for n in sets]))
    return results
