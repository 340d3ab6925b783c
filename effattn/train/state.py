"""Train state: a pure pytree (params, optimizer state, step, RNG) and the model's static graph."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from effattn.config import Config
from effattn.models.lm import DecoderLM


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer steps taken = data position
    params: Any  # nnx.State of the model's nnx.Param variables (fp32)
    opt_state: Any
    rng: jax.Array  # uint32 [2] key, split once per step


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """What a jitted function needs to rebuild the model from `params`: the graph and other state."""

    graphdef: Any
    rest: Any  # non-Param variables (none for most kinds)

    def merge(self, params) -> DecoderLM:
        return nnx.merge(self.graphdef, params, self.rest)


def build_model(cfg: Config, seed: int) -> DecoderLM:
    return DecoderLM(cfg.model, train_len=cfg.data.seq_len, rngs=nnx.Rngs(params=seed))


def create_train_state(
    cfg: Config, tx: optax.GradientTransformation
) -> tuple[ModelDef, TrainState]:
    model = build_model(cfg, cfg.train.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(cfg.train.seed),
    )
    return ModelDef(graphdef, rest), state


def param_count(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
