"""Multi-device checks on 8 fake CPU devices, run in a subprocess by tests/parallel/test_*.py.

    python tests/parallel/multidevice.py <check> [workdir]

prints one JSON line {name: value} that the calling test asserts on. A subprocess, because
--xla_force_host_platform_device_count only works before jax starts its backend, and other test
files in the same pytest (xdist) worker have long started it with one device.
"""

from __future__ import annotations

import json
import os
import re
import sys

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax
import jax.numpy as jnp
import numpy as np
import optax

jax.config.update('jax_default_matmul_precision', 'highest')
jax.config.update('jax_disable_most_optimizations', True)  # compile time; same math on both sides

from effattn import config as config_lib
from effattn import ops, parallel
from effattn.data import sources
from effattn.train import step as step_lib
from effattn.train.checkpoint import Checkpointer
from effattn.train.optimizer import lr_schedule, make_optimizer
from effattn.train.state import create_train_state

MESHES = {  # Done-when 1 of issue 8
    'data=8': {'data': 8},
    'data=2,fsdp=4': {'data': 2, 'fsdp': 4},
    'fsdp=2,tensor=2,data=2': {'fsdp': 2, 'tensor': 2, 'data': 2},
    'data=2,sequence=4': {'data': 2, 'sequence': 4},
}


def rel(got, ref) -> float:
    """Relative RMS error ||a-b|| / ||b|| (DESIGN.md); 0 when both are exactly zero."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(got)):
        return float('inf')
    err, norm = np.linalg.norm(got - ref), np.linalg.norm(ref)
    return float(err / norm) if norm > 0 else float(err)


def rel_tree(got, ref) -> float:
    """Worst relative RMS error over the leaves of two pytrees."""
    return max(rel(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)))


def tiny_config(layers='gla,softmax', steps=10, **mesh):
    c = config_lib.default_config()
    c.model.vocab_size = c.data.vocab_size = 64
    c.model.d_model = 32
    c.model.num_layers = len(layers.split(','))
    c.model.layers = layers
    c.model.attention.num_heads = 4
    c.model.attention.chunk_size = 4  # several chunks per device at T=32, sequence=4
    c.data.seq_len = 32
    c.data.train_settings = ((32, 4),)
    c.data.eval_settings = ((32, 4),)
    c.data.eval_examples = 16
    c.train.batch_size = 8
    c.train.steps = steps
    c.train.warmup_steps = 1
    c.checkpoint.async_save = False
    c.mesh.data = 1
    for k, v in mesh.items():
        setattr(c.mesh, k, v)
    return config_lib.validate(c)


def loss_and_grads(model_def, params, batch, mesh):
    """(loss, grads) of the LM loss on all positions, traced and run on `mesh`."""

    @jax.jit
    @parallel.on_mesh(mesh)
    def f(params, batch):
        def loss(p):
            logits = model_def.merge(p)(batch['inputs'], segment_ids=batch.get('segment_ids'))
            return step_lib.masked_loss_and_accuracy(logits, batch['labels'])[0]

        return jax.value_and_grad(loss)(params)

    return f(params, parallel.shard_batch(batch, mesh))


def recording_optimizer() -> optax.GradientTransformation:
    """Leaves the parameters alone and keeps the step's gradients as its state (params-shaped, so
    sharded like them): the train step's gradients, exactly."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def train_step_on(cfg, mesh, batch) -> tuple[dict, object, bool]:
    """One real train step (effattn.train.step) on `mesh`: (metrics, gradients, layout kept)."""
    tx = recording_optimizer()
    model_def, state = create_train_state(cfg, tx, mesh)
    sharding = parallel.sharding_of(state)
    step = step_lib.make_train_step(model_def, tx, lr_schedule(cfg.train), state_sharding=sharding)
    new, metrics = step(state, parallel.shard_batch(batch, mesh))
    kept = all(x.sharding == s for x, s in zip(jax.tree.leaves(new), jax.tree.leaves(sharding)))
    return metrics, new.opt_state, kept


def check_train_step() -> dict:
    """Done-when 1: a train step on four meshes gives one device's loss and gradients."""
    cfg = tiny_config()
    batch = sources.train_stream(cfg).batch(0)
    batch = {'inputs': batch['inputs'], 'labels': batch['labels']}
    ref_metrics, ref_grads, _ = train_step_on(cfg, parallel.single_device_mesh(), batch)
    out = {}
    for name, sizes in MESHES.items():
        mcfg = tiny_config(**sizes)
        metrics, grads, kept = train_step_on(mcfg, parallel.make_mesh(mcfg.mesh), batch)
        out[name] = {
            'loss': rel(metrics['loss'], ref_metrics['loss']),
            'grads': rel_tree(grads, ref_grads),
            'grad_norm': rel(metrics['grad_norm'], ref_metrics['grad_norm']),
            'state_keeps_sharding': kept,
        }
    return out


# ------------------------------------------------------------------------- sequence parallelism


def _op_cases(b, t, h, k, v, key):
    ks = jax.random.split(key, 8)
    q = jax.random.normal(ks[0], (b, t, h, k))
    kk = jax.random.normal(ks[1], (b, t, h, k))
    vv = jax.random.normal(ks[2], (b, t, h, v))
    l2 = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (b, t, h)) + 2.0)
    gk = jax.nn.log_sigmoid(jax.random.normal(ks[4], (b, t, h, k)) + 2.0) / 4
    beta = jax.nn.sigmoid(jax.random.normal(ks[5], (b, t, h)))
    h0 = jax.random.normal(ks[6], (b, h, k, v))
    h0n = jax.random.normal(ks[6], (b, h, k, v + 1))
    pos = lambda x: jax.nn.elu(x) + 1
    kw = {'output_final_state': True, 'chunk_size': 4}
    return {
        'linear_attn': (
            lambda q, k, v, s0, seg: ops.linear_attn(
                q, k, v, normalize=True, initial_state=s0, segment_ids=seg, **kw
            ),
            (pos(q), pos(kk), vv, h0n),
        ),
        'simple_gla': (
            lambda q, k, v, g, s0, seg: ops.simple_gla(
                q, k, v, g, initial_state=s0, segment_ids=seg, **kw
            ),
            (q, kk, vv, g, h0),
        ),
        'gla': (
            lambda q, k, v, g, s0, seg: ops.gla(
                q, k, v, g, initial_state=s0, segment_ids=seg, **kw
            ),
            (q, kk, vv, gk, h0),
        ),
        'delta_rule': (
            lambda q, k, v, b, s0, seg: ops.delta_rule(
                q, k, v, b, initial_state=s0, segment_ids=seg, **kw
            ),
            (l2(q), l2(kk), vv, beta, h0),
        ),
        'gated_delta_rule': (
            lambda q, k, v, g, b, s0, seg: ops.gated_delta_rule(
                q, k, v, g, b, initial_state=s0, segment_ids=seg, **kw
            ),
            (l2(q), l2(kk), vv, g, beta, h0),
        ),
        'softmax_attention': (
            lambda q, k, v, seg: (
                ops.softmax_attention(q, k, v, window=13, sinks=2, segment_ids=seg),
                None,
            ),
            (q, kk, vv),
        ),
        'sigmoid_attention': (
            lambda q, k, v, seg: (
                ops.sigmoid_attention(q, k, v, bias=-2.0, segment_ids=seg),
                None,
            ),
            (q, kk, vv),
        ),
    }


def _segments(b, t):
    """Packed rows whose segments start at, just after and inside device boundaries (L = t / 4)."""
    quarter = t // 4
    rows = [
        [1] * quarter
        + [2] * (quarter + 3)
        + [3] * (2 * quarter - 3),  # starts at a boundary, inside
        [1] * 3 + [2] * (2 * quarter - 3) + [0] * (2 * quarter),  # padding from mid-sequence
    ]
    return jnp.asarray((rows * b)[:b], jnp.int32)


def _grads_fn(fn, seg, n):
    def loss(*args):
        o, ht = fn(*args, seg)
        w = jnp.sin(jnp.arange(o.size, dtype=jnp.float32)).reshape(o.shape)
        total = jnp.sum(o.astype(jnp.float32) * w)
        if ht is not None:
            wh = jnp.cos(jnp.arange(ht.size, dtype=jnp.float32)).reshape(ht.shape)
            total = total + jnp.sum(ht * wh)
        return total, (o, ht)

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(n)), has_aux=True))


COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'collective-permute', 'all-to-all')


def communicated_bytes(compiled_text: str) -> dict[str, int]:
    """Result bytes per collective kind in compiled (partitioned, per-device) HLO text."""
    sizes = {'f32': 4, 'bf16': 2, 's32': 4, 'u32': 4, 'f16': 2, 'pred': 1, 's8': 1, 'u8': 1}
    out = dict.fromkeys(COLLECTIVES, 0)
    pattern = (
        r'= \(?((?:\w+\[[\d,]*\][^ ]*(?:, )?)+)\)? (' + '|'.join(COLLECTIVES) + r')(?:-start)?\('
    )
    for shapes, kind in re.findall(pattern, compiled_text):
        for dtype, dims in re.findall(r'(\w+)\[([\d,]*)\]', shapes):
            n = int(np.prod([int(d) for d in dims.split(',') if d])) if dims else 1
            out[kind] += n * sizes.get(dtype, 4)
    return out


def check_sequence_ops() -> dict:
    """Done-when 2: every op split over sequence=4 (data=2) equals one device (outputs, final
    states, all gradients), with packed segments across device boundaries and initial states;
    and the linear family's communicated bytes do not grow with T."""
    mesh = parallel.make_mesh(config_lib.MeshConfig(data=2, sequence=4))
    b, h, k, v = 2, 2, 8, 6
    out = {}
    for t in (32, 64):  # compared with one device at T=32; compiled only at T=64
        seg = _segments(b, t)
        for name, (fn, args) in _op_cases(b, t, h, k, v, jax.random.PRNGKey(t)).items():
            f = _grads_fn(fn, seg, len(args))
            with jax.set_mesh(mesh):
                compiled = f.lower(*args).compile()
            res = out.setdefault(name, {})
            res[f'bytes_T{t}'] = communicated_bytes(compiled.as_text())
            if t == 32:
                (_, (o_ref, ht_ref)), g_ref = f(*args)
                (_, (o, ht)), g = compiled(*args)
                res['out'] = rel(o, o_ref)
                if ht is not None:
                    res['final_state'] = rel(ht, ht_ref)
                res['grads'] = max(rel(a, r) for a, r in zip(g, g_ref))
    return out


def check_hybrid_stack() -> dict:
    """Done-when 2: a hybrid LM of every linear-family kind plus softmax, split over sequence=4
    (data=2), gives the loss and parameter gradients of one device, with packed segments."""
    layers = 'linear,lightning,gla,deltanet,gated_deltanet,softmax'
    cfg = tiny_config(layers=layers)
    stream = sources.train_stream(cfg).batch(0)
    batch = {
        'inputs': stream['inputs'],
        'labels': stream['labels'],
        'segment_ids': np.asarray(_segments(cfg.train.batch_size, cfg.data.seq_len)),
    }
    tx = make_optimizer(cfg.train)
    one = parallel.single_device_mesh()
    model_def, state = create_train_state(cfg, tx, one)
    ref_loss, ref_grads = loss_and_grads(model_def, state.params, batch, one)
    mesh = parallel.make_mesh(tiny_config(layers=layers, data=2, sequence=4).mesh)
    # The same parameters, laid out on the mesh by its rules (an init compiled for the mesh would cost ~5 s
    # more; create_train_state on (data=2, sequence=4) is check_train_step's).
    params = jax.device_put(state.params, parallel.state_sharding(state, mesh).params)
    loss, grads = loss_and_grads(model_def, params, batch, mesh)
    return {'loss': rel(loss, ref_loss), 'grads': rel_tree(grads, ref_grads)}


# ------------------------------------------------------------------- checkpoints and FSDP bytes


def check_checkpoint_reshard(workdir: str) -> dict:
    """Done-when 3: a run saved by the training loop on (data=8) restores on (fsdp=4, data=2) and the
    next steps' losses equal those of the run continuing on (data=8)."""
    from effattn.train import loop

    cfg8 = tiny_config(steps=6, data=8)
    loop.train_and_evaluate(cfg8, workdir, stop_after=2, quiet=True)  # saves step 2
    stream = sources.train_stream(cfg8)
    losses, shardings = {}, {}
    for name, cfg in (('data=8', cfg8), ('fsdp=4,data=2', tiny_config(steps=6, data=2, fsdp=4))):
        mesh = parallel.make_mesh(cfg.mesh)
        tx = make_optimizer(cfg.train)
        model_def, state = create_train_state(cfg, tx, mesh)
        ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), cfg.checkpoint)
        state, _ = ckpt.restore_latest(state)
        ckpt.close()
        shardings[name] = [tuple(x.sharding.spec) for x in jax.tree.leaves(state.params)]
        step = step_lib.make_train_step(
            model_def,
            tx,
            lr_schedule(cfg.train),
            max_targets=stream.max_targets,
            state_sharding=parallel.sharding_of(state),
        )
        losses[name] = []
        for i in (2, 3):
            batch = stream.batch(i)
            batch = {'inputs': batch['inputs'], 'labels': batch['labels']}
            state, metrics = step(state, parallel.shard_batch(batch, mesh))
            losses[name].append(float(metrics['loss']))
        restored_step = int(state.step) - 2
    from effattn.eval.run import load_run

    return {
        'restored_step': restored_step,
        'loss_rel': [rel(a, b) for a, b in zip(losses['fsdp=4,data=2'], losses['data=8'])],
        'losses': losses,
        'fsdp_specs_used': sum('fsdp' in spec for spec in shardings['fsdp=4,data=2']),
        'data8_specs_sharded': sum(any(spec) for spec in shardings['data=8']),
        'load_run_step': load_run(workdir)[3],  # eval.py's restore: onto one device
    }


def check_fsdp_bytes() -> dict:
    """Done-when 4: with fsdp=8 each device holds about 1/8 of the parameter bytes."""
    cfg = tiny_config(layers='gla,softmax', fsdp=8)
    mesh = parallel.make_mesh(cfg.mesh)
    _, state = create_train_state(cfg, make_optimizer(cfg.train), mesh)
    total = sum(x.nbytes for x in jax.tree.leaves(state.params))
    held = parallel.bytes_per_device(state.params)
    opt_total = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
    opt_held = parallel.bytes_per_device(state.opt_state)
    return {
        'total': total,
        'per_device': sorted(held.values()),
        'opt_total': opt_total,
        'opt_per_device': sorted(opt_held.values()),
    }


CHECKS = {
    'train_step': check_train_step,
    'sequence_ops': check_sequence_ops,
    'hybrid_stack': check_hybrid_stack,
    'checkpoint_reshard': check_checkpoint_reshard,
    'fsdp_bytes': check_fsdp_bytes,
}

if __name__ == '__main__':
    assert jax.device_count() == 8, jax.devices()
    names, args = sys.argv[1].split(','), sys.argv[2:]
    results = {}
    for name in names:
        fn = CHECKS[name]
        results[name] = fn(*args) if fn.__code__.co_argcount else fn()
    print(json.dumps(results))
