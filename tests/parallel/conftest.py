"""Multi-device tests: the checks in multidevice.py run in a subprocess with 8 fake CPU devices.

XLA_FLAGS=--xla_force_host_platform_device_count=8 (and chex.set_n_cpu_devices, which sets the
same flag) only take effect before jax starts its CPU backend. Under `pytest -n auto` the other
test files of a worker have started it long before, with one device, so setting the flag in this
conftest would depend on test order. A subprocess per check is order-independent and leaves the
rest of the suite on one device.
"""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multidevice.py')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(SCRIPT)))


@pytest.fixture
def on_8_devices():
    """run(check, *args) -> the dict that multidevice.py's `check` returned, computed on 8 devices."""

    def run(check: str, *args: str) -> dict:
        proc = subprocess.run(
            [sys.executable, SCRIPT, check, *args],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            cwd=ROOT,
        )
        assert proc.returncode == 0, f'{check} failed on 8 devices:\n{proc.stderr[-6000:]}'
        return json.loads(proc.stdout.strip().splitlines()[-1])[check]

    return run
