"""Linearisation (LoLCATs, Liger): attention transfer lowers the MSE to the teacher, LoRA trains only
LoRA parameters and merges exactly, the saved run evaluates, and the Liger student copies the
teacher's projections."""

import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import TOL, assert_close

from effattn import config as config_lib
from effattn.eval.generation import generate_from_workdir
from effattn.eval.run import evaluate_workdir, load_run
from effattn.models.convert import flatten_params
from effattn.train import linearize as lz
from effattn.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = [
    f'line {i}: the {"quick brown fox" if i % 3 else "lazy dog"} jumps over {i % 7} fences.'
    for i in range(60)
]


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    """A run folder: a 2-layer softmax LM trained 10 steps on bytes of a small generated text
    (eval perplexity ~44 per byte, against 259 for a uniform guess)."""
    root = tmp_path_factory.mktemp('teacher')
    path = root / 'corpus.txt'
    path.write_text('\n'.join(DOCS) + '\n')
    c = config_lib.default_config()
    c.name = 'tiny-teacher'
    c.data.kind = 'text'
    c.data.train_files = str(path)
    c.data.eval_fraction = 0.1
    c.data.seq_len = 32
    c.data.eval_examples = 8
    c.model.vocab_size = 259
    c.model.d_model = 32
    c.model.num_layers = 2
    c.model.attention.num_heads = 2
    c.model.attention.chunk_size = 16
    c.train.batch_size = 4
    c.train.steps = 10
    c.train.lr = 1e-2
    c.train.warmup_steps = 3
    c.checkpoint.every = 1000
    c.checkpoint.async_save = False
    workdir = str(root / 'run')
    loop.train_and_evaluate(config_lib.validate(c), workdir, quiet=True)
    return workdir


def lin_config(**kw):
    c = lz.default_config()
    c.window = 8
    c.log_every = 1000
    for key, value in kw.items():
        section, _, name = key.rpartition('__')
        setattr(getattr(c, section) if section else c, name, value)
    return lz.validate(c)


class _Quiet:
    every = 1000

    def step(self, *a):
        pass


def _student(teacher, lin):
    tcfg, tdef, tstate, _ = load_run(teacher)
    cfg = lz.student_config(tcfg, lin)
    student, new = lz.build_student(cfg, tstate.params, lin.seed)
    return cfg, tdef, tstate, student, new


def test_lolcats_transfer_cuts_mse_tenfold_and_the_saved_run_evaluates(teacher, tmp_path):
    out = str(tmp_path / 'lolcats')
    lin = lin_config(attention_transfer__steps=60, finetune__steps=3)
    report = lz.linearize(lin, teacher, out, quiet=True)
    assert report['new_parameters'] == [
        f'blocks.{i}.attn.{n}' + ('.weight' if n != 'window_factor' else '')
        for i in range(2)
        for n in ('k_map', 'q_map', 'window_factor')
    ]
    at = report['attention_transfer']  # the MSE on one batch, before and after stage 1
    assert at['mse_after'] < at['mse_before'] / 10, at
    # the merged student is a plain hedgehog run folder: eval.py's loader, perplexity, generation
    cfg, _, state, step = load_run(out)
    assert cfg.model.attention.kind == 'hedgehog' and cfg.model.attention.window == 8
    assert step == 0 and not jax.tree.leaves(nnx.state(state.params, nnx.LoRAParam))
    result = evaluate_workdir(out)
    assert math.isfinite(result['perplexity']) and result['attention'] == 'hedgehog'
    assert math.isclose(result['perplexity'], report['eval']['perplexity'], rel_tol=1e-5)
    assert isinstance(generate_from_workdir(out, 'line ', max_new_tokens=2)['output'], str)
    with pytest.raises(lz.LinearizeError, match='not empty'):
        lz.linearize(lin, teacher, out, quiet=True)


def test_lora_trains_only_lora_and_merges_exactly(teacher):
    lin = lin_config(finetune__steps=5, finetune__lr=1e-2)
    cfg, _, _, student, _ = _student(teacher, lin)
    plain_paths = set(flatten_params(nnx.to_pure_dict(nnx.state(student, nnx.Param))))
    assert lz.add_lora(student, lin.finetune, seed=1) == 8  # wq, wk, wv, wo x 2 layers
    base_before = jax.tree.map(np.array, nnx.state(student, nnx.Not(nnx.LoRAParam)))
    lora_before = jax.tree.map(np.array, nnx.state(student, nnx.LoRAParam))
    lz.finetune_lora(student, lz._stream(cfg, 0), lin.finetune, log=_Quiet())
    base_after = nnx.state(student, nnx.Not(nnx.LoRAParam))
    for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(base_after)):
        np.testing.assert_array_equal(a, np.asarray(b))  # bitwise: frozen
    lora_after = nnx.state(student, nnx.LoRAParam)
    changed = [
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(jax.tree.leaves(lora_before), jax.tree.leaves(lora_after))
    ]
    assert all(changed)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 32), 0, 259)
    forward = nnx.jit(lambda model, x: model(x))
    with_lora = forward(student, tokens)
    assert lz.merge_lora(student) == 8
    assert set(flatten_params(nnx.to_pure_dict(nnx.state(student, nnx.Param)))) == plain_paths
    assert not jax.tree.leaves(nnx.state(student, nnx.LoRAParam))
    assert_close('merged logits', forward(student, tokens), with_lora, TOL['float32'])


def test_liger_student_copies_teacher_projections(teacher):
    lin = lz.validate(_liger_config())
    cfg, _, tstate, student, new = _student(teacher, lin)
    assert cfg.model.attention.kind == 'liger_gla' and new == []  # no new parameters
    teacher_flat = flatten_params(nnx.to_pure_dict(tstate.params))
    student_flat = flatten_params(nnx.to_pure_dict(nnx.state(student, nnx.Param)))
    assert set(teacher_flat) == set(student_flat)
    for path, value in teacher_flat.items():
        np.testing.assert_array_equal(np.asarray(student_flat[path]), np.asarray(value), path)


def _liger_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location('lin_liger', f'{ROOT}/configs/linearize_liger.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.window = 8
    return c


def test_student_needs_a_softmax_teacher_and_valid_keys():
    c = config_lib.validate(config_lib.default_config())
    gla = config_lib.validate({'model': {'attention': {'kind': 'gla'}}})
    with pytest.raises(lz.LinearizeError, match='softmax attention in every layer'):
        lz.student_config(gla, lin_config())
    assert lz.student_config(c, lin_config()).model.attention.kind == 'hedgehog'
    with pytest.raises(config_lib.ConfigError, match='config.finetune.lora_targets'):
        lin_config(finetune__lora_targets='wq,nope')
    with pytest.raises(config_lib.ConfigError, match='config.finetune.nope: unknown key'):
        lz.check_key('finetune.nope')


def test_cli_names_a_bad_key():
    cmd = [sys.executable, '-m', 'effattn.linearize', '--teacher=x', '--workdir=y']
    r = subprocess.run(
        [*cmd, '--config.finetune.nope=1'],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith('error: config.finetune.nope: unknown key')
