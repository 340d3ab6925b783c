"""Sequence parallelism on 8 (fake CPU) devices, mesh (data=2, sequence=4): issue 8's Done-when 2."""

from helpers import TOL

LINEAR_FAMILY = ['linear_attn', 'simple_gla', 'gla', 'delta_rule', 'gated_delta_rule']
GATHERED_KV = ['softmax_attention', 'sigmoid_attention']


def test_every_op_equals_one_device_with_constant_communication(on_8_devices):
    """Outputs, final states and the gradients of every input (initial state and gates included)
    equal one device, with packed segments starting at, next to and inside device boundaries.
    The linear family's collectives (forward + backward, per device) move the same bytes at T=32
    and T=64: LASP-2 gathers states, not tokens. Softmax / sigmoid gather K and V, so theirs grow."""
    results = on_8_devices('sequence_ops')
    assert sorted(results) == sorted(LINEAR_FAMILY + GATHERED_KV)
    for op, r in results.items():
        for key in ('out', 'final_state', 'grads'):
            if key in r:
                assert r[key] < TOL['float32'], f'{op}: {key} relative RMS {r[key]:.2e}'
    for op in LINEAR_FAMILY:
        short, long = results[op]['bytes_T32'], results[op]['bytes_T64']
        assert short == long, f'{op}: communicated bytes grow with T: {short} -> {long}'
        assert short['all-gather'] > 0, f'{op}: no all-gather: not sequence-parallel?'
    for op in GATHERED_KV:
        r = results[op]
        assert r['bytes_T64']['all-gather'] == 2 * r['bytes_T32']['all-gather'], (op, r)


def test_hybrid_stack_equals_one_device(on_8_devices):
    """An LM with one layer of each linear-family kind and a softmax layer, on packed sequences:
    loss and every parameter gradient equal one device."""
    r = on_8_devices('hybrid_stack')
    assert r['loss'] < TOL['float32'], r
    assert r['grads'] < TOL['float32'], r
