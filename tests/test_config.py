"""The schema rejects unknown keys, wrong types and impossible settings, naming the key."""

import importlib.util
import os
import sys

import pytest

from effattn import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # config files import configs.base


def base():
    return config_lib.default_config()


def test_defaults_validate():
    cfg = config_lib.validate(base())
    assert cfg.model.attention.kind == 'softmax'
    assert isinstance(cfg.data.train_settings, tuple)


def test_round_trip_through_dict():
    cfg = config_lib.validate(base())
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    'edit, key',
    [
        (lambda c: c.model.__setattr__('d_model', 130), 'config.model.d_model'),
        (lambda c: c.model.attention.__setattr__('kind', 'nope'), 'config.model.attention.kind'),
        (lambda c: c.model.attention.__setattr__('window', 1000), 'config.model.attention.window'),
        (
            lambda c: c.model.attention.__setattr__('num_kv_heads', 3),
            'config.model.attention.num_kv_heads',
        ),
        (lambda c: c.model.__setattr__('layers', 'softmax,bogus'), 'config.model.layers'),
        (lambda c: c.data.__setattr__('train_settings', ((64, 20),)), 'config.data.train_settings'),
        (lambda c: c.data.__setattr__('seq_len', 128), 'config.data.seq_len'),
        (lambda c: c.train.__setattr__('steps', 0), 'config.train.steps'),
        (lambda c: c.model.__setattr__('compute_dtype', 'float16'), 'config.model.compute_dtype'),
        (lambda c: c.model.attention.__setattr__('sinks', 4), 'config.model.attention.sinks'),
    ],
)
def test_impossible_settings_name_the_key(edit, key):
    c = base()
    edit(c)
    with pytest.raises(config_lib.ConfigError, match=key.replace('.', r'\.')):
        config_lib.validate(c)


def test_unknown_kind_lists_known_kinds():
    c = base()
    c.model.attention.kind = 'nope'
    with pytest.raises(config_lib.ConfigError, match='known kinds: .*softmax'):
        config_lib.validate(c)


def test_unknown_key():
    c = base().to_dict()
    c['model']['dmodel'] = 64
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.dmodel: unknown key'):
        config_lib.validate(c)


def test_wrong_type():
    c = base().to_dict()
    c['train']['steps'] = 'many'
    with pytest.raises(config_lib.ConfigError, match=r'config\.train\.steps=.*expected int'):
        config_lib.validate(c)
    c = base().to_dict()
    c['model']['tie_embeddings'] = 1
    with pytest.raises(
        config_lib.ConfigError, match=r'config\.model\.tie_embeddings=.*expected bool'
    ):
        config_lib.validate(c)


def test_check_key():
    config_lib.check_key('model.attention.kind')
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.atention: unknown key'):
        config_lib.check_key('model.atention.kind')


@pytest.mark.parametrize(
    'name',
    sorted(
        f
        for f in os.listdir(os.path.join(ROOT, 'configs'))
        if f.endswith('.py') and not f.startswith('_')
    ),
)
def test_every_config_file_validates(name):
    spec = importlib.util.spec_from_file_location(
        f'cfg_{name[:-3]}', os.path.join(ROOT, 'configs', name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if name.startswith('linearize_'):  # python -m effattn.linearize: the linearize schema
        from effattn.train import linearize

        linearize.validate(module.get_config())
    else:  # lm_text.py reads runs/corpus.txt, made by scripts/make_corpus.py: not in a fresh clone
        config_lib.validate(module.get_config(), check_files=False)


def _load_config(name):
    spec = importlib.util.spec_from_file_location(
        f'cfg_{name}', os.path.join(ROOT, 'configs', f'{name}.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return config_lib.validate(module.get_config())


@pytest.mark.parametrize(
    'name, kinds',
    [
        ('mqar_hedgehog', ['hedgehog'] * 2),
        ('mqar_based', ['base_conv', 'based']),
        ('hybrid_gla_softmax', ['gla', 'gla', 'gla', 'softmax']),
        ('based', ['base_conv', 'based', 'softmax', 'base_conv', 'base_conv'] * 2),
        ('hedgehog_window', ['hedgehog'] * 2),
    ],
)
def test_hybrid_and_new_kind_configs_give_their_layer_kinds(name, kinds):
    cfg = _load_config(name)
    assert config_lib.layer_kinds(cfg.model) == kinds
    if name in ('based', 'hedgehog_window'):
        assert cfg.model.attention.window > 0


def test_star_in_layer_pattern_is_the_attention_kind():
    cfg = config_lib.default_config()
    cfg.model.num_layers = 4
    cfg.model.layers = 'base_conv, *'
    cfg.model.attention.kind = 'gla'
    model = config_lib.validate(cfg).model
    assert config_lib.layer_kinds(model) == ['base_conv', 'gla', 'base_conv', 'gla']
