import os
import shutil
import sys
import tempfile

# Tests compile hundreds of small programs and run each for milliseconds: XLA's CPU backend at LLVM
# optimisation level 0 compiles them much faster (tests/ops/test_delta_rule.py: 58 s -> 34 s on 2
# cores) at tolerances unchanged. XLA's CPU fusion emitters (MLIR-based, on by default) take
# 2-3x the compile time of the older LLVM IR emitters on these tiny programs: off, tests/attention
# runs 55 -> 33 s and tests/parallel 89 -> 61 s on 2 cores, tolerances unchanged. That flag exists in
# jaxlib 0.10 only: jaxlib 0.11.2 (the GPU image) aborts on it ("Unknown flag in XLA_FLAGS"), so it is
# set for 0.10 alone. Set before any backend starts; subprocesses inherit it.
def _jaxlib_version() -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in version('jaxlib').split('.')[:2])
    except (PackageNotFoundError, ValueError):
        return ()


_FLAGS = ' --xla_backend_optimization_level=0'
if _jaxlib_version() == (0, 10):
    _FLAGS += ' --xla_cpu_use_fusion_emitters=false'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + _FLAGS).strip()

# The suite compiles the same programs many times: every train_and_evaluate / load_run builds fresh
# jitted closures (a miss in jax's in-memory cache), and subprocesses (train.py, eval.py, the 8-device
# checks, the notebook kernel, benchmarks) start cold. JAX's persistent compilation cache, keyed on
# the HLO, compile options, flags and jax version, serves the repeats: one fresh folder per pytest
# session, shared by its xdist workers and subprocesses through the environment, removed at the end.
# A user's own JAX_COMPILATION_CACHE_DIR is used as it is and kept.
_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix='effattn-test-jax-cache-')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.1'
    os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

import jax
import pytest

if _OWN_CACHE is not None:  # in case jax was imported (by a plugin) before the lines above ran
    jax.config.update('jax_compilation_cache_dir', _OWN_CACHE)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

# Tests compare fp32 results at 1e-5: run fp32 matmuls at full precision (TF32 on GPU otherwise).
jax.config.update('jax_default_matmul_precision', 'highest')
sys.path.insert(0, os.path.dirname(__file__))


# Every executable XLA:CPU compiles keeps its JIT code in memory mappings of its own while jax caches it, and Linux
# caps a process at vm.max_map_count mappings (65530 by default). tests/ops/test_gla_kernel.py alone left one process
# with 35,833 mappings (676 after jax.clear_caches()); a long-lived xdist worker running half the suite goes past the
# cap, LLVM's next mmap fails and the worker segfaults inside backend_compile_and_load (seen late in full runs, in
# tests/train/test_resume.py and tests/ops/test_gla_kernel.py). Reproduced: `pytest -n 0 tests/ops tests/attention`
# in one process segfaulted at 45% without this fixture and passed with it (596 tests, at most 30,458 mappings).
# So after any test that leaves the process above _MAX_MAPPINGS, jax's caches are cleared (later tests recompile
# what they need, or read the persistent cache).
_MAX_MAPPINGS = 30000
_MAPS = '/proc/self/maps'


def _mappings() -> int:
    with open(_MAPS, 'rb') as f:
        return f.read().count(b'\n')


@pytest.fixture(autouse=True)
def _release_compiled_code():
    yield
    if os.path.exists(_MAPS) and _mappings() > _MAX_MAPPINGS:
        jax.clear_caches()


def pytest_collection_modifyitems(config, items):
    """A test whose xdist worker crashes runs once more (pytest-rerunfailures, in the test extra), other failures
    never. The crashes seen (late in full runs, inside XLA:CPU's compiler) were most likely the mapping cap above,
    which _release_compiled_code now keeps the workers under; the rerun stays as a guard. Without the plugin (the GPU
    machine's carried wheels) nothing changes."""
    if config.pluginmanager.hasplugin('rerunfailures'):
        crash_only = pytest.mark.flaky(reruns=1, only_rerun=['crashed while running'])
        for item in items:
            item.add_marker(crash_only)


def pytest_sessionfinish(session):
    if _OWN_CACHE is not None and not hasattr(session.config, 'workerinput'):  # not an xdist worker
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
