"""Exact resume, checkpoint fallback and the NaN guard of the training loop."""

import os

import jax
import numpy as np
import optax
import pytest

from effattn.eval import run as run_lib
from effattn.eval.run import load_run
from effattn.train import loop
from effattn.train.checkpoint import MANIFEST, CheckpointError, Checkpointer, check_manifest, write_manifest


def params_of(workdir):
    _, _, state, step = load_run(workdir)
    return step, jax.tree.leaves(jax.device_get(state.params)), jax.device_get(state.opt_state)


def test_resume_is_bitwise_exact(tiny, tmp_path):
    cfg = tiny(train__steps=6, checkpoint__async_save=True)
    loop.train_and_evaluate(cfg, str(tmp_path / 'whole'), quiet=True)
    loop.train_and_evaluate(cfg, str(tmp_path / 'split'), stop_after=3, quiet=True)
    with Checkpointer(str(tmp_path / 'split' / 'checkpoints'), cfg.checkpoint) as ckpt:
        assert ckpt.steps() == [3]
    loop.train_and_evaluate(cfg, str(tmp_path / 'split'), quiet=True)
    step_a, a, opt_a = params_of(str(tmp_path / 'whole'))
    step_b, b, opt_b = params_of(str(tmp_path / 'split'))
    assert step_a == step_b == 6
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(opt_a), jax.tree.leaves(opt_b)):
        np.testing.assert_array_equal(x, y)


def _corrupt_truncate(step_dir):
    for root, _, files in os.walk(step_dir):
        for f in files:
            path = os.path.join(root, f)
            size = os.path.getsize(path)
            with open(path, 'r+b') as fh:
                fh.truncate(size // 2)


def _corrupt_garbage(step_dir):
    rng = np.random.default_rng(0)
    for root, _, files in os.walk(os.path.join(step_dir, 'state')):
        for f in files:
            path = os.path.join(root, f)
            size = os.path.getsize(path)
            if size > 64:
                with open(path, 'r+b') as fh:
                    fh.seek(size // 3)
                    fh.write(rng.integers(0, 256, size // 3, dtype=np.uint8).tobytes())


@pytest.mark.parametrize(
    'corrupt, why',
    # truncation halves the manifest too; the garbage is written over the state's files only
    [(_corrupt_truncate, f'{MANIFEST} is unreadable'), (_corrupt_garbage, 'changed since it was saved (CRC-32)')],
    ids=['truncated', 'garbage'],
)
def test_corrupted_newest_checkpoint_falls_back(tiny, tmp_path, capsys, corrupt, why):
    cfg = tiny(train__steps=4, checkpoint__every=2)
    workdir = str(tmp_path / 'run')
    loop.train_and_evaluate(cfg, workdir, quiet=True)
    ckdir = os.path.join(workdir, 'checkpoints')
    with Checkpointer(ckdir, cfg.checkpoint) as ckpt:
        assert ckpt.steps() == [4, 2]
    corrupt(os.path.join(ckdir, '4'))
    capsys.readouterr()
    step, _, _ = params_of(workdir)
    assert step == 2
    out = capsys.readouterr().out
    assert 'checkpoint step 4' in out and 'using step 2' in out
    assert why in out, out  # caught by the files' manifest, before orbax reads them
    # Training resumes from step 2 and finishes again.
    loop.train_and_evaluate(cfg, workdir, quiet=True)
    assert params_of(workdir)[0] == 4


def test_nan_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    cfg = tiny(train__steps=10, checkpoint__every=2)
    real = loop.make_optimizer

    def poisoned(train_cfg):
        def update(updates, state, params=None):
            count = state + 1
            bad = jax.numpy.where(count >= 5, jax.numpy.nan, 1.0)
            return jax.tree.map(lambda u: u * bad, updates), count

        return optax.chain(
            real(train_cfg),
            optax.GradientTransformation(lambda p: jax.numpy.zeros((), jax.numpy.int32), update),
        )

    monkeypatch.setattr(loop, 'make_optimizer', poisoned)
    monkeypatch.setattr(run_lib, 'make_optimizer', poisoned)
    workdir = str(tmp_path / 'run')
    with pytest.raises(loop.NonFiniteLossError, match='step 4'):
        loop.train_and_evaluate(cfg, workdir, quiet=True)
    step, leaves, _ = params_of(workdir)
    assert step == 4
    assert all(np.all(np.isfinite(x)) for x in leaves)


def test_changed_model_in_existing_workdir_is_refused(tiny, tmp_path):
    workdir = str(tmp_path / 'run')
    loop.train_and_evaluate(tiny(train__steps=2), workdir, quiet=True)
    with pytest.raises(loop.config_lib.ConfigError, match=r'config\.model\.d_model'):
        loop.train_and_evaluate(tiny(train__steps=2, model__d_model=32), workdir, quiet=True)


def test_run_saved_before_a_new_config_field_resumes(tiny, tmp_path):
    """A config.json without a field added since (an older effattn) still resumes: defaults fill it."""
    import json

    workdir = str(tmp_path / 'run')
    loop.train_and_evaluate(tiny(train__steps=2), workdir, quiet=True)
    path = os.path.join(workdir, 'config.json')
    with open(path) as f:
        saved = json.load(f)
    del saved['model']['mlp_hidden']
    with open(path, 'w') as f:
        json.dump(saved, f)
    loop.train_and_evaluate(tiny(train__steps=3), workdir, quiet=True)
    assert load_run(workdir)[3] == 3


@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')  # no restore left half-read
def test_checkpoint_of_another_model_is_an_error_and_nothing_moves(tiny, tmp_path):
    cfg = tiny(train__steps=2, checkpoint__every=1)
    workdir = str(tmp_path / 'run')
    loop.train_and_evaluate(cfg, workdir, quiet=True)
    other = tiny(train__steps=2, model__d_model=32)
    _, state = loop.create_train_state(other, loop.make_optimizer(other.train))
    with Checkpointer(os.path.join(workdir, 'checkpoints'), cfg.checkpoint) as ckpt:
        with pytest.raises(CheckpointError, match=r'could be restored.*step 2: .*attn\.wk\.kernel\.value: '
                                                   r'checkpoint \(16, 16\), this model \(32, 32\)'):
            ckpt.restore_latest(state)
        assert ckpt.steps() == [2, 1]


def test_loss_on_labelled_positions_only_equals_full_loss(tiny):
    from effattn.train import step as step_lib
    from effattn.data import sources

    cfg = tiny()
    tx = loop.make_optimizer(cfg.train)
    model_def, state = loop.create_train_state(cfg, tx)
    stream = sources.train_stream(cfg)
    batch = stream.batch(0)
    model = model_def.merge(state.params)
    full, _ = step_lib.masked_loss_and_accuracy(model(batch['inputs']), batch['labels'])
    sched = loop.lr_schedule(cfg.train)
    sparse_step = step_lib.make_train_step(model_def, tx, sched, max_targets=stream.max_targets)
    dense_step = step_lib.make_train_step(model_def, tx, sched)
    b = {'inputs': batch['inputs'], 'labels': batch['labels']}
    _, m_sparse = sparse_step(jax.tree.map(lambda x: x.copy(), state), b)
    _, m_dense = dense_step(state, b)
    np.testing.assert_allclose(float(m_sparse['loss']), float(full), rtol=1e-6)
    np.testing.assert_allclose(float(m_sparse['grad_norm']), float(m_dense['grad_norm']), rtol=1e-5)


def test_manifest_names_missing_resized_and_changed_files(tmp_path):
    step = tmp_path / '7'
    (step / 'state').mkdir(parents=True)
    (step / 'state' / 'data').write_bytes(b'0123456789' * 10)
    (step / 'meta').write_text('{}')
    assert check_manifest(str(step)) is False  # no manifest: nothing checked
    write_manifest(str(step))
    assert (step / MANIFEST).exists() and check_manifest(str(step)) is True
    (step / 'state' / 'data').write_bytes(b'0123456789' * 9 + b'x123456789')  # same size, other bytes
    with pytest.raises(ValueError, match='data changed since it was saved'):
        check_manifest(str(step))
    (step / 'state' / 'data').write_bytes(b'01234')
    with pytest.raises(ValueError, match='data has 5 bytes, 100 when saved'):
        check_manifest(str(step))
    (step / 'state' / 'data').unlink()
    with pytest.raises(ValueError, match='data is missing'):
        check_manifest(str(step))
    (step / MANIFEST).write_text('{"state/da')  # a truncated manifest
    with pytest.raises(ValueError, match=f'{MANIFEST} is unreadable'):
        check_manifest(str(step))


def test_every_saved_step_gets_a_manifest(tiny, tmp_path):
    for async_save in (True, False):
        cfg = tiny(train__steps=4, checkpoint__every=2, checkpoint__async_save=async_save)
        workdir = tmp_path / f'run-{async_save}'
        loop.train_and_evaluate(cfg, str(workdir), quiet=True)
        for step in ('2', '4'):
            assert check_manifest(str(workdir / 'checkpoints' / step)) is True
