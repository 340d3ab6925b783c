"""gated_delta_rule: every impl against the fp32 naive oracle (output, final state, gradients)."""
from __future__ import annotations

import numpy as np
import pytest

import delta_family_checks as checks
from delta_family_checks import Case, Op
from effattn.ops.gated_delta_rule import gated_delta_rule

OP = Op(gated_delta_rule, gates=('g', 'beta'))

CASES = [  # n: gate extreme g = logsigmoid(x) / n
    Case(2, 63, 2, 48, 60, h0=True, seg=False, n=1.0),
    Case(1, 130, 2, 60, 48, h0=False, seg=False, n=16.0),
    Case(2, 130, 1, 48, 60, h0=True, seg=True, n=0.1),
    Case(2, 130, 2, 48, 60, h0=False, seg=True, n=1.0),
    Case(1, 1, 2, 48, 60, h0=True, seg=False, n=1.0),
    Case(2, 63, 1, 32, 32, h0=True, seg=True, chunk=16, n=16.0),
]


_Base = checks.impl_test_base(OP, CASES, bf16_case=CASES[2], halves_case=CASES[1])


class TestRecurrent(_Base):
    impl = 'recurrent'


class TestChunk(_Base):
    impl = 'chunk'

    @pytest.mark.slow(reason='forward only; tests/ops/test_long_sequence.py::test_chunk_finite_at_64k_bf16'
                      '[gated_delta_rule-n0.1] and [-n16] check the same T = 65536 bf16 chunk run at both gate '
                      'extremes, betas near 0 or 1, forward and every gradient')
    def test_long_bf16_extreme_gates_finite(self):
        checks.check_long_bf16_chunk_finite(OP, h=3, n=np.array([0.1, 1.0, 16.0]))  # one gate extreme per head


def test_auto_dispatch_matches_naive():
    checks.check_auto_dispatch_matches_naive(OP, (CASES[4], CASES[0]))  # T == 1: recurrent, T > 1: chunk


def test_final_state_none_by_default():
    checks.check_final_state_none_by_default(OP, CASES[4])


def test_unknown_impl_raises():
    checks.check_unknown_impl_raises(OP, CASES[4])


@pytest.mark.parametrize('name', ['q', 'k', 'v', 'g', 'beta', 'initial_state', 'segment_ids'])
def test_wrong_shape_raises(name):
    checks.check_wrong_shape_raises(OP, CASES[4], name)
