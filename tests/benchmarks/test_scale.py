"""benchmarks/scale.py on 2 fake CPU devices: rows, scaling figures and the 1-vs-N loss check."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'scale.py')
# one layer, T of one (softmax) or two (gla: one per device under sequence=2) chunks of 64: the
# script's plan / mesh / loss-comparison machinery at the least compile time
PLAN = 'softmax:64:2:data=1;softmax:64:2:fsdp=2;gla:128:1:data=1;gla:128:1:sequence=2'


def test_tiny_plan_on_two_cpu_devices(tmp_path):
    out = tmp_path / 'scale.json'
    flags = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2'
    env = dict(os.environ, XLA_FLAGS=flags.strip(),
               JAX_PLATFORMS='cpu')
    cmd = [sys.executable, SCRIPT, '--tiny', '--in-process', '--plan', PLAN, '--steps', '2',
           '--warmup', '1', '--layers', '1', '--out', str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result['rows']
    assert [r['spec'] for r in rows] == PLAN.split(';')
    assert result['meta']['env']['NCCL_NVLS_ENABLE'] == '0'
    for r in rows:
        assert r['status'] == 'ok', r
        assert len(r['losses']) == 3 and r['tokens_per_s'] > 0
        assert len(r['peak_mem_gib']) == r['devices']
    multi = [r for r in rows if r['devices'] == 2]
    assert [r['baseline'] for r in multi] == ['softmax:64:2:data=1', 'gla:128:1:data=1']
    for r in multi:
        # same seed, same data, same global batch: the step losses agree to fp32/bf16 noise
        assert r['losses_match'] and r['loss_rel'] < 1e-3, r
        assert r['scaling_efficiency'] > 0 and r['speedup'] > 0
    assert 'softmax' in proc.stdout and 'sequence=2' in proc.stdout  # the printed table
