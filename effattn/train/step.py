"""The jitted train and eval steps: pure functions of (TrainState, batch)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from effattn.train.state import ModelDef, TrainState

IGNORE = -100


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
):
    """Returns train_step(state, batch) -> (state, metrics), jitted with the state donated.

    head: 'lm' (labels [B, T], -100 = no target) or 'classify' (labels [B], one class per row).

    max_targets: an upper bound on labelled positions per row (MQAR: the largest num_kv_pairs).
    The output projection then runs on those positions only, which for an 8192-token vocabulary
    is most of the step's cost; the loss and gradients are unchanged.
    """

    def loss_fn(params, batch):
        model = model_def.merge(params)
        if head == 'classify':
            return masked_loss_and_accuracy(model.classify(batch['inputs']), batch['labels'])
        hidden = model.hidden(batch['inputs'], segment_ids=batch.get('segment_ids'))
        labels = batch['labels']
        if max_targets is not None and max_targets < labels.shape[1]:
            idx, labels = labelled_positions(labels, max_targets)
            hidden = jnp.take_along_axis(hidden, idx[:, :, None], axis=1)
        return masked_loss_and_accuracy(model.logits(hidden), labels)

    @partial(jax.jit, donate_argnums=(0,))
    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, _ = jax.random.split(state.rng)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(
            metrics,
            grad_norm=optax.tree.norm(grads),
            update_norm=optax.tree.norm(updates),
            lr=schedule(state.step),
        )
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    return train_step


def make_predict(model_def: ModelDef, head: str = 'lm'):
    """predict(params, inputs) -> argmax tokens [B, T] ('lm') or classes [B] ('classify'), jitted."""

    @jax.jit
    def predict(params, inputs):
        model = model_def.merge(params)
        logits = model.classify(inputs) if head == 'classify' else model(inputs)
        return jnp.argmax(logits, axis=-1)

    return predict
