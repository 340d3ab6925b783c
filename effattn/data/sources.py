"""Builds the training stream and evaluation sets that `config.data` describes."""

from __future__ import annotations

from effattn.config import Config
from effattn.data import mqar


def _settings(pairs, weights=()):
    weights = weights or (1,) * len(pairs)
    return tuple(mqar.MQARSetting(int(L), int(kv), int(w)) for (L, kv), w in zip(pairs, weights))


def train_stream(cfg: Config) -> mqar.MQARStream:
    """A stream whose `batch(step)` depends only on (seed, step): the data position is the step."""
    d = cfg.data
    return mqar.MQARStream(
        _settings(d.train_settings, d.train_weights),
        cfg.train.batch_size,
        vocab_size=d.vocab_size,
        power_a=d.power_a,
        random_non_queries=d.random_non_queries,
        seed=d.seed,
    )


def eval_sets(cfg: Config) -> dict[str, dict]:
    d = cfg.data
    return mqar.eval_sets(
        _settings(d.eval_settings),
        d.eval_examples,
        d.vocab_size,
        d.seed,
        power_a=d.power_a,
        random_non_queries=d.random_non_queries,
    )
