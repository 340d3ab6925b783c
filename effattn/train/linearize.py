"""Linearising a pretrained softmax LM: LoLCATs (attention transfer, then LoRA) and Liger (LoRA only).

A teacher is any effattn run folder whose layers are all softmax attention (trained by train.py, or
imported by ``python -m effattn.convert import``). The student is the same model with another
attention kind (``hedgehog`` for LoLCATs, ``liger_gla`` for Liger) whose parameters keep the softmax
layer's names, so every teacher weight copies over by path (wq/wk/wv/wo, norms, MLP, embeddings);
only the kind's new parameters (Hedgehog's feature maps and window factors) start fresh.

  1. Attention transfer (LoLCATs stage 1; Zhang et al. 2025, arXiv 2410.10254): only the student
     kind's FEATURE_PARAMS train. The teacher runs frozen and supplies every layer's input (its own
     hidden states, so layers are decoupled); the loss is mse_factor * the mean over layers of the
     MSE between the teacher's softmax output and the student's output per head, before W_o
     (ALGORITHMS.md section 11). Padding tokens (segment id 0) do not count.
  2. LoRA fine-tuning (both methods): every target projection (wq, wk, wv, wo by default) is wrapped
     in an nnx.LoRA (rank r, update scaled by alpha / r, B = 0 at init so training starts from the
     copied model); only nnx.LoRAParam variables train, on the next-token loss.
  3. Merge: W <- W + (alpha / r) A B, the wrappers are removed, and the student is saved as an
     ordinary run folder of its kind (config.json + orbax checkpoint at step 0, fresh optimizer
     state, as effattn.models.convert writes imports): eval.py evaluates and generates from it,
     train.py fine-tunes it further.

The two stages read the teacher run's training data (its config.data) one after the other: stage 2
starts where stage 1 stopped, so a run with stage 1 sees the same number of tokens as one without.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import typing
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from effattn import config as config_lib
from effattn import parallel
from effattn.config import Config, ConfigError, TrainConfig, layer_kinds
from effattn.models.convert import flatten_params, unflatten_params, write_run
from effattn.models.lm import DecoderLM

# ----------------------------------------------------------------------------------- the schema


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Stage 1, attention transfer (LoLCATs: AdamW lr 1e-2, no weight decay, MSE factor 1000)."""

    steps: int = 300  # 0 = skip (Liger; or the LoRA-only ablation)
    batch_size: int = 0  # 0 = the teacher run's config.train.batch_size
    lr: float = 1e-2
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0  # cosine decay to lr * min_lr_ratio (1.0: constant)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    mse_factor: float = 1000.0


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Stage 2, LoRA on the next-token loss (LoLCATs: r=8, alpha=16 on q, k, v, o; lr 1e-4)."""

    steps: int = 300  # 0 = skip (the student keeps the copied weights)
    batch_size: int = 0  # 0 = the teacher run's config.train.batch_size
    lr: float = 1e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0  # the update is scaled by lora_alpha / lora_rank
    # comma-separated projections of each block: attention (wq, wk, wv, wo) or MLP (w1, w2, w3)
    lora_targets: str = 'wq,wk,wv,wo'


@dataclasses.dataclass(frozen=True)
class LinearizeConfig:
    method: str = 'lolcats'  # a label for the run name (lolcats | liger | ...)
    kind: str = 'hedgehog'  # the student's attention kind (every layer)
    window: int = 64  # the student's config.model.attention.window (sliding-window softmax part)
    feature_dim: int = 0  # the student's config.model.attention.feature_dim (0: the kind's default)
    seed: int = 0  # the student's new parameters and the LoRA A matrices
    log_every: int = 20  # console and tensorboard every N steps
    attention_transfer: TransferConfig = dataclasses.field(default_factory=TransferConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)


# LoRA target name -> the block's submodule holding it
LORA_TARGETS = {
    'wq': 'attn',
    'wk': 'attn',
    'wv': 'attn',
    'wo': 'attn',
    'w1': 'mlp',
    'w2': 'mlp',
    'w3': 'mlp',
}


class LinearizeError(ValueError):
    """The teacher cannot be linearised as asked, or the output folder is in use."""


def default_config() -> ml_collections.ConfigDict:
    """The linearize schema with its defaults (LoLCATs), for configs/linearize_*.py to edit."""
    return config_lib.to_config_dict(LinearizeConfig())


def check_key(path: str) -> None:
    """Raises ConfigError when `path` ('finetune.lr') is not a key of the linearize schema."""
    cls, prefix = LinearizeConfig, 'config'
    for i, part in enumerate(path.split('.')):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise ConfigError(
                f'{prefix}.{part}: unknown key; known keys of {prefix}: {", ".join(sorted(hints))}'
            )
        prefix, cls = f'{prefix}.{part}', hints[part]
        if not dataclasses.is_dataclass(cls) and i < len(path.split('.')) - 1:
            raise ConfigError(f'{prefix}: is a {cls.__name__}, not a section')


def validate(config: ml_collections.ConfigDict | dict) -> LinearizeConfig:
    """Checks a linearize ConfigDict and returns frozen dataclasses (ConfigError names the key)."""
    lin = config_lib._build(LinearizeConfig, config, 'config')

    def check(cond: bool, key: str, message: str) -> None:
        if not cond:
            raise ConfigError(f'config.{key}: {message}')

    for name in ('attention_transfer', 'finetune'):
        stage = getattr(lin, name)
        check(stage.steps >= 0, f'{name}.steps', f'must be >= 0, got {stage.steps}')
        check(stage.batch_size >= 0, f'{name}.batch_size', f'must be >= 0, got {stage.batch_size}')
        check(
            stage.lr > 0 and math.isfinite(stage.lr), f'{name}.lr', f'must be > 0, got {stage.lr}'
        )
        check(stage.warmup_steps >= 0, f'{name}.warmup_steps', 'must be >= 0')
    from effattn.attention import registry

    known = registry.known_kinds()
    check(
        lin.kind in known, 'kind', f'unknown attention kind {lin.kind!r}; known: {", ".join(known)}'
    )
    check(lin.window >= 0, 'window', f'must be >= 0, got {lin.window}')
    f = lin.finetune
    check(f.lora_rank >= 1, 'finetune.lora_rank', f'must be >= 1, got {f.lora_rank}')
    check(f.lora_alpha > 0, 'finetune.lora_alpha', f'must be > 0, got {f.lora_alpha}')
    bad = [t for t in lora_target_names(f) if t not in LORA_TARGETS]
    check(
        not bad and lora_target_names(f),
        'finetune.lora_targets',
        f'unknown projection(s) {bad}; known: {", ".join(LORA_TARGETS)}',
    )
    check(lin.log_every > 0, 'log_every', f'must be > 0, got {lin.log_every}')
    return lin


def lora_target_names(f: FinetuneConfig) -> list[str]:
    return [t.strip() for t in f.lora_targets.split(',') if t.strip()]


# ------------------------------------------------------------------------------ teacher -> student


def student_config(teacher: Config, lin: LinearizeConfig) -> Config:
    """The teacher's config with the student's attention kind, window and feature_dim."""
    kinds = sorted(set(layer_kinds(teacher.model)))
    if kinds != ['softmax']:
        raise LinearizeError(
            f'the teacher must use softmax attention in every layer (config.model.attention.kind / '
            f'config.model.layers), got {", ".join(kinds)}'
        )
    if teacher.model.head != 'lm':
        raise LinearizeError("the teacher must be a language model (config.model.head='lm')")
    c = config_lib.to_config_dict(teacher)
    c.name = f'{teacher.name}-{lin.method}'
    c.model.layers = ''
    a = c.model.attention
    a.kind, a.window, a.feature_dim, a.sinks = lin.kind, lin.window, lin.feature_dim, 0
    try:
        return config_lib.validate(c)
    except ConfigError as e:
        raise LinearizeError(
            f"the student config (the teacher's config.json with attention kind {lin.kind!r}, "
            f'window {lin.window}, feature_dim {lin.feature_dim}) is invalid: {e}'
        ) from e


def build_student(cfg: Config, teacher_params, seed: int) -> tuple[DecoderLM, list[str]]:
    """The student model with every teacher parameter copied by path; returns (model, the paths of
    the student's own new parameters). LinearizeError names a teacher parameter it cannot hold."""
    student = DecoderLM(cfg.model, train_len=cfg.data.seq_len, rngs=nnx.Rngs(params=seed))
    state = nnx.state(student, (nnx.Param, nnx.BatchStat))
    own = flatten_params(nnx.to_pure_dict(state))
    given = flatten_params(nnx.to_pure_dict(teacher_params))
    for path, value in given.items():
        if path not in own:
            raise LinearizeError(
                f'teacher parameter {path} has no place in the {cfg.model.attention.kind} student'
            )
        if own[path].shape != value.shape:
            raise LinearizeError(
                f'teacher parameter {path} has shape {value.shape}, the student expects '
                f'{own[path].shape}'
            )
    new = sorted(set(own) - set(given))
    nnx.replace_by_pure_dict(state, unflatten_params({**own, **given}))
    nnx.update(student, state)
    return student, new


# ------------------------------------------------------------------------ stage 1: attention transfer


class _Identity(nnx.Module):
    def __call__(self, x):
        return x


def _heads(attn: nnx.Module, x: jax.Array, positions, segment_ids) -> jax.Array:
    """The attention output before W_o, [B, T, H * d]: the module runs with W_o swapped for the
    identity (both kinds end in self.wo(o.reshape(B, T, -1)))."""
    wo = attn.wo
    attn.wo = _Identity()
    try:
        return attn(x, positions=positions, segment_ids=segment_ids).astype(jnp.float32)
    finally:
        attn.wo = wo


def transferred_layers(student: DecoderLM) -> list[int]:
    """Indices of the blocks whose attention kind declares FEATURE_PARAMS (what stage 1 trains)."""
    return [i for i, b in enumerate(student.blocks) if getattr(b.attn, 'FEATURE_PARAMS', ())]


def transfer_filter(student: DecoderLM):
    """nnx filter: the FEATURE_PARAMS of every block's attention (e.g. q_map, k_map, window_factor)."""
    prefixes = {
        ('blocks', str(i), 'attn', name)
        for i in transferred_layers(student)
        for name in student.blocks[i].attn.FEATURE_PARAMS
    }

    def trainable(path, value) -> bool:
        key = tuple(str(p) for p in path[:4])
        return isinstance(value, nnx.Param) and key in prefixes

    return trainable


def transfer_losses(teacher: DecoderLM, student: DecoderLM, batch: dict) -> jax.Array:
    """Per transferred layer, the MSE between the student's and the teacher's per-head attention
    outputs (before W_o) on the teacher's own layer inputs; [num transferred layers] fp32."""
    tokens, seg = batch['inputs'], batch.get('segment_ids')
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    weight = jnp.ones((b, t), jnp.float32) if seg is None else (seg != 0).astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0)
    layers = set(transferred_layers(student))
    x = teacher.embed(tokens)
    losses = []
    for i, (tb, sb) in enumerate(zip(teacher.blocks, student.blocks)):
        h = jax.lax.stop_gradient(tb.attn_norm(x))
        y = _heads(tb.attn, h, positions, seg)
        if i in layers:
            err = jnp.mean(jnp.square(_heads(sb.attn, h, positions, seg) - y), axis=-1)
            losses.append(jnp.sum(err * weight) / count)
        x = tb._mlp(x + tb.attn.wo(y.astype(tb.attn.dtype)))
        x = jax.lax.stop_gradient(x)
    return jnp.stack(losses)


def make_transfer_mse(teacher_def):
    """mse(teacher_params, student, batch) -> the mean over layers of transfer_losses (jitted)."""

    @nnx.jit
    def mse(teacher_params, student, batch):
        return jnp.mean(transfer_losses(teacher_def.merge(teacher_params), student, batch))

    return mse


def _optimizer(stage, steps: int) -> optax.GradientTransformation:
    from effattn.train.optimizer import make_optimizer

    return make_optimizer(
        TrainConfig(
            steps=max(steps, 1),
            lr=stage.lr,
            warmup_steps=stage.warmup_steps,
            min_lr_ratio=stage.min_lr_ratio,
            weight_decay=stage.weight_decay,
            grad_clip=stage.grad_clip,
            b2=0.999,
        )
    )


def _on_mesh_of(rest, tree):
    """`tree` replicated on the mesh of `rest`'s first NamedSharding leaf (unchanged if it has none).

    The step returns the trainable parameters and optimizer state replicated on that mesh; fresh ones sit
    on one device, so without this the second step would miss jit's cache and compile again."""
    mesh = parallel.mesh_of(parallel.sharding_of(rest))
    if mesh is None:
        return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _run_stage(
    name: str,
    model: nnx.Module,
    trainable_filter,
    loss_fn,
    extra,
    stream,
    start: int,
    steps: int,
    stage,
    log,
) -> list[float]:
    """Trains the `trainable_filter` variables of `model` (in place) for `steps` steps on
    stream.batch(start + i); loss_fn(model, extra, batch) -> scalar. Returns the loss per step."""
    from effattn.data.prefetch import Prefetcher

    graphdef, trainable, rest = nnx.split(model, trainable_filter, ...)
    if not jax.tree.leaves(trainable):
        raise LinearizeError(f'{name}: the student has no parameter to train')
    tx = _optimizer(stage, steps)
    trainable = _on_mesh_of(rest, trainable)
    opt_state = _on_mesh_of(rest, tx.init(trainable))

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(trainable, opt_state, rest, extra, batch):
        def objective(tr):
            return loss_fn(nnx.merge(graphdef, tr, rest), extra, batch)

        loss, grads = jax.value_and_grad(objective)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    losses, pending = [], []
    data = Prefetcher(stream, start)
    clock = time.perf_counter()
    try:
        for i in range(steps):
            batch = data.next()
            batch = {k: batch[k] for k in ('inputs', 'labels', 'segment_ids') if k in batch}
            trainable, opt_state, loss = step(trainable, opt_state, rest, extra, batch)
            pending.append(loss)
            if (i + 1) % log.every == 0 or i + 1 == steps:
                values = [float(v) for v in jax.device_get(pending)]
                pending = []
                if not all(np.isfinite(values)):
                    raise LinearizeError(
                        f'{name}: non-finite loss at step {i + 1}; lower its lr or enable grad_clip'
                    )
                losses += values
                now = time.perf_counter()
                log.step(name, i + 1, steps, float(np.mean(values)), now - clock, len(values))
                clock = now
    finally:
        data.close()
    nnx.update(model, trainable)
    return losses


def attention_transfer(
    teacher_def, teacher_params, student: DecoderLM, stream, tc: TransferConfig, *, start=0, log
) -> list[float]:
    """Stage 1 (in place): trains the student's FEATURE_PARAMS on mse_factor * mean-layer MSE."""
    if not transferred_layers(student):
        raise LinearizeError(
            'attention transfer: the student kind has no feature maps to train (no FEATURE_PARAMS); '
            'set config.attention_transfer.steps=0'
        )

    def loss_fn(model, teacher_params, batch):
        teacher = teacher_def.merge(teacher_params)
        return tc.mse_factor * jnp.mean(transfer_losses(teacher, model, batch))

    return _run_stage(
        'attention transfer',
        student,
        transfer_filter(student),
        loss_fn,
        teacher_params,
        stream,
        start,
        tc.steps,
        tc,
        log,
    )


# ------------------------------------------------------------------------------- stage 2: LoRA


class ScaledLoRA(nnx.LoRA):
    """nnx.LoRA around a frozen nnx.Linear, its update scaled by alpha / rank (Hu et al. 2022):
    y = base(x) + (alpha / r) x A B, A [in, r] (he_uniform), B [r, out] (zeros) as nnx.LoRAParam."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, *, rngs: nnx.Rngs):
        super().__init__(
            base.in_features,
            rank,
            base.out_features,
            base_module=base,
            dtype=base.dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.scale = float(alpha) / rank

    def __call__(self, x: jax.Array) -> jax.Array:
        xl, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        return self.base_module(x) + (xl @ a @ b) * jnp.asarray(self.scale, xl.dtype)

    def merged(self) -> nnx.Linear:
        """The base layer with W + (alpha / r) A B in its kernel (fp32)."""
        base = self.base_module
        delta = jnp.matmul(self.lora_a[...], self.lora_b[...], precision=jax.lax.Precision.HIGHEST)
        base.kernel[...] = base.kernel[...] + self.scale * delta
        return base


def _lora_sites(model: DecoderLM, targets: list[str]):
    for block in model.blocks:
        for name in targets:
            parent = getattr(block, LORA_TARGETS[name])
            layer = getattr(parent, name, None) if parent is not None else None
            if layer is not None:
                yield parent, name, layer


def add_lora(model: DecoderLM, f: FinetuneConfig, seed: int) -> int:
    """Wraps every target projection of every block in a ScaledLoRA (in place); returns how many."""
    rngs = nnx.Rngs(params=seed)
    count = 0
    for parent, name, layer in list(_lora_sites(model, lora_target_names(f))):
        if not isinstance(layer, nnx.Linear):
            raise LinearizeError(f'LoRA target {name}: expected an nnx.Linear, got {type(layer)}')
        setattr(parent, name, ScaledLoRA(layer, f.lora_rank, f.lora_alpha, rngs=rngs))
        count += 1
    if not count:
        raise LinearizeError(f'config.finetune.lora_targets={f.lora_targets!r}: no such projection')
    return count


def merge_lora(model: DecoderLM) -> int:
    """Folds every ScaledLoRA into its base layer and removes the wrapper (in place)."""
    count = 0
    for block in model.blocks:
        for name, where in LORA_TARGETS.items():
            parent = getattr(block, where)
            layer = getattr(parent, name, None) if parent is not None else None
            if isinstance(layer, ScaledLoRA):
                setattr(parent, name, layer.merged())
                count += 1
    return count


def lm_loss(model: DecoderLM, _, batch: dict) -> jax.Array:
    from effattn.train.step import masked_loss_and_accuracy

    logits = model(batch['inputs'], segment_ids=batch.get('segment_ids'))
    return masked_loss_and_accuracy(logits, batch['labels'])[0]


def finetune_lora(model: DecoderLM, stream, f: FinetuneConfig, *, start=0, log) -> list[float]:
    """Stage 2 (in place): trains only the nnx.LoRAParam variables on the next-token loss."""
    return _run_stage(
        'LoRA fine-tuning', model, nnx.LoRAParam, lm_loss, None, stream, start, f.steps, f, log
    )


# ----------------------------------------------------------------------------------- the pipeline


class _Log:
    def __init__(self, every: int, writer, quiet: bool):
        self.every, self.writer, self.quiet = every, writer, quiet

    def say(self, *a) -> None:
        if not self.quiet:
            print(*a, flush=True)

    def step(self, name, step, total, loss, seconds, n) -> None:
        tag = 'transfer' if name.startswith('attention') else 'finetune'
        self.writer.scalars(step, {f'linearize/{tag}_loss': loss})
        self.say(f'{name}: step {step}/{total}  loss {loss:.5g}  {seconds / n:.2f} s/step')


def _stream(cfg: Config, batch_size: int):
    from effattn.data import sources

    bs = batch_size or cfg.train.batch_size
    return sources.train_stream(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=bs))
    )


def _perplexity(cfg: Config, model: DecoderLM, eval_rows) -> dict:
    from effattn.eval.perplexity import evaluate_perplexity, make_nll
    from effattn.train.state import ModelDef

    graphdef, params, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
    return evaluate_perplexity(
        make_nll(ModelDef(graphdef, rest)), params, eval_rows, min(cfg.train.batch_size, 64)
    )


def linearize(lin: LinearizeConfig, teacher_dir: str, workdir: str, *, quiet: bool = False) -> dict:
    """Linearises the teacher run in `teacher_dir` into a new run folder `workdir` (see the module
    docstring); returns the report also written to workdir/linearize.json."""
    from effattn.data import sources
    from effattn.eval.run import load_run
    from effattn.train.metrics import MetricsWriter

    workdir = os.path.abspath(workdir)
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise LinearizeError(f'{workdir}: not empty; linearise into a new run folder')
    teacher_cfg, teacher_def, teacher_state, teacher_step = load_run(teacher_dir)
    cfg = student_config(teacher_cfg, lin)
    student, new = build_student(cfg, teacher_state.params, lin.seed)
    os.makedirs(workdir, exist_ok=True)
    writer = MetricsWriter(workdir)
    log = _Log(lin.log_every, writer, quiet)
    log.say(
        f'teacher: {os.path.abspath(teacher_dir)} (step {teacher_step}, softmax)\n'
        f'student: {cfg.model.attention.kind}, window {cfg.model.attention.window}; '
        f'copied every teacher parameter; new: {", ".join(new) if new else "none"}'
    )
    eval_rows = sources.eval_sets(cfg)['text'] if cfg.data.kind == 'text' else None
    tc, fc = lin.attention_transfer, lin.finetune
    report: dict = {
        'teacher': os.path.abspath(teacher_dir),
        'teacher_step': teacher_step,
        'config': config_lib.to_dict(lin),
        'new_parameters': new,
    }
    t0 = time.perf_counter()
    try:
        if tc.steps:
            stream = _stream(cfg, tc.batch_size)
            probe = {k: v for k, v in stream.batch(0).items() if k != 'labels'}
            mse = make_transfer_mse(teacher_def)
            before = float(mse(teacher_state.params, student, probe))
            losses = attention_transfer(
                teacher_def, teacher_state.params, student, stream, tc, log=log
            )
            after = float(mse(teacher_state.params, student, probe))
            log.say(f'attention transfer: MSE on its first batch {before:.4g} -> {after:.4g}')
            report['attention_transfer'] = {
                'steps': tc.steps,
                'mse_before': before,
                'mse_after': after,
                'loss_first': losses[0],
                'loss_last': losses[-1],
                'seconds': time.perf_counter() - t0,
            }
        if fc.steps:
            t1 = time.perf_counter()
            b1 = tc.batch_size or cfg.train.batch_size
            b2 = fc.batch_size or cfg.train.batch_size
            start = -(-tc.steps * b1 // b2)  # stage 2 reads on from where stage 1 stopped
            n = add_lora(student, fc, lin.seed + 1)
            losses = finetune_lora(student, _stream(cfg, fc.batch_size), fc, start=start, log=log)
            merge_lora(student)
            report['finetune'] = {
                'steps': fc.steps,
                'lora_layers': n,
                'loss_first': losses[0],
                'loss_last': losses[-1],
                'seconds': time.perf_counter() - t1,
            }
        report['seconds'] = time.perf_counter() - t0
        if eval_rows is not None:
            report['eval'] = _perplexity(cfg, student, eval_rows)
            log.say(
                f'student eval loss {report["eval"]["loss"]:.4f}, '
                f'perplexity {report["eval"]["perplexity"]:.3f}'
            )
            writer.scalars(0, {f'eval/{k}': report['eval'][k] for k in ('loss', 'perplexity')})
    finally:
        writer.close()
    params = nnx.to_pure_dict(nnx.state(student, (nnx.Param, nnx.BatchStat)))
    flat = {k: np.asarray(jax.device_get(v)) for k, v in flatten_params(params).items()}
    write_run(cfg, flat, workdir, meta={'linearize': report})
    with open(os.path.join(workdir, 'linearize.json'), 'w') as f:
        json.dump(report, f, indent=2)
    log.say(f'saved {workdir} (python eval.py --workdir={workdir})')
    return report
