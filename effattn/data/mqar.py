"""Multi-query associative recall (MQAR), as Zoology specifies it (Arora, Eyuboglu et al. 2023, arXiv 2312.04927).

Reference: HazyResearch/zoology `zoology/data/multiquery_ar.py` (`multiquery_ar`, num_passes=1). A row of length L
with D key-value pairs looks like (random_non_queries=False, V=32, D=2, L=16)::

    inputs:  2     8    4    7    0    0    4    0    0    0    0    0    2    0    0    0
    labels: -100 -100 -100 -100 -100 -100  7   -100 -100 -100 -100 -100  8   -100 -100 -100

keys are D distinct tokens from [1, V/2), values D distinct tokens from [V/2, V), the context is
[k1, v1, ..., kD, vD], and key i is queried again at position 2D + 2*gap_i, where the gaps are D distinct draws from
{0, ..., space-1}, space = (L - 2D) / 2, with power-law probabilities p(g) ∝ a * g^(a-1), g = 1..space (a = power_a;
a = 1 is uniform). The label of the query position is the key's value; every other label is -100 (ignored by loss and
accuracy).

Everything here is pure numpy and deterministic given the numpy Generator (or seed) passed in; nothing touches global
RNG state. Generation is vectorised over the batch (no per-row Python loop).

The distribution is Zoology's; the random numbers are not (Zoology draws row by row from numpy's *global* RNG and fills
the non-query positions from torch's unseeded global RNG, so its data are not reproducible bit for bit anyway).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

IGNORE_INDEX = -100

__all__ = [
    'IGNORE_INDEX', 'MQARSetting', 'MQARStream', 'ZOOLOGY_FIGURE2_TEST', 'ZOOLOGY_FIGURE2_TRAIN', 'eval_sets',
    'generate_mqar', 'gap_probabilities', 'mqar_accuracy',
]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})')
    if value < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {name}={value}')
    return int(value)


def _check_setting(seq_len, num_kv_pairs, vocab_size=None) -> tuple[int, int]:
    """Zoology's asserts (num_passes=1), as ValueErrors naming the argument and its value."""
    seq_len = _check_int('seq_len', seq_len, 2)
    num_kv_pairs = _check_int('num_kv_pairs', num_kv_pairs, 1)
    if seq_len % 2:
        raise ValueError(f'seq_len must be even, got seq_len={seq_len}')
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(f'num_kv_pairs must satisfy 4 * num_kv_pairs <= seq_len (context of 2D tokens plus room for D '
                         f'queries), got num_kv_pairs={num_kv_pairs}, seq_len={seq_len}')
    if vocab_size is not None:
        vocab_size = _check_int('vocab_size', vocab_size, 1)
        if vocab_size <= seq_len:
            raise ValueError(f'vocab_size must be > seq_len, got vocab_size={vocab_size}, seq_len={seq_len}')
    return seq_len, num_kv_pairs


def gap_probabilities(seq_len: int, num_kv_pairs: int, power_a: float = 0.01) -> np.ndarray:
    """p[g] for gap g = 0..space-1: Zoology's power law a * (g+1)^(a-1), normalised (float64, shape [space])."""
    seq_len, num_kv_pairs = _check_setting(seq_len, num_kv_pairs)
    if isinstance(power_a, bool) or not isinstance(power_a, (int, float, np.integer, np.floating)) \
            or not np.isfinite(power_a) or power_a <= 0:
        raise ValueError(f'power_a must be a finite number > 0 (1.0 = uniform gaps), got power_a={power_a!r}')
    space = (seq_len - 2 * num_kv_pairs) // 2
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    return p / p.sum()


def _ordered_sample_uniform(rng: np.random.Generator, batch: int, n: int, k: int,
                            method: str | None = None) -> np.ndarray:
    """[batch, k] indices in [0, n): per row k distinct, as an ordered uniform sample (= np.random.choice(n, k, False)).

    'reject' draws rows with replacement and redraws every row holding a repeat (exact: iid uniform draws conditioned on
    being distinct are a uniform ordered sample); used when a row is distinct with probability >= 1/2. 'sort' takes the
    k smallest of n iid uniforms in increasing order (exact, costs batch * n).
    """
    if method is None:
        p_distinct = np.prod(1.0 - np.arange(k) / n)
        method = 'reject' if p_distinct >= 0.5 else 'sort'
    if method == 'reject':
        out = rng.integers(0, n, size=(batch, k))
        todo = np.arange(batch)
        while todo.size:
            s = np.sort(out[todo], axis=1)
            todo = todo[(s[:, 1:] == s[:, :-1]).any(axis=1)]
            if todo.size:
                out[todo] = rng.integers(0, n, size=(todo.size, k))
        return out
    u = rng.random((batch, n))
    idx = np.argpartition(u, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), (batch, n))
    order = np.argsort(np.take_along_axis(u, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def _ordered_sample_weighted(rng: np.random.Generator, batch: int, p: np.ndarray, k: int) -> np.ndarray:
    """[batch, k] indices: per row k distinct draws from p without replacement, in draw order.

    Gumbel-top-k: the indices of the k largest log p_i + G_i (G_i iid standard Gumbel), sorted by decreasing key, have
    exactly the distribution of k sequential draws without replacement (each draw ∝ p over the items not yet drawn),
    order included (Vieira 2014; Kool et al. 2019, arXiv 1903.06059). That is what np.random.choice(replace=False, p=p)
    samples in Zoology (numpy's implementation rejects repeats, which is the same sequential law).
    """
    n = p.shape[0]
    with np.errstate(divide='ignore'):  # p underflowing to 0 gives -inf: never drawn, like np.random.choice
        z = np.log(p) + rng.gumbel(size=(batch, n))
    idx = np.argpartition(-z, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), (batch, n))
    order = np.argsort(-np.take_along_axis(z, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def generate_mqar(rng: np.random.Generator, batch_size: int, seq_len: int, num_kv_pairs: int, vocab_size: int = 8192,
                  power_a: float = 0.01, random_non_queries: bool = True) -> dict[str, np.ndarray]:
    """MQAR batch as Zoology's `multiquery_ar` (num_passes=1): dict(inputs, labels), int32 [B, L], label -100 = none.

    Random numbers are drawn from `rng` in this order: keys, values, gaps, then the non-query fill.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f'rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}')
    batch_size = _check_int('batch_size', batch_size, 1)
    seq_len, d = _check_setting(seq_len, num_kv_pairs, vocab_size)
    vocab_size = int(vocab_size)
    p = gap_probabilities(seq_len, d, power_a)
    context = 2 * d
    half = vocab_size // 2

    keys = 1 + _ordered_sample_uniform(rng, batch_size, half - 1, d)               # D distinct from [1, V/2)
    values = half + _ordered_sample_uniform(rng, batch_size, vocab_size - half, d)  # D distinct from [V/2, V)
    gaps = _ordered_sample_weighted(rng, batch_size, p, d)                         # D distinct from {0..space-1}

    # Zoology builds seq = context ++ queries (length L+1) and labels (length L+1) with labels[2D + 2 gap + 1] = value,
    # then takes inputs = seq[:-1], labels = labels[1:]: the value is the label of the query position 2D + 2 gap itself.
    inputs = np.zeros((batch_size, seq_len), dtype=np.int32)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    query_pos = context + 2 * gaps
    np.put_along_axis(inputs, query_pos, keys.astype(np.int32), axis=1)
    labels = np.full((batch_size, seq_len), IGNORE_INDEX, dtype=np.int32)
    np.put_along_axis(labels, query_pos, values.astype(np.int32), axis=1)

    if random_non_queries:  # every 0 becomes uniform in [0, V) (may be 0 again, or a key: as in Zoology)
        fill = rng.integers(0, vocab_size, size=inputs.shape, dtype=np.int32)
        inputs = np.where(inputs == 0, fill, inputs)
    return {'inputs': inputs, 'labels': labels}


@dataclasses.dataclass(frozen=True)
class MQARSetting:
    """One MQAR setting (seq_len, num_kv_pairs); num_examples: Zoology's count, the stream's mixture weight."""
    seq_len: int
    num_kv_pairs: int
    num_examples: int = 1

    def __post_init__(self):
        _check_setting(self.seq_len, self.num_kv_pairs)
        _check_int('num_examples', self.num_examples, 1)

    @property
    def name(self) -> str:
        return f'L{self.seq_len}-KV{self.num_kv_pairs}'

    @property
    def weight(self) -> int:
        return self.num_examples


# Zoology arxiv24_based_figure2 configs (batch size 256).
ZOOLOGY_FIGURE2_TRAIN = (
    MQARSetting(64, 4, 100_000), MQARSetting(128, 8, 20_000), MQARSetting(256, 16, 20_000),
    MQARSetting(256, 32, 20_000), MQARSetting(256, 64, 20_000),
)
ZOOLOGY_FIGURE2_TEST = (
    MQARSetting(64, 4, 1_000), MQARSetting(64, 8, 1_000), MQARSetting(64, 16, 1_000), MQARSetting(128, 32, 1_000),
    MQARSetting(256, 64, 1_000), MQARSetting(512, 128, 1_000), MQARSetting(1024, 256, 1_000),
)


def _as_settings(settings) -> tuple[MQARSetting, ...]:
    settings = tuple(settings)
    if not settings:
        raise ValueError('settings must be a non-empty sequence of MQARSetting')
    for i, s in enumerate(settings):
        if not isinstance(s, MQARSetting):
            raise ValueError(f'settings[{i}] must be an MQARSetting, got {type(s).__name__}')
    return settings


class MQARStream:
    """Deterministic, resumable MQAR training stream over a mixture of settings.

    `batch(step)` depends only on (seed, step): it draws from np.random.default_rng([seed, step]), so the data position
    to checkpoint is the step number. Each example's setting is drawn ∝ the settings' weights; rows are right-padded to
    the longest seq_len with input 0 and label -100 (a causal model's outputs on the real tokens are unaffected).
    per_batch=True draws one setting per batch instead, and the batch is only as long as that setting: a mixture of
    short and long settings then costs what its tokens cost, not the longest length for every row (the train step
    compiles once per length).
    """

    def __init__(self, settings: Sequence[MQARSetting], batch_size: int, *, vocab_size: int = 8192,
                 power_a: float = 0.01, random_non_queries: bool = True, seed: int = 0, per_batch: bool = False):
        self.settings = _as_settings(settings)
        self.per_batch = bool(per_batch)
        self.batch_size = _check_int('batch_size', batch_size, 1)
        self.seed = _check_int('seed', seed, 0)
        for s in self.settings:
            _check_setting(s.seq_len, s.num_kv_pairs, vocab_size)
            gap_probabilities(s.seq_len, s.num_kv_pairs, power_a)  # validates power_a
        self.vocab_size = int(vocab_size)
        self.power_a = power_a
        self.random_non_queries = bool(random_non_queries)
        self.seq_len = max(s.seq_len for s in self.settings)
        w = np.array([s.weight for s in self.settings], dtype=np.float64)
        self.probs = w / w.sum()

    @property
    def max_targets(self) -> int:
        """Most labelled positions in any row (one per key-value pair)."""
        return max(s.num_kv_pairs for s in self.settings)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """dict(inputs=int32 [B, L], labels=int32 [B, L], setting=int32 [B] index into self.settings).

        L is the longest seq_len, or with per_batch the seq_len of the batch's one setting.
        """
        step = _check_int('step', step, 0)
        rng = np.random.default_rng([self.seed, step])
        if self.per_batch:
            one = rng.choice(len(self.settings), p=self.probs)
            setting = np.full(self.batch_size, one, dtype=np.int32)
            length = self.settings[one].seq_len
        else:
            setting = rng.choice(len(self.settings), size=self.batch_size, p=self.probs).astype(np.int32)
            length = self.seq_len
        inputs = np.zeros((self.batch_size, length), dtype=np.int32)
        labels = np.full((self.batch_size, length), IGNORE_INDEX, dtype=np.int32)
        for i, s in enumerate(self.settings):
            rows = np.flatnonzero(setting == i)
            if rows.size == 0:
                continue
            ex = generate_mqar(rng, rows.size, s.seq_len, s.num_kv_pairs, self.vocab_size, self.power_a,
                               self.random_non_queries)
            inputs[rows, :s.seq_len] = ex['inputs']
            labels[rows, :s.seq_len] = ex['labels']
        return {'inputs': inputs, 'labels': labels, 'setting': setting}

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches for steps start_step, start_step + 1, ... (resume by passing the restored step)."""
        step = _check_int('start_step', start_step, 0)
        while True:
            yield self.batch(step)
            step += 1


def eval_sets(settings: Sequence[MQARSetting], num_examples: int | None = None, vocab_size: int = 8192, seed: int = 0,
              *, power_a: float = 0.01, random_non_queries: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Fixed evaluation sets keyed by setting name ("L256-KV64"): dict(inputs, labels) of [N, seq_len] int32.

    N = num_examples, or each setting's own num_examples when None. Each set comes from
    np.random.default_rng([seed, 2**31 - 1, seq_len, num_kv_pairs]): independent of the training stream's
    default_rng([seed, step]) and of which other settings are listed.
    """
    settings = _as_settings(settings)
    seed = _check_int('seed', seed, 0)
    if num_examples is not None:
        num_examples = _check_int('num_examples', num_examples, 1)
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in settings:
        if s.name in out:
            raise ValueError(f'settings lists {s.name} twice; eval sets are keyed by name')
        rng = np.random.default_rng([seed, 2**31 - 1, s.seq_len, s.num_kv_pairs])
        n = s.num_examples if num_examples is None else num_examples
        out[s.name] = generate_mqar(rng, n, s.seq_len, s.num_kv_pairs, vocab_size, power_a, random_non_queries)
    return out


def mqar_accuracy(predictions, labels) -> float:
    """Fraction of positions with label != -100 where the prediction equals the label.

    `predictions` are token ids with the shape of `labels`, or logits with one extra trailing (vocab) axis, argmaxed.
    Returns nan when no position is labelled.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    given_shape = predictions.shape
    if predictions.ndim == labels.ndim + 1:
        predictions = predictions.argmax(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f'predictions must have the shape of labels {labels.shape} (or that plus a vocab axis for '
                         f'logits), got {given_shape}')
    mask = labels != IGNORE_INDEX
    n = int(mask.sum())
    if n == 0:
        return float('nan')
    return float(((predictions == labels) & mask).sum() / n)
