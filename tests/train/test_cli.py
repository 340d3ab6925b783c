"""The command-line entry points: one-line config errors, Ctrl-C / SIGKILL and resume, eval --json."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

TINY = [
    '--config=configs/default.py',
    '--config.model.d_model=16',
    '--config.model.num_layers=1',
    '--config.model.vocab_size=64',
    '--config.data.vocab_size=64',
    '--config.data.seq_len=16',
    '--config.data.train_settings=((16,2),)',
    '--config.data.eval_settings=((16,2),)',
    '--config.data.eval_examples=16',
    '--config.train.batch_size=4',
    '--config.train.eval_every=0',
    '--config.train.stop_at_accuracy=0.0',
]


def run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    'override, key',
    [
        ('--config.model.attention.kind=nope', 'config.model.attention.kind'),
        ('--config.model.d_model=30', 'config.model.d_model'),
        ('--config.model.dmodel=30', 'config.model.dmodel'),
        ('--config.train.steps=abc', 'config.train.steps'),
        ('--config.model.attention.window=100000', 'config.model.attention.window'),
    ],
)
def test_bad_config_exits_with_one_line_naming_the_key(override, key, tmp_path):
    r = run('train.py', override, f'--workdir={tmp_path}')
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert key in lines[0]
    assert not os.path.exists(tmp_path / 'checkpoints')  # failed before anything ran


def test_unknown_kind_lists_known_ones(tmp_path):
    r = run('train.py', '--config.model.attention.kind=nope', f'--workdir={tmp_path}')
    assert 'known kinds' in r.stderr and 'softmax' in r.stderr


def _start(workdir, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            'train.py',
            *TINY,
            '--config.train.steps=100000',
            '--config.checkpoint.every=5',
            f'--workdir={workdir}',
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_checkpoint(workdir, proc, timeout=120):
    ckdir = os.path.join(workdir, 'checkpoints')
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.isdir(ckdir) and any(d.isdigit() for d in os.listdir(ckdir)):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError('no checkpoint appeared')


def _complete_steps(workdir):
    ckdir = os.path.join(workdir, 'checkpoints')
    return sorted(int(d) for d in os.listdir(ckdir) if d.isdigit())


def _resumed_step(workdir):
    """Restarts the same command, reads the step it resumed from, then stops it."""
    proc = _start(workdir)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r'resumed from step (\d+)', line)
            if m:
                return int(m.group(1))
            if 'workdir:' in line:
                break
    finally:
        proc.kill()
        proc.wait()
    raise AssertionError('did not resume:\n' + ''.join(lines))


def test_sigint_saves_and_restart_resumes(tmp_path):
    workdir = str(tmp_path / 'run')
    proc = _start(workdir)
    _wait_for_checkpoint(workdir, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert 'interrupted at step' in out
    saved = int(re.search(r'interrupted at step (\d+)', out).group(1))
    assert _complete_steps(workdir)[-1] == saved
    assert _resumed_step(workdir) == saved


def test_sigkill_restart_resumes_from_last_complete_checkpoint(tmp_path):
    workdir = str(tmp_path / 'run')
    proc = _start(workdir)
    _wait_for_checkpoint(workdir, proc)
    time.sleep(1.5)
    proc.kill()
    proc.wait()
    steps = _complete_steps(workdir)
    assert steps
    assert _resumed_step(workdir) == steps[-1]


def test_eval_json_reports_per_setting_accuracy(tmp_path):
    workdir = str(tmp_path / 'run')
    r = run(
        'train.py',
        *(a for a in TINY if not a.startswith('--config.data.eval_settings')),
        '--config.train.steps=3',
        '--config.data.eval_settings=((16,2),(16,4))',
        f'--workdir={workdir}',
    )
    assert r.returncode == 0, r.stderr
    assert 'tensorboard --logdir' in r.stdout
    _assert_tensorboard_scalars(os.path.join(workdir, 'tb'))
    r = run('eval.py', f'--workdir={workdir}', '--json')
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(report['accuracy']) == {'L16-KV2', 'L16-KV4', 'mean'}
    assert report['step'] == 3
    assert all(0.0 <= v <= 1.0 for v in report['accuracy'].values())


def test_eval_on_missing_workdir_is_one_line(tmp_path):
    r = run('eval.py', f'--workdir={tmp_path}/nothing', '--json')
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and 'config.json' in r.stderr


def _assert_tensorboard_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    tags = set(acc.Tags()['scalars'])
    for tag in ('train/loss', 'train/accuracy', 'train/lr', 'train/grad_norm', 'train/tokens_per_sec',
                'eval/accuracy/mean'):
        assert tag in tags, f'{tag} missing from {logdir}: {sorted(tags)}'
    assert all(e.value == e.value for e in acc.Scalars('train/loss'))  # finite, present
