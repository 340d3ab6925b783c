"""The jitted train and eval steps: pure functions of (TrainState, batch)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from effattn import parallel
from effattn.train.state import ModelDef, TrainState, split_params

IGNORE = -100
AUX_LOSS = 'aux_loss'  # modules sow (nnx.Intermediate) values under this name: added to the loss


def masked_loss_and_accuracy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Mean cross-entropy and accuracy over positions whose label is not -100."""
    mask = labels != IGNORE
    safe = jnp.where(mask, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    n = jnp.maximum(mask.sum(), 1)
    loss = jnp.sum(jnp.where(mask, ce, 0.0)) / n
    correct = jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == safe, False))
    return loss, {'loss': loss, 'accuracy': correct / n, 'num_targets': mask.sum()}


def labelled_positions(labels: jax.Array, max_targets: int) -> tuple[jax.Array, jax.Array]:
    """Indices [B, max_targets] of the (first) labelled positions of each row, and their labels.

    Rows with fewer targets are filled with unlabelled positions (label -100, ignored by the loss).
    """
    order = jnp.argsort(labels == IGNORE, axis=1, stable=True)[:, :max_targets]
    return order, jnp.take_along_axis(labels, order, axis=1)


def make_train_step(
    model_def: ModelDef,
    tx: optax.GradientTransformation,
    schedule,
    max_targets: int | None = None,
    head: str = 'lm',
    state_sharding: TrainState | None = None,
):
    """Returns train_step(state, batch) -> (state, metrics), jitted with the state donated.

    state_sharding: the state's shardings on a device mesh (effattn.parallel.sharding_of(state)).
    The new state keeps them, and the step is traced on that mesh, so that the attention ops see
    its `sequence` axis (sequence parallelism). None: wherever the inputs are (one device).

    head: 'lm' (labels [B, T], -100 = no target) or 'classify' (labels [B], one class per row).

    max_targets: an upper bound on labelled positions per row (MQAR: the largest num_kv_pairs).
    The output projection then runs on those positions only, which for an 8192-token vocabulary
    is most of the step's cost; the loss and gradients are unchanged.
    """

    def forward(model, batch):
        if head == 'classify':
            return masked_loss_and_accuracy(model.classify(batch['inputs']), batch['labels'])
        hidden = model.hidden(batch['inputs'], segment_ids=batch.get('segment_ids'))
        labels = batch['labels']
        if max_targets is not None and max_targets < labels.shape[1]:
            idx, labels = labelled_positions(labels, max_targets)
            hidden = jnp.take_along_axis(hidden, idx[:, :, None], axis=1)
        return masked_loss_and_accuracy(model.logits(hidden), labels)

    def loss_fn(params, stats, batch):
        """The task loss plus every `aux_loss` modules sowed; aux: (metrics, sown values)."""
        model = model_def.merge(params, stats)
        (loss, metrics), sown = nnx.capture(forward, nnx.Intermediate)(model, batch)
        aux = sown_aux_loss(sown)
        if aux is not None:  # metrics['loss'] stays the task loss
            loss, metrics = loss + aux, dict(metrics, aux_loss=aux)
        return loss, (metrics, sown)

    @partial(jax.jit, donate_argnums=(0,), out_shardings=(state_sharding, None))
    @parallel.on_mesh(parallel.mesh_of(state_sharding))
    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, _ = jax.random.split(state.rng)
        params, stats = split_params(state.params)
        (_, (metrics, sown)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, batch
        )
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        stats = apply_post_step_updates(model_def, params, stats, sown)
        params = nnx.merge_state(params, stats)
        metrics = dict(
            metrics,
            grad_norm=optax.tree.norm(grads),
            update_norm=optax.tree.norm(updates),
            lr=schedule(state.step),
        )
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    return train_step


def sown_aux_loss(sown) -> jax.Array | None:
    """The sum of every `aux_loss` value modules sowed in the forward; None when there is none."""
    terms = [
        leaf
        for path, var in nnx.to_flat_state(sown)
        if path[-1] == AUX_LOSS
        for leaf in jax.tree.leaves(var.get_value())
    ]
    return sum(terms) if terms else None


def apply_post_step_updates(model_def: ModelDef, params, stats, sown):
    """After the optimizer step, outside autodiff: calls `module.post_step_update(values)` on each
    module that defines it, with the values it sowed in this step's forward ({name: value}), and
    returns the updated nnx.BatchStat statistics (e.g. the routing kind's EMA centroid update)."""
    if not jax.tree.leaves(stats):
        return stats
    model = model_def.merge(params, stats)
    by_module: dict[tuple, dict] = {}
    for path, var in nnx.to_flat_state(sown):
        by_module.setdefault(tuple(path[:-1]), {})[path[-1]] = var.get_value()
    for path, module in nnx.iter_modules(model):
        hook = getattr(module, 'post_step_update', None)
        if hook is not None and tuple(path) in by_module:
            hook(by_module[tuple(path)])
    return nnx.state(model, nnx.BatchStat)


def make_predict(model_def: ModelDef, head: str = 'lm'):
    """predict(params, inputs) -> argmax tokens [B, T] ('lm') or classes [B] ('classify'), jitted."""

    @jax.jit
    def predict(params, inputs):
        model = model_def.merge(params)
        logits = model.classify(inputs) if head == 'classify' else model(inputs)
        return jnp.argmax(logits, axis=-1)

    return predict
