"""benchmarks/kernel_precision.py on CPU (interpret mode, tiny shape): errors per configuration, JSON rows."""

import json

import pytest
from helpers import load_script


@pytest.fixture(scope='module')
def kprec():
    return load_script('benchmarks/kernel_precision.py', 'kernel_precision')


def test_errors_per_configuration_are_reported_and_saved(kprec, tmp_path):
    out = tmp_path / 'prec.json'
    rows = kprec.main(['--configs', 'default,bwd_storage=input+bwd_dots=bf16', '--gates', '1,none',
                       '--seq-len', '40', '--head-dim', '16', '--out', str(out)])
    assert [(r['gate'], r['config']) for r in rows] == [
        ('1', 'default'), ('1', 'bwd_storage=input+bwd_dots=bf16'),
        ('none', 'default'), ('none', 'bwd_storage=input+bwd_dots=bf16')]
    for r in rows:
        assert set(r['errors']) == {'o', 'final_state', 'dq', 'dk', 'dv', 'dbeta', 'dh0'} | (
            {'dg'} if r['gate'] == '1' else set())
        worst = r['errors'][r['worst']]
        assert worst == max(r['errors'].values()) and 0 < worst < 2e-2  # bf16-sized, not broken
        assert r['within_tolerance'] == (worst < kprec.TOLERANCE)
    assert json.loads(out.read_text())['rows'][1]['config'] == 'bwd_storage=input+bwd_dots=bf16'


def test_bad_configuration_is_named(kprec):
    with pytest.raises(SystemExit, match='no field .blockv'):
        kprec.parse_configs('blockv=3')
