import os

import pytest

from effattn import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config_dict(**train):
    """A seconds-long MQAR run: 1-layer d=16 softmax LM on L=16 sequences."""
    c = config_lib.default_config()
    c.name = 'tiny'
    c.model.vocab_size = c.data.vocab_size = 64
    c.model.d_model = 16
    c.model.num_layers = 1
    c.model.attention.num_heads = 2
    c.data.seq_len = 16
    c.data.train_settings = ((16, 2),)
    c.data.eval_settings = ((16, 2),)
    c.data.eval_examples = 16
    c.train.batch_size = 4
    c.train.steps = 6
    c.train.warmup_steps = 2
    c.train.log_every = 2
    c.checkpoint.every = 1000
    c.checkpoint.async_save = False
    for k, v in train.items():
        section, key = k.split('__')
        setattr(getattr(c, section), key, v)
    return c


@pytest.fixture
def tiny():
    return lambda **kw: config_lib.validate(tiny_config_dict(**kw))
