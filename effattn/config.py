"""The one configuration schema of effattn: defaults, validation and clear errors.

Config files (configs/*.py) return an ml_collections.ConfigDict built from :func:`default_config` and
edited; :func:`validate` checks it once, at start-up and before anything compiles, and turns it into
frozen dataclasses. Modules, data and the train loop receive those dataclasses, never the ConfigDict.

Every error is a :class:`ConfigError` whose message names the key (``config.model.d_model``), what it
was, and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending key."""


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    kind: str = 'softmax'  # mechanism; see effattn.attention.registry.known_kinds()
    num_heads: int = 4
    num_kv_heads: int = 0  # GQA key/value heads; 0 = num_heads
    head_dim: int = 0  # 0 = d_model // num_heads
    impl: str = 'auto'  # op implementation: auto | naive | recurrent | chunk | kernel
    rope: bool = True  # rotary position embedding on q, k (softmax-family kinds)
    rope_theta: float = 10000.0
    window: int = 0  # sliding window (keys incl. self); 0 = full causal attention
    sinks: int = 0  # attention sinks (StreamingLLM): first n keys always visible
    qk_norm: bool = False  # RMSNorm on q and k per head (sigmoid attention stabiliser)
    qkv_bias: bool = False  # biases on the q, k, v projections (Qwen2; softmax and sigmoid kinds)
    sigmoid_bias: float = 0.0  # used when sigmoid_bias_from_length is False
    sigmoid_bias_from_length: bool = True  # b = -log(data.seq_len), fixed at training length
    chunk_size: int = 64  # chunk size of chunkwise linear-family ops
    feature_map: str = 'elu'  # linear kind: elu | relu | identity | hedgehog | taylor | t2r | dpfp
    # learned feature maps (hedgehog, t2r): width F per head, 0 = head_dim; based: q/k width per head
    # fed to the Taylor map, 0 = 16
    feature_dim: int = 0
    normalize: bool = True  # linear kind: divide by phi(q) . sum phi(k)
    expand_k: float = 1.0  # key/query width = expand_k * head_dim (linear family)
    expand_v: float = 1.0  # value width = expand_v * head_dim (linear family)
    conv_size: int = 4  # short causal depthwise conv (deltanet, gated_deltanet, agent); 0 = off
    gate_low_rank_dim: int = 16  # GLA gate projection rank
    gate_logit_normalizer: float = 16.0  # GLA: g = logsigmoid(.) / normalizer
    num_agents: int = 16  # agent kind: learned agent tokens per head (its conv on v: conv_size)
    local_heads: int = 1  # routing kind: heads with local causal attention (`window`); rest route
    num_clusters: int = 4  # routing kind: k-means centroids per routing head
    commitment_weight: float = 1e-4  # routing kind: k-means commitment loss weight in the loss
    centroid_decay: float = 0.999  # routing kind: EMA decay of the centroids (after each step)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8192
    d_model: int = 128
    num_layers: int = 2
    # per-layer kinds, comma separated, repeated to num_layers; '*' = attention.kind; '' = all attention.kind
    layers: str = ''
    mlp: str = 'swiglu'  # swiglu | none
    mlp_ratio: float = 4.0  # hidden width of the MLP = mlp_ratio * d_model (2/3 of it for SwiGLU)
    mlp_hidden: int = 0  # SwiGLU hidden width (HF intermediate_size); 0 = from mlp_ratio
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    compute_dtype: str = 'float32'  # float32 | bfloat16 (parameters stay float32)
    init_std: float = 0.02
    head: str = 'lm'  # lm (next-token logits) | classify (one label per sequence, e.g. ListOps)
    num_classes: int = 10  # classify head: number of classes
    pool: str = 'mean'  # classify head: mean (over non-pad tokens) | last (last non-pad token)
    attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    kind: str = 'mqar'  # mqar | listops | text
    vocab_size: int = 8192
    seq_len: int = 64  # training length (MQAR: the longest train setting; ListOps: padded length)
    # MQAR (seq_len, num_kv_pairs) mixture for training, and the settings reported at evaluation
    train_settings: tuple = ((64, 4),)
    train_weights: tuple = ()  # mixture weights per train setting; () = equal
    # MQAR: one setting per batch, each batch only as long as its setting (else per row, padded)
    mix_per_batch: bool = False
    eval_settings: tuple = ((64, 4),)
    eval_examples: int = 1000  # examples per evaluation setting
    power_a: float = 0.01  # MQAR query-gap power law
    random_non_queries: bool = True
    min_length: int = (
        500  # ListOps: keep trees with min_length < length < max_length (LRA: 500, 2000)
    )
    max_length: int = 2000
    max_depth: int = 10  # ListOps tree depth limit (LRA: 10)
    max_args: int = 10  # ListOps operator arity limit (LRA: 10)
    # text (effattn/data/text.py): local files, comma-separated paths or globs (.txt .jsonl .parquet);
    # eval_examples caps the evaluation rows; vocab_size is unused (the tokenizer's counts)
    train_files: str = ''
    eval_files: str = ''  # '' = hold out eval_fraction of the training documents
    eval_fraction: float = 0.01
    text_key: str = 'text'  # field of .jsonl records / column of .parquet files
    text_sample_by: str = 'line'  # .txt documents: line | paragraph | document (the whole file)
    tokenizer: str = ''  # '' = bytes (256 + PAD, BOS, EOS); or a folder with tokenizer.json
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    grad_clip: float = 1.0  # global-norm clipping; 0 = off
    seed: int = 0
    log_every: int = 10  # tensorboard scalars every N steps
    eval_every: int = 0  # evaluation every N steps; 0 = only at the end
    stop_at_accuracy: float = 0.0  # stop early when mean eval accuracy reaches this; 0 = never


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 200  # save every N steps (and on Ctrl-C, and at the end)
    keep: int = 3  # keep the N newest checkpoints
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    # Device mesh (effattn/parallel.py): the product of the axes is the number of devices; one axis
    # may be -1 (the devices the others leave). The defaults use every device for data parallelism.
    data: int = -1  # split the batch
    fsdp: int = 1  # split the batch, and shard parameters and optimizer state (FSDP)
    tensor: int = 1  # Megatron tensor parallelism: heads and the MLP hidden
    sequence: int = 1  # split T: LASP-2 for linear attention, all-gathered K/V for softmax
    multihost: bool = False  # call jax.distributed.initialize() (several hosts)


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    name: str = 'run'  # a label for the run (used in the default workdir name)
    # the kinds `python -m effattn.compare` trains when --kinds is not given; () = every known kind
    compare_kinds: tuple = ()


def _to_config_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return ml_collections.ConfigDict(
            {f.name: _to_config_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        )
    return obj


def to_config_dict(cfg: Config) -> ml_collections.ConfigDict:
    """A validated config back as a ConfigDict (e.g. to edit a field and validate again)."""
    return _to_config_dict(cfg)


def default_config() -> ml_collections.ConfigDict:
    """The full schema with its defaults, as a ConfigDict for config files to edit."""
    return _to_config_dict(Config())


def _type_name(tp: Any) -> str:
    return getattr(tp, '__name__', str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotated type `tp`; int -> float is the only silent conversion."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is tuple:
        if isinstance(value, (tuple, list)):
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    else:
        raise TypeError(f'unsupported schema type {tp!r} at {key}')
    raise ConfigError(f'{key}={value!r}: expected {_type_name(tp)}, got {type(value).__name__}')


def _build(cls: type, cd: Any, prefix: str) -> Any:
    if not isinstance(cd, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f'{prefix}: expected a section (ConfigDict), got {type(cd).__name__}')
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    items = dict(cd.items())
    unknown = sorted(set(items) - fields)
    if unknown:
        raise ConfigError(
            f'{prefix}.{unknown[0]}: unknown key; known keys of {prefix}: '
            f'{", ".join(sorted(fields))}'
        )
    kwargs = {}
    for name in fields:
        if name not in items:
            continue
        key = f'{prefix}.{name}'
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, items[name], key)
        else:
            kwargs[name] = _coerce(items[name], tp, key)
    return cls(**kwargs)


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f'{key}: {message}')


def _check_settings(key: str, settings: tuple) -> None:
    for s in settings:
        _check(
            isinstance(s, tuple) and len(s) == 2 and all(isinstance(x, int) for x in s),
            key,
            f'expected (seq_len, num_kv_pairs) pairs of ints, got {s!r}',
        )
        seq_len, kv = s
        _check(
            seq_len % 2 == 0 and seq_len > 0,
            key,
            f'MQAR seq_len must be even and > 0, got {seq_len}',
        )
        _check(
            4 * kv <= seq_len and kv > 0,
            key,
            f'MQAR needs 0 < 4 * num_kv_pairs <= seq_len, got {s!r}',
        )


DATA_KINDS = ('mqar', 'listops', 'text')


def _check_mqar(d: DataConfig) -> None:
    _check_settings('config.data.train_settings', d.train_settings)
    _check_settings('config.data.eval_settings', d.eval_settings)
    _check(len(d.train_settings) > 0, 'config.data.train_settings', 'needs at least one setting')
    _check(
        not d.train_weights or len(d.train_weights) == len(d.train_settings),
        'config.data.train_weights',
        f'{len(d.train_weights)} weights for {len(d.train_settings)} train settings',
    )
    longest = max(s[0] for s in d.train_settings)
    _check(
        longest == d.seq_len,
        'config.data.seq_len',
        f'must equal the longest MQAR train setting ({longest}), got {d.seq_len}',
    )
    for s in d.train_settings + d.eval_settings:
        _check(
            d.vocab_size > s[0],
            'config.data.vocab_size',
            f'MQAR needs vocab_size > seq_len; got vocab_size={d.vocab_size} with seq_len={s[0]}',
        )


def _check_listops(m: ModelConfig, d: DataConfig) -> None:
    _check(
        m.head == 'classify',
        'config.model.head',
        "ListOps is classification: needs head='classify'",
    )
    _check(
        m.num_classes == 10,
        'config.model.num_classes',
        f'ListOps has 10 classes, got {m.num_classes}',
    )
    _check(
        d.vocab_size == 16,
        'config.data.vocab_size',
        f'the ListOps vocabulary has 16 tokens, got {d.vocab_size}',
    )
    _check(
        0 <= d.min_length < d.max_length,
        'config.data.min_length',
        f'needs 0 <= min_length < max_length, got {d.min_length} and {d.max_length}',
    )
    _check(
        d.max_length <= d.seq_len + 1,
        'config.data.max_length',
        f'trees shorter than max_length={d.max_length} must fit in config.data.seq_len={d.seq_len}',
    )
    _check(
        d.max_depth >= 1 and d.max_args >= 2,
        'config.data.max_depth',
        f'needs max_depth >= 1 and max_args >= 2, got {d.max_depth} and {d.max_args}',
    )


def _check_text(cfg: Config, check_files: bool = True) -> None:
    from effattn.data import text  # lazy: reads the tokenizer; files are checked to exist

    d = cfg.data
    _check(
        cfg.model.head == 'lm', 'config.model.head', "text is language modelling: needs head='lm'"
    )
    _check(
        d.text_sample_by in text.SAMPLE_BY,
        'config.data.text_sample_by',
        f'expected one of {", ".join(text.SAMPLE_BY)}, got {d.text_sample_by!r}',
    )
    _check(
        bool(d.eval_files) or 0.0 < d.eval_fraction < 1.0,
        'config.data.eval_fraction',
        f'must be in (0, 1) when config.data.eval_files is empty, got {d.eval_fraction}',
    )
    _check(
        cfg.train.stop_at_accuracy == 0.0,
        'config.train.stop_at_accuracy',
        'text runs report eval loss and perplexity, not accuracy; leave it 0',
    )
    if check_files:
        text.validate_config(cfg)


def _check_mesh(cfg: Config) -> None:
    """Static mesh checks; the device count is checked by effattn.parallel.make_mesh."""
    sizes = {name: getattr(cfg.mesh, name) for name in ('data', 'fsdp', 'tensor', 'sequence')}
    for name, size in sizes.items():
        _check(
            size >= 1 or size == -1,
            f'config.mesh.{name}',
            f'must be >= 1, or -1 for the remaining devices; got {size}',
        )
    free = [name for name, size in sizes.items() if size == -1]
    _check(
        len(free) <= 1,
        f'config.mesh.{free[-1]}' if free else 'config.mesh',
        f'only one axis may be -1, got -1 for {" and ".join(free)}',
    )
    _check(
        cfg.data.seq_len % abs(sizes['sequence']) == 0,
        'config.mesh.sequence',
        f'config.data.seq_len={cfg.data.seq_len} must be a multiple of sequence={sizes["sequence"]}',
    )
    if not free or free[0] not in ('data', 'fsdp'):
        n = sizes['data'] * sizes['fsdp']
        _check(
            cfg.train.batch_size % n == 0,
            'config.train.batch_size',
            f'must be a multiple of config.mesh.data * config.mesh.fsdp = {n}, '
            f'got {cfg.train.batch_size}',
        )


def layer_kinds(model: ModelConfig) -> list[str]:
    """The attention kind of each layer: `model.layers` repeated to num_layers, or attention.kind.

    '*' in the pattern stands for attention.kind, so that one pattern (e.g. 'base_conv,*', Zoology's
    BaseConv hybrids) serves every kind of a comparison sweep.
    """
    if not model.layers:
        return [model.attention.kind] * model.num_layers
    pattern = [k.strip() for k in model.layers.split(',')]
    pattern = [model.attention.kind if k == '*' else k for k in pattern]
    return [pattern[i % len(pattern)] for i in range(model.num_layers)]


def _check_semantics(cfg: Config, check_files: bool = True) -> None:
    from effattn.attention import registry  # lazy: attention modules import this file

    m, a, d, t, c = cfg.model, cfg.model.attention, cfg.data, cfg.train, cfg.checkpoint
    _check(m.d_model > 0, 'config.model.d_model', f'must be > 0, got {m.d_model}')
    _check(m.num_layers > 0, 'config.model.num_layers', f'must be > 0, got {m.num_layers}')
    _check(a.num_heads > 0, 'config.model.attention.num_heads', f'must be > 0, got {a.num_heads}')
    if a.head_dim == 0:
        _check(
            m.d_model % a.num_heads == 0,
            'config.model.d_model',
            f'd_model={m.d_model} is not divisible by config.model.attention.num_heads={a.num_heads}',
        )
    kv = a.num_kv_heads or a.num_heads
    _check(
        a.num_heads % kv == 0,
        'config.model.attention.num_kv_heads',
        f'num_heads={a.num_heads} must be a multiple of num_kv_heads={kv}',
    )
    known = registry.known_kinds()
    _check(
        a.kind in known,
        'config.model.attention.kind',
        f'unknown attention kind {a.kind!r}; known kinds: {", ".join(known)}',
    )
    for i, kind in enumerate(layer_kinds(m)):
        _check(
            kind in known,
            'config.model.layers',
            f'layer {i}: unknown attention kind {kind!r}; known kinds: {", ".join(known)}',
        )
    if a.qkv_bias:
        for i, kind in enumerate(layer_kinds(m)):
            _check(
                getattr(registry.get(kind), 'supports_qkv_bias', False),
                'config.model.attention.qkv_bias',
                f'layer {i}: kind {kind!r} has no q/k/v biases (softmax and sigmoid have them)',
            )
    _check(m.mlp_hidden >= 0, 'config.model.mlp_hidden', f'must be >= 0, got {m.mlp_hidden}')
    _check(
        a.impl in ('auto', 'naive', 'recurrent', 'chunk', 'kernel', 'cudnn'),
        'config.model.attention.impl',
        f'unknown impl {a.impl!r}; expected auto, naive, recurrent, chunk, kernel or cudnn',
    )
    _check(a.window >= 0, 'config.model.attention.window', f'must be >= 0, got {a.window}')
    _check(
        a.window <= d.seq_len,
        'config.model.attention.window',
        f'window={a.window} is larger than the sequence (config.data.seq_len={d.seq_len})',
    )
    _check(a.sinks >= 0, 'config.model.attention.sinks', f'must be >= 0, got {a.sinks}')
    _check(
        a.sinks == 0 or a.window > 0,
        'config.model.attention.sinks',
        'attention sinks need a sliding window (config.model.attention.window > 0)',
    )
    _check(
        a.chunk_size > 0, 'config.model.attention.chunk_size', f'must be > 0, got {a.chunk_size}'
    )
    _check(
        m.mlp in ('swiglu', 'none'),
        'config.model.mlp',
        f"expected 'swiglu' or 'none', got {m.mlp!r}",
    )
    _check(
        m.compute_dtype in ('float32', 'bfloat16'),
        'config.model.compute_dtype',
        f"expected 'float32' or 'bfloat16', got {m.compute_dtype!r}",
    )
    _check(
        m.head in ('lm', 'classify'),
        'config.model.head',
        f"expected 'lm' or 'classify', got {m.head!r}",
    )
    _check(
        m.pool in ('mean', 'last'),
        'config.model.pool',
        f"expected 'mean' or 'last', got {m.pool!r}",
    )
    _check(
        d.kind in DATA_KINDS,
        'config.data.kind',
        f'unknown data kind {d.kind!r}; known kinds: {", ".join(DATA_KINDS)}',
    )
    _check(
        d.kind == 'text' or m.vocab_size >= d.vocab_size,  # text: checked against the tokenizer
        'config.model.vocab_size',
        f'model vocab {m.vocab_size} is smaller than the data vocab (config.data.vocab_size={d.vocab_size})',
    )
    if d.kind == 'mqar':
        _check(m.head == 'lm', 'config.model.head', "MQAR is next-token recall: needs head='lm'")
        _check_mqar(d)
    elif d.kind == 'text':
        _check_text(cfg, check_files)
    else:
        _check_listops(m, d)
    _check(t.steps > 0, 'config.train.steps', f'must be > 0, got {t.steps}')
    _check(t.batch_size > 0, 'config.train.batch_size', f'must be > 0, got {t.batch_size}')
    _check(
        t.lr > 0 and math.isfinite(t.lr),
        'config.train.lr',
        f'must be a positive number, got {t.lr}',
    )
    _check(0 <= t.warmup_steps, 'config.train.warmup_steps', f'must be >= 0, got {t.warmup_steps}')
    _check(t.log_every > 0, 'config.train.log_every', f'must be > 0, got {t.log_every}')
    _check(c.every > 0, 'config.checkpoint.every', f'must be > 0, got {c.every}')
    _check(c.keep > 0, 'config.checkpoint.keep', f'must be > 0, got {c.keep}')
    _check_mesh(cfg)
    for kind in sorted(set(layer_kinds(m))):
        registry.get(kind).validate_config(cfg)


def validate(config: ml_collections.ConfigDict | dict, *, check_files: bool = True) -> Config:
    """Checks a ConfigDict against the schema and returns frozen dataclasses.

    Raises ConfigError naming the key on unknown keys, wrong types and impossible combinations.
    check_files=False skips the checks that read data files and tokenizers (loading a finished run
    whose corpus has moved: its model is still usable).
    """
    cfg = _build(Config, config, 'config')
    _check_semantics(cfg, check_files)
    return cfg


def to_dict(cfg: Config) -> dict:
    """A JSON-serialisable dict of a validated config (stored beside checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict, *, check_files: bool = True) -> Config:
    """Inverse of to_dict (JSON lists become tuples)."""
    return validate(ml_collections.ConfigDict(_listify(d)), check_files=check_files)


def _listify(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _listify(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_listify(v) for v in x)
    return x


def check_key(path: str) -> None:
    """Raises ConfigError when `path` ('model.attention.kind') is not a key of the schema."""
    cls, prefix = Config, 'config'
    parts = path.split('.')
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise ConfigError(
                f'{prefix}.{part}: unknown key; known keys of {prefix}: {", ".join(sorted(hints))}'
            )
        prefix = f'{prefix}.{part}'
        tp = hints[part]
        if dataclasses.is_dataclass(tp):
            cls = tp
        elif i < len(parts) - 1:
            raise ConfigError(f'{prefix}: is a {_type_name(tp)}, not a section')
