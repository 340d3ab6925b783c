"""Builds the training stream and evaluation sets that `config.data` describes.

Every stream's `batch(step)` depends only on (seed, step), so the data position to checkpoint is the
step number and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from effattn.config import Config
from effattn.data import listops, mqar, text


def _settings(pairs, weights=()):
    weights = weights or (1,) * len(pairs)
    return tuple(mqar.MQARSetting(int(L), int(kv), int(w)) for (L, kv), w in zip(pairs, weights))


def _listops_kw(cfg: Config) -> dict:
    d = cfg.data
    return dict(
        min_length=d.min_length, max_length=d.max_length, max_depth=d.max_depth, max_args=d.max_args
    )


def train_stream(cfg: Config):
    d = cfg.data
    if d.kind == 'text':
        return text.train_stream(cfg)
    if d.kind == 'listops':
        return listops.ListOpsStream(
            cfg.train.batch_size, d.seq_len, seed=d.seed, **_listops_kw(cfg)
        )
    return mqar.MQARStream(
        _settings(d.train_settings, d.train_weights),
        cfg.train.batch_size,
        vocab_size=d.vocab_size,
        power_a=d.power_a,
        random_non_queries=d.random_non_queries,
        seed=d.seed,
        per_batch=d.mix_per_batch,
    )


def eval_sets(cfg: Config) -> dict[str, dict]:
    d = cfg.data
    if d.kind == 'text':  # packed rows with segment_ids, evaluated by loss and perplexity
        return {'text': text.eval_set(cfg)}
    if d.kind == 'listops':
        return {
            'listops': listops.eval_set(d.eval_examples, d.seq_len, seed=d.seed, **_listops_kw(cfg))
        }
    return mqar.eval_sets(
        _settings(d.eval_settings),
        d.eval_examples,
        d.vocab_size,
        d.seed,
        power_a=d.power_a,
        random_non_queries=d.random_non_queries,
    )
