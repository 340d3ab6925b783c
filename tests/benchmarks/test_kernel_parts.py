"""benchmarks/kernel_parts.py on CPU (interpret mode, tiny shapes): every piece runs, JSON rows, config parsing,
ablations."""

import json

import numpy as np
import pytest
from helpers import load_script


@pytest.fixture(scope='module')
def kp():
    return load_script('benchmarks/kernel_parts.py', 'kernel_parts')


@pytest.mark.parametrize('op, shape, config', [('delta_rule', [1, 64, 1, 16], 'block_v=16,split_o=true'),
                                               ('gla', [1, 64, 1, 16], 'chunk=16,block_v=16')])
def test_every_part_runs_and_is_saved(kp, tmp_path, op, shape, config):
    out = tmp_path / 'parts.json'
    kp.main([*map(str, shape), '--op', op, '--reps', '1', '--config', config, '--out', str(out)])
    stored = json.loads(out.read_text())
    assert [r['part'] for r in stored['rows']] == kp.PARTS[op].split(',')
    assert all(r['ms'] > 0 for r in stored['rows'])
    assert stored['meta']['op'] == op and stored['meta']['config']['block_v'] == 16


def test_repeated_configs_time_each_in_turn(kp, tmp_path):
    out = tmp_path / 'parts.json'
    kp.main(['1', '64', '1', '16', '--op', 'gla', '--reps', '1', '--parts', 'intra_fwd,fwd', '--config',
             'chunk=16,block_v=16', '--config', 'chunk=16,block_v=16,intra_diag=rows', '--out', str(out)])
    rows = json.loads(out.read_text())['rows']
    assert [(r['part'], r['config_text']) for r in rows] == [
        ('intra_fwd', 'chunk=16,block_v=16'), ('fwd', 'chunk=16,block_v=16'),
        ('intra_fwd', 'chunk=16,block_v=16,intra_diag=rows'), ('fwd', 'chunk=16,block_v=16,intra_diag=rows')]
    with pytest.raises(SystemExit, match='no field .nope'):  # every config is checked before any timing
        kp.main(['1', '64', '1', '16', '--op', 'gla', '--config', 'default', '--config', 'nope=1'])
    with pytest.raises(SystemExit, match='at most one --config'):
        kp.main(['--op', 'gla', '--tune', 'intra_fwd', '--config', 'default', '--config', 'chunk=16'])


def test_config_and_arguments_are_checked(kp):
    cfg = kp.parse_config('block_v=32,split_o=false')
    assert cfg.block_v == 32 and cfg.split_o is False
    assert kp.parse_config('intra_width=16', 'gla').intra_width == 16
    cfg = kp.parse_config('intra_diag_bwd=rows2,bwd_states=true,num_stages_intra=none', 'gla')  # str | None fields
    assert (cfg.intra_diag_bwd, cfg.bwd_states, cfg.num_stages_intra) == ('rows2', True, None)
    # 'none' is None only where the field takes None: a str field's mode named 'none' stays text
    assert kp.parse_config('split_states_transposed=none,split_programs=none').split_states_transposed == 'none'
    assert kp.parse_config('split_states_transposed=none,split_programs=none').split_programs is None
    with pytest.raises(SystemExit, match='no field .blockv'):
        kp.parse_config('blockv=16')
    with pytest.raises(SystemExit, match='split_o takes true or false'):
        kp.parse_config('split_o=maybe')
    with pytest.raises(SystemExit, match="block_v='wide' is not a int"):
        kp.parse_config('block_v=wide')
    with pytest.raises(SystemExit, match="gla has no piece \\['wy'\\]"):
        kp.main(['--op', 'gla', '--parts', 'wy'])
    with pytest.raises(SystemExit, match='gla_. for gla, the others for the delta rules'):
        kp.main(['--op', 'gla', '--ablate', 'dk_role'])
    with pytest.raises(SystemExit, match='gla_. for gla'):
        kp.main(['--op', 'delta_rule', '--ablate', 'gla_dq_role'])


def test_gla_ablation_skips_a_role_of_the_sweeps(kp, monkeypatch):
    from effattn.ops.gla import _sweeps
    for name in ('_dq_role', '_dk_role', '_dv_role'):  # restored after the test
        monkeypatch.setattr(_sweeps, name, getattr(_sweeps, name))
    dq_ref, dk_ref = kp.parts_of('gla', (1, 64, 1, 16), 'float32', None)['bwd_sweeps_o']()[:2]
    kp.ablate('gla_dk_role')
    dq, dk = kp.parts_of('gla', (1, 64, 1, 16), 'float32', None)['bwd_sweeps_o']()[:2]
    np.testing.assert_array_equal(dq, dq_ref)  # the dq role ran as before
    assert float(np.abs(dq_ref).max()) > 0 and not np.array_equal(dk, dk_ref)


def test_ablation_skips_a_role_of_the_chunk_backward(kp, monkeypatch):
    from effattn.ops.gated_delta_rule import _bwd_kernel, _kernel_common
    for name in ('_dq_role', '_dk_role'):  # restored after the test
        monkeypatch.setattr(_bwd_kernel, name, getattr(_bwd_kernel, name))
    monkeypatch.setattr(_kernel_common, '_wide', _kernel_common._wide)
    fused = kp.parse_config('bwd_split=false')
    dq_ref = kp.parts_of('delta_rule', (1, 64, 1, 16), 'float32', fused)['bwd_chunk']()[0]
    kp.ablate('dk_role')
    dq = kp.parts_of('delta_rule', (1, 64, 1, 16), 'float32', fused)['bwd_chunk']()[0]
    np.testing.assert_array_equal(dq, dq_ref)  # the dq role ran as before
    assert float(np.abs(dq_ref).max()) > 0
    with pytest.raises(SystemExit, match='unknown .nope'):
        kp.ablate('nope')
    with pytest.raises(SystemExit, match='add --config bwd_split=false'):
        kp.main(['--op', 'delta_rule', '--ablate', 'dq_role', '1', '64', '1', '16'])
