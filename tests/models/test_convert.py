"""Hugging Face import / export: logits equal transformers' for tiny random Llama, GQA + tied + sharded
Llama, Qwen2 (q/k/v biases), Mistral (sliding window) and Qwen3 (q/k norm), before and after a round
trip; the imported run loads in eval and resumes in train; one-line errors for bad checkpoints.

Tolerance: max |logits_effattn - logits_transformers| < 1e-4 in fp32 (eager attention in torch).
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
pytest.importorskip('safetensors')

from safetensors.numpy import load_file, save_file

from effattn import config as config_lib
from effattn.eval.run import load_run
from effattn.models import convert
from effattn.train.state import split_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_ABS = 1e-4
T = 12
CONFIGS = {
    'llama': transformers.LlamaConfig,
    'mistral': transformers.MistralConfig,
    'qwen2': transformers.Qwen2Config,
    'qwen3': transformers.Qwen3Config,
}
CASES = {
    'llama-mha': ('llama', {}),
    'llama-gqa-tied-headdim-sharded': (
        'llama',
        {'num_key_value_heads': 2, 'tie_word_embeddings': True, 'head_dim': 24},
    ),
    'qwen2-bias-gqa': ('qwen2', {'num_key_value_heads': 2}),
    'mistral-window': ('mistral', {'num_key_value_heads': 1, 'sliding_window': 5}),
    'qwen3-qknorm-tied': ('qwen3', {'num_key_value_heads': 2, 'tie_word_embeddings': True}),
}


def hf_model(model_type, seed=0, **overrides):
    """A tiny random HF model (hidden 64, 2 layers, vocab 128) with non-trivial norms and biases."""
    kw = {
        'vocab_size': 128,
        'hidden_size': 64,
        'intermediate_size': 96,
        'num_hidden_layers': 2,
        'num_attention_heads': 4,
        'rms_norm_eps': 1e-5,
        'rope_theta': 500.0,
        'max_position_embeddings': 64,
    }
    kw.update(overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        CONFIGS[model_type](**kw), attn_implementation='eager'
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'norm' in name:
                p.normal_(1.0, 0.2)
            elif name.endswith('bias'):
                p.normal_(0.0, 0.5)
    return model


def token_ids(seed=0):
    return np.random.RandomState(seed).randint(0, 128, (2, T))


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def run_logits(workdir, ids):
    _cfg, model_def, state, _step = load_run(str(workdir))
    model = model_def.merge(*split_params(state.params))
    return np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))


def load_hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation='eager'
    ).eval()


@pytest.mark.parametrize('case', CASES)
def test_import_export_logits_equal_transformers(case, tmp_path):
    model_type, overrides = CASES[case]
    sharded = 'sharded' in case
    model = hf_model(model_type, **overrides)
    ids = token_ids()
    ref = hf_logits(model, ids)
    model.save_pretrained(tmp_path / 'hf', **({'max_shard_size': '20KB'} if sharded else {}))
    if sharded:
        assert (tmp_path / 'hf' / 'model.safetensors.index.json').exists()

    cfg = convert.import_hf(str(tmp_path / 'hf'), str(tmp_path / 'run'))
    ours = run_logits(tmp_path / 'run', ids)
    err = np.max(np.abs(ours - ref))
    print(f'{case}: import max |diff| = {err:.2e}')
    assert err < MAX_ABS, f'{case}: imported logits differ from transformers by {err:.2e}'

    kind = convert.export_run(
        str(tmp_path / 'run'), str(tmp_path / 'out'), max_shard_size='20KB' if sharded else '5GB'
    )
    assert kind == model_type
    assert (tmp_path / 'out' / 'generation_config.json').exists()
    back = load_hf(tmp_path / 'out')
    assert type(back).__name__ == type(model).__name__
    err = np.max(np.abs(hf_logits(back, ids) - ref))
    print(f'{case}: export max |diff| = {err:.2e}')
    assert err < MAX_ABS, f'{case}: exported logits differ from transformers by {err:.2e}'
    assert back.config.tie_word_embeddings == cfg.model.tie_embeddings
    if model_type == 'mistral':
        assert cfg.model.attention.window == 5 and back.config.sliding_window == 5


def test_imported_run_resumes_in_train(tmp_path):
    from effattn.train.loop import train_and_evaluate

    hf_model('llama').save_pretrained(tmp_path / 'hf')
    workdir = str(tmp_path / 'run')
    convert.import_hf(str(tmp_path / 'hf'), workdir)
    # the config file train.py is pointed at (--config=<run>/config.py)
    spec = importlib.util.spec_from_file_location('run_config', os.path.join(workdir, 'config.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.train.batch_size = 4
    c.train.warmup_steps = 0  # the first step must change the parameters
    cfg = config_lib.validate(c)
    before = run_logits(workdir, token_ids())
    train_and_evaluate(cfg, workdir, stop_after=1, quiet=True)
    _, _, _state, step = load_run(workdir)
    assert step == 1
    assert not np.allclose(run_logits(workdir, token_ids()), before)


def test_export_effattn_safetensors_holds_every_parameter(tmp_path):
    hf_model('qwen2', num_key_value_heads=2).save_pretrained(tmp_path / 'hf')
    convert.import_hf(str(tmp_path / 'hf'), str(tmp_path / 'run'))
    assert convert.export_run(str(tmp_path / 'run'), str(tmp_path / 'out'), fmt='safetensors') == (
        'effattn'
    )
    tensors = load_file(str(tmp_path / 'out' / 'model.safetensors'))
    cfg, _, state, _ = load_run(str(tmp_path / 'run'))
    flat = convert.flatten_params(nnx.to_pure_dict(state.params))
    assert set(tensors) == set(flat)
    assert 'blocks.1.attn.wk.bias' in tensors
    for k, v in flat.items():
        np.testing.assert_array_equal(tensors[k], np.asarray(v))
    with open(tmp_path / 'out' / 'config.json') as f:
        assert config_lib.from_dict(json.load(f)) == cfg


@pytest.fixture
def saved(tmp_path):
    """A tiny Llama saved as one model.safetensors; returns its directory."""
    hf_model('llama').save_pretrained(tmp_path / 'hf')
    return tmp_path / 'hf'


def _edit_tensors(path, fn):
    tensors = load_file(str(path / 'model.safetensors'))
    fn(tensors)
    save_file(tensors, str(path / 'model.safetensors'), metadata={'format': 'pt'})


def _edit_config(path, **kw):
    with open(path / 'config.json') as f:
        hf = json.load(f)
    hf.update(kw)
    with open(path / 'config.json', 'w') as f:
        json.dump(hf, f)


def test_pickled_only_is_refused_with_how_to_convert(saved, tmp_path):
    os.remove(saved / 'model.safetensors')
    (saved / 'pytorch_model.bin').write_bytes(b'not unpickled')
    with pytest.raises(
        convert.ConvertError, match=r'pytorch_model.bin.*never unpickles.*safe_serialization=True'
    ):
        convert.import_hf(str(saved), str(tmp_path / 'run'))


def test_missing_tensor_is_named(saved, tmp_path):
    _edit_tensors(saved, lambda t: t.pop('model.layers.1.mlp.up_proj.weight'))
    with pytest.raises(
        convert.ConvertError, match=r'tensor model.layers.1.mlp.up_proj.weight is missing'
    ):
        convert.import_hf(str(saved), str(tmp_path / 'run'))


def test_unexpected_tensor_is_named(saved, tmp_path):
    _edit_tensors(
        saved, lambda t: t.update({'model.layers.0.self_attn.o_proj.bias': np.zeros(64, 'f4')})
    )
    with pytest.raises(
        convert.ConvertError,
        match=r'model.safetensors: unexpected tensor model.layers.0.self_attn.o_proj.bias',
    ):
        convert.import_hf(str(saved), str(tmp_path / 'run'))


def test_shape_mismatch_is_named(saved, tmp_path):
    _edit_config(saved, intermediate_size=80)
    with pytest.raises(
        convert.ConvertError,
        match=r'model.safetensors: tensor model.layers.0.mlp.down_proj.weight has shape '
        r'\(64, 96\), expected \(64, 80\) from .*config.json',
    ):
        convert.import_hf(str(saved), str(tmp_path / 'run'))


@pytest.mark.parametrize(
    'edit, message',
    [
        ({'model_type': 'gpt2'}, r"model_type 'gpt2' is not supported; supported: llama, mistral"),
        (
            {'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 1.0}},
            r'rope_parameters.rope_type=.llama3. is not supported',
        ),
        ({'attention_bias': True}, r'attention_bias=true'),
        ({'hidden_act': 'gelu'}, r"hidden_act='gelu'"),
    ],
)
def test_unsupported_config_is_named(saved, tmp_path, edit, message):
    _edit_config(saved, **edit)
    with pytest.raises(convert.ConvertError, match=r'config.json: ' + message):
        convert.import_hf(str(saved), str(tmp_path / 'run'))


def test_cli_error_is_one_line(saved, tmp_path):
    _edit_config(saved, model_type='gpt2')
    out = subprocess.run(
        [sys.executable, '-m', 'effattn.convert', 'import', str(saved), str(tmp_path / 'run')],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'gpt2' in lines[0], out.stderr


def test_cli_import_then_export(saved, tmp_path):
    from effattn.convert import main

    main(['import', str(saved), str(tmp_path / 'run')])
    main(['export', str(tmp_path / 'run'), str(tmp_path / 'out'), '--format=hf'])
    ids = token_ids()
    ref = hf_logits(load_hf(saved), ids)
    assert np.max(np.abs(hf_logits(load_hf(tmp_path / 'out'), ids) - ref)) < MAX_ABS
    with pytest.raises(SystemExit):  # the run folder is not empty
        main(['import', str(saved), str(tmp_path / 'run')])


def test_bfloat16_tensors_are_read_exactly(tmp_path):
    model = hf_model('llama').to(torch.bfloat16)
    model.save_pretrained(tmp_path / 'hf')
    reader = convert.TensorReader(convert.weight_files(str(tmp_path / 'hf')))
    assert reader.dtypes['model.embed_tokens.weight'] == 'BF16'
    got = reader.load('model.embed_tokens.weight')
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, model.model.embed_tokens.weight.float().detach().numpy())
