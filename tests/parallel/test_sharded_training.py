"""Sharded training on 8 (fake CPU) devices: issue 8's Done-when 1, 3 and 4."""

from helpers import TOL


def test_train_step_on_meshes_equals_one_device(on_8_devices):
    """A train step on (data=8), (data=2, fsdp=4), (fsdp=2, tensor=2, data=2) and (data=2,
    sequence=4) gives one device's loss and gradients (relative RMS < 1e-5 in fp32), and the new
    state keeps the mesh layout."""
    results = on_8_devices('train_step')
    assert set(results) == {
        'data=8',
        'data=2,fsdp=4',
        'fsdp=2,tensor=2,data=2',
        'data=2,sequence=4',
    }
    for mesh, r in results.items():
        for key in ('loss', 'grads', 'grad_norm'):
            assert r[key] < TOL['float32'], f'mesh ({mesh}): {key} relative RMS {r[key]:.2e}'
        assert r['state_keeps_sharding'], f'mesh ({mesh}): the step changed the state layout'


def test_checkpoint_saved_on_one_mesh_restores_on_another(on_8_devices, tmp_path):
    """The training loop saves on (data=8); the state restores onto (fsdp=4, data=2), sharded there,
    and the next two steps have the losses of the run that continues on (data=8)."""
    r = on_8_devices('checkpoint_reshard', str(tmp_path / 'run'))
    assert r['restored_step'] == 2
    assert r['fsdp_specs_used'] > 0, 'restored parameters are not sharded over fsdp'
    assert r['data8_specs_sharded'] == 0, 'data=8 parameters should be replicated'
    for i, err in enumerate(r['loss_rel']):
        assert err < TOL['float32'], f'step {3 + i}: losses {r["losses"]}'
    assert r['load_run_step'] == 2, 'eval.run.load_run could not restore it on one device'


def test_fsdp_8_holds_an_eighth_of_the_parameters(on_8_devices):
    """With fsdp=8 every device holds about 1/8 of the parameter and AdamW-moment bytes."""
    r = on_8_devices('fsdp_bytes')
    for what in ('', 'opt_'):
        total, held = r[f'{what}total'], r[f'{what}per_device']
        assert len(held) == 8
        assert max(held) <= 1.1 * total / 8, (
            f'{what or "param "}bytes per device {held}, total {total}'
        )
