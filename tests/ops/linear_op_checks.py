"""Checks shared by the tests of the linear attention ops without a delta rule: test_linear_attn.py and
test_simple_gla.py (every impl against the dense fp32 oracle), test_simple_gla_kernel.py and
test_gla_kernel.py (impl='kernel' against the fp32 oracle).

Each test file names its op (`Op`) and its cases (a `Case` subclass that says how its ids end) and calls
these checks from its own parametrized tests.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOL, OpCase, assert_close, assert_matches_oracle, upcast


class Op(NamedTuple):
  fn: Callable            # the public op: linear_attn, simple_gla or gla
  gate: str | None        # None: no gate; 'head': g [B, T, H]; 'channel': g [B, T, H, K]
  normalize: bool = False  # the op takes normalize=case.normalize (linear_attn)

  @property
  def names(self) -> tuple[str, ...]:
    """The positional inputs in call order."""
    return ('q', 'k', 'v', 'g') if self.gate else ('q', 'k', 'v')

  def options(self, case) -> dict:
    return {'normalize': case.normalize} if self.normalize else {}


Case = OpCase  # each test file subclasses it to say how its ids end (id_tail)


def make_segments(b: int, t: int, chunk: int) -> np.ndarray:
  """Row 0: ids 1, 2 | 3 from the chunk edge, then a trailing padding segment 0.
  Row 1: leading padding 0, then ids 4, 5 (a boundary inside a chunk)."""
  ids = np.empty((b, t), np.int32)
  pad = max(t // 10, 1)
  ids[0] = 3
  ids[0, :chunk] = 2
  ids[0, :chunk // 2 + 3] = 1
  ids[0, t - pad:] = 0
  for r in range(1, b):
    ids[r] = 5
    ids[r, :t // 2 + 1] = 4
    ids[r, :5] = 0
  return ids


def make_inputs(op: Op, case: Case, seed: int = 0) -> tuple[dict, tuple, jax.Array | None]:
  """Inputs {q, k, v (case.dtype), g, h0 (fp32, when case.h0)}, cotangents (do in case.dtype, dht fp32)
  and segment_ids (or None). With normalize, q, k (and the state's z column) are positive like elu+1
  features and the state has V + 1 columns."""
  rng = np.random.default_rng(seed)
  dt = jnp.dtype(case.dtype)
  f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  feat = (lambda x: jax.nn.elu(x) + 1.0) if case.normalize else (lambda x: x)
  state_v = case.v + 1 if case.normalize else case.v
  x = {'q': feat(f32(case.b, case.t, case.h, case.k)).astype(dt),
       'k': feat(f32(case.b, case.t, case.h, case.k)).astype(dt),
       'v': f32(case.b, case.t, case.h, case.v).astype(dt)}
  if op.gate:
    gate_shape = (case.b, case.t, case.h, case.k) if op.gate == 'channel' else (case.b, case.t, case.h)
    x['g'] = jax.nn.log_sigmoid(f32(*gate_shape)) / case.n
  if case.h0:
    h0 = f32(case.b, case.h, case.k, state_v)
    x['h0'] = h0.at[..., -1].set(jnp.abs(h0[..., -1])) if case.normalize else h0
  cot = (f32(case.b, case.t, case.h, case.v).astype(dt), f32(case.b, case.h, case.k, state_v))
  seg = jnp.asarray(make_segments(case.b, case.t, case.chunk)) if case.seg else None
  return x, cot, seg


# ---- the public op, every impl against impl='naive' (test_linear_attn.py, test_simple_gla.py) ----

@functools.partial(jax.jit, static_argnames=('op', 'impl', 'chunk', 'options'))
def run(x, cot, seg, *, op, impl, chunk, options=()):
  """(o, final_state, grads of sum(o*do) + sum(ht*dht) for every input)."""
  def f(x):
    return op.fn(*(x[n] for n in op.names), initial_state=x.get('h0'), output_final_state=True,
                 segment_ids=seg, impl=impl, chunk_size=chunk, **dict(options))
  (o, ht), vjp = jax.vjp(f, x)
  return o, ht, vjp(cot)[0]


@functools.lru_cache(maxsize=None)
def reference(op: Op, case: Case):
  x, cot, seg = make_inputs(op, case)
  options = tuple(op.options(case).items())
  return jax.device_get(run(x, cot, seg, op=op, impl='naive', chunk=case.chunk, options=options))


def check_matches_naive(op: Op, case: Case, impl: str) -> None:
  """Output, final state and the gradient of every input within fp32 tolerance of the oracle's."""
  x, cot, seg = make_inputs(op, case)
  o, ht, grads = run(x, cot, seg, op=op, impl=impl, chunk=case.chunk, options=tuple(op.options(case).items()))
  o_ref, ht_ref, grads_ref = reference(op, case)
  tol = TOL['float32']
  assert_close('o', o, o_ref, tol)
  assert_close('final_state', ht, ht_ref, tol)
  assert set(grads) == set(x)
  for name in x:
    assert_close(f'd{name}', grads[name], grads_ref[name], tol)


@functools.lru_cache(maxsize=None)
def run_bf16(op: Op, case: Case, impl: str):
  """Forward on case's bf16-rounded inputs (no initial state): in bf16 for the impl, upcast to fp32 for
  'naive'."""
  x, _, seg = make_inputs(op, case)
  dtype = jnp.float32 if impl == 'naive' else jnp.bfloat16
  x = {n: a.astype(jnp.bfloat16).astype(dtype) for n, a in x.items() if n != 'h0'}
  fwd = lambda x: op.fn(*(x[n] for n in op.names), output_final_state=True, segment_ids=seg, impl=impl,
                        **op.options(case))
  return jax.jit(fwd)(x)


def check_bf16_forward(op: Op, case: Case, impl: str) -> None:
  """o in bf16 and the final state in fp32, both within bf16 tolerance of the oracle on the same inputs."""
  o, ht = run_bf16(op, case, impl)
  o_ref, ht_ref = run_bf16(op, case, 'naive')
  assert o.dtype == jnp.bfloat16 and ht.dtype == jnp.float32
  assert_close('o', o, o_ref, TOL['bfloat16'])
  assert_close('final_state', ht, ht_ref, TOL['bfloat16'])


def check_two_halves_equal_whole(op: Op, case: Case, impl: str, cut: int) -> None:
  """The first `cut` tokens then the rest from the first part's final state equal the whole run."""
  x, _, _ = make_inputs(op, case)

  @jax.jit
  def run_part(x, h0):
    return op.fn(*(x[n] for n in op.names), initial_state=h0, output_final_state=True, impl=impl,
                 **op.options(case))

  o, ht = run_part(x, x['h0'])
  first, second = ({n: x[n][:, sl] for n in op.names} for sl in (slice(None, cut), slice(cut, None)))
  o1, h1 = run_part(first, x['h0'])
  o2, h2 = run_part(second, h1)
  assert_close('o', jnp.concatenate([o1, o2], axis=1), o, TOL['float32'])
  assert_close('final_state', h2, ht, TOL['float32'])


def check_bad_argument_raises(op: Op, case: Case, bad: dict, name: str) -> None:
  """The op called on case's inputs with `bad` (replaced or added arguments) raises ValueError matching name."""
  x, _, _ = make_inputs(op, case)
  args = {n: x[n] for n in op.names} | bad
  positional = [args.pop(n) for n in op.names]
  with pytest.raises(ValueError, match=name):
    op.fn(*positional, **args)


def check_bad_impl_raises(op: Op, case: Case) -> None:
  x, _, _ = make_inputs(op, case)
  with pytest.raises(ValueError, match='unknown impl'):
    op.fn(*(x[n] for n in op.names), impl='flash')


def check_long_bf16_chunk_finite(op: Op, n: float | None = None, normalize: bool = False) -> None:
  """T = 65536 in bf16 (B = H = 1, K = V = 16) through impl='chunk': o and the final state are finite.
  With normalize, q and k are elu + 1 features."""
  b, t, h, d = 1, 65536, 1, 16
  keys = jax.random.split(jax.random.key(0), len(op.names))
  q, k, v = (jax.random.normal(key, (b, t, h, d), jnp.bfloat16) for key in keys[:3])
  if normalize:
    q, k = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
  gates = [(jax.nn.log_sigmoid(jax.random.normal(keys[3], (b, t, h))) / n).astype(jnp.bfloat16)] if op.gate else []
  options = {'normalize': normalize} if op.normalize else {}
  fwd = lambda *a: op.fn(*a, output_final_state=True, impl='chunk', **options)
  o, ht = jax.jit(fwd)(q, k, v, *gates)
  assert bool(jnp.all(jnp.isfinite(o))) and bool(jnp.all(jnp.isfinite(ht)))


# ---- impl='kernel' against the oracle (test_simple_gla_kernel.py, test_gla_kernel.py) ----

@functools.partial(jax.jit, static_argnames=('fn', 'chunk'))
def run_fn(x, cot, *, fn, chunk=None):
  """(o, final_state, grads of sum(o*do) + sum(ht*dht) for every input) of fn(q, k, v, g, scale=K**-0.5,
  initial_state=h0[, chunk_size=chunk])."""
  kw = {} if chunk is None else {'chunk_size': chunk}

  def f(x):
    return fn(x['q'], x['k'], x['v'], x['g'], scale=x['q'].shape[-1] ** -0.5, initial_state=x.get('h0'), **kw)
  (o, ht), vjp = jax.vjp(f, x)
  return o, ht, vjp((cot[0].astype(o.dtype), cot[1]))[0]


def check_against_oracle(op: Op, case: Case, fn, naive, chunk: int | None = None) -> None:
  """fn on case's inputs against naive on their fp32 copies (helpers.assert_matches_oracle) at TOL[case.dtype]."""
  x, cot, _ = make_inputs(op, case)
  got = run_fn(x, cot, fn=fn, chunk=chunk)
  ref = run_fn(*upcast(x, cot), fn=naive, chunk=chunk)
  assert_matches_oracle(got, ref, x, TOL[case.dtype])


def check_segment_ids_not_implemented_and_auto_falls_back(op: Op, op_module, monkeypatch) -> None:
  """impl='kernel' refuses segment_ids; 'auto' on a GPU picks the kernel (recurrent for T = 1), and with
  segment_ids falls back to what 'chunk' computes."""
  x, _, _ = make_inputs(op, Case(1, 40, 1, 16, 16, n=1, h0=False))
  seg = jnp.asarray(np.repeat([[1, 2]], 20, axis=1))
  with pytest.raises(NotImplementedError, match='segment_ids'):
    op.fn(x['q'], x['k'], x['v'], x['g'], segment_ids=seg, impl='kernel')
  monkeypatch.setattr(op_module, 'default_backend', lambda: 'gpu')  # 'auto' as on a GPU
  assert op_module._auto_order(x['q'])[0] == 'kernel'
  assert op_module._auto_order(x['q'][:, :1])[0] == 'recurrent'
  fwd = lambda impl: jax.jit(lambda x, seg: op.fn(x['q'], x['k'], x['v'], x['g'], segment_ids=seg, impl=impl)[0])
  np.testing.assert_array_equal(fwd('auto')(x, seg), fwd('chunk')(x, seg))  # jitted: eager dispatch took 8 s


def check_long_bf16_kernel_finite(op: Op, n: float, d: int) -> None:
  """T = 65536 in bf16 (B = 1, H = 2, K = V = d) through impl='kernel': o, final state, all grads finite."""
  b, t, h = 1, 65536, 2
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (b, t, h, d), jnp.bfloat16) for key in keys[:3])
  gate_shape = (b, t, h, d) if op.gate == 'channel' else (b, t, h)
  g = jax.nn.log_sigmoid(jax.random.normal(keys[3], gate_shape)) / n

  def loss(q, k, v, g):
    o, ht = op.fn(q, k, v, g, output_final_state=True, impl='kernel')
    return jnp.sum(o.astype(jnp.float32)) + jnp.sum(ht), (o, ht)
  grads, (o, ht) = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, g)
  for a in (o, ht, *grads):
    assert bool(jnp.all(jnp.isfinite(a.astype(jnp.float32))))
