"""Train state: a pure pytree (params, optimizer state, step, RNG) and the model's static graph."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from effattn import parallel
from effattn.config import Config
from effattn.models.lm import DecoderLM


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer steps taken = data position
    # nnx.State of the model's nnx.Param variables (fp32) and its nnx.BatchStat statistics (e.g.
    # routing centroids). Statistics get no gradient and no optimizer update: the train step updates
    # them after the optimizer step, through the modules' post_step_update (see split_params).
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2] key, split once per step


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """What a jitted function needs to rebuild the model from `params`: the graph and other state."""

    graphdef: Any
    rest: Any  # variables neither Param nor BatchStat (none for most kinds)

    def merge(self, *states) -> DecoderLM:
        return nnx.merge(self.graphdef, *states, self.rest)


def split_params(params) -> tuple[Any, Any]:
    """TrainState.params -> (trainable nnx.Param state, nnx.BatchStat statistics; often empty)."""
    return nnx.split_state(params, nnx.Param, nnx.BatchStat)


def build_model(cfg: Config, seed: int | jax.Array) -> DecoderLM:
    """seed: an int or a PRNG key (the same parameters for `s` and `jax.random.key(s)`)."""
    return DecoderLM(cfg.model, train_len=cfg.data.seq_len, rngs=nnx.Rngs(params=seed))


def create_train_state(
    cfg: Config, tx: optax.GradientTransformation, mesh: Mesh | None = None
) -> tuple[ModelDef, TrainState]:
    """A fresh train state, born sharded on `mesh` by effattn.parallel's rules (None: one device)."""
    mesh = mesh or parallel.single_device_mesh()

    # The key is an argument, not a constant: with no inputs, XLA constant-folds the whole
    # initialisation at compile time (minutes for a 125M model on one GPU).
    def init(key):
        model = build_model(cfg, key)
        _, params, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(split_params(params)[0]),
            rng=jax.random.PRNGKey(cfg.train.seed),
        )
        return state, rest

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(cfg, cfg.train.seed)))
    key = jax.random.key(cfg.train.seed)
    sharding = parallel.state_sharding(jax.eval_shape(init, key)[0], mesh)
    state, rest = jax.jit(init, out_shardings=(sharding, NamedSharding(mesh, P())))(key)
    return ModelDef(graphdef, rest), state


def param_count(params) -> int:
    """Trainable parameters (nnx.Param) in TrainState.params."""
    return int(sum(x.size for x in jax.tree.leaves(split_params(params)[0])))
