"""Hugging Face checkpoint import / export: Llama, Mistral, Qwen2 and Qwen3 <-> the effattn softmax LM.

Import reads a local Hugging Face directory (``config.json`` + ``model.safetensors``, or shards listed
in ``model.safetensors.index.json``) into an effattn run folder: ``config.json`` (the effattn config),
``checkpoints/0`` (params, a fresh optimizer state; step 0), ``config.py`` (the config file that
train.py resumes or fine-tunes it with) and ``hf_source/`` (the source config and tokenizer files,
reused on export). eval.py and train.py load it like any run.

Export writes any run's newest checkpoint either as effattn's own safetensors (parameter paths such as
``blocks.0.attn.wq.kernel``, plus effattn's config dict as config.json) or, for Llama-shaped models
(softmax attention in every layer, RoPE, SwiGLU, RMSNorm), as a Hugging Face directory that
``transformers.AutoModelForCausalLM.from_pretrained`` loads.

Layout decisions:
  * RoPE: effattn.attention.rope uses the half-split ("rotate_half") layout, the same as Hugging Face
    Llama / Mistral / Qwen, with the same frequencies theta^(-2i/D). q/k weights are copied unpermuted.
  * Linear weights: HF stores [out, in], nnx.Linear kernels are [in, out]: transposed both ways.
  * GQA: query head h reads key/value head h // (num_heads / num_kv_heads) in both libraries.
  * Mistral's ``sliding_window`` w (keys q-w < k <= q) is effattn's ``attention.window`` (keys incl. self).

Weights are read with ``safetensors`` only: pickled checkpoints (.bin, .pt, .pth) are refused, never
unpickled. torch is never imported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import numpy as np

from effattn import config as config_lib

SUPPORTED = ('llama', 'mistral', 'qwen2', 'qwen3')
ARCHITECTURES = {
    'llama': 'LlamaForCausalLM',
    'mistral': 'MistralForCausalLM',
    'qwen2': 'Qwen2ForCausalLM',
    'qwen3': 'Qwen3ForCausalLM',
}
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl')
# Small files copied from the source directory at import and back out at export.
SIDE_FILES = (
    'generation_config.json',
    'tokenizer.json',
    'tokenizer_config.json',
    'special_tokens_map.json',
    'tokenizer.model',
    'vocab.json',
    'merges.txt',
    'added_tokens.json',
    'chat_template.jinja',
    'chat_template.json',
)
SOURCE_DIR = 'hf_source'  # inside an imported run folder
DEFAULT_MAX_SHARD = 5 * 1024**3

# effattn parameter path (inside blocks.<i>.) -> HF name (inside model.layers.<i>.), transposed?
_LAYER = (
    ('attn_norm.scale', 'input_layernorm.weight', False),
    ('attn.wq.kernel', 'self_attn.q_proj.weight', True),
    ('attn.wk.kernel', 'self_attn.k_proj.weight', True),
    ('attn.wv.kernel', 'self_attn.v_proj.weight', True),
    ('attn.wo.kernel', 'self_attn.o_proj.weight', True),
    ('attn.wq.bias', 'self_attn.q_proj.bias', False),
    ('attn.wk.bias', 'self_attn.k_proj.bias', False),
    ('attn.wv.bias', 'self_attn.v_proj.bias', False),
    ('attn.q_norm.scale', 'self_attn.q_norm.weight', False),
    ('attn.k_norm.scale', 'self_attn.k_norm.weight', False),
    ('mlp_norm.scale', 'post_attention_layernorm.weight', False),
    ('mlp.w1.kernel', 'mlp.gate_proj.weight', True),
    ('mlp.w3.kernel', 'mlp.up_proj.weight', True),
    ('mlp.w2.kernel', 'mlp.down_proj.weight', True),
)
_TOP = (
    ('embed.embedding', 'model.embed_tokens.weight', False),
    ('final_norm.scale', 'model.norm.weight', False),
    ('head.kernel', 'lm_head.weight', True),
)
# Buffers some HF checkpoints carry that hold no parameters (recomputed from the config).
_IGNORED = re.compile(r'(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq')


class ConvertError(ValueError):
    """A checkpoint cannot be imported or exported; the message names the file, tensor or key."""


# ----------------------------------------------------------------------------------------- names


def hf_name(path: str) -> tuple[str, bool]:
    """effattn parameter path ('blocks.3.attn.wq.kernel') -> (HF tensor name, transposed?)."""
    m = re.fullmatch(r'blocks\.(\d+)\.(.+)', path)
    table = _LAYER if m else _TOP
    rest = m.group(2) if m else path
    for ours, theirs, transpose in table:
        if rest == ours:
            return (f'model.layers.{m.group(1)}.{theirs}' if m else theirs), transpose
    raise ConvertError(f'parameter {path} has no Hugging Face counterpart')


def flatten_params(tree: Any, prefix: str = '') -> dict[str, Any]:
    """Nested parameter dict -> {'a.b.0.kernel': leaf} (keys joined with '.')."""
    out = {}
    for k, v in tree.items():
        key = f'{prefix}{k}'
        if isinstance(v, dict):
            out.update(flatten_params(v, key + '.'))
        else:
            out[key] = v
    return out


def unflatten_params(flat: dict[str, Any]) -> dict:
    """Inverse of flatten_params (numeric path parts become int keys, as nnx pure dicts use)."""
    out: dict = {}
    for key, v in flat.items():
        node = out
        parts = [int(p) if p.isdigit() else p for p in key.split('.')]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


# ------------------------------------------------------------------------------ HF config -> ours


def read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise ConvertError(f'{path} not found')
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(f'{path}: not valid JSON ({e})') from e


def _rope_theta(hf: dict, path: str) -> float:
    params = hf.get('rope_parameters') or {}
    if params and 'rope_type' not in params and any(isinstance(v, dict) for v in params.values()):
        raise ConvertError(f'{path}: rope_parameters per layer type are not supported')
    for key in ('rope_parameters', 'rope_scaling'):
        d = hf.get(key) or {}
        rope_type = d.get('rope_type', d.get('type', 'default'))
        if rope_type != 'default':
            raise ConvertError(
                f'{path}: {key}.rope_type={rope_type!r} is not supported (only default RoPE)'
            )
        if d.get('partial_rotary_factor', 1.0) != 1.0:
            raise ConvertError(f'{path}: {key}.partial_rotary_factor != 1 is not supported')
    if hf.get('partial_rotary_factor', 1.0) != 1.0:
        raise ConvertError(f'{path}: partial_rotary_factor != 1 is not supported')
    return float(params.get('rope_theta', hf.get('rope_theta', 10000.0)))


def _window(hf: dict, path: str, model_type: str) -> int:
    layers = hf['num_hidden_layers']
    if model_type == 'mistral':
        return int(hf.get('sliding_window') or 0)
    if model_type == 'llama':
        return 0
    # qwen2 / qwen3: windowed layers only with use_sliding_window
    if not hf.get('use_sliding_window') or not hf.get('sliding_window'):
        return 0
    types = hf.get('layer_types') or [
        'sliding_attention' if i >= hf.get('max_window_layers', 28) else 'full_attention'
        for i in range(layers)
    ]
    if all(t == 'sliding_attention' for t in types):
        return int(hf['sliding_window'])
    if all(t == 'full_attention' for t in types):
        return 0
    raise ConvertError(
        f'{path}: use_sliding_window with a sliding window on some layers only (layer_types / '
        'max_window_layers) is not supported; effattn has one window for all layers'
    )


def model_section(hf: dict, path: str) -> dict:
    """The config.model section (as a dict) of the effattn LM equal to a HF Llama-style config."""
    model_type = hf.get('model_type')
    if model_type not in SUPPORTED:
        raise ConvertError(
            f'{path}: model_type {model_type!r} is not supported; supported: {", ".join(SUPPORTED)}'
        )
    for key in (
        'vocab_size',
        'hidden_size',
        'intermediate_size',
        'num_hidden_layers',
        'num_attention_heads',
    ):
        if not isinstance(hf.get(key), int):
            raise ConvertError(f'{path}: {key} missing or not an integer (got {hf.get(key)!r})')
    act = hf.get('hidden_act', 'silu')
    if act != 'silu':
        raise ConvertError(f'{path}: hidden_act={act!r} is not supported (only silu: SwiGLU)')
    if hf.get('mlp_bias'):
        raise ConvertError(f'{path}: mlp_bias=true is not supported')
    if model_type != 'qwen2' and hf.get('attention_bias'):
        raise ConvertError(
            f'{path}: attention_bias=true (biases on q, k, v and o) is not supported; '
            'only Qwen2-style q/k/v biases are'
        )
    d, heads = hf['hidden_size'], hf['num_attention_heads']
    head_dim = hf.get('head_dim') or d // heads
    kv = hf.get('num_key_value_heads') or heads
    return {
        'vocab_size': hf['vocab_size'],
        'd_model': d,
        'num_layers': hf['num_hidden_layers'],
        'layers': '',
        'mlp': 'swiglu',
        'mlp_hidden': hf['intermediate_size'],
        'tie_embeddings': bool(hf.get('tie_word_embeddings', False)),
        'norm_eps': float(hf.get('rms_norm_eps', 1e-6)),
        'init_std': float(hf.get('initializer_range', 0.02)),
        'head': 'lm',
        'attention': {
            'kind': 'softmax',
            'num_heads': heads,
            'num_kv_heads': 0 if kv == heads else kv,
            'head_dim': 0 if head_dim * heads == d else head_dim,
            'rope': True,
            'rope_theta': _rope_theta(hf, path),
            'window': _window(hf, path, model_type),
            'sinks': 0,
            'qk_norm': model_type == 'qwen3',
            'qkv_bias': model_type == 'qwen2',
        },
    }


def run_config(hf: dict, path: str, base=None) -> config_lib.Config:
    """The validated effattn Config of an imported run: `base`'s data / train / checkpoint / mesh
    sections (the defaults when None) and the model from `hf`. From base.model only the runtime
    choices compute_dtype and attention.impl are kept."""
    given = base is not None
    try:
        c = config_lib.to_config_dict(config_lib.validate(base if given else {}))
    except config_lib.ConfigError as e:
        raise ConvertError(f'--config: {e}') from e
    model = model_section(hf, path)
    compute_dtype, impl = c.model.compute_dtype, c.model.attention.impl
    c.model = config_lib.default_config().model
    attention = model.pop('attention')
    c.model.update(model)
    c.model.attention.update(attention)
    c.model.compute_dtype, c.model.attention.impl = compute_dtype, impl
    if not given:
        c.name = f'hf-{hf["model_type"]}'
        _fit_default_data(c)
    try:
        return config_lib.validate(c)
    except config_lib.ConfigError as e:
        hint = '' if given else ' (pass --config=FILE with data settings that fit this model)'
        raise ConvertError(f'{path}: {e}{hint}') from e


def _fit_default_data(c) -> None:
    """Makes the default MQAR data section valid for the imported model (vocab, sliding window)."""
    d, m = c.data, c.model
    if d.kind != 'mqar':
        return
    window = m.attention.window
    if window > d.seq_len:
        seq_len = window + window % 2
        d.seq_len = seq_len
        d.train_settings = d.eval_settings = ((seq_len, 4),)
    d.vocab_size = min(max(d.vocab_size, d.seq_len + 1), m.vocab_size)


# --------------------------------------------------------------------------------- reading weights


def _refuse_pickles(hf_dir: str, names: list[str]) -> None:
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    found = f' (found only pickled weights: {", ".join(pickles)})' if pickles else ''
    raise ConvertError(
        f'{hf_dir}: no model.safetensors or model.safetensors.index.json{found}; effattn reads '
        'safetensors only and never unpickles. Convert once with transformers: '
        f"AutoModelForCausalLM.from_pretrained('{hf_dir}').save_pretrained(OUT_DIR, "
        'safe_serialization=True)'
    )


def weight_files(hf_dir: str) -> list[str]:
    """The safetensors files of a HF directory (one file, or the shards of the index)."""
    names = os.listdir(hf_dir)
    single = os.path.join(hf_dir, 'model.safetensors')
    index = os.path.join(hf_dir, 'model.safetensors.index.json')
    if os.path.exists(single):
        return [single]
    if not os.path.exists(index):
        _refuse_pickles(hf_dir, names)
    weight_map = read_json(index).get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConvertError(f'{index}: no weight_map')
    files = []
    for shard in sorted(set(weight_map.values())):
        path = os.path.join(hf_dir, shard)
        if not shard.endswith('.safetensors'):
            raise ConvertError(f'{index}: shard {shard} is not a .safetensors file')
        if not os.path.exists(path):
            raise ConvertError(f'{index}: shard {shard} listed in weight_map not found in {hf_dir}')
        files.append(path)
    return files


class TensorReader:
    """Names and shapes of every tensor in some safetensors files; loads one tensor as fp32 numpy."""

    def __init__(self, files: list[str]):
        from safetensors import safe_open

        self._open = safe_open
        self.where: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        for path in files:
            try:
                with safe_open(path, framework='numpy') as f:
                    stored = f.keys()  # a safe_open handle is not iterable
                    for name in stored:
                        if name in self.where:
                            raise ConvertError(
                                f'{path}: tensor {name} also in {self.where[name]} (duplicate)'
                            )
                        s = f.get_slice(name)
                        self.where[name] = path
                        self.shapes[name] = tuple(s.get_shape())
                        self.dtypes[name] = s.get_dtype()
            except ConvertError:
                raise
            except Exception as e:
                raise ConvertError(f'{path}: not a readable safetensors file ({e})') from e

    def load(self, name: str) -> np.ndarray:
        path, dtype = self.where[name], self.dtypes[name]
        if dtype not in ('F64', 'F32', 'F16', 'BF16'):
            raise ConvertError(f'{path}: tensor {name} has dtype {dtype}; expected a float dtype')
        if dtype == 'BF16':  # numpy has no bfloat16: read through jax on the host
            import jax

            cpu = jax.devices('cpu')[0]
            with jax.default_device(cpu), self._open(path, framework='flax') as f:
                return np.asarray(f.get_tensor(name), np.float32)
        with self._open(path, framework='numpy') as f:
            return np.asarray(f.get_tensor(name), np.float32)


def _expected_params(cfg: config_lib.Config) -> dict[str, tuple[int, ...]]:
    """Flat effattn parameter path -> shape for `cfg`, without allocating anything."""
    from flax import nnx

    from effattn.train.state import build_model

    model = nnx.eval_shape(lambda: build_model(cfg, cfg.train.seed))
    _, params, _ = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
    return {k: tuple(v.shape) for k, v in flatten_params(nnx.to_pure_dict(params)).items()}


def load_hf_params(
    cfg: config_lib.Config, reader: TensorReader, hf_dir: str
) -> dict[str, np.ndarray]:
    """Flat effattn params (fp32 numpy) from the HF tensors; every tensor used exactly once."""
    expected = _expected_params(cfg)
    wanted = {}  # hf name -> (our path, transpose, expected HF shape)
    for path, shape in expected.items():
        name, transpose = hf_name(path)
        wanted[name] = (path, transpose, shape[::-1] if transpose else shape)
    # canonical name -> stored name; a headless save (LlamaModel) has no 'model.' prefix
    headless = not any(n.startswith('model.') for n in reader.where)
    names = {(f'model.{n}' if headless and n != 'lm_head.weight' else n): n for n in reader.where}
    config_json = os.path.join(hf_dir, 'config.json')
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ConvertError(
            f'{hf_dir}: tensor {missing[0]} is missing'
            + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else '')
            + f'; {config_json} describes a {cfg.model.num_layers}-layer model that has it'
        )
    tied_head = None
    for name in sorted(names):  # every check before loading anything
        stored = names[name]
        file = reader.where[stored]
        if name in wanted:
            shape = wanted[name][2]
            if reader.shapes[stored] != shape:
                raise ConvertError(
                    f'{file}: tensor {stored} has shape {reader.shapes[stored]}, expected {shape} '
                    f'from {config_json}'
                )
        elif name == 'lm_head.weight' and cfg.model.tie_embeddings:
            tied_head = stored  # allowed when equal to the embedding (checked below)
        elif not _IGNORED.fullmatch(name):
            raise ConvertError(
                f'{file}: unexpected tensor {stored} (not part of the '
                f'{cfg.model.num_layers}-layer model that {config_json} describes)'
            )
    out = {}
    for name, (path, transpose, _) in wanted.items():
        x = reader.load(names[name])
        out[path] = np.ascontiguousarray(x.T) if transpose else x
    if tied_head is not None:
        head = reader.load(tied_head)
        if head.shape != out['embed.embedding'].shape or not np.array_equal(
            head, out['embed.embedding']
        ):
            raise ConvertError(
                f'{reader.where[tied_head]}: tensor {tied_head} differs from '
                f'model.embed_tokens.weight but {config_json} has tie_word_embeddings=true'
            )
    return out


# --------------------------------------------------------------------------------------- import


def import_hf(hf_dir: str, workdir: str, *, base=None) -> config_lib.Config:
    """Imports the HF checkpoint in `hf_dir` into a new effattn run folder `workdir` (step 0)."""
    hf_dir, workdir = os.path.abspath(hf_dir), os.path.abspath(workdir)
    if not os.path.isdir(hf_dir):
        raise ConvertError(f'{hf_dir}: not a directory')
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise ConvertError(f'{workdir}: not empty; import into a new run folder')
    cfg_path = os.path.join(hf_dir, 'config.json')
    hf = read_json(cfg_path)
    cfg = run_config(hf, cfg_path, base)
    reader = TensorReader(weight_files(hf_dir))
    params = load_hf_params(cfg, reader, hf_dir)
    write_run(cfg, params, workdir, meta={'source': hf_dir})
    src = os.path.join(workdir, SOURCE_DIR)
    os.makedirs(src, exist_ok=True)
    shutil.copy(cfg_path, os.path.join(src, 'config.json'))
    for name in SIDE_FILES:
        if os.path.exists(os.path.join(hf_dir, name)):
            shutil.copy(os.path.join(hf_dir, name), os.path.join(src, name))
    return cfg


_RUN_CONFIG_PY = '''"""The config of this run folder (config.json beside this file), for train.py:

  python train.py --config={workdir}/config.py --workdir={workdir} --config.train.steps=100

Only config.train, config.checkpoint and config.mesh may be overridden: train.py refuses to resume a
run whose model or data differ from config.json.
"""

import json
import os

from effattn import config as config_lib


def get_config():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.json')) as f:
        return config_lib.to_config_dict(config_lib.from_dict(json.load(f)))
'''


def write_run(cfg: config_lib.Config, params: dict[str, np.ndarray], workdir: str, meta=None):
    """A run folder holding `params` as step 0 with a fresh optimizer state, as train.py writes it."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from effattn.train.checkpoint import Checkpointer
    from effattn.train.optimizer import make_optimizer
    from effattn.train.state import TrainState, build_model, split_params

    model = nnx.eval_shape(lambda: build_model(cfg, cfg.train.seed))
    _, abstract, _ = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
    nnx.replace_by_pure_dict(
        abstract, unflatten_params({k: jnp.asarray(v) for k, v in params.items()})
    )
    tx = make_optimizer(cfg.train)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=abstract,
        opt_state=tx.init(split_params(abstract)[0]),
        rng=jax.random.PRNGKey(cfg.train.seed),
    )
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(config_lib.to_dict(cfg), f, indent=2)
    with open(os.path.join(workdir, 'config.py'), 'w') as f:
        f.write(_RUN_CONFIG_PY.format(workdir=workdir))
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), cfg.checkpoint)
    try:
        ckpt.save(0, state, dict(meta or {}, data_position=0, config=config_lib.to_dict(cfg)))
    finally:
        ckpt.close()


# --------------------------------------------------------------------------------------- export


def _run_params(workdir: str) -> tuple[config_lib.Config, int, dict[str, np.ndarray]]:
    import jax
    from flax import nnx

    from effattn.eval.run import EvalError, load_run

    try:
        cfg, _, state, step = load_run(workdir)
    except EvalError as e:
        raise ConvertError(str(e)) from e
    flat = flatten_params(nnx.to_pure_dict(state.params))
    return cfg, step, {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}


def _check_out_dir(out_dir: str) -> None:
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConvertError(f'{out_dir}: not empty; export into a new directory')
    os.makedirs(out_dir, exist_ok=True)


def hf_model_type(cfg: config_lib.Config, source: dict | None = None) -> str:
    """The HF model_type that represents `cfg` exactly; ConvertError naming the key when none does."""
    m, a = cfg.model, cfg.model.attention
    for i, kind in enumerate(config_lib.layer_kinds(m)):
        if kind != 'softmax':
            key = 'config.model.layers' if m.layers else 'config.model.attention.kind'
            raise ConvertError(
                f'{key}: layer {i} is {kind!r}; Hugging Face export needs softmax attention in '
                'every layer (use --format=safetensors for any model)'
            )
    checks = (
        (m.mlp == 'swiglu', 'config.model.mlp', f'is {m.mlp!r}; needs swiglu'),
        (a.rope, 'config.model.attention.rope', 'is False; needs RoPE'),
        (a.sinks == 0, 'config.model.attention.sinks', f'is {a.sinks}; needs 0'),
        (m.head == 'lm', 'config.model.head', f'is {m.head!r}; needs lm'),
        (
            not (a.qk_norm and a.qkv_bias),
            'config.model.attention.qkv_bias',
            'and qk_norm together have no Hugging Face architecture',
        ),
    )
    for ok, key, msg in checks:
        if not ok:
            raise ConvertError(
                f'{key} {msg} for a Hugging Face export (use --format=safetensors for any model)'
            )
    if a.qk_norm:
        return 'qwen3'
    if a.qkv_bias:
        return 'qwen2'
    if a.window:
        return 'mistral'
    src = (source or {}).get('model_type')
    return src if src in ('llama', 'mistral') else 'llama'


def hf_config(cfg: config_lib.Config, source: dict | None = None) -> dict:
    """The HF config.json of `cfg` (keys of `source` kept when it has the same model_type)."""
    from effattn.models.mlp import mlp_hidden_size

    m, a = cfg.model, cfg.model.attention
    model_type = hf_model_type(cfg, source)
    out = dict(source) if source and source.get('model_type') == model_type else {}
    for key in ('rope_scaling', 'layer_types', 'auto_map', 'transformers_version', 'torch_dtype'):
        out.pop(key, None)
    heads = a.num_heads
    out.update(
        architectures=[ARCHITECTURES[model_type]],
        model_type=model_type,
        vocab_size=m.vocab_size,
        hidden_size=m.d_model,
        intermediate_size=mlp_hidden_size(m),
        num_hidden_layers=m.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=a.num_kv_heads or heads,
        head_dim=a.head_dim or m.d_model // heads,
        hidden_act='silu',
        max_position_embeddings=out.get('max_position_embeddings', cfg.data.seq_len),
        rms_norm_eps=m.norm_eps,
        rope_theta=a.rope_theta,
        rope_parameters={'rope_type': 'default', 'rope_theta': a.rope_theta},
        tie_word_embeddings=m.tie_embeddings,
        initializer_range=m.init_std,
        dtype='float32',
        use_cache=True,
    )
    if model_type in ('llama', 'mistral', 'qwen3'):
        out['attention_bias'] = False
    if model_type == 'llama':
        out['mlp_bias'] = False
    if model_type == 'mistral':
        out['sliding_window'] = a.window or None
    if model_type in ('qwen2', 'qwen3'):
        out['use_sliding_window'] = bool(a.window)
        out['sliding_window'] = a.window or None
        out['max_window_layers'] = 0 if a.window else m.num_layers
    return out


def _parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMG]?i?B?)\s*', size, re.IGNORECASE)
    if not m:
        raise ConvertError(f'--max_shard_size={size!r}: expected e.g. 5GB, 500MB or a byte count')
    unit = m.group(2).upper().rstrip('B').rstrip('I')
    return int(float(m.group(1)) * {'': 1, 'K': 1024, 'M': 1024**2, 'G': 1024**3}[unit])


def _save_sharded(tensors: dict[str, np.ndarray], out_dir: str, max_shard: int, meta: dict):
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
    from safetensors.numpy import save_file

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, x in tensors.items():
        if shards[-1] and size + x.nbytes > max_shard:
            shards.append({})
            size = 0
        shards[-1][name] = x
        size += x.nbytes
    if len(shards) == 1:
        save_file(tensors, os.path.join(out_dir, 'model.safetensors'), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
        save_file(shard, os.path.join(out_dir, fname), metadata=meta)
        weight_map.update({name: fname for name in shard})
    index = {
        'metadata': {'total_size': int(sum(x.nbytes for x in tensors.values()))},
        'weight_map': weight_map,
    }
    with open(os.path.join(out_dir, 'model.safetensors.index.json'), 'w') as f:
        json.dump(index, f, indent=2)


def export_run(
    workdir: str,
    out_dir: str,
    *,
    fmt: str = 'hf',
    max_shard_size: str | int = DEFAULT_MAX_SHARD,
) -> str:
    """Exports the newest checkpoint of `workdir` to `out_dir` ('hf' or 'safetensors'); returns
    the model_type written ('effattn' for the safetensors format)."""
    if fmt not in ('hf', 'safetensors'):
        raise ConvertError(f'--format={fmt!r}: expected hf or safetensors')
    max_shard = _parse_size(max_shard_size)
    workdir, out_dir = os.path.abspath(workdir), os.path.abspath(out_dir)
    source_dir = os.path.join(workdir, SOURCE_DIR)
    source_cfg = os.path.join(source_dir, 'config.json')
    source = read_json(source_cfg) if os.path.exists(source_cfg) else None
    cfg, step, params = _run_params(workdir)
    if fmt == 'safetensors':
        _check_out_dir(out_dir)
        meta = {'format': 'effattn', 'step': str(step)}
        _save_sharded(params, out_dir, max_shard, meta)
        with open(os.path.join(out_dir, 'config.json'), 'w') as f:
            json.dump(config_lib.to_dict(cfg), f, indent=2)
        return 'effattn'
    config = hf_config(cfg, source)  # raises before anything is written
    tensors = {}
    for path, x in params.items():
        name, transpose = hf_name(path)
        tensors[name] = np.ascontiguousarray(x.T if transpose else x, np.float32)
    _check_out_dir(out_dir)
    _save_sharded(tensors, out_dir, max_shard, {'format': 'pt'})
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    if source is not None:
        for name in SIDE_FILES:
            if os.path.exists(os.path.join(source_dir, name)):
                shutil.copy(os.path.join(source_dir, name), os.path.join(out_dir, name))
    return config['model_type']
