"""Test helpers shared by the suite: the DESIGN.md comparison metric and tolerances, op test cases,
script loading."""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

# DESIGN.md: relative RMS error ||a-b|| / ||b||.
TOL = {'float32': 1e-5, 'bfloat16': 5e-3}


def rel_rms(got, ref) -> float:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    denom = np.linalg.norm(ref.ravel())
    err = np.linalg.norm((got - ref).ravel())
    if denom == 0.0:
        return float(err)
    return float(err / denom)


def assert_close(name: str, got, ref, tol: float) -> None:
    """Asserts relative RMS error below tol (passes outright when max abs diff <= 1e-6, as fla does)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f'{name}: shape {got.shape} != {ref.shape}'
    assert np.all(np.isfinite(got)), f'{name}: non-finite values'
    if got.size == 0 or np.max(np.abs(got - ref)) <= 1e-6:
        return
    err = rel_rms(got, ref)
    assert err < tol, f'{name}: relative RMS error {err:.3e} >= {tol:.1e}'


def upcast(x: dict, cot: tuple) -> tuple[dict, tuple]:
    """The same values in fp32, for the oracle: inputs {name: array} and cotangents (dO, d final state)."""
    return ({n: np.asarray(v, np.float32) for n, v in x.items()},
            tuple(np.asarray(c, np.float32) for c in cot))


def assert_matches_oracle(got, ref, x: dict, tol: float) -> None:
    """got, ref: (o, final state, {input name: gradient}) of a state-carrying op run on the inputs x and by
    its oracle on their fp32 copies. o keeps q's dtype and the final state is fp32; every input has a
    gradient in its own dtype; o, the final state and each gradient are within tol of the oracle's."""
    (o, ht, grads), (o_ref, ht_ref, grads_ref) = got, ref
    assert o.dtype == x['q'].dtype and ht.dtype == np.float32, (o.dtype, ht.dtype)
    assert_close('o', o, o_ref, tol)
    assert_close('final_state', ht, ht_ref, tol)
    assert set(grads) == set(x), sorted(grads)
    for name in x:
        assert grads[name].dtype == x[name].dtype, name
        assert_close(f'd{name}', grads[name], grads_ref[name], tol)


class OpCase(NamedTuple):
    """One op test case: q, k [B, T, H, K], v [B, T, H, V] and the options below. str(case), the test id:
    'B2-T63-H2-K48-V60' then -n{n} (or no_gate_id where n is None), -norm, -h0, seg_id where set, then the
    parts that id_tail names: 'chunk' -> -C{chunk}, 'dtype' -> -{dtype}. id_tail, no_gate_id and seg_id are
    class attributes a file's subclass sets."""
    b: int
    t: int
    h: int
    k: int
    v: int
    n: float | None = None   # gate g = logsigmoid(x) / n (gated ops); agent_attention: the number of agents
    normalize: bool = False  # linear_attn's normalize: q, k (and the state's z column) positive
    h0: bool = False
    seg: bool = False        # packed segment_ids
    chunk: int = 64
    dtype: str = 'float32'   # of q, k, v and do; gates, h0 and dht stay fp32

    id_tail = ()
    no_gate_id = ''    # e.g. '-nogate', where a file runs its gated op without the gate too
    seg_id = '-seg'

    def __str__(self):
        s = f'B{self.b}-T{self.t}-H{self.h}-K{self.k}-V{self.v}'
        s += f'-n{self.n:g}' if self.n is not None else self.no_gate_id
        s += '-norm' if self.normalize else ''
        s += '-h0' if self.h0 else ''
        s += self.seg_id if self.seg else ''
        s += f'-C{self.chunk}' if 'chunk' in self.id_tail else ''
        return s + (f'-{self.dtype}' if 'dtype' in self.id_tail else '')


def load_script(path: str, name: str):
    """A repository script (e.g. 'benchmarks/kernel_parts.py') imported as module `name`, to call its main()."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
