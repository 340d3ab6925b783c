"""delta_rule / gated_delta_rule impl='kernel' (Pallas) against the fp32 naive oracle: o, final state, all grads.

On CPU the kernels run in Pallas interpret mode (tiny shapes); on a GPU they run through the Triton
lowering, and the GPU-only tests add K = V = 128, T ~ 1000 and a T = 65536 finiteness check. Tolerances
are DESIGN.md's relative RMS: 1e-5 in fp32, 5e-3 in bf16. q, k are L2-normalised (the op requires it),
beta in (0, 1), gates g = logsigmoid(x) / n.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOL, OpCase, assert_close, assert_matches_oracle, upcast

from effattn.ops.common.pallas_triton import next_pow2
from effattn.ops.common.triangular import unit_lower_inverse
from effattn.ops.delta_rule import delta_rule
from effattn.ops.gated_delta_rule import _api, _split, gated_delta_rule
from effattn.ops.gated_delta_rule._kernel_common import _Ctx
from effattn.ops.gated_delta_rule._wy import wy_prep
from effattn.ops.gated_delta_rule._wy_kernel import wy_kernel
from effattn.ops.gated_delta_rule.naive import naive_gated_delta_rule
from effattn.ops.gated_delta_rule.pallas import KernelConfig, kernel_gated_delta_rule

ON_GPU = jax.default_backend() == 'gpu'


class Case(OpCase):
    """Cases use b, t, h, k, v, n (None: no gate, DeltaNet), h0, chunk and dtype."""
    id_tail = ('chunk', 'dtype')
    no_gate_id = '-nogate'


CASES = [
    Case(2, 63, 2, 48, 60, n=1, h0=True),                # T < chunk, non-power-of-2 K, V (padded to 64)
    Case(1, 130, 1, 32, 48, n=0.1, h0=False, chunk=32),  # fast gates, T not a multiple of the chunk
    Case(1, 63, 1, 16, 32, n=16, h0=True, chunk=16),     # slow gates, several chunks of 16
    Case(2, 1, 2, 16, 16, n=1, h0=True),                 # one token
    Case(1, 130, 1, 48, 60, n=None, h0=True, chunk=32),  # DeltaNet
    Case(1, 130, 1, 64, 64, n=1, h0=True, chunk=32, dtype='bfloat16'),
]
GPU_CASES = [
    Case(2, 1000, 2, 128, 128, n=1, h0=True, dtype='bfloat16'),
    Case(1, 1000, 3, 128, 128, n=0.1, h0=True, dtype='bfloat16'),
    Case(1, 1000, 2, 128, 128, n=16, h0=True, dtype='bfloat16'),
    Case(1, 1000, 2, 128, 128, n=None, h0=True, dtype='bfloat16'),
    Case(1, 777, 2, 128, 64, n=1, h0=True),
    Case(1, 130, 2, 48, 60, n=0.1, h0=False),
]


def make_inputs(case: Case, seed: int = 0):
    """Inputs (q, k, v in case.dtype; g, beta, h0 fp32) and cotangents (do in case.dtype, dht fp32)."""
    rng = np.random.default_rng(seed)
    dt = jnp.dtype(case.dtype)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    l2 = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    b, t, h = case.b, case.t, case.h
    x = {'q': l2(f32(b, t, h, case.k)).astype(dt), 'k': l2(f32(b, t, h, case.k)).astype(dt),
         'v': f32(b, t, h, case.v).astype(dt), 'beta': jax.nn.sigmoid(f32(b, t, h))}
    if case.n is not None:
        x['g'] = jax.nn.log_sigmoid(f32(b, t, h)) / case.n
    if case.h0:
        x['h0'] = f32(b, h, case.k, case.v)
    cot = (f32(b, t, h, case.v).astype(dt), f32(b, h, case.k, case.v))
    return x, cot


@functools.partial(jax.jit, static_argnames=('fn', 'chunk'))
def _run(x, cot, *, fn, chunk):
    """(o, final_state, grads of sum(o*do) + sum(ht*dht) for every input)."""
    def f(x):
        return fn(x['q'], x['k'], x['v'], x.get('g'), x['beta'], scale=x['q'].shape[-1] ** -0.5,
                  initial_state=x.get('h0'), segment_ids=None, chunk_size=chunk)
    (o, ht), vjp = jax.vjp(f, x)
    return o, ht, vjp((cot[0].astype(o.dtype), cot[1]))[0]


def _check(case: Case, fn=kernel_gated_delta_rule, tol=None):
    x, cot = make_inputs(case)
    got = _run(x, cot, fn=fn, chunk=case.chunk)
    ref = _run(*upcast(x, cot), fn=naive_gated_delta_rule, chunk=case.chunk)
    assert_matches_oracle(got, ref, x, TOL[case.dtype] if tol is None else tol)


@pytest.mark.parametrize('case', CASES, ids=str)
def test_matches_naive(case):
    _check(case)


@pytest.mark.parametrize('n, chunk', [(0.1, 64), (16, 32)])
def test_wy_kernel(n, chunk):
    """The WY kernel's W, U, T against the XLA transform (fp32)."""
    x, _ = make_inputs(Case(1, 128, 2, 32, 16, n=n, h0=False))
    k, v, g, beta = x['k'], x['v'], x['g'], x['beta']
    w, u, t = wy_kernel(k, v, jnp.swapaxes(g, 1, 2), jnp.swapaxes(beta, 1, 2), _Ctx(jnp.dtype('float32'), 1.0, chunk),
                        4, True)
    w_ref, u_ref = wy_prep(k, v, g, beta, chunk)
    assert_close('W', w, w_ref, 1e-6)
    assert_close('U', u, u_ref, 1e-6)
    # T itself: (I + A) T = I on one chunk, A from the definition.
    kc, gc, bc = k[0, :chunk, 0], g[0, :chunk, 0], beta[0, :chunk, 0]
    gcum = jnp.cumsum(gc)
    a = jnp.tril(bc[:, None] * (kc @ kc.T) * jnp.exp(gcum[:, None] - gcum[None, :]), -1)
    assert_close('T', t[0, :chunk, 0], unit_lower_inverse(a), 1e-5)


def test_narrow_value_tiles():
    """Several value tiles per head in both sweeps (each column block of S evolves independently)."""
    cfg = KernelConfig(block_v=16, block_v_bwd=32)
    _check(Case(1, 40, 1, 16, 60, n=1, h0=True, chunk=16), functools.partial(kernel_gated_delta_rule, config=cfg))


def test_narrow_backward_tiles():
    """Several key tiles in the dq/dk/dW kernel (partial gate sums over tiles) and several column steps in it
    and in the WY backward kernel."""
    cfg = KernelConfig(block_k_dqk=16, block_v_dqk=16, cols_wy_bwd=16)
    _check(Case(1, 40, 2, 48, 33, n=1, h0=True, chunk=16), functools.partial(kernel_gated_delta_rule, config=cfg))


def test_backward_storage_in_input_dtype():
    """KernelConfig(bwd_storage='input'): S_c, dS_{c+1}, V' and dV' kept in bf16 for the backward, as fla; 'states'
    and 'cotangents': half of them."""
    cfg = KernelConfig(bwd_storage='input', bwd_dots='bf16')
    _check(Case(1, 130, 1, 64, 64, n=1, h0=True, chunk=32, dtype='bfloat16'),
           functools.partial(kernel_gated_delta_rule, config=cfg))
    # half of them in bf16: the kernels read S_c, V' and dS', dV' in different dtypes
    _check(Case(1, 40, 1, 16, 16, n=1, h0=True, chunk=16, dtype='bfloat16'),
           functools.partial(kernel_gated_delta_rule, config=KernelConfig(bwd_storage='states')))
    ctx = _Ctx(jnp.dtype('bfloat16'), 1.0, 16)
    assert KernelConfig(bwd_storage='cotangents').storage_dtypes(ctx) == (jnp.float32, jnp.bfloat16)
    assert KernelConfig(bwd_storage='states').storage_dtypes(ctx) == (jnp.bfloat16, jnp.float32)
    x, cot = make_inputs(Case(1, 16, 1, 16, 16, n=1, h0=False, chunk=16))
    with pytest.raises(ValueError, match="bwd_storage must be one of .*'states'.*; got 'bf16'"):
        _run(x, cot, fn=functools.partial(kernel_gated_delta_rule, config=KernelConfig(bwd_storage='bf16')), chunk=16)


def test_whole_key_dim_in_one_backward_tile():
    """K = 128 in one key tile of the dq/dk/dW kernel, as the default config runs K = 128 on the GPU."""
    _check(Case(1, 40, 1, 128, 32, n=1, h0=True, chunk=16, dtype='bfloat16'))


def test_fused_backward():
    """KernelConfig(bwd_split=False): the former backward, one fused per-chunk kernel (kept for comparison in
    benchmarks/kernel_parts.py); its fp32 path is the same code with IEEE dots (test_kernel_parts runs it)."""
    cfg = KernelConfig(bwd_split=False)
    _check(Case(1, 70, 1, 32, 64, n=1, h0=True, chunk=32, dtype='bfloat16'),
           functools.partial(kernel_gated_delta_rule, config=cfg))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_split_o(dtype):
    """KernelConfig(split_o=True): the sweep writes V' and the chunk states, o from a kernel per chunk."""
    cfg = KernelConfig(split_o=True, block_v=32)
    case = Case(1, 70, 1, 32, 64, n=1, h0=True, chunk=32, dtype=dtype)
    _check(case, functools.partial(kernel_gated_delta_rule, config=cfg))
    x, _ = make_inputs(case)  # forward only (chunk states in the dot dtype, not kept)
    args = (x['q'], x['k'], x['v'], x['g'], x['beta'])
    kw = {'scale': case.k ** -0.5, 'initial_state': x['h0'], 'chunk_size': case.chunk}
    o, ht = jax.jit(functools.partial(kernel_gated_delta_rule, config=cfg, **kw))(*args)
    o_ref, ht_ref = naive_gated_delta_rule(*(a.astype(jnp.float32) for a in args), segment_ids=None, **kw)
    assert_close('o', o, o_ref, TOL[dtype])
    assert_close('final_state', ht, ht_ref, TOL[dtype])


@pytest.mark.parametrize('cumsum, split, n', [  # pairwise: each backward form and gate speed under both options
    ('kernel', True, 0.1), ('kernel', False, 1), ('xla', True, 1), ('xla', False, 0.1)])
def test_gate_cumsum_in_or_outside_the_kernels(cumsum, split, n):
    """KernelConfig.gate_cumsum: 'xla' (the default) computes G once in XLA and every kernel (forward, WY, both
    backwards) reads it; 'kernel' builds it per kernel from masked sums. Both for bf16; fp32 inputs ignore the
    option (the in-kernel segsum dot), bit for bit."""
    cfg = KernelConfig(gate_cumsum=cumsum, bwd_split=split)
    _check(Case(2, 70, 2, 32, 48, n=n, h0=True, chunk=32, dtype='bfloat16'),
           functools.partial(kernel_gated_delta_rule, config=cfg))
    if cumsum == 'xla':
        return  # the fp32 comparison below is symmetric: the 'kernel' cases run it
    x, cot = make_inputs(Case(1, 40, 1, 16, 16, n=n, h0=False, chunk=16))
    fp32 = _run(x, cot, fn=functools.partial(kernel_gated_delta_rule, config=cfg), chunk=16)
    other = dataclasses.replace(cfg, gate_cumsum='xla' if cumsum == 'kernel' else 'kernel')
    default = _run(x, cot, fn=functools.partial(kernel_gated_delta_rule, config=other), chunk=16)
    for a, b in zip(jax.tree.leaves(fp32), jax.tree.leaves(default)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match='gate_cumsum'):
        _run(x, cot, fn=functools.partial(kernel_gated_delta_rule, config=KernelConfig(gate_cumsum='gpu')),
             chunk=16)


@pytest.mark.parametrize('dots', ['tf32', 'bf16'])
def test_backward_dot_modes(dots):
    """KernelConfig.bwd_dots other than the default ('mixed', every other test): TF32 (IEEE in interpret mode)
    everywhere, or bf16 everywhere (within tolerance at this small head size; over it at K = V = 128)."""
    cfg = KernelConfig(bwd_dots=dots)
    _check(Case(1, 130, 1, 64, 64, n=1, h0=True, chunk=32, dtype='bfloat16'),
           functools.partial(kernel_gated_delta_rule, config=cfg))


def test_unknown_backward_dot_mode_is_named():
    x, cot = make_inputs(Case(1, 16, 1, 16, 16, n=1, h0=False, chunk=16))
    fn = functools.partial(kernel_gated_delta_rule, config=KernelConfig(bwd_dots='tf16'))
    with pytest.raises(ValueError, match="dots must be one of .*'tf16'"):
        _run(x, cot, fn=fn, chunk=16)
    fused = functools.partial(kernel_gated_delta_rule, config=KernelConfig(bwd_dots='tf16', bwd_split=False))
    with pytest.raises(ValueError, match="dots must be one of .*'tf16'"):
        _run(x, cot, fn=fused, chunk=16)


SPLIT = KernelConfig(split_programs=1024, split_min_len=16)  # splits any tiny case below into segments of 1 chunk


def _forward_only(case: Case, cfg):
    """(o, final_state) of the kernel with `cfg` outside jax.grad, and the jaxpr's text."""
    x, _ = make_inputs(case)
    args = (x['q'], x['k'], x['v'], x.get('g'), x['beta'])
    fn = functools.partial(kernel_gated_delta_rule, scale=case.k ** -0.5, initial_state=x.get('h0'),
                           chunk_size=case.chunk, config=cfg)
    return jax.jit(fn)(*args), str(jax.make_jaxpr(fn)(*args)), x


@pytest.mark.parametrize('case, cfg', [
    (Case(1, 70, 2, 32, 48, n=1, h0=True, chunk=16), SPLIT),                                  # 8 segments, 3 padding
    (Case(2, 100, 1, 32, 48, n=None, h0=False, chunk=16), dataclasses.replace(SPLIT, split_min_len=32)),  # 4 of 32
    (Case(2, 70, 1, 48, 32, n=1, h0=False, chunk=16, dtype='bfloat16'), SPLIT),               # K > V
    (Case(1, 100, 2, 32, 48, n=16, h0=True, chunk=16, dtype='bfloat16'), SPLIT),
    (Case(1, 100, 1, 32, 48, n=1, h0=True, chunk=16), dataclasses.replace(SPLIT, split_block_v=16)),  # 16-wide
    (Case(1, 70, 1, 32, 48, n=1, h0=True, chunk=16, dtype='bfloat16'), dataclasses.replace(SPLIT, split_o=True)),
    (Case(1, 100, 2, 32, 48, n=1, h0=True, chunk=16),  # state-only sweeps narrower than the split's last sweep
     dataclasses.replace(SPLIT, split_states_block_v=16, split_states_num_warps=2, split_states_num_stages=2)),
    (Case(2, 64, 2, 32, 48, n=1, h0=False, chunk=16), dataclasses.replace(SPLIT, split_min_len=32)),  # 2: no M
    (Case(2, 64, 1, 32, 48, n=1, h0=True, chunk=16), dataclasses.replace(SPLIT, split_min_len=32)),   # 2: M(0)
    # the state-only sweeps on the state as stored (the default transposes it: _split.transposed_states_kernel) and
    # transposed for the transition only: gated and not, K != V
    (Case(1, 70, 2, 32, 48, n=1, h0=True, chunk=16), dataclasses.replace(SPLIT, split_states_transposed='none')),
    (Case(2, 100, 1, 48, 32, n=None, h0=False, chunk=16, dtype='bfloat16'),
     dataclasses.replace(SPLIT, split_min_len=32, split_states_transposed='none')),
    (Case(1, 100, 2, 32, 48, n=0.1, h0=True, chunk=16, dtype='bfloat16'),
     dataclasses.replace(SPLIT, split_states_transposed='transition', split_states_block_v=16)),
], ids=lambda a: str(a) if isinstance(a, Case) else None)
def test_sequence_split_forward(case, cfg):
    """KernelConfig.split_programs (_split.py): the forward outside jax.grad runs on segments of the sequence (two
    state-only sweeps over the segments whose states are read, the combine, then the sweep from each segment's
    start state); it equals the naive oracle and the unsplit kernel."""
    (o, ht), jaxpr, x = _forward_only(case, cfg)
    tp, vp = case.chunk * -(-case.t // case.chunk), next_pow2(case.v)
    p = _split.split_plan(case.b, case.h, tp, vp, case.chunk, cfg, 'gpu', case.h0)[0]
    sweeps = 1 + (p - 2 + case.h0 > 0)  # S_loc always; M unless P = 2 without h0
    assert jaxpr.count('name=gated_delta_rule_states') == sweeps and jaxpr.count('name=gated_delta_rule_fwd') == 1
    (o_whole, ht_whole), _, _ = _forward_only(case, dataclasses.replace(cfg, split_programs=0))
    up = lambda a: None if a is None else a.astype(jnp.float32)
    o_ref, ht_ref = naive_gated_delta_rule(up(x['q']), up(x['k']), up(x['v']), x.get('g'), x['beta'],
                                           scale=case.k ** -0.5, initial_state=x.get('h0'), segment_ids=None)
    tol = TOL[case.dtype]
    assert_close('o', o, o_ref, tol)
    assert_close('final_state', ht, ht_ref, tol)
    assert_close('o (unsplit)', o, o_whole, tol)
    assert_close('final_state (unsplit)', ht, ht_whole, tol)


def test_split_states_transposed_is_checked():
    """An unknown mode fails when the config is made, before any trace."""
    with pytest.raises(ValueError, match='split_states_transposed must be one of'):
        dataclasses.replace(SPLIT, split_states_transposed=True)


def test_sequence_split_segment_count():
    """How many segments: num_segments (one program per SM on GPU by default, none elsewhere) on the chunk count
    rounded up to a power of two, segments >= split_min_len rows."""
    count = lambda b, t, cfg=KernelConfig(), backend='gpu', h=16, vp=128, chunk=64: _split.segment_count(
        b, h, t, vp, chunk, cfg, backend)
    assert count(1, 65536) == 4           # 32 programs (2 value tiles of 64) -> 128 of 132 SMs
    assert count(32, 2048) == 1 and count(4, 4096) == 1
    assert count(1, 65536, backend='cpu') == 1
    assert count(1, 65536, KernelConfig(split_programs=0)) == 1
    assert count(1, 65536, KernelConfig(split_programs=1024)) == 32
    assert count(1, 65536, KernelConfig(split_programs=1024, split_min_len=8192)) == 8
    assert count(1, 3000, KernelConfig(split_programs=1024)) == 2  # 47 chunks: 2 segments of 24 (one padded)
    assert count(1, 80, SPLIT, h=2, vp=64, chunk=16) == 8           # 5 chunks: 8 segments of 1 (3 padding)
    plan = lambda b, t, cfg=KernelConfig(): _split.split_plan(b, 16, t, 128, 64, cfg, 'gpu')
    p, cfg = plan(1, 65536)                  # split: the sweeps at split_block_v, 16 programs -> 8 segments
    assert p == 8 and cfg.block_v == 128
    p, cfg = plan(2, 32768)                  # block_v gives 2 segments: no transition sweep, so block_v stays
    assert p == 2 and cfg.block_v == 64
    p, cfg = _split.split_plan(2, 16, 32768, 128, 64, KernelConfig(), 'gpu', has_h0=True)  # M(0) too: wider
    assert p == 4 and cfg.block_v == 128
    assert plan(4, 4096) == (1, KernelConfig())  # no split: block_v stays
    p, cfg = plan(1, 65536, KernelConfig(split_block_v=None))
    assert p == 4 and cfg.block_v == 64


def test_sequence_split_gradients_are_the_unsplit_ones():
    """Under jax.grad the forward stays unsplit (the backward reads the chunk states in the unsplit layout): o, the
    final state and every gradient are the unsplit kernel's, bit for bit."""
    case = Case(1, 70, 2, 32, 48, n=1, h0=True, chunk=16)
    _check(case, functools.partial(kernel_gated_delta_rule, config=SPLIT))
    x, cot = make_inputs(case)
    split = _run(x, cot, fn=functools.partial(kernel_gated_delta_rule, config=SPLIT), chunk=16)
    whole = _run(x, cot, fn=functools.partial(kernel_gated_delta_rule, config=KernelConfig()), chunk=16)
    for a, b in zip(jax.tree.leaves(split), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_public_ops_impl_kernel():
    """delta_rule and gated_delta_rule route impl='kernel' (gated with g = 0 equals DeltaNet)."""
    x, _ = make_inputs(Case(1, 20, 1, 16, 16, n=1, h0=True, chunk=16))
    kw = {'initial_state': x['h0'], 'output_final_state': True, 'chunk_size': 16}
    o, ht = delta_rule(x['q'], x['k'], x['v'], x['beta'], impl='kernel', **kw)
    o_g, ht_g = gated_delta_rule(x['q'], x['k'], x['v'], jnp.zeros_like(x['g']), x['beta'], impl='kernel', **kw)
    o_ref, ht_ref = delta_rule(x['q'], x['k'], x['v'], x['beta'], impl='naive', **kw)
    for got in (o, o_g):
        assert_close('o', got, o_ref, TOL['float32'])
    for got in (ht, ht_g):
        assert_close('final_state', got, ht_ref, TOL['float32'])


def test_segment_ids_not_implemented_and_auto_falls_back(monkeypatch):
    x, _ = make_inputs(Case(1, 16, 1, 16, 16, n=1, h0=False))
    seg = jnp.asarray(np.repeat([[1, 2]], 8, axis=1))
    args = (x['q'], x['k'], x['v'], x['g'], x['beta'])
    with pytest.raises(NotImplementedError, match='segment_ids'):
        gated_delta_rule(*args, segment_ids=seg, impl='kernel')
    monkeypatch.setattr(_api, 'default_backend', lambda: 'gpu')  # 'auto' as on a GPU
    assert _api._auto_order(x['q'])[0] == 'kernel'
    assert _api._auto_order(x['q'][:, :1]) == ['recurrent']
    o, _ = gated_delta_rule(*args, segment_ids=seg, impl='auto')
    o_ref, _ = gated_delta_rule(*args, segment_ids=seg, impl='chunk')
    np.testing.assert_array_equal(o, o_ref)


def test_unsupported_chunk_size_or_head_dim_raises_not_implemented():
    x, _ = make_inputs(Case(1, 8, 1, 16, 16, n=1, h0=False))
    with pytest.raises(NotImplementedError, match='chunk_size'):
        gated_delta_rule(x['q'], x['k'], x['v'], x['g'], x['beta'], impl='kernel', chunk_size=48)
    with pytest.raises(NotImplementedError, match='head dims'):
        gated_delta_rule(x['q'], x['k'], jnp.zeros((1, 8, 1, 192)), x['g'], x['beta'], impl='kernel')


@pytest.mark.skipif(not ON_GPU, reason='native Triton kernel: GPU only (interpret mode is too slow here)')
@pytest.mark.parametrize('case', GPU_CASES, ids=str)
def test_matches_naive_gpu_shapes(case):
    _check(case)


@pytest.mark.skipif(not ON_GPU, reason='native Triton kernel: GPU only (interpret mode is too slow here)')
@pytest.mark.parametrize('n', [1, None])
def test_split_o_gpu_shapes(n):
    cfg = KernelConfig(split_o=True, block_v=32, num_warps=4, num_stages=2)
    _check(Case(1, 1000, 2, 128, 128, n=n, h0=True, dtype='bfloat16'),
           functools.partial(kernel_gated_delta_rule, config=cfg))


@pytest.mark.skipif(not ON_GPU, reason='native Triton kernel: GPU only (interpret mode is too slow here)')
@pytest.mark.parametrize('n', [None, 1])
def test_sequence_split_forward_gpu(n):
    """The split forward at a real head size on the GPU (8 segments of 1024 rows, 128-wide value tiles): oracle and
    unsplit kernel."""
    case = Case(1, 8192, 2, 128, 128, n=n, h0=True, chunk=64, dtype='bfloat16')
    test_sequence_split_forward(case, KernelConfig(split_programs=64, split_min_len=1024))
    for transposed in ('none', 'transition'):
        test_sequence_split_forward(case, KernelConfig(split_programs=64, split_min_len=1024,
                                                       split_states_transposed=transposed))


@pytest.mark.skipif(not ON_GPU, reason='T = 65536: GPU only')
@pytest.mark.parametrize('n', [0.1, 16, None])
def test_long_bf16_finite(n):
    b, t, h, d = 1, 65536, 2, 128
    x, _ = make_inputs(Case(b, t, h, d, d, n=n, h0=True, dtype='bfloat16'))

    def loss(x):
        o, ht = kernel_gated_delta_rule(x['q'], x['k'], x['v'], x.get('g'), x['beta'], scale=d ** -0.5,
                                        initial_state=x['h0'])
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(ht), (o, ht)
    grads, (o, ht) = jax.jit(jax.grad(loss, has_aux=True))(x)
    for a in (o, ht, *grads.values()):
        assert bool(jnp.all(jnp.isfinite(a.astype(jnp.float32))))


@pytest.mark.parametrize('gate_cumsum', ['kernel', 'xla'])
def test_lowers_to_triton(gate_cumsum):
    """Forward and backward lower through Pallas' Triton lowering (cross-platform, no GPU needed): catches
    primitives or indexing that only interpret mode accepts."""
    cfg = KernelConfig(gate_cumsum=gate_cumsum)
    q, g, beta = jnp.zeros((1, 64, 2, 32), jnp.bfloat16), jnp.zeros((1, 64, 2)), jnp.full((1, 64, 2), 0.5)

    def loss(q, k, v, g, beta):
        o, ht = kernel_gated_delta_rule(q, k, v, g, beta, scale=0.1, chunk_size=32, config=cfg, interpret=False)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(ht)
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))).trace(q, q, q, g, beta).lower(
        lowering_platforms=('cuda',)).as_text()
    assert text.count('triton') >= 5  # WY, forward, state-gradient, dq/dk/dW and WY-backward kernels


@pytest.mark.parametrize('split_o, transposed', [(False, 'both'), (True, 'both'), (False, 'none')])
def test_sequence_split_lowers_to_triton(split_o, transposed):
    """The split forward (outside jax.grad) lowers too: the WY kernel, two state-only sweeps (also on the transposed
    state), the segment starts and the sweep."""
    q, g, beta = jnp.zeros((1, 128, 2, 32), jnp.bfloat16), jnp.zeros((1, 128, 2)), jnp.full((1, 128, 2), 0.5)

    def calls(cfg):
        fn = functools.partial(kernel_gated_delta_rule, scale=0.1, chunk_size=32, config=cfg, interpret=False)
        text = jax.jit(fn).trace(q, q, q, g, beta).lower(lowering_platforms=('cuda',)).as_text()
        return text.count('custom_call @__gpu$xla.gpu.triton(')
    cfg = KernelConfig(split_programs=64, split_min_len=32, split_o=split_o,  # 4 segments of 32 rows
                       split_states_transposed=transposed)
    assert calls(cfg) == calls(dataclasses.replace(cfg, split_programs=0)) + 3
