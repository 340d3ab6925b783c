"""benchmarks/profiling.py and kernel_profile.py: the trace parser on a synthetic Chrome trace (the GPU's records are
not made on CPU), kernel categories, and a CPU run end to end (the profiler runs, no device events, JSON written)."""

import json

import pytest
from helpers import load_script


@pytest.fixture(scope='module')
def kprof():
    return load_script('benchmarks/kernel_profile.py', 'kernel_profile')


@pytest.fixture(scope='module')
def prof():
    return load_script('benchmarks/profiling.py', 'profiling')


def _meta(kind, pid, name, tid=None):
    e = {'ph': 'M', 'name': kind, 'pid': pid, 'args': {'name': name}}
    return e if tid is None else {**e, 'tid': tid}


def _x(pid, tid, name, dur):
    return {'ph': 'X', 'pid': pid, 'tid': tid, 'name': name, 'dur': dur, 'ts': 0}


def test_device_stream_kernels_are_summed_per_iteration(prof):
    events = [_meta('process_name', 1, '/host:CPU'), _meta('process_name', 2, '/device:GPU:0'),
              _meta('thread_name', 2, 'Stream #13(Compute)', tid=7), _meta('thread_name', 2, 'XLA Ops', tid=8),
              _x(1, 1, 'PjitFunction', 900.0),                                 # host: ignored
              *[_x(2, 7, 'gla_intra_fwd', 50.0) for _ in range(4)],
              *[_x(2, 7, 'loop_fusion', 5.0) for _ in range(2)],
              *[_x(2, 8, 'gla_intra_fwd', 50.0) for _ in range(4)]]            # repeats the stream: ignored
    r = prof.device_kernel_times(events, iters=2)
    assert r['kernels'] == [{'name': 'gla_intra_fwd', 'calls': 2.0, 'us': 100.0},
                            {'name': 'loop_fusion', 'calls': 1.0, 'us': 5.0}]
    assert r['busy_us'] == 105.0 and r['threads'] == ['Stream #13(Compute)']
    # no stream thread: every thread of the device counts
    r = prof.device_kernel_times([e for e in events if e.get('tid') != 7], iters=1)
    assert r['kernels'] == [{'name': 'gla_intra_fwd', 'calls': 4.0, 'us': 200.0}] and r['threads'] == ['XLA Ops']


def test_idle_gaps_between_kernels_per_iteration(prof):
    # two iterations of a -> b, 3 us between them inside a call, 500 us between calls (not counted)
    spans = [(0.0, 10.0, 'a'), (13.0, 20.0, 'b'), (520.0, 530.0, 'a'), (533.0, 540.0, 'b'), (535.0, 538.0, 'c')]
    r = prof.idle_gaps(spans, iters=2)
    assert r['idle_us'] == 3.0
    assert r['idle_after'] == [{'name': 'a', 'gaps': 1.0, 'mean_us': 3.0}]


def test_kernel_categories(prof):
    kernels = [{'name': n, 'us': us} for n, us in (('gla_intra_fwd', 5.0), ('entry_mosaic_gpu_kernel', 1.0),
                                                    ('cudnn_generated_fort_native_sdpa', 2.0),
                                                    ('nvjet_tst_128x256', 4.0), ('loop_add_fusion', 0.5),
                                                    ('Memset 3', 0.25))]
    assert prof.categories(kernels) == {'effattn kernels': 6.0, 'matmuls': 4.0, 'cuDNN attention': 2.0,
                                        'other XLA (elementwise, reductions, optimizer)': 0.5,
                                        'memcpy / memset': 0.25}


def test_cpu_run_writes_json(kprof, tmp_path):
    out = tmp_path / 'p.json'
    r = kprof.main(['1', '64', '1', '16', '--op', 'simple_gla', '--iters', '1', '--warmup', '1', '--out', str(out)])
    stored = json.loads(out.read_text())
    assert stored['meta']['op'] == 'simple_gla' and stored['kernels'] == r['kernels'] == []
    assert stored['wall_us_traced'] > 0
    with pytest.raises(SystemExit, match='--impl must be cudnn or xla'):
        kprof.main(['--op', 'softmax', '--impl', 'kernel'])
