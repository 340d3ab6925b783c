"""MQAR generator, training stream, eval sets and accuracy (effattn/data/mqar.py) against Zoology's specification."""
import itertools
import time

import numpy as np
import pytest

from effattn.data import mqar
from effattn.data.mqar import (IGNORE_INDEX, MQARSetting, MQARStream, ZOOLOGY_FIGURE2_TEST, ZOOLOGY_FIGURE2_TRAIN,
                               eval_sets, gap_probabilities, generate_mqar, mqar_accuracy)

V = 8192


def _gen(seed=0, b=64, L=64, d=4, v=V, **kw):
    return generate_mqar(np.random.default_rng(seed), b, L, d, v, **kw)


def _parse_row(inputs, labels, d):
    """Checks one row against the MQAR layout; returns the query gaps in context (key) order."""
    keys, values = inputs[0:2 * d:2], inputs[1:2 * d:2]
    kv = dict(zip(keys.tolist(), values.tolist()))
    assert len(kv) == d
    assert np.all(labels[:2 * d] == IGNORE_INDEX)
    pos = np.flatnonzero(labels != IGNORE_INDEX)
    assert pos.size == d
    assert np.all((pos - 2 * d) % 2 == 0) and np.all(pos >= 2 * d)
    queried = inputs[pos].tolist()
    assert sorted(queried) == sorted(keys.tolist())  # each key queried exactly once
    for p, k in zip(pos, queried):
        assert labels[p] == kv[k]  # the label of the query position is that key's value
    gap_of_key = {k: (p - 2 * d) // 2 for p, k in zip(pos, queried)}
    return np.array([gap_of_key[k] for k in keys.tolist()])


@pytest.mark.parametrize('L,d', [(64, 4), (64, 16), (128, 8), (256, 64)])
def test_shapes_dtypes_ranges(L, d):
    b = _gen(b=32, L=L, d=d)
    assert set(b) == {'inputs', 'labels'}
    for x in b.values():
        assert x.shape == (32, L) and x.dtype == np.int32
    keys, values = b['inputs'][:, 0:2 * d:2], b['inputs'][:, 1:2 * d:2]
    assert keys.min() >= 1 and keys.max() < V // 2
    assert values.min() >= V // 2 and values.max() < V
    for row in range(32):
        assert np.unique(keys[row]).size == d and np.unique(values[row]).size == d
    assert b['inputs'].min() >= 0 and b['inputs'].max() < V
    lab = b['labels'][b['labels'] != IGNORE_INDEX]
    assert lab.min() >= V // 2 and lab.max() < V


@pytest.mark.parametrize('random_non_queries', [True, False])
@pytest.mark.parametrize('L,d', [(64, 4), (64, 16), (256, 32)])
def test_every_label_is_the_value_of_the_queried_key(L, d, random_non_queries):
    b = _gen(seed=3, b=50, L=L, d=d, random_non_queries=random_non_queries)
    for x, y in zip(b['inputs'], b['labels']):
        _parse_row(x, y, d)
        filler = np.ones(L, bool)
        filler[:2 * d] = False
        filler[y != IGNORE_INDEX] = False
        if random_non_queries:
            assert np.count_nonzero(x[filler]) > 0.9 * filler.sum()  # uniform tokens, almost never 0
        else:
            assert np.all(x[filler] == 0)
    assert np.all((b['labels'] != IGNORE_INDEX).sum(1) == d)


def test_zoology_docstring_layout():
    """The worked example in Zoology's docstring: key, value, ..., zeros with keys at 2D + 2 gap, label on the query."""
    b = _gen(seed=0, b=200, L=16, d=2, v=32, random_non_queries=False)
    for x, y in zip(b['inputs'], b['labels']):
        gaps = _parse_row(x, y, 2)
        assert np.all((0 <= gaps) & (gaps < 6))  # space = (16 - 4) / 2
        assert np.all(x[4 + 2 * gaps] == x[[0, 2]]) and np.all(y[4 + 2 * gaps] == x[[1, 3]])


def test_determinism():
    a, b, c = _gen(seed=7), _gen(seed=7), _gen(seed=8)
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['labels'], b['labels'])
    assert not np.array_equal(a['inputs'], c['inputs'])

    s1, s2 = MQARStream(ZOOLOGY_FIGURE2_TRAIN, 16, seed=1), MQARStream(ZOOLOGY_FIGURE2_TRAIN, 16, seed=1)
    for step in (0, 1, 12345):
        x, y = s1.batch(step), s2.batch(step)
        for k in ('inputs', 'labels', 'setting'):
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(s1.batch(0)['inputs'], s1.batch(1)['inputs'])
    assert not np.array_equal(s1.batch(0)['inputs'], MQARStream(ZOOLOGY_FIGURE2_TRAIN, 16, seed=2).batch(0)['inputs'])
    # resume = start from the restored step
    it = s1.iterate(start_step=5)
    for step in (5, 6):
        np.testing.assert_array_equal(next(it)['inputs'], s1.batch(step)['inputs'])


def test_gap_distribution_matches_power_law():
    """Gumbel-top-k gaps follow Zoology's sequential weighted sampling: exact expectations of the 1st and 2nd draws."""
    L, d, n = 64, 4, 20000
    p = gap_probabilities(L, d)
    g = np.arange(p.size)
    b = generate_mqar(np.random.default_rng(11), n, L, d, V, random_non_queries=False)
    gaps = np.stack([_parse_row(x, y, d) for x, y in zip(b['inputs'][:200], b['labels'][:200])])
    # vectorised parse for all rows: gap of key i is where key i sits among the query positions
    keys = b['inputs'][:, 0:2 * d:2]
    q = b['inputs'][:, 2 * d:]
    all_gaps = np.stack([np.argmax((q == keys[:, i:i + 1]) & (b['labels'][:, 2 * d:] != IGNORE_INDEX), axis=1) // 2
                         for i in range(d)], axis=1)
    np.testing.assert_array_equal(all_gaps[:200], gaps)

    # first draw ~ p; second draw: P(j) = sum_{i != j} p_i p_j / (1 - p_i)
    e1, v1 = (g * p).sum(), (g**2 * p).sum() - (g * p).sum() ** 2
    p2 = np.array([sum(p[i] * p[j] / (1 - p[i]) for i in range(p.size) if i != j) for j in range(p.size)])
    e2, v2 = (g * p2).sum(), (g**2 * p2).sum() - (g * p2).sum() ** 2
    for col, e, v in ((0, e1, v1), (1, e2, v2)):
        se = np.sqrt(v / n)
        assert abs(all_gaps[:, col].mean() - e) < 5 * se, (col, all_gaps[:, col].mean(), e, se)
    assert abs((all_gaps[:, 0] == 0).mean() - p[0]) < 5 * np.sqrt(p[0] * (1 - p[0]) / n)
    # heavily skewed towards small gaps: far below the uniform mean (space - 1) / 2
    assert e1 < 0.5 * (p.size - 1) / 2 and all_gaps.mean() < 0.6 * (p.size - 1) / 2

    # power_a = 1 is uniform
    b = generate_mqar(np.random.default_rng(12), n, L, 1, V, power_a=1.0, random_non_queries=False)
    gaps = (np.flatnonzero(b['labels'] != IGNORE_INDEX) % L - 2) // 2
    space = (L - 2) // 2
    assert abs(gaps.mean() - (space - 1) / 2) < 5 * np.sqrt((space**2 - 1) / 12 / n)


def test_weighted_sampler_exact_law():
    """Gumbel-top-k order = sequential draws without replacement: P(i, j) = p_i p_j / (1 - p_i)."""
    p = np.array([0.5, 0.25, 0.15, 0.1])
    n = 40000
    s = mqar._ordered_sample_weighted(np.random.default_rng(0), n, p, 2)
    for i, j in itertools.permutations(range(4), 2):
        exact = p[i] * p[j] / (1 - p[i])
        freq = np.mean((s[:, 0] == i) & (s[:, 1] == j))
        assert abs(freq - exact) < 5 * np.sqrt(exact * (1 - exact) / n), (i, j, freq, exact)


@pytest.mark.parametrize('method', ['reject', 'sort'])
def test_uniform_sampler_exact_law(method):
    n_items, k, n = 5, 3, 30000
    s = mqar._ordered_sample_uniform(np.random.default_rng(1), n, n_items, k, method=method)
    assert np.all(np.sort(s, 1)[:, 1:] != np.sort(s, 1)[:, :-1])
    codes = s[:, 0] * 25 + s[:, 1] * 5 + s[:, 2]
    counts = np.bincount(codes, minlength=125)
    perms = [a * 25 + b * 5 + c for a, b, c in itertools.permutations(range(5), 3)]
    assert counts.sum() == counts[perms].sum()
    exact = 1 / len(perms)
    assert np.all(np.abs(counts[perms] / n - exact) < 5 * np.sqrt(exact * (1 - exact) / n))


def test_stream_mixture_and_padding():
    stream = MQARStream(ZOOLOGY_FIGURE2_TRAIN, 256, seed=0)
    assert stream.seq_len == 256
    settings = []
    for step in range(40):
        b = stream.batch(step)
        assert b['inputs'].shape == (256, 256) and b['labels'].shape == (256, 256) and b['setting'].shape == (256,)
        assert b['inputs'].dtype == b['labels'].dtype == b['setting'].dtype == np.int32
        settings.append(b['setting'])
        if step < 3:
            for x, y, si in zip(b['inputs'], b['labels'], b['setting']):
                s = ZOOLOGY_FIGURE2_TRAIN[si]
                _parse_row(x[:s.seq_len], y[:s.seq_len], s.num_kv_pairs)
                assert np.all(x[s.seq_len:] == 0) and np.all(y[s.seq_len:] == IGNORE_INDEX)
    settings = np.concatenate(settings)
    w = np.array([s.num_examples for s in ZOOLOGY_FIGURE2_TRAIN], float)
    w /= w.sum()
    freq = np.bincount(settings, minlength=len(w)) / settings.size
    np.testing.assert_array_less(np.abs(freq - w), 5 * np.sqrt(w * (1 - w) / settings.size))


def test_eval_sets():
    sets = eval_sets(ZOOLOGY_FIGURE2_TEST, 8, seed=0)
    assert list(sets) == ['L64-KV4', 'L64-KV8', 'L64-KV16', 'L128-KV32', 'L256-KV64', 'L512-KV128', 'L1024-KV256']
    for s in ZOOLOGY_FIGURE2_TEST:
        x, y = sets[s.name]['inputs'], sets[s.name]['labels']
        assert x.shape == y.shape == (8, s.seq_len) and x.dtype == y.dtype == np.int32
        for xi, yi in zip(x, y):
            _parse_row(xi, yi, s.num_kv_pairs)
    again = eval_sets(list(reversed(ZOOLOGY_FIGURE2_TEST)), 8, seed=0)
    for k in sets:  # fixed: same seed gives the same sets, whatever the list order
        np.testing.assert_array_equal(sets[k]['inputs'], again[k]['inputs'])
    other_seed = eval_sets(ZOOLOGY_FIGURE2_TEST[:1], 8, seed=1)['L64-KV4']['inputs']
    assert not np.array_equal(sets['L64-KV4']['inputs'], other_seed)
    # distinct from the training stream of the same seed
    train = MQARStream([MQARSetting(64, 4)], 8, seed=0)
    assert not any(np.array_equal(train.batch(t)['inputs'], sets['L64-KV4']['inputs']) for t in range(4))
    # None: each setting's own num_examples
    assert eval_sets([MQARSetting(64, 4, 3)])['L64-KV4']['inputs'].shape == (3, 64)


def test_accuracy():
    b = _gen(b=4)
    y = b['labels']
    assert mqar_accuracy(y, y) == 1.0
    pred = np.where(y == IGNORE_INDEX, 5, y)  # unlabelled positions are ignored
    assert mqar_accuracy(pred, y) == 1.0
    wrong = pred.copy()
    wrong[0][y[0] != IGNORE_INDEX] = 0  # one row of four all wrong
    assert mqar_accuracy(wrong, y) == pytest.approx(0.75)
    logits = np.eye(V, dtype=np.float32)[np.where(y == IGNORE_INDEX, 0, y)]
    assert mqar_accuracy(logits, y) == 1.0
    assert np.isnan(mqar_accuracy(np.zeros((2, 3)), np.full((2, 3), IGNORE_INDEX)))
    with pytest.raises(ValueError, match='shape'):
        mqar_accuracy(np.zeros((2, 5)), y)


@pytest.mark.parametrize('kw,match', [
    (dict(seq_len=63), 'seq_len.*63'),
    (dict(seq_len=64, vocab_size=64), 'vocab_size.*64'),
    (dict(num_kv_pairs=17), 'num_kv_pairs=17'),
    (dict(num_kv_pairs=0), 'num_kv_pairs'),
    (dict(batch_size=0), 'batch_size'),
    (dict(power_a=0.0), 'power_a'),
    (dict(power_a=-1.0), 'power_a'),
    (dict(seq_len=64.0), 'seq_len'),
])
def test_invalid_args(kw, match):
    args = dict(batch_size=2, seq_len=64, num_kv_pairs=4, vocab_size=V) | kw
    with pytest.raises(ValueError, match=match):
        generate_mqar(np.random.default_rng(0), **args)


def test_invalid_settings_and_stream_args():
    with pytest.raises(ValueError, match='seq_len'):
        MQARSetting(65, 4)
    with pytest.raises(ValueError, match='num_kv_pairs'):
        MQARSetting(64, 32)
    with pytest.raises(ValueError, match='num_examples'):
        MQARSetting(64, 4, 0)
    with pytest.raises(ValueError, match='vocab_size'):
        MQARStream([MQARSetting(512, 4)], 8, vocab_size=256)
    with pytest.raises(ValueError, match='settings'):
        MQARStream([], 8)
    with pytest.raises(ValueError, match='step'):
        MQARStream([MQARSetting(64, 4)], 8).batch(-1)
    with pytest.raises(ValueError, match='twice'):
        eval_sets([MQARSetting(64, 4), MQARSetting(64, 4, 5)], 2)
    with pytest.raises(ValueError, match='rng'):
        generate_mqar(0, 2, 64, 4)


def test_speed():
    rng = np.random.default_rng(0)
    generate_mqar(rng, 256, 256, 64)
    t = time.perf_counter()
    generate_mqar(rng, 256, 256, 64)
    generate_mqar(rng, 256, 256, 16)
    assert time.perf_counter() - t < 1.0


def test_per_batch_mixture_gives_one_setting_per_batch_at_its_length():
    settings = [MQARSetting(64, 4), MQARSetting(256, 16)]
    stream = MQARStream(settings, 8, vocab_size=512, per_batch=True, seed=3)
    lengths = set()
    for step in range(12):
        b = stream.batch(step)
        (one,) = set(b['setting'].tolist())
        length = settings[one].seq_len
        lengths.add(length)
        assert b['inputs'].shape == b['labels'].shape == (8, length)
        assert ((b['labels'] != -100).sum(axis=1) == settings[one].num_kv_pairs).all()
        np.testing.assert_array_equal(b['inputs'], stream.batch(step)['inputs'])  # deterministic
    assert lengths == {64, 256}
