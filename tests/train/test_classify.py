"""The classification path (ListOps): train, checkpoint, evaluate."""

from effattn import config as config_lib
from effattn.train import loop

from conftest import tiny_config_dict


def test_listops_trains_and_evaluates(tmp_path):
    c = tiny_config_dict()
    c.model.head = 'classify'
    c.model.vocab_size = c.data.vocab_size = 16
    c.data.kind = 'listops'
    c.data.min_length, c.data.max_length, c.data.seq_len = 8, 48, 48
    c.train.steps = 3
    cfg = config_lib.validate(c)
    results = loop.train_and_evaluate(cfg, str(tmp_path / 'run'), quiet=True)
    assert set(results) == {'listops', 'mean'}
    assert 0.0 <= results['listops'] <= 1.0


def test_listops_needs_a_classification_head():
    c = tiny_config_dict()
    c.data.kind = 'listops'
    c.model.vocab_size = c.data.vocab_size = 16
    c.data.min_length, c.data.max_length, c.data.seq_len = 8, 48, 48
    try:
        config_lib.validate(c)
    except config_lib.ConfigError as e:
        assert 'config.model.head' in str(e)
    else:
        raise AssertionError('expected a ConfigError')
