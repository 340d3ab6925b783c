"""ListOps (Nangia & Bowman 2018) generated as the Long Range Arena specifies (Tay et al. 2021).

LRA's `generate_tree` (lra_benchmarks/data/listops.py): below max_depth a node is a leaf digit with
probability 0.75, else an operator from {MIN, MAX, MED, SM} with randint(2, max_args) children
(inclusive); length = 1 for a leaf, 2 + children's lengths for an operator (its token and the closing
']'). Sequences are kept iff min_length < length < max_length. Values: MIN, MAX, MED = int(median),
SM = sum mod 10; 10 classes. Tokens (LRA's pipeline drops the parentheses and keeps `[OP` and `]`):
pad 0, digits 1..10, MIN 11, MAX 12, MED 13, SM 14, ']' 15.

Deterministic and resumable like MQAR: `ListOpsStream.batch(step)` depends only on (seed, step).
"""

from __future__ import annotations

import numpy as np

PAD = 0
OPS = ('MIN', 'MAX', 'MED', 'SM')
OP_TOKEN = {op: 11 + i for i, op in enumerate(OPS)}
CLOSE = 15
VOCAB_SIZE = 16
NUM_CLASSES = 10
IGNORE_INDEX = -100


def _tree(rng: np.random.Generator, depth: int, max_depth: int, max_args: int, budget: int):
    """(tokens, value) of a random tree, or None once it exceeds `budget` tokens (rejected early)."""
    r = rng.random() if depth < max_depth else 1.0
    if r > 0.25:
        digit = int(rng.integers(0, 10))
        return [1 + digit], digit
    op = OPS[int(rng.integers(0, len(OPS)))]
    n = int(rng.integers(2, max_args + 1))
    tokens, values = [OP_TOKEN[op]], []
    for _ in range(n):
        child = _tree(rng, depth + 1, max_depth, max_args, budget - len(tokens) - 1)
        if child is None:
            return None
        tokens += child[0]
        values.append(child[1])
        if len(tokens) + 1 > budget:
            return None
    tokens.append(CLOSE)
    if op == 'MIN':
        value = min(values)
    elif op == 'MAX':
        value = max(values)
    elif op == 'MED':
        value = int(np.median(values))
    else:
        value = sum(values) % 10
    return tokens, value


def generate_example(
    rng: np.random.Generator,
    *,
    min_length: int,
    max_length: int,
    max_depth: int = 10,
    max_args: int = 10,
) -> tuple[list[int], int]:
    """One (tokens, label) with min_length < len(tokens) < max_length, by rejection as LRA does."""
    while True:
        out = _tree(rng, 1, max_depth, max_args, max_length - 1)
        if out is not None and min_length < len(out[0]) < max_length:
            return out


def generate_batch(
    rng: np.random.Generator,
    batch_size: int,
    seq_len: int,
    *,
    min_length: int,
    max_length: int,
    max_depth: int = 10,
    max_args: int = 10,
) -> dict[str, np.ndarray]:
    """dict(inputs int32 [B, seq_len] right-padded with 0, labels int32 [B])."""
    if not 0 <= min_length < max_length <= seq_len + 1:
        raise ValueError(
            f'ListOps needs 0 <= min_length < max_length <= seq_len + 1; got min_length={min_length}, '
            f'max_length={max_length}, seq_len={seq_len}'
        )
    inputs = np.zeros((batch_size, seq_len), np.int32)
    labels = np.zeros((batch_size,), np.int32)
    for i in range(batch_size):
        tokens, value = generate_example(
            rng,
            min_length=min_length,
            max_length=max_length,
            max_depth=max_depth,
            max_args=max_args,
        )
        inputs[i, : len(tokens)] = tokens
        labels[i] = value
    return {'inputs': inputs, 'labels': labels}


class ListOpsStream:
    """Resumable training stream: batch(step) is drawn from default_rng([seed, step])."""

    max_targets = None  # one label per sequence (classification), not per token

    def __init__(
        self,
        batch_size: int,
        seq_len: int,
        *,
        min_length: int,
        max_length: int,
        max_depth: int = 10,
        max_args: int = 10,
        seed: int = 0,
    ):
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.kw = dict(
            min_length=min_length, max_length=max_length, max_depth=max_depth, max_args=max_args
        )
        generate_batch(np.random.default_rng(0), 0, seq_len, **self.kw)  # validates the arguments

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return generate_batch(
            np.random.default_rng([self.seed, step]), self.batch_size, self.seq_len, **self.kw
        )


def eval_set(num_examples: int, seq_len: int, *, seed: int, **kw) -> dict[str, np.ndarray]:
    """A fixed evaluation set, from a seed stream disjoint from training's [seed, step]."""
    return generate_batch(np.random.default_rng([seed, 2**31 - 1]), num_examples, seq_len, **kw)


def evaluate_tokens(tokens) -> int:
    """The value of a token sequence (an independent stack evaluator, used to check labels)."""
    stack: list[list] = []
    result = None
    for t in tokens:
        t = int(t)
        if t == PAD:
            break
        if 1 <= t <= 10:
            if not stack:
                result = t - 1
            else:
                stack[-1].append(t - 1)
        elif t in OP_TOKEN.values():
            stack.append([OPS[t - 11]])
        elif t == CLOSE:
            op, *vals = stack.pop()
            v = {
                'MIN': min,
                'MAX': max,
                'MED': lambda x: int(np.median(x)),
                'SM': lambda x: sum(x) % 10,
            }[op](vals)
            if stack:
                stack[-1].append(v)
            else:
                result = v
    return result
