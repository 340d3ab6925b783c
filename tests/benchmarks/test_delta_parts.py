"""benchmarks/delta_parts.py on CPU (interpret mode, tiny shape): every piece runs, JSON rows, config parsing."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'delta_parts.py')


@pytest.fixture(scope='module')
def dp():
    spec = importlib.util.spec_from_file_location('delta_parts', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
