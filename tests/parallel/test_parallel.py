"""effattn.parallel's rules and checks, and the sequence-parallel switch, on one device."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from effattn import config as config_lib
from effattn import parallel
from effattn.ops import linear_attn, sequence_parallel


@pytest.mark.parametrize(
    'names, shape, sizes, spec',
    [
        # column-parallel projection into heads: tensor on the output dim, fsdp on the other
        (
            ('blocks', '0', 'attn', 'wq', 'kernel'),
            (32, 64),
            {'tensor': 2, 'fsdp': 4},
            P('fsdp', 'tensor'),
        ),
        # row-parallel projection out of heads / the MLP hidden
        (
            ('blocks', '0', 'attn', 'wo', 'kernel'),
            (64, 32),
            {'tensor': 2, 'fsdp': 4},
            P('tensor', 'fsdp'),
        ),
        (('blocks', '1', 'mlp', 'w2', 'kernel'), (88, 32), {'tensor': 2}, P('tensor', None)),
        # vocab-parallel embedding
        (('embed', 'embedding'), (64, 32), {'tensor': 2, 'fsdp': 2}, P('tensor', 'fsdp')),
        # fsdp alone: the largest dimension that divides
        (('blocks', '0', 'mlp', 'w1', 'kernel'), (32, 88), {'fsdp': 8}, P(None, 'fsdp')),
        (('blocks', '0', 'mlp', 'w1', 'kernel'), (32, 12), {'fsdp': 8}, P('fsdp', None)),
        # dimensions that do not divide stay whole; vectors are replicated
        (('blocks', '0', 'attn', 'wb', 'kernel'), (32, 4), {'tensor': 8}, P(None, None)),
        (('blocks', '0', 'attn_norm', 'scale'), (32,), {'tensor': 2, 'fsdp': 2}, P()),
        (('blocks', '4', 'attn', 'q_conv', 'weight'), (4, 32), {'tensor': 2}, P(None, 'tensor')),
    ],
)
def test_partition_rules(names, shape, sizes, spec):
    assert parallel.param_spec(names, shape, sizes) == spec


def test_mesh_shape_resolves_minus_one_and_names_the_key():
    cfg = config_lib.MeshConfig(data=-1, fsdp=2, tensor=1, sequence=2)
    assert parallel.mesh_shape(cfg, 8) == {'data': 2, 'fsdp': 2, 'tensor': 1, 'sequence': 2}
    assert parallel.mesh_shape(config_lib.MeshConfig(), 1)['data'] == 1  # no settings, one device
    with pytest.raises(config_lib.ConfigError, match=r'config\.mesh: .* 4 devices, but 8'):
        parallel.mesh_shape(config_lib.MeshConfig(data=2, fsdp=2), 8)
    with pytest.raises(config_lib.ConfigError, match=r'config\.mesh\.data=-1'):
        parallel.mesh_shape(config_lib.MeshConfig(data=-1, fsdp=3), 8)


@pytest.mark.parametrize(
    'edit, key',
    [
        ({'tensor': 0}, r'config\.mesh\.tensor'),
        ({'data': -1, 'fsdp': -1}, r'config\.mesh\.fsdp'),
        ({'data': 1, 'sequence': 3}, r'config\.mesh\.sequence'),  # seq_len 64
        ({'data': 3}, r'config\.train\.batch_size'),  # batch 64
    ],
)
def test_mesh_config_errors_name_the_key(edit, key):
    c = config_lib.default_config()
    for k, v in edit.items():
        setattr(c.mesh, k, v)
    with pytest.raises(config_lib.ConfigError, match=key):
        config_lib.validate(c)


def test_sequence_parallel_switch():
    """Ops go sequence-parallel only while traced on a mesh whose `sequence` axis is > 1; lengths
    that do not split evenly are an error naming the config key."""
    assert not sequence_parallel.active()
    mesh = AbstractMesh((4,), ('sequence',), axis_types=(AxisType.Auto,))
    with jax.sharding.use_abstract_mesh(mesh):
        assert sequence_parallel.active()
        ok = jax.ShapeDtypeStruct((1, 8, 1, 4), jnp.float32)
        o, ht = jax.eval_shape(lambda q: linear_attn(q, q, q, output_final_state=True), ok)
        assert o.shape == (1, 8, 1, 4) and ht.shape == (1, 1, 4, 4)
        bad = jax.ShapeDtypeStruct((1, 6, 1, 4), jnp.float32)
        with pytest.raises(ValueError, match=r'T=6 .*config\.mesh\.sequence'):
            jax.eval_shape(lambda q: linear_attn(q, q, q), bad)
    one = AbstractMesh((1,), ('sequence',), axis_types=(AxisType.Auto,))
    with jax.sharding.use_abstract_mesh(one):
        assert not sequence_parallel.active()


def test_one_device_needs_no_mesh_settings():
    cfg = config_lib.validate(config_lib.default_config())
    mesh = parallel.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'tensor': 1, 'sequence': 1}
