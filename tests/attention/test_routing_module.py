"""Routing attention module (Roy et al. 2021): local + routing heads, causal argmax routing, k-means
statistics surfaced to the train step (commitment loss in the loss, EMA centroids after the step)."""

import jax
import jax.numpy as jnp
import linear_family_checks as checks
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import TOL, assert_close

from effattn import config as config_lib
from effattn.train import step as step_lib
from effattn.train.state import create_train_state, split_params


def test_output_shape_and_no_side_effects():
    m = checks.build('routing', num_clusters=3)
    before = nnx.state(m)
    y = checks.forward(m, checks.inputs())
    assert y.shape == (checks.B, checks.T, checks.D) and bool(jnp.all(jnp.isfinite(y)))
    # outside the train step's capture the forward records nothing on the module
    assert jax.tree.structure(nnx.state(m)) == jax.tree.structure(before)
    assert isinstance(m.centroids, nnx.BatchStat) and not isinstance(m.centroids, nnx.Param)
    assert m.centroids.shape == (1, 3, 16)


@pytest.mark.parametrize(
    'attn',
    [{'num_clusters': 3}, {'num_clusters': 2, 'window': 4}, {'local_heads': 0, 'num_clusters': 4}],
    ids=['full-local', 'window4', 'all-routing'],
)
def test_decode_equals_forward(attn):
    checks.check_decode_equals_forward('routing', **attn)


def test_packed_segments():
    checks.check_packed_segments('routing', num_clusters=3, window=4)


def test_routing_heads_attend_within_their_cluster_causally():
    """A routing head's output at t is softmax attention over the keys s <= t of t's cluster."""
    m = checks.build('routing', local_heads=0, num_clusters=3)
    x = checks.inputs()
    pos = checks.positions()
    _, _, u, x_hat, v = m._project(x, pos)
    cluster = np.asarray(m._assign(x_hat))
    assert len(np.unique(cluster)) > 1  # the test means something
    y = checks.forward(m, x)
    s = np.einsum('btrd,bsrd->brts', np.asarray(u, np.float64), np.asarray(x_hat, np.float64))
    s = s * 16**-0.5
    t = checks.T
    mask = (np.arange(t)[:, None] >= np.arange(t)[None, :])[None, None] & (
        cluster.transpose(0, 2, 1)[..., :, None] == cluster.transpose(0, 2, 1)[..., None, :]
    )
    s = np.where(mask, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum('brts,bsrv->btrv', w, np.asarray(v, np.float64))
    ref = m.wo(jnp.asarray(o.reshape(checks.B, t, -1), jnp.float32))
    assert_close('routing head', y, ref, TOL['float32'])


def test_bad_config_names_the_key():
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.local_heads'):
        checks.model_config('routing', local_heads=2)  # 2 heads: none left to route
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.num_clusters'):
        checks.model_config('routing', num_clusters=0)
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.attention\.centroid_decay'):
        checks.model_config('routing', centroid_decay=1.0)
    with pytest.raises(
        config_lib.ConfigError, match=r'config\.model\.attention\.commitment_weight'
    ):
        checks.model_config('routing', commitment_weight=-1.0)


# ---------------------------------------------------------------------------- the train step hook


def _train_setup(**attn):
    c = config_lib.default_config()
    c.model.vocab_size = c.data.vocab_size = 97
    c.data.train_settings = c.data.eval_settings = ((16, 2),)
    c.data.seq_len = 16
    c.model.d_model = 32
    c.model.num_layers = 1
    c.model.mlp = 'none'
    c.model.attention.kind = 'routing'
    c.model.attention.num_heads = 2
    c.model.attention.num_clusters = 3
    c.model.attention.centroid_decay = 0.5
    c.train.weight_decay = 0.1  # would move the centroids if the optimizer saw them
    for k, v in attn.items():
        setattr(c.model.attention, k, v)
    cfg = config_lib.validate(c)
    tx = optax.adamw(1e-2, weight_decay=0.1)
    model_def, state = create_train_state(cfg, tx)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 16), 0, 97)
    batch = {'inputs': tokens, 'labels': jnp.where(jnp.arange(16) % 4 == 3, tokens, -100)}
    return cfg, tx, model_def, state, batch


def _centroids(params):
    _, stats = split_params(params)
    ((path, var),) = list(nnx.to_flat_state(stats))
    assert path[-1] == 'centroids'
    return np.asarray(var.get_value())


def test_train_step_updates_centroids_by_ema_not_by_gradient():
    """Centroids live in the state beside the params (BatchStat), get no optimizer state, and one
    train step moves them exactly by the EMA k-means update of the statistics its forward sowed."""
    _, tx, model_def, state, batch = _train_setup()
    params, stats = split_params(state.params)
    assert len(jax.tree.leaves(stats)) == 1
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(params))
    mu0 = _centroids(state.params)
    # expected update from the same forward the step runs (before the parameter update)
    model = model_def.merge(params, stats)
    attn = model.blocks[0].attn
    _, sown = nnx.capture(lambda m, x: m(x), nnx.Intermediate)(model, batch['inputs'])
    sums = np.asarray(sown['blocks'][0]['attn']['centroid_sums'].get_value()[0])
    counts = np.asarray(sown['blocks'][0]['attn']['centroid_counts'].get_value()[0])
    assert counts.sum() == 4 * 16  # every token of the routing head counted once
    new = sums / np.sqrt((sums**2).sum(-1, keepdims=True) + 1e-6)
    new = np.where(counts[..., None] > 0, new, mu0)
    expected = 0.5 * mu0 + 0.5 * new
    assert attn.centroid_decay == 0.5
    train_step = step_lib.make_train_step(model_def, tx, optax.constant_schedule(1e-2))
    state, _ = train_step(state, batch)
    mu1 = _centroids(state.params)
    assert not np.allclose(mu1, mu0)
    np.testing.assert_allclose(mu1, expected, rtol=1e-5, atol=1e-6)


def test_centroids_get_no_gradient():
    _, _, model_def, state, batch = _train_setup()
    params, stats = split_params(state.params)

    def loss(stats):
        m = model_def.merge(params, stats)
        return jnp.sum(m(batch['inputs']) ** 2)

    g = jax.grad(loss)(stats)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g))


def test_commitment_loss_is_in_the_loss():
    """The train step differentiates CE + commitment_weight * MSE(x_hat, mu[cluster]) (recomputed
    here by hand) and reports the term as metrics['aux_loss']; metrics['loss'] is the task loss."""
    w = 10.0
    _, tx, model_def, state, batch = _train_setup(commitment_weight=w)
    params, stats = split_params(state.params)

    def reference(params):
        m = model_def.merge(params, stats)
        attn = m.blocks[0].attn
        x = m.blocks[0].attn_norm(m.embed(batch['inputs']))
        _, _, _, x_hat, _ = attn._project(x, jnp.broadcast_to(jnp.arange(16), (4, 16)))
        mu = attn.centroids[...][0][attn._assign(x_hat)[..., 0]]  # [B, T, d], one routing head
        mse = jnp.mean((x_hat[:, :, 0] - mu) ** 2)
        ce, _ = step_lib.masked_loss_and_accuracy(m(batch['inputs']), batch['labels'])
        return ce + w * mse, (ce, w * mse)

    (_, (ce, aux)), grads = jax.jit(jax.value_and_grad(reference, has_aux=True))(params)  # jitted: eager 9 s
    ce_only = jax.jit(jax.grad(lambda p: reference(p)[1][0]))(params)
    train_step = step_lib.make_train_step(model_def, tx, optax.constant_schedule(1e-2))
    _, metrics = train_step(state, batch)  # donates `state` (and `params`' buffers)
    assert float(aux) > 1e-3 * float(ce)  # the term matters at this weight
    assert float(metrics['loss']) == pytest.approx(float(ce), rel=1e-5)
    assert float(metrics['aux_loss']) == pytest.approx(float(aux), rel=1e-5)
    assert float(metrics['grad_norm']) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-4)
    assert float(optax.tree.norm(ce_only)) != pytest.approx(float(metrics['grad_norm']), rel=1e-3)
