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
