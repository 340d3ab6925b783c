"""gla impl='kernel' (Pallas) against the fp32 step-loop oracle: outputs, final state, all gradients.

On CPU the kernel runs in Pallas interpret mode (tiny shapes); on a GPU it runs natively through the Triton
lowering, and the GPU-only tests add real head sizes, T ~ 1000 and T = 65536. Tolerances are DESIGN.md's
(relative RMS): 1e-5 in fp32 (IEEE fp32 dots, Precision.HIGHEST), 5e-3 in bf16 (bf16 operands, fp32
accumulation, bf16 output). The base in test_gla.py is not reused: the kernel takes no segment_ids.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
import linear_op_checks as checks
import numpy as np
import pytest
import helpers
from helpers import TOL, assert_close

from effattn.ops.gla import _intra, _intra_dots, _scan, gla
from effattn.ops.gla.naive import gla_naive
from effattn.ops.gla.pallas import KernelConfig, _Ctx, kernel_gla

ON_GPU = jax.default_backend() == 'gpu'
gla_mod = importlib.import_module('effattn.ops.gla')  # the package, not the function


class Case(checks.Case):
  id_tail = ('dtype',)


OP = checks.Op(gla, gate='channel')  # g = logsigmoid(x) / n, per channel

CASES = [
    Case(2, 63, 2, 48, 60, n=1, h0=True),               # T not a multiple of 16, non-power-of-2 K, V
    Case(1, 130, 2, 48, 60, n=0.1, h0=True),            # fast gates
    Case(1, 130, 1, 32, 48, n=16, h0=False),            # slow gates, no initial state
    Case(2, 1, 2, 16, 16, n=1, h0=True),                # one token
    Case(1, 130, 2, 64, 64, n=1, h0=True, dtype='bfloat16'),
    Case(1, 130, 1, 48, 32, n=0.1, h0=True, dtype='bfloat16'),
    Case(1, 130, 1, 32, 48, n=16, h0=True, dtype='bfloat16'),
]
GPU_CASES = [
    Case(2, 1000, 2, 128, 128, n=1, h0=True, dtype='bfloat16'),
    Case(1, 1000, 3, 128, 128, n=0.1, h0=True, dtype='bfloat16'),
    Case(1, 1000, 2, 128, 64, n=16, h0=True, dtype='bfloat16'),
    Case(1, 777, 2, 128, 128, n=0.1, h0=True),
    Case(2, 1000, 3, 64, 64, n=1, h0=True, dtype='bfloat16'),  # K <= 64: the intra kernels in one channel step
]


def _naive(q, k, v, g, *, scale, initial_state):
  return gla_naive(q, k, v, g, scale=scale, initial_state=initial_state)


def _check(case: Case, fn):
  checks.check_against_oracle(OP, case, fn, _naive)


@pytest.mark.parametrize('case', CASES, ids=str)
def test_matches_naive(case):
  _check(case, kernel_gla)


@pytest.mark.parametrize('n', [0.1, 1])
def test_chunk_32_and_small_tiles(n):
  """config.chunk = 32 (two sub-blocks, in fp32 too); several value tiles in the forward, several key tiles in
  the dq and dk sweeps and value tiles in the dv sweeps; the intra kernels over 16-channel slices of Kp = 64
  (the default at Kp <= 64 takes all channels in one step)."""
  cfg = KernelConfig(chunk=32, chunk_fp32=32, block_v=16, block_k_dq=16, block_k_dk=16, block_v_bwd=16,
                     intra_width=16, intra_width_bwd=16)
  _check(Case(1, 70, 1, 48, 40, n=n, h0=True), functools.partial(kernel_gla, config=cfg))


# each (width, backward form) pair on one of the two cases, each case with both widths and both forms (pairwise
# coverage: the four pairs on both cases took 18 s of CI's 2 cores for no path the pairs miss)
@pytest.mark.parametrize('case, pairs', [
    (Case(1, 70, 1, 48, 40, n=0.1, h0=True), ((16, 'rows'), (None, 'rows2'))),
    (Case(1, 130, 2, 32, 48, n=1, h0=False, dtype='bfloat16'), ((16, 'rows2'), (None, 'rows')))],
    ids=lambda a: str(a) if isinstance(a, Case) else None)
def test_rows_diagonal(case, pairs):
  """KernelConfig(intra_diag='rows', intra_diag_bwd='rows' or 'rows2'): the intra kernels' diagonal blocks by loops
  over the block's rows; with 16-channel slices (several steps), and all channels in one with the loops unrolled."""
  for width, bwd in pairs:
    cfg = KernelConfig(intra_diag='rows', intra_width=width, intra_diag_bwd=bwd, intra_width_bwd=width,
                       intra_unroll=width is None)
    _check(case, functools.partial(kernel_gla, config=cfg))


@pytest.mark.parametrize('case', [Case(1, 70, 1, 48, 40, n=0.1, h0=True),
                                  Case(1, 130, 2, 32, 48, n=1, h0=False, dtype='bfloat16')], ids=str)
def test_halves_diagonal(case):
  """KernelConfig(intra_diag='halves'): the intra kernels' diagonal blocks in halves of 8 rows (the default was
  'dots' at every head dim from the sixth session of 2026-12-03, 'rows' before, and 'halves' at first)."""
  for width in (16, None):
    cfg = KernelConfig(intra_diag='halves', intra_width=width, intra_diag_bwd='halves', intra_width_bwd=width)
    _check(case, functools.partial(kernel_gla, config=cfg))


@pytest.mark.parametrize('case', [Case(1, 70, 1, 48, 40, n=0.1, h0=True), Case(2, 63, 2, 48, 60, n=1, h0=True),
                                  Case(1, 130, 2, 32, 48, n=1, h0=False, dtype='bfloat16'),
                                  Case(1, 130, 1, 64, 64, n=16, h0=True, dtype='bfloat16'),
                                  Case(1, 130, 2, 32, 48, n=0.4, h0=True, dtype='bfloat16')],  # spans 57-68 (log2)
                         ids=str)                                # around the 64 limit: both kinds of block in one call
def test_dots_diagonal(case):
  """'dots' (the default, _intra_dots.py): the diagonal blocks by dots about their first row where the decay span
  allows, else by the row loops; 16-channel slices and all channels. ('rows' everywhere: test_rows_diagonal.)"""
  for diag, width in (('dots', 16), ('dots', None)):
    cfg = KernelConfig(intra_diag=diag, intra_width=width, intra_diag_bwd=diag, intra_width_bwd=width)
    _check(case, functools.partial(kernel_gla, config=cfg))


@pytest.mark.parametrize('n', [16, 0.1])
def test_dots_diagonal_falls_back_on_fast_gates(n, monkeypatch):
  """Slow gates (a 16-row block's span ~1.5 at n = 16) take the dots, fast ones (~230 at n = 0.1) the row loops:
  'dots' equals the dots forced (span limit 1e9) at n = 16, and the row loops at n = 0.1, where the forced dots
  overflow."""
  case = Case(1, 64, 1, 32, 32, n=n, h0=False)
  x, _, _ = checks.make_inputs(OP, case)
  gc = _scan.chunk_gates(x['g'], 64, True)
  ctx = _Ctx(jnp.dtype(jnp.float32), 32 ** -0.5, 64)
  do = jnp.cos(jnp.arange(64 * 32.0)).reshape(1, 64, 1, 32)

  def run(diag, max_span=_intra_dots._MAX_SPAN):
    monkeypatch.setattr(_intra_dots, '_MAX_SPAN', max_span)
    cfg = KernelConfig(intra_diag=diag, intra_diag_bwd=diag)
    a = _intra.intra_a(x['q'], x['k'], gc, ctx, cfg, True)[0]
    return (a, *_intra.intra_grads(x['q'], x['k'], gc, x['v'], do, ctx, cfg, True)[:2])
  dots, forced, rows = run('dots'), run('dots', 1e9), run('rows')
  for name, d, f, r in zip(('A', 'dq', 'dk'), dots, forced, rows):
    assert_close(name, d, r, 1e-5)
    if n == 16:
      np.testing.assert_array_equal(d, f)
    else:
      assert not bool(jnp.all(jnp.isfinite(f))), name


def _grads_of_o_only(fn, x, do):
  """The gradients of sum(o * do) alone: the final state is never read, so its cotangent is a symbolic zero."""
  f = lambda x: fn(x['q'], x['k'], x['v'], x['g'], scale=x['q'].shape[-1] ** -0.5, initial_state=x.get('h0'))[0]
  o, vjp = jax.vjp(f, x)
  return vjp(do.astype(o.dtype))[0]


def _check_o_only(case, fn):
  """Every gradient of sum(o * do) alone (an unread final state: its cotangent a symbolic zero) against the fp32
  oracle's; returns the inputs and cotangents used."""
  x, cot, _ = checks.make_inputs(OP, case)
  got = _grads_of_o_only(fn, x, cot[0])
  xr, cotr = helpers.upcast(x, cot)
  ref = _grads_of_o_only(_naive, xr, cotr[0])
  for name in x:
    assert_close(f'd{name}', got[name], ref[name], TOL[case.dtype])
  return x, cot


@pytest.mark.parametrize('case', [Case(2, 63, 2, 48, 60, n=1, h0=True),
                                  Case(1, 130, 1, 48, 32, n=0.1, h0=True, dtype='bfloat16')], ids=str)
@pytest.mark.parametrize('cfg', [KernelConfig(), KernelConfig(bwd_states=True), KernelConfig(bwd_roles_first=True)],
                         ids=['sweeps', 'states', 'roles-first'])
def test_unread_final_state(case, cfg):
  """Training never reads the final state: the backward then skips the d final_state terms (no W kernel, no λ dS_T
  in the dk sweep, the dv sweep from a zero dS) and still matches the oracle, every gradient, h0's included."""
  fn = functools.partial(kernel_gla, config=cfg)
  x, cot = _check_o_only(case, fn)

  def backward_jaxpr(read_ht: bool) -> str:
    def grads(x):
      def f(x):
        o, ht = fn(x['q'], x['k'], x['v'], x['g'], scale=0.1, initial_state=x.get('h0'))
        return (o, ht) if read_ht else o
      return jax.vjp(f, x)[1](cot if read_ht else cot[0])
    return str(jax.make_jaxpr(grads)(x))
  if not cfg.bwd_states:
    assert 'gla_w' in backward_jaxpr(True) and 'gla_w' not in backward_jaxpr(False)


BWD_STATES = KernelConfig(bwd_states=True)


_KEY_TILE_CASES = [Case(2, 63, 2, 48, 60, n=1, h0=True), Case(1, 130, 2, 64, 64, n=1, h0=True, dtype='bfloat16'),
                   Case(1, 130, 1, 48, 32, n=0.1, h0=True, dtype='bfloat16')]


# each (tile, form) on two of the three cases, each case under at least two of them, the fast gates (n = 0.1) under
# every form
@pytest.mark.parametrize('case, tile, diag', [
    (_KEY_TILE_CASES[0], 16, 'dots'), (_KEY_TILE_CASES[2], 16, 'dots'),
    (_KEY_TILE_CASES[1], 32, 'rows'), (_KEY_TILE_CASES[2], 32, 'rows'),
    (_KEY_TILE_CASES[0], 32, 'halves'), (_KEY_TILE_CASES[2], 32, 'halves'),
    (_KEY_TILE_CASES[1], 128, 'dots'), (_KEY_TILE_CASES[2], 128, 'dots')],
    ids=lambda a: str(a) if isinstance(a, Case) else None)
def test_key_tiled_intra_bwd(case, tile, diag):
  """KernelConfig(intra_key_tile_bwd=...): the backward intra kernel per (16-row block, key tile) from the chunks'
  stored dA; each tile takes 'dots' or the row loops by its own channels' span (fast gates at n = 0.1 mix them)."""
  cfg = KernelConfig(intra_key_tile_bwd=tile, intra_diag_bwd=diag)
  _check(case, functools.partial(kernel_gla, config=cfg))


def test_default_key_tiles_by_head_dim():
  """The default backward intra kernel: 64-channel key tiles at 2 warps from K = 128 (timed faster on the H200),
  all channels at 4 warps below, or with 'rows2'; 0 asks for all channels; and the K = 128 default matches naive."""
  assert KernelConfig().intra_bwd_tiles_for(128) == (64, 2)
  assert KernelConfig().intra_bwd_tiles_for(64) == (None, 4)
  assert KernelConfig(intra_key_tile_bwd=0).intra_bwd_tiles_for(128) == (None, 4)
  assert KernelConfig(intra_diag_bwd='rows2').intra_bwd_tiles_for(128) == (None, 4)
  assert KernelConfig(num_warps_intra_bwd=8).intra_bwd_tiles_for(128) == (64, 8)
  case = Case(1, 40, 1, 128, 32, n=1, h0=True, dtype='bfloat16')
  _check(case, kernel_gla)
  x, cot = _check_o_only(case, kernel_gla)
  assert 'name=gla_dA' in str(jax.make_jaxpr(lambda x: _grads_of_o_only(kernel_gla, x, cot[0]))(x))


@pytest.mark.parametrize('cfg', [KernelConfig(bf16_intra_grads=False),
                                 KernelConfig(bf16_intra_grads=True, intra_key_tile_bwd=16, bwd_states=True)],
                         ids=['fp32-sweeps', 'bf16-key-tiles-states'])
def test_intra_grads_dtype(cfg):
  """KernelConfig.bf16_intra_grads (True, the default: the intra kernel's dq, dk kept in bf16; False: fp32) stays
  within the bf16 tolerance (all gradients, the gate's included: its terms stay fp32); fp32 inputs are unaffected
  (the dot dtype)."""
  for case in (Case(1, 130, 2, 64, 64, n=1, h0=True, dtype='bfloat16'), Case(1, 70, 1, 32, 48, n=0.1, h0=True)):
    _check(case, functools.partial(kernel_gla, config=cfg))


@pytest.mark.parametrize('cfg', [KernelConfig(dg_parts=3), KernelConfig(scan_width=64, num_warps_scan=8),
                                 KernelConfig(scan_block_k=16, scan_width=8), KernelConfig(save_factors=False)],
                         ids=['dg-three-parts', 'scan-64-wide', 'scan-column-programs', 'factors-rewritten'])
def test_scan_configs(cfg):
  """The chunk-cumsum kernels' settings: dg from three bf16 parts per fp32 operand (two, the default for bf16 inputs,
  run everywhere else; fp32 inputs always take three), wider column steps and programs of a few columns each stay
  within tolerance, the gate gradient included."""
  for case in (Case(1, 130, 2, 64, 64, n=1, h0=True, dtype='bfloat16'), Case(1, 70, 1, 32, 48, n=0.1, h0=True)):
    _check(case, functools.partial(kernel_gla, config=cfg))


def test_key_tiled_intra_bwd_is_checked():
  with pytest.raises(ValueError, match='intra_key_tile_bwd'):
    _check(Case(1, 16, 1, 16, 16, n=1, h0=False), functools.partial(kernel_gla, config=KernelConfig(
        intra_key_tile_bwd=24)))
  with pytest.raises(ValueError, match='rows2'):
    _check(Case(1, 16, 1, 16, 16, n=1, h0=False), functools.partial(kernel_gla, config=KernelConfig(
        intra_key_tile_bwd=16, intra_diag_bwd='rows2')))


@pytest.mark.parametrize('case', [Case(2, 63, 2, 48, 60, n=1, h0=True),
                                  Case(1, 130, 2, 64, 64, n=1, h0=True, dtype='bfloat16')], ids=str)
def test_bwd_roles_first(case):
  """KernelConfig(bwd_roles_first=True): the backward sweeps' grid with the roles axis first (dispatch order only)."""
  _check(case, functools.partial(kernel_gla, config=KernelConfig(bwd_roles_first=True)))


_ROLE_CASES = [Case(2, 63, 2, 48, 60, n=1, h0=True), Case(1, 130, 2, 64, 64, n=1, h0=True, dtype='bfloat16')]


@pytest.mark.parametrize('case, apart, roles_first', [  # each role apart on one case, both cases under two roles
    (_ROLE_CASES[0], 'dq', None), (_ROLE_CASES[1], 'dk', True), (_ROLE_CASES[0], 'dv', False),
    (_ROLE_CASES[1], 'dq+dv', None)], ids=lambda a: str(a) if isinstance(a, Case) else None)
def test_bwd_role_in_a_launch_of_its_own(case, apart, roles_first):
  """KernelConfig(bwd_apart=role): that role's sweeps in a launch of their own, the other two in a second; the
  final state read (d final_state terms in the dk and dv sweeps) and, in test_unread_final_state's way, not."""
  cfg = KernelConfig(bwd_apart=apart, bwd_roles_first=roles_first, block_k_dq=16)
  fn = functools.partial(kernel_gla, config=cfg)
  _check(case, fn)
  x, cot = _check_o_only(case, fn)
  jaxpr = str(jax.make_jaxpr(lambda x: _grads_of_o_only(fn, x, cot[0]))(x))
  alone = apart.split('+')
  assert all(f'gla_bwd_{r}' in jaxpr for r in alone) and jaxpr.count('name=gla_bwd') == len(alone) + 1


def test_bwd_apart_is_checked():
  for bad in ('dg', 'dq+dq'):
    with pytest.raises(ValueError, match='bwd_apart'):
      _check(Case(1, 16, 1, 16, 16, n=1, h0=False), functools.partial(kernel_gla, config=KernelConfig(bwd_apart=bad)))


@pytest.mark.parametrize('case', [CASES[i] for i in (0, 1, 3, 5)], ids=str)  # fp32 at n = 1 and 0.1, T = 1, bf16
def test_bwd_states_matches_naive(case):
  """KernelConfig(bwd_states=True): the backward from stored chunk states (_state_grads.py)."""
  _check(case, functools.partial(kernel_gla, config=BWD_STATES))


@pytest.mark.parametrize('case', [Case(1, 70, 1, 48, 40, n=0.1, h0=True),
                                  Case(1, 100, 1, 32, 48, n=1, h0=False, dtype='bfloat16')], ids=str)
def test_bwd_states_chunk_32_small_tiles(case):
  """bwd_states at chunk 32 with several key tiles (dq, dk) and value tiles (sweeps, dv) per chunk."""
  cfg = KernelConfig(chunk=32, chunk_fp32=32, block_k_dq=16, block_k_dk=16, block_v_bwd=16, bwd_states=True)
  _check(case, functools.partial(kernel_gla, config=cfg))


@pytest.mark.parametrize('case', [Case(1, 130, 2, 48, 60, n=0.1, h0=True),
                                  Case(1, 130, 1, 32, 48, n=1, h0=True, dtype='bfloat16')], ids=str)
def test_bwd_states_equals_sweeps(case):
  """The two backward paths give the same gradients to 1e-5 (measured: dg ~1e-6, the rest ~1e-7 or equal), except dv
  in bf16 (~4e-4: its dS_q comes from fp32 factors here, from the bf16 q ⊙ e^G in the dv sweep)."""
  x, cot, _ = checks.make_inputs(OP, case)
  ref = checks.run_fn(x, cot, fn=kernel_gla)[2]
  got = checks.run_fn(x, cot, fn=functools.partial(kernel_gla, config=BWD_STATES))[2]
  for name in x:
    assert_close(f'd{name}', got[name], ref[name], 1e-3 if name == 'v' and case.dtype == 'bfloat16' else 1e-5)


def test_intra_forms_by_head_dim():
  """The intra kernels' diagonal-block forms, widths, stages and warps by padded head dim (timed on the H200 at
  K = 128 and 64)."""
  cfg = KernelConfig()
  assert cfg.intra_diag_for(128) == 'dots' and cfg.intra_bwd_for(128) == ('dots', 128)
  assert cfg.intra_diag_for(64) == 'dots' and cfg.intra_bwd_for(64) == ('dots', 64)
  assert cfg.intra_fwd_for(128) == (16, 2, 2) and cfg.intra_fwd_for(64) == (64, 1, 4)
  assert KernelConfig(intra_width=32, num_warps_intra=8).intra_fwd_for(64) == (32, 1, 8)
  assert KernelConfig(intra_diag_bwd='halves').intra_bwd_for(128) == ('halves', 32)
  assert KernelConfig(intra_width_bwd=16).intra_bwd_for(128) == ('dots', 16)
  assert KernelConfig(intra_diag_bwd='rows2').intra_bwd_for(128) == ('rows2', 128)


@pytest.mark.parametrize('case', [Case(1, 128, 2, 32, 32, n=1, h0=True),
                                  Case(2, 128, 1, 16, 48, n=0.1, h0=False, dtype='bfloat16')], ids=str)
def test_sequence_split_matches_naive(case):
  """Long-T / small-batch path (ops/common/sequence_split.py): 4 segments run as batch rows, each from the
  scanned segment state; outputs, final state and every gradient (dg through the segment decays) exact."""
  cfg = KernelConfig(chunk=16, split_programs=4 * case.b * case.h, split_min_len=32)
  _check(case, functools.partial(kernel_gla, config=cfg))


@pytest.mark.parametrize('states', ['kernel', 'kernel_fold'])
def test_sequence_split_with_kernel_segment_states(states):
  """KernelConfig(split_states='kernel' or 'kernel_fold'): per-channel segment states by block_states."""
  case = Case(2, 128, 1, 16, 48, n=0.1, h0=True, dtype='bfloat16')
  cfg = KernelConfig(chunk=16, split_programs=4 * case.b * case.h, split_min_len=32, split_states=states)
  _check(case, functools.partial(kernel_gla, config=cfg))


@pytest.mark.parametrize('case', [Case(1, 128, 2, 32, 32, n=1, h0=True),
                                  Case(2, 128, 1, 16, 48, n=0.1, h0=False, dtype='bfloat16'),
                                  Case(1, 256, 1, 64, 64, n=16, h0=True, dtype='bfloat16')], ids=str)
def test_sequence_split_from_sweeps(case):
  """KernelConfig(split_states='sweeps') (_split.py): the primal forward from the kernel's own gates, intra kernel
  and a state-only sweep equals the oracle and the 'xla' split; under jax.vjp it is the 'xla' split (gradients
  exact against the oracle)."""
  cfg = KernelConfig(chunk=16, split_programs=4 * case.b * case.h, split_min_len=32, split_states='sweeps')
  fn = functools.partial(kernel_gla, config=cfg)
  _check(case, fn)
  x, _, _ = checks.make_inputs(OP, case)
  call = lambda f, x: f(x['q'], x['k'], x['v'], x['g'], scale=x['q'].shape[-1] ** -0.5, initial_state=x.get('h0'))
  o, ht = jax.jit(lambda x: call(fn, x))(x)
  ref_o, ref_ht = call(_naive, {n: jnp.asarray(a, jnp.float32) for n, a in x.items()})
  assert_close('o', o, ref_o, TOL[case.dtype])
  assert_close('final_state', ht, ref_ht, TOL[case.dtype])
  xla_o, xla_ht = call(functools.partial(kernel_gla, config=dataclasses.replace(cfg, split_states='xla')), x)
  tol = 1e-5 if case.dtype == 'float32' else 5e-3  # bf16: the local states round k's decays differently
  assert_close('o vs xla split', o, xla_o, tol)
  assert_close('final_state vs xla split', ht, xla_ht, tol)
  with pytest.raises(ValueError, match="split_states must be one of 'kernel', 'kernel_fold', 'xla', 'sweeps'; got 'x'"):
    call(functools.partial(kernel_gla, config=dataclasses.replace(cfg, split_states='x')), x)


@pytest.mark.skipif(not ON_GPU, reason='native Triton kernel at T = 8192: GPU only')
@pytest.mark.parametrize('states', ['sweeps', 'xla'])
def test_sequence_split_forward_gpu(states):
  """The split forward at a real head size on the GPU (8 segments of 1024 rows): oracle and unsplit kernel."""
  case = Case(1, 8192, 2, 128, 128, n=1, h0=True, dtype='bfloat16')
  x, _, _ = checks.make_inputs(OP, case)
  cfg = KernelConfig(split_programs=64, split_min_len=1024, split_states=states)
  call = lambda cfg: jax.jit(lambda x: kernel_gla(x['q'], x['k'], x['v'], x['g'], scale=case.k ** -0.5,
                                                  initial_state=x['h0'], config=cfg))(x)
  o, ht = call(cfg)
  o_whole, ht_whole = call(dataclasses.replace(cfg, split_programs=0))
  ref_o, ref_ht = _naive(*(jnp.asarray(x[n], jnp.float32) for n in 'qkvg'), scale=case.k ** -0.5,
                         initial_state=x['h0'])
  for name, a, b in [('o', o, ref_o), ('final_state', ht, ref_ht), ('o (unsplit)', o, o_whole),
                     ('final_state (unsplit)', ht, ht_whole)]:
    assert_close(name, a, b, TOL[case.dtype])


def test_sequence_split_from_sweeps_lowers_to_triton():
  """The 'sweeps' split's primal forward (gates, intra, the state-only sweep, the output sweep) lowers through
  Pallas' Triton lowering."""
  cfg = KernelConfig(split_programs=8, split_min_len=64, split_states='sweeps')
  q, g = jnp.zeros((1, 256, 2, 32), jnp.bfloat16), jnp.zeros((1, 256, 2, 32))
  text = jax.jit(lambda q, g: kernel_gla(q, q, q, g, scale=0.1, config=cfg, interpret=False)).trace(q, g).lower(
      lowering_platforms=('cuda',)).as_text()
  assert 'gla_states' in text and text.count('triton') >= 4


def test_chunk_16_small_tiles_bf16():
  cfg = KernelConfig(chunk=16, block_k_dq=16, block_k_dk=16, block_v_bwd=16)
  _check(Case(1, 100, 1, 32, 32, n=0.1, h0=True, dtype='bfloat16'), functools.partial(kernel_gla, config=cfg))


def test_bf16_gates_through_the_public_op():
  """g in bf16 (its cumsum dots take one bf16 operand, not two): dg comes back in bf16."""
  x, cot, _ = checks.make_inputs(OP, Case(1, 40, 2, 32, 32, n=1, h0=False, dtype='bfloat16'))
  x['g'] = x['g'].astype(jnp.bfloat16)

  def loss(x, impl):
    o, ht = gla(x['q'], x['k'], x['v'], x['g'], output_final_state=True, impl=impl)
    return jnp.sum(o.astype(jnp.float32) * cot[0]) + jnp.sum(ht * cot[1])
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  grads = grad(x, 'kernel')
  grads_ref = grad({n: a.astype(jnp.float32) for n, a in x.items()}, 'naive')
  for name in x:
    assert grads[name].dtype == jnp.bfloat16
    assert_close(f'd{name}', grads[name], grads_ref[name], TOL['bfloat16'])


def test_segment_ids_not_implemented_and_auto_falls_back(monkeypatch):
  checks.check_segment_ids_not_implemented_and_auto_falls_back(OP, gla_mod, monkeypatch)


def test_unsupported_head_dim_or_chunk_raises_not_implemented():
  x, _, _ = checks.make_inputs(OP, Case(1, 8, 1, 16, 16, n=1, h0=False))
  with pytest.raises(NotImplementedError, match='head dims'):
    gla(x['q'], x['k'], jnp.zeros((1, 8, 1, 192)), x['g'], impl='kernel')
  with pytest.raises(NotImplementedError, match='chunk'):
    kernel_gla(x['q'], x['k'], x['v'], x['g'], scale=1.0, config=KernelConfig(chunk=8))
  with pytest.raises(ValueError, match='intra_diag'):
    kernel_gla(x['q'], x['k'], x['v'], x['g'], scale=1.0, config=KernelConfig(intra_diag='columns'))
  with pytest.raises(ValueError, match='intra_diag_bwd'):
    jax.grad(lambda q: kernel_gla(q, x['k'], x['v'], x['g'], scale=1.0,
                                  config=KernelConfig(intra_diag_bwd='columns'))[1].sum())(x['q'])


@pytest.mark.skipif(not ON_GPU, reason='native Triton kernel: GPU only (interpret mode is too slow here)')
@pytest.mark.parametrize('case', GPU_CASES, ids=str)
def test_matches_naive_gpu_shapes(case):
  _check(case, kernel_gla)


@pytest.mark.skipif(not ON_GPU, reason='native Triton kernel: GPU only')
@pytest.mark.parametrize('cfg', [KernelConfig(chunk=32, block_v=32, num_warps=4, num_stages=2),
                                 KernelConfig(block_v=128, block_k_dq=32, block_k_dk=64, block_v_bwd=32,
                                              num_warps_intra=8, num_warps_intra_bwd=8, intra_width=16,
                                              intra_width_bwd=16),
                                 KernelConfig(intra_diag='halves', intra_diag_bwd='halves'),
                                 KernelConfig(intra_width=128, intra_width_bwd=32),
                                 KernelConfig(bwd_states=True, num_warps_bwd=8),
                                 KernelConfig(intra_diag_bwd='rows2', block_k_dq=32, block_k_dk=16),
                                 KernelConfig(intra_diag='rows', intra_diag_bwd='rows'),
                                 KernelConfig(intra_key_tile_bwd=32, bwd_roles_first=True),
                                 KernelConfig(bwd_apart='dq', block_k_dq=32),
                                 KernelConfig(bf16_intra_grads=False)],
                         ids=['c32', 'tiles', 'halves', 'rows-128-32', 'states', 'rows2-spillfree', 'rows',
                              'key-tiles-roles-first', 'dq-apart', 'fp32-intra-grads'])
def test_other_configs_gpu(cfg):
  """Other tilings the tuner may pick (tune_candidates) at real head sizes."""
  _check(Case(1, 1000, 2, 128, 128, n=1, h0=True, dtype='bfloat16'), functools.partial(kernel_gla, config=cfg))


@pytest.mark.skipif(not ON_GPU, reason='T = 65536: GPU only')
@pytest.mark.parametrize('n', [0.1, 16])
def test_long_bf16_finite(n):
  checks.check_long_bf16_kernel_finite(OP, n, d=128)


@pytest.mark.parametrize('dtype, cfg', [('bfloat16', KernelConfig()), ('float32', KernelConfig()),
                                        ('bfloat16', KernelConfig(block_v=16, block_k_dq=16, block_k_dk=16,
                                                                  block_v_bwd=16, chunk=32)),
                                        ('bfloat16', KernelConfig(intra_diag='rows', intra_diag_bwd='rows')),
                                        ('bfloat16', KernelConfig(intra_diag_bwd='rows2')),
                                        ('bfloat16', KernelConfig(intra_diag='halves', intra_diag_bwd='halves')),
                                        ('float32', KernelConfig(intra_diag='rows', intra_diag_bwd='rows')),
                                        ('bfloat16', KernelConfig(intra_diag='rows', intra_diag_bwd='rows2',
                                                                  intra_unroll=True)),
                                        ('bfloat16', KernelConfig(bwd_states=True)),
                                        ('bfloat16', KernelConfig(bwd_roles_first=True)),
                                        ('bfloat16', KernelConfig(bwd_apart='dq')),
                                        ('float32', KernelConfig(bwd_apart='dv')),
                                        ('bfloat16', KernelConfig(intra_key_tile_bwd=32)),
                                        ('bfloat16', KernelConfig(intra_key_tile_bwd=16, intra_diag_bwd='rows')),
                                        ('bfloat16', KernelConfig(bf16_intra_grads=False)),
                                        ('bfloat16', KernelConfig(dg_parts=3, scan_width=64, num_warps_scan=8)),
                                        ('bfloat16', KernelConfig(scan_block_k=16, save_factors=False)),
                                        ('float32', KernelConfig(bwd_states=True))])
def test_lowers_to_triton(dtype, cfg):
  """Forward and backward lower through Pallas' Triton lowering (cross-platform, no GPU needed): catches
  primitives or indexing that only interpret mode accepts."""
  q = jnp.zeros((1, 64, 2, 32), dtype)
  g, h0 = jnp.zeros((1, 64, 2, 32)), jnp.zeros((1, 2, 32, 32))

  def loss(q, k, v, g, h0, read_ht=True):
    o, ht = kernel_gla(q, k, v, g, scale=0.1, initial_state=h0, config=cfg, interpret=False)
    return jnp.sum(o.astype(jnp.float32)) + (jnp.sum(ht) if read_ht else 0.0)
  for read_ht in (True, False):  # with d final_state and without (a symbolic zero: no W kernel, other sweeps)
    text = jax.jit(jax.grad(functools.partial(loss, read_ht=read_ht), argnums=(0, 1, 2, 3, 4))).trace(
        q, q, q, g, h0).lower(lowering_platforms=('cuda',)).as_text()
    assert text.count('triton') >= 4  # two forward and two backward kernels
