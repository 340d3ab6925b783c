"""benchmarks/delta_parts.py on CPU (interpret mode, tiny shape): every piece runs, JSON rows, config parsing."""

import json
import sys

import pytest
from helpers import load_script


@pytest.fixture(scope='module')
def dp():
    return load_script('benchmarks/delta_parts.py', 'delta_parts')


def test_every_part_runs_and_is_saved(dp, tmp_path, monkeypatch):
    out = tmp_path / 'parts.json'
    argv = ['delta_parts.py', '1', '64', '1', '16', '--nogate', '--reps', '1', '--config', 'block_v=16,split_o=true',
            '--out', str(out)]
    monkeypatch.setattr(sys, 'argv', argv)
    dp.main()
    stored = json.loads(out.read_text())
    assert [r['part'] for r in stored['rows']] == dp.PARTS.split(',')
    assert all(r['ms'] > 0 for r in stored['rows'])
    assert stored['meta']['config']['block_v'] == 16 and stored['meta']['config']['split_o'] is True
    assert stored['meta']['gated'] is False


def test_unknown_config_field_names_it(dp):
    with pytest.raises(SystemExit, match='no field .blockv'):
        dp.parse_config('blockv=16')


def test_config_values_are_typed_and_checked(dp):
    cfg = dp.parse_config('block_v=32,split_o=false')
    assert cfg.block_v == 32 and cfg.split_o is False
    with pytest.raises(SystemExit, match='split_o takes true or false'):
        dp.parse_config('split_o=maybe')
    with pytest.raises(SystemExit, match="block_v='wide' is not a int"):
        dp.parse_config('block_v=wide')


def test_ablation_skips_a_role_of_the_chunk_backward(dp, monkeypatch):
    from effattn.ops.gated_delta_rule import _bwd_kernel
    for name in ('_dq_role', '_dk_role', '_wide'):  # restored after the test
        monkeypatch.setattr(_bwd_kernel, name, getattr(_bwd_kernel, name))
    dp.ablate('dk_role')
    parts = dp.benchmark_parts(1, 64, 1, 16, 'float32', gated=False)
    dq, dk, dv, dg, dbeta = parts['bwd_xla']()
    assert float(abs(dq).sum()) > 0  # the dq role still ran
    with pytest.raises(SystemExit, match='unknown .nope'):
        dp.ablate('nope')
