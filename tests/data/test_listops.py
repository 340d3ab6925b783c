"""ListOps generator: LRA's tree rules, labels equal an independent evaluator, determinism."""

import numpy as np
import pytest

from effattn.data import listops


def test_hand_computed_examples():
    # [MAX 2 9 [MIN 4 7 ] 0 ] = 9 ; [SM 3 8 ] = 1 ; [MED 1 5 2 9 ] = int(median) = 3
    t = listops.OP_TOKEN
    c = listops.CLOSE
    assert listops.evaluate_tokens([t['MAX'], 3, 10, t['MIN'], 5, 8, c, 1, c]) == 9
    assert listops.evaluate_tokens([t['SM'], 4, 9, c]) == 1
    assert listops.evaluate_tokens([t['MED'], 2, 6, 3, 10, c]) == 3


def test_batch_lengths_labels_and_determinism():
    kw = dict(min_length=20, max_length=80)
    a = listops.generate_batch(np.random.default_rng([0, 1]), 32, 80, **kw)
    b = listops.generate_batch(np.random.default_rng([0, 1]), 32, 80, **kw)
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    lengths = (a['inputs'] != listops.PAD).sum(1)
    assert np.all((lengths > 20) & (lengths < 80))
    assert a['inputs'].max() < listops.VOCAB_SIZE
    for row, label in zip(a['inputs'], a['labels']):
        assert listops.evaluate_tokens(row) == label
        assert row[0] in listops.OP_TOKEN.values()  # a tree longer than 1 token starts with an op


def test_stream_is_resumable_and_eval_set_is_fixed():
    s = listops.ListOpsStream(4, 64, min_length=10, max_length=64, seed=3)
    np.testing.assert_array_equal(s.batch(7)['inputs'], s.batch(7)['inputs'])
    assert not np.array_equal(s.batch(7)['inputs'], s.batch(8)['inputs'])
    e1 = listops.eval_set(8, 64, seed=3, min_length=10, max_length=64)
    e2 = listops.eval_set(8, 64, seed=3, min_length=10, max_length=64)
    np.testing.assert_array_equal(e1['labels'], e2['labels'])


def test_bad_lengths_name_the_arguments():
    with pytest.raises(ValueError, match='min_length'):
        listops.generate_batch(np.random.default_rng(0), 1, 50, min_length=60, max_length=40)
