"""benchmarks/ops_gpu.py on CPU (interpret mode, tiny shape): --kernel-config and --tune-ops reach the kernels."""

import json

import jax
import jax.numpy as jnp
import pytest
from helpers import load_script


@pytest.fixture(scope='module')
def og():
    return load_script('benchmarks/ops_gpu.py', 'ops_gpu')


def test_kernel_config_text(og):
    cfgs = og.parse_kernel_configs(['gla:num_warps=4,split_programs=none', 'delta_rule:split_o=true'])
    assert cfgs['gla'].num_warps == 4 and cfgs['gla'].split_programs is None
    assert cfgs['delta_rule'].split_o is True
    with pytest.raises(SystemExit, match='OP one of'):
        og.parse_kernel_configs(['softmax:block_q=64'])
    with pytest.raises(SystemExit, match="no field 'warps'"):
        og.parse_kernel_configs(['gla:warps=4'])
    both = og.parse_kernel_configs(['delta_rule:split_o=true', 'delta_rule:num_warps=4'])  # repeated items add up
    assert both['delta_rule'].split_o is True and both['delta_rule'].num_warps == 4


def test_fwd_bwd_keeps_the_forward(og):
    """fwd_bwd times the output with its VJP: a forward whose result the backward never reads (as a linear op's
    output sweep) must stay in the compiled program, not be dropped by XLA."""
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)
    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, ct: (ct * jnp.cos(x),))
    x, do = {'x': jnp.ones(8)}, jnp.ones(8)
    fwd_bwd = og.jax_fns(f, ('x',))[1]
    assert 'sine' in fwd_bwd.lower(x, do).compile().as_text()
    out, (dx,) = fwd_bwd(x, do)
    assert jnp.allclose(out, jnp.sin(1.0)) and jnp.allclose(dx, jnp.cos(1.0))


def test_tuned_gla_config_is_used_and_saved(og, tmp_path):
    out = tmp_path / 'ops.json'
    og.main(['--ops', 'gla', '--impls', 'kernel,chunk', '--modes', 'fwd', '--shapes', '1x64x2x16',
             '--kernel-config', 'gla:chunk=16', '--tune-ops', 'gla', '--tune-budget-s', '0', '--out', str(out)])
    result = json.loads(out.read_text())
    assert [r['mode'] for r in result['tune']] == ['fwd', 'fwd_bwd']  # the base of each list, budget spent
    assert all(r['config']['chunk'] == 16 for r in result['tune'])
    assert result['kernel_configs']['gla']['chunk'] == 16
    rel = result['check_vs_chunk']['gla']['rel_rms']
    assert set(rel) == {'o', 'dq', 'dk', 'dv', 'dg'} and max(rel.values()) < 1e-2, rel  # o and every gradient
    assert {(r['impl'], r['mode']) for r in result['rows'] if r['op'] == 'gla'} == {('kernel', 'fwd'), ('chunk', 'fwd')}
    assert all(r['ms'] > 0 for r in result['rows'])


def test_time_per_token_ratio_printed(og, capsys):
    """print_table reports criterion 3 (time per token across T at a fixed B*T) for each mode that has rows."""
    shapes = [(32, 2048, 16, 128), (1, 65536, 16, 128)]
    rows = [{'op': 'gla', 'impl': 'kernel', 'mode': 'fwd', 'shape': list(shapes[0]), 'ms': 2.0},
            {'op': 'gla', 'impl': 'kernel', 'mode': 'fwd', 'shape': list(shapes[1]), 'ms': 2.5}]
    og.print_table(rows, shapes)
    out = capsys.readouterr().out
    assert 'gla: kernel fwd time per token at B*T=65536, H=16, D=128 (largest / smallest 1.25x)' in out
