"""ops/common/block_states.py (Pallas, interpret mode on CPU) against the XLA segment states of sequence_split,
and the split's kernel path against its XLA path, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from effattn.ops.common import sequence_split
from effattn.ops.common.block_states import block_states


def _inputs(gate, dtype, b=2, t=96, h=2, kd=24, vd=40, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    k = jax.random.normal(ks[0], (b, t, h, kd)).astype(dtype)
    v = jax.random.normal(ks[1], (b, t, h, vd)).astype(dtype)
    shape = {'none': None, 'scalar': (b, t, h), 'channel': (b, t, h, kd)}[gate]
    g = None if shape is None else jax.nn.log_sigmoid(jax.random.normal(ks[2], shape)) / 4
    return k, v, g


@pytest.mark.parametrize('fold', [False, True], ids=['rescale', 'fold'])
@pytest.mark.parametrize('gate, dtype', [('none', 'float32'), ('scalar', 'float32'), ('channel', 'float32'),
                                         ('channel', 'bfloat16'), ('scalar', 'bfloat16')])
def test_block_states_match_xla(gate, dtype, fold):
    """Both forms (the state rescaled every chunk, or the decays folded into k) against the XLA einsum."""
    k, v, g = _inputs(gate, jnp.dtype(dtype))
    ref = sequence_split._local_states_xla(k, v, g, 3)
    for block_k in (None, 8):  # 8: 4 key tiles per value tile
        got = block_states(k, v, g, block=32, chunk=16, block_v=16, interpret=True, fold=fold, block_k=block_k)
        assert got.shape == ref.shape == (2, 3, 2, 24, 40)  # 3 blocks, 2 chunks each
        assert_close(f'states, block_k={block_k}', got, ref, 1e-5 if dtype == 'float32' else 5e-3)


@pytest.mark.parametrize('fold', [False, True], ids=['rescale', 'fold'])
@pytest.mark.parametrize('gate', ['none', 'scalar', 'channel'])
def test_kernel_segment_states_and_their_gradients(gate, fold, monkeypatch):
    """Sub-blocks of 16 rows summed with their decays per segment; the custom VJP gives the XLA form's grads."""
    monkeypatch.setattr(sequence_split, '_SUB_BLOCK', 16)  # the XLA form's sub-blocks
    k, v, g = _inputs(gate, jnp.float32)
    args = (k, v) if g is None else (k, v, g)

    def loss(local_states, *a):
        s = local_states(*(a if g is not None else (*a, None)))
        return jnp.sum(s * jnp.cos(jnp.arange(s.size, dtype=jnp.float32).reshape(s.shape)))
    kern = lambda k, v, g: sequence_split._local_states(k, v, g, 2, 16, True, fold, None, 16)  # sub-blocks of 16
    xla = lambda k, v, g: sequence_split._local_states_xla(k, v, g, 2)
    assert_close('states', kern(*args[:2], g), xla(*args[:2], g), 1e-5)
    got = jax.grad(lambda *a: loss(kern, *a), argnums=tuple(range(len(args))))(*args)
    ref = jax.grad(lambda *a: loss(xla, *a), argnums=tuple(range(len(args))))(*args)
    for name, x, y in zip('kvg', got, ref):
        assert_close(f'd{name}', x, y, 1e-5)


@pytest.mark.parametrize('gate', ['none', 'scalar', 'channel'])
def test_first_blocks_and_segments_only(gate, monkeypatch):
    """block_states(blocks=n) and the local states of the first `count` segments (the split needs P - 1 of them):
    the prefix of the whole, with the XLA form's gradients."""
    k, v, g = _inputs(gate, jnp.float32)
    whole = block_states(k, v, g, block=32, chunk=16, block_v=16, interpret=True)
    first = block_states(k, v, g, block=32, chunk=16, block_v=16, interpret=True, blocks=2, block_k=16)
    assert first.shape == (2, 2, 2, 24, 40)
    assert_close('first blocks', first, whole[:, :2], 1e-6)
    with pytest.raises(ValueError, match='blocks=4 must be in 1..T // block = 3'):
        block_states(k, v, g, block=32, chunk=16, interpret=True, blocks=4)
    monkeypatch.setattr(sequence_split, '_SUB_BLOCK', 16)
    k, v, g = _inputs(gate, jnp.float32, t=128)
    all_xla = sequence_split._local_states_xla(k, v, g, 4)
    assert_close('xla, first 3', sequence_split._local_states_xla(k, v, g, 4, 3), all_xla[:, :3], 1e-6)
    kern = lambda k, v, g: sequence_split._local_states(k, v, g, 4, 16, True, False, 3, 16)
    assert_close('kernel, first 3', kern(k, v, g), all_xla[:, :3], 1e-5)
    weights = jnp.cos(jnp.arange(3 * 24 * 40.0)).reshape(3, 24, 40)[:, None]
    wsum = lambda f: lambda k, v, g: jnp.sum(f(k, v, g) * weights)
    args = (0, 1) if g is None else (0, 1, 2)
    got = jax.grad(wsum(kern), argnums=args)(k, v, g)
    ref = jax.grad(wsum(lambda k, v, g: sequence_split._local_states_xla(k, v, g, 4)[:, :3]), argnums=args)(k, v, g)
    for name, x, y in zip('kvg', got, ref):
        assert_close(f'd{name}', x, y, 1e-5)


def test_bad_block_is_named():
    k, v, _ = _inputs('none', jnp.float32)
    with pytest.raises(ValueError, match='multiple of block=40'):
        block_states(k, v, None, block=40, chunk=8, interpret=True)
    np.testing.assert_equal(sequence_split._SUB_BLOCK % 64, 0)


@pytest.mark.parametrize('gate', ['scalar', 'channel'])
@pytest.mark.parametrize('fold', [False, True], ids=['rescale', 'fold'])
def test_lowers_to_triton(gate, fold):
    """Both forms lower through Pallas' Triton lowering (cross-platform, no GPU needed)."""
    k, v, g = _inputs(gate, jnp.bfloat16, b=1, t=128, h=2, kd=32, vd=32)
    for stages in (2, 3):
        fn = lambda k, v, g: block_states(k, v, g, block=64, chunk=32, block_v=32, fold=fold, num_stages=stages)
        text = jax.jit(fn).trace(k, v, g).lower(lowering_platforms=('cuda',)).as_text()
        assert text.count('triton') >= 1



@pytest.mark.parametrize('n', [1, 3, 7, 17])
@pytest.mark.parametrize('with_h0', [False, True])
def test_boundary_states_written_out_and_scanned(n, with_h0, monkeypatch):
    """sequence_split.boundary_states: the start of each segment, then the end of the last, S_{i+1} = a_i S_i + b_i,
    the same in sequence (up to _SEQUENTIAL_BOUNDARIES segments) and by the associative scan, and against a loop."""
    ks = jax.random.split(jax.random.key(n), 3)
    decay = jax.nn.sigmoid(jax.random.normal(ks[0], (2, n, 3, 4, 1)))
    s_loc = jax.random.normal(ks[1], (2, n, 3, 4, 5))
    h0 = jax.random.normal(ks[2], (2, 3, 4, 5)) if with_h0 else None
    s = np.zeros((2, 3, 4, 5)) if h0 is None else np.asarray(h0, np.float64)
    ref = [s]
    for i in range(n):
        s = np.asarray(decay[:, i], np.float64) * s + np.asarray(s_loc[:, i], np.float64)
        ref.append(s)
    ref = np.stack(ref, axis=1)
    got = sequence_split.boundary_states(decay, s_loc, h0)
    monkeypatch.setattr(sequence_split, '_SEQUENTIAL_BOUNDARIES', 0)
    scanned = sequence_split.boundary_states(decay, s_loc, h0)
    assert got.shape == scanned.shape == (2, n + 1, 3, 4, 5)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scanned, ref, rtol=1e-5, atol=1e-5)


def test_sub_block_rows_by_waves():
    """The split's block_states sub-blocks: the longest with the fewest program steps (H200: 264 slots)."""
    rows = lambda b, segments, ts: sequence_split.sub_block_rows(b, segments, 16, ts, 128, 64, slots=264)
    assert rows(1, 7, 8192) == 4096    # B=1 T=65536, P=8: one wave of 64 steps either way, fewer states to sum
    assert rows(2, 3, 8192) == 1024    # B=2 T=32768, P=4: 3 waves of 16 steps against one of 64
    assert rows(1, 3, 512) == 512      # segments shorter than 1024 rows: one block each
    assert rows(1, 1, 3072) == 1024    # 3 sub-blocks (2048 does not divide 3072)
