"""benchmarks/kernel_precision.py on CPU (interpret mode, tiny shape): errors per configuration, JSON rows."""

import json

import pytest
from helpers import load_script


@pytest.fixture(scope='module')
def kprec():
    return load_script('benchmarks/kernel_precision.py', 'kernel_precision')


def test_errors_per_configuration_are_reported_and_saved(kprec, tmp_path):
    out = tmp_path / 'prec.json'
    rows = kprec.main(['--configs', 'default,bwd_storage=input+bwd_dots=bf16', '--gates', '1',
                       '--seq-len', '40', '--head-dim', '16', '--out', str(out)])
    assert [(r['gate'], r['config']) for r in rows] == [('1', 'default'), ('1', 'bwd_storage=input+bwd_dots=bf16')]
    for r in rows:
        assert set(r['errors']) == {'o', 'final_state', 'dq', 'dk', 'dv', 'dbeta', 'dh0', 'dg'}
        worst = r['errors'][r['worst']]
        assert worst == max(r['errors'].values()) and 0 < worst < 2e-2  # bf16-sized, not broken
        assert r['within_tolerance'] == (worst < kprec.TOLERANCE)
    stored = json.loads(out.read_text())
    assert stored['rows'][1]['config'] == 'bwd_storage=input+bwd_dots=bf16' and stored['meta']['emulate_tf32']


def test_bad_configuration_is_named(kprec):
    with pytest.raises(SystemExit, match='no field .blockv'):
        kprec.parse_configs('blockv=3')


def test_tf32_rounding_and_patch(kprec):
    import jax.numpy as jnp
    import numpy as np

    from effattn.ops.gated_delta_rule import _kernel_common
    one_ulp = np.float32(2.0 ** -10)                       # TF32's last mantissa bit at 1.0
    x = jnp.asarray([1.0, 1.0 + one_ulp, 1.0 + one_ulp / 2, 1.0 + 3 * one_ulp / 2, 1.0 + one_ulp * 0.49, -3.0],
                    jnp.float32)
    got = np.asarray(kprec.round_to_tf32(x))
    # ties to even: 1 + ulp/2 -> 1 (even), 1 + 3 ulp/2 -> 1 + 2 ulp; below half rounds down
    np.testing.assert_array_equal(got, [1.0, 1.0 + one_ulp, 1.0, 1.0 + 2 * one_ulp, 1.0, -3.0])
    wide = _kernel_common._wide
    undo = kprec.emulate_tf32()
    assert _kernel_common._wide is not wide
    undo()
    assert _kernel_common._wide is wide
