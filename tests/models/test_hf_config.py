"""HF config <-> effattn config mapping and the config fields it needs (no torch needed)."""

import pytest
from flax import nnx

from effattn import config as config_lib
from effattn.models import convert
from effattn.train.state import build_model

LLAMA = {
    'model_type': 'llama',
    'vocab_size': 128,
    'hidden_size': 64,
    'intermediate_size': 96,
    'num_hidden_layers': 2,
    'num_attention_heads': 4,
    'num_key_value_heads': 2,
    'head_dim': 24,
    'rms_norm_eps': 1e-5,
    'rope_parameters': {'rope_type': 'default', 'rope_theta': 500.0},
    'tie_word_embeddings': True,
    'max_position_embeddings': 64,
}


def test_llama_config_maps_to_an_exact_effattn_config():
    cfg = convert.run_config(dict(LLAMA), 'config.json')
    m, a = cfg.model, cfg.model.attention
    assert (m.vocab_size, m.d_model, m.num_layers, m.mlp_hidden) == (128, 64, 2, 96)
    assert (a.num_heads, a.num_kv_heads, a.head_dim, a.rope_theta) == (4, 2, 24, 500.0)
    assert m.norm_eps == 1e-5 and m.tie_embeddings and not a.qkv_bias and a.window == 0
    assert cfg.data.vocab_size <= m.vocab_size  # the default data section fits the model
    back = convert.hf_config(cfg, dict(LLAMA))
    for key, value in LLAMA.items():
        assert back[key] == value, key
    assert back['architectures'] == ['LlamaForCausalLM']


def test_model_types_map_to_fields():
    qwen2 = convert.run_config(dict(LLAMA, model_type='qwen2'), 'c.json')
    assert qwen2.model.attention.qkv_bias
    assert convert.hf_model_type(qwen2) == 'qwen2'
    mistral = convert.run_config(
        dict(LLAMA, model_type='mistral', sliding_window=4096, vocab_size=32000), 'c.json'
    )
    assert mistral.model.attention.window == 4096
    assert mistral.data.seq_len >= 4096  # default MQAR data stretched to hold the window
    assert convert.hf_model_type(mistral) == 'mistral'
    qwen3 = convert.run_config(dict(LLAMA, model_type='qwen3'), 'c.json')
    assert qwen3.model.attention.qk_norm and convert.hf_model_type(qwen3) == 'qwen3'


def test_qwen_partial_sliding_window_is_refused():
    hf = dict(LLAMA, model_type='qwen2', use_sliding_window=True, sliding_window=8)
    hf['max_window_layers'] = 1
    with pytest.raises(convert.ConvertError, match='some layers only'):
        convert.run_config(hf, 'c.json')
    hf['max_window_layers'] = 0
    assert convert.run_config(hf, 'c.json').model.attention.window == 8


def test_hf_export_refuses_non_llama_shapes():
    c = config_lib.default_config()
    c.model.attention.kind = 'gla'
    with pytest.raises(convert.ConvertError, match=r'config.model.attention.kind: layer 0 is'):
        convert.hf_model_type(config_lib.validate(c))
    c = config_lib.default_config()
    c.model.mlp = 'none'
    with pytest.raises(convert.ConvertError, match=r'config.model.mlp .*needs swiglu'):
        convert.hf_model_type(config_lib.validate(c))


def test_names_round_trip():
    assert convert.hf_name('blocks.3.attn.wq.kernel') == (
        'model.layers.3.self_attn.q_proj.weight',
        True,
    )
    assert convert.hf_name('embed.embedding') == ('model.embed_tokens.weight', False)
    with pytest.raises(convert.ConvertError, match='blocks.0.attn.gate.kernel has no Hugging Face'):
        convert.hf_name('blocks.0.attn.gate.kernel')


def _params(**model):
    c = config_lib.default_config()
    for k, v in model.items():
        target = c.model.attention if k in ('qkv_bias', 'kind') else c.model
        setattr(target, k, v)
    cfg = config_lib.validate(c)
    m = nnx.eval_shape(lambda: build_model(cfg, 0))
    return nnx.to_pure_dict(nnx.state(m, nnx.Param))


def test_mlp_hidden_and_qkv_bias_fields():
    p = _params(mlp_hidden=40, qkv_bias=True)
    assert p['blocks'][0]['mlp']['w1']['kernel'].shape == (128, 40)
    assert p['blocks'][0]['attn']['wk']['bias'].shape == (128,)
    assert 'bias' not in p['blocks'][0]['attn']['wo']
    default = _params()
    assert default['blocks'][0]['mlp']['w1']['kernel'].shape == (128, 344)  # unchanged default
    assert 'bias' not in default['blocks'][0]['attn']['wq']
    assert 'bias' in _params(kind='sigmoid', qkv_bias=True)['blocks'][0]['attn']['wq']


@pytest.mark.parametrize(
    'edit, match',
    [
        (
            {'kind': 'gla', 'qkv_bias': True},
            r"config.model.attention.qkv_bias: layer 0: kind 'gla'",
        ),
        ({'mlp_hidden': -1}, r'config.model.mlp_hidden: must be >= 0'),
    ],
)
def test_new_fields_are_validated(edit, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        _params(**edit)
