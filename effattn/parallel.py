"""Device mesh and partitioning rules: data, fsdp, tensor and sequence parallelism with jax.sharding.

The mesh has four axes, sized by ``config.mesh`` (one of them may be -1: the remaining devices;
the default ``data=-1`` uses every device for data parallelism, and one device needs no settings):

  data      the batch is split; parameters and optimizer state are replicated.
  fsdp      the batch is split, and every parameter matrix (and its optimizer state) is split along
            its largest dimension that divides evenly (ZeRO-3 / FSDP); the compiler gathers weights
            where a layer needs them.
  tensor    Megatron-style: projections into heads / the MLP hidden (wq, wk, wv, w1, w3, gates,
            convs) split their output dimension, projections out of them (wo, w2) their input
            dimension, the embedding its vocabulary; dimensions that do not divide stay whole.
  sequence  T is split; the attention ops run sequence-parallel (LASP-2 for the linear family,
            all-gathered K/V for softmax; effattn.ops.sequence_parallel), everything else is
            per-token and partitioned by the compiler.

Batches are split as [B over (data, fsdp), T over sequence]. The train step is jitted with these
shardings as out_shardings (parameters are born sharded: create_train_state jits the model's
initialisation with them), so the state keeps its layout from step to step; checkpoints restore
into whatever mesh the run has now (orbax reshards).

Several hosts: ``config.mesh.multihost=True``, or the environment variable JAX_COORDINATOR_ADDRESS,
makes make_mesh call ``jax.distributed.initialize()`` first (cluster auto-detection: SLURM, Open MPI,
TPU pods; or JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID). Every host then
runs the same program and feeds its own shards of the (deterministic) global batch.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from effattn.config import ConfigError, MeshConfig

AXES = ('data', 'fsdp', 'tensor', 'sequence')
BATCH_AXES = ('data', 'fsdp')  # the batch dimension is split over both
# modules whose input dimension `tensor` splits (Megatron's row-parallel layers)
ROW_PARALLEL = ('wo', 'w2')


def initialize_distributed(cfg: MeshConfig) -> None:
    """jax.distributed.initialize() once, when config.mesh.multihost or JAX_COORDINATOR_ADDRESS asks."""
    if jax.distributed.is_initialized():
        return
    if not (cfg.multihost or os.environ.get('JAX_COORDINATOR_ADDRESS')):
        return
    env = {
        'num_processes': os.environ.get('JAX_NUM_PROCESSES'),
        'process_id': os.environ.get('JAX_PROCESS_ID'),
    }
    jax.distributed.initialize(**{k: int(v) for k, v in env.items() if v is not None})


def mesh_shape(cfg: MeshConfig, num_devices: int) -> dict[str, int]:
    """Axis sizes with -1 resolved; raises ConfigError naming the key when they do not fit."""
    sizes = {a: getattr(cfg, a) for a in AXES}
    fixed = math.prod(s for s in sizes.values() if s != -1)
    free = [a for a, s in sizes.items() if s == -1]
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f'config.mesh.{free[0]}=-1: the {num_devices} devices do not divide by the other '
                f'axes ({fixed} = '
                + ' * '.join(f'{a}={s}' for a, s in sizes.items() if s != -1)
                + ')'
            )
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ConfigError(
            'config.mesh: '
            + ' * '.join(f'{a}={s}' for a, s in sizes.items())
            + f' = {math.prod(sizes.values())} devices, but {num_devices} are present; make the '
            'product equal the device count, or set one axis to -1 (the remaining devices)'
        )
    return sizes


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor, sequence) mesh over `devices` (default: all, on every host)."""
    initialize_distributed(cfg)
    devices = jax.devices() if devices is None else list(devices)
    sizes = mesh_shape(cfg, len(devices))
    return jax.make_mesh(
        tuple(sizes.values()), AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices
    )


def single_device_mesh() -> Mesh:
    """A mesh of the default device alone (what a run with no mesh settings uses on one device)."""
    return make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])


def describe(mesh: Mesh) -> str:
    """'data=2 fsdp=4 tensor=1 sequence=1 (8 gpu devices, 1 host(s))'."""
    axes = ' '.join(f'{a}={n}' for a, n in mesh.shape.items())
    hosts = len({d.process_index for d in mesh.devices.flat})
    return f'{axes} ({mesh.size} {mesh.devices.flat[0].platform} devices, {hosts} host(s))'


def check_batch(mesh: Mesh, batch_size: int) -> None:
    n = mesh.shape['data'] * mesh.shape['fsdp']
    if batch_size % n:
        raise ConfigError(
            f'config.train.batch_size={batch_size} must be a multiple of config.mesh.data * '
            f'config.mesh.fsdp = {n} (the batch is split over both)'
        )


# ------------------------------------------------------------------------------------ parameters


def _names(path) -> tuple[str, ...]:
    """('blocks', '0', 'attn', 'wq', 'kernel') from a pytree key path (nnx's trailing 'value' dropped)."""
    names = tuple(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
    return names[:-1] if names and names[-1] == 'value' else names


def param_spec(names: tuple[str, ...], shape: tuple[int, ...], sizes: dict[str, int]) -> P:
    """The PartitionSpec of one parameter (module/param names, shape, mesh axis sizes).

    Vectors (norm gains, biases, per-head constants) are replicated. A matrix gets `tensor` on its
    output dimension (row-parallel modules and the embedding: its first), then `fsdp` on its
    largest remaining dimension; an axis goes only where the dimension divides by its size.
    """
    if len(shape) < 2:
        return P()
    spec: list[Any] = [None] * len(shape)
    module, name = (names[-2] if len(names) > 1 else ''), names[-1]
    tdim = 0 if (module in ROW_PARALLEL or name == 'embedding') else len(shape) - 1
    if sizes.get('tensor', 1) > 1 and shape[tdim] % sizes['tensor'] == 0:
        spec[tdim] = 'tensor'
    f = sizes.get('fsdp', 1)
    if f > 1:
        for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if spec[d] is None and shape[d] % f == 0:
                spec[d] = 'fsdp'
                break
    return P(*spec)


def param_sharding(params: Any, mesh: Mesh) -> Any:
    """The params tree (arrays or ShapeDtypeStructs) -> the same tree of NamedShardings."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, param_spec(_names(path), x.shape, mesh.shape)), params
    )


def follow_params(tree: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
    """Shardings for `tree` (optimizer state): a leaf whose key path ends with a parameter's path and
    that has its shape gets that parameter's sharding (Adam's mu, nu, ...); others are replicated."""
    by_path = {}
    for (path, p), s in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(shardings)
    ):
        by_path[_names(path)] = (tuple(p.shape), s)
    replicated = NamedSharding(mesh, P())

    def pick(path, x):
        names = _names(path)
        for i in range(len(names)):
            shape, s = by_path.get(names[i:], (None, None))
            if s is not None and shape == tuple(x.shape):
                return s
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def state_sharding(state: Any, mesh: Mesh) -> Any:
    """A TrainState (concrete or abstract) -> the TrainState of its NamedShardings on `mesh`."""
    params = param_sharding(state.params, mesh)
    replicated = NamedSharding(mesh, P())
    return state.replace(
        step=replicated,
        params=params,
        opt_state=follow_params(state.opt_state, state.params, params, mesh),
        rng=replicated,
    )


def sharding_of(tree: Any) -> Any:
    """The shardings of a tree of jax.Arrays (e.g. the train state, to keep them in a jitted step)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def mesh_of(shardings: Any) -> Mesh | None:
    leaves = [s for s in jax.tree.leaves(shardings) if isinstance(s, NamedSharding)]
    return leaves[0].mesh if leaves else None


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of `tree`'s arrays held by each device (addressable shards)."""
    held: dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held


# ----------------------------------------------------------------------------------------- batches


def batch_spec(ndim: int) -> P:
    """[B, T, ...]: B over (data, fsdp), T over sequence."""
    return P(*(BATCH_AXES, 'sequence')[:ndim])


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host arrays (the same global batch on every host) -> global jax.Arrays split on `mesh`."""

    def put(x):
        x = np.asarray(x)
        sharding = NamedSharding(mesh, batch_spec(x.ndim))
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return {k: put(x) for k, x in batch.items()}


# ------------------------------------------------------------------------------------ tracing


def on_mesh(mesh: Mesh | None) -> Callable:
    """Decorator: trace the function with `mesh` as the current mesh (jax.sharding's abstract mesh),
    so that the attention ops see its `sequence` axis. No-op for None."""

    def wrap(fn):
        if mesh is None:
            return fn

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return fn(*args, **kwargs)

        return traced

    return wrap
