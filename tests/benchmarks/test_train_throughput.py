"""benchmarks/train_throughput.py: --tiny on CPU (JSON fields, isolated runs) and the FLOP model."""

import json

import pytest
from helpers import load_script


@pytest.fixture(scope='module')
def tt():
    return load_script('benchmarks/train_throughput.py', 'train_throughput')


def test_tiny_softmax_gla_json(tt, tmp_path):
    """The default mode: each (kind, T) in its own process, rows merged into one JSON."""
    out = tmp_path / 'tt.json'
    argv = ['--tiny', '--kinds', 'softmax,gla', '--peak-tflops', '1', '--out', str(out)]
    result = tt.main(argv)
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(result))
    meta = stored['meta']
    assert meta['device'] == 'cpu' and meta['versions']['jax'] and meta['date']
    assert meta['flags']['kinds'] == 'softmax,gla' and meta['flags']['tiny'] is True
    assert meta['isolated'] is True and meta['flop_model']
    assert [r['kind'] for r in stored['rows']] == ['softmax', 'gla']
    for row in stored['rows']:
        assert row['status'] == 'ok', row
        assert (row['seq_len'], row['batch'], row['tokens_per_step']) == (128, 4, 512)
        assert (row['heads'], row['head_dim']) == (4, 16)
        assert row['params'] > row['params_non_embedding'] > 0
        flops = row['flops_per_token']
        assert flops['total'] == flops['dense'] + flops['attention'] and flops['attention'] > 0
        assert row['step_ms'] > 0 and len(row['step_ms_all']) == 2
        assert row['tokens_per_s'] == pytest.approx(512e3 / row['step_ms'], rel=1e-3)
        achieved = flops['total'] * row['tokens_per_s']  # FLOP/s
        assert row['model_tflops_per_s'] == pytest.approx(achieved / 1e12, abs=1e-3)
        assert row['mfu'] == pytest.approx(achieved / 1e12, rel=1e-3, abs=1e-5)  # peak 1 TFLOP/s
        assert row['compile_s'] > 0 and row['xla_mem_gib'] > 0
        assert 'peak_mem_gib' in row and row['loss'] > 0


def test_profile_steps_in_process(tt, tmp_path):
    """--profile-steps traces more steps after the timing (device events only on GPU: none here) and the state
    the step donates is carried through."""
    out = tmp_path / 'tt.json'
    result = tt.main(['--tiny', '--in-process', '--kinds', 'gla', '--profile-steps', '2', '--out', str(out)])
    (row,) = result['rows']
    assert row['status'] == 'ok', row
    assert row['profile'] == {'steps': 2, 'busy_ms': 0.0, 'ms_by_kind': {}, 'top_kernels': []}


def test_flop_model(tt):
    args = tt.parse_args([])  # the full-size model; only the config is built
    cfg = tt.build_config(args, 'softmax', 2048, 32)
    n = 100_000_000
    f = tt.flops_per_token(cfg, n)
    assert f['dense'] == 6 * n  # tied embeddings: 6 * non-embedding + 6 * V * d (the LM head)
    assert f['attention'] == 6 * 12 * 2048 * 768  # 6 * L * T * d, causal half
    g = tt.flops_per_token(tt.build_config(args, 'gla', 2048, 32), n)
    assert g['attention'] == 3 * 12 * 12 * (64 * 128 + 4 * 64 * 64)


def test_peak_tflops_by_device_kind(tt):
    assert tt.peak_tflops('NVIDIA H100 80GB HBM3') == 989.4
    assert tt.peak_tflops('NVIDIA H200') == 989.4
    assert tt.peak_tflops('NVIDIA H100 PCIe') == 756.0
    assert tt.peak_tflops('cpu') is None
