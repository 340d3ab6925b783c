"""Long sequences in bf16: every chunk impl stays finite at T = 65536 (DESIGN.md, Numerics).

B = 1, H = 1, D = 16, bf16 inputs; gates at the extremes of the op tests, g = logsigmoid(x) / n with
n = 0.1 (fast decay: chunk-local sums reach hundreds of nats, so any exp of a difference of global or
long cumsums overflows) and n = 16 (slow decay: the state keeps ~T tokens); the delta rules' beta =
sigmoid(8 x), mostly near 0 or 1 (tests/ops/test_*delta_rule.py's forward-only T = 65536 runs rely on
this). The forward output, the final state and the gradients of sum(o * do) with respect to every
input must contain no NaN or inf.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effattn.ops.delta_rule import delta_rule
from effattn.ops.gated_delta_rule import gated_delta_rule
from effattn.ops.gla import gla
from effattn.ops.linear_attn import linear_attn
from effattn.ops.sigmoid_attention import sigmoid_attention
from effattn.ops.simple_gla import simple_gla
from effattn.ops.softmax_attention import softmax_attention

# softmax and sigmoid chunk at T = 65536 take ~80 s each on 2 CPU cores (their O(T^2) work):
# marked slow; the linear-family ops take a few seconds each and run in the default suite.
SLOW = {'softmax_attention', 'sigmoid_attention'}

T = 65536
D = 16
BF16 = jnp.bfloat16


def _inputs(op: str, n: float | None, seed: int = 0):
    """Differentiable inputs in call order (bf16) and the cotangent do (fp32), B = H = 1."""
    r = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
    q, k, v = f(1, T, 1, D), f(1, T, 1, D), f(1, T, 1, D)
    if op in ('delta_rule', 'gated_delta_rule'):  # the caller L2-normalises q and k
        q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
        k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    args = [q, k, v]
    if op in ('simple_gla', 'gated_delta_rule'):
        args.append(jax.nn.log_sigmoid(f(1, T, 1)) / n)
    elif op == 'gla':
        args.append(jax.nn.log_sigmoid(f(1, T, 1, D)) / n)
    if op in ('delta_rule', 'gated_delta_rule'):  # beta extremes too: mostly near 0 or 1
        args.append(jax.nn.sigmoid(8 * f(1, T, 1)))
    return tuple(x.astype(BF16) for x in args), f(1, T, 1, D)


def _call(op: str, *xs):
    """(o, final_state or None) of the op's chunk impl."""
    if op == 'softmax_attention':
        return softmax_attention(*xs, impl='chunk'), None
    if op == 'sigmoid_attention':
        return sigmoid_attention(*xs, impl='chunk'), None
    fn = {
        'linear_attn': linear_attn,
        'simple_gla': simple_gla,
        'gla': gla,
        'delta_rule': delta_rule,
        'gated_delta_rule': gated_delta_rule,
    }[op]
    return fn(*xs, impl='chunk', output_final_state=True)


@functools.partial(jax.jit, static_argnames='op')
def _fwd_bwd(xs, do, op):
    def loss(xs):
        o, ht = _call(op, *xs)
        return jnp.sum(o.astype(jnp.float32) * do), (o, ht)

    (_, (o, ht)), grads = jax.value_and_grad(loss, has_aux=True)(xs)
    return o, ht, grads


CASES = [
    ('linear_attn', None),
    ('simple_gla', 0.1),
    ('simple_gla', 16.0),
    ('gla', 0.1),
    ('gla', 16.0),
    ('delta_rule', None),
    ('gated_delta_rule', 0.1),
    ('gated_delta_rule', 16.0),
    ('softmax_attention', None),
    ('sigmoid_attention', None),
]
CASES = [pytest.param(op, n, marks=[pytest.mark.slow] if op in SLOW else []) for op, n in CASES]


@pytest.mark.parametrize(
    'op,n', CASES, ids=[p.values[0] + ('' if p.values[1] is None else f'-n{p.values[1]:g}') for p in CASES]
)
def test_chunk_finite_at_64k_bf16(op, n):
    xs, do = _inputs(op, n)
    o, ht, grads = _fwd_bwd(xs, do, op)
    assert o.shape == (1, T, 1, D) and o.dtype == BF16, (o.shape, o.dtype)
    named = {'o': o, **({'final_state': ht} if ht is not None else {})}
    names = ['dq', 'dk', 'dv'] + {
        'simple_gla': ['dg'],
        'gla': ['dg'],
        'delta_rule': ['dbeta'],
        'gated_delta_rule': ['dg', 'dbeta'],
    }.get(op, [])
    named.update(zip(names, grads))
    for name, x in named.items():
        x = np.asarray(x.astype(jnp.float32))
        bad = ~np.isfinite(x)
        assert not bad.any(), (
            f'{op} (n={n}): {name} has {bad.sum()} non-finite values of {x.size}, '
            f'first at flat index {np.flatnonzero(bad)[0]}'
        )
    # A NaN turned into zeros by a guard would pass the check above: the output must carry signal.
    assert np.any(np.asarray(o.astype(jnp.float32)) != 0), f'{op}: o is all zeros'
